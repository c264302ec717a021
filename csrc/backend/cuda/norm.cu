/* RMSNorm and LayerNorm over the rows of [N, D], forward and backward, with the arithmetic of
 * csrc/ops/norm.c (float accumulation, the same expressions term for term).
 *
 * Forward and the dinp part of backward: one block per row (grid-stride over rows), the row's
 * sums as block reductions. Weight and bias gradients accumulate into dweight[D] / dbias[D] and
 * must be deterministic, so no atomics: the row pass stores each row's statistics in the
 * workspace, a column pass has block (tile of 32 columns, chunk of rows) write one partial sum
 * per column, and a final pass adds the partials of each column in chunk order. */
#include "cuda_common.h"
#include "grid.cuh"
#include "reduce.cuh"

#define NORM_ROW_THREADS 512
/* Column pass: 32 columns (one warp's coalesced 128 bytes) by 8 row lanes. */
#define NORM_COL_TILE 32
#define NORM_COL_LANES 8
#define NORM_FINAL_THREADS 256

__global__ void rmsnorm_forward_kernel(float *out, const float *inp, const float *weight, int N,
                                       int D, float eps) {
    __shared__ float scratch[32];
    for (long n = blockIdx.x; n < N; n += gridDim.x) {
        const float *x = inp + n * D;
        float *y = out + n * D;
        float ss = 0.0f;
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            ss += x[i] * x[i];
        ss = mg_block_sum(ss, scratch);
        const float rstd = 1.0f / sqrtf(ss / (float)D + eps);
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            y[i] = x[i] * rstd * weight[i];
    }
}

