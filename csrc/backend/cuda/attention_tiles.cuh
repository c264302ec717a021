/* What the two attention files of the CUDA backend share: attention.cu (float32 tile products
 * on the CUDA cores, every head size, the dispatch) and attention_mma.cu (bf16 tile products on
 * the tensor cores). The unified rule, the key and query ranges a tile walks, the arguments of a
 * call and the shared-memory opt-in. */
#ifndef MG_BACKEND_CUDA_ATTENTION_TILES_CUH
#define MG_BACKEND_CUDA_ATTENTION_TILES_CUH

#include <limits.h>
#include <math.h>
#include <stdint.h>

#include <type_traits>

#include "cuda_common.h"

#if defined(__CUDACC__) && !defined(MG_CUDA_EMULATE)
#define MG_BOUNDS(n) __launch_bounds__(n)
#else
#define MG_BOUNDS(n)
#endif

namespace mg_attention {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct alignas(16) f4 {
    float x, y, z, w;
};

__device__ inline f4 ld4(const float *p) {
    return *reinterpret_cast<const f4 *>(p);
}
__device__ inline void st4(float *p, f4 v) {
    *reinterpret_cast<f4 *>(p) = v;
}
/* Component e of a (a select, not an indexed local array, which would live in local memory). */
__device__ inline float comp(const f4 &a, int e) {
    return e == 0 ? a.x : e == 1 ? a.y : e == 2 ? a.z : a.w;
}
__device__ inline int imax(int a, int b) {
    return a > b ? a : b;
}

/* The unified rule (key_visible in csrc/ops/attention.c; a query with seg < 0 sees nothing). */
__device__ inline bool visible(int q_role, int q_seg, int q_index, int k_role, int k_seg,
                               int k_index) {
    return q_seg >= 0 && k_seg == q_seg &&
           (k_role == MG_ROLE_CONTEXT || (q_role == MG_ROLE_SPAN && k_index <= q_index));
}

/* Block-wide maximum of N ints per thread (every thread gets the results). red: kWarps * N. */
template <int N> __device__ inline void block_max(int (&v)[N], int *red) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    MG_UNROLL
    for (int n = 0; n < N; n++)
        for (int off = 16; off > 0; off /= 2)
            v[n] = imax(v[n], __shfl_xor_sync(kFull, v[n], off));
    if (lane == 0)
        for (int n = 0; n < N; n++)
            red[warp * N + n] = v[n];
    __syncthreads();
    MG_UNROLL
    for (int n = 0; n < N; n++) {
        int x = red[n];
        for (int w = 1; w < kWarps; w++)
            x = imax(x, red[w * N + n]);
        v[n] = x;
    }
    __syncthreads(); /* red may be reused */
}

/* What a block of a query-tile kernel (grid: query tiles, Hq, B; ROWS queries a tile) owns: its
 * first query i0, its batch row b and query head h, the row strides of q and k/v, and the keys,
 * values, roles and segments of row b under h's kv head (GQA). The tiles run in reverse order,
 * so that those with the most keys (the last ones of causal rows) start first. */
struct QueryBlock {
    int i0, h, b;
    long q_row, kv_row;
    const float *kb, *vb;
    const uint8_t *kr;
    const int32_t *ks;
};
__device__ inline QueryBlock query_block(int rows, const attention_shape &s, const float *k,
                                         const float *v, const uint8_t *k_roles,
                                         const int32_t *k_seg) {
    const int h = blockIdx.y, b = blockIdx.z, kh = h / (s.Hq / s.Hkv);
    const long kv_row = (long)s.Hkv * s.hd, kv0 = (long)b * s.kv_stride;
    return QueryBlock{(int)(gridDim.x - 1 - blockIdx.x) * rows,
                      h,
                      b,
                      (long)s.Hq * s.hd,
                      kv_row,
                      k + kv0 * kv_row + (long)kh * s.hd,
                      v + kv0 * kv_row + (long)kh * s.hd,
                      k_roles + kv0,
                      k_seg + kv0};
}

/* What a block of a key-tile kernel (grid: key tiles, Hkv, B; ROWS keys a tile) owns: its first
 * key j0, its kv head kh and batch row b, the row strides of q and k/v, row b's first key row
 * kv0, and the roles and segments of row b's keys (kr, ks) and queries (qr, qs). */
