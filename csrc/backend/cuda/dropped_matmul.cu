/* LoRA's down projections with their input dropout fused in (the dropped_matmul entries of
 * backend.h). Unfused, each adapted projection wrote drop(x) (N x in floats) and read it back,
 * and its backward wrote drop(x) again, wrote du A, and read both back for the dropout backward:
 * ten passes over N x in floats per target and step, about 40 ms of a 1B-parameter step on an
 * H100. Here the mask is drawn where x is read (the hash of dropout_mask.cuh), so the forward
 * reads x once, the weight gradient reads x once, and the input gradient reads and writes dinp
 * once: four passes. Products that share an input (q, k and v; gate and up) go in one call
 * and one kernel, which reads x once for all of them and draws each product's mask from it.
 *
 * The rank r is small (16 by default), so these products are bound by memory and by the hash,
 * not by arithmetic; they run in float32 on the CUDA cores in both precisions, or, in bf16 mode
 * with MAGNET_CUDA_LORA_TC=1, in TF32 on the tensor cores (dropped_matmul_tc.cuh). Every kernel
 * works on a tile of kRankTile ranks (grid dimension or a loop over tiles); the float32 partial
 * sums of split reductions are added in a fixed order, so results do not depend on scheduling. */
#include "cuda_common.h"
#include "dropped_group.cuh"
#include "dropped_matmul_tc.cuh"
#include "elementwise.cuh"

#include <stdlib.h>
#include <string.h>

#include <type_traits>

namespace {

using namespace mg_dropped;

constexpr int kThreads = 128;
constexpr int kRankTile = 16;             /* ranks per tile: four float4 in shared memory */
constexpr int kRankQuads = kRankTile / 4; /* float4 groups per tile row */
constexpr int kForwardK = 128;            /* columns of x staged at a time (forward) */
constexpr int kRowChunk = 64;             /* rows of du staged at a time (backward kernels) */
constexpr int kRowsPerInputBlock = 4 * kRowChunk;

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

/* Forward: u_t[N, r] = drop_t(x)[N, in] A_t[r, in]^T for the NT products. One thread per row of
 * x, so each thread sums its own outputs with no reduction between lanes, and each element of x
 * it reads feeds all NT products. blockIdx.y splits the columns into slices of `cols` (a
 * multiple of kForwardK; partial sums to part[slice][t][N][r] when there are several, else
 * straight to u_t), blockIdx.z picks the rank tile. The A_t, transposed to [k][rank], are staged
 * kForwardK columns at a time. kVec: x is 16-byte aligned and in % 4 == 0, so rows are read
 * eight floats (two 16-byte loads) at a time. */
template <int NT, bool kVec>
__global__ void __launch_bounds__(kThreads)
    dropped_forward_kernel(Group g, float *part, const float *x, int N, int in, int r, int cols,
                           float p, float keep_scale) {
    __shared__ mg_float4 a_t[NT][kForwardK][kRankQuads];
    float *a_flat = &a_t[0][0][0].x;
    const int t = threadIdx.x;
    const long n = (long)blockIdx.x * kThreads + t;
    const int j0 = blockIdx.z * kRankTile;
    const int k_begin = blockIdx.y * cols;
    const int k_end = in - k_begin < cols ? in : k_begin + cols;
    float acc[NT][kRankTile];
    for (int tt = 0; tt < NT; tt++)
        for (int j = 0; j < kRankTile; j++)
            acc[tt][j] = 0.0f;
    for (int k0 = k_begin; k0 < k_end; k0 += kForwardK) {
        const int k_len = k_end - k0 < kForwardK ? k_end - k0 : kForwardK;
        __syncthreads(); /* the previous chunk of A is consumed */
        for (int i = t; i < NT * kForwardK * kRankTile; i += kThreads) {
            /* consecutive threads: consecutive k of one row of one A */
            const int tt = i / (kForwardK * kRankTile), j = i / kForwardK % kRankTile,
                      kk = i % kForwardK;
            a_flat[(tt * kForwardK + kk) * kRankTile + j] =
                (kk < k_len && j0 + j < r) ? pick(g.A, tt)[(long)(j0 + j) * in + k0 + kk] : 0.0f;
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
                    for (int tt = 0; tt < NT; tt++)
                        axpy_tile(acc[tt], dropped(v[i], g.origin[tt], e0 + kk + i, p, keep_scale),
                                  a_t[tt][kk + i]);
            }
        }
        for (; kk < k_len; kk++) {
            const float v = row[kk];
            for (int tt = 0; tt < NT; tt++)
                axpy_tile(acc[tt], dropped(v, g.origin[tt], e0 + kk, p, keep_scale), a_t[tt][kk]);
        }
    }
    if (n >= N) return;
    for (int tt = 0; tt < NT; tt++) {
        float *dst =
            gridDim.y > 1 ? part + (((long)blockIdx.y * NT + tt) * N + n) * r : g.u[tt] + n * r;
        for (int j = 0; j < kRankTile; j++)
            if (j0 + j < r) dst[j0 + j] = acc[tt][j];
    }
}

