/* LoRA's dropped products on the tensor cores, for bf16 mode: the forward, weight-gradient and
 * input-gradient kernels of dropped_matmul.cu (whose file comment says what they compute), with
 * the rank-16 sums done by TF32 mma.sync (mma_tf32.cuh) instead of float32 FMAs on the CUDA
 * cores. dropped_matmul.cu chooses between the two sets and launches these.
 *
 * Why: on the CUDA cores each element of x costs 16 FMAs and four shared-memory reads per product
 * besides its mask hash, and the forward's one-row-per-thread reads are not coalesced; the 1B
 * training step spent 37.6 ms in those kernels on an H200, about four times what their memory
 * traffic needs. Here a warp reads x in whole 32-byte sectors, the products go to the tensor
 * cores, and what is left per element is its hash.
 *
 * Columns in any order. A product's sum over k does not care which physical column plays which
 * k, as long as both operands agree. So a lane that holds four consecutive columns (one 16-byte
 * load) feeds them to the mma as its k = t and t + 4 of two steps (forward), or as one column
 * of four different 8-column tiles (the gradients: tile m's column n is physical column 4 n + m
 * of the warp's 32), and the outputs are written back through the same map.
 *
 * Every kernel needs x, dinp and each factor 16-byte aligned and `in` a multiple of 4, so that a
 * lane's four columns are all inside a row or all past its end; dropped_matmul.cu checks that.
 * The mask of element e of a product is the CPU's (dropout_mask.cuh), and split sums are added
 * in a fixed order, as there: results do not depend on scheduling. */
#ifndef MG_BACKEND_CUDA_DROPPED_MATMUL_TC_CUH
#define MG_BACKEND_CUDA_DROPPED_MATMUL_TC_CUH

#include "dropped_group.cuh"
#include "elementwise.cuh"
#include "mma_tf32.cuh"