__global__ void layernorm_forward_kernel(float *out, const float *inp, const float *weight,
                                         const float *bias, int N, int D, float eps) {
    __shared__ float scratch[32];
    for (long n = blockIdx.x; n < N; n += gridDim.x) {
        const float *x = inp + n * D;
        float *y = out + n * D;
        float sum = 0.0f;
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            sum += x[i];
        const float mean = mg_block_sum(sum, scratch) / (float)D;
        float var = 0.0f;
        for (int i = threadIdx.x; i < D; i += blockDim.x) {
            const float d = x[i] - mean;
            var += d * d;
        }
        var = mg_block_sum(var, scratch);
        const float rstd = 1.0f / sqrtf(var / (float)D + eps);
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            y[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
    }
}

/* Row pass of the RMSNorm backward: rstd[n] for the column pass (when rstd_out is not NULL) and
 * dx += r g - x r^3 / D * sum(g x) with g = dy w (when dinp is not NULL). */
__global__ void rmsnorm_backward_rows_kernel(float *dinp, float *rstd_out, const float *dout,
                                             const float *inp, const float *weight, int N, int D,
                                             float eps) {
    __shared__ float scratch[32];
    for (long n = blockIdx.x; n < N; n += gridDim.x) {
        const float *x = inp + n * D;
        float ss = 0.0f;
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            ss += x[i] * x[i];
        ss = mg_block_sum(ss, scratch);
        const float rs = 1.0f / sqrtf(ss / (float)D + eps);
        if (rstd_out != NULL && threadIdx.x == 0) rstd_out[n] = rs;
        if (dinp == NULL) continue;
        const float *dy = dout + n * D;
        float dot = 0.0f;
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            dot += dy[i] * weight[i] * x[i];
        dot = mg_block_sum(dot, scratch);
        const float c = dot * rs * rs * rs / (float)D;
        float *dx = dinp + n * D;
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            dx[i] += dy[i] * weight[i] * rs - x[i] * c;
    }
}

/* Row pass of the LayerNorm backward: mean[n], rstd[n] for the column pass (when the outputs are
 * not NULL) and dx += r (g - mean(g) - xh mean(g xh)) with g = dy w, xh = (x - mean) r. */
__global__ void layernorm_backward_rows_kernel(float *dinp, float *mean_out, float *rstd_out,
                                               const float *dout, const float *inp,
                                               const float *weight, int N, int D, float eps) {
    __shared__ float scratch[32];
    for (long n = blockIdx.x; n < N; n += gridDim.x) {
        const float *x = inp + n * D;
        float sum = 0.0f;
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            sum += x[i];
        const float mean = mg_block_sum(sum, scratch) / (float)D;
        float var = 0.0f;
        for (int i = threadIdx.x; i < D; i += blockDim.x) {
            const float d = x[i] - mean;
            var += d * d;
        }
        var = mg_block_sum(var, scratch);
        const float rs = 1.0f / sqrtf(var / (float)D + eps);
        if (threadIdx.x == 0) {
            if (mean_out != NULL) mean_out[n] = mean;
            if (rstd_out != NULL) rstd_out[n] = rs;
        }
        if (dinp == NULL) continue;
        const float *dy = dout + n * D;
        float gsum = 0.0f, gxsum = 0.0f;
        for (int i = threadIdx.x; i < D; i += blockDim.x) {
            const float g = dy[i] * weight[i];
            gsum += g;
            gxsum += g * (x[i] - mean) * rs;
        }
        gsum = mg_block_sum(gsum, scratch);
        gxsum = mg_block_sum(gxsum, scratch);
        const float gmean = gsum / (float)D, gxmean = gxsum / (float)D;
        float *dx = dinp + n * D;
        /* g rounded on its own, as in the sums above: fused into g - gmean, its rounding error
         * would survive the cancellation (and be scaled by rs, up to eps^-1/2 = 316 for a
         * constant row) where the CPU gets exactly zero */
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            dx[i] += rs * (__fmul_rn(dy[i], weight[i]) - gmean - (x[i] - mean) * rs * gxmean);
    }
}

/* Column pass: for the 32 columns of tile blockIdx.x and the rows of chunk blockIdx.y,
 *   w[col] = sum dy (x - mean) r   (mean NULL: RMSNorm, dy x r),   b[col] = sum dy.
 * With one chunk the sums go straight into dweight/dbias (+=); otherwise into the partial rows
 * pw[chunk, D], pb[chunk, D] for norm_columns_final_kernel. dw or db may be NULL. */
__global__ void norm_columns_kernel(float *dw, float *db, float *pw, float *pb, const float *dout,
                                    const float *inp, const float *mean, const float *rstd, int N,
                                    int D, int rows_per_chunk) {
    __shared__ float part_w[NORM_COL_LANES][NORM_COL_TILE + 1];
    __shared__ float part_b[NORM_COL_LANES][NORM_COL_TILE + 1];
    const int col = blockIdx.x * NORM_COL_TILE + threadIdx.x;
    const long r0 = (long)blockIdx.y * rows_per_chunk;
    const long r1 = r0 + rows_per_chunk < N ? r0 + rows_per_chunk : N;
    float acc_w = 0.0f, acc_b = 0.0f;
    if (col < D) {
        for (long r = r0 + threadIdx.y; r < r1; r += NORM_COL_LANES) {
            const float dy = dout[r * D + col], x = inp[r * D + col];
            acc_w += mean != NULL ? dy * (x - mean[r]) * rstd[r] : dy * x * rstd[r];
            acc_b += dy;
        }
    }
    part_w[threadIdx.y][threadIdx.x] = acc_w;
    part_b[threadIdx.y][threadIdx.x] = acc_b;
    __syncthreads();
    if (threadIdx.y != 0 || col >= D) return;
    float sw = part_w[0][threadIdx.x], sb = part_b[0][threadIdx.x];
    for (int k = 1; k < NORM_COL_LANES; k++) {
        sw += part_w[k][threadIdx.x];
        sb += part_b[k][threadIdx.x];
    }
    if (gridDim.y == 1) {
        if (dw != NULL) dw[col] += sw;
        if (db != NULL) db[col] += sb;
    } else {
        if (pw != NULL) pw[(long)blockIdx.y * D + col] = sw;
        if (pb != NULL) pb[(long)blockIdx.y * D + col] = sb;
    }
}

/* dw[col] += sum over chunks of pw[chunk, col], in chunk order (likewise db). */
__global__ void norm_columns_final_kernel(float *dw, float *db, const float *pw, const float *pb,
                                          int D, int chunks) {
    for (long col = MG_GRID_INDEX; col < D; col += (long)gridDim.x * blockDim.x) {
        if (dw != NULL) {
            float s = pw[col];
            for (int c = 1; c < chunks; c++)
                s += pw[(long)c * D + col];
            dw[col] += s;
        }
        if (db != NULL) {
            float s = pb[col];
            for (int c = 1; c < chunks; c++)
                s += pb[(long)c * D + col];
            db[col] += s;
        }
    }
}

/* How the column pass splits the rows: `chunks` blocks down, `rows_per_chunk` rows each. Enough
 * blocks to fill the GPU a few times over, no chunk below 16 rows, and the partials within the
 * workspace left after the row statistics. */
typedef struct {
    int chunks, rows_per_chunk;
} norm_split;

static norm_split norm_choose_split(const mg_cuda_ctx *ctx, int N, int D, int outputs,
                                    size_t free_bytes) {
    const int tiles = (D + NORM_COL_TILE - 1) / NORM_COL_TILE;
    const int target = 8 * (ctx->sm_count > 0 ? ctx->sm_count : 16);
    long chunks = (target + tiles - 1) / tiles;
    const long most_by_rows = (N + 15) / 16;
    if (chunks > most_by_rows) chunks = most_by_rows;
    const long most_by_memory = (long)(free_bytes / (sizeof(float) * (size_t)outputs * D));
    if (chunks > most_by_memory) chunks = most_by_memory;
    if (chunks > 65535) chunks = 65535;
    if (chunks < 1) chunks = 1;
    norm_split s;
    s.rows_per_chunk = (int)((N + chunks - 1) / chunks);
    s.chunks = (N + s.rows_per_chunk - 1) / s.rows_per_chunk;
    return s;
}

/* The column and final passes over the statistics in the workspace (mean NULL: RMSNorm). */
static void norm_columns(const mg_backend *be, float *dweight, float *dbias, const float *dout,
                         const float *inp, const float *mean, const float *rstd, int N, int D,
                         float *partials, size_t partial_bytes) {
    const int outputs = (dweight != NULL) + (dbias != NULL);
    const norm_split s = norm_choose_split(mg_cuda_ctx_of(be), N, D, outputs, partial_bytes);
    float *pw = NULL, *pb = NULL;
    if (s.chunks > 1) {
        float *next = partials;
        if (dweight != NULL) {
            pw = next;
            next += (size_t)s.chunks * D;
        }
        if (dbias != NULL) pb = next;
    }
    const dim3 grid((unsigned)((D + NORM_COL_TILE - 1) / NORM_COL_TILE), (unsigned)s.chunks);
    const dim3 block(NORM_COL_TILE, NORM_COL_LANES);
    MG_LAUNCH(norm_columns_kernel, grid, block, 0, be, dweight, dbias, pw, pb, dout, inp, mean,
              rstd, N, D, s.rows_per_chunk);
    if (s.chunks > 1)
        MG_LAUNCH(norm_columns_final_kernel, mg_cuda_blocks(D, NORM_FINAL_THREADS),
                  NORM_FINAL_THREADS, 0, be, dweight, dbias, pw, pb, D, s.chunks);
}

/* Floats of row statistics that fit before the partials, 16-byte aligned. */
static size_t norm_stats_floats(int N) {
    return ((size_t)N + 3) / 4 * 4;
}

extern "C" void cuda_rmsnorm_forward(const mg_backend *be, float *out, const float *inp,
                                     const float *weight, int N, int D, float eps) {
    if (N <= 0 || D <= 0) return;
    MG_LAUNCH(rmsnorm_forward_kernel, mg_cuda_row_blocks(N),
              mg_cuda_row_threads(D, NORM_ROW_THREADS), 0, be, out, inp, weight, N, D, eps);
}

extern "C" void cuda_layernorm_forward(const mg_backend *be, float *out, const float *inp,
                                       const float *weight, const float *bias, int N, int D,
                                       float eps) {
    if (N <= 0 || D <= 0) return;
    MG_LAUNCH(layernorm_forward_kernel, mg_cuda_row_blocks(N),
              mg_cuda_row_threads(D, NORM_ROW_THREADS), 0, be, out, inp, weight, bias, N, D, eps);
}

extern "C" void cuda_rmsnorm_backward(const mg_backend *be, float *dinp, float *dweight,
                                      const float *dout, const float *inp, const float *weight,
                                      int N, int D, float eps) {
    if (N <= 0 || D <= 0 || (dinp == NULL && dweight == NULL)) return;
    mg_cuda_ctx *ctx = mg_cuda_ctx_of(be);
    float *rstd = NULL;
    size_t stats = 0;
    if (dweight != NULL) {
        stats = sizeof(float) * norm_stats_floats(N);
        if (ctx->workspace == NULL || ctx->workspace_bytes < stats) {
            mg_cuda_note(be, cudaErrorMemoryAllocation, "rmsnorm_backward: workspace too small");
            return;
        }
        rstd = (float *)ctx->workspace;
    }
    MG_LAUNCH(rmsnorm_backward_rows_kernel, mg_cuda_row_blocks(N),
              mg_cuda_row_threads(D, NORM_ROW_THREADS), 0, be, dinp, rstd, dout, inp, weight, N, D,
              eps);
    if (dweight != NULL)
        norm_columns(be, dweight, NULL, dout, inp, NULL, rstd, N, D, rstd + norm_stats_floats(N),
                     ctx->workspace_bytes - stats);
}

extern "C" void cuda_layernorm_backward(const mg_backend *be, float *dinp, float *dweight,
                                        float *dbias, const float *dout, const float *inp,
                                        const float *weight, int N, int D, float eps) {
    if (N <= 0 || D <= 0 || (dinp == NULL && dweight == NULL && dbias == NULL)) return;
    mg_cuda_ctx *ctx = mg_cuda_ctx_of(be);
    float *mean = NULL, *rstd = NULL;
    size_t stats = 0;
    if (dweight != NULL || dbias != NULL) {
        stats = 2 * sizeof(float) * norm_stats_floats(N);
        if (ctx->workspace == NULL || ctx->workspace_bytes < stats) {
            mg_cuda_note(be, cudaErrorMemoryAllocation, "layernorm_backward: workspace too small");
            return;
        }
        mean = (float *)ctx->workspace;
        rstd = mean + norm_stats_floats(N);
    }
    MG_LAUNCH(layernorm_backward_rows_kernel, mg_cuda_row_blocks(N),
              mg_cuda_row_threads(D, NORM_ROW_THREADS), 0, be, dinp, mean, rstd, dout, inp, weight,
              N, D, eps);
    if (dweight != NULL || dbias != NULL)
        norm_columns(be, dweight, dbias, dout, inp, mean, rstd, N, D, rstd + norm_stats_floats(N),
                     ctx->workspace_bytes - stats);
}
