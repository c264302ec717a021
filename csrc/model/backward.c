/* Backward of mg_model_step_ex, layer by layer in reverse, llm.c style: the first contribution to
 * a gradient buffer writes it (activation backwards, linear_backward_set), later ones add to it;
 * buffers whose first contribution adds are zeroed before use. */
#include "backward.h"

#include <string.h>

#include "../core/alloc.h"
#include "../ops/attention.h"
#include "transfer.h"
#include "workspace.h"

/* Gradient of a parameter: its place in the mirrored block, or NULL when frozen or absent. */
static inline float *grad_of(const mg_model *m, const mg_grads *g, const float *param) {
    if (g->params == NULL || param == NULL) return NULL;
    return g->params + (param - m->params.block);
}

/* Gradient through x_out = x_in + drop(y): dy = drop'(dx), written to dy. */
static void residual_backward(const mg_backend *be, float *dy, const float *dx, long n,
                              const mg_train_pass *train, uint64_t stream) {
    if (train->resid_dropout > 0.0f) {
        /* dropout_backward onto zeros is dropout_forward with the same mask: no memset */
        be->dropout_forward(be, dy, dx, n, train->resid_dropout, train->seed, stream);
    } else {
        be->copy(be, dy, dx, sizeof(float) * (size_t)n);
    }
}

/* matmul_backward with dinp written instead of added to (dinp = dout W): the first contribution
 * to a gradient buffer needs no memset, and the GEMM does not read dinp. On the CPU the bits are
 * those of adding onto zeros. */
static void linear_backward_set(const mg_backend *be, float *dinp, float *dweight, float *dbias,
                                const float *dout, const float *inp, const float *weight, int N,
                                int I, int O) {
    be->sgemm(be, false, false, N, I, O, 1.0f, dout, O, weight, I, 0.0f, dinp, I);
    if (dweight || dbias) be->matmul_backward(be, NULL, dweight, dbias, dout, inp, weight, N, I, O);
}

/* Appends the backward site of target t of layer l (when adapted): its output gradient dout
 * (row stride ldd) and, when trained, the mirrors of its A and B in the gradient block. */
static void lora_grad_site(mg_lora_site *sites, int *n, const mg_model *m, const mg_grads *g,
                           const mg_train_pass *train, int l, mg_lora_target t, const float *dout,
                           int ldd) {
    const mg_lora_pair *pair = mg_lora_get(m->lora, l, t);
    if (pair == NULL) return;
    float *dA = NULL, *dB = NULL;
    if (g->lora) {
        mg_lora_pair gp = mg_lora_mirror(m->lora, pair, g->lora);
        dA = gp.A;
        dB = gp.B;
    }
    sites[(*n)++] = (mg_lora_site){.pair = pair,
                                   .stream = MG_DROP_STREAM_LORA(l, t),
                                   .dout = dout,
                                   .ldd = ldd,
                                   .u = train->acts->layers[l].lora_u[t],
                                   .dA = dA,
                                   .dB = dB};
}

/* LoRA backward of the n sites of layer l, which share the input inp; dinp += their input
 * gradient. */
static void lora_grad(float *dinp, const mg_lora_site *sites, int n, const float *inp,
                      const mg_model *m, const mg_train_pass *train, int N, float *scratch) {
    lora_backward(m->be, dinp, sites, n, inp, N, m->lora ? m->lora->scale : 0.0f,
                  train->lora_dropout, train->seed, scratch);
}

/* lora_grad for the one target t (when adapted). */
static void lora_grad_one(float *dinp, const float *dout, int ldd, const float *inp,
                          const mg_model *m, const mg_grads *g, const mg_train_pass *train, int l,
                          mg_lora_target t, int N, float *scratch) {
    mg_lora_site site;
    int n = 0;
    lora_grad_site(&site, &n, m, g, train, l, t, dout, ldd);
    lora_grad(dinp, &site, n, inp, m, train, N, scratch);
}

