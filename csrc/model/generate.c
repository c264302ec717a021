#include "generate.h"

#include <string.h>

#include "../core/alloc.h"
#include "../ops/attention.h"
#include "transfer.h"

int mg_generator_init(mg_generator *g, const mg_model *m, int B, int capacity, int keep_hidden,
                      const sampling_params *params, uint64_t seed, const int *eos_ids, int n_eos,
                      mg_error *err) {
    memset(g, 0, sizeof(*g));
    const mg_config *c = &m->config;
    if (B <= 0 || capacity <= 0)
        return mg_fail(err, MG_ERR_VALUE, "invalid session size (%d rows x %d tokens)", B,
                       capacity);
    const int first =
        capacity < MG_GENERATOR_FIRST_CAPACITY ? capacity : MG_GENERATOR_FIRST_CAPACITY;
    if ((long)B * first > (1L << 28))
        return mg_fail(err, MG_ERR_NOMEM, "session of %d rows x %d tokens is too large", B, first);
    if (params->do_sample && !(params->temperature > 0.0))
        return mg_fail(err, MG_ERR_VALUE, "temperature must be > 0 when sampling");
    if (!(params->top_p > 0.0 && params->top_p <= 1.0))
        return mg_fail(err, MG_ERR_VALUE, "top_p must lie in (0, 1]");
    if (!(params->min_p >= 0.0 && params->min_p <= 1.0))
        return mg_fail(err, MG_ERR_VALUE, "min_p must lie in [0, 1]");
    if (params->top_k < 0) return mg_fail(err, MG_ERR_VALUE, "top_k must be >= 0");
    if (!(params->repetition_penalty > 0.0))
        return mg_fail(err, MG_ERR_VALUE, "repetition_penalty must be > 0");
    if (n_eos < 0) return mg_fail(err, MG_ERR_VALUE, "%d EOS ids", n_eos);
    for (int i = 0; i < n_eos; i++)
        if (eos_ids[i] < 0 || eos_ids[i] >= c->vocab_size)
            return mg_fail(err, MG_ERR_VALUE, "eos id %d is out of range", eos_ids[i]);
    g->model = m;
    g->max_capacity = capacity;
    g->B = B;
    g->V = c->vocab_size;
    g->D = c->dim;
    g->params = *params;
    g->seed = seed;
    const mg_backend *be = m->be;
    if (mg_kv_cache_init(&g->cache, be, c, B, first, c->n_layers, err) != MG_OK) return err->code;
    const size_t BV = (size_t)B * g->V;
    g->logits = mg_alloc(BV, sizeof(float), "logits", err);
    g->greedy_tok = mg_alloc((size_t)B, sizeof(int32_t), "greedy tokens", err);
    g->greedy_lp = mg_alloc((size_t)B, sizeof(float), "greedy log-probabilities", err);
    g->device_greedy = !mg_on_host(be) && !params->do_sample && params->repetition_penalty == 1.0;
    g->dev_logits = g->logits;
    if (!mg_on_host(be) && err->code == MG_OK)
        g->dev_logits = be->alloc(be, BV * sizeof(float), "device logits", err);
    /* in the model's backend memory: what the model writes */
    if (err->code == MG_OK) g->step_logits = be->alloc(be, BV * sizeof(float), "step logits", err);
    if (keep_hidden && err->code == MG_OK)
        g->hidden = be->alloc(be, (size_t)B * first * g->D * sizeof(float), "hidden states", err);
    if (err->code == MG_OK)
        g->step_hidden = be->alloc(be, (size_t)B * g->D * sizeof(float), "step states", err);
    g->seen = mg_alloc(BV, 1, "seen tokens", err);
    g->is_eos = mg_alloc((size_t)g->V, 1, "EOS marks", err);
    g->finished = mg_alloc((size_t)B, 1, "finished rows", err);
    g->pending = mg_alloc((size_t)B, sizeof(int32_t), "pending tokens", err);
    g->next_pos = mg_alloc((size_t)B, sizeof(int32_t), "positions", err);
    g->scratch = mg_alloc((size_t)B * SAMPLING_SCRATCH_WORDS(g->V), sizeof(uint64_t),
                          "sampler scratch", err);
    g->step_tok = mg_alloc((size_t)B, sizeof(int32_t), "step tokens", err);
    g->step_seg = mg_alloc((size_t)B, sizeof(int32_t), "step segments", err);
    g->step_pos = mg_alloc((size_t)B, sizeof(int), "step positions", err);
    g->step_role = mg_alloc((size_t)B, 1, "step roles", err);
    if (err->code != MG_OK) {
        mg_generator_release(g);
        return err->code;
    }
    for (int b = 0; b < B; b++)
        g->pending[b] = -1;
    for (int i = 0; i < n_eos; i++)
        g->is_eos[eos_ids[i]] = 1;
    return MG_OK;
}

