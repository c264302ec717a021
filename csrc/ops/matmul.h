/* Linear layers in PyTorch's layout: weight[out, in], y = x W^T + b. */
#ifndef MG_OPS_MATMUL_H
#define MG_OPS_MATMUL_H

#include <stdbool.h>

/* out[N, O] (= or +=, by accumulate) inp[N, I] @ weight[O, I]^T + bias[O] (bias may be NULL). */
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                    int I, int O, bool accumulate);

/* Backward of matmul_forward, accumulating: dinp[N, I] += dout @ weight, dweight[O, I] +=
 * dout^T @ inp, dbias[O] += column sums of dout[N, O]. Any gradient pointer may be NULL. Calls the
 * GEMM, so it must not be called from inside an OpenMP parallel region. Deterministic. */
void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int I, int O);

#endif
