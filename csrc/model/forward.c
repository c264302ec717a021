/* The decoder's full-sequence forward pass, shared by both families. */
#include <omp.h>
#include <string.h>

#include "../core/alloc.h"
#include "../core/arena.h"
#include "../ops/activation.h"
#include "../ops/attention.h"
#include "../ops/embedding.h"
#include "../ops/matmul.h"
#include "../ops/norm.h"
#include "../ops/rope.h"
#include "model.h"

/* Position of each token within its segment (restarting at 0 per segment, 0 for padding), and
 * the longest segment, for the learned-position and sliding-window limits. */
static int segment_positions(int *pos, const int32_t *segments, int B, int T) {
    int longest = 0;
    for (int b = 0; b < B; b++) {
        const int32_t *seg = segments + (long)b * T;
        int *p = pos + (long)b * T;
        for (int t = 0; t < T; t++) {
            p[t] = 0;
            if (seg[t] < 0) continue;
            for (int u = t - 1; u >= 0; u--) /* segments are usually contiguous: O(1) typical */
                if (seg[u] == seg[t]) {
                    p[t] = p[u] + 1;
                    break;
                }
            if (p[t] + 1 > longest) longest = p[t] + 1;
        }
    }
    return longest;
}

static int validate_inputs(const mg_model *m, const int32_t *tokens, const uint8_t *roles,
                           const int32_t *segments, long N, mg_error *err) {
    const int V = m->config.vocab_size;
    for (long n = 0; n < N; n++) {
        if (segments[n] < -1)
            return mg_fail(err, MG_ERR_VALUE, "segments must be >= -1 (-1 marks padding), got %d",
                           segments[n]);
        if (roles[n] > MG_ROLE_SPAN)
            return mg_fail(err, MG_ERR_VALUE, "roles must be 0 (CONTEXT) or 1 (SPAN), got %d",
                           roles[n]);
        if (segments[n] >= 0 && (tokens[n] < 0 || tokens[n] >= V))
            return mg_fail(err, MG_ERR_VALUE, "token id %d is out of range for vocab_size %d",
                           tokens[n], V);
    }
    return MG_OK;
}

