/* The tensor-core building blocks of bf16 attention, shared by attention_mma.cu (operands staged
 * from float32 rows) and attention_packed.cu (operands copied from packed bfloat16 tiles): the
 * m16n8k16 fragments and tile products, the softmax's quad reductions, float32 staging, and the
 * per-warp tests that let a tile skip the per-pair rule. attention_mma.cu's file comment gives
 * the fragment layout and the precision. */
#ifndef MG_BACKEND_CUDA_ATTENTION_MMA_CUH
#define MG_BACKEND_CUDA_ATTENTION_MMA_CUH

#include <type_traits>

#include "attention_tiles.cuh"

#if defined(__CUDACC__) && !defined(MG_CUDA_EMULATE) && defined(__CUDA_ARCH__) &&                  \
    __CUDA_ARCH__ >= 800
#define MG_MMA_PTX 1
#endif

namespace mg_attention {
namespace {

/* ---------------- fragments ---------------- */

/* Two floats as a bfloat16 pair (lo in the low half), rounded to nearest even. */
__device__ inline uint32_t pack_bf16(float lo, float hi) {
#ifdef MG_MMA_PTX
    uint32_t r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    const uint32_t l = static_cast<__nv_bfloat16_raw>(__float2bfloat16(lo)).x;
    const uint32_t h = static_cast<__nv_bfloat16_raw>(__float2bfloat16(hi)).x;
    return l | (h << 16);
#endif
}

#ifndef MG_MMA_PTX
__device__ inline float bf16_lo(uint32_t w) {
    return __uint_as_float(w << 16);
}
__device__ inline float bf16_hi(uint32_t w) {
    return __uint_as_float(w & 0xffff0000u);
}
#endif

/* c += A B for one warp: A 16 x 16 (a: rows g, g + 8 at columns 2t.., 2t + 8..), B 16 x 8
 * (b0, b1: rows 2t.. and 2t + 8.. of column g), c 16 x 8 (rows g, g + 8, columns 2t, 2t + 1). */
__device__ inline void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef MG_MMA_PTX
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    /* Word p of a fragment row holds columns 2 (p % 4) + 8 (p / 4) + {0, 1}: lane 4 row + p % 4
     * has it, in its first (p < 4) or second register of that row. */
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    for (int p = 0; p < 8; p++) {
        const uint32_t a0 = __shfl_sync(kFull, p < 4 ? a[0] : a[2], 4 * g + p % 4);
        const uint32_t a1 = __shfl_sync(kFull, p < 4 ? a[1] : a[3], 4 * g + p % 4);
        const uint32_t x0 = __shfl_sync(kFull, p < 4 ? b0 : b1, 4 * (2 * t) + p % 4);
        const uint32_t x1 = __shfl_sync(kFull, p < 4 ? b0 : b1, 4 * (2 * t + 1) + p % 4);
        c[0] += bf16_lo(a0) * bf16_lo(x0) + bf16_hi(a0) * bf16_hi(x0);
        c[1] += bf16_lo(a0) * bf16_lo(x1) + bf16_hi(a0) * bf16_hi(x1);
        c[2] += bf16_lo(a1) * bf16_lo(x0) + bf16_hi(a1) * bf16_hi(x0);
        c[3] += bf16_lo(a1) * bf16_lo(x1) + bf16_hi(a1) * bf16_hi(x1);
    }
#endif
}

/* 32-bit word w of row r of a bfloat16 tile with a row stride of ld elements. */
__device__ inline uint32_t word(const uint16_t *tile, int ld, int r, int w) {
    return reinterpret_cast<const uint32_t *>(tile)[r * (ld / 2) + w];
}

/* The A operand of rows row0 .. row0 + 15, columns 16 kc .. 16 kc + 15 of a row-major tile. */
__device__ inline void load_a(uint32_t (&a)[4], const uint16_t *tile, int ld, int row0, int kc) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    a[0] = word(tile, ld, row0 + g, 8 * kc + t);
    a[1] = word(tile, ld, row0 + g + 8, 8 * kc + t);
    a[2] = word(tile, ld, row0 + g, 8 * kc + 4 + t);
    a[3] = word(tile, ld, row0 + g + 8, 8 * kc + 4 + t);
}

