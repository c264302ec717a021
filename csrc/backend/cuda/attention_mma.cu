/* MAGNET attention on the tensor cores, for bf16 mode: the same forward, statistics, dQ and dK/dV
 * kernels as attention.cu (whose file comment gives the algorithm and the rule), with every tile
 * product on the tensor cores as mma.sync.m16n8k16 (bfloat16 inputs, float32 accumulation) and
 * the softmax done in registers, flash-attention-2 style.
 *
 * Why registers: the accumulator layout of m16n8k16 is fixed by PTX, so a warp knows which
 * elements of a score tile each lane holds, masks and exponentiates them in place, and hands the
 * probabilities to the next product without a trip through shared memory (two adjacent 16 x 8
 * accumulator tiles are exactly one 16 x 16 A operand). attention.cu's wmma version, whose
 * fragment layout is opaque, had to go through a shared scratch and measured no faster than the
 * CUDA cores for the forward.
 *
 * Layout. A block is 4 warps; each warp owns 16 rows of the block's tile (queries in the forward
 * and dQ, keys in dK/dV), and a lane holds rows g and g + 8 (g = lane / 4) of each 16 x 8
 * accumulator tile, at columns 2 t and 2 t + 1 (t = lane % 4). Operands are staged in shared
 * memory as bfloat16, rows padded by 8 elements (16 bytes) so that the 32-bit fragment loads of
 * a warp hit 32 different banks. A product X Y^T reads X and Y row-major; X Y reads Y transposed,
 * which the staging writes (two rows packed per 32-bit word).
 *
 * Masks. Per tile and warp, one test decides whether all of the warp's 16 rows see all of the
 * tile's columns (same segment, and no SPAN key after a row's position); the common tiles (below
 * the diagonal of a causal row, inside a bidirectional segment) then skip the per-pair rule.
 *
 * Precision. Q (times log2(e) / sqrt(hd)), K, V, dO, P and dS are rounded to bfloat16 once,
 * products and the softmax statistics stay float32. The errors against the CPU are bounded in
 * tests/cuda/check_attention.cu. fp32 mode never comes here.
 *
 * Without sm_80 (and in the CPU emulator) the lanes compute mma with shuffles, to the same
 * fragment layout, and round to bfloat16 with __float2bfloat16: slower, the same results up to
 * summation order. */
#include "attention_mma.cuh"