struct KeyBlock {
    int j0, kh, b;
    long q_row, kv_row, kv0;
    const uint8_t *kr;
    const int32_t *ks;
    const uint8_t *qr;
    const int32_t *qs;
};
__device__ inline KeyBlock key_block(int rows, const attention_shape &s, const uint8_t *q_roles,
                                     const int32_t *q_seg, const uint8_t *k_roles,
                                     const int32_t *k_seg) {
    const int b = blockIdx.z;
    const long kv0 = (long)b * s.kv_stride;
    return KeyBlock{(int)blockIdx.x * rows, (int)blockIdx.y,    b,
                    (long)s.Hq * s.hd,      (long)s.Hkv * s.hd, kv0,
                    k_roles + kv0,          k_seg + kv0,        q_roles + (long)b * s.Tq,
                    q_seg + (long)b * s.Tq};
}

/* The keys [*lo, *hi] of batch row b that can matter to the queries i0 .. i0+ROWS-1: those whose
 * segment lies within the tile's (valid) query segments and that are CONTEXT or not after the
 * last SPAN query. A superset of the visible keys (the rule itself is applied per pair later),
 * exact for the usual layouts: causal rows stop at the diagonal, packed segments at their ends.
 * Also leaves each query's segment and role in qinfo[0:ROWS], qinfo[ROWS:2 ROWS].
 * *lo > *hi when no key matters. */
template <int ROWS>
__device__ inline void query_tile_keys(int *lo, int *hi, int *qinfo, int *red,
                                       const uint8_t *q_roles, const int32_t *q_seg,
                                       const uint8_t *kr, const int32_t *ks, int b, int i0,
                                       const attention_shape &s) {
    const int tid = threadIdx.x;
    int m[3] = {-1, INT_MIN + 1, -1}; /* max seg, -min seg, last SPAN query (as a key index) */
    if (tid < ROWS) {
        const int i = i0 + tid;
        int seg = -1, role = MG_ROLE_CONTEXT;
        if (i < s.Tq) {
            seg = q_seg[(long)b * s.Tq + i];
            role = q_roles[(long)b * s.Tq + i];
        }
        qinfo[tid] = seg;
        qinfo[ROWS + tid] = role;
        if (seg >= 0) {
            m[0] = seg;
            m[1] = -seg;
            if (role == MG_ROLE_SPAN) m[2] = s.q_start + i;
        }
    }
    block_max<3>(m, red);
    *lo = 0;
    *hi = -1;
    if (m[0] < 0) return; /* only padding queries */
    const int seg_max = m[0], seg_min = -m[1], span_max = m[2];
    int r[2] = {INT_MIN + 1, -1}; /* -first, last */
    for (int j = tid; j < s.Tk; j += kThreads) {
        const int seg = ks[j];
        if (seg >= seg_min && seg <= seg_max && (kr[j] == MG_ROLE_CONTEXT || j <= span_max)) {
            r[0] = imax(r[0], -j);
            r[1] = imax(r[1], j);
        }
    }
    block_max<2>(r, red);
    *lo = -r[0];
    *hi = r[1];
}

/* Segment, role and key index of the key tile j0 .. j0+COLS-1 into kinfo[0:COLS],
 * kinfo[COLS:2 COLS] (keys past Tk get segment -1, which no query matches). */
template <int COLS>
__device__ inline void load_key_info(int *kinfo, const uint8_t *kr, const int32_t *ks, int j0,
                                     int Tk) {
    const int t = threadIdx.x;
    if (t < COLS) {
        const int j = j0 + t;
        kinfo[t] = j < Tk ? ks[j] : -1;
        kinfo[COLS + t] = j < Tk ? (int)kr[j] : (int)MG_ROLE_CONTEXT;
    }
}

/* The queries [*lo, *hi] of batch row b that can see a key of the tile j0 .. j0+ROWS-1: same
 * segment range, and either the tile has a CONTEXT key (visible to its whole segment) or the
 * query is a SPAN at or after the tile's first SPAN key. Also leaves each key's segment and role
 * in kinfo[0:ROWS], kinfo[ROWS:2 ROWS]. *lo > *hi when no query sees the tile. */