namespace mg_dropped {

constexpr int kTcWarps = 4;
constexpr int kTcThreads = 32 * kTcWarps;
constexpr int kTcRankTile = 16;               /* ranks per launch or blockIdx.z */
constexpr int kTcForwardRows = 16 * kTcWarps; /* rows of x per forward block */
constexpr int kTcColumns = 32 * kTcWarps;     /* columns per gradient block */
constexpr int kTcInputRows = 256;             /* rows per input-gradient block */
constexpr int kTcLoads = 4; /* steps whose x loads are issued together (loads in flight) */
/* Blocks per SM the register budget must allow (at most 128 registers a thread): these kernels
 * wait on memory, and resident warps are what hides that. */
constexpr int kTcMinBlocks = 4;

__device__ inline mg_float4 tc_load4(bool ok, const float *p) {
    return ok ? mg_load4(p) : mg_float4{0.0f, 0.0f, 0.0f, 0.0f};
}

__device__ inline float lane_of(const mg_float4 &v, int i) {
    return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

__device__ inline void set_lane(mg_float4 &v, int i, float f) {
    if (i == 0)
        v.x = f;
    else if (i == 1)
        v.y = f;
    else if (i == 2)
        v.z = f;
    else
        v.w = f;
}

/* d[h][i] = drop(x[rows[h], k + i]) under one product's mask, for the four columns of each of
 * the lane's two rows (xv holds their values). */
__device__ inline void drop_rows(float (&d)[2][4], const mg_float4 (&xv)[2], uint64_t origin,
                                 const long (&rows)[2], int in, int k, float p, float keep_scale) {
    MG_UNROLL
    for (int h = 0; h < 2; h++)
        MG_UNROLL
    for (int i = 0; i < 4; i++)
        d[h][i] = dropped(lane_of(xv[h], i), origin, rows[h] * in + k + i, p, keep_scale);
}

/* Forward: u_t[N, r] = drop_t(x) A_t^T. A warp owns 16 rows (blockIdx.x: 4 warps, 64 rows) and
 * the ranks j0 .. j0 + 15 (blockIdx.z: two 8-rank tiles), over the columns [k_begin, k_end) of
 * slice blockIdx.y; partial sums to part[slice][t][N][r] when there are several slices, else
 * straight to u_t. Per 16 columns a lane loads x[g][4t ..] and x[g + 8][4t ..] (columns 4t and
 * 4t + 1 are its k = t and t + 4 of the first step, 4t + 2 and 4t + 3 of the second) and the same
 * columns of A_t's rows j0 + g and j0 + 8 + g. */
template <int NT>
__global__ void __launch_bounds__(kTcThreads, kTcMinBlocks)
    dropped_forward_tc_kernel(Group g, float *part, const float *x, int N, int in, int r, int cols,
                              float p, float keep_scale) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gq = lane / 4, t = lane % 4;
    const long row0 = ((long)blockIdx.x * kTcWarps + warp) * 16;
    if (row0 >= N) return; /* the whole warp: no lane is left inside an mma */
    const long rows[2] = {row0 + gq, row0 + gq + 8};
    const bool live[2] = {rows[0] < N, rows[1] < N};
    const int j0 = blockIdx.z * kTcRankTile;
    const int k_begin = blockIdx.y * cols;
    const int k_end = in - k_begin < cols ? in : k_begin + cols;
    float acc[NT][2][4] = {};
    for (int k0 = k_begin; k0 < k_end; k0 += 16 * kTcLoads) {
        mg_float4 xv[kTcLoads][2];
        MG_UNROLL
        for (int s = 0; s < kTcLoads; s++) {
            const int k = k0 + 16 * s + 4 * t;
            MG_UNROLL
            for (int h = 0; h < 2; h++)
                xv[s][h] = tc_load4(live[h] && k < k_end, x + rows[h] * in + k);
        }
        MG_UNROLL
        for (int s = 0; s < kTcLoads; s++) {
            const int k = k0 + 16 * s + 4 * t;
            if (k0 + 16 * s >= k_end) continue; /* warp-uniform */
            MG_UNROLL
            for (int tt = 0; tt < NT; tt++) {
                const float *A = pick(g.A, tt);
                mg_float4 av[2];
                MG_UNROLL
                for (int h = 0; h < 2; h++) {
                    const int j = j0 + 8 * h + gq;
                    av[h] = tc_load4(j < r && k < k_end, A + (long)j * in + k);
                }
                float d[2][4];
                drop_rows(d, xv[s], g.origin[tt], rows, in, k, p, keep_scale);
                MG_UNROLL
                for (int step = 0; step < 2; step++) {
                    const uint32_t a[4] = {mg_tf32(d[0][2 * step]), mg_tf32(d[1][2 * step]),
                                           mg_tf32(d[0][2 * step + 1]),
                                           mg_tf32(d[1][2 * step + 1])};
                    MG_UNROLL
                    for (int h = 0; h < 2; h++)
                        mg_mma_tf32(acc[tt][h], a, mg_tf32(lane_of(av[h], 2 * step)),
                                    mg_tf32(lane_of(av[h], 2 * step + 1)));
                }
            }
        }
    }
    MG_UNROLL
    for (int tt = 0; tt < NT; tt++)
        MG_UNROLL
    for (int h = 0; h < 2; h++) /* row half: c[0], c[1] of row g, c[2], c[3] of g + 8 */
        MG_UNROLL
    for (int rh = 0; rh < 2; rh++) {
        if (!live[rh]) continue;
        const long n = rows[rh];
        float *dst =
            gridDim.y > 1 ? part + (((long)blockIdx.y * NT + tt) * N + n) * r : g.u[tt] + n * r;
        MG_UNROLL
        for (int c = 0; c < 2; c++) {
            const int j = j0 + 8 * h + 2 * t + c;
            if (j < r) dst[j] = acc[tt][h][2 * rh + c];
        }
    }
}

/* Weight gradients: dA_t[r, in] += du_t^T drop_t(x). A warp owns 32 columns (blockIdx.x: 4
 * warps, 128 columns) and the ranks j0 .. j0 + 15 (blockIdx.z: one 16-rank tile), over the rows
 * of slice blockIdx.y, 8 at a time: a lane loads columns 4g .. 4g + 3 of rows t and t + 4 (its B
 * operand, column g, of four tiles) and du_t at rows t, t + 4 and ranks g, g + 8 (its A operand).
 * Partial sums to part[slice][t][r][in] when there are several slices, else added to dA_t. */
template <int NT>
__global__ void __launch_bounds__(kTcThreads, kTcMinBlocks)
    dropped_dweight_tc_kernel(Group g, float *part, const float *x, int N, int in, int r,
                              int rows_per_slice, float p, float keep_scale) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gq = lane / 4, t = lane % 4;
    const int c0 = (blockIdx.x * kTcWarps + warp) * 32;
    if (c0 >= in) return; /* the whole warp */
    const int col = c0 + 4 * gq;
    const bool col_ok = col < in;
    const int j0 = blockIdx.z * kTcRankTile;
    const long n_begin = (long)blockIdx.y * rows_per_slice;
    const long n_end = n_begin + rows_per_slice < N ? n_begin + rows_per_slice : N;
    float acc[NT][4][4] = {};
    for (long n0 = n_begin; n0 < n_end; n0 += 8 * kTcLoads) {
        mg_float4 xv[kTcLoads][2];
        MG_UNROLL
        for (int s = 0; s < kTcLoads; s++)
            MG_UNROLL
        for (int h = 0; h < 2; h++) {
            const long n = n0 + 8 * s + t + 4 * h;
            xv[s][h] = tc_load4(n < n_end && col_ok, x + n * in + col);
        }
        MG_UNROLL
        for (int s = 0; s < kTcLoads; s++) {
            if (n0 + 8 * s >= n_end) continue; /* warp-uniform */
            const long rows[2] = {n0 + 8 * s + t, n0 + 8 * s + t + 4};
            MG_UNROLL
            for (int tt = 0; tt < NT; tt++) {
                const float *du = pick(g.du, tt);
                uint32_t a[4];
                MG_UNROLL
                for (int h = 0; h < 2; h++)
                    MG_UNROLL
                for (int jh = 0; jh < 2; jh++) {
                    const int j = j0 + gq + 8 * jh;
                    a[2 * h + jh] = mg_tf32(rows[h] < n_end && j < r ? du[rows[h] * r + j] : 0.0f);
                }
                float d[2][4];
                drop_rows(d, xv[s], g.origin[tt], rows, in, col, p, keep_scale);
                MG_UNROLL
                for (int m = 0; m < 4; m++)
                    mg_mma_tf32(acc[tt][m], a, mg_tf32(d[0][m]), mg_tf32(d[1][m]));
            }
        }
    }
    /* tile m's columns 2t, 2t + 1 are physical columns c0 + 8t + m and c0 + 8t + 4 + m */
    MG_UNROLL
    for (int tt = 0; tt < NT; tt++)
        MG_UNROLL
    for (int m = 0; m < 4; m++)
        MG_UNROLL
    for (int jh = 0; jh < 2; jh++) {
        const int j = j0 + gq + 8 * jh;
        if (j >= r) continue;
        MG_UNROLL
        for (int c = 0; c < 2; c++) {
            const int k = c0 + 8 * t + 4 * c + m;
            if (k >= in) continue;
            const float v = acc[tt][m][2 * jh + c];
            if (gridDim.y > 1)
                part[(((long)blockIdx.y * NT + tt) * r + j) * in + k] = v;
            else
                g.dA[tt][(long)j * in + k] += v;
        }
    }
}

