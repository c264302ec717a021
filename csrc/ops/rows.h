/* Data movement between the model's row-major buffers: the small steps between the layers
 * (residual adds, padding rows, gathering loss rows, laying out queries and cache rows) that
 * every backend must also provide, so the model layer never touches tensor data itself. */
#ifndef MG_OPS_ROWS_H
#define MG_OPS_ROWS_H

#include <stdint.h>

#include "pooling.h"

/* x[i] *= a */
void rows_scale(float *x, float a, long n);
/* x[i] += y[i] */
void rows_add_inplace(float *x, const float *y, long n);
/* Rows n of x[N, D] with segments[n] < 0 (padding) become zero. */
void rows_zero_padding(float *x, const int32_t *segments, long N, int D);
/* out[i, :] = inp[idx[i], :] */
void rows_gather(float *out, const float *inp, const int64_t *idx, long n, int D);
/* out[idx[i], :] += inp[i, :] (idx distinct) */
void rows_scatter_add(float *out, const float *inp, const int64_t *idx, long n, int D);
/* out[i, :D] = inp[i, :D] between row strides ld_out, ld_in (floats) */
void rows_copy(float *out, long ld_out, const float *inp, long ld_in, long n, int D);
/* One step's queries and cache rows, biases added (see backend.h: qkv_split). */
void rows_qkv_split(float *q, float *k_rows, float *v_rows, const float *src_q, const float *src_k,
                    const float *src_v, long ld_q, long ld_kv, const float *bq, const float *bk,
                    const float *bv, int B, int Tq, int QD, int KD, int capacity, int length);
/* out[i] = last row (end[i] - 1) or mean of rows [start[i], end[i]) of hidden[*, D]
 * (the mean accumulated in double, as pooling_forward). */
void rows_range_pool_forward(float *out, const float *hidden, const int64_t *start,
                             const int64_t *end, int n, int D, mg_pooling mode);
/* dhidden rows of each (disjoint) range += dvec[i] / (rows pooled). */
void rows_range_pool_backward(float *dhidden, const float *dvec, const int64_t *start,
                              const int64_t *end, int n, int D, mg_pooling mode);
/* Sum of squares of x[n] in double (fixed chunking: the same bits for any thread count). */
double rows_sum_squares(const float *x, long n);

#endif
