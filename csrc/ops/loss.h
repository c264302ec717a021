/* The training losses: token cross-entropy (MNTP and MSG, docs/method.md) and InfoNCE over
 * sentence vectors (SSCL). Each computes the loss and its gradient in one pass. */
#ifndef MG_OPS_LOSS_H
#define MG_OPS_LOSS_H

#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"

/* C linkage for the CUDA checks (C++), which call the CPU ops as references. */
#ifdef __cplusplus
extern "C" {
#endif

/* Label of a row that carries no loss. */
#define MG_IGNORE_LABEL (-100)

/* Softmax cross-entropy over logits[N, V], turned in place into
 *   dlogits = grad_scale * (softmax(logits) - onehot(label))
 * for rows with a label in [0, V); rows labelled MG_IGNORE_LABEL get a zero gradient. Writes the
 * SUM of the labelled rows' losses (double) and their count; a mean loss uses grad_scale =
 * 1/count. Any other label fails with MG_ERR_VALUE before logits are touched. The sum is
 * combined in a fixed order, independent of the thread count. */
int cross_entropy_forward_backward(float *logits, const int32_t *labels, long N, int V,
                                   float grad_scale, double *loss_sum, long *count, mg_error *err);

/* Floats of scratch infonce_forward_backward needs. */
#define INFONCE_SCRATCH(n, D) (4 * (size_t)(n) * (D) + (size_t)(n) * (n) + 2 * (size_t)(n))

/* Norms below this are clamped (as torch.nn.functional.normalize does). */
#define MG_INFONCE_NORM_EPS 1e-12f

/* MAGNET's SSCL loss with in-batch negatives: with a^_i = a_i / |a_i|, b^_j = b_j / |b_j| and
 * s_ij = a^_i . b^_j / temperature,
 *     loss = 1/n sum_i (logsumexp_j s_ij - s_ii).
 * Writes *loss (unscaled) and accumulates grad_scale * d loss into da[n, D] and db[n, D] (either
 * may be NULL). Calls the GEMM: not from inside an OpenMP parallel region.
 * scratch: INFONCE_SCRATCH(n, D) floats. */
void infonce_forward_backward(float *loss, float *da, float *db, const float *a, const float *b,
                              int n, int D, float temperature, float grad_scale, float *scratch);

#ifdef __cplusplus
}
#endif

#endif