/* out[i] (= or +=) the sum over s < slices of part[s * stride + i], in the order of s. */
__global__ void sum_slices_kernel(float *out, const float *part, long len, int slices, long stride,
                                  int accumulate) {
    for (long i = MG_GRID_INDEX; i < len; i += MG_GRID_STRIDE) {
        float s = accumulate ? out[i] : 0.0f;
        for (int k = 0; k < slices; k++)
            s += part[(long)k * stride + i];
        out[i] = s;
    }
}

/* Rows c .. c + rows of every du_t, ranks j0 .. j0 + kRankTile, into du_s (zeros beyond rows
 * and r), between barriers: the block's previous chunk is consumed first. */
template <int NT>
__device__ inline void stage_du(mg_float4 (*du_s)[kRowChunk][kRankQuads], const Group &g, long c,
                                int rows, int j0, int r) {
    float *du_flat = &du_s[0][0][0].x;
    __syncthreads();
    for (int i = threadIdx.x; i < NT * kRowChunk * kRankTile; i += kThreads) {
        const int tt = i / (kRowChunk * kRankTile), rr = i / kRankTile % kRowChunk,
                  j = i % kRankTile;
        du_flat[i] = (rr < rows && j0 + j < r) ? pick(g.du, tt)[(c + rr) * r + j0 + j] : 0.0f;
    }
    __syncthreads();
}

/* Weight gradients: dA_t[r, in] += du_t[N, r]^T drop_t(x). One thread per column of x (a warp
 * reads 32 consecutive floats of a row), looping over the rows of its slice blockIdx.y; each
 * element read feeds all NT products. The du_t rows are staged kRowChunk at a time. Partial sums
 * go to part[slice][t][r][in] when there are several slices, else straight into dA_t.
 * blockIdx.z picks the rank tile. */
template <int NT>
__global__ void __launch_bounds__(kThreads)
    dropped_dweight_kernel(Group g, float *part, const float *x, int N, int in, int r,
                           int rows_per_slice, float p, float keep_scale) {
    __shared__ mg_float4 du_s[NT][kRowChunk][kRankQuads];
    const int t = threadIdx.x;
    const int k = blockIdx.x * kThreads + t;
    const int j0 = blockIdx.z * kRankTile;
    const long n_begin = (long)blockIdx.y * rows_per_slice;
    const long n_end = n_begin + rows_per_slice < N ? n_begin + rows_per_slice : N;
    float acc[NT][kRankTile];
    for (int tt = 0; tt < NT; tt++)
        for (int j = 0; j < kRankTile; j++)
            acc[tt][j] = 0.0f;
    for (long c = n_begin; c < n_end; c += kRowChunk) {
        const int rows = n_end - c < kRowChunk ? (int)(n_end - c) : kRowChunk;
        stage_du<NT>(du_s, g, c, rows, j0, r);
        if (k >= in) continue;
        int rr = 0;
        for (; rr + 4 <= rows; rr += 4) { /* four loads in flight */
            float v[4];
            for (int i = 0; i < 4; i++)
                v[i] = x[(c + rr + i) * in + k];
            for (int i = 0; i < 4; i++)
                for (int tt = 0; tt < NT; tt++)
                    axpy_tile(acc[tt],
                              dropped(v[i], g.origin[tt], (c + rr + i) * in + k, p, keep_scale),
                              du_s[tt][rr + i]);
        }
        for (; rr < rows; rr++) {
            const float v = x[(c + rr) * in + k];
            for (int tt = 0; tt < NT; tt++)
                axpy_tile(acc[tt], dropped(v, g.origin[tt], (c + rr) * in + k, p, keep_scale),
                          du_s[tt][rr]);
        }
    }
    if (k >= in) return;
    for (int tt = 0; tt < NT; tt++)
        for (int j = 0; j < kRankTile; j++) {
            if (j0 + j >= r) continue;
            if (gridDim.y > 1)
                part[(((long)blockIdx.y * NT + tt) * r + j0 + j) * in + k] = acc[tt][j];
            else
                g.dA[tt][(long)(j0 + j) * in + k] += acc[tt][j];
        }
}