/* The float counts of the backward's buffers, in the order mg_model_backward takes them. */
#define BACKWARD_BUFFERS 15
static void backward_plan(const mg_model *m, int B, int T, size_t plan[BACKWARD_BUFFERS]) {
    const mg_config *c = &m->config;
    const long N = (long)B * T;
    const int D = c->dim, F = c->hidden_dim;
    const int QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim, W = QD + 2 * KD;
    const int r = m->lora ? m->lora->rank : 0;
    const int widest = F > D ? (F > QD ? F : QD) : (D > QD ? D : QD);
    const mg_backend *be = m->be;
    const attention_shape shape = {B, T, T, 0, T, c->n_heads, c->n_kv_heads, c->head_dim};
    const size_t sizes[BACKWARD_BUFFERS] = {(size_t)N * D,
                                            (size_t)N * D,
                                            (size_t)N * D,
                                            (size_t)N * F,
                                            (size_t)N * F,
                                            (size_t)N * F,
                                            (size_t)N * QD,
                                            (size_t)N * W,
                                            (size_t)N * KD,
                                            (size_t)N * KD,
                                            (size_t)N,
                                            be->attention_scratch(be, &shape, true),
                                            m->lora ? (size_t)N * (MG_DROPPED_MAX * r + widest) : 0,
                                            mg_stage_bytes(be, (size_t)N) / 4 + 1,
                                            mg_stage_bytes(be, (size_t)N * 4) / 4};
    memcpy(plan, sizes, sizeof(sizes));
}

int mg_backward_scratch_init(mg_backward_scratch *s, const mg_model *m, int B, int T,
                             mg_error *err) {
    memset(s, 0, sizeof(*s));
    size_t plan[BACKWARD_BUFFERS], bytes = 0;
    backward_plan(m, B, T, plan);
    for (int i = 0; i < BACKWARD_BUFFERS; i++)
        bytes += mg_arena_floats_bytes(plan[i]);
    s->ids_host = mg_alloc_uninit((size_t)B * T, sizeof(int32_t), "token ids", err);
    if (s->ids_host == NULL) return err->code;
    if (mg_workspace_init(&s->arena, m->be, bytes, err) != 0) {
        mg_free(s->ids_host);
        s->ids_host = NULL;
        return err->code;
    }
    s->B = B;
    s->T = T;
    return MG_OK;
}

void mg_backward_scratch_release(mg_backward_scratch *s) {
    if (s->ids_host != NULL) {
        mg_workspace_release(&s->arena);
        mg_free(s->ids_host);
    }
    memset(s, 0, sizeof(*s));
}

