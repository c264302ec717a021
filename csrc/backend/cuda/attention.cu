/* MAGNET attention on the GPU, flash-attention style, in float32 (csrc/ops/attention.h is the
 * specification; this file computes the same thing).
 *
 * Query i may attend key j iff seg[i] == seg[j] >= 0 and
 *     role[j] == CONTEXT  or  (role[i] == SPAN and j <= q_start + i),
 * evaluated per (query, key) pair from the roles and segments: no T x T mask or score matrix ever
 * exists in global memory. A query that sees no key (padding) gets a zero output and contributes
 * no gradient, as on the CPU.
 *
 * Forward: a block owns ROWS queries of one (batch row, head) and walks the key tiles that can
 * matter to them, COLS keys at a time through shared memory, with an online softmax (running
 * max m and sum l per query; when the max grows the partial output and sum are rescaled by
 * 2^(m_old - m_new)). Scores are taken in base 2: q is pre-multiplied by log2(e)/sqrt(hd), so
 * P = 2^(s2 - m) equals e^(s - m) of the natural-log scores (up to rounding).
 *
 * Backward. With S = scale Q K^T, P = softmax_rows(S) (masked), O = P V and dO given:
 *     dV = P^T dO,  dP = dO V^T,  dS_ij = P_ij (dP_ij - D_i) with D_i = sum_j P_ij dP_ij,
 *     dQ = scale dS K,  dK = scale dS^T Q.
 * (softmax: dS_ij = P_ij (dP_ij - sum_k P_ik dP_ik).) Since O_i = sum_j P_ij V_j,
 * D_i = dO_i . O_i. The backward call gets neither O nor the softmax statistics, so it first runs
 * the forward kernel in a statistics mode that keeps, per query, the base-2 logsumexp
 * lse_i = m_i + log2(l_i) and D_i = dO_i . O_i (in the scratch, never O itself); then any P_ij is
 * recomputed as 2^(s2_ij - lse_i) tile by tile. Two kernels follow, each owning what it writes so
 * that nothing is added by two blocks (deterministic, no atomics):
 *   - dK/dV: a block owns ROWS keys of one (row, kv head) and walks the query tiles of every
 *     query head of its GQA group that can see them;
 *   - dQ: a block owns ROWS queries of one (row, head) and walks the key tiles, like the forward.
 * S and dP are thereby computed twice; that is the price of determinism without a T x T buffer.
 * dq, dk and dv are accumulated into (+=), and any may be NULL, as on the CPU.
 *
 * Tiles: 128 threads as a 16 x 8 grid (ty, tx). In a [ROWS, COLS] score tile a thread holds rows
 * ty + 16 r and columns tx + 8 c, so each row lives in the 8 lanes of one warp that share ty (row
 * max and sum are 3 xor-shuffles). In a [ROWS, D] output tile it holds the same rows and the
 * float4 column groups tx * 4 + 32 g. [*, D] tiles are stored row-major with a stride of D + 4
 * floats: float4 reads along d by the 8 lanes of a quarter-warp then hit 8 different rows at
 * 8 different bank quads, and float4 reads across d are contiguous; [ROWS, COLS] tiles have a
 * stride of COLS + 8, which spreads the 4 rows a warp touches over distinct banks. Head sizes
 * are padded (with zeros) to D = 32, 64, 128, 256 or 512.
 *
 * Tensor cores. In bf16 mode, padded head sizes 32, 64 and 128 (the common ones) run entirely
 * in attention_mma.cu: the same kernels with mma.sync bfloat16 tile products and the softmax in
 * registers. Head size 256 stays here, with only the dK/dV kernel's tile products (K Q^T,
 * V dO^T, P^T dO, dS^T Q) on the tensor cores: each warp computes 16 x 16 blocks of the product
 * with wmma (TF32 inputs, float32 accumulation) into a shared-memory scratch, from which every
 * thread takes the elements it owns in the layout above. fp32 mode keeps the float32 products
 * everywhere (CPU parity within 1e-5). */
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "attention_tiles.cuh"

#if defined(__CUDACC__) && !defined(MG_CUDA_EMULATE)
#include <mma.h>
#define MG_WMMA 1
#endif

using namespace mg_attention;

