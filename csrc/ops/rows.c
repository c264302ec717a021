#include "rows.h"

#include <string.h>

#include "../core/parallel.h"

/* Fixed number of partial sums in rows_sum_squares, so the result does not depend on threads. */
#define SUM_CHUNKS 64

void rows_scale(float *x, float a, long n) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n))
    for (long i = 0; i < n; i++)
        x[i] *= a;
}

void rows_add_inplace(float *x, const float *y, long n) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n))
    for (long i = 0; i < n; i++)
        x[i] += y[i];
}

void rows_zero_padding(float *x, const int32_t *segments, long N, int D) {
    for (long n = 0; n < N; n++)
        if (segments[n] < 0) memset(x + n * D, 0, sizeof(float) * (size_t)D);
}

void rows_gather(float *out, const float *inp, const int64_t *idx, long n, int D) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n * D))
    for (long i = 0; i < n; i++)
        memcpy(out + i * D, inp + idx[i] * D, sizeof(float) * (size_t)D);
}

void rows_scatter_add(float *out, const float *inp, const int64_t *idx, long n, int D) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n * D))
    for (long i = 0; i < n; i++) {
        float *dst = out + idx[i] * D;
        const float *src = inp + i * D;
        for (int d = 0; d < D; d++)
            dst[d] += src[d];
    }
}

void rows_copy(float *out, long ld_out, const float *inp, long ld_in, long n, int D) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n * D))
    for (long i = 0; i < n; i++)
        memcpy(out + i * ld_out, inp + i * ld_in, sizeof(float) * (size_t)D);
}

static inline void copy_bias(float *dst, const float *src, const float *bias, int n) {
    if (bias)
        for (int i = 0; i < n; i++)
            dst[i] = src[i] + bias[i];
    else
        memcpy(dst, src, sizeof(float) * (size_t)n);
}

void rows_qkv_split(float *q, float *k_rows, float *v_rows, const float *src_q, const float *src_k,
                    const float *src_v, long ld_q, long ld_kv, const float *bq, const float *bk,
                    const float *bv, int B, int Tq, int QD, int KD, int capacity, int length) {
    const long N = (long)B * Tq;
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(N * (QD + 2 * KD)))
    for (long n = 0; n < N; n++) {
        const long b = n / Tq, t = n % Tq;
        const long row = b * capacity + length + t;
        copy_bias(q + n * QD, src_q + n * ld_q, bq, QD);
        copy_bias(k_rows + row * KD, src_k + n * ld_kv, bk, KD);
        copy_bias(v_rows + row * KD, src_v + n * ld_kv, bv, KD);
    }
}

void rows_range_pool_forward(float *out, const float *hidden, const int64_t *start,
                             const int64_t *end, int n, int D, mg_pooling mode) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS((long)n * D))
    for (int i = 0; i < n; i++) {
        float *o = out + (long)i * D;
        if (mode == MG_POOL_LAST) {
            memcpy(o, hidden + (end[i] - 1) * D, sizeof(float) * (size_t)D);
            continue;
        }
        const double inv = 1.0 / (double)(end[i] - start[i]);
        for (int d = 0; d < D; d++) {
            double acc = 0.0;
            for (int64_t r = start[i]; r < end[i]; r++)
                acc += hidden[r * D + d];
            o[d] = (float)(acc * inv);
        }
    }
}

void rows_range_pool_backward(float *dhidden, const float *dvec, const int64_t *start,
                              const int64_t *end, int n, int D, mg_pooling mode) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS((long)n * D))
    for (int i = 0; i < n; i++) {
        const int64_t from = mode == MG_POOL_LAST ? end[i] - 1 : start[i];
        const float w = 1.0f / (float)(end[i] - from);
        const float *g = dvec + (long)i * D;
        for (int64_t r = from; r < end[i]; r++)
            for (int d = 0; d < D; d++)
                dhidden[r * D + d] += w * g[d];
    }
}

double rows_sum_squares(const float *x, long n) {
    const long per = (n + SUM_CHUNKS - 1) / SUM_CHUNKS;
    double part[SUM_CHUNKS];
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n))
    for (int c = 0; c < SUM_CHUNKS; c++) {
        double s = 0.0;
        const long lo = c * per, hi = lo + per < n ? lo + per : n;
        for (long i = lo; i < hi; i++)
            s += (double)x[i] * x[i];
        part[c] = s;
    }
    double total = 0.0;
    for (int c = 0; c < SUM_CHUNKS; c++)
        total += part[c];
    return total;
}