/* The accumulators of two adjacent 16 x 8 tiles (columns 16 kc ..) as one A operand. */
__device__ inline void acc_to_a(uint32_t (&a)[4], const float (&lo)[4], const float (&hi)[4]) {
    a[0] = pack_bf16(lo[0], lo[1]);
    a[1] = pack_bf16(lo[2], lo[3]);
    a[2] = pack_bf16(hi[0], hi[1]);
    a[3] = pack_bf16(hi[2], hi[3]);
}

/* acc[n] = X[row0 .. row0 + 15, :] Y[8 n .. 8 n + 7, :]^T over K columns, for row-major tiles X
 * and Y (stride ld): scores Q K^T, dO V^T, K Q^T, V dO^T. */
template <int K, int N>
__device__ inline void product_xyt(float (&acc)[N][4], const uint16_t *X, const uint16_t *Y, int ld,
                                   int row0) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    MG_UNROLL
    for (int n = 0; n < N; n++)
        acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    MG_UNROLL
    for (int kc = 0; kc < K / 16; kc++) {
        uint32_t a[4];
        load_a(a, X, ld, row0, kc);
        MG_UNROLL
        for (int n = 0; n < N; n++)
            mma(acc[n], a, word(Y, ld, 8 * n + g, 8 * kc + t),
                word(Y, ld, 8 * n + g, 8 * kc + 4 + t));
    }
}

/* acc[n] += W Y[:, 8 n .. 8 n + 7] for W the warp's 16 x K accumulators w (K / 8 tiles, rounded
 * to bfloat16 here) and Y given transposed (Yt: row d holds column d of Y, stride ldt): P V,
 * dS K, P^T dO, dS^T Q. */
template <int K, int N>
__device__ inline void product_wy(float (&acc)[N][4], const float (&w)[K / 8][4],
                                  const uint16_t *Yt, int ldt) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    MG_UNROLL
    for (int kc = 0; kc < K / 16; kc++) {
        uint32_t a[4];
        acc_to_a(a, w[2 * kc], w[2 * kc + 1]);
        MG_UNROLL
        for (int n = 0; n < N; n++)
            mma(acc[n], a, word(Yt, ldt, 8 * n + g, 8 * kc + t),
                word(Yt, ldt, 8 * n + g, 8 * kc + 4 + t));
    }
}

template <int N> __device__ inline void zero(float (&acc)[N][4]) {
    MG_UNROLL
    for (int n = 0; n < N; n++)
        acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
}

/* Sum / max over the 4 lanes that hold one accumulator row. */
__device__ inline float quad_sum(float x) {
    x += __shfl_xor_sync(kFull, x, 1);
    return x + __shfl_xor_sync(kFull, x, 2);
}
__device__ inline float quad_max(float x) {
    x = fmaxf(x, __shfl_xor_sync(kFull, x, 1));
    return fmaxf(x, __shfl_xor_sync(kFull, x, 2));
}

/* ---------------- float32 loads ---------------- */

/* Four floats of row r at column d (d % 4 == 0) of src (times mul), zeros past nvalid rows or
 * hd columns. vec: hd % 4 == 0 and 16-byte aligned rows. */
__device__ inline f4 fetch4(const float *src, long stride, int r, int d, int nvalid, int hd,
                            float mul, bool vec) {
    f4 x = {0.0f, 0.0f, 0.0f, 0.0f};
    if (r >= nvalid) return x;
    const float *p = src + (long)r * stride + d;
    if (vec) {
        if (d < hd) x = ld4(p);
    } else {
        x.x = d < hd ? p[0] : 0.0f;
        x.y = d + 1 < hd ? p[1] : 0.0f;
        x.z = d + 2 < hd ? p[2] : 0.0f;
        x.w = d + 3 < hd ? p[3] : 0.0f;
    }
    x.x *= mul;
    x.y *= mul;
    x.z *= mul;
    x.w *= mul;
    return x;
}