int mg_model_backward(const mg_model *m, const mg_grads *g, const mg_train_pass *train,
                      const mg_kv_cache *cache, const float *dhidden, const int32_t *tokens,
                      const uint8_t *roles, const int32_t *segments, int B, int T,
                      mg_backward_scratch *s, mg_error *err) {
    const mg_config *c = &m->config;
    const mg_params *p = &m->params;
    const mg_activations *rec = train->acts;
    const long N = (long)B * T;
    if (rec == NULL || rec->N != N || cache->length != T || cache->n_slots != c->n_layers ||
        s->ids_host == NULL || s->B != B || s->T != T)
        return mg_fail(err, MG_ERR_VALUE, "internal: backward without a matching forward record");
    const int D = c->dim, F = c->hidden_dim;
    const int QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim, W = QD + 2 * KD;
    const mg_backend *be = m->be;
    const attention_shape shape = {B, T, T, 0, T, c->n_heads, c->n_kv_heads, c->head_dim};
    size_t plan[BACKWARD_BUFFERS];
    backward_plan(m, B, T, plan);
    int32_t *ids_host = s->ids_host;
    mg_workspace arena = s->arena; /* a copy: each pass takes its buffers from the start */
    arena.arena.used = 0;
    float *dx = mg_workspace_floats(&arena, plan[0], err);
    float *dy = mg_workspace_floats(&arena, plan[1], err);
    float *dh = mg_workspace_floats(&arena, plan[2], err);
    float *dact = mg_workspace_floats(&arena, plan[3], err);
    float *dgate = mg_workspace_floats(&arena, plan[4], err);
    float *dup = mg_workspace_floats(&arena, plan[5], err);
    float *datt = mg_workspace_floats(&arena, plan[6], err);
    float *dqkv = mg_workspace_floats(&arena, plan[7], err);
    float *dk = mg_workspace_floats(&arena, plan[8], err);
    float *dv = mg_workspace_floats(&arena, plan[9], err);
    int32_t *ids = (int32_t *)mg_workspace_floats(&arena, plan[10], err);
    float *scratch = mg_workspace_floats(&arena, plan[11], err);
    float *lscratch = mg_workspace_floats(&arena, plan[12], err);
    void *roles_dev = mg_workspace_floats(&arena, plan[13], err);
    void *segs_dev = mg_workspace_floats(&arena, plan[14], err);
    if (err->code != MG_OK) goto done;
    const uint8_t *d_roles = mg_stage(be, roles_dev, roles, (size_t)N);
    const int32_t *d_segs = mg_stage(be, segs_dev, segments, (size_t)N * 4);
    const int gpt2 = c->arch == MG_ARCH_GPT2;
    float *dq = dqkv; /* [N, QD]; for a fused GEMM the three are packed into [N, W] below */

    be->zero(be, dx, sizeof(float) * N * D);
    if (gpt2)
        be->layernorm_backward(be, dx, grad_of(m, g, p->final_norm_w),
                               grad_of(m, g, p->final_norm_b), dhidden, rec->x_final,
                               p->final_norm_w, (int)N, D, c->norm_eps);
    else
        be->rmsnorm_backward(be, dx, grad_of(m, g, p->final_norm_w), dhidden, rec->x_final,
                             p->final_norm_w, (int)N, D, c->norm_eps);

    for (int l = c->n_layers - 1; l >= 0; l--) {
        const mg_layer_params *L = &p->layers[l];
        const mg_layer_activations *R = &rec->layers[l];

        /* MLP: x_out = x_mid + drop(act W_down^T + b_down) */
        residual_backward(be, dy, dx, N * D, train, MG_DROP_STREAM_MLP(l));
        linear_backward_set(be, dact, grad_of(m, g, L->w_down), grad_of(m, g, L->b_down), dy,
                            R->act, L->w_down, (int)N, F, D);
        lora_grad_one(dact, dy, D, R->act, m, g, train, l, MG_LORA_DOWN, (int)N, lscratch);
        /* the activation backwards write dgate and dup; the first product writes dh */
        if (gpt2) {
            be->gelu_tanh_backward(be, dup, dact, R->up, N * F);
            linear_backward_set(be, dh, grad_of(m, g, L->w_up), grad_of(m, g, L->b_up), dup, R->h2,
                                L->w_up, (int)N, D, F);
        } else {
            be->swiglu_backward(be, dgate, dup, dact, R->gate, R->up, N * F);
            linear_backward_set(be, dh, grad_of(m, g, L->w_gate), grad_of(m, g, L->b_gate), dgate,
                                R->h2, L->w_gate, (int)N, D, F);
            be->matmul_backward(be, dh, grad_of(m, g, L->w_up), grad_of(m, g, L->b_up), dup, R->h2,
                                L->w_up, (int)N, D, F);
        }
        {
            mg_lora_site sites[2];
            int n = 0;
            if (!gpt2) lora_grad_site(sites, &n, m, g, train, l, MG_LORA_GATE, dgate, F);
            lora_grad_site(sites, &n, m, g, train, l, MG_LORA_UP, dup, F);
            lora_grad(dh, sites, n, R->h2, m, train, (int)N, lscratch);
        }
        if (gpt2)
            be->layernorm_backward(be, dx, grad_of(m, g, L->mlp_norm_w),
                                   grad_of(m, g, L->mlp_norm_b), dh, R->x_mid, L->mlp_norm_w,
                                   (int)N, D, c->norm_eps);
        else
            be->rmsnorm_backward(be, dx, grad_of(m, g, L->mlp_norm_w), dh, R->x_mid, L->mlp_norm_w,
                                 (int)N, D, c->norm_eps);

        /* attention: x_mid = x_in + drop(att W_o^T + b_o) */
        residual_backward(be, dy, dx, N * D, train, MG_DROP_STREAM_ATTN(l));
        linear_backward_set(be, datt, grad_of(m, g, L->wo), grad_of(m, g, L->bo), dy, R->att, L->wo,
                            (int)N, QD, D);
        lora_grad_one(datt, dy, D, R->att, m, g, train, l, MG_LORA_O, (int)N, lscratch);
        be->zero(be, dq, sizeof(float) * N * QD);
        be->zero(be, dk, sizeof(float) * N * KD);
        be->zero(be, dv, sizeof(float) * N * KD);
        be->attention_backward(be, dq, dk, dv, datt, R->q, mg_kv_cache_rows(cache, cache->k, l, 0),
                               mg_kv_cache_rows(cache, cache->v, l, 0), d_roles, d_segs, d_roles,
                               d_segs, shape, R->att_stats ? R->att : NULL, R->att_stats, scratch);
        if (!gpt2) {
            be->rope_backward(be, dq, rec->pos, m->inv_freq, (int)N, c->n_heads, c->head_dim);
            be->rope_backward(be, dk, rec->pos, m->inv_freq, (int)N, c->n_kv_heads, c->head_dim);
        }
        be->zero(be, dh, sizeof(float) * N * D);
        const float *douts[3] = {dq, dk, dv};
        const float *const ws[3] = {L->wq, L->wk, L->wv}, *const bs[3] = {L->bq, L->bk, L->bv};
        const int widths[3] = {QD, KD, KD};
        for (int t = 0; t < 3; t++)
            if (bs[t] && grad_of(m, g, bs[t]))
                be->matmul_backward(be, NULL, NULL, grad_of(m, g, bs[t]), douts[t], R->h1, ws[t],
                                    (int)N, D, widths[t]);
        {
            mg_lora_site sites[3];
            int n = 0;
            for (int t = 0; t < 3; t++)
                lora_grad_site(sites, &n, m, g, train, l, (mg_lora_target)t, douts[t], widths[t]);
            lora_grad(dh, sites, n, R->h1, m, train, (int)N, lscratch);
        }
        if (mg_qkv_fused(L, QD, KD, D)) {
            /* pack [dq | dk | dv] per row into the GEMM's [N, W] layout; dq moves out of the
             * way first (into datt, consumed by now) since it sits at dqkv's front */
            be->copy(be, datt, dq, sizeof(float) * N * QD);
            be->copy_rows(be, dqkv, W, datt, QD, N, QD);
            be->copy_rows(be, dqkv + QD, W, dk, KD, N, KD);
            be->copy_rows(be, dqkv + QD + KD, W, dv, KD, N, KD);
            be->matmul_backward(be, dh, grad_of(m, g, L->wq), NULL, dqkv, R->h1, L->wq, (int)N, D,
                                W);
        } else {
            for (int t = 0; t < 3; t++)
                be->matmul_backward(be, dh, grad_of(m, g, ws[t]), NULL, douts[t], R->h1, ws[t],
                                    (int)N, D, widths[t]);
        }
        if (gpt2)
            be->layernorm_backward(be, dx, grad_of(m, g, L->attn_norm_w),
                                   grad_of(m, g, L->attn_norm_b), dh, R->x_in, L->attn_norm_w,
                                   (int)N, D, c->norm_eps);
        else
            be->rmsnorm_backward(be, dx, grad_of(m, g, L->attn_norm_w), dh, R->x_in, L->attn_norm_w,
                                 (int)N, D, c->norm_eps);
    }
    if (grad_of(m, g, p->tok_embeddings)) {
        for (long n = 0; n < N; n++)
            ids_host[n] = segments[n] < 0 ? 0 : tokens[n];
        be->upload(be, ids, ids_host, (size_t)N * 4);
        be->embedding_backward(be, grad_of(m, g, p->tok_embeddings),
                               grad_of(m, g, p->pos_embeddings), dx, ids, rec->pos, (int)N, D);
    }
    be->sync(be, err);
done:
    return err->code;
}