void mg_generator_release(mg_generator *g) {
    mg_kv_cache_release(&g->cache);
    if (g->model != NULL && g->dev_logits != g->logits)
        g->model->be->free(g->model->be, g->dev_logits);
    mg_free(g->logits);
    mg_free(g->greedy_tok);
    mg_free(g->greedy_lp);
    if (g->model != NULL) {
        const mg_backend *be = g->model->be;
        be->free(be, g->step_logits);
        be->free(be, g->hidden);
        be->free(be, g->step_hidden);
    }
    mg_free(g->seen);
    mg_free(g->is_eos);
    mg_free(g->finished);
    mg_free(g->pending);
    mg_free(g->next_pos);
    mg_free(g->scratch);
    mg_free(g->step_tok);
    mg_free(g->step_seg);
    mg_free(g->step_pos);
    mg_free(g->step_role);
    memset(g, 0, sizeof(*g));
}

/* Makes room for `need` tokens per row: a larger cache (and state buffer) holding what the
 * session has appended so far, twice the size or what is needed, at most max_capacity. */
static int reserve(mg_generator *g, int need, mg_error *err) {
    mg_kv_cache *old = &g->cache;
    if (need <= old->capacity) return MG_OK;
    if (need > g->max_capacity)
        return mg_fail(err, MG_ERR_VALUE, "the session is full (%d tokens per row)",
                       g->max_capacity);
    int size = old->capacity > g->max_capacity / 2 ? g->max_capacity : 2 * old->capacity;
    if (size < need) size = need;
    if ((long)g->B * size > (1L << 28))
        return mg_fail(err, MG_ERR_NOMEM, "session of %d rows x %d tokens is too large", g->B,
                       size);
    const mg_backend *be = g->model->be;
    mg_kv_cache grown;
    if (mg_kv_cache_init(&grown, be, &g->model->config, g->B, size, old->n_slots, err) != MG_OK)
        return err->code;
    float *hidden = NULL;
    if (g->hidden != NULL) {
        hidden = be->alloc(be, (size_t)g->B * size * g->D * sizeof(float), "hidden states", err);
        if (hidden == NULL) {
            mg_kv_cache_release(&grown);
            return err->code;
        }
    }
    const int n = old->length;
    if (n > 0) {
        const size_t kv_bytes = sizeof(float) * (size_t)n * old->kv_dim;
        for (int s = 0; s < old->n_slots; s++)
            for (int b = 0; b < g->B; b++) {
                be->copy(be, mg_kv_cache_rows(&grown, grown.k, s, b),
                         mg_kv_cache_rows(old, old->k, s, b), kv_bytes);
                be->copy(be, mg_kv_cache_rows(&grown, grown.v, s, b),
                         mg_kv_cache_rows(old, old->v, s, b), kv_bytes);
            }
        for (int b = 0; b < g->B; b++) {
            be->copy(be, grown.roles + (long)b * size, old->roles + (long)b * old->capacity,
                     (size_t)n);
            be->copy(be, grown.segments + (long)b * size, old->segments + (long)b * old->capacity,
                     sizeof(int32_t) * n);
            if (hidden != NULL)
                be->copy(be, hidden + (long)b * size * g->D,
                         g->hidden + (long)b * old->capacity * g->D, sizeof(float) * n * g->D);
        }
    }
    grown.length = n;
    if (be->sync(be, err) != MG_OK) {
        mg_kv_cache_release(&grown);
        if (hidden != NULL) be->free(be, hidden);
        return err->code;
    }
    mg_kv_cache_release(old);
    *old = grown;
    if (hidden != NULL) {
        be->free(be, g->hidden);
        g->hidden = hidden;
    }
    return MG_OK;
}

/* After dev_logits changed: a GPU decoding greedily chooses there and reads back the choices;
 * otherwise the host copy follows (on the CPU they are one buffer). */
static void refresh_logits(mg_generator *g) {
    const mg_backend *be = g->model->be;
    if (g->device_greedy) {
        be->greedy_rows(be, g->dev_logits, g->B, g->V, g->greedy_tok, g->greedy_lp);
        g->host_stale = 1;
    } else if (g->dev_logits != g->logits) {
        be->download(be, g->logits, g->dev_logits, sizeof(float) * (size_t)g->B * g->V);
    }
}

/* The host logits, current (read back if a greedy GPU session skipped that). */
const float *mg_generator_logits(mg_generator *g) {
    if (g->host_stale) {
        g->model->be->download(g->model->be, g->logits, g->dev_logits,
                               sizeof(float) * (size_t)g->B * g->V);
        g->host_stale = 0;
    }
    return g->logits;
}