/* Input gradient of rank tile j0: dinp[n, k] += sum_t drop_t'(sum_{j in tile} du_t[n, j] A_t[j,
 * k]), the products added in order t. One thread per column k, holding the A_t columns of the tile
 * in registers, over kRowsPerInputBlock rows (blockIdx.x); the du_t rows are staged in shared
 * memory. One read and one write of dinp for all NT products. Ranks beyond one tile take one
 * launch per tile, each adding its share under the same masks. */
template <int NT>
__global__ void __launch_bounds__(kThreads)
    dropped_dinput_kernel(Group g, float *dinp, int N, int in, int r, int j0, float p,
                          float keep_scale) {
    __shared__ mg_float4 du_s[NT][kRowChunk][kRankQuads];
    const int t = threadIdx.x;
    const int k = blockIdx.y * kThreads + t;
    float a[NT][kRankTile];
    for (int tt = 0; tt < NT; tt++)
        for (int j = 0; j < kRankTile; j++)
            a[tt][j] = (k < in && j0 + j < r) ? g.A[tt][(long)(j0 + j) * in + k] : 0.0f;
    const long n_begin = (long)blockIdx.x * kRowsPerInputBlock;
    const long n_end = n_begin + kRowsPerInputBlock < N ? n_begin + kRowsPerInputBlock : N;
    for (long c = n_begin; c < n_end; c += kRowChunk) {
        const int rows = n_end - c < kRowChunk ? (int)(n_end - c) : kRowChunk;
        stage_du<NT>(du_s, g, c, rows, j0, r);
        if (k >= in) continue;
        int rr = 0;
        for (; rr + 4 <= rows; rr += 4) { /* four read-modify-writes in flight */
            float d[4];
            for (int i = 0; i < 4; i++)
                d[i] = dinp[(c + rr + i) * in + k];
            for (int i = 0; i < 4; i++) {
                const long e = (c + rr + i) * in + k;
                for (int tt = 0; tt < NT; tt++)
                    if (dropout_keep(g.origin[tt], (uint64_t)e, p))
                        d[i] += dot_tile(a[tt], du_s[tt][rr + i]) * keep_scale;
                dinp[e] = d[i];
            }
        }
        for (; rr < rows; rr++) {
            const long e = (c + rr) * in + k;
            float d = dinp[e];
            for (int tt = 0; tt < NT; tt++)
                if (dropout_keep(g.origin[tt], (uint64_t)e, p))
                    d += dot_tile(a[tt], du_s[tt][rr]) * keep_scale;
            dinp[e] = d;
        }
    }
}

unsigned ceil_div(long a, long b) {
    return (unsigned)((a + b - 1) / b);
}

/* The products of prods[0 .. n) that `use` selects, packed into a Group (their count). */
template <class Use>
int pack(Group *g, const mg_dropped_product *prods, int n, uint64_t seed, Use use) {
    int m = 0;
    for (int t = 0; t < n; t++) {
        if (!use(prods[t])) continue;
        g->A[m] = prods[t].A;
        g->u[m] = prods[t].u;
        g->du[m] = prods[t].du;
        g->dA[m] = prods[t].dA;
        g->origin[m] = mg_rng_origin(seed, prods[t].stream);
        m++;
    }
    return m;
}

/* outs[t] (= or +=, by accumulate) the sum over the slices of part[slice][t][len], t < NT: the
 * partial sums of a split product, added in slice order. */
template <int NT>
void add_slices(const mg_backend *be, float *const (&outs)[MG_DROPPED_MAX], const float *part,
                long len, long slices, int accumulate) {
    for (int tt = 0; tt < NT; tt++)
        MG_LAUNCH(sum_slices_kernel, mg_cuda_blocks(len, 256), 256, 0, be, outs[tt],
                  part + tt * len, len, (int)slices, NT * len, accumulate);
}