int mg_model_forward(const mg_model *m, const int32_t *tokens, const uint8_t *roles,
                     const int32_t *segments, int B, int T, float *hidden_out, float *logits_out,
                     mg_error *err) {
    const mg_config *c = &m->config;
    const mg_params *p = &m->params;
    if (B <= 0 || T <= 0) return mg_fail(err, MG_ERR_VALUE, "empty input (batch %d x %d)", B, T);
    const long N = (long)B * T;
    if (N > (1L << 28)) return mg_fail(err, MG_ERR_NOMEM, "input of %ld tokens is too large", N);
    if (validate_inputs(m, tokens, roles, segments, N, err) != MG_OK) return err->code;

    const int D = c->dim, F = c->hidden_dim, V = c->vocab_size;
    const int QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    const int threads = omp_get_max_threads();
    size_t bytes = 0;
    const size_t plan[] = {(size_t)N * D,  (size_t)N * D,  (size_t)N * QD, (size_t)N * KD,
                           (size_t)N * KD, (size_t)N * QD, (size_t)N * F,  (size_t)N * F,
                           (size_t)N,      (size_t)N,      ATTENTION_SCRATCH(B, c->n_kv_heads, c->head_dim, T, threads),
                           hidden_out ? 0 : (size_t)N * D};
    for (unsigned i = 0; i < sizeof(plan) / sizeof(plan[0]); i++)
        bytes += mg_arena_floats_bytes(plan[i]);
    mg_arena arena;
    if (mg_arena_init(&arena, bytes, err) != 0) return err->code;
    float *x = mg_arena_floats(&arena, plan[0], err);
    float *h = mg_arena_floats(&arena, plan[1], err);
    float *q = mg_arena_floats(&arena, plan[2], err);
    float *k = mg_arena_floats(&arena, plan[3], err);
    float *v = mg_arena_floats(&arena, plan[4], err);
    float *att = mg_arena_floats(&arena, plan[5], err);
    float *gate = mg_arena_floats(&arena, plan[6], err);
    float *up = mg_arena_floats(&arena, plan[7], err);
    int *pos = (int *)mg_arena_floats(&arena, plan[8], err);
    int32_t *ids = (int32_t *)mg_arena_floats(&arena, plan[9], err);
    float *scratch = mg_arena_floats(&arena, plan[10], err);
    float *hidden = hidden_out ? hidden_out : mg_arena_floats(&arena, plan[11], err);
    if (err->code != MG_OK) goto done;

    const int longest = segment_positions(pos, segments, B, T);
    if (c->arch == MG_ARCH_GPT2 && longest > c->max_positions) {
        mg_fail(err, MG_ERR_VALUE, "sequence of %d tokens exceeds the model's %d positions",
                longest, c->max_positions);
        goto done;
    }
    if (c->sliding_window > 0 && longest > c->sliding_window) {
        mg_fail(err, MG_ERR_UNSUPPORTED,
                "sequence of %d tokens exceeds the model's sliding window of %d, which magnet "
                "does not implement; use sequences of at most %d tokens",
                longest, c->sliding_window, c->sliding_window);
        goto done;
    }
    for (long n = 0; n < N; n++) ids[n] = segments[n] < 0 ? 0 : tokens[n];

    const int gpt2 = c->arch == MG_ARCH_GPT2;
    embedding_forward(x, ids, pos, p->tok_embeddings, gpt2 ? p->pos_embeddings : NULL, (int)N, D);
    const attention_shape shape = {B, T, T, 0, T, c->n_heads, c->n_kv_heads, c->head_dim};
    for (int l = 0; l < c->n_layers; l++) {
        const mg_layer_params *L = &p->layers[l];
        if (gpt2)
            layernorm_forward(h, x, L->attn_norm_w, L->attn_norm_b, (int)N, D, c->norm_eps);
        else
            rmsnorm_forward(h, x, L->attn_norm_w, (int)N, D, c->norm_eps);
        matmul_forward(q, h, L->wq, L->bq, (int)N, D, QD, false);
        matmul_forward(k, h, L->wk, L->bk, (int)N, D, KD, false);
        matmul_forward(v, h, L->wv, L->bv, (int)N, D, KD, false);
        if (!gpt2) {
            rope_forward(q, pos, m->inv_freq, (int)N, c->n_heads, c->head_dim);
            rope_forward(k, pos, m->inv_freq, (int)N, c->n_kv_heads, c->head_dim);
        }
        attention_forward(att, q, k, v, roles, segments, roles, segments, shape, scratch);
        matmul_forward(x, att, L->wo, L->bo, (int)N, QD, D, true);

        if (gpt2) {
            layernorm_forward(h, x, L->mlp_norm_w, L->mlp_norm_b, (int)N, D, c->norm_eps);
            matmul_forward(up, h, L->w_up, L->b_up, (int)N, D, F, false);
            gelu_tanh_forward(up, N * F);
        } else {
            rmsnorm_forward(h, x, L->mlp_norm_w, (int)N, D, c->norm_eps);
            matmul_forward(gate, h, L->w_gate, L->b_gate, (int)N, D, F, false);
            matmul_forward(up, h, L->w_up, L->b_up, (int)N, D, F, false);
            swiglu_forward(up, gate, up, N * F);
        }
        matmul_forward(x, up, L->w_down, L->b_down, (int)N, F, D, true);
    }
    if (gpt2)
        layernorm_forward(hidden, x, p->final_norm_w, p->final_norm_b, (int)N, D, c->norm_eps);
    else
        rmsnorm_forward(hidden, x, p->final_norm_w, (int)N, D, c->norm_eps);
    for (long n = 0; n < N; n++)
        if (segments[n] < 0) memset(hidden + n * D, 0, sizeof(float) * D);
    if (logits_out != NULL) {
        matmul_forward(logits_out, hidden, p->lm_head, NULL, (int)N, D, V, false);
        for (long n = 0; n < N; n++)
            if (segments[n] < 0) memset(logits_out + n * V, 0, sizeof(float) * V);
    }
done:
    mg_arena_release(&arena);
    return err->code;
}