/* A [ROWS, D] tile of float32 rows in global memory, as one thread's share: fetch() loads all of
 * it into registers, then rows() and cols() store it as bfloat16, row-major and/or transposed,
 * from the one read (to shared memory in attention_mma.cu's dK/dV kernel; rows to global and
 * the transpose to shared memory in attention_packed.cu's pack kernel). The dK/dV kernel, which
 * needs Q and dO both ways, stages them so (21.4 ms per 1B training step on an H100, against 27.6
 * with stage_rows plus stage_cols, at the same occupancy). The forward and dQ kernels keep
 * stage_rows/stage_cols: a whole tile in registers took them from 128 and 166 registers to 177 and
 * 174, and fewer resident blocks made them slower (forward 22.7 ms against 17.3, dQ 16.1
 * against 14.4).
 *
 * A warp's 32 lanes take 8 row pairs x 4 float4 columns: the loads read 64 contiguous bytes of
 * each of 16 rows (whole 32-byte sectors), and the stores of both layouts conflict at most two
 * ways in the banks of the padded tiles. */
template <int ROWS, int D> struct Fetch {
    static constexpr int RP = ROWS / 2, D4 = D / 4, N = RP * D4 / kThreads;
    static_assert(RP % 8 == 0 && D4 % 4 == 0 && RP * D4 % kThreads == 0, "tile shape");
    f4 x[N], y[N]; /* rows r and r + 1 of item n */

    /* Row r (even) and column d of item n of this thread. */
    __device__ static void item(int n, int &r, int &d) {
        const int idx = (int)threadIdx.x + n * kThreads, lane = idx % 32, chunk = idx / 32;
        r = 2 * ((chunk % (RP / 8)) * 8 + lane / 4);
        d = 4 * ((chunk / (RP / 8)) * 4 + lane % 4);
    }
    /* src rows times mul, zeros past nvalid rows or hd columns (vec: see fetch4). */
    __device__ void fetch(const float *src, long stride, int nvalid, int hd, float mul, bool vec) {
        MG_UNROLL
        for (int n = 0; n < N; n++) {
            int r, d;
            item(n, r, d);
            x[n] = fetch4(src, stride, r, d, nvalid, hd, mul, vec);
            y[n] = fetch4(src, stride, r + 1, d, nvalid, hd, mul, vec);
        }
    }
    /* dst[r, d] (row stride ld elements). */
    __device__ void rows(uint16_t *dst, int ld) const {
        MG_UNROLL
        for (int n = 0; n < N; n++) {
            int r, d;
            item(n, r, d);
            uint32_t *w0 = reinterpret_cast<uint32_t *>(dst + r * ld + d);
            uint32_t *w1 = reinterpret_cast<uint32_t *>(dst + (r + 1) * ld + d);
            w0[0] = pack_bf16(x[n].x, x[n].y);
            w0[1] = pack_bf16(x[n].z, x[n].w);
            w1[0] = pack_bf16(y[n].x, y[n].y);
            w1[1] = pack_bf16(y[n].z, y[n].w);
        }
    }
    /* dst[d, r] (the transpose, row stride ldt elements): rows r and r + 1 share a word. */
    __device__ void cols(uint16_t *dst, int ldt) const {
        uint32_t *w = reinterpret_cast<uint32_t *>(dst);
        MG_UNROLL
        for (int n = 0; n < N; n++) {
            int r, d;
            item(n, r, d);
            w[(d + 0) * (ldt / 2) + r / 2] = pack_bf16(x[n].x, y[n].x);
            w[(d + 1) * (ldt / 2) + r / 2] = pack_bf16(x[n].y, y[n].y);
            w[(d + 2) * (ldt / 2) + r / 2] = pack_bf16(x[n].z, y[n].z);
            w[(d + 3) * (ldt / 2) + r / 2] = pack_bf16(x[n].w, y[n].w);
        }
    }
};

