/* MAGNET attention on the tensor cores from packed bfloat16 operands, for bf16 mode: the
 * forward, dQ and dK/dV kernels of attention_mma.cu (whose file comment gives the fragment
 * layout, the masks and the precision), with their operands prepared once per call and their
 * tiles copied asynchronously, two tiles in flight.
 *
 * Why. attention_mma.cu reads each key (or query) tile as float32 rows, rounds it in registers
 * and stores it to shared memory, both ways where a product needs the transpose, before any mma
 * on it starts; a block's tensor cores wait for every tile's loads, and each tile is read and
 * rounded again by every block that walks it. Here a pack kernel first writes each operand as
 * bfloat16 tiles, [B, H, Tpad, D] rows and, where a product needs it, the [B, H, D, Tpad]
 * transpose, times its factor (log2(e) / sqrt(hd) for Q), zero past T and hd. The attention
 * kernels then copy a tile with cp.async (16 bytes per copy, no registers, no rounding) into one
 * of two shared buffers while the tensor cores work on the other.
 *
 * Tiles start at multiples of their width, so that every row of a transposed tile starts on a
 * 16-byte boundary: a tile walk's first key (or query) is rounded down, and the rule masks what
 * the extra columns add. Tpad is T rounded up to kPad, so no copy reads past a packed tensor.
 *
 * Numbers. Every operand is rounded to bfloat16 exactly as attention_mma.cu rounds it, the
 * products run in the same order, so both kernel sets give the same bits, except where a tile
 * walk starts earlier here (a row whose first visible key is not a multiple of the tile width):
 * the masked columns add exact zeros, but the online softmax may rescale at other tiles.
 *
 * The packed operands live in the backend's staging area (mg_cuda_staging): 2 bytes per element
 * for each layout, for the length of one call. Without sm_80 (and in the emulator) a copy is a
 * plain 16-byte load and store. Where a kernel's double buffers need more shared memory than the
 * GPU allows a block (see fits), attention_mma.cu's kernel runs instead. */
#include "attention_mma.cuh"
#include "runtime.h"

#if defined(MG_MMA_PTX)
#define MG_CP_ASYNC 1
#endif

