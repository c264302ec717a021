/* Sentence vectors over row ranges of the final hidden states, their backward, and the L2
 * normalisation of rows, with the numerics of csrc/ops/pooling.c: the mean accumulated in double
 * in row order (each thread owns a column, so the GPU adds in the CPU's order and gives its
 * bits), the norm's sum of squares in double. */
#include "cuda_common.h"
#include "grid.cuh"
#include "reduce.cuh"

#define POOL_THREADS 256

/* One block per range (grid-stride), threads across the columns. */
__global__ void range_pool_forward_kernel(float *out, const float *hidden, const int64_t *start,
                                          const int64_t *end, int n, int D, int mean) {
    for (long r = blockIdx.x; r < n; r += gridDim.x) {
        float *o = out + r * D;
        const int64_t s = start[r], e = end[r];
        if (!mean) {
            const float *h = hidden + (e - 1) * D;
            for (int d = threadIdx.x; d < D; d += blockDim.x)
                o[d] = h[d];
            continue;
        }
        const double inv = 1.0 / (double)(e - s);
        for (int d = threadIdx.x; d < D; d += blockDim.x) {
            double acc = 0.0;
            for (int64_t t = s; t < e; t++)
                acc += hidden[t * D + d];
            o[d] = (float)(acc * inv);
        }
    }
}

/* dhidden rows of range r += w dvec[r], w = 1 / length in float as the trainer's unpooling
 * computes it (mean), or row end - 1 += dvec[r] (last). Ranges are disjoint, so the teams never
 * write the same element: one block per range, threadIdx.y over its rows. */
__global__ void range_pool_backward_kernel(float *dhidden, const float *dvec, const int64_t *start,
                                           const int64_t *end, int n, int D, int mean) {
    for (long r = blockIdx.x; r < n; r += gridDim.x) {
        const float *g = dvec + r * D;
        const int64_t e = end[r], s = mean ? start[r] : e - 1;
        const float w = 1.0f / (float)(e - s);
        for (int64_t t = s + threadIdx.y; t < e; t += blockDim.y) {
            float *h = dhidden + t * D;
            for (int d = threadIdx.x; d < D; d += blockDim.x)
                h[d] += w * g[d];
        }
    }
}

__global__ void l2_normalize_rows_kernel(float *x, int N, int D) {
    __shared__ double scratch[32];
    for (long n = blockIdx.x; n < N; n += gridDim.x) {
        float *row = x + n * D;
        double ss = 0.0;
        for (int d = threadIdx.x; d < D; d += blockDim.x)
            ss += (double)row[d] * row[d];
        ss = mg_block_sum(ss, scratch);
        if (ss <= 0.0) continue; /* a zero row stays zero */
        const float inv = (float)(1.0 / sqrt(ss));
        for (int d = threadIdx.x; d < D; d += blockDim.x)
            row[d] *= inv;
    }
}

extern "C" void cuda_range_pool_forward(const mg_backend *be, float *out, const float *hidden,
                                        const int64_t *start, const int64_t *end, int n, int D,
                                        mg_pooling mode) {
    if (n <= 0 || D <= 0) return;
    MG_LAUNCH(range_pool_forward_kernel, mg_cuda_row_blocks(n),
              mg_cuda_row_threads(D, POOL_THREADS), 0, be, out, hidden, start, end, n, D,
              mode == MG_POOL_MEAN ? 1 : 0);
}

extern "C" void cuda_range_pool_backward(const mg_backend *be, float *dhidden, const float *dvec,
                                         const int64_t *start, const int64_t *end, int n, int D,
                                         mg_pooling mode) {
    if (n <= 0 || D <= 0) return;
    MG_LAUNCH(range_pool_backward_kernel, mg_cuda_row_blocks(n), mg_cuda_row_team(D), 0, be,
              dhidden, dvec, start, end, n, D, mode == MG_POOL_MEAN ? 1 : 0);
}

extern "C" void cuda_l2_normalize_rows(const mg_backend *be, float *x, int N, int D) {
    if (N <= 0 || D <= 0) return;
    MG_LAUNCH(l2_normalize_rows_kernel, mg_cuda_row_blocks(N), mg_cuda_row_threads(D, POOL_THREADS),
              0, be, x, N, D);
}