/* Runs one model step of T tokens per row and keeps its states, and the logits of each row whose
 * last token is not padding (an idle row keeps its prediction). */
static int run_step(mg_generator *g, const int32_t *tokens, const uint8_t *roles,
                    const int32_t *segments, const int *positions, int T, float *hidden_tmp,
                    mg_error *err) {
    const int start = g->cache.length;
    if (mg_model_step(g->model, &g->cache, tokens, roles, segments, positions, g->B, T, hidden_tmp,
                      g->step_logits, 1, err) != MG_OK)
        return err->code;
    const int D = g->D;
    const mg_backend *be = g->model->be;
    int all_live = 1;
    for (int b = 0; b < g->B; b++)
        all_live &= segments[(long)b * T + T - 1] >= 0;
    const size_t row_bytes = sizeof(float) * g->V;
    if (all_live) /* one copy instead of one per row */
        be->copy(be, g->dev_logits, g->step_logits, row_bytes * g->B);
    for (int b = 0; b < g->B; b++) {
        if (!all_live && segments[(long)b * T + T - 1] >= 0)
            be->copy(be, g->dev_logits + (long)b * g->V, g->step_logits + (long)b * g->V,
                     row_bytes);
        if (g->hidden != NULL)
            be->copy(be, g->hidden + ((long)b * g->cache.capacity + start) * D,
                     hidden_tmp + (long)b * T * D, sizeof(float) * T * D);
        for (int t = 0; t < T; t++) {
            const long n = (long)b * T + t;
            if (segments[n] < 0) continue;
            g->seen[(long)b * g->V + tokens[n]] = 1;
            if (positions[n] + 1 > g->next_pos[b]) g->next_pos[b] = positions[n] + 1;
        }
    }
    g->has_logits = 1;
    refresh_logits(g);
    return MG_OK;
}

int mg_generator_append(mg_generator *g, const int32_t *tokens, const uint8_t *roles,
                        const int32_t *segments, const int32_t *positions, int T, mg_error *err) {
    if (T <= 0) return mg_fail(err, MG_ERR_VALUE, "nothing to append");
    if (T > g->max_capacity - g->cache.length)
        return mg_fail(err, MG_ERR_VALUE, "%d more tokens exceed the session (%d of %d used)", T,
                       g->cache.length, g->max_capacity);
    if (reserve(g, g->cache.length + T, err) != MG_OK) return err->code;
    const size_t N = (size_t)g->B * T;
    const mg_backend *be = g->model->be;
    int *pos = mg_alloc_uninit(N, sizeof(int), "positions", err);
    float *hidden = NULL; /* the states of every new token, only for a session that keeps them */
    if (err->code == MG_OK && g->hidden != NULL)
        hidden = be->alloc(be, N * g->D * sizeof(float), "states", err);
    if (err->code == MG_OK) {
        for (size_t n = 0; n < N; n++)
            pos[n] = segments[n] < 0 ? 0 : positions[n];
        run_step(g, tokens, roles, segments, pos, T, hidden, err);
    }
    mg_free(pos);
    if (hidden) be->free(be, hidden);
    return err->code;
}

int mg_generator_logits_at(mg_generator *g, const int32_t *index, mg_error *err) {
    if (g->hidden == NULL)
        return mg_fail(err, MG_ERR_VALUE, "this session does not keep hidden states");
    const mg_backend *be = g->model->be;
    int rows = 0;
    for (int b = 0; b < g->B; b++) {
        if (index[b] < 0) continue;
        if (index[b] >= g->cache.length)
            return mg_fail(err, MG_ERR_VALUE, "index %d is beyond the %d appended tokens", index[b],
                           g->cache.length);
        be->copy(be, g->step_hidden + (long)rows++ * g->D,
                 g->hidden + ((long)b * g->cache.capacity + index[b]) * g->D, sizeof(float) * g->D);
    }
    if (rows == 0) return MG_OK;
    float *out = be->alloc(be, (size_t)rows * g->V * sizeof(float), "logits", err);
    if (out == NULL) return err->code;
    be->matmul_forward(be, out, g->step_hidden, g->model->params.lm_head, NULL, rows, g->D, g->V,
                       false);
    mg_generator_logits(g); /* rows not recomputed here keep their current values */
    rows = 0;
    for (int b = 0; b < g->B; b++)
        if (index[b] >= 0)
            be->copy(be, g->dev_logits + (long)b * g->V, out + (long)rows++ * g->V,
                     sizeof(float) * g->V);
    be->free(be, out);
    refresh_logits(g);
    return be->sync(be, err);
}

