/* Linear layers for a handful of rows (a decode step): y = x W^T streamed once over W.
 *
 * With few rows a linear layer is bound by reading the weights from memory, and OpenBLAS's sgemm
 * packs panels for shapes like these, reading W more than once. This kernel reads each weight row
 * once and dots it with every input row while it is in cache. */
#ifndef MG_OPS_SKINNY_MATMUL_H
#define MG_OPS_SKINNY_MATMUL_H

#include <stdbool.h>

/* The most rows for which skinny_matmul_forward beats OpenBLAS's sgemm. On a 2-core Zen 3
 * (benchmarks/skinny_matmul.c, SmolLM2-135M's shapes, weights streamed from memory) it was
 * 2-3.5x faster at 1 row, 1.4-2.2x at 3 to 16 rows and 1.0-1.3x at 24 to 32. */
#if defined(__AVX2__) && defined(__FMA__)
#define MG_SKINNY_MAX_ROWS 16
#else
#define MG_SKINNY_MAX_ROWS 4 /* the dot-product kernel alone */
#endif
/* Up to this many rows the kernel dots weight rows with input rows (8 lanes along I); above it
 * (AVX2 only) it packs the inputs k-major and broadcasts the weights, one lane per input row,
 * which keeps the FMA units busier from 3 rows on. */
#define MG_SKINNY_DOT_MAX_ROWS 2

/* out[N, O] (= or +=, by accumulate) inp[N, I] @ weight[O, I]^T + bias[O] (bias may be NULL).
 * Within each kernel's range of N (1 to MG_SKINNY_DOT_MAX_ROWS, and above) every output element
 * is summed in the same order whatever N is, so a row's result does not depend on which other
 * rows share the call. */
void skinny_matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                           int N, int I, int O, bool accumulate);

#endif
