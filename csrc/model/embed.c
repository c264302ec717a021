#include "embed.h"

#include "../core/alloc.h"

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
    size_t floats;
    if (mg_mul_size(N, (size_t)m->config.dim, &floats) != 0)
        return mg_fail(err, MG_ERR_NOMEM, "input of %zu tokens is too large", N);
    uint8_t *roles = mg_alloc(N, 1, "roles", err); /* zeroed: all CONTEXT */
    float *hidden = mg_alloc_uninit(floats, sizeof(float), "hidden states", err);
    if (err->code == MG_OK &&
        mg_model_forward(m, tokens, roles, segments, B, T, hidden, NULL, err) == MG_OK) {
        pooling_forward(out, hidden, start, end, B, T, m->config.dim, mode);
        if (normalize) l2_normalize_rows(out, B, m->config.dim);
    }
    mg_free(roles);
    mg_free(hidden);
    return err->code;
}