/* ---------------- masks ---------------- */

/* Warp-wide AND / min / max. */
__device__ inline bool warp_all(bool x) {
    int v = x ? 1 : 0;
    for (int off = 16; off > 0; off /= 2)
        v &= __shfl_xor_sync(kFull, v, off);
    return v != 0;
}
__device__ inline int warp_max(int x) {
    for (int off = 16; off > 0; off /= 2)
        x = imax(x, __shfl_xor_sync(kFull, x, off));
    return x;
}

/* Segment, role and position of a lane's two rows (g and g + 8 of the warp's 16). */
struct Rows {
    int seg[2], role[2], pos[2];
};

/* Whether every query of qr sees every key of kc: the tile needs no per-pair rule. qr: the
 * warp's 16 queries (a lane's two); kinfo: segments [0:N] and roles [N:2N] of the N keys at
 * positions k0 .. (a key past the end has segment -1). */
template <int N> __device__ inline bool queries_see_all(const Rows &qr, const int *kinfo, int k0) {
    const int lane = threadIdx.x % 32;
    int seg_max = INT_MIN + 1, neg_seg_min = INT_MIN + 1, last_span = -1;
    for (int j = lane; j < N; j += 32) {
        seg_max = imax(seg_max, kinfo[j]);
        neg_seg_min = imax(neg_seg_min, -kinfo[j]);
        if (kinfo[N + j] == MG_ROLE_SPAN) last_span = k0 + j;
    }
    seg_max = warp_max(seg_max);
    const int seg = -warp_max(neg_seg_min);
    last_span = warp_max(last_span);
    bool ok = seg == seg_max && seg >= 0;
    MG_UNROLL
    for (int r = 0; r < 2; r++)
        ok = ok && qr.seg[r] == seg &&
             (last_span < 0 || (qr.role[r] == MG_ROLE_SPAN && last_span <= qr.pos[r]));
    return warp_all(ok);
}

/* The same for dK/dV: every key of kr (the warp's 16; a lane's two) is seen by every query of
 * the tile (qinfo: segments [0:N], roles [N:2N] of the N queries at positions p0 ..). */
template <int N> __device__ inline bool keys_seen_by_all(const Rows &kr, const int *qinfo, int p0) {
    const int lane = threadIdx.x % 32;
    int seg_max = INT_MIN + 1, neg_seg_min = INT_MIN + 1, any_context = 0;
    for (int i = lane; i < N; i += 32) {
        seg_max = imax(seg_max, qinfo[i]);
        neg_seg_min = imax(neg_seg_min, -qinfo[i]);
        if (qinfo[N + i] == MG_ROLE_CONTEXT) any_context = 1;
    }
    seg_max = warp_max(seg_max);
    const int seg = -warp_max(neg_seg_min);
    any_context = warp_max(any_context);
    bool ok = seg == seg_max && seg >= 0;
    /* a SPAN key is seen by all iff every query is a SPAN at or after it: p0 is the first */
    MG_UNROLL
    for (int r = 0; r < 2; r++)
        ok = ok && kr.seg[r] == seg &&
             (kr.role[r] == MG_ROLE_CONTEXT || (!any_context && kr.pos[r] <= p0));
    return warp_all(ok);
}

/* ---------------- per-tile steps ---------------- */

/* One key tile of the forward's online softmax for the warp's 16 queries (a lane's two rows):
 * masks the scores sc by the rule (unless `all`: every pair of the tile is visible), rescales
 * the running maximum m, sum l and output o, and leaves the probabilities in sc for the P V
 * product. kinfo: the segments [0:BC] and roles [BC:2 BC] of the tile's keys k0 ... */