namespace mg_attention {
namespace {

/* ---------------- staging ---------------- */

/* float4 loads a thread keeps in flight while staging: it issues kInFlight loads, then converts
 * and stores them, so it waits for global memory once per kInFlight float4 rather than once per
 * float4 (a loop that loads, converts and stores in turn left the tensor cores idle most of the
 * time); more would spill registers in the kernels with head size 128. */
constexpr int kInFlight = 4;

/* dst[r, 0:D] (stride ld) = bf16(mul * src[r * stride + 0:hd]), zero-padded to ROWS x D. */
template <int ROWS, int D>
__device__ inline void stage_rows(uint16_t *dst, int ld, const float *src, long stride, int nvalid,
                                  int hd, float mul, bool vec) {
    constexpr int D4 = D / 4, N = ROWS * D4 / kThreads, CH = N < kInFlight ? N : kInFlight;
    static_assert(ROWS * D4 % kThreads == 0 && N % CH == 0, "whole float4 per thread");
    for (int n0 = 0; n0 < N; n0 += CH) {
        f4 x[CH];
        MG_UNROLL
        for (int n = 0; n < CH; n++) {
            const int idx = (int)threadIdx.x + (n0 + n) * kThreads;
            x[n] = fetch4(src, stride, idx / D4, (idx % D4) * 4, nvalid, hd, mul, vec);
        }
        MG_UNROLL
        for (int n = 0; n < CH; n++) {
            const int idx = (int)threadIdx.x + (n0 + n) * kThreads;
            uint32_t *w = reinterpret_cast<uint32_t *>(dst + (idx / D4) * ld + (idx % D4) * 4);
            w[0] = pack_bf16(x[n].x, x[n].y);
            w[1] = pack_bf16(x[n].z, x[n].w);
        }
    }
}

/* The transpose: dst[d, r] (stride ldt) = bf16(mul * src[r * stride + d]), rows in pairs so that
 * each store is one 32-bit word and consecutive threads write consecutive words (loads first, as
 * in stage_rows). */
template <int ROWS, int D>
__device__ inline void stage_cols(uint16_t *dst, int ldt, const float *src, long stride, int nvalid,
                                  int hd, float mul, bool vec) {
    constexpr int RP = ROWS / 2, N = RP * (D / 4) / kThreads;
    constexpr int CH = N < kInFlight / 2 ? N : kInFlight / 2;
    static_assert(RP * (D / 4) % kThreads == 0 && N % CH == 0, "whole row pairs per thread");
    uint32_t *w = reinterpret_cast<uint32_t *>(dst);
    for (int n0 = 0; n0 < N; n0 += CH) {
        f4 x[CH], y[CH];
        MG_UNROLL
        for (int n = 0; n < CH; n++) {
            const int idx = (int)threadIdx.x + (n0 + n) * kThreads;
            const int r = 2 * (idx % RP), d = (idx / RP) * 4;
            x[n] = fetch4(src, stride, r, d, nvalid, hd, mul, vec);
            y[n] = fetch4(src, stride, r + 1, d, nvalid, hd, mul, vec);
        }
        MG_UNROLL
        for (int n = 0; n < CH; n++) {
            const int idx = (int)threadIdx.x + (n0 + n) * kThreads;
            const int r = 2 * (idx % RP), d = (idx / RP) * 4;
            w[(d + 0) * (ldt / 2) + r / 2] = pack_bf16(x[n].x, y[n].x);
            w[(d + 1) * (ldt / 2) + r / 2] = pack_bf16(x[n].y, y[n].y);
            w[(d + 2) * (ldt / 2) + r / 2] = pack_bf16(x[n].z, y[n].z);
            w[(d + 3) * (ldt / 2) + r / 2] = pack_bf16(x[n].w, y[n].w);
        }
    }
}

/* ---------------- kernels ---------------- */

constexpr int kRows = 64; /* rows of a block's own tile: 4 warps x 16 */

template <int D, int BC> struct FwdShape {
    static constexpr int LD = D + 8, LDT = BC + 8;
    static constexpr size_t smem =
        sizeof(uint16_t) * ((size_t)kRows * LD + (size_t)BC * LD + (size_t)D * LDT) +
        sizeof(int) * (2 * BC + 2 * kRows + 4 * kWarps);
};

/* Forward: grid (query tiles, Hq, B); out != NULL writes the output (and lse when given), else
 * (statistics mode) lse and dsum as attention.cu's forward does. qmul = log2(e) / sqrt(hd). */
template <int D, int BC>
__global__ void MG_BOUNDS(kThreads)
    mma_forward_kernel(float *out, float *lse, float *dsum, const float *dout, const float *q,
                       const float *k, const float *v, const uint8_t *q_roles, const int32_t *q_seg,
                       const uint8_t *k_roles, const int32_t *k_seg, attention_shape s, float qmul,
                       int vec) {
    using G = FwdShape<D, BC>;
    MG_DYNAMIC_SHARED(uint16_t, smem);
    uint16_t *Qs = smem;                                   /* [kRows, LD], times qmul */
    uint16_t *Ks = Qs + kRows * G::LD;                     /* [BC, LD] */
    uint16_t *Vt = Ks + BC * G::LD;                        /* [D, LDT]: V transposed */
    int *kinfo = reinterpret_cast<int *>(Vt + D * G::LDT); /* [2, BC] */
    int *qinfo = kinfo + 2 * BC;                           /* [2, kRows] */
    int *red = qinfo + 2 * kRows;

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const auto [i0, h, b, q_row, kv_row, kb, vb, kr, ks] =
        query_block(kRows, s, k, v, k_roles, k_seg);
    const int hd = s.hd;

    int lo, hi;
    query_tile_keys<kRows>(&lo, &hi, qinfo, red, q_roles, q_seg, kr, ks, b, i0, s);
    const int row0 = warp * 16;
    Rows rows;
    for (int r = 0; r < 2; r++) {
        rows.seg[r] = qinfo[row0 + g + 8 * r];
        rows.role[r] = qinfo[kRows + row0 + g + 8 * r];
        rows.pos[r] = s.q_start + i0 + row0 + g + 8 * r;
    }
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float o[D / 8][4];
    zero(o);
    if (lo <= hi) {
        const int nq = s.Tq - i0 < kRows ? s.Tq - i0 : kRows;
        stage_rows<kRows, D>(Qs, G::LD, q + ((long)b * s.Tq + i0) * q_row + (long)h * hd, q_row, nq,
                             hd, qmul, vec);
    }
    for (int k0 = lo; k0 <= hi; k0 += BC) {
        const int nk = s.Tk - k0 < BC ? s.Tk - k0 : BC;
        __syncthreads(); /* the previous tile is consumed */
        stage_rows<BC, D>(Ks, G::LD, kb + (long)k0 * kv_row, kv_row, nk, hd, 1.0f, vec);
        stage_cols<BC, D>(Vt, G::LDT, vb + (long)k0 * kv_row, kv_row, nk, hd, 1.0f, vec);
        load_key_info<BC>(kinfo, kr, ks, k0, s.Tk);
        __syncthreads();
        const bool all = queries_see_all<BC>(rows, kinfo, k0);
        float sc[BC / 8][4];
        product_xyt<D, BC / 8>(sc, Qs, Ks, G::LD, row0);
        softmax_step<BC, D>(sc, o, m, l, rows, kinfo, k0, all);
        product_wy<BC, D / 8>(o, sc, Vt, G::LDT);
    }

    /* inline, not write_output: the shared helper cost this kernel 3 registers (131, past the
     * 128 that four resident blocks allow) */
    MG_UNROLL
    for (int r = 0; r < 2; r++) {
        const int i = i0 + row0 + g + 8 * r;
        const float lr = quad_sum(l[r]);
        const float inv = lr > 0.0f ? 1.0f / lr : 0.0f;
        const long off = ((long)b * s.Tq + i) * q_row + (long)h * hd;
        if (out != NULL) {
            if (i >= s.Tq) continue;
            MG_UNROLL
            for (int n = 0; n < D / 8; n++) {
                const int d = 8 * n + 2 * t;
                if (d < hd) out[off + d] = o[n][2 * r] * inv;
                if (d + 1 < hd) out[off + d + 1] = o[n][2 * r + 1] * inv;
            }
            if (lse != NULL && t == 0) /* saved for the backward */
                lse[((long)b * s.Hq + h) * s.Tq + i] = lr > 0.0f ? m[r] + log2f(lr) : -INFINITY;
        } else {
            float dd = 0.0f;
            if (i < s.Tq && lr > 0.0f) {
                MG_UNROLL
                for (int n = 0; n < D / 8; n++) {
                    const int d = 8 * n + 2 * t;
                    if (d < hd) dd = fmaf(dout[off + d], o[n][2 * r] * inv, dd);
                    if (d + 1 < hd) dd = fmaf(dout[off + d + 1], o[n][2 * r + 1] * inv, dd);
                }
            }
            dd = quad_sum(dd);
            if (t == 0 && i < s.Tq) {
                const long si = ((long)b * s.Hq + h) * s.Tq + i;
                lse[si] = lr > 0.0f ? m[r] + log2f(lr) : -INFINITY;
                dsum[si] = dd;
            }
        }
    }
}

template <int D, int BC> struct DqShape {
    static constexpr int LD = D + 8, LDT = BC + 8;
    static constexpr size_t smem =
        sizeof(uint16_t) * (2 * (size_t)kRows * LD + 2 * (size_t)BC * LD + (size_t)D * LDT) +
        sizeof(int) * (2 * BC + 2 * kRows + 4 * kWarps);
};

/* dQ: grid (query tiles, Hq, B); dq += scale sum_j dS_ij K_j. */
template <int D, int BC>
__global__ void MG_BOUNDS(kThreads)
    mma_dq_kernel(float *dq, const float *lse, const float *dsum, const float *dout, const float *q,
                  const float *k, const float *v, const uint8_t *q_roles, const int32_t *q_seg,
                  const uint8_t *k_roles, const int32_t *k_seg, attention_shape s, float qmul,
                  float scale, int vec) {
    using G = DqShape<D, BC>;
    MG_DYNAMIC_SHARED(uint16_t, smem);
    uint16_t *Qs = smem;                                   /* [kRows, LD], times qmul */
    uint16_t *dOs = Qs + kRows * G::LD;                    /* [kRows, LD] */
    uint16_t *Ks = dOs + kRows * G::LD;                    /* [BC, LD] */
    uint16_t *Vs = Ks + BC * G::LD;                        /* [BC, LD] */
    uint16_t *Kt = Vs + BC * G::LD;                        /* [D, LDT]: K transposed */
    int *kinfo = reinterpret_cast<int *>(Kt + D * G::LDT); /* [2, BC] */
    int *qinfo = kinfo + 2 * BC;                           /* [2, kRows] */
    int *red = qinfo + 2 * kRows;

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4, t = lane % 4;
    const auto [i0, h, b, q_row, kv_row, kb, vb, kr, ks] =
        query_block(kRows, s, k, v, k_roles, k_seg);
    const int hd = s.hd;

    int lo, hi;
    query_tile_keys<kRows>(&lo, &hi, qinfo, red, q_roles, q_seg, kr, ks, b, i0, s);
    if (lo > hi) return; /* no query of the tile sees a key: no gradient */
    const int nq = s.Tq - i0 < kRows ? s.Tq - i0 : kRows;
    const long qoff = ((long)b * s.Tq + i0) * q_row + (long)h * hd;
    stage_rows<kRows, D>(Qs, G::LD, q + qoff, q_row, nq, hd, qmul, vec);
    stage_rows<kRows, D>(dOs, G::LD, dout + qoff, q_row, nq, hd, 1.0f, vec);
    const int row0 = warp * 16;
    Rows rows;
    float rlse[2], rd[2];
    for (int r = 0; r < 2; r++) {
        const int row = row0 + g + 8 * r, i = i0 + row;
        rows.seg[r] = qinfo[row];
        rows.role[r] = qinfo[kRows + row];
        rows.pos[r] = s.q_start + i;
        const long si = ((long)b * s.Hq + h) * s.Tq + i;
        rlse[r] = i < s.Tq ? lse[si] : -INFINITY;
        rd[r] = i < s.Tq ? dsum[si] : 0.0f;
    }
    float acc[D / 8][4];
    zero(acc);
    for (int k0 = lo; k0 <= hi; k0 += BC) {
        const int nk = s.Tk - k0 < BC ? s.Tk - k0 : BC;
        __syncthreads();
        stage_rows<BC, D>(Ks, G::LD, kb + (long)k0 * kv_row, kv_row, nk, hd, 1.0f, vec);
        stage_rows<BC, D>(Vs, G::LD, vb + (long)k0 * kv_row, kv_row, nk, hd, 1.0f, vec);
        stage_cols<BC, D>(Kt, G::LDT, kb + (long)k0 * kv_row, kv_row, nk, hd, 1.0f, vec);
        load_key_info<BC>(kinfo, kr, ks, k0, s.Tk);
        __syncthreads();
        const bool all = queries_see_all<BC>(rows, kinfo, k0);
        float sc[BC / 8][4], dp[BC / 8][4];
        product_xyt<D, BC / 8>(sc, Qs, Ks, G::LD, row0);
        product_xyt<D, BC / 8>(dp, dOs, Vs, G::LD, row0);
        dq_ds_step<BC>(sc, dp, rows, rlse, rd, kinfo, k0, all);
        product_wy<BC, D / 8>(acc, sc, Kt, G::LDT);
    }
    /* add_dq's work, kept inline with the kernel as it was timed on the GPU */
    MG_UNROLL
    for (int r = 0; r < 2; r++) {
        const int i = i0 + row0 + g + 8 * r;
        if (i >= s.Tq) continue;
        float *dst = dq + ((long)b * s.Tq + i) * q_row + (long)h * hd;
        MG_UNROLL
        for (int n = 0; n < D / 8; n++) {
            const int d = 8 * n + 2 * t;
            if (d < hd) dst[d] += acc[n][2 * r] * scale;
            if (d + 1 < hd) dst[d + 1] += acc[n][2 * r + 1] * scale;
        }
    }
}

template <int D, int BC> struct DkvShape {
    static constexpr int LD = D + 8, LDT = BC + 8;
    static constexpr size_t smem =
        sizeof(uint16_t) * (2 * (size_t)kRows * LD + 2 * (size_t)BC * LD + 2 * (size_t)D * LDT) +
        sizeof(float) * 2 * BC + sizeof(int) * (2 * kRows + 2 * BC + 4 * kWarps);
};

/* dK and dV: grid (key tiles, Hkv, B); the block walks the query tiles of every query head of
 * its GQA group: dv += sum_i P_ij dO_i, dk += scale sum_i dS_ij Q_i. */
template <int D, int BC>
__global__ void MG_BOUNDS(kThreads)
    mma_dkv_kernel(float *dk, float *dv, const float *lse, const float *dsum, const float *dout,
                   const float *q, const float *k, const float *v, const uint8_t *q_roles,
                   const int32_t *q_seg, const uint8_t *k_roles, const int32_t *k_seg,
                   attention_shape s, float qmul, int vec) {
    using G = DkvShape<D, BC>;
    MG_DYNAMIC_SHARED(uint16_t, smem);
    uint16_t *Ks = smem;                                        /* [kRows, LD] */
    uint16_t *Vs = Ks + kRows * G::LD;                          /* [kRows, LD] */
    uint16_t *Qs = Vs + kRows * G::LD;                          /* [BC, LD], times qmul */
    uint16_t *dOs = Qs + BC * G::LD;                            /* [BC, LD] */
    uint16_t *Qt = dOs + BC * G::LD;                            /* [D, LDT] */
    uint16_t *dOt = Qt + D * G::LDT;                            /* [D, LDT] */
    float *qstat = reinterpret_cast<float *>(dOt + D * G::LDT); /* [2, BC]: lse, D */
    int *kinfo = reinterpret_cast<int *>(qstat + 2 * BC);       /* [2, kRows] */
    int *qinfo = kinfo + 2 * kRows;                             /* [2, BC] */
    int *red = qinfo + 2 * BC;

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4, t = lane % 4;
    const auto [j0, kh, b, q_row, kv_row, kv0, kr, ks, qr, qs] =
        key_block(kRows, s, q_roles, q_seg, k_roles, k_seg);
    const int group = s.Hq / s.Hkv, hd = s.hd;

    int qlo, qhi;
    key_tile_queries<kRows>(&qlo, &qhi, kinfo, red, qr, qs, kr, ks, j0, s);
    if (qlo > qhi) return;
    const int nk = s.Tk - j0 < kRows ? s.Tk - j0 : kRows;
    {
        Fetch<kRows, D> f;
        f.fetch(k + (kv0 + j0) * kv_row + (long)kh * hd, kv_row, nk, hd, 1.0f, vec);
        f.rows(Ks, G::LD);
        f.fetch(v + (kv0 + j0) * kv_row + (long)kh * hd, kv_row, nk, hd, 1.0f, vec);
        f.rows(Vs, G::LD);
    }
    const int row0 = warp * 16;
    Rows keys;
    for (int r = 0; r < 2; r++) {
        keys.seg[r] = kinfo[row0 + g + 8 * r];
        keys.role[r] = kinfo[kRows + row0 + g + 8 * r];
        keys.pos[r] = j0 + row0 + g + 8 * r;
    }
    float adk[D / 8][4], adv[D / 8][4];
    zero(adk);
    zero(adv);
    for (int h = kh * group; h < (kh + 1) * group; h++) {
        for (int i0 = qlo; i0 <= qhi; i0 += BC) {
            const int nq = s.Tq - i0 < BC ? s.Tq - i0 : BC;
            const long qoff = ((long)b * s.Tq + i0) * q_row + (long)h * hd;
            Fetch<BC, D> f;
            f.fetch(q + qoff, q_row, nq, hd, qmul, vec);
            __syncthreads();
            f.rows(Qs, G::LD);
            f.cols(Qt, G::LDT);
            f.fetch(dout + qoff, q_row, nq, hd, 1.0f, vec);
            f.rows(dOs, G::LD);
            f.cols(dOt, G::LDT);
            if (tid < BC) {
                const int i = i0 + tid;
                const long si = ((long)b * s.Hq + h) * s.Tq + i;
                qinfo[tid] = tid < nq ? qs[i] : -1;
                qinfo[BC + tid] = tid < nq ? (int)qr[i] : (int)MG_ROLE_CONTEXT;
                qstat[tid] = tid < nq ? lse[si] : -INFINITY;
                qstat[BC + tid] = tid < nq ? dsum[si] : 0.0f;
            }
            __syncthreads();
            const bool all = keys_seen_by_all<BC>(keys, qinfo, s.q_start + i0);
            float sc[BC / 8][4], dp[BC / 8][4];
            product_xyt<D, BC / 8>(sc, Ks, Qs, G::LD, row0);
            product_xyt<D, BC / 8>(dp, Vs, dOs, G::LD, row0);
            /* dkv_p_ds_step's work, inline: the shared helper changed this kernel's register
             * allocation (attention_packed.cu uses it) */
            MG_UNROLL
            for (int n = 0; n < BC / 8; n++)
                MG_UNROLL
            for (int e = 0; e < 4; e++) {
                const int col = 8 * n + 2 * t + (e & 1), r = e / 2;
                const float ql = qstat[col];
                float p = 0.0f, ds = 0.0f;
                if (ql != -INFINITY &&
                    (all || visible(qinfo[BC + col], qinfo[col], s.q_start + i0 + col, keys.role[r],
                                    keys.seg[r], keys.pos[r]))) {
                    p = exp2f(sc[n][e] - ql);
                    ds = p * (dp[n][e] - qstat[BC + col]);
                }
                sc[n][e] = p;
                dp[n][e] = ds;
            }
            if (dv != NULL) product_wy<BC, D / 8>(adv, sc, dOt, G::LDT);
            if (dk != NULL) product_wy<BC, D / 8>(adk, dp, Qt, G::LDT);
        }
    }
    /* add_dkv's work, kept inline with the kernel as it was timed on the GPU */
    MG_UNROLL
    for (int r = 0; r < 2; r++) {
        const int row = row0 + g + 8 * r;
        if (row >= nk) continue;
        const long off = (kv0 + j0 + row) * kv_row + (long)kh * hd;
        MG_UNROLL
        for (int n = 0; n < D / 8; n++) {
            const int d = 8 * n + 2 * t;
            /* Qs holds q * log2(e) / sqrt(hd); dK wants q / sqrt(hd). */
            if (dk != NULL && d < hd) dk[off + d] += adk[n][2 * r] * kLn2;
            if (dk != NULL && d + 1 < hd) dk[off + d + 1] += adk[n][2 * r + 1] * kLn2;
            if (dv != NULL && d < hd) dv[off + d] += adv[n][2 * r];
            if (dv != NULL && d + 1 < hd) dv[off + d + 1] += adv[n][2 * r + 1];
        }
    }
}

/* Key (or query) columns per tile: 64, or 32 at D = 128 where the dQ and dK/dV accumulators
 * take more registers. */
template <int D> constexpr int fwd_cols() {
    return 64;
}
template <int D> constexpr int bwd_cols() {
    return D >= 128 ? 32 : 64;
}

template <int D>
void forward_d(const mg_backend *be, const Args &a, float *out, float *lse, float *dsum,
               const float *dout) {
    constexpr int BC = fwd_cols<D>();
    auto kernel = mma_forward_kernel<D, BC>;
    const size_t smem = FwdShape<D, BC>::smem;
    if (!allow_smem(be, kernel, smem)) return;
    const dim3 grid((unsigned)((a.s.Tq + kRows - 1) / kRows), (unsigned)a.s.Hq, (unsigned)a.s.B);
    MG_LAUNCH(kernel, grid, kThreads, smem, be, out, lse, dsum, dout, a.q, a.k, a.v, a.q_roles,
              a.q_seg, a.k_roles, a.k_seg, a.s, a.qmul, a.vec);
}

template <int D>
void dq_d(const mg_backend *be, const Args &a, float *dq, const float *lse, const float *dsum,
          const float *dout) {
    constexpr int BC = bwd_cols<D>();
    auto kernel = mma_dq_kernel<D, BC>;
    const size_t smem = DqShape<D, BC>::smem;
    if (!allow_smem(be, kernel, smem)) return;
    const dim3 grid((unsigned)((a.s.Tq + kRows - 1) / kRows), (unsigned)a.s.Hq, (unsigned)a.s.B);
    MG_LAUNCH(kernel, grid, kThreads, smem, be, dq, lse, dsum, dout, a.q, a.k, a.v, a.q_roles,
              a.q_seg, a.k_roles, a.k_seg, a.s, a.qmul, a.scale, a.vec);
}

template <int D>
void dkv_d(const mg_backend *be, const Args &a, float *dk, float *dv, const float *lse,
           const float *dsum, const float *dout) {
    constexpr int BC = bwd_cols<D>();
    auto kernel = mma_dkv_kernel<D, BC>;
    const size_t smem = DkvShape<D, BC>::smem;
    if (!allow_smem(be, kernel, smem)) return;
    const dim3 grid((unsigned)((a.s.Tk + kRows - 1) / kRows), (unsigned)a.s.Hkv, (unsigned)a.s.B);
    MG_LAUNCH(kernel, grid, kThreads, smem, be, dk, dv, lse, dsum, dout, a.q, a.k, a.v, a.q_roles,
              a.q_seg, a.k_roles, a.k_seg, a.s, a.qmul, a.vec);
}

} // namespace

void mma_forward(const mg_backend *be, const Args &a, int D, float *out, float *lse, float *dsum,
                 const float *dout) {
    with_head_size(be, D,
                   [&](auto d) { forward_d<decltype(d)::value>(be, a, out, lse, dsum, dout); });
}

void mma_dq(const mg_backend *be, const Args &a, int D, float *dq, const float *lse,
            const float *dsum, const float *dout) {
    with_head_size(be, D, [&](auto d) { dq_d<decltype(d)::value>(be, a, dq, lse, dsum, dout); });
}

void mma_dkv(const mg_backend *be, const Args &a, int D, float *dk, float *dv, const float *lse,
             const float *dsum, const float *dout) {
    with_head_size(be, D,
                   [&](auto d) { dkv_d<decltype(d)::value>(be, a, dk, dv, lse, dsum, dout); });
}

} // namespace mg_attention
