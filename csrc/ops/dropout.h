/* Inverted dropout without a stored mask: element i of a call is kept iff
 * mg_rng_uniform(seed, offset, i) >= p, so the backward regenerates the forward's mask from the
 * same (seed, offset). (seed, offset) selects an independent stream: give every dropout site of
 * every step its own offset (for example step * sites + site). Thread-count independent. */
#ifndef MG_OPS_DROPOUT_H
#define MG_OPS_DROPOUT_H

#include <stdint.h>

/* out[i] = keep_i ? inp[i] / (1 - p) : 0 for i < n, 0 <= p < 1 (p >= 1 gives zeros). out may alias
 * inp. */
void dropout_forward(float *out, const float *inp, long n, float p, uint64_t seed, uint64_t offset);

/* dinp[i] += keep_i ? dout[i] / (1 - p) : 0, the mask of the dropout_forward call with the same
 * (n, p, seed, offset). dinp must not alias dout. */
void dropout_backward(float *dinp, const float *dout, long n, float p, uint64_t seed,
                      uint64_t offset);

#endif