template <int ROWS>
__device__ inline void key_tile_queries(int *lo, int *hi, int *kinfo, int *red, const uint8_t *qr,
                                        const int32_t *qs, const uint8_t *kr, const int32_t *ks,
                                        int j0, const attention_shape &s) {
    const int tid = threadIdx.x;
    load_key_info<ROWS>(kinfo, kr, ks, j0, s.Tk);
    int m[4] = {-1, INT_MIN + 1, 0, INT_MIN + 1}; /* max seg, -min seg, has CONTEXT, -first SPAN */
    if (tid < ROWS) {
        const int j = j0 + tid;
        const int seg = j < s.Tk ? ks[j] : -1;
        if (seg >= 0) {
            m[0] = seg;
            m[1] = -seg;
            if (kr[j] == MG_ROLE_CONTEXT)
                m[2] = 1;
            else
                m[3] = -j;
        }
    }
    block_max<4>(m, red);
    *lo = 0;
    *hi = -1;
    if (m[0] < 0) return; /* only padding keys */
    const int seg_max = m[0], seg_min = -m[1], has_ctx = m[2], first_span = -m[3];
    int rq[2] = {INT_MIN + 1, -1};
    for (int i = tid; i < s.Tq; i += kThreads) {
        const int seg = qs[i];
        if (seg >= seg_min && seg <= seg_max &&
            (has_ctx || (qr[i] == MG_ROLE_SPAN && s.q_start + i >= first_span))) {
            rq[0] = imax(rq[0], -i);
            rq[1] = imax(rq[1], i);
        }
    }
    block_max<2>(rq, red);
    *lo = -rq[0];
    *hi = rq[1];
}

/* Lets a kernel use `bytes` of dynamic shared memory; false (failure noted) if it cannot. */
template <class K> bool allow_smem(const mg_backend *be, K kernel, size_t bytes) {
    if (bytes > (size_t)mg_cuda_ctx_of(be)->smem_optin) {
        mg_cuda_note(be, cudaErrorInvalidValue,
                     "attention: head size needs more shared memory than this GPU has");
        return false;
    }
    if (bytes > 48 * 1024) {
        const cudaError_t st =
            cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
        if (st != cudaSuccess) {
            mg_cuda_note(be, st, "cudaFuncSetAttribute (attention shared memory)");
            return false;
        }
    }
    return true;
}

struct Args {
    const float *q, *k, *v;
    const uint8_t *q_roles, *k_roles;
    const int32_t *q_seg, *k_seg;
    attention_shape s;
    float qmul, scale;
    int vec;
};

/* Whether the tensor-core kernels of attention_mma.cu handle padded head size D (they take D a
 * multiple of 16 whose accumulators fit the registers). */
constexpr bool mma_head_size(int D) {
    return D == 32 || D == 64 || D == 128;
}

/* f(std::integral_constant<int, D>()) for a padded head size D that the kernels handle. */
template <class F> void with_head_size(const mg_backend *be, int D, F f) {
    if (D == 32)
        f(std::integral_constant<int, 32>());
    else if (D == 64)
        f(std::integral_constant<int, 64>());
    else if (D == 128)
        f(std::integral_constant<int, 128>());
    else
        mg_cuda_note(be, cudaErrorInvalidValue, "attention (tensor cores): head size");
}

/* attention_mma.cu's kernels, for a padded head size with mma_head_size: the forward (out !=
 * NULL) or its statistics mode (out == NULL: lse and dsum from dout), dQ, and dK/dV. */
void mma_forward(const mg_backend *be, const Args &a, int D, float *out, float *lse, float *dsum,
                 const float *dout);
void mma_dq(const mg_backend *be, const Args &a, int D, float *dq, const float *lse,
            const float *dsum, const float *dout);
void mma_dkv(const mg_backend *be, const Args &a, int D, float *dk, float *dv, const float *lse,
             const float *dsum, const float *dout);

/* attention_packed.cu's kernels (the same head sizes): the forward with out (and lse when given),
 * and the backward's dQ and dK/dV (any of dq, dk, dv may be NULL) from lse and dsum. */
void packed_forward(const mg_backend *be, const Args &a, int D, float *out, float *lse);
void packed_backward(const mg_backend *be, const Args &a, int D, float *dq, float *dk, float *dv,
                     const float *lse, const float *dsum, const float *dout);

} // namespace mg_attention

#endif