template <int BC, int D>
__device__ inline void softmax_step(float (&sc)[BC / 8][4], float (&o)[D / 8][4], float (&m)[2],
                                    float (&l)[2], const Rows &rows, const int *kinfo, int k0,
                                    bool all) {
    const int t = threadIdx.x % 4;
    float mt[2] = {-INFINITY, -INFINITY};
    MG_UNROLL
    for (int n = 0; n < BC / 8; n++)
        MG_UNROLL
    for (int e = 0; e < 4; e++) {
        const int j = 8 * n + 2 * t + (e & 1), r = e / 2;
        if (!all &&
            !visible(rows.role[r], rows.seg[r], rows.pos[r], kinfo[BC + j], kinfo[j], k0 + j))
            sc[n][e] = -INFINITY;
        mt[r] = fmaxf(mt[r], sc[n][e]);
    }
    float alpha[2], ls[2] = {0.0f, 0.0f};
    for (int r = 0; r < 2; r++) {
        const float mn = fmaxf(m[r], quad_max(mt[r]));
        /* The first visible key of a row finds l = 0 and o = 0: any finite factor will do. */
        alpha[r] = m[r] == -INFINITY ? 0.0f : exp2f(m[r] - mn);
        m[r] = mn;
    }
    MG_UNROLL
    for (int n = 0; n < BC / 8; n++)
        MG_UNROLL
    for (int e = 0; e < 4; e++) {
        const int r = e / 2;
        const float p = sc[n][e] == -INFINITY ? 0.0f : exp2f(sc[n][e] - m[r]);
        sc[n][e] = p;
        ls[r] += p;
    }
    MG_UNROLL
    for (int r = 0; r < 2; r++)
        l[r] = l[r] * alpha[r] + ls[r];
    MG_UNROLL
    for (int n = 0; n < D / 8; n++) {
        o[n][0] *= alpha[0];
        o[n][1] *= alpha[0];
        o[n][2] *= alpha[1];
        o[n][3] *= alpha[1];
    }
}

/* The forward's result for the lane's two query rows i = i_first and i_first + 8 of batch row b
 * and head h: out = o / l (rows below Tq), and with lse, the base-2 logsumexp saved for the
 * backward. Every lane of the warp takes part (the row sums are shuffles). */
template <int D>
__device__ inline void write_output(float *out, float *lse, const float (&o)[D / 8][4],
                                    const float (&m)[2], const float (&l)[2],
                                    const attention_shape &s, int b, int h, int i_first) {
    const int t = threadIdx.x % 4;
    MG_UNROLL
    for (int r = 0; r < 2; r++) {
        const int i = i_first + 8 * r;
        const float lr = quad_sum(l[r]);
        if (i >= s.Tq) continue;
        const float inv = lr > 0.0f ? 1.0f / lr : 0.0f;
        float *dst = out + ((long)b * s.Tq + i) * s.Hq * s.hd + (long)h * s.hd;
        MG_UNROLL
        for (int n = 0; n < D / 8; n++) {
            const int d = 8 * n + 2 * t;
            if (d < s.hd) dst[d] = o[n][2 * r] * inv;
            if (d + 1 < s.hd) dst[d + 1] = o[n][2 * r + 1] * inv;
        }
        if (lse != NULL && t == 0)
            lse[((long)b * s.Hq + h) * s.Tq + i] = lr > 0.0f ? m[r] + log2f(lr) : -INFINITY;
    }
}

/* dS = P (dP - D) for one key tile of the dQ pass, into sc (the scores Q K^T, base 2), from dp
 * (dO V^T) and the lane's rows' logsumexp rlse and D rd; zero where the rule hides a pair. */
template <int BC>
__device__ inline void dq_ds_step(float (&sc)[BC / 8][4], const float (&dp)[BC / 8][4],
                                  const Rows &rows, const float (&rlse)[2], const float (&rd)[2],
                                  const int *kinfo, int k0, bool all) {
    const int t = threadIdx.x % 4;
    MG_UNROLL
    for (int n = 0; n < BC / 8; n++)
        MG_UNROLL
    for (int e = 0; e < 4; e++) {
        const int j = 8 * n + 2 * t + (e & 1), r = e / 2;
        float ds = 0.0f;
        if (rlse[r] != -INFINITY && (all || visible(rows.role[r], rows.seg[r], rows.pos[r],
                                                    kinfo[BC + j], kinfo[j], k0 + j)))
            ds = exp2f(sc[n][e] - rlse[r]) * (dp[n][e] - rd[r]);
        sc[n][e] = ds;
    }
}