namespace {

constexpr int kTY = 16, kTX = 8; /* kTY * kTX == kThreads */

/* Geometry of a [ROWS, COLS] tile pair with head size D (see the file comment). TC: the tile
 * products run on the tensor cores (TF32 inputs, float32 accumulation) through a shared-memory
 * scratch of SCRATCH floats that holds one product at a time. */
template <int D_, int ROWS_, int COLS_, bool TC_> struct Tile {
    static constexpr int D = D_, ROWS = ROWS_, COLS = COLS_;
    static constexpr bool TC = TC_;
    static constexpr int RM = ROWS / kTY; /* rows per thread */
    static constexpr int CN = COLS / kTX; /* columns per thread */
    static constexpr int DG = D / 32;     /* float4 column groups per thread in a [ROWS, D] tile */
    static constexpr int LD = D + 4;      /* stride of [*, D] tiles */
    static constexpr int PLD = COLS + 8;  /* stride of [ROWS, COLS] tiles */
    static constexpr int SCRATCH = !TC ? 0 : ROWS * (LD > PLD ? LD : PLD);
    static_assert(ROWS % kTY == 0 && COLS % kTX == 0 && D % 32 == 0, "tile shape");
    static_assert(ROWS <= kThreads && COLS <= kThreads, "one thread per row/column of metadata");
    static_assert(!TC || (ROWS % 16 == 0 && COLS % 16 == 0), "tensor-core tiles are 16 x 16");
};

/* Sum / max over the 8 lanes that hold one tile row. */
__device__ inline float row_sum(float x) {
    for (int off = 1; off < kTX; off *= 2)
        x += __shfl_xor_sync(kFull, x, off);
    return x;
}
__device__ inline float row_max(float x) {
    for (int off = 1; off < kTX; off *= 2)
        x = fmaxf(x, __shfl_xor_sync(kFull, x, off));
    return x;
}

/* dst[r, 0:D] = mul * src[r * stride + 0:hd] for r < nvalid, zero elsewhere (rows nvalid..ROWS
 * and columns hd..D), so padded lanes add exact zeros to every product. vec: hd % 4 == 0 and
 * src 16-byte aligned with stride % 4 == 0. */
template <int ROWS, int D>
__device__ inline void load_rows(float *dst, const float *src, long stride, int nvalid, int hd,
                                 float mul, bool vec) {
    constexpr int LD = D + 4;
    if (vec) {
        constexpr int D4 = D / 4;
        for (int idx = threadIdx.x; idx < ROWS * D4; idx += kThreads) {
            const int r = idx / D4, d = (idx % D4) * 4;
            f4 x = {0.0f, 0.0f, 0.0f, 0.0f};
            if (r < nvalid && d < hd) {
                x = ld4(src + (long)r * stride + d);
                x.x *= mul;
                x.y *= mul;
                x.z *= mul;
                x.w *= mul;
            }
            st4(dst + r * LD + d, x);
        }
    } else {
        for (int idx = threadIdx.x; idx < ROWS * D; idx += kThreads) {
            const int r = idx / D, d = idx % D;
            dst[r * LD + d] = r < nvalid && d < hd ? src[(long)r * stride + d] * mul : 0.0f;
        }
    }
}

/* One warp: C[16, 16] (row stride ldc) = A[16, K] B[K, 16] with A row-major (stride lda) and
 * B(k, n) = B[n * ldb + k] when B_COLS (B's rows are the product's columns, as in Q K^T), else
 * B[k * ldb + n]. Inputs rounded to TF32, float32 accumulation. Pointers 32-byte aligned and
 * strides multiples of 4 (wmma's rules). Without wmma (the emulator), the lanes compute the same
 * rounded products one element at a time. */
template <bool B_COLS, int K>
__device__ inline void warp_mma16(float *C, int ldc, const float *A, int lda, const float *B,
                                  int ldb) {
#ifdef MG_WMMA
    using namespace nvcuda;
    using BLayout = typename std::conditional<B_COLS, wmma::col_major, wmma::row_major>::type;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> c;
    wmma::fill_fragment(c, 0.0f);
    MG_UNROLL
    for (int k = 0; k < K; k += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, BLayout> b;
        wmma::load_matrix_sync(a, A + k, lda);
        wmma::load_matrix_sync(b, B_COLS ? B + k : B + (long)k * ldb, ldb);
        MG_UNROLL
        for (int e = 0; e < a.num_elements; e++)
            a.x[e] = wmma::__float_to_tf32(a.x[e]);
        MG_UNROLL
        for (int e = 0; e < b.num_elements; e++)
            b.x[e] = wmma::__float_to_tf32(b.x[e]);
        wmma::mma_sync(c, a, b, c);
    }
    wmma::store_matrix_sync(C, c, ldc, wmma::mem_row_major);
#else
    for (int e = threadIdx.x % 32; e < 256; e += 32) {
        const int m = e / 16, n = e % 16;
        float acc = 0.0f;
        for (int k = 0; k < K; k++)
            acc = fmaf(mg_emu_tf32(A[m * lda + k]),
                       mg_emu_tf32(B_COLS ? B[n * ldb + k] : B[k * ldb + n]), acc);
        C[m * ldc + n] = acc;
    }
#endif
}

/* tile_dot on the tensor cores: the warps share out the [ROWS, COLS] product's 16 x 16 blocks
 * into the scratch, then each thread reads its own elements. */
template <class T>
__device__ inline void tile_dot_tc(float (&s)[T::RM][T::CN], const float *A, const float *B,
                                   float *scratch, int ty, int tx) {
    constexpr int FC = T::COLS / 16, NF = (T::ROWS / 16) * FC;
    __syncthreads(); /* the scratch's previous product is consumed */
    for (int f = threadIdx.x / 32; f < NF; f += kWarps) {
        const int fr = f / FC, fc = f % FC;
        warp_mma16<true, T::D>(scratch + fr * 16 * T::PLD + fc * 16, T::PLD, A + fr * 16 * T::LD,
                               T::LD, B + fc * 16 * T::LD, T::LD);
    }
    __syncthreads();
    MG_UNROLL
    for (int r = 0; r < T::RM; r++)
        MG_UNROLL
    for (int c = 0; c < T::CN; c++)
        s[r][c] = scratch[(ty + kTY * r) * T::PLD + tx + kTX * c];
}

/* tile_acc on the tensor cores: the [ROWS, D] product W X into the scratch, then each thread
 * adds its own elements to its accumulators. */
template <class T>
__device__ inline void tile_acc_tc(f4 (&acc)[T::RM][T::DG], const float *W, const float *X,
                                   float *scratch, int ty, int tx) {
    constexpr int FD = T::D / 16, NF = (T::ROWS / 16) * FD;
    __syncthreads();
    for (int f = threadIdx.x / 32; f < NF; f += kWarps) {
        const int fr = f / FD, fd = f % FD;
        warp_mma16<false, T::COLS>(scratch + fr * 16 * T::LD + fd * 16, T::LD, W + fr * 16 * T::PLD,
                                   T::PLD, X + fd * 16, T::LD);
    }
    __syncthreads();
    MG_UNROLL
    for (int r = 0; r < T::RM; r++)
        MG_UNROLL
    for (int g = 0; g < T::DG; g++) {
        const f4 x = ld4(scratch + (ty + kTY * r) * T::LD + tx * 4 + 32 * g);
        acc[r][g].x += x.x;
        acc[r][g].y += x.y;
        acc[r][g].z += x.z;
        acc[r][g].w += x.w;
    }
}

/* tile_dot in float32 on the CUDA cores. */
template <class T>
__device__ inline void tile_dot_simt(float (&s)[T::RM][T::CN], const float *A, const float *B,
                                     int ty, int tx) {
    MG_UNROLL
    for (int r = 0; r < T::RM; r++)
        MG_UNROLL
    for (int c = 0; c < T::CN; c++)
        s[r][c] = 0.0f;
    for (int d = 0; d < T::D; d += 4) {
        f4 a[T::RM], b[T::CN];
        MG_UNROLL
        for (int r = 0; r < T::RM; r++)
            a[r] = ld4(A + (ty + kTY * r) * T::LD + d);
        MG_UNROLL
        for (int c = 0; c < T::CN; c++)
            b[c] = ld4(B + (tx + kTX * c) * T::LD + d);
        MG_UNROLL
        for (int r = 0; r < T::RM; r++)
            MG_UNROLL
        for (int c = 0; c < T::CN; c++) {
            float acc = s[r][c];
            acc = fmaf(a[r].x, b[c].x, acc);
            acc = fmaf(a[r].y, b[c].y, acc);
            acc = fmaf(a[r].z, b[c].z, acc);
            acc = fmaf(a[r].w, b[c].w, acc);
            s[r][c] = acc;
        }
    }
}

/* acc[r][g] += sum_j W[ty + 16 r, j] X[j, tx * 4 + 32 g + 0:4] for W a [ROWS, COLS] tile
 * (stride PLD) and X a [COLS, D] tile: the P V, dS K, P^T dO and dS^T Q products. */
template <class T>
__device__ inline void tile_acc_simt(f4 (&acc)[T::RM][T::DG], const float *W, const float *X,
                                     int ty, int tx) {
    for (int j = 0; j < T::COLS; j++) {
        float w[T::RM];
        MG_UNROLL
        for (int r = 0; r < T::RM; r++)
            w[r] = W[(ty + kTY * r) * T::PLD + j];
        MG_UNROLL
        for (int g = 0; g < T::DG; g++) {
            const f4 x = ld4(X + j * T::LD + tx * 4 + 32 * g);
            MG_UNROLL
            for (int r = 0; r < T::RM; r++) {
                acc[r][g].x = fmaf(w[r], x.x, acc[r][g].x);
                acc[r][g].y = fmaf(w[r], x.y, acc[r][g].y);
                acc[r][g].z = fmaf(w[r], x.z, acc[r][g].z);
                acc[r][g].w = fmaf(w[r], x.w, acc[r][g].w);
            }
        }
    }
}

/* s[r][c] = A[ty + 16 r, :] . B[tx + 8 c, :] for [*, D] tiles A (T::ROWS rows) and B (T::COLS).
 * `scratch`: T::SCRATCH floats of shared memory, used by the tensor-core version. */
template <class T>
__device__ inline void tile_dot(float (&s)[T::RM][T::CN], const float *A, const float *B,
                                float *scratch, int ty, int tx) {
    if constexpr (T::TC)
        tile_dot_tc<T>(s, A, B, scratch, ty, tx);
    else
        tile_dot_simt<T>(s, A, B, ty, tx);
}

/* acc[r][g] += sum_j W[ty + 16 r, j] X[j, tx * 4 + 32 g + 0:4] (see tile_acc_simt). */
template <class T>
__device__ inline void tile_acc(f4 (&acc)[T::RM][T::DG], const float *W, const float *X,
                                float *scratch, int ty, int tx) {
    if constexpr (T::TC)
        tile_acc_tc<T>(acc, W, X, scratch, ty, tx);
    else
        tile_acc_simt<T>(acc, W, X, ty, tx);
}

template <class T> __device__ inline void zero_acc(f4 (&acc)[T::RM][T::DG]) {
    MG_UNROLL
    for (int r = 0; r < T::RM; r++)
        MG_UNROLL
    for (int g = 0; g < T::DG; g++)
        acc[r][g] = f4{0.0f, 0.0f, 0.0f, 0.0f};
}

/* dst[d] (+)= mul * a for the thread's columns d = tx * 4 + 32 g + e < hd of one row. */
template <class T>
__device__ inline void store_row(float *dst, const f4 (&a)[T::DG], float mul, int hd, int tx,
                                 bool accumulate, bool vec) {
    MG_UNROLL
    for (int g = 0; g < T::DG; g++) {
        const int d = tx * 4 + 32 * g;
        if (d >= hd) break;
        f4 x = {a[g].x * mul, a[g].y * mul, a[g].z * mul, a[g].w * mul};
        if (vec) {
            if (accumulate) {
                const f4 y = ld4(dst + d);
                x.x += y.x;
                x.y += y.y;
                x.z += y.z;
                x.w += y.w;
            }
            st4(dst + d, x);
        } else {
            MG_UNROLL
            for (int e = 0; e < 4; e++)
                if (d + e < hd) dst[d + e] = accumulate ? dst[d + e] + comp(x, e) : comp(x, e);
        }
    }
}

/* Shared memory (bytes) of each kernel. */
template <class T> constexpr size_t forward_smem() {
    return sizeof(float) * ((size_t)T::ROWS * T::LD + 2 * (size_t)T::COLS * T::LD +
                            (size_t)T::ROWS * T::PLD + T::SCRATCH) +
           sizeof(int) * (2 * T::COLS + 2 * T::ROWS + 4 * kWarps);
}
template <class T> constexpr size_t dq_smem() {
    return sizeof(float) * (2 * (size_t)T::ROWS * T::LD + 2 * (size_t)T::COLS * T::LD +
                            (size_t)T::ROWS * T::PLD + T::SCRATCH) +
           sizeof(int) * (2 * T::COLS + 2 * T::ROWS + 4 * kWarps);
}
template <class T> constexpr size_t dkv_smem() {
    return sizeof(float) * (2 * (size_t)T::ROWS * T::LD + 2 * (size_t)T::COLS * T::LD +
                            2 * (size_t)T::ROWS * T::PLD + T::SCRATCH + 2 * (size_t)T::COLS) +
           sizeof(int) * (2 * T::ROWS + 2 * T::COLS + 4 * kWarps);
}

/* Forward. T::ROWS queries per block, T::COLS keys per tile. grid (query tiles, Hq, B).
 * out != NULL: writes the output, and lse (below) when lse != NULL, for a backward that is given
 * them. out == NULL (statistics mode, for the backward): writes the
 * base-2 logsumexp lse[b, h, i] (-inf for a query that sees nothing) and D[b, h, i] = dO_i . O_i.
 * qmul = log2(e) / sqrt(hd). */
template <class T>
__global__ void MG_BOUNDS(kThreads)
    attention_forward_kernel(float *out, float *lse, float *dsum, const float *dout, const float *q,
                             const float *k, const float *v, const uint8_t *q_roles,
                             const int32_t *q_seg, const uint8_t *k_roles, const int32_t *k_seg,
                             attention_shape s, float qmul, int vec) {
    MG_DYNAMIC_SHARED(float, smem);
    float *Qs = smem;                                           /* [ROWS, LD], scaled by qmul */
    float *Ks = Qs + T::ROWS * T::LD;                           /* [COLS, LD] */
    float *Vs = Ks + T::COLS * T::LD;                           /* [COLS, LD] */
    float *Ps = Vs + T::COLS * T::LD;                           /* [ROWS, PLD] */
    float *scratch = Ps + T::ROWS * T::PLD;                     /* [SCRATCH] */
    int *kinfo = reinterpret_cast<int *>(scratch + T::SCRATCH); /* [2, COLS] */
    int *qinfo = kinfo + 2 * T::COLS;                           /* [2, ROWS] */
    int *red = qinfo + 2 * T::ROWS;

    const int tid = threadIdx.x, ty = tid / kTX, tx = tid % kTX;
    const auto [i0, h, b, q_row, kv_row, kb, vb, kr, ks] =
        query_block(T::ROWS, s, k, v, k_roles, k_seg);
    const int hd = s.hd;

    int lo, hi;
    query_tile_keys<T::ROWS>(&lo, &hi, qinfo, red, q_roles, q_seg, kr, ks, b, i0, s);
    int rseg[T::RM], rrole[T::RM];
    MG_UNROLL
    for (int r = 0; r < T::RM; r++) {
        rseg[r] = qinfo[ty + kTY * r];
        rrole[r] = qinfo[T::ROWS + ty + kTY * r];
    }

    float m[T::RM], l[T::RM];
    f4 o[T::RM][T::DG];
    zero_acc<T>(o);
    MG_UNROLL
    for (int r = 0; r < T::RM; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    if (lo <= hi) {
        const int nq = s.Tq - i0 < T::ROWS ? s.Tq - i0 : T::ROWS;
        load_rows<T::ROWS, T::D>(Qs, q + ((long)b * s.Tq + i0) * q_row + (long)h * hd, q_row, nq,
                                 hd, qmul, vec);
    }
    for (int k0 = lo; k0 <= hi; k0 += T::COLS) {
        const int nk = s.Tk - k0 < T::COLS ? s.Tk - k0 : T::COLS;
        __syncthreads(); /* the previous tile is consumed */
        load_rows<T::COLS, T::D>(Ks, kb + (long)k0 * kv_row, kv_row, nk, hd, 1.0f, vec);
        load_rows<T::COLS, T::D>(Vs, vb + (long)k0 * kv_row, kv_row, nk, hd, 1.0f, vec);
        load_key_info<T::COLS>(kinfo, kr, ks, k0, s.Tk);
        __syncthreads();
        float sc[T::RM][T::CN];
        tile_dot<T>(sc, Qs, Ks, scratch, ty, tx);
        MG_UNROLL
        for (int r = 0; r < T::RM; r++) {
            const int qi = s.q_start + i0 + ty + kTY * r;
            float mt = -INFINITY;
            MG_UNROLL
            for (int c = 0; c < T::CN; c++) {
                const int j = tx + kTX * c;
                if (!visible(rrole[r], rseg[r], qi, kinfo[T::COLS + j], kinfo[j], k0 + j))
                    sc[r][c] = -INFINITY;
                mt = fmaxf(mt, sc[r][c]);
            }
            mt = row_max(mt);
            const float mn = fmaxf(m[r], mt);
            /* The first visible key of a row finds l = 0 and o = 0: any finite factor will do. */
            const float alpha = m[r] == -INFINITY ? 0.0f : exp2f(m[r] - mn);
            float ls = 0.0f;
            MG_UNROLL
            for (int c = 0; c < T::CN; c++) {
                const float p = sc[r][c] == -INFINITY ? 0.0f : exp2f(sc[r][c] - mn);
                Ps[(ty + kTY * r) * T::PLD + tx + kTX * c] = p;
                ls += p;
            }
            l[r] = l[r] * alpha + ls;
            m[r] = mn;
            MG_UNROLL
            for (int g = 0; g < T::DG; g++) {
                o[r][g].x *= alpha;
                o[r][g].y *= alpha;
                o[r][g].z *= alpha;
                o[r][g].w *= alpha;
            }
        }
        __syncthreads();
        tile_acc<T>(o, Ps, Vs, scratch, ty, tx);
    }

    MG_UNROLL
    for (int r = 0; r < T::RM; r++) {
        const int i = i0 + ty + kTY * r;
        const float lr = row_sum(l[r]);
        const float inv = lr > 0.0f ? 1.0f / lr : 0.0f;
        const long off = ((long)b * s.Tq + i) * q_row + (long)h * hd;
        if (out != NULL) {
            if (i < s.Tq) store_row<T>(out + off, o[r], inv, hd, tx, false, vec);
            if (lse != NULL && tx == 0 && i < s.Tq) /* saved for the backward */
                lse[((long)b * s.Hq + h) * s.Tq + i] = lr > 0.0f ? m[r] + log2f(lr) : -INFINITY;
        } else {
            float dd = 0.0f;
            if (i < s.Tq && lr > 0.0f) {
                const float *g = dout + off;
                MG_UNROLL
                for (int gg = 0; gg < T::DG; gg++) {
                    const int d = tx * 4 + 32 * gg;
                    MG_UNROLL
                    for (int e = 0; e < 4; e++)
                        if (d + e < hd) dd = fmaf(g[d + e], comp(o[r][gg], e) * inv, dd);
                }
            }
            dd = row_sum(dd);
            if (tx == 0 && i < s.Tq) {
                const long si = ((long)b * s.Hq + h) * s.Tq + i;
                lse[si] = lr > 0.0f ? m[r] + log2f(lr) : -INFINITY;
                dsum[si] = dd;
            }
        }
    }
}

/* dQ. T::ROWS queries per block, T::COLS keys per tile; grid (query tiles, Hq, B).
 * dq += scale sum_j dS_ij K_j. */
template <class T>
__global__ void MG_BOUNDS(kThreads)
    attention_dq_kernel(float *dq, const float *lse, const float *dsum, const float *dout,
                        const float *q, const float *k, const float *v, const uint8_t *q_roles,
                        const int32_t *q_seg, const uint8_t *k_roles, const int32_t *k_seg,
                        attention_shape s, float qmul, float scale, int vec) {
    MG_DYNAMIC_SHARED(float, smem);
    float *Qs = smem;                  /* [ROWS, LD], scaled by qmul */
    float *dOs = Qs + T::ROWS * T::LD; /* [ROWS, LD] */
    float *Ks = dOs + T::ROWS * T::LD; /* [COLS, LD] */
    float *Vs = Ks + T::COLS * T::LD;  /* [COLS, LD] */
    float *dSs = Vs + T::COLS * T::LD; /* [ROWS, PLD] */
    float *scratch = dSs + T::ROWS * T::PLD;
    int *kinfo = reinterpret_cast<int *>(scratch + T::SCRATCH);
    int *qinfo = kinfo + 2 * T::COLS;
    int *red = qinfo + 2 * T::ROWS;

    const int tid = threadIdx.x, ty = tid / kTX, tx = tid % kTX;
    const auto [i0, h, b, q_row, kv_row, kb, vb, kr, ks] =
        query_block(T::ROWS, s, k, v, k_roles, k_seg);
    const int hd = s.hd;

    int lo, hi;
    query_tile_keys<T::ROWS>(&lo, &hi, qinfo, red, q_roles, q_seg, kr, ks, b, i0, s);
    if (lo > hi) return; /* no query of the tile sees a key: no gradient */
    const int nq = s.Tq - i0 < T::ROWS ? s.Tq - i0 : T::ROWS;
    const long qoff = ((long)b * s.Tq + i0) * q_row + (long)h * hd;
    load_rows<T::ROWS, T::D>(Qs, q + qoff, q_row, nq, hd, qmul, vec);
    load_rows<T::ROWS, T::D>(dOs, dout + qoff, q_row, nq, hd, 1.0f, vec);
    int rseg[T::RM], rrole[T::RM];
    float rlse[T::RM], rd[T::RM];
    MG_UNROLL
    for (int r = 0; r < T::RM; r++) {
        const int row = ty + kTY * r, i = i0 + row;
        rseg[r] = qinfo[row];
        rrole[r] = qinfo[T::ROWS + row];
        const long si = ((long)b * s.Hq + h) * s.Tq + i;
        rlse[r] = i < s.Tq ? lse[si] : -INFINITY;
        rd[r] = i < s.Tq ? dsum[si] : 0.0f;
    }
    f4 acc[T::RM][T::DG];
    zero_acc<T>(acc);
    for (int k0 = lo; k0 <= hi; k0 += T::COLS) {
        const int nk = s.Tk - k0 < T::COLS ? s.Tk - k0 : T::COLS;
        __syncthreads();
        load_rows<T::COLS, T::D>(Ks, kb + (long)k0 * kv_row, kv_row, nk, hd, 1.0f, vec);
        load_rows<T::COLS, T::D>(Vs, vb + (long)k0 * kv_row, kv_row, nk, hd, 1.0f, vec);
        load_key_info<T::COLS>(kinfo, kr, ks, k0, s.Tk);
        __syncthreads();
        float sc[T::RM][T::CN], dp[T::RM][T::CN];
        tile_dot<T>(sc, Qs, Ks, scratch, ty, tx);
        tile_dot<T>(dp, dOs, Vs, scratch, ty, tx);
        MG_UNROLL
        for (int r = 0; r < T::RM; r++) {
            const int qi = s.q_start + i0 + ty + kTY * r;
            MG_UNROLL
            for (int c = 0; c < T::CN; c++) {
                const int j = tx + kTX * c;
                float ds = 0.0f;
                if (rlse[r] != -INFINITY &&
                    visible(rrole[r], rseg[r], qi, kinfo[T::COLS + j], kinfo[j], k0 + j)) {
                    const float p = exp2f(sc[r][c] - rlse[r]);
                    ds = p * (dp[r][c] - rd[r]);
                }
                dSs[(ty + kTY * r) * T::PLD + j] = ds;
            }
        }
        __syncthreads();
        tile_acc<T>(acc, dSs, Ks, scratch, ty, tx);
    }
    MG_UNROLL
    for (int r = 0; r < T::RM; r++) {
        const int i = i0 + ty + kTY * r;
        if (i < s.Tq)
            store_row<T>(dq + ((long)b * s.Tq + i) * q_row + (long)h * hd, acc[r], scale, hd, tx,
                         true, vec);
    }
}

/* dK and dV. T::ROWS keys per block, T::COLS queries per tile; grid (key tiles, Hkv, B). The
 * block walks the query tiles of every query head of its GQA group in a fixed order:
 * dv += sum_i P_ij dO_i, dk += scale sum_i dS_ij Q_i. */
template <class T>
__global__ void MG_BOUNDS(kThreads)
    attention_dkv_kernel(float *dk, float *dv, const float *lse, const float *dsum,
                         const float *dout, const float *q, const float *k, const float *v,
                         const uint8_t *q_roles, const int32_t *q_seg, const uint8_t *k_roles,
                         const int32_t *k_seg, attention_shape s, float qmul, int vec) {
    MG_DYNAMIC_SHARED(float, smem);
    float *Ks = smem;                                          /* [ROWS, LD] */
    float *Vs = Ks + T::ROWS * T::LD;                          /* [ROWS, LD] */
    float *Qs = Vs + T::ROWS * T::LD;                          /* [COLS, LD], scaled by qmul */
    float *dOs = Qs + T::COLS * T::LD;                         /* [COLS, LD] */
    float *Ps = dOs + T::COLS * T::LD;                         /* [ROWS, PLD] */
    float *dSs = Ps + T::ROWS * T::PLD;                        /* [ROWS, PLD] */
    float *scratch = dSs + T::ROWS * T::PLD;                   /* [SCRATCH] */
    float *qstat = scratch + T::SCRATCH;                       /* [2, COLS]: lse, D */
    int *kinfo = reinterpret_cast<int *>(qstat + 2 * T::COLS); /* [2, ROWS] */
    int *qinfo = kinfo + 2 * T::ROWS;                          /* [2, COLS] */
    int *red = qinfo + 2 * T::COLS;

    const int tid = threadIdx.x, ty = tid / kTX, tx = tid % kTX;
    const auto [j0, kh, b, q_row, kv_row, kv0, kr, ks, qr, qs] =
        key_block(T::ROWS, s, q_roles, q_seg, k_roles, k_seg);
    const int group = s.Hq / s.Hkv, hd = s.hd;

    int qlo, qhi;
    key_tile_queries<T::ROWS>(&qlo, &qhi, kinfo, red, qr, qs, kr, ks, j0, s);
    if (qlo > qhi) return;

    const int nk = s.Tk - j0 < T::ROWS ? s.Tk - j0 : T::ROWS;
    load_rows<T::ROWS, T::D>(Ks, k + (kv0 + j0) * kv_row + (long)kh * hd, kv_row, nk, hd, 1.0f,
                             vec);
    load_rows<T::ROWS, T::D>(Vs, v + (kv0 + j0) * kv_row + (long)kh * hd, kv_row, nk, hd, 1.0f,
                             vec);
    int kseg[T::RM], krole[T::RM];
    MG_UNROLL
    for (int r = 0; r < T::RM; r++) {
        kseg[r] = kinfo[ty + kTY * r];
        krole[r] = kinfo[T::ROWS + ty + kTY * r];
    }
    f4 adk[T::RM][T::DG], adv[T::RM][T::DG];
    zero_acc<T>(adk);
    zero_acc<T>(adv);
    for (int h = kh * group; h < (kh + 1) * group; h++) {
        for (int i0 = qlo; i0 <= qhi; i0 += T::COLS) {
            const int nq = s.Tq - i0 < T::COLS ? s.Tq - i0 : T::COLS;
            const long qoff = ((long)b * s.Tq + i0) * q_row + (long)h * hd;
            __syncthreads();
            load_rows<T::COLS, T::D>(Qs, q + qoff, q_row, nq, hd, qmul, vec);
            load_rows<T::COLS, T::D>(dOs, dout + qoff, q_row, nq, hd, 1.0f, vec);
            if (tid < T::COLS) {
                const int i = i0 + tid;
                const long si = ((long)b * s.Hq + h) * s.Tq + i;
                qinfo[tid] = tid < nq ? qs[i] : -1;
                qinfo[T::COLS + tid] = tid < nq ? (int)qr[i] : (int)MG_ROLE_CONTEXT;
                qstat[tid] = tid < nq ? lse[si] : -INFINITY;
                qstat[T::COLS + tid] = tid < nq ? dsum[si] : 0.0f;
            }
            __syncthreads();
            float sc[T::RM][T::CN], dp[T::RM][T::CN];
            tile_dot<T>(sc, Ks, Qs, scratch, ty, tx);
            tile_dot<T>(dp, Vs, dOs, scratch, ty, tx);
            MG_UNROLL
            for (int r = 0; r < T::RM; r++) {
                const int row = ty + kTY * r;
                MG_UNROLL
                for (int c = 0; c < T::CN; c++) {
                    const int col = tx + kTX * c;
                    const float ql = qstat[col];
                    float p = 0.0f, ds = 0.0f;
                    if (ql != -INFINITY &&
                        visible(qinfo[T::COLS + col], qinfo[col], s.q_start + i0 + col, krole[r],
                                kseg[r], j0 + row)) {
                        p = exp2f(sc[r][c] - ql);
                        ds = p * (dp[r][c] - qstat[T::COLS + col]);
                    }
                    Ps[row * T::PLD + col] = p;
                    dSs[row * T::PLD + col] = ds;
                }
            }
            __syncthreads();
            if (dv != NULL) tile_acc<T>(adv, Ps, dOs, scratch, ty, tx);
            if (dk != NULL) tile_acc<T>(adk, dSs, Qs, scratch, ty, tx);
        }
    }
    MG_UNROLL
    for (int r = 0; r < T::RM; r++) {
        const int row = ty + kTY * r;
        if (row >= nk) continue;
        const long off = (kv0 + j0 + row) * kv_row + (long)kh * hd;
        /* Qs holds q * log2(e) / sqrt(hd); dK wants q / sqrt(hd). */
        if (dk != NULL) store_row<T>(dk + off, adk[r], kLn2, hd, tx, true, vec);
        if (dv != NULL) store_row<T>(dv + off, adv[r], 1.0f, hd, tx, true, vec);
    }
}

/* Tile shapes per padded head size: forward (and its statistics mode), forward for a few
 * queries (decode steps: fewer wasted query rows), dQ (queries x keys), dK/dV (keys x queries).
 * Chosen to keep the per-thread accumulators near 64 floats and shared memory near or below
 * 100 KiB for the common head sizes 64 and 128 (plus the scratch of the tensor-core tiles). */
template <int D> struct Shapes;
template <> struct Shapes<32> {
    using Fwd = Tile<32, 64, 64, false>;
    using FwdFew = Tile<32, 16, 64, false>;
    using Dq = Tile<32, 64, 64, false>;
    template <bool TC> using Dkv = Tile<32, 64, 32, TC>;
};
template <> struct Shapes<64> {
    using Fwd = Tile<64, 64, 64, false>;
    using FwdFew = Tile<64, 16, 64, false>;
    using Dq = Tile<64, 64, 32, false>;
    template <bool TC> using Dkv = Tile<64, 32, 32, TC>;
};
template <> struct Shapes<128> {
    using Fwd = Tile<128, 64, 32, false>;
    using FwdFew = Tile<128, 16, 32, false>;
    using Dq = Tile<128, 32, 32, false>;
    template <bool TC> using Dkv = Tile<128, 32, 32, TC>;
};
template <> struct Shapes<256> {
    using Fwd = Tile<256, 32, 32, false>;
    using FwdFew = Tile<256, 16, 32, false>;
    using Dq = Tile<256, 32, 16, false>;
    template <bool TC> using Dkv = Tile<256, 16, 32, TC>;
};
template <> struct Shapes<512> {
    using Fwd = Tile<512, 16, 16, false>;
    using FwdFew = Tile<512, 16, 16, false>;
    using Dq = Tile<512, 16, 16, false>;
    template <bool TC> using Dkv = Tile<512, 16, 16, TC>;
};

template <class T>
void launch_forward(const mg_backend *be, const Args &a, float *out, float *lse, float *dsum,
                    const float *dout) {
    auto kernel = attention_forward_kernel<T>;
    const size_t smem = forward_smem<T>();
    if (!allow_smem(be, kernel, smem)) return;
    const dim3 grid((unsigned)((a.s.Tq + T::ROWS - 1) / T::ROWS), (unsigned)a.s.Hq,
                    (unsigned)a.s.B);
    MG_LAUNCH(kernel, grid, kThreads, smem, be, out, lse, dsum, dout, a.q, a.k, a.v, a.q_roles,
              a.q_seg, a.k_roles, a.k_seg, a.s, a.qmul, a.vec);
}

/* Whether the tensor-core path takes attention_packed.cu's kernels (operands packed to bfloat16
 * once per call, tiles copied asynchronously) instead of attention_mma.cu's:
 * MAGNET_CUDA_ATTENTION_PACKED=1. Off by default until a GPU run has timed it against
 * attention_mma.cu (benchmarks/gpu_profile.py --compare-attention-packed); checked in the
 * emulator by tests/cuda/check_attention.cu. */
bool use_packed() {
    const char *env = getenv("MAGNET_CUDA_ATTENTION_PACKED");
    return env != NULL && strcmp(env, "1") == 0;
}

/* The float32 kernels, or (mma: bf16 mode, see use_mma) attention_mma.cu's tensor-core ones
 * (or attention_packed.cu's, see use_packed).
 * Decode steps (a few queries) keep the float32 kernel with few rows: the tensor-core kernel's
 * 64-query tiles would be mostly empty. */
template <int D>
void forward_d(const mg_backend *be, const Args &a, float *out, float *lse, float *dsum,
               const float *dout, bool mma) {
    if (mma && out != NULL && a.s.Tq > Shapes<D>::FwdFew::ROWS && use_packed())
        packed_forward(be, a, D, out, lse);
    else if (mma && (out == NULL || a.s.Tq > Shapes<D>::FwdFew::ROWS))
        mma_forward(be, a, D, out, lse, dsum, dout);
    else if (a.s.Tq <= Shapes<D>::FwdFew::ROWS)
        launch_forward<typename Shapes<D>::FwdFew>(be, a, out, lse, dsum, dout);
    else
        launch_forward<typename Shapes<D>::Fwd>(be, a, out, lse, dsum, dout);
}

template <class T>
void launch_dkv(const mg_backend *be, const Args &a, float *dk, float *dv, const float *dout,
                const float *lse, const float *dsum) {
    auto kernel = attention_dkv_kernel<T>;
    const size_t smem = dkv_smem<T>();
    if (!allow_smem(be, kernel, smem)) return;
    const dim3 grid((unsigned)((a.s.Tk + T::ROWS - 1) / T::ROWS), (unsigned)a.s.Hkv,
                    (unsigned)a.s.B);
    MG_LAUNCH(kernel, grid, kThreads, smem, be, dk, dv, lse, dsum, dout, a.q, a.k, a.v, a.q_roles,
              a.q_seg, a.k_roles, a.k_seg, a.s, a.qmul, a.vec);
}

/* D_i = dO_i . O_i for every (row, head, query) from the forward's saved output, into
 * dsum[b, h, i] (the layout of lse). One warp per (row, query, head). */
__global__ void attention_row_dot_kernel(float *dsum, const float *dout, const float *out,
                                         attention_shape s) {
    const long pairs = (long)s.B * s.Tq * s.Hq, q_row = (long)s.Hq * s.hd;
    const int lane = threadIdx.x & 31;
    const long first = ((long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long warps = ((long)gridDim.x * blockDim.x) >> 5;
    for (long w = first; w < pairs; w += warps) { /* w = (b Tq + i) Hq + h: uniform per warp */
        const long row = w / s.Hq;
        const int h = (int)(w % s.Hq);
        const float *g = dout + row * q_row + (long)h * s.hd,
                    *o = out + row * q_row + (long)h * s.hd;
        float acc = 0.0f;
        for (int d = lane; d < s.hd; d += 32)
            acc = fmaf(g[d], o[d], acc);
        for (int offset = 16; offset > 0; offset >>= 1)
            acc += __shfl_xor_sync(0xffffffffu, acc, offset);
        if (lane == 0) {
            const long b = row / s.Tq, i = row % s.Tq;
            dsum[(b * s.Hq + h) * s.Tq + i] = acc;
        }
    }
}

/* The backward's per-query statistics: lse and dsum. From the forward's saved output and lse
 * (out, stats) when the forward ran the kernel that the statistics pass would run (bf16 decode
 * shapes forward on the float32 kernel, but the statistics come from the tensor-core one), else
 * by running the forward again in statistics mode. Returns the lse to use. */
template <int D>
const float *backward_stats(const mg_backend *be, const Args &a, const float *dout,
                            const float *out, const float *stats, float *lse, float *dsum,
                            bool mma) {
    if (out != NULL && stats != NULL && (!mma || a.s.Tq > Shapes<D>::FwdFew::ROWS)) {
        const long pairs = (long)a.s.B * a.s.Tq * a.s.Hq;
        MG_LAUNCH(attention_row_dot_kernel, mg_cuda_blocks(pairs * 32, 256), 256, 0, be, dsum, dout,
                  out, a.s);
        return stats;
    }
    forward_d<D>(be, a, NULL, lse, dsum, dout, mma);
    return lse;
}

/* mma: every kernel is attention_mma.cu's (bf16 mode, head sizes it handles). Else tc: the
 * dK/dV products on the tensor cores through wmma, where their scratch fits this GPU's shared
 * memory (else the float32 kernel, which needs less). */
template <int D>
void backward_d(const mg_backend *be, const Args &a, float *dq, float *dk, float *dv,
                const float *dout, const float *out, const float *stats, float *scratch_lse,
                float *dsum, bool mma, bool tc) {
    const float *lse = backward_stats<D>(be, a, dout, out, stats, scratch_lse, dsum, mma);
    if (mma && use_packed()) {
        packed_backward(be, a, D, dq, dk, dv, lse, dsum, dout);
        return;
    }
    if (mma) {
        if (dq != NULL) mma_dq(be, a, D, dq, lse, dsum, dout);
        if (dk != NULL || dv != NULL) mma_dkv(be, a, D, dk, dv, lse, dsum, dout);
        return;
    }
    if (dq != NULL) {
        using T = typename Shapes<D>::Dq;
        auto kernel = attention_dq_kernel<T>;
        const size_t smem = dq_smem<T>();
        if (allow_smem(be, kernel, smem)) {
            const dim3 grid((unsigned)((a.s.Tq + T::ROWS - 1) / T::ROWS), (unsigned)a.s.Hq,
                            (unsigned)a.s.B);
            MG_LAUNCH(kernel, grid, kThreads, smem, be, dq, lse, dsum, dout, a.q, a.k, a.v,
                      a.q_roles, a.q_seg, a.k_roles, a.k_seg, a.s, a.qmul, a.scale, a.vec);
        }
    }
    if (dk == NULL && dv == NULL) return;
    if constexpr (D <= 256) {
        using Tc = typename Shapes<D>::template Dkv<true>;
        if (tc && dkv_smem<Tc>() <= (size_t)mg_cuda_ctx_of(be)->smem_optin) {
            launch_dkv<Tc>(be, a, dk, dv, dout, lse, dsum);
            return;
        }
    }
    launch_dkv<typename Shapes<D>::template Dkv<false>>(be, a, dk, dv, dout, lse, dsum);
}

/* The padded head size for hd, or 0 when hd is beyond what the kernels handle. */
int padded_hd(int hd) {
    for (int d = 32; d <= 512; d *= 2)
        if (hd <= d) return d;
    return 0;
}

/* Whether attention runs on the tensor cores: in bf16 mode only, where the GEMMs already round
 * to bfloat16 (fp32 mode keeps the float32 products that match the CPU). Padded head sizes 32,
 * 64 and 128 take attention_mma.cu's kernels (use_mma); 256 the wmma (TF32) dK/dV products of
 * this file (use_tensor_cores; backward_d also checks that their scratch fits the GPU's shared
 * memory). MAGNET_CUDA_ATTENTION_TC=0 turns both off (for comparisons). */
bool tensor_cores_allowed(const mg_backend *be) {
    if (be->precision != MG_PRECISION_BF16) return false;
    const char *env = getenv("MAGNET_CUDA_ATTENTION_TC");
    return env == NULL || strcmp(env, "0") != 0;
}
bool use_mma(const mg_backend *be, int padded) {
    return mma_head_size(padded) && tensor_cores_allowed(be);
}
bool use_tensor_cores(const mg_backend *be, int padded) {
    return padded <= 256 && !mma_head_size(padded) && tensor_cores_allowed(be);
}

bool aligned16(const void *p) {
    return p == NULL || ((uintptr_t)p & 15u) == 0;
}

Args make_args(const float *q, const float *k, const float *v, const uint8_t *q_roles,
               const int32_t *q_seg, const uint8_t *k_roles, const int32_t *k_seg,
               const attention_shape &s, bool vec) {
    Args a;
    a.q = q;
    a.k = k;
    a.v = v;
    a.q_roles = q_roles;
    a.q_seg = q_seg;
    a.k_roles = k_roles;
    a.k_seg = k_seg;
    a.s = s;
    a.scale = 1.0f / sqrtf((float)s.hd);
    a.qmul = a.scale * kLog2e;
    a.vec = vec && s.hd % 4 == 0 && aligned16(q) && aligned16(k) && aligned16(v);
    return a;
}

} // namespace

/* The backward keeps two floats per (row, head, query): the base-2 logsumexp and D = dO . O.
 * The forward needs none. */
size_t cuda_attention_scratch(const mg_backend *be, const attention_shape *s, bool backward) {
    (void)be;
    return backward ? 2 * (size_t)s->B * s->Hq * s->Tq : 0;
}

void cuda_attention_forward(const mg_backend *be, float *out, const float *q, const float *k,
                            const float *v, const uint8_t *q_roles, const int32_t *q_seg,
                            const uint8_t *k_roles, const int32_t *k_seg, attention_shape s,
                            float *stats, float *scratch) {
    (void)scratch;
    if (s.B <= 0 || s.Tq <= 0 || s.Hq <= 0 || s.hd <= 0) return;
    const Args a = make_args(q, k, v, q_roles, q_seg, k_roles, k_seg, s, aligned16(out));
    const bool mma = use_mma(be, padded_hd(s.hd));
    switch (padded_hd(s.hd)) {
    case 32:
        forward_d<32>(be, a, out, stats, NULL, NULL, mma);
        break;
    case 64:
        forward_d<64>(be, a, out, stats, NULL, NULL, mma);
        break;
    case 128:
        forward_d<128>(be, a, out, stats, NULL, NULL, mma);
        break;
    case 256:
        forward_d<256>(be, a, out, stats, NULL, NULL, mma);
        break;
    case 512:
        forward_d<512>(be, a, out, stats, NULL, NULL, mma);
        break;
    default:
        mg_cuda_note(be, cudaErrorInvalidValue, "attention: head size above 512");
    }
}

void cuda_attention_backward(const mg_backend *be, float *dq, float *dk, float *dv,
                             const float *dout, const float *q, const float *k, const float *v,
                             const uint8_t *q_roles, const int32_t *q_seg, const uint8_t *k_roles,
                             const int32_t *k_seg, attention_shape s, const float *out,
                             const float *stats, float *scratch) {
    if (s.B <= 0 || s.Tq <= 0 || s.Hq <= 0 || s.hd <= 0) return;
    if (dq == NULL && dk == NULL && dv == NULL) return;
    const bool vec = aligned16(dq) && aligned16(dk) && aligned16(dv) && aligned16(dout);
    const Args a = make_args(q, k, v, q_roles, q_seg, k_roles, k_seg, s, vec);
    float *lse = scratch, *dsum = scratch + (size_t)s.B * s.Hq * s.Tq;
    const bool mma = use_mma(be, padded_hd(s.hd)), tc = use_tensor_cores(be, padded_hd(s.hd));
    switch (padded_hd(s.hd)) {
    case 32:
        backward_d<32>(be, a, dq, dk, dv, dout, out, stats, lse, dsum, mma, tc);
        break;
    case 64:
        backward_d<64>(be, a, dq, dk, dv, dout, out, stats, lse, dsum, mma, tc);
        break;
    case 128:
        backward_d<128>(be, a, dq, dk, dv, dout, out, stats, lse, dsum, mma, tc);
        break;
    case 256:
        backward_d<256>(be, a, dq, dk, dv, dout, out, stats, lse, dsum, mma, tc);
        break;
    case 512:
        backward_d<512>(be, a, dq, dk, dv, dout, out, stats, lse, dsum, false, false);
        break;
    default:
        mg_cuda_note(be, cudaErrorInvalidValue, "attention: head size above 512");
    }
}
