/* LoRA's down projection with its input dropout fused in (the dropped_matmul entries of
 * backend.h). Unfused, each adapted projection wrote drop(x) (N x in floats) and read it back,
 * and its backward wrote drop(x) again, wrote du A, and read both back for the dropout backward:
 * ten passes over N x in floats per target and step, about 40 ms of a 1B-parameter step on an
 * H100. Here the mask is drawn where x is read (the hash of dropout_mask.cuh), so the forward
 * reads x once, the weight gradient reads x once, and the input gradient reads and writes dinp
 * once: four passes.
 *
 * The rank r is small (16 by default), so these products are bound by memory and by the hash,
 * not by arithmetic; they run in float32 on the CUDA cores in both precisions. Every kernel works
 * on a tile of kRankTile ranks (grid dimension or a loop over tiles); the float32 partial sums
 * of split reductions are added in a fixed order, so results do not depend on scheduling. */
#include "cuda_common.h"
#include "dropout_mask.cuh"
#include "elementwise.cuh"

namespace {

constexpr int kThreads = 128;
constexpr int kRankTile = 16;             /* ranks per tile: four float4 in shared memory */
constexpr int kRankQuads = kRankTile / 4; /* float4 groups per tile row */
constexpr int kForwardK = 256;            /* columns of x per forward split */
constexpr int kRowChunk = 64;             /* rows of du staged at a time (backward kernels) */
constexpr int kRowsPerInputBlock = 4 * kRowChunk;

/* drop(v) for element e of the call. */
__device__ inline float dropped(float v, uint64_t origin, long e, float p, float keep_scale) {
    return dropout_keep(origin, (uint64_t)e, p) ? v * keep_scale : 0.0f;
}

/* acc[j] += v * tile[j] for the kRankTile values of one shared-memory row (float4 reads, which
 * every lane of a warp makes at the same address: broadcasts). */
__device__ inline void axpy_tile(float *acc, float v, const mg_float4 *tile) {
    for (int q = 0; q < kRankQuads; q++) {
        const mg_float4 a = tile[q];
        acc[4 * q + 0] += v * a.x;
        acc[4 * q + 1] += v * a.y;
        acc[4 * q + 2] += v * a.z;
        acc[4 * q + 3] += v * a.w;
    }
}

/* Dot product of the kRankTile values held in a with one shared-memory row. */
__device__ inline float dot_tile(const float *a, const mg_float4 *tile) {
    float s = 0.0f;
    for (int q = 0; q < kRankQuads; q++) {
        const mg_float4 d = tile[q];
        s += a[4 * q + 0] * d.x + a[4 * q + 1] * d.y + a[4 * q + 2] * d.z + a[4 * q + 3] * d.w;
    }
    return s;
}

/* Forward: u[N, r] = drop(x)[N, in] A[r, in]^T. One thread per row of x, so each thread sums its
 * own outputs with no reduction between lanes. blockIdx.y splits the columns into slices of
 * `cols` (a multiple of kForwardK; partial sums to part[slice][N][r] when there are several,
 * else straight to u), and blockIdx.z picks the rank tile. A's columns, transposed to
 * [k][rank], are staged kForwardK at a time. kVec: x is 16-byte aligned and in % 4 == 0, so
 * rows are read eight floats (two 16-byte loads) at a time. */
template <bool kVec>
__global__ void __launch_bounds__(kThreads)
    dropped_forward_kernel(float *u, float *part, const float *x, const float *A, int N, int in,
                           int r, int cols, float p, float keep_scale, uint64_t origin) {
    __shared__ mg_float4 a_t[kForwardK][kRankQuads];
    float *a_flat = &a_t[0][0].x;
    const int t = threadIdx.x;
    const long n = (long)blockIdx.x * kThreads + t;
    const int j0 = blockIdx.z * kRankTile;
    const int k_begin = blockIdx.y * cols;
    const int k_end = in - k_begin < cols ? in : k_begin + cols;
    float acc[kRankTile];
    for (int j = 0; j < kRankTile; j++)
        acc[j] = 0.0f;
    for (int k0 = k_begin; k0 < k_end; k0 += kForwardK) {
        const int k_len = k_end - k0 < kForwardK ? k_end - k0 : kForwardK;
        __syncthreads(); /* the previous chunk of A is consumed */
        for (int i = t; i < kForwardK * kRankTile; i += kThreads) {
            const int j = i / kForwardK,
                      kk = i % kForwardK; /* consecutive threads: consecutive k */
            a_flat[kk * kRankTile + j] =
                (kk < k_len && j0 + j < r) ? A[(long)(j0 + j) * in + k0 + kk] : 0.0f;
        }
        __syncthreads();
        if (n >= N) continue;
        const float *row = x + n * in + k0;
        const long e0 = n * in + k0;
        int kk = 0;
        if (kVec) {
            for (; kk + 8 <= k_len; kk += 8) {
                const mg_float4 v0 = mg_load4(row + kk), v1 = mg_load4(row + kk + 4);
                const float v[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
                for (int i = 0; i < 8; i++)
                    axpy_tile(acc, dropped(v[i], origin, e0 + kk + i, p, keep_scale), a_t[kk + i]);
            }
        }
        for (; kk < k_len; kk++)
            axpy_tile(acc, dropped(row[kk], origin, e0 + kk, p, keep_scale), a_t[kk]);
    }
    if (n >= N) return;
    float *dst = gridDim.y > 1 ? part + ((long)blockIdx.y * N + n) * r : u + n * r;
    for (int j = 0; j < kRankTile; j++)
        if (j0 + j < r) dst[j0 + j] = acc[j];
}

/* out[i] (= or +=) the sum over s < slices of part[s * len + i], in the order of s. */
__global__ void sum_slices_kernel(float *out, const float *part, long len, int slices,
                                  int accumulate) {
    for (long i = MG_GRID_INDEX; i < len; i += MG_GRID_STRIDE) {
        float s = accumulate ? out[i] : 0.0f;
        for (int k = 0; k < slices; k++)
            s += part[(long)k * len + i];
        out[i] = s;
    }
}

/* Weight gradient: dA[r, in] += du[N, r]^T drop(x). One thread per column of x (a warp reads
 * 32 consecutive floats of a row), looping over the rows of its slice blockIdx.y; du's rows are
 * staged kRowChunk at a time. Partial sums go to part[slice][r][in] when there are several
 * slices, else straight into dA. blockIdx.z picks the rank tile. */
__global__ void __launch_bounds__(kThreads)
    dropped_dweight_kernel(float *dA, float *part, const float *du, const float *x, int N, int in,
                           int r, int rows_per_slice, float p, float keep_scale, uint64_t origin) {
    __shared__ mg_float4 du_s[kRowChunk][kRankQuads];
    const int t = threadIdx.x;
    const int k = blockIdx.x * kThreads + t;
    const int j0 = blockIdx.z * kRankTile;
    const long n_begin = (long)blockIdx.y * rows_per_slice;
    const long n_end = n_begin + rows_per_slice < N ? n_begin + rows_per_slice : N;
    float acc[kRankTile];
    for (int j = 0; j < kRankTile; j++)
        acc[j] = 0.0f;
    float *du_flat = &du_s[0][0].x;
    for (long c = n_begin; c < n_end; c += kRowChunk) {
        const int rows = n_end - c < kRowChunk ? (int)(n_end - c) : kRowChunk;
        __syncthreads(); /* the previous chunk is consumed */
        for (int i = t; i < kRowChunk * kRankTile; i += kThreads) {
            const int rr = i / kRankTile, j = i % kRankTile;
            du_flat[i] = (rr < rows && j0 + j < r) ? du[(c + rr) * r + j0 + j] : 0.0f;
        }
        __syncthreads();
        if (k < in) {
            int rr = 0;
            for (; rr + 4 <= rows; rr += 4) { /* four loads in flight */
                float v[4];
                for (int i = 0; i < 4; i++)
                    v[i] = x[(c + rr + i) * in + k];
                for (int i = 0; i < 4; i++)
                    axpy_tile(acc, dropped(v[i], origin, (c + rr + i) * in + k, p, keep_scale),
                              du_s[rr + i]);
            }
            for (; rr < rows; rr++)
                axpy_tile(acc,
                          dropped(x[(c + rr) * in + k], origin, (c + rr) * in + k, p, keep_scale),
                          du_s[rr]);
        }
    }
    if (k >= in) return;
    if (gridDim.y > 1) {
        float *dst = part + (long)blockIdx.y * r * in;
        for (int j = 0; j < kRankTile; j++)
            if (j0 + j < r) dst[(long)(j0 + j) * in + k] = acc[j];
    } else {
        for (int j = 0; j < kRankTile; j++)
            if (j0 + j < r) dA[(long)(j0 + j) * in + k] += acc[j];
    }
}

/* Input gradient of rank tile j0: dinp[n, k] += drop'(sum_{j in tile} du[n, j] A[j, k]). One
 * thread per column k, holding A's column for the tile in registers, over kRowsPerInputBlock
 * rows (blockIdx.x); du's rows are staged in shared memory. Ranks beyond one tile take one
 * launch per tile, each adding its share under the same mask. */
__global__ void __launch_bounds__(kThreads)
    dropped_dinput_kernel(float *dinp, const float *du, const float *A, int N, int in, int r,
                          int j0, float p, float keep_scale, uint64_t origin) {
    __shared__ mg_float4 du_s[kRowChunk][kRankQuads];
    const int t = threadIdx.x;
    const int k = blockIdx.y * kThreads + t;
    float a[kRankTile];
    for (int j = 0; j < kRankTile; j++)
        a[j] = (k < in && j0 + j < r) ? A[(long)(j0 + j) * in + k] : 0.0f;
    float *du_flat = &du_s[0][0].x;
    const long n_begin = (long)blockIdx.x * kRowsPerInputBlock;
    const long n_end = n_begin + kRowsPerInputBlock < N ? n_begin + kRowsPerInputBlock : N;
    for (long c = n_begin; c < n_end; c += kRowChunk) {
        const int rows = n_end - c < kRowChunk ? (int)(n_end - c) : kRowChunk;
        __syncthreads();
        for (int i = t; i < kRowChunk * kRankTile; i += kThreads) {
            const int rr = i / kRankTile, j = i % kRankTile;
            du_flat[i] = (rr < rows && j0 + j < r) ? du[(c + rr) * r + j0 + j] : 0.0f;
        }
        __syncthreads();
        if (k >= in) continue;
        int rr = 0;
        for (; rr + 4 <= rows; rr += 4) { /* four read-modify-writes in flight */
            float d[4];
            for (int i = 0; i < 4; i++)
                d[i] = dinp[(c + rr + i) * in + k];
            for (int i = 0; i < 4; i++) {
                const long e = (c + rr + i) * in + k;
                if (dropout_keep(origin, (uint64_t)e, p))
                    dinp[e] = d[i] + dot_tile(a, du_s[rr + i]) * keep_scale;
            }
        }
        for (; rr < rows; rr++) {
            const long e = (c + rr) * in + k;
            if (dropout_keep(origin, (uint64_t)e, p)) dinp[e] += dot_tile(a, du_s[rr]) * keep_scale;
        }
    }
}

unsigned ceil_div(long a, long b) {
    return (unsigned)((a + b - 1) / b);
}

} // namespace

extern "C" void cuda_dropped_matmul_forward(const mg_backend *be, float *u, const float *x,
                                            const float *A, int N, int in, int r, float p,
                                            uint64_t seed, uint64_t stream, float *scratch) {
    if (N <= 0 || r <= 0) return;
    if (in <= 0) { /* an empty sum */
        cuda_zero(be, u, sizeof(float) * (size_t)N * (size_t)r);
        return;
    }
    /* Column slices of kForwardK, so that long rows still give the GPU enough threads; their
     * partials [slices][N][r] must fit scratch's N x in floats (slices * r <= in), which only
     * ranks beyond kForwardK make bind: then slices widen by whole chunks. */
    long slices = ceil_div(in, kForwardK);
    const long most = in / r > 1 ? in / r : 1;
    if (slices > most) slices = most;
    if (slices > 65535) slices = 65535;
    const int cols = (int)ceil_div(ceil_div(in, slices), kForwardK) * kForwardK;
    slices = ceil_div(in, cols);
    const dim3 grid(ceil_div(N, kThreads), (unsigned)slices, ceil_div(r, kRankTile));
    const float keep_scale = dropout_keep_scale(p);
    const uint64_t origin = mg_rng_origin(seed, stream);
    if (in % 4 == 0 && mg_aligned16(x))
        MG_LAUNCH(dropped_forward_kernel<true>, grid, kThreads, 0, be, u, scratch, x, A, N, in, r,
                  cols, p, keep_scale, origin);
    else
        MG_LAUNCH(dropped_forward_kernel<false>, grid, kThreads, 0, be, u, scratch, x, A, N, in, r,
                  cols, p, keep_scale, origin);
    if (slices > 1) {
        const long len = (long)N * r;
        MG_LAUNCH(sum_slices_kernel, mg_cuda_blocks(len, 256), 256, 0, be, u, scratch, len,
                  (int)slices, 0);
    }
}

extern "C" void cuda_dropped_matmul_backward(const mg_backend *be, float *dinp, float *dA,
                                             const float *du, const float *x, const float *A, int N,
                                             int in, int r, float p, uint64_t seed, uint64_t stream,
                                             float *scratch) {
    if (N <= 0 || in <= 0 || r <= 0) return;
    const unsigned rank_tiles = ceil_div(r, kRankTile);
    const unsigned col_blocks = ceil_div(in, kThreads);
    const float keep_scale = dropout_keep_scale(p);
    const uint64_t origin = mg_rng_origin(seed, stream);
    if (dA) {
        /* row slices: enough blocks to fill the GPU, at least kRowChunk rows each, and partials
         * [slices][r][in] within scratch's N x in floats */
        const long blocks = (long)col_blocks * rank_tiles;
        long slices = (4L * mg_cuda_ctx_of(be)->sm_count + blocks - 1) / blocks;
        const long most = N / (r > kRowChunk ? r : kRowChunk);
        if (slices > most) slices = most;
        if (slices > 65535) slices = 65535;
        if (slices < 1) slices = 1;
        const int rows_per_slice = (int)ceil_div(N, slices);
        slices = ceil_div(N, rows_per_slice);
        const dim3 grid(col_blocks, (unsigned)slices, rank_tiles);
        MG_LAUNCH(dropped_dweight_kernel, grid, kThreads, 0, be, dA, scratch, du, x, N, in, r,
                  rows_per_slice, p, keep_scale, origin);
        if (slices > 1) {
            const long len = (long)r * in;
            MG_LAUNCH(sum_slices_kernel, mg_cuda_blocks(len, 256), 256, 0, be, dA, scratch, len,
                      (int)slices, 1);
        }
    }
    if (dinp) {
        const dim3 grid(ceil_div(N, kRowsPerInputBlock), col_blocks);
        for (int j0 = 0; j0 < r; j0 += kRankTile)
            MG_LAUNCH(dropped_dinput_kernel, grid, kThreads, 0, be, dinp, du, A, N, in, r, j0, p,
                      keep_scale, origin);
    }
}
