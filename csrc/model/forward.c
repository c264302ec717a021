/* The decoder's forward pass, shared by both families: a step appends tokens to a key/value
 * cache and runs them through every layer; a full-sequence forward is one step on a fresh,
 * single-slot cache. */
#include <limits.h>
#include <string.h>

#include "../core/alloc.h"
#include "../ops/attention.h"
#include "activations.h"
#include "model.h"
#include "transfer.h"
#include "workspace.h"

int mg_segment_positions(int *pos, const int32_t *segments, int B, int T) {
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

static int validate_step(const mg_model *m, const mg_kv_cache *cache, const int32_t *tokens,
                         const uint8_t *roles, const int32_t *segments, const int *positions, int B,
                         int Tq, mg_error *err) {
    const mg_config *c = &m->config;
    if (B <= 0 || Tq <= 0) return mg_fail(err, MG_ERR_VALUE, "empty input (batch %d x %d)", B, Tq);
    if (B != cache->B)
        return mg_fail(err, MG_ERR_VALUE, "batch of %d rows for a cache of %d rows", B, cache->B);
    if (Tq > cache->capacity - cache->length)
        return mg_fail(err, MG_ERR_VALUE, "%d more tokens exceed the cache (%d of %d used)", Tq,
                       cache->length, cache->capacity);
    const long N = (long)B * Tq;
    int longest = 0; /* the longest sequence's length, named in the errors below */
    for (long n = 0; n < N; n++) {
        if (segments[n] < -1)
            return mg_fail(err, MG_ERR_VALUE, "segments must be >= -1 (-1 marks padding), got %d",
                           segments[n]);
        if (roles[n] > MG_ROLE_SPAN)
            return mg_fail(err, MG_ERR_VALUE, "roles must be 0 (CONTEXT) or 1 (SPAN), got %d",
                           roles[n]);
        if (segments[n] < 0) continue;
        if (tokens[n] < 0 || tokens[n] >= c->vocab_size)
            return mg_fail(err, MG_ERR_VALUE, "token id %d is out of range for vocab_size %d",
                           tokens[n], c->vocab_size);
        if (positions[n] < 0)
            return mg_fail(err, MG_ERR_VALUE, "negative position %d", positions[n]);
        /* INT_MAX + 1 would wrap negative and pass the limits below */
        if (positions[n] == INT_MAX)
            return mg_fail(err, MG_ERR_VALUE, "position %d is past any model's positions",
                           positions[n]);
        if (positions[n] >= longest) longest = positions[n] + 1;
    }
    if (c->arch == MG_ARCH_GPT2 && longest > c->max_positions)
        return mg_fail(err, MG_ERR_VALUE,
                       "sequence of %d tokens exceeds the model's %d positions; use sequences "
                       "of at most %d tokens",
                       longest, c->max_positions, c->max_positions);
    if (c->sliding_window > 0 && longest > c->sliding_window)
        return mg_fail(err, MG_ERR_UNSUPPORTED,
                       "sequence of %d tokens exceeds the model's sliding window of %d, which "
                       "magnet does not implement; use sequences of at most %d tokens",
                       longest, c->sliding_window, c->sliding_window);
    return MG_OK;
}

/* Appends target t's site (when adapted) to sites[*n]: its output out (row stride ldo). */
static void lora_site(mg_lora_site *sites, int *n, const mg_model *m, int layer, mg_lora_target t,
                      float *out, int ldo, const mg_train_pass *train, float *u_scratch) {
    const mg_lora_pair *pair = mg_lora_get(m->lora, layer, t);
    if (pair == NULL) return;
    float *u = train && train->acts ? train->acts->layers[layer].lora_u[t] : u_scratch;
    sites[(*n)++] = (mg_lora_site){
        .pair = pair, .stream = MG_DROP_STREAM_LORA(layer, t), .out = out, .ldo = ldo, .u = u};
}

/* Adds the LoRA updates of the n sites, which share the input inp. A pass that keeps no record
 * gives every site the same u (u_scratch), so its sites go one at a time. */
static void apply_lora(const mg_model *m, const mg_lora_site *sites, int n, const float *inp, int N,
                       const mg_train_pass *train, float *drop_buf) {
    const float p = train ? train->lora_dropout : 0.0f;
    const uint64_t seed = train ? train->seed : 0;
    const int together = train && train->acts ? n : 1;
    for (int i = 0; i < n; i += together)
        lora_forward(m->be, sites + i, n - i < together ? n - i : together, inp, N, m->lora->scale,
                     p, seed, drop_buf);
}

/* Adds the attached LoRA update of target t (if any) to out (row stride ldo). */
static void apply_lora_one(float *out, int ldo, const float *inp, int N, const mg_model *m,
                           int layer, mg_lora_target t, const mg_train_pass *train, float *drop_buf,
                           float *u_scratch) {
    mg_lora_site site;
    int n = 0;
    lora_site(&site, &n, m, layer, t, out, ldo, train, u_scratch);
    apply_lora(m, &site, n, inp, N, train, drop_buf);
}

/* x += drop(y) over n floats (y is overwritten when dropping). */
static void residual_add(const mg_backend *be, float *x, float *y, long n,
                         const mg_train_pass *train, uint64_t stream) {
    if (train && train->resid_dropout > 0.0f)
        be->dropout_forward(be, y, y, n, train->resid_dropout, train->seed, stream);
    be->add_inplace(be, x, y, n);
}

/* Projects h[N, D] to queries (into q[N, QD]) and to keys/values written straight into the
 * cache rows after `length`. With q, k, v weights adjacent in the parameter block (params.c
 * lays them out so), one GEMM of width QD + 2 KD replaces three narrow ones. */
static void project_qkv(float *q, float *qkv, mg_kv_cache *cache, int slot, const float *h,
                        const mg_model *m, int layer, int B, int Tq, const mg_train_pass *train,
                        float *drop_buf, float *u_scratch) {
    const mg_backend *be = m->be;
    const mg_config *c = &m->config;
    const mg_layer_params *L = &m->params.layers[layer];
    const int D = c->dim, QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    const long N = (long)B * Tq;
    const int fused = mg_qkv_fused(L, QD, KD, D);
    const int W = QD + 2 * KD;
    float *outs[3] = {qkv, qkv + QD, qkv + QD + KD};
    if (fused) {
        be->matmul_forward(be, qkv, h, L->wq, NULL, (int)N, D, W, false);
    } else {
        outs[1] = qkv + N * QD;
        outs[2] = outs[1] + N * KD;
        be->matmul_forward(be, outs[0], h, L->wq, NULL, (int)N, D, QD, false);
        be->matmul_forward(be, outs[1], h, L->wk, NULL, (int)N, D, KD, false);
        be->matmul_forward(be, outs[2], h, L->wv, NULL, (int)N, D, KD, false);
    }
    mg_lora_site sites[3];
    int n = 0;
    for (int t = MG_LORA_Q; t <= MG_LORA_V; t++)
        lora_site(sites, &n, m, layer, (mg_lora_target)t, outs[t],
                  fused ? W : (t == MG_LORA_Q ? QD : KD), train, u_scratch);
    apply_lora(m, sites, n, h, (int)N, train, drop_buf);
    be->qkv_split(be, q, mg_kv_cache_rows(cache, cache->k, slot, 0),
                  mg_kv_cache_rows(cache, cache->v, slot, 0), outs[0], outs[1], outs[2],
                  fused ? W : QD, fused ? W : KD, L->bq, L->bk, L->bv, B, Tq, QD, KD,
                  cache->capacity, cache->length);
}

/* Each buffer of a pass is checked against the free memory on its own, and buffers not yet
 * touched do not lower it: a pass whose activations (bytes), fresh key/value cache and outputs
 * (floats, allocated by the caller) cannot exist together would be granted by overcommit and
 * killed when touched. Checked as a whole when it is large. */
static int pass_exceeds_memory(const mg_kv_cache *cache, size_t bytes, long hidden_floats,
                               long logits_floats) {
    size_t need = bytes + sizeof(float) * ((size_t)hidden_floats + (size_t)logits_floats);
    if (cache->length == 0)
        need += 2 * sizeof(float) * (size_t)cache->n_slots * (size_t)cache->B *
                (size_t)cache->capacity * (size_t)cache->kv_dim;
    return need >= MG_CHECKED_ALLOC && need > mg_memory_available();
}

/* One step (see mg_model_step_ex). With keep_rows (host, n_keep flat row indices into the
 * B x Tq tokens), only those rows leave the last layer: its keys and values and its attention
 * run for every row, as the cache and the other queries need them, but the output projection,
 * the MLP, the final norm and the LM head run on the kept rows alone, which is exact because
 * those are row-wise. hidden_out and logits_out then hold n_keep rows. Not for training. */
static int model_step(const mg_model *m, mg_kv_cache *cache, const int32_t *tokens,
                      const uint8_t *roles, const int32_t *segments, const int *positions, int B,
                      int Tq, float *hidden_out, float *logits_out, int logits_last_only,
                      const int64_t *keep_rows, int n_keep, const mg_train_pass *train,
                      mg_error *err) {
    const mg_backend *be = m->be;
    const mg_config *c = &m->config;
    const mg_params *p = &m->params;
    if (validate_step(m, cache, tokens, roles, segments, positions, B, Tq, err) != MG_OK)
        return err->code;
    if (keep_rows != NULL) {
        if (train != NULL || logits_last_only || n_keep <= 0)
            return mg_fail(err, MG_ERR_VALUE, "internal: kept rows need an inference pass");
        for (int i = 0; i < n_keep; i++)
            if (keep_rows[i] < 0 || keep_rows[i] >= (int64_t)B * Tq)
                return mg_fail(err, MG_ERR_VALUE, "internal: kept row %lld is outside %d x %d",
                               (long long)keep_rows[i], B, Tq);
    }
    /* a caller that reads only the last rows' logits, and no states, needs no other rows out of
     * the last layer either: those rows are kept (one token per row gains nothing) */
    const int last_only = keep_rows == NULL && logits_last_only && logits_out != NULL &&
                          hidden_out == NULL && train == NULL && Tq > 1;
    const long K = keep_rows ? n_keep : last_only ? B : 0;
    if (cache->be != be)
        return mg_fail(err, MG_ERR_VALUE, "internal: the cache lives on another backend");
    mg_activations *rec = train ? train->acts : NULL;
    if (rec && (rec->N != (long)B * Tq || cache->n_slots != c->n_layers || cache->length != 0))
        return mg_fail(err, MG_ERR_VALUE, "internal: training pass buffers do not fit the batch");
    const long N = (long)B * Tq;
    const int D = c->dim, F = c->hidden_dim, V = c->vocab_size;
    const int QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    const int Tk = cache->length + Tq;
    const int r = m->lora ? m->lora->rank : 0;
    const int widest = F > D ? (F > QD ? F : QD) : (D > QD ? D : QD);
    const attention_shape shape = {
        B, Tq, Tk, cache->length, cache->capacity, c->n_heads, c->n_kv_heads, c->head_dim};
    const size_t plan[] = {
        (size_t)N * D, rec ? 0 : (size_t)N * D, (size_t)N * (QD + 2 * KD), rec ? 0 : (size_t)N * QD,
        rec ? 0 : (size_t)N * QD, rec ? 0 : (size_t)N * F, rec ? 0 : (size_t)N * F, (size_t)N * D,
        be->attention_scratch(be, &shape, false), hidden_out || rec ? 0 : (size_t)N * D,
        (size_t)B * D, m->lora ? (size_t)N * widest : 0, m->lora ? (size_t)N * r : 0,
        /* host arrays staged into backend memory (none on the CPU) */
        mg_stage_bytes(be, (size_t)N * 4) / 4, rec ? 0 : mg_stage_bytes(be, (size_t)N * 4) / 4,
        mg_stage_bytes(be, (size_t)N * 4) / 4, mg_stage_bytes(be, (size_t)N * 4) / 4,
        mg_stage_bytes(be, (size_t)B * 8) / 4,
        /* the kept rows: their attention outputs and residual stream, indices, segments */
        (size_t)K * QD, (size_t)K * D, mg_stage_bytes(be, (size_t)K * 8) / 4,
        mg_stage_bytes(be, (size_t)K * 4) / 4};
    size_t bytes = 0;
    for (unsigned i = 0; i < sizeof(plan) / sizeof(plan[0]); i++)
        bytes += mg_arena_floats_bytes(plan[i]);
    if (mg_on_host(be) &&
        pass_exceeds_memory(cache, bytes, hidden_out && !keep_rows ? N * D : 0,
                            logits_out && !keep_rows ? (logits_last_only ? (long)B : N) * V : 0))
        return mg_fail(err, MG_ERR_NOMEM,
                       "a pass over %d x %d tokens needs more memory than is available "
                       "(activations, key/value cache and outputs together); use a smaller "
                       "batch or shorter sequences",
                       B, Tq);
    int32_t *ids_host = mg_alloc_uninit((size_t)N, sizeof(int32_t), "token ids", err);
    int64_t *last_rows = mg_alloc_uninit((size_t)B, sizeof(int64_t), "last rows", err);
    int32_t *keep_segs = K ? mg_alloc_uninit((size_t)K, sizeof(int32_t), "kept rows", err) : NULL;
    if (err->code != MG_OK) {
        mg_free(ids_host);
        mg_free(last_rows);
        mg_free(keep_segs);
        return err->code;
    }
    mg_workspace ws;
    if (mg_workspace_init(&ws, be, bytes, err) != 0) {
        mg_free(ids_host);
        mg_free(last_rows);
        mg_free(keep_segs);
        return err->code;
    }
    float *x = mg_workspace_floats(&ws, plan[0], err);
    float *h_buf = mg_workspace_floats(&ws, plan[1], err);
    float *qkv = mg_workspace_floats(&ws, plan[2], err);
    float *q_buf = mg_workspace_floats(&ws, plan[3], err);
    float *att_buf = mg_workspace_floats(&ws, plan[4], err);
    float *gate_buf = mg_workspace_floats(&ws, plan[5], err);
    float *up_buf = mg_workspace_floats(&ws, plan[6], err);
    float *tmp = mg_workspace_floats(&ws, plan[7], err);
    float *scratch = mg_workspace_floats(&ws, plan[8], err);
    float *hidden = hidden_out ? hidden_out
                    : rec      ? rec->hidden
                               : mg_workspace_floats(&ws, plan[9], err);
    float *last = mg_workspace_floats(&ws, plan[10], err);
    float *drop_buf = mg_workspace_floats(&ws, plan[11], err);
    float *u_scratch = mg_workspace_floats(&ws, plan[12], err);
    void *ids_dev = mg_workspace_floats(&ws, plan[13], err);
    void *pos_dev = mg_workspace_floats(&ws, plan[14], err);
    void *roles_dev = mg_workspace_floats(&ws, plan[15], err);
    void *segs_dev = mg_workspace_floats(&ws, plan[16], err);
    void *last_dev = mg_workspace_floats(&ws, plan[17], err);
    float *keep_att = mg_workspace_floats(&ws, plan[18], err);
    float *keep_x = mg_workspace_floats(&ws, plan[19], err);
    void *keep_dev = mg_workspace_floats(&ws, plan[20], err);
    void *keep_segs_dev = mg_workspace_floats(&ws, plan[21], err);
    if (err->code != MG_OK) goto done;
    for (int b = 0; b < B; b++)
        last_rows[b] = (int64_t)b * Tq + Tq - 1;
    if (last_only) { /* the kept rows' logits are then the last rows' */
        keep_rows = last_rows;
        logits_last_only = 0;
    }

    for (long n = 0; n < N; n++)
        ids_host[n] = segments[n] < 0 ? 0 : tokens[n];
    const int32_t *ids = mg_stage(be, ids_dev, ids_host, (size_t)N * 4);
    /* a training pass keeps the positions for the backward pass */
    const int *pos = mg_stage(be, rec ? (void *)rec->pos : pos_dev, positions, (size_t)N * 4);
    if (rec && mg_on_host(be)) memcpy(rec->pos, positions, (size_t)N * sizeof(int));
    const uint8_t *q_roles = mg_stage(be, roles_dev, roles, (size_t)N);
    const int32_t *q_segs = mg_stage(be, segs_dev, segments, (size_t)N * 4);
    const int64_t *keep_idx = NULL;
    const int32_t *keep_q_segs = NULL;
    if (K) {
        for (long i = 0; i < K; i++)
            keep_segs[i] = segments[keep_rows[i]];
        keep_idx = mg_stage(be, keep_dev, keep_rows, (size_t)K * 8);
        keep_q_segs = mg_stage(be, keep_segs_dev, keep_segs, (size_t)K * 4);
    }
    /* the keys' roles and segments join the cache (copies within the backend: no host waits) */
    for (int b = 0; b < B; b++) {
        be->copy(be, cache->roles + (long)b * cache->capacity + cache->length,
                 q_roles + (long)b * Tq, (size_t)Tq);
        be->copy(be, cache->segments + (long)b * cache->capacity + cache->length,
                 q_segs + (long)b * Tq, sizeof(int32_t) * Tq);
    }

    const int gpt2 = c->arch == MG_ARCH_GPT2;
    be->embedding_forward(be, x, ids, pos, p->tok_embeddings, gpt2 ? p->pos_embeddings : NULL,
                          (int)N, D);
    long Nl = N; /* rows after each layer's attention */
    for (int l = 0; l < c->n_layers; l++) {
        const mg_layer_params *L = &p->layers[l];
        mg_layer_activations *R = rec ? &rec->layers[l] : NULL;
        float *h1 = R ? R->h1 : h_buf, *q = R ? R->q : q_buf, *att = R ? R->att : att_buf;
        float *h2 = R ? R->h2 : h_buf, *gate = R ? R->gate : gate_buf, *up = R ? R->up : up_buf;
        float *act = R ? R->act : up_buf;
        const int slot = l % cache->n_slots;
        if (R) be->copy(be, R->x_in, x, sizeof(float) * N * D);
        if (gpt2)
            be->layernorm_forward(be, h1, x, L->attn_norm_w, L->attn_norm_b, (int)N, D,
                                  c->norm_eps);
        else
            be->rmsnorm_forward(be, h1, x, L->attn_norm_w, (int)N, D, c->norm_eps);
        project_qkv(q, qkv, cache, slot, h1, m, l, B, Tq, train, drop_buf, u_scratch);
        if (!gpt2) {
            be->rope_forward(be, q, pos, m->inv_freq, (int)N, c->n_heads, c->head_dim);
            for (int b = 0; b < B; b++)
                be->rope_forward(
                    be, mg_kv_cache_rows(cache, cache->k, slot, b) + (long)cache->length * KD,
                    pos + (long)b * Tq, m->inv_freq, Tq, c->n_kv_heads, c->head_dim);
        }
        be->attention_forward(be, att, q, mg_kv_cache_rows(cache, cache->k, slot, 0),
                              mg_kv_cache_rows(cache, cache->v, slot, 0), q_roles, q_segs,
                              cache->roles, cache->segments, shape, R ? R->att_stats : NULL,
                              scratch);
        float *att_in = att;
        if (K && l == c->n_layers - 1) {
            /* the last layer goes on with the kept rows only (see model_step) */
            be->gather_rows(be, keep_att, att, keep_idx, K, QD);
            be->gather_rows(be, keep_x, x, keep_idx, K, D);
            att_in = keep_att;
            x = keep_x;
            Nl = K;
        }
        be->matmul_forward(be, tmp, att_in, L->wo, L->bo, (int)Nl, QD, D, false);
        apply_lora_one(tmp, D, att_in, (int)Nl, m, l, MG_LORA_O, train, drop_buf, u_scratch);
        residual_add(be, x, tmp, Nl * D, train, MG_DROP_STREAM_ATTN(l));
        if (R) be->copy(be, R->x_mid, x, sizeof(float) * Nl * D);

        if (gpt2) {
            be->layernorm_forward(be, h2, x, L->mlp_norm_w, L->mlp_norm_b, (int)Nl, D, c->norm_eps);
            be->matmul_forward(be, up, h2, L->w_up, L->b_up, (int)Nl, D, F, false);
            apply_lora_one(up, F, h2, (int)Nl, m, l, MG_LORA_UP, train, drop_buf, u_scratch);
            if (act != up) be->copy(be, act, up, sizeof(float) * Nl * F);
            be->gelu_tanh_forward(be, act, Nl * F);
        } else {
            be->rmsnorm_forward(be, h2, x, L->mlp_norm_w, (int)Nl, D, c->norm_eps);
            be->matmul_forward(be, gate, h2, L->w_gate, L->b_gate, (int)Nl, D, F, false);
            be->matmul_forward(be, up, h2, L->w_up, L->b_up, (int)Nl, D, F, false);
            mg_lora_site sites[2];
            int n = 0;
            lora_site(sites, &n, m, l, MG_LORA_GATE, gate, F, train, u_scratch);
            lora_site(sites, &n, m, l, MG_LORA_UP, up, F, train, u_scratch);
            apply_lora(m, sites, n, h2, (int)Nl, train, drop_buf);
            be->swiglu_forward(be, act, gate, up, Nl * F);
        }
        be->matmul_forward(be, tmp, act, L->w_down, L->b_down, (int)Nl, F, D, false);
        apply_lora_one(tmp, D, act, (int)Nl, m, l, MG_LORA_DOWN, train, drop_buf, u_scratch);
        residual_add(be, x, tmp, Nl * D, train, MG_DROP_STREAM_MLP(l));
    }
    if (rec) be->copy(be, rec->x_final, x, sizeof(float) * Nl * D);
    if (gpt2)
        be->layernorm_forward(be, hidden, x, p->final_norm_w, p->final_norm_b, (int)Nl, D,
                              c->norm_eps);
    else
        be->rmsnorm_forward(be, hidden, x, p->final_norm_w, (int)Nl, D, c->norm_eps);
    be->zero_padding_rows(be, hidden, K ? keep_q_segs : q_segs, Nl, D);
    if (rec && hidden != rec->hidden) be->copy(be, rec->hidden, hidden, sizeof(float) * Nl * D);
    if (logits_out != NULL && logits_last_only) {
        const int64_t *rows = mg_stage(be, last_dev, last_rows, (size_t)B * 8);
        be->gather_rows(be, last, hidden, rows, B, D);
        be->matmul_forward(be, logits_out, last, p->lm_head, NULL, B, D, V, false);
    } else if (logits_out != NULL) {
        be->matmul_forward(be, logits_out, hidden, p->lm_head, NULL, (int)Nl, D, V, false);
        be->zero_padding_rows(be, logits_out, K ? keep_q_segs : q_segs, Nl, V);
    }
    if (be->sync(be, err) == MG_OK) cache->length += Tq;
done:
    mg_workspace_release(&ws);
    mg_free(ids_host);
    mg_free(last_rows);
    mg_free(keep_segs);
    return err->code;
}

int mg_model_step(const mg_model *m, mg_kv_cache *cache, const int32_t *tokens,
                  const uint8_t *roles, const int32_t *segments, const int *positions, int B,
                  int Tq, float *hidden_out, float *logits_out, int logits_last_only,
                  mg_error *err) {
    return mg_model_step_ex(m, cache, tokens, roles, segments, positions, B, Tq, hidden_out,
                            logits_out, logits_last_only, NULL, err);
}

int mg_model_step_ex(const mg_model *m, mg_kv_cache *cache, const int32_t *tokens,
                     const uint8_t *roles, const int32_t *segments, const int *positions, int B,
                     int Tq, float *hidden_out, float *logits_out, int logits_last_only,
                     const mg_train_pass *train, mg_error *err) {
    return model_step(m, cache, tokens, roles, segments, positions, B, Tq, hidden_out, logits_out,
                      logits_last_only, NULL, 0, train, err);
}

int mg_model_step_rows(const mg_model *m, mg_kv_cache *cache, const int32_t *tokens,
                       const uint8_t *roles, const int32_t *segments, const int *positions, int B,
                       int Tq, const int64_t *keep_rows, int n_keep, float *hidden_out,
                       float *logits_out, mg_error *err) {
    if (keep_rows == NULL)
        return mg_fail(err, MG_ERR_VALUE, "internal: mg_model_step_rows needs rows to keep");
    return model_step(m, cache, tokens, roles, segments, positions, B, Tq, hidden_out, logits_out,
                      0, keep_rows, n_keep, NULL, err);
}

int mg_model_forward(const mg_model *m, const int32_t *tokens, const uint8_t *roles,
                     const int32_t *segments, int B, int T, float *hidden_out, float *logits_out,
                     mg_error *err) {
    if (B <= 0 || T <= 0) return mg_fail(err, MG_ERR_VALUE, "empty input (batch %d x %d)", B, T);
    if ((long)B * T > (1L << 28))
        return mg_fail(err, MG_ERR_NOMEM, "input of %ld tokens is too large", (long)B * T);
    int *pos = mg_alloc_uninit((size_t)B * T, sizeof(int), "positions", err);
    if (pos == NULL) return err->code;
    mg_segment_positions(pos, segments, B, T);
    mg_kv_cache cache;
    const mg_backend *be = m->be;
    const size_t hidden_bytes = hidden_out ? (size_t)B * T * m->config.dim * sizeof(float) : 0;
    const size_t logits_bytes =
        logits_out ? (size_t)B * T * m->config.vocab_size * sizeof(float) : 0;
    /* outputs land in backend memory first when the model is not on the host */
    float *hidden_dev = hidden_out, *logits_dev = logits_out;
    if (!mg_on_host(be)) {
        if (hidden_bytes) hidden_dev = be->alloc(be, hidden_bytes, "hidden states", err);
        if (logits_bytes && err->code == MG_OK)
            logits_dev = be->alloc(be, logits_bytes, "logits", err);
    }
    if (err->code == MG_OK && mg_kv_cache_init(&cache, be, &m->config, B, T, 1, err) == MG_OK) {
        if (mg_model_step(m, &cache, tokens, roles, segments, pos, B, T, hidden_dev, logits_dev, 0,
                          err) == MG_OK &&
            !mg_on_host(be)) {
            if (hidden_bytes) be->download(be, hidden_out, hidden_dev, hidden_bytes);
            if (logits_bytes) be->download(be, logits_out, logits_dev, logits_bytes);
            be->sync(be, err);
        }
        mg_kv_cache_release(&cache);
    }
    if (!mg_on_host(be)) {
        if (hidden_bytes && hidden_dev) be->free(be, hidden_dev);
        if (logits_bytes && logits_dev) be->free(be, logits_dev);
    }
    mg_free(pos);
    return err->code;
}