/* Input gradient of rank tile j0: dinp[n, k] += sum_t drop_t'(du_t[n, j0 ..] A_t[j0 .., k]), the
 * products added in order t. A warp owns 32 columns (blockIdx.y: 4 warps, 128 columns) and walks
 * the rows of blockIdx.x 16 at a time; its B operands (A_t's ranks j0 + t, j0 + t + 4, and 8
 * more, at columns 4g .. 4g + 3) stay in registers for the whole walk. A lane's outputs are
 * columns 8t .. 8t + 7 of rows g and g + 8: two 16-byte read-modify-writes per row. */
template <int NT>
__global__ void __launch_bounds__(kTcThreads, kTcMinBlocks)
    dropped_dinput_tc_kernel(Group g, float *dinp, int N, int in, int r, int j0, float p,
                             float keep_scale) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, gq = lane / 4, t = lane % 4;
    const int c0 = (blockIdx.y * kTcWarps + warp) * 32;
    if (c0 >= in) return;    /* the whole warp */
    uint32_t b[NT][2][2][4]; /* [product][k step][b0, b1][tile m] */
    {
        const int col = c0 + 4 * gq;
        MG_UNROLL
        for (int tt = 0; tt < NT; tt++)
            MG_UNROLL
        for (int step = 0; step < 2; step++)
            MG_UNROLL
        for (int bh = 0; bh < 2; bh++) {
            const int j = j0 + 8 * step + t + 4 * bh;
            const mg_float4 v = tc_load4(j < r && col < in, pick(g.A, tt) + (long)j * in + col);
            MG_UNROLL
            for (int m = 0; m < 4; m++)
                b[tt][step][bh][m] = mg_tf32(lane_of(v, m));
        }
    }
    const long n_begin = (long)blockIdx.x * kTcInputRows;
    const long n_end = n_begin + kTcInputRows < N ? n_begin + kTcInputRows : N;
    for (long n0 = n_begin; n0 < n_end; n0 += 16) {
        const long rows[2] = {n0 + gq, n0 + gq + 8};
        float acc[NT][4][4] = {};
        MG_UNROLL
        for (int tt = 0; tt < NT; tt++) {
            const float *du = pick(g.du, tt);
            MG_UNROLL
            for (int step = 0; step < 2; step++) {
                uint32_t a[4];
                MG_UNROLL
                for (int kh = 0; kh < 2; kh++)
                    MG_UNROLL
                for (int h = 0; h < 2; h++) {
                    const int j = j0 + 8 * step + t + 4 * kh;
                    a[2 * kh + h] = mg_tf32(rows[h] < N && j < r ? du[rows[h] * r + j] : 0.0f);
                }
                MG_UNROLL
                for (int m = 0; m < 4; m++)
                    mg_mma_tf32(acc[tt][m], a, b[tt][step][0][m], b[tt][step][1][m]);
            }
        }
        MG_UNROLL
        for (int h = 0; h < 2; h++) {
            if (rows[h] >= N) continue;
            MG_UNROLL
            for (int c = 0; c < 2; c++) {
                const int k = c0 + 8 * t + 4 * c;
                if (k >= in) continue;
                float *at = dinp + rows[h] * in + k;
                mg_float4 d = mg_load4(at);
                MG_UNROLL
                for (int m = 0; m < 4; m++) {
                    const long e = rows[h] * in + k + m;
                    float v = lane_of(d, m);
                    MG_UNROLL
                    for (int tt = 0; tt < NT; tt++)
                        if (dropout_keep(g.origin[tt], (uint64_t)e, p))
                            v += acc[tt][m][2 * h + c] * keep_scale;
                    set_lane(d, m, v);
                }
                mg_store4(at, d);
            }
        }
    }
}

} // namespace mg_dropped

#endif
