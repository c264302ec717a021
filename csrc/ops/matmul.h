/* Linear layers in PyTorch's layout: weight[out, in], y = x W^T + b. */
#ifndef MG_OPS_MATMUL_H
#define MG_OPS_MATMUL_H

#include <stdbool.h>

/* out[N, O] (= or +=, by accumulate) inp[N, I] @ weight[O, I]^T + bias[O] (bias may be NULL). */
void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                    int I, int O, bool accumulate);

#endif