/* dq[i] += scale acc for the lane's two query rows i = i_first, i_first + 8 below Tq. */
template <int D>
__device__ inline void add_dq(float *dq, const float (&acc)[D / 8][4], float scale,
                              const attention_shape &s, int b, int h, int i_first) {
    const int t = threadIdx.x % 4;
    MG_UNROLL
    for (int r = 0; r < 2; r++) {
        const int i = i_first + 8 * r;
        if (i >= s.Tq) continue;
        float *dst = dq + ((long)b * s.Tq + i) * s.Hq * s.hd + (long)h * s.hd;
        MG_UNROLL
        for (int n = 0; n < D / 8; n++) {
            const int d = 8 * n + 2 * t;
            if (d < s.hd) dst[d] += acc[n][2 * r] * scale;
            if (d + 1 < s.hd) dst[d + 1] += acc[n][2 * r + 1] * scale;
        }
    }
}

/* P and dS = P (dP - D) for one query tile of the dK/dV pass, in place of sc (K Q^T, base 2)
 * and dp (V dO^T). qinfo: the queries' segments [0:BC] and roles [BC:2 BC]; qstat: their
 * logsumexp [0:BC] and D [BC:2 BC]; p0: the position of the tile's first query. */
template <int BC>
__device__ inline void dkv_p_ds_step(float (&sc)[BC / 8][4], float (&dp)[BC / 8][4],
                                     const Rows &keys, const int *qinfo, const float *qstat, int p0,
                                     bool all) {
    const int t = threadIdx.x % 4;
    MG_UNROLL
    for (int n = 0; n < BC / 8; n++)
        MG_UNROLL
    for (int e = 0; e < 4; e++) {
        const int col = 8 * n + 2 * t + (e & 1), r = e / 2;
        const float ql = qstat[col];
        float p = 0.0f, ds = 0.0f;
        if (ql != -INFINITY && (all || visible(qinfo[BC + col], qinfo[col], p0 + col, keys.role[r],
                                               keys.seg[r], keys.pos[r]))) {
            p = exp2f(sc[n][e] - ql);
            ds = p * (dp[n][e] - qstat[BC + col]);
        }
        sc[n][e] = p;
        dp[n][e] = ds;
    }
}

/* dk += ln 2 adk (Q was staged times log2(e) / sqrt(hd); dK wants q / sqrt(hd)) and dv += adv
 * for the lane's two key rows j0 + row, row = row_first and row_first + 8, below nk; off0: the
 * offset of key j0 of kv head kh in dk and dv. Either may be NULL. */
template <int D>
__device__ inline void add_dkv(float *dk, float *dv, const float (&adk)[D / 8][4],
                               const float (&adv)[D / 8][4], long off0, long kv_row, int hd,
                               int row_first, int nk) {
    const int t = threadIdx.x % 4;
    MG_UNROLL
    for (int r = 0; r < 2; r++) {
        const int row = row_first + 8 * r;
        if (row >= nk) continue;
        const long off = off0 + row * kv_row;
        MG_UNROLL
        for (int n = 0; n < D / 8; n++) {
            const int d = 8 * n + 2 * t;
            if (dk != NULL && d < hd) dk[off + d] += adk[n][2 * r] * kLn2;
            if (dk != NULL && d + 1 < hd) dk[off + d + 1] += adk[n][2 * r + 1] * kLn2;
            if (dv != NULL && d < hd) dv[off + d] += adv[n][2 * r];
            if (dv != NULL && d + 1 < hd) dv[off + d + 1] += adv[n][2 * r + 1];
        }
    }
}

} // namespace
} // namespace mg_attention

#endif
