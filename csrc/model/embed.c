#include "embed.h"

#include <string.h>

#include "../core/alloc.h"
#include "kv_cache.h"
#include "transfer.h"
#include "workspace.h"

int mg_model_embed(const mg_model *m, const int32_t *tokens, const int32_t *segments,
                   const int32_t *start, const int32_t *end, int B, int T, mg_pooling mode,
                   int normalize, float *out, mg_error *err) {
    if (B <= 0 || T <= 0) return mg_fail(err, MG_ERR_VALUE, "empty input (batch %d x %d)", B, T);
    if (mode != MG_POOL_LAST && mode != MG_POOL_MEAN)
        return mg_fail(err, MG_ERR_VALUE, "unknown pooling mode %d", (int)mode);
    for (int b = 0; b < B; b++) {
        if (start[b] < 0 || start[b] >= end[b] || end[b] > T)
            return mg_fail(err, MG_ERR_VALUE,
                           "row %d: pooling range [%d, %d) is not inside [0, %d)", b, start[b],
                           end[b], T);
        for (int t = start[b]; t < end[b]; t++)
            if (segments[(long)b * T + t] < 0)
                return mg_fail(err, MG_ERR_VALUE, "row %d: pooling range covers padding", b);
    }
    const size_t N = (size_t)B * T;
    const int D = m->config.dim;
    const mg_backend *be = m->be;
    size_t floats;
    if (mg_mul_size(N, (size_t)D, &floats) != 0)
        return mg_fail(err, MG_ERR_NOMEM, "input of %zu tokens is too large", N);
    uint8_t *roles = mg_alloc(N, 1, "roles", err); /* zeroed: all CONTEXT */
    int *pos = mg_alloc_uninit(N, sizeof(int), "positions", err);
    int64_t *ranges = mg_alloc_uninit(2 * (size_t)B, sizeof(int64_t), "pooling ranges", err);
    if (err->code != MG_OK) {
        mg_free(roles);
        mg_free(pos);
        mg_free(ranges);
        return err->code;
    }
    mg_segment_positions(pos, segments, B, T);
    for (int b = 0; b < B; b++) {
        ranges[b] = (int64_t)b * T + start[b];
        ranges[B + b] = (int64_t)b * T + end[b];
    }
    /* last-token pooling reads one row per text: the last layer runs on those rows alone, and
     * the other rows' hidden states are never made */
    const int last_only = mode == MG_POOL_LAST;
    /* hidden states, the sentence vectors (off the host only) and the staged ranges */
    const size_t plan[] = {last_only ? 0 : floats, mg_on_host(be) ? 0 : (size_t)B * D,
                           mg_stage_bytes(be, 2 * (size_t)B * sizeof(int64_t)) / 4};
    mg_workspace ws;
    mg_kv_cache cache;
    memset(&cache, 0, sizeof(cache));
    if (mg_workspace_init(&ws, be,
                          mg_arena_floats_bytes(plan[0]) + mg_arena_floats_bytes(plan[1]) +
                              mg_arena_floats_bytes(plan[2]),
                          err) != 0)
        goto freed;
    float *hidden = mg_workspace_floats(&ws, plan[0], err);
    float *vecs = mg_on_host(be) ? out : mg_workspace_floats(&ws, plan[1], err);
    void *ranges_dev = mg_workspace_floats(&ws, plan[2], err);
    if (last_only) /* the rows to keep: each text's last token */
        for (int b = 0; b < B; b++)
            ranges[b] = ranges[B + b] - 1;
    if (err->code == MG_OK && mg_kv_cache_init(&cache, be, &m->config, B, T, 1, err) == MG_OK &&
        (last_only ? mg_model_step_rows(m, &cache, tokens, roles, segments, pos, B, T, ranges, B,
                                        vecs, NULL, err)
                   : mg_model_step(m, &cache, tokens, roles, segments, pos, B, T, hidden, NULL, 0,
                                   err)) == MG_OK) {
        if (!last_only) {
            const int64_t *d_ranges =
                mg_stage(be, ranges_dev, ranges, 2 * (size_t)B * sizeof(int64_t));
            be->range_pool_forward(be, vecs, hidden, d_ranges, d_ranges + B, B, D, mode);
        }
        if (normalize) be->l2_normalize_rows(be, vecs, B, D);
        if (!mg_on_host(be)) be->download(be, out, vecs, (size_t)B * D * sizeof(float));
        be->sync(be, err);
    }
    mg_kv_cache_release(&cache);
    mg_workspace_release(&ws);
freed:
    mg_free(roles);
    mg_free(pos);
    mg_free(ranges);
    return err->code;
}