/* Whether a call runs on the tensor cores (dropped_matmul_tc.cuh): in bf16 mode, where the
 * GEMMs already round their operands, when MAGNET_CUDA_LORA_TC=1, and when the kernels'
 * 16-byte loads can read every operand (`in` a multiple of 4, x, dinp and the factors aligned).
 * Off by default until a GPU run has timed it against the CUDA-core kernels
 * (benchmarks/gpu_check.sh measures both); fp32 mode always keeps the float32 sums that match
 * the CPU. */
bool use_tensor_cores(const mg_backend *be, const Group &g, int n, const float *x, int in,
                      const float *dinp) {
    if (be->precision != MG_PRECISION_BF16) return false;
    const char *env = getenv("MAGNET_CUDA_LORA_TC");
    if (env == NULL || strcmp(env, "1") != 0) return false;
    if (in % 4 != 0 || !mg_aligned16(x) || !mg_aligned16(dinp)) return false;
    for (int t = 0; t < n; t++)
        if (!mg_aligned16(g.A[t])) return false;
    return true;
}

/* Slices of a split sum: enough blocks (with `blocks` per slice) to give every SM four, at most
 * `most`, at least 1. */
long slice_count(const mg_backend *be, long blocks, long most) {
    long slices = (4L * mg_cuda_ctx_of(be)->sm_count + blocks - 1) / blocks;
    if (slices > most) slices = most;
    if (slices > 65535) slices = 65535;
    return slices < 1 ? 1 : slices;
}

template <int NT>
void forward_n(const mg_backend *be, const Group &g, const float *x, int N, int in, int r, float p,
               float *scratch, bool tc) {
    /* Column slices, so that long rows still give the GPU enough threads; their partials
     * [slices][NT][N][r] must fit scratch's N x in floats (slices NT r <= in), which only large
     * ranks make bind: then the slices widen by whole chunks. */
    const int chunk = tc ? 16 * kTcLoads : kForwardK;
    const long most = in / ((long)NT * r) > 1 ? in / ((long)NT * r) : 1;
    long slices;
    if (tc)
        slices =
            slice_count(be, (long)ceil_div(N, kTcForwardRows) * ceil_div(r, kTcRankTile), most);
    else {
        slices = ceil_div(in, kForwardK);
        if (slices > most) slices = most;
        if (slices > 65535) slices = 65535;
    }
    const int cols = (int)ceil_div(ceil_div(in, slices), chunk) * chunk;
    slices = ceil_div(in, cols);
    const float keep_scale = dropout_keep_scale(p);
    if (tc) {
        const dim3 grid(ceil_div(N, kTcForwardRows), (unsigned)slices, ceil_div(r, kTcRankTile));
        MG_LAUNCH(dropped_forward_tc_kernel<NT>, grid, kTcThreads, 0, be, g, scratch, x, N, in, r,
                  cols, p, keep_scale);
    } else {
        const dim3 grid(ceil_div(N, kThreads), (unsigned)slices, ceil_div(r, kRankTile));
        auto kernel = in % 4 == 0 && mg_aligned16(x) ? dropped_forward_kernel<NT, true>
                                                     : dropped_forward_kernel<NT, false>;
        MG_LAUNCH(kernel, grid, kThreads, 0, be, g, scratch, x, N, in, r, cols, p, keep_scale);
    }
    if (slices > 1) add_slices<NT>(be, g.u, scratch, (long)N * r, slices, 0);
}

template <int NT>
void dweight_n(const mg_backend *be, const Group &g, const float *x, int N, int in, int r, float p,
               float *scratch, bool tc) {
    /* row slices: enough blocks to fill the GPU, at least kRowChunk rows each, and partials
     * [slices][NT][r][in] within scratch's N x in floats (slices NT r <= N) */
    const unsigned col_blocks = ceil_div(in, tc ? kTcColumns : kThreads);
    const unsigned rank_tiles = ceil_div(r, tc ? kTcRankTile : kRankTile);
    const long slices_wanted =
        slice_count(be, (long)col_blocks * rank_tiles,
                    N / ((long)NT * r > kRowChunk ? (long)NT * r : kRowChunk));
    const int rows_per_slice = (int)ceil_div(N, slices_wanted);
    const long slices = ceil_div(N, rows_per_slice);
    const dim3 grid(col_blocks, (unsigned)slices, rank_tiles);
    if (tc)
        MG_LAUNCH(dropped_dweight_tc_kernel<NT>, grid, kTcThreads, 0, be, g, scratch, x, N, in, r,
                  rows_per_slice, p, dropout_keep_scale(p));
    else
        MG_LAUNCH(dropped_dweight_kernel<NT>, grid, kThreads, 0, be, g, scratch, x, N, in, r,
                  rows_per_slice, p, dropout_keep_scale(p));
    if (slices > 1) add_slices<NT>(be, g.dA, scratch, (long)r * in, slices, 1);
}

