/* Linear layers for a handful of rows (a decode step): y = x W^T streamed once over W.
 *
 * With few rows a linear layer is bound by reading the weights from memory, and OpenBLAS's sgemm
 * packs panels for shapes like these, reading W more than once. This kernel reads each weight row
 * once and dots it with every input row while it is in cache. */
#ifndef MG_OPS_SKINNY_MATMUL_H
#define MG_OPS_SKINNY_MATMUL_H

#include <stdbool.h>

/* The most rows for which skinny_matmul_forward beats OpenBLAS's sgemm: on a 2-core Zen 3 it
 * was 2-3.5x faster at 1 row, 1.3-1.6x at 4 to 6 and 0.9x at 8 (benchmarks/skinny_matmul.c). */
#if defined(__AVX2__) && defined(__FMA__)
#define MG_SKINNY_MAX_ROWS 16
#else
#define MG_SKINNY_MAX_ROWS 4
#endif
/* Up to this many rows the kernel dots weight rows with input rows; above it (AVX2 only) it
 * packs the inputs k-major and broadcasts the weights, which keeps the FMA units busier. */
#define MG_SKINNY_DOT_MAX_ROWS 4

/* out[N, O] (= or +=, by accumulate) inp[N, I] @ weight[O, I]^T + bias[O] (bias may be NULL).
 * Up to MG_SKINNY_DOT_MAX_ROWS rows every output element is one dot product summed in the same
 * order whatever N is, so a row's result does not depend on which other rows share the call. */
void skinny_matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                           int N, int I, int O, bool accumulate);

#endif