namespace mg_attention {
namespace {

/* ---------------- asynchronous copies ---------------- */

/* 16 bytes, for the copies that do not go through cp.async. */
struct alignas(16) u4 {
    uint32_t x, y, z, w;
};

/* 16 bytes from global memory to shared memory, both 16-byte aligned. */
__device__ inline void copy16(uint16_t *dst, const uint16_t *src) {
#ifdef MG_CP_ASYNC
    const unsigned addr = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(addr), "l"(src));
#else
    *reinterpret_cast<u4 *>(dst) = *reinterpret_cast<const u4 *>(src);
#endif
}

/* Closes the group of copies issued since the last commit. */
__device__ inline void copy_commit() {
#ifdef MG_CP_ASYNC
    asm volatile("cp.async.commit_group;" ::);
#endif
}

/* Waits until at most N committed groups of this thread are still in flight (the others have
 * landed in shared memory; a __syncthreads then makes them every thread's). */
template <int N> __device__ inline void copy_wait() {
#ifdef MG_CP_ASYNC
    /* the clobber keeps the compiler from moving shared-memory reads above the wait */
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}

/* dst[r, 0:COLS] (row stride ld) = src[r * stride + 0:COLS] for r < ROWS: a tile of a packed
 * operand, COLS bfloat16 (a multiple of 8) per row, shared among the block's threads. */
template <int ROWS, int COLS>
__device__ inline void copy_tile(uint16_t *dst, int ld, const uint16_t *src, long stride) {
    constexpr int CH = COLS / 8, N = ROWS * CH / kThreads;
    static_assert(COLS % 8 == 0 && ROWS * CH % kThreads == 0, "whole 16-byte copies per thread");
    MG_UNROLL
    for (int n = 0; n < N; n++) {
        const int idx = (int)threadIdx.x + n * kThreads, r = idx / CH, c = (idx % CH) * 8;
        copy16(dst + r * ld + c, src + r * stride + c);
    }
}

/* ---------------- packing ---------------- */

/* Packed tensors pad T to this; every tile width divides it. */
constexpr int kPad = 64;

long padded_rows(int T) {
    return ((long)T + kPad - 1) / kPad * kPad;
}

/* rows[b, h, r, 0:D] = bf16(mul * src row r of batch row b, head h), and/or cols[b, h, d, r], the
 * transpose; zeros past T rows and hd columns. src row r of batch row b and head h starts at
 * src + (b * bstride + r) * row + h * hd. Grid (Tpad / kPad, H, B). The transpose goes through a
 * shared tile, so that both layouts are written in whole 32-byte sectors. */
template <int D>
__global__ void MG_BOUNDS(kThreads)
    pack_kernel(uint16_t *rows, uint16_t *cols, const float *src, long row, long bstride, int T,
                int Tpad, int H, int hd, float mul, int vec) {
    constexpr int LDP = kPad + 8; /* the shared tile's row stride (elements): [D, LDP] */
    __shared__ u4 tile_words[D * LDP / 8];
    uint16_t *tile = reinterpret_cast<uint16_t *>(tile_words);
    const int r0 = (int)blockIdx.x * kPad, h = blockIdx.y, b = blockIdx.z;
    const float *s = src + ((long)b * bstride + r0) * row + (long)h * hd;
    const int nvalid = T - r0 < kPad ? T - r0 : kPad;
    const long head = (long)b * H + h;
    /* each lane loads two rows' 16 bytes, and stores the transpose as words of two rows: the
     * shared stores of a warp conflict at most two ways (Fetch) */
    Fetch<kPad, D> f;
    f.fetch(s, row, nvalid, hd, mul, vec != 0);
    if (rows != NULL) f.rows(rows + (head * Tpad + r0) * D, D);
    if (cols != NULL) f.cols(tile, LDP);
    if (cols == NULL) return;
    __syncthreads();
    constexpr int CH = kPad / 8, M = D * CH / kThreads;
    static_assert(D * CH % kThreads == 0, "whole 16-byte stores per thread");
    uint16_t *out = cols + head * D * Tpad + r0;
    MG_UNROLL
    for (int n = 0; n < M; n++) {
        const int idx = (int)threadIdx.x + n * kThreads, d = idx / CH, c = (idx % CH) * 8;
        *reinterpret_cast<u4 *>(out + (long)d * Tpad + c) = tile_words[(d * LDP + c) / 8];
    }
}

/* One operand packed: rows [B, H, Tpad, D] and/or cols [B, H, D, Tpad] (NULL: not wanted). */
struct Packed {
    uint16_t *rows, *cols;
    int Tpad;
};

/* The staging bytes of pack<D> for these layouts. */
template <int D> size_t pack_bytes(int layouts, int B, int T, int H) {
    return (size_t)layouts * sizeof(uint16_t) * (size_t)B * H * padded_rows(T) * D;
}

/* Packs src (see pack_kernel) into the staging memory at *at, advancing it. */
template <int D>
Packed pack(const mg_backend *be, char **at, bool want_rows, bool want_cols, const float *src,
            long row, long bstride, int B, int T, int H, int hd, float mul, int vec) {
    Packed p;
    p.Tpad = (int)padded_rows(T);
    const size_t bytes = pack_bytes<D>(1, B, T, H);
    p.rows = want_rows ? reinterpret_cast<uint16_t *>(*at) : NULL;
    *at += want_rows ? bytes : 0;
    p.cols = want_cols ? reinterpret_cast<uint16_t *>(*at) : NULL;
    *at += want_cols ? bytes : 0;
    const dim3 grid((unsigned)(p.Tpad / kPad), (unsigned)H, (unsigned)B);
    MG_LAUNCH(pack_kernel<D>, grid, kThreads, 0, be, p.rows, p.cols, src, row, bstride, T, p.Tpad,
              H, hd, mul, vec);
    return p;
}

/* ---------------- per-tile side information ---------------- */

/* The segment and role of key j0 + t of a tile, for thread t < COLS (segment -1 past Tk), read
 * into registers when the tile's copies are issued and stored to shared memory (store_key_info)
 * once the tensor cores are done with the current tile: the loads' latency hides behind that
 * work instead of holding up the next barrier. */
struct KeyInfo {
    int seg, role;
};
template <int COLS>
__device__ inline KeyInfo read_key_info(const uint8_t *kr, const int32_t *ks, int j0, int Tk) {
    KeyInfo k = {-1, (int)MG_ROLE_CONTEXT};
    const int t = threadIdx.x, j = j0 + t;
    if (t < COLS && j < Tk) {
        k.seg = ks[j];
        k.role = kr[j];
    }
    return k;
}
/* kinfo[0:COLS] segments, kinfo[COLS:2 COLS] roles (load_key_info's layout). */
template <int COLS> __device__ inline void store_key_info(int *kinfo, const KeyInfo &k) {
    const int t = threadIdx.x;
    if (t < COLS) {
        kinfo[t] = k.seg;
        kinfo[COLS + t] = k.role;
    }
}

/* The same for the queries of a dK/dV step: segment, role, logsumexp and D of query i0 + t
 * (segment -1, lse -inf past Tq); si0: the statistics' index of query 0 of the step's head. */
struct QueryInfo {
    int seg, role;
    float lse, dsum;
};
template <int COLS>
__device__ inline QueryInfo read_query_info(const uint8_t *qr, const int32_t *qs, const float *lse,
                                            const float *dsum, long si0, int i0, int Tq) {
    QueryInfo q = {-1, (int)MG_ROLE_CONTEXT, -INFINITY, 0.0f};
    const int t = threadIdx.x, i = i0 + t;
    if (t < COLS && i < Tq) {
        q.seg = qs[i];
        q.role = qr[i];
        q.lse = lse[si0 + i];
        q.dsum = dsum[si0 + i];
    }
    return q;
}
/* qinfo[0:COLS] segments, [COLS:2 COLS] roles; qstat[0:COLS] lse, [COLS:2 COLS] D. */
template <int COLS>
__device__ inline void store_query_info(int *qinfo, float *qstat, const QueryInfo &q) {
    const int t = threadIdx.x;
    if (t < COLS) {
        qinfo[t] = q.seg;
        qinfo[COLS + t] = q.role;
        qstat[t] = q.lse;
        qstat[COLS + t] = q.dsum;
    }
}

/* ---------------- kernels ---------------- */

constexpr int kRows = 64; /* rows of a block's own tile: 4 warps x 16 */

/* What a block of a query-tile kernel owns (query_block of attention_tiles.cuh, without the
 * float32 operands): its first query i0 (the tiles run in reverse order), query head h, batch row
 * b, kv head kh, and the roles and segments of row b's keys. */
struct PackedQueryBlock {
    int i0, h, b, kh;
    const uint8_t *kr;
    const int32_t *ks;
};
__device__ inline PackedQueryBlock packed_query_block(int rows, const attention_shape &s,
                                                      const uint8_t *k_roles,
                                                      const int32_t *k_seg) {
    const int h = blockIdx.y, b = blockIdx.z;
    const long kv0 = (long)b * s.kv_stride;
    return PackedQueryBlock{(int)(gridDim.x - 1 - blockIdx.x) * rows,
                            h,
                            b,
                            h / (s.Hq / s.Hkv),
                            k_roles + kv0,
                            k_seg + kv0};
}

/* The first tile of a walk over [lo, hi]: lo rounded down to a multiple of the tile width. */
__device__ inline int tile_start(int lo, int width) {
    return lo / width * width;
}

template <int D, int BC> struct FwdShape {
    static constexpr int LD = D + 8, LDT = BC + 8;
    static constexpr int KV = BC * LD + D * LDT; /* one buffer: K rows, V transposed */
    static constexpr size_t smem = sizeof(uint16_t) * ((size_t)kRows * LD + 2 * (size_t)KV) +
                                   sizeof(int) * (2 * 2 * BC + 2 * kRows + 4 * kWarps);
};

/* Forward: grid (query tiles, Hq, B). Q: [B, Hq, Tqpad, D] rows times qmul; K: [B, Hkv, Tkpad, D]
 * rows; Vt: [B, Hkv, D, Tkpad]. Writes out and, when given, lse. */
template <int D, int BC>
__global__ void MG_BOUNDS(kThreads)
    packed_forward_kernel(float *out, float *lse, const uint16_t *Q, const uint16_t *K,
                          const uint16_t *Vt, int Tqpad, int Tkpad, const uint8_t *q_roles,
                          const int32_t *q_seg, const uint8_t *k_roles, const int32_t *k_seg,
                          attention_shape s) {
    using G = FwdShape<D, BC>;
    MG_DYNAMIC_SHARED(uint16_t, smem);
    uint16_t *Qs = smem;                                    /* [kRows, LD] */
    uint16_t *bufs = Qs + kRows * G::LD;                    /* 2 x (Ks [BC, LD], Vts [D, LDT]) */
    int *kinfo = reinterpret_cast<int *>(bufs + 2 * G::KV); /* 2 x [2, BC] */
    int *qinfo = kinfo + 2 * 2 * BC;                        /* [2, kRows] */
    int *red = qinfo + 2 * kRows;

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4;
    /* plain variables, not a structured binding: the copy lambda captures them */
    const PackedQueryBlock blk = packed_query_block(kRows, s, k_roles, k_seg);
    const int i0 = blk.i0, h = blk.h, b = blk.b, kh = blk.kh;
    const uint8_t *kr = blk.kr;
    const int32_t *ks = blk.ks;
    const uint16_t *Kh = K + ((long)b * s.Hkv + kh) * Tkpad * D;
    const uint16_t *Vh = Vt + ((long)b * s.Hkv + kh) * D * Tkpad;

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
    const int first = tile_start(lo, BC);
    /* tile k0 into buffer `which`, as one commit group with whatever else this thread issued
     * since the last one; returns its key info, for store_key_info */
    auto issue = [&](int k0, int which) {
        uint16_t *buf = bufs + which * G::KV;
        copy_tile<BC, D>(buf, G::LD, Kh + (long)k0 * D, D);
        copy_tile<D, BC>(buf + BC * G::LD, G::LDT, Vh + k0, Tkpad);
        copy_commit();
        return read_key_info<BC>(kr, ks, k0, s.Tk);
    };
    if (lo <= hi) {
        copy_tile<kRows, D>(Qs, G::LD, Q + (((long)b * s.Hq + h) * Tqpad + i0) * D, D);
        store_key_info<BC>(kinfo, issue(first, 0));
    }
    for (int k0 = first, it = 0; k0 <= hi; k0 += BC, it++) {
        const int cur = it & 1;
        const bool more = k0 + BC <= hi;
        KeyInfo next = {-1, (int)MG_ROLE_CONTEXT};
        if (more) {
            next = issue(k0 + BC, cur ^ 1);
            copy_wait<1>();
        } else {
            copy_wait<0>();
        }
        __syncthreads(); /* tile k0 has landed for every thread */
        const uint16_t *Ks = bufs + cur * G::KV, *Vts = Ks + BC * G::LD;
        const int *ki = kinfo + cur * 2 * BC;
        const bool all = queries_see_all<BC>(rows, ki, k0);
        float sc[BC / 8][4];
        product_xyt<D, BC / 8>(sc, Qs, Ks, G::LD, row0);
        softmax_step<BC, D>(sc, o, m, l, rows, ki, k0, all);
        product_wy<BC, D / 8>(o, sc, Vts, G::LDT);
        if (more) store_key_info<BC>(kinfo + (cur ^ 1) * 2 * BC, next);
        __syncthreads(); /* buffer cur is consumed before the next iteration refills it */
    }

    write_output<D>(out, lse, o, m, l, s, b, h, i0 + row0 + g);
}

template <int D, int BC> struct DqShape {
    static constexpr int LD = D + 8, LDT = BC + 8;
    static constexpr int KV = 2 * BC * LD + D * LDT; /* one buffer: K, V rows, K transposed */
    static constexpr size_t smem = sizeof(uint16_t) * (2 * (size_t)kRows * LD + 2 * (size_t)KV) +
                                   sizeof(int) * (2 * 2 * BC + 2 * kRows + 4 * kWarps);
};

/* dQ: grid (query tiles, Hq, B); dq += scale sum_j dS_ij K_j. Q (times qmul) and dO as rows
 * [B, Hq, Tqpad, D]; K, V rows [B, Hkv, Tkpad, D]; Kt [B, Hkv, D, Tkpad]. */
template <int D, int BC>
__global__ void MG_BOUNDS(kThreads)
    packed_dq_kernel(float *dq, const float *lse, const float *dsum, const uint16_t *Q,
                     const uint16_t *dO, const uint16_t *K, const uint16_t *V, const uint16_t *Kt,
                     int Tqpad, int Tkpad, const uint8_t *q_roles, const int32_t *q_seg,
                     const uint8_t *k_roles, const int32_t *k_seg, attention_shape s, float scale) {
    using G = DqShape<D, BC>;
    MG_DYNAMIC_SHARED(uint16_t, smem);
    uint16_t *Qs = smem;                  /* [kRows, LD] */
    uint16_t *dOs = Qs + kRows * G::LD;   /* [kRows, LD] */
    uint16_t *bufs = dOs + kRows * G::LD; /* 2 x (Ks, Vs [BC, LD], Kts [D, LDT]) */
    int *kinfo = reinterpret_cast<int *>(bufs + 2 * G::KV); /* 2 x [2, BC] */
    int *qinfo = kinfo + 2 * 2 * BC;                        /* [2, kRows] */
    int *red = qinfo + 2 * kRows;

    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = lane / 4;
    /* plain variables, not a structured binding: the copy lambda captures them */
    const PackedQueryBlock blk = packed_query_block(kRows, s, k_roles, k_seg);
    const int i0 = blk.i0, h = blk.h, b = blk.b, kh = blk.kh;
    const uint8_t *kr = blk.kr;
    const int32_t *ks = blk.ks;
    const long kvh = (long)b * s.Hkv + kh;
    const uint16_t *Kh = K + kvh * Tkpad * D, *Vh = V + kvh * Tkpad * D,
                   *Kth = Kt + kvh * D * Tkpad;

    int lo, hi;
    query_tile_keys<kRows>(&lo, &hi, qinfo, red, q_roles, q_seg, kr, ks, b, i0, s);
    if (lo > hi) return; /* no query of the tile sees a key: no gradient */
    const long qoff = (((long)b * s.Hq + h) * Tqpad + i0) * D;
    copy_tile<kRows, D>(Qs, G::LD, Q + qoff, D);
    copy_tile<kRows, D>(dOs, G::LD, dO + qoff, D);
    auto issue = [&](int k0, int which) {
        uint16_t *buf = bufs + which * G::KV;
        copy_tile<BC, D>(buf, G::LD, Kh + (long)k0 * D, D);
        copy_tile<BC, D>(buf + BC * G::LD, G::LD, Vh + (long)k0 * D, D);
        copy_tile<D, BC>(buf + 2 * BC * G::LD, G::LDT, Kth + k0, Tkpad);
        copy_commit();
        return read_key_info<BC>(kr, ks, k0, s.Tk);
    };
    const int first = tile_start(lo, BC);
    store_key_info<BC>(kinfo, issue(first, 0));
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
    for (int k0 = first, it = 0; k0 <= hi; k0 += BC, it++) {
        const int cur = it & 1;
        const bool more = k0 + BC <= hi;
        KeyInfo next = {-1, (int)MG_ROLE_CONTEXT};
        if (more) {
            next = issue(k0 + BC, cur ^ 1);
            copy_wait<1>();
        } else {
            copy_wait<0>();
        }
        __syncthreads();
        const uint16_t *Ks = bufs + cur * G::KV, *Vs = Ks + BC * G::LD, *Kts = Vs + BC * G::LD;
        const int *ki = kinfo + cur * 2 * BC;
        const bool all = queries_see_all<BC>(rows, ki, k0);
        float sc[BC / 8][4], dp[BC / 8][4];
        product_xyt<D, BC / 8>(sc, Qs, Ks, G::LD, row0);
        product_xyt<D, BC / 8>(dp, dOs, Vs, G::LD, row0);
        dq_ds_step<BC>(sc, dp, rows, rlse, rd, ki, k0, all);
        product_wy<BC, D / 8>(acc, sc, Kts, G::LDT);
        if (more) store_key_info<BC>(kinfo + (cur ^ 1) * 2 * BC, next);
        __syncthreads();
    }
    add_dq<D>(dq, acc, scale, s, b, h, i0 + row0 + g);
}

template <int D, int BC> struct DkvShape {
    static constexpr int LD = D + 8, LDT = BC + 8;
    /* one buffer: Q, dO rows, Q, dO transposed */
    static constexpr int QD = 2 * BC * LD + 2 * D * LDT;
    static constexpr size_t smem = sizeof(uint16_t) * (2 * (size_t)kRows * LD + 2 * (size_t)QD) +
                                   sizeof(float) * 2 * 2 * BC +
                                   sizeof(int) * (2 * kRows + 2 * 2 * BC + 4 * kWarps);
};

/* dK and dV: grid (key tiles, Hkv, B); the block walks the query tiles of every query head of its
 * GQA group as one sequence of steps, so that the copies run ahead across heads too:
 * dv += sum_i P_ij dO_i, dk += scale sum_i dS_ij Q_i. Q (times qmul) and dO as rows
 * [B, Hq, Tqpad, D] and transposed [B, Hq, D, Tqpad]; K, V rows [B, Hkv, Tkpad, D]. */
template <int D, int BC>
__global__ void MG_BOUNDS(kThreads)
    packed_dkv_kernel(float *dk, float *dv, const float *lse, const float *dsum, const uint16_t *Q,
                      const uint16_t *Qt, const uint16_t *dO, const uint16_t *dOt,
                      const uint16_t *K, const uint16_t *V, int Tqpad, int Tkpad,
                      const uint8_t *q_roles, const int32_t *q_seg, const uint8_t *k_roles,
                      const int32_t *k_seg, attention_shape s) {
    using G = DkvShape<D, BC>;
    MG_DYNAMIC_SHARED(uint16_t, smem);
    uint16_t *Ks = smem;                                        /* [kRows, LD] */
    uint16_t *Vs = Ks + kRows * G::LD;                          /* [kRows, LD] */
    uint16_t *bufs = Vs + kRows * G::LD;                        /* 2 x (Qs, dOs, Qts, dOts) */
    float *qstat = reinterpret_cast<float *>(bufs + 2 * G::QD); /* 2 x [2, BC]: lse, D */
    int *kinfo = reinterpret_cast<int *>(qstat + 2 * 2 * BC);   /* [2, kRows] */
    int *qinfo = kinfo + 2 * kRows;                             /* 2 x [2, BC] */
    int *red = qinfo + 2 * 2 * BC;

    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, g = lane / 4;
    /* plain variables, not a structured binding: the copy lambda captures them */
    const KeyBlock blk = key_block(kRows, s, q_roles, q_seg, k_roles, k_seg);
    const int j0 = blk.j0, kh = blk.kh, b = blk.b;
    const long kv_row = blk.kv_row, kv0 = blk.kv0;
    const uint8_t *kr = blk.kr, *qr = blk.qr;
    const int32_t *ks = blk.ks, *qs = blk.qs;
    const int group = s.Hq / s.Hkv;

    int qlo, qhi;
    key_tile_queries<kRows>(&qlo, &qhi, kinfo, red, qr, qs, kr, ks, j0, s);
    if (qlo > qhi) return;
    const long kvh = (long)b * s.Hkv + kh;
    copy_tile<kRows, D>(Ks, G::LD, K + (kvh * Tkpad + j0) * D, D);
    copy_tile<kRows, D>(Vs, G::LD, V + (kvh * Tkpad + j0) * D, D);
    const int first = tile_start(qlo, BC);
    const int per_head = (qhi - first) / BC + 1, steps = group * per_head;
    /* step n: query head kh * group + n / per_head, queries from first + (n % per_head) BC */
    auto issue = [&](int n, int which) {
        const int h = kh * group + n / per_head, i0 = first + (n % per_head) * BC;
        const long head = (long)b * s.Hq + h;
        uint16_t *buf = bufs + which * G::QD;
        copy_tile<BC, D>(buf, G::LD, Q + (head * Tqpad + i0) * D, D);
        copy_tile<BC, D>(buf + BC * G::LD, G::LD, dO + (head * Tqpad + i0) * D, D);
        copy_tile<D, BC>(buf + 2 * BC * G::LD, G::LDT, Qt + head * D * Tqpad + i0, Tqpad);
        copy_tile<D, BC>(buf + 2 * BC * G::LD + D * G::LDT, G::LDT, dOt + head * D * Tqpad + i0,
                         Tqpad);
        copy_commit();
        return read_query_info<BC>(qr, qs, lse, dsum, head * s.Tq, i0, s.Tq);
    };
    store_query_info<BC>(qinfo, qstat, issue(0, 0));
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
    for (int n = 0; n < steps; n++) {
        const int cur = n & 1, i0 = first + (n % per_head) * BC;
        const bool more = n + 1 < steps;
        QueryInfo next = {-1, (int)MG_ROLE_CONTEXT, -INFINITY, 0.0f};
        if (more) {
            next = issue(n + 1, cur ^ 1);
            copy_wait<1>();
        } else {
            copy_wait<0>();
        }
        __syncthreads();
        const uint16_t *Qs = bufs + cur * G::QD, *dOs = Qs + BC * G::LD;
        const uint16_t *Qts = dOs + BC * G::LD, *dOts = Qts + D * G::LDT;
        const int *qi = qinfo + cur * 2 * BC;
        const float *st = qstat + cur * 2 * BC;
        const bool all = keys_seen_by_all<BC>(keys, qi, s.q_start + i0);
        float sc[BC / 8][4], dp[BC / 8][4];
        product_xyt<D, BC / 8>(sc, Ks, Qs, G::LD, row0);
        product_xyt<D, BC / 8>(dp, Vs, dOs, G::LD, row0);
        dkv_p_ds_step<BC>(sc, dp, keys, qi, st, s.q_start + i0, all);
        if (dv != NULL) product_wy<BC, D / 8>(adv, sc, dOts, G::LDT);
        if (dk != NULL) product_wy<BC, D / 8>(adk, dp, Qts, G::LDT);
        if (more)
            store_query_info<BC>(qinfo + (cur ^ 1) * 2 * BC, qstat + (cur ^ 1) * 2 * BC, next);
        __syncthreads();
    }
    const int nk = s.Tk - j0 < kRows ? s.Tk - j0 : kRows;
    add_dkv<D>(dk, dv, adk, adv, (kv0 + j0) * kv_row + (long)kh * s.hd, kv_row, s.hd, row0 + g, nk);
}

/* Key (or query) columns per tile, as in attention_mma.cu: 64, or 32 for the backward at D = 128
 * where the dQ and dK/dV accumulators take more registers. */
template <int D> constexpr int bwd_cols() {
    return D >= 128 ? 32 : 64;
}

/* Row strides of the q-shaped (q, out, dout) and kv-shaped float32 tensors. */
long q_row_of(const attention_shape &s) {
    return (long)s.Hq * s.hd;
}
long kv_row_of(const attention_shape &s) {
    return (long)s.Hkv * s.hd;
}

/* Whether a kernel's shared memory fits what this GPU lets a block opt in to: the double buffers
 * take more than attention_mma.cu's kernels (dK/dV at head size 128: 110 KiB, where sm_86, sm_89
 * and sm_120 allow 99 KiB), which run instead where they do not fit. */
bool fits(const mg_backend *be, size_t smem) {
    return smem <= (size_t)mg_cuda_ctx_of(be)->smem_optin;
}

template <int D> void forward_d(const mg_backend *be, const Args &a, float *out, float *lse) {
    constexpr int BC = 64;
    const attention_shape &s = a.s;
    if (s.Tk <= 0 || !fits(be, FwdShape<D, BC>::smem)) { /* no keys: nothing to pack */
        mma_forward(be, a, D, out, lse, NULL, NULL);
        return;
    }
    const size_t bytes = pack_bytes<D>(1, s.B, s.Tq, s.Hq) + pack_bytes<D>(2, s.B, s.Tk, s.Hkv);
    char *at = static_cast<char *>(mg_cuda_staging(be, bytes));
    if (at == NULL) return;
    const Packed q =
        pack<D>(be, &at, true, false, a.q, q_row_of(s), s.Tq, s.B, s.Tq, s.Hq, s.hd, a.qmul, a.vec);
    const Packed k = pack<D>(be, &at, true, false, a.k, kv_row_of(s), s.kv_stride, s.B, s.Tk, s.Hkv,
                             s.hd, 1.0f, a.vec);
    const Packed v = pack<D>(be, &at, false, true, a.v, kv_row_of(s), s.kv_stride, s.B, s.Tk, s.Hkv,
                             s.hd, 1.0f, a.vec);
    auto kernel = packed_forward_kernel<D, BC>;
    const size_t smem = FwdShape<D, BC>::smem;
    if (!allow_smem(be, kernel, smem)) return;
    const dim3 grid((unsigned)((s.Tq + kRows - 1) / kRows), (unsigned)s.Hq, (unsigned)s.B);
    MG_LAUNCH(kernel, grid, kThreads, smem, be, out, lse, q.rows, k.rows, v.cols, q.Tpad, k.Tpad,
              a.q_roles, a.q_seg, a.k_roles, a.k_seg, s);
}

template <int D>
void backward_d(const mg_backend *be, const Args &a, float *dq, float *dk, float *dv,
                const float *lse, const float *dsum, const float *dout) {
    constexpr int BC = bwd_cols<D>();
    const attention_shape &s = a.s;
    const bool kv = dk != NULL || dv != NULL;
    if (s.Tk <= 0 || (dq != NULL && !fits(be, DqShape<D, BC>::smem)) ||
        (kv && !fits(be, DkvShape<D, BC>::smem))) {
        if (dq != NULL) mma_dq(be, a, D, dq, lse, dsum, dout);
        if (kv) mma_dkv(be, a, D, dk, dv, lse, dsum, dout);
        return;
    }
    /* Q and dO both ways when dK/dV run, else rows only; K rows and transposed, V rows */
    const int q_layouts = kv ? 2 : 1;
    const size_t bytes = pack_bytes<D>(2 * q_layouts, s.B, s.Tq, s.Hq) +
                         pack_bytes<D>(dq != NULL ? 3 : 2, s.B, s.Tk, s.Hkv);
    char *at = static_cast<char *>(mg_cuda_staging(be, bytes));
    if (at == NULL) return;
    const Packed q =
        pack<D>(be, &at, true, kv, a.q, q_row_of(s), s.Tq, s.B, s.Tq, s.Hq, s.hd, a.qmul, a.vec);
    const Packed o =
        pack<D>(be, &at, true, kv, dout, q_row_of(s), s.Tq, s.B, s.Tq, s.Hq, s.hd, 1.0f, a.vec);
    const Packed k = pack<D>(be, &at, true, dq != NULL, a.k, kv_row_of(s), s.kv_stride, s.B, s.Tk,
                             s.Hkv, s.hd, 1.0f, a.vec);
    const Packed v = pack<D>(be, &at, true, false, a.v, kv_row_of(s), s.kv_stride, s.B, s.Tk, s.Hkv,
                             s.hd, 1.0f, a.vec);
    if (dq != NULL) {
        auto kernel = packed_dq_kernel<D, BC>;
        const size_t smem = DqShape<D, BC>::smem;
        if (!allow_smem(be, kernel, smem)) return;
        const dim3 grid((unsigned)((s.Tq + kRows - 1) / kRows), (unsigned)s.Hq, (unsigned)s.B);
        MG_LAUNCH(kernel, grid, kThreads, smem, be, dq, lse, dsum, q.rows, o.rows, k.rows, v.rows,
                  k.cols, q.Tpad, k.Tpad, a.q_roles, a.q_seg, a.k_roles, a.k_seg, s, a.scale);
    }
    if (!kv) return;
    auto kernel = packed_dkv_kernel<D, BC>;
    const size_t smem = DkvShape<D, BC>::smem;
    if (!allow_smem(be, kernel, smem)) return;
    const dim3 grid((unsigned)((s.Tk + kRows - 1) / kRows), (unsigned)s.Hkv, (unsigned)s.B);
    MG_LAUNCH(kernel, grid, kThreads, smem, be, dk, dv, lse, dsum, q.rows, q.cols, o.rows, o.cols,
              k.rows, v.rows, q.Tpad, k.Tpad, a.q_roles, a.q_seg, a.k_roles, a.k_seg, s);
}

} // namespace

void packed_forward(const mg_backend *be, const Args &a, int D, float *out, float *lse) {
    with_head_size(be, D, [&](auto d) { forward_d<decltype(d)::value>(be, a, out, lse); });
}

void packed_backward(const mg_backend *be, const Args &a, int D, float *dq, float *dk, float *dv,
                     const float *lse, const float *dsum, const float *dout) {
    with_head_size(
        be, D, [&](auto d) { backward_d<decltype(d)::value>(be, a, dq, dk, dv, lse, dsum, dout); });
}

} // namespace mg_attention