template <int NT>
void dinput_n(const mg_backend *be, const Group &g, float *dinp, int N, int in, int r, float p,
              bool tc) {
    if (tc) {
        const dim3 grid(ceil_div(N, kTcInputRows), ceil_div(in, kTcColumns));
        for (int j0 = 0; j0 < r; j0 += kTcRankTile)
            MG_LAUNCH(dropped_dinput_tc_kernel<NT>, grid, kTcThreads, 0, be, g, dinp, N, in, r, j0,
                      p, dropout_keep_scale(p));
        return;
    }
    const dim3 grid(ceil_div(N, kRowsPerInputBlock), ceil_div(in, kThreads));
    auto kernel = dropped_dinput_kernel<NT>;
    for (int j0 = 0; j0 < r; j0 += kRankTile)
        MG_LAUNCH(kernel, grid, kThreads, 0, be, g, dinp, N, in, r, j0, p, dropout_keep_scale(p));
}

/* Runs f<NT>() for NT = n, 1 <= n <= MG_DROPPED_MAX. */
template <class F> void with_count(int n, F f) {
    static_assert(MG_DROPPED_MAX == 3, "with_count covers 1 to 3 products");
    if (n == 1)
        f(std::integral_constant<int, 1>());
    else if (n == 2)
        f(std::integral_constant<int, 2>());
    else if (n == 3)
        f(std::integral_constant<int, 3>());
}

} // namespace

extern "C" void cuda_dropped_matmul_forward(const mg_backend *be, const float *x, int N, int in,
                                            int r, float p, uint64_t seed,
                                            const mg_dropped_product *prods, int n,
                                            float *scratch) {
    if (N <= 0 || r <= 0 || n <= 0) return;
    if (n > MG_DROPPED_MAX) {
        mg_cuda_note(be, cudaErrorInvalidValue,
                     "dropped_matmul: more than MG_DROPPED_MAX products");
        return;
    }
    if (in <= 0) { /* empty sums */
        for (int t = 0; t < n; t++)
            cuda_zero(be, prods[t].u, sizeof(float) * (size_t)N * (size_t)r);
        return;
    }
    Group g;
    const int m = pack(&g, prods, n, seed, [](const mg_dropped_product &) { return true; });
    const bool tc = use_tensor_cores(be, g, m, x, in, NULL);
    with_count(
        m, [&](auto nt) { forward_n<decltype(nt)::value>(be, g, x, N, in, r, p, scratch, tc); });
}

extern "C" void cuda_dropped_matmul_backward(const mg_backend *be, float *dinp, const float *x,
                                             int N, int in, int r, float p, uint64_t seed,
                                             const mg_dropped_product *prods, int n,
                                             float *scratch) {
    if (N <= 0 || in <= 0 || r <= 0 || n <= 0) return;
    if (n > MG_DROPPED_MAX) {
        mg_cuda_note(be, cudaErrorInvalidValue,
                     "dropped_matmul: more than MG_DROPPED_MAX products");
        return;
    }
    Group g;
    const int with_dA =
        pack(&g, prods, n, seed, [](const mg_dropped_product &d) { return d.dA != NULL; });
    const bool tc = use_tensor_cores(be, g, with_dA, x, in, dinp);
    with_count(with_dA, [&](auto nt) {
        dweight_n<decltype(nt)::value>(be, g, x, N, in, r, p, scratch, tc);
    });
    if (dinp == NULL) return;
    const int all = pack(&g, prods, n, seed, [](const mg_dropped_product &) { return true; });
    const bool tc_all = use_tensor_cores(be, g, all, x, in, dinp);
    with_count(all,
               [&](auto nt) { dinput_n<decltype(nt)::value>(be, g, dinp, N, in, r, p, tc_all); });
}
