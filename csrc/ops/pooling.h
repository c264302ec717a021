/* Sentence vectors from a batch of final-layer states: masked last-token or mean pooling. */
#ifndef MG_OPS_POOLING_H
#define MG_OPS_POOLING_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MG_POOL_LAST = 0, MG_POOL_MEAN = 1 } mg_pooling;

/* out[B, D] from hidden[B, T, D]: row b pools the states t in [start[b], end[b]) (the caller's
 * mask of text tokens; padding and instruction tokens lie outside it). MG_POOL_LAST takes the
 * state at end[b] - 1, MG_POOL_MEAN the mean over the range (accumulated in double).
 * Requires 0 <= start[b] < end[b] <= T. */
void pooling_forward(float *out, const float *hidden, const int32_t *start, const int32_t *end,
                     int B, int T, int D, mg_pooling mode);

/* Scales each row of x[N, D] to unit L2 norm (rows of norm 0 stay 0). */
void l2_normalize_rows(float *x, int N, int D);

#ifdef __cplusplus
}
#endif

#endif