/* Samples the rows with active[b] into tokens[b] (others -1); draws advance once per call. */
static mg_code sample_rows(mg_generator *g, const uint8_t *active, int32_t *tokens, float *logprobs,
                           mg_error *err) {
    const int V = g->V;
    const uint64_t step = g->draws++;
    if (g->device_greedy && g->host_stale) { /* chosen on the device already */
        for (int b = 0; b < g->B; b++) {
            tokens[b] = active[b] ? g->greedy_tok[b] : -1;
            if (logprobs != NULL) logprobs[b] = active[b] ? g->greedy_lp[b] : 0.0f;
        }
        return MG_OK;
    }
    const float *logits = mg_generator_logits(g);
#pragma omp parallel for schedule(static) if (g->B > 1)
    for (int b = 0; b < g->B; b++) {
        float lp = 0.0f;
        int tok = -1;
        if (active[b]) {
            const double u = sampling_uniform(g->seed, step, (uint64_t)b);
            tok = sampling_choose(logits + (long)b * V, V, g->seen + (long)b * V, &g->params, u,
                                  g->scratch + (size_t)b * SAMPLING_SCRATCH_WORDS(V), &lp);
        }
        tokens[b] = tok;
        if (logprobs != NULL) logprobs[b] = lp;
    }
    for (int b = 0; b < g->B; b++)
        if (active[b] && tokens[b] < 0)
            return mg_fail(err, MG_ERR_VALUE,
                           "cannot sample the next token of sequence %d: its logits are all NaN "
                           "or -inf (the model computes NaN; check its weights and inputs)",
                           b);
    return MG_OK;
}

int mg_generator_decode_step(mg_generator *g, int32_t *tokens, float *logprobs, mg_error *err) {
    if (!g->has_logits) return mg_fail(err, MG_ERR_VALUE, "append a prompt before decoding");
    int any = 0;
    for (int b = 0; b < g->B; b++)
        any |= g->pending[b] >= 0;
    if (any) {
        if (reserve(g, g->cache.length + 1, err) != MG_OK) return err->code;
        for (int b = 0; b < g->B; b++) {
            const int live = g->pending[b] >= 0;
            g->step_tok[b] = live ? g->pending[b] : 0;
            g->step_seg[b] = live ? 0 : -1;
            g->step_pos[b] = live ? g->next_pos[b] : 0;
            g->step_role[b] = MG_ROLE_SPAN;
        }
        if (run_step(g, g->step_tok, g->step_role, g->step_seg, g->step_pos, 1, g->step_hidden,
                     err) != MG_OK)
            return err->code;
    }
    for (int b = 0; b < g->B; b++)
        g->step_role[b] = !g->finished[b];
    if (sample_rows(g, g->step_role, tokens, logprobs, err) != MG_OK) return err->code;
    for (int b = 0; b < g->B; b++) {
        g->pending[b] = tokens[b];
        if (tokens[b] >= 0 && g->is_eos[tokens[b]]) g->finished[b] = 1;
    }
    return MG_OK;
}

int mg_generator_span_step(mg_generator *g, const int32_t *positions, int32_t *tokens,
                           float *logprobs, mg_error *err) {
    if (!g->has_logits) return mg_fail(err, MG_ERR_VALUE, "append the context before a span");
    if (reserve(g, g->cache.length + 1, err) != MG_OK) return err->code;
    for (int b = 0; b < g->B; b++)
        g->step_role[b] = positions[b] >= 0;
    if (sample_rows(g, g->step_role, tokens, logprobs, err) != MG_OK) return err->code;
    for (int b = 0; b < g->B; b++) {
        const int live = tokens[b] >= 0;
        g->step_tok[b] = live ? tokens[b] : 0;
        g->step_seg[b] = live ? 0 : -1;
        g->step_pos[b] = live ? positions[b] : 0;
        g->step_role[b] = MG_ROLE_SPAN;
    }
    return run_step(g, g->step_tok, g->step_role, g->step_seg, g->step_pos, 1, g->step_hidden, err);
}

int mg_generator_logprob(mg_generator *g, const int32_t *tokens, float *out, mg_error *err) {
    if (!g->has_logits) return mg_fail(err, MG_ERR_VALUE, "no logits yet");
    const float *logits = mg_generator_logits(g);
    for (int b = 0; b < g->B; b++) {
        if (tokens[b] >= g->V)
            return mg_fail(err, MG_ERR_VALUE, "token id %d is out of range", tokens[b]);
        out[b] = tokens[b] < 0 ? 0.0f : sampling_logprob(logits + (long)b * g->V, g->V, tokens[b]);
    }
    return MG_OK;
}
