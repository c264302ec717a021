#include "packed_matmul.h"

#if MG_HAVE_PACKED_MATMUL

#include <immintrin.h>
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "../core/parallel.h"

/* The micro-kernel's tile: 6 rows x 16 columns of C in 12 ymm accumulators, leaving 4 registers
 * for two weight vectors and the broadcast input (the BLIS Haswell/Zen shape). */
#define MR 6
#define NR 16
/* Cache blocks (BLIS's Zen values): a KC x NR weight micro-panel (16 KiB) stays in L1 while the
 * MC x KC input block (144 KiB) streams from L2; a KC x NC weight block lives in L3. */
#define KC 256
#define MC 144
#define NC 3072

static inline int min_int(int a, int b) {
    return a < b ? a : b;
}

/* One k step of the micro-kernel: two weight vectors (ymm0, ymm1), two broadcast inputs at a time
 * (ymm2, ymm3), twelve FMAs into the accumulators c[i][j] = ymm(4 + 2i + j). Written in assembly
 * because GCC, given the same loop in intrinsics, folds the weight loads into the FMAs and adds
 * register moves: 68 GFLOP/s against 80 for this loop on one Zen 3 core with everything in cache
 * (the FMA peak is 90). The arguments are byte offsets into the input and weight panels. */
#define MK_STEP(A0, A1, A2, A3, A4, A5, B0, B1)                                                    \
    "vmovaps " B0 "(%[b]), %%ymm0\n\t"                                                             \
    "vmovaps " B1 "(%[b]), %%ymm1\n\t"                                                             \
    "vbroadcastss " A0 "(%[a]), %%ymm2\n\t"                                                        \
    "vbroadcastss " A1 "(%[a]), %%ymm3\n\t"                                                        \
    "vfmadd231ps %%ymm0, %%ymm2, %%ymm4\n\t"                                                       \
    "vfmadd231ps %%ymm1, %%ymm2, %%ymm5\n\t"                                                       \
    "vfmadd231ps %%ymm0, %%ymm3, %%ymm6\n\t"                                                       \
    "vfmadd231ps %%ymm1, %%ymm3, %%ymm7\n\t"                                                       \
    "vbroadcastss " A2 "(%[a]), %%ymm2\n\t"                                                        \
    "vbroadcastss " A3 "(%[a]), %%ymm3\n\t"                                                        \
    "vfmadd231ps %%ymm0, %%ymm2, %%ymm8\n\t"                                                       \
    "vfmadd231ps %%ymm1, %%ymm2, %%ymm9\n\t"                                                       \
    "vfmadd231ps %%ymm0, %%ymm3, %%ymm10\n\t"                                                      \
    "vfmadd231ps %%ymm1, %%ymm3, %%ymm11\n\t"                                                      \
    "vbroadcastss " A4 "(%[a]), %%ymm2\n\t"                                                        \
    "vbroadcastss " A5 "(%[a]), %%ymm3\n\t"                                                        \
    "vfmadd231ps %%ymm0, %%ymm2, %%ymm12\n\t"                                                      \
    "vfmadd231ps %%ymm1, %%ymm2, %%ymm13\n\t"                                                      \
    "vfmadd231ps %%ymm0, %%ymm3, %%ymm14\n\t"                                                      \
    "vfmadd231ps %%ymm1, %%ymm3, %%ymm15\n\t"

/* tile[6][16] = sum over k < kc of a[k][0:6] (outer) b[k][0:16]; tile 32-byte aligned. Unrolled
 * four k steps at a time, prefetching the input panel (which streams from L2) a few steps ahead;
 * the weight panel stays in L1. */
static inline void micro_tile(long kc, const float *a, const float *b, float *tile) {
    long n4 = kc >> 2, n1 = kc & 3;
    __asm__ volatile(
        "vxorps %%ymm4, %%ymm4, %%ymm4\n\t"
        "vxorps %%ymm5, %%ymm5, %%ymm5\n\t"
        "vxorps %%ymm6, %%ymm6, %%ymm6\n\t"
        "vxorps %%ymm7, %%ymm7, %%ymm7\n\t"
        "vxorps %%ymm8, %%ymm8, %%ymm8\n\t"
        "vxorps %%ymm9, %%ymm9, %%ymm9\n\t"
        "vxorps %%ymm10, %%ymm10, %%ymm10\n\t"
        "vxorps %%ymm11, %%ymm11, %%ymm11\n\t"
        "vxorps %%ymm12, %%ymm12, %%ymm12\n\t"
        "vxorps %%ymm13, %%ymm13, %%ymm13\n\t"
        "vxorps %%ymm14, %%ymm14, %%ymm14\n\t"
        "vxorps %%ymm15, %%ymm15, %%ymm15\n\t"
        "test %[n4], %[n4]\n\t"
        "jz 2f\n\t"
        ".p2align 5\n"
        "1:\n\t"
        "prefetcht0 384(%[a])\n\t" MK_STEP("0", "4", "8", "12", "16", "20", "0", "32")
            MK_STEP("24", "28", "32", "36", "40", "44", "64",
                    "96") "prefetcht0 448(%[a])\n\t" MK_STEP("48", "52", "56", "60", "64", "68",
                                                             "128", "160")
                MK_STEP("72", "76", "80", "84", "88", "92", "192",
                        "224") "add $96, %[a]\n\t"
                               "add $256, %[b]\n\t"
                               "dec %[n4]\n\t"
                               "jnz 1b\n"
                               "2:\n\t"
                               "test %[n1], %[n1]\n\t"
                               "jz 4f\n"
                               "3:\n\t" MK_STEP("0", "4", "8", "12", "16", "20", "0",
                                                "32") "add $24, %[a]\n\t"
                                                      "add $64, %[b]\n\t"
                                                      "dec %[n1]\n\t"
                                                      "jnz 3b\n"
                                                      "4:\n\t"
                                                      "vmovaps %%ymm4, 0(%[tile])\n\t"
                                                      "vmovaps %%ymm5, 32(%[tile])\n\t"
                                                      "vmovaps %%ymm6, 64(%[tile])\n\t"
                                                      "vmovaps %%ymm7, 96(%[tile])\n\t"
                                                      "vmovaps %%ymm8, 128(%[tile])\n\t"
                                                      "vmovaps %%ymm9, 160(%[tile])\n\t"
                                                      "vmovaps %%ymm10, 192(%[tile])\n\t"
                                                      "vmovaps %%ymm11, 224(%[tile])\n\t"
                                                      "vmovaps %%ymm12, 256(%[tile])\n\t"
                                                      "vmovaps %%ymm13, 288(%[tile])\n\t"
                                                      "vmovaps %%ymm14, 320(%[tile])\n\t"
                                                      "vmovaps %%ymm15, 352(%[tile])\n\t"
        : [a] "+r"(a), [b] "+r"(b), [n4] "+r"(n4), [n1] "+r"(n1)
        : [tile] "r"(tile)
        : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
          "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}

/* C[0:rows, 0:cols] (= or +=) the kc-long products of a (k-major, MR per k) and b (k-major, NR
 * per k). */
static void micro_kernel(int kc, const float *a, const float *b, float *c, int ldc, int rows,
                         int cols, bool add) {
    /* the C tile is read and written after the k loop: start its lines on their way now */
    for (int i = 0; i < rows; i++) {
        _mm_prefetch((const char *)(c + (size_t)i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + (size_t)i * ldc + NR - 1), _MM_HINT_T0);
    }
    float tile[MR * NR] __attribute__((aligned(32)));
    micro_tile(kc, a, b, tile);
    if (rows == MR && cols == NR) {
        for (int i = 0; i < MR; i++) {
            float *row = c + (size_t)i * ldc;
            __m256 lo = _mm256_load_ps(tile + i * NR), hi = _mm256_load_ps(tile + i * NR + 8);
            if (add) {
                lo = _mm256_add_ps(lo, _mm256_loadu_ps(row));
                hi = _mm256_add_ps(hi, _mm256_loadu_ps(row + 8));
            }
            _mm256_storeu_ps(row, lo);
            _mm256_storeu_ps(row + 8, hi);
        }
        return;
    }
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            c[(size_t)i * ldc + j] = (add ? c[(size_t)i * ldc + j] : 0.0f) + tile[i * NR + j];
}

/* r[0..7] (8 rows of 8 floats) become their columns: r[k] = (r0[k], r1[k], ..., r7[k]). */
static inline void transpose8(__m256 r[8]) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* Loads 8 floats from each of the rows src[i * ld] for i < rows (zeros for the rest). */
static inline void load_rows8(__m256 r[8], const float *src, size_t ld, int rows) {
    for (int i = 0; i < 8; i++)
        r[i] = i < rows ? _mm256_loadu_ps(src + i * ld) : _mm256_setzero_ps();
}

/* packed[p][k][j] = weight[p*NR + j][k] for the block's NR-column panels, zero past the last
 * column, so the micro-kernel reads NR contiguous floats per k. Eight k at a time, through two
 * 8 x 8 transposes. */
static void pack_weight(float *restrict packed, const float *restrict weight, int ldw, int nc,
                        int kc) {
    for (int p = 0; p < nc; p += NR) {
        const int cols = min_int(NR, nc - p);
        float *dst = packed + (size_t)p * kc;
        const float *src = weight + (size_t)p * ldw;
        int k = 0;
        for (; k + 8 <= kc; k += 8) {
            __m256 lo[8], hi[8];
            load_rows8(lo, src + k, ldw, cols);
            load_rows8(hi, src + (size_t)8 * ldw + k, ldw, cols - 8);
            transpose8(lo);
            transpose8(hi);
            for (int q = 0; q < 8; q++) {
                _mm256_store_ps(dst + (size_t)(k + q) * NR, lo[q]);
                _mm256_store_ps(dst + (size_t)(k + q) * NR + 8, hi[q]);
            }
        }
        for (; k < kc; k++)
            for (int j = 0; j < NR; j++)
                dst[(size_t)k * NR + j] = j < cols ? src[(size_t)j * ldw + k] : 0.0f;
    }
}

/* packed[p][k][i] = inp[p*MR + i][k], zero past the last row. Eight k at a time: an 8 x 8
 * transpose (rows 6 and 7 unused) and eight 8-float stores MR floats apart, in ascending order so
 * that each store's two spare lanes are overwritten by the next; the last of a panel spills two
 * floats into the next panel (or the buffer's slack), which are written after it. */
static void pack_input(float *restrict packed, const float *restrict inp, int ldi, int mc, int kc) {
    for (int p = 0; p < mc; p += MR) {
        const int rows = min_int(MR, mc - p);
        float *dst = packed + (size_t)p * kc;
        const float *src = inp + (size_t)p * ldi;
        int k = 0;
        for (; k + 8 <= kc; k += 8) {
            __m256 r[8];
            load_rows8(r, src + k, ldi, rows);
            transpose8(r);
            for (int q = 0; q < 8; q++)
                _mm256_storeu_ps(dst + (size_t)(k + q) * MR, r[q]);
        }
        for (; k < kc; k++)
            for (int i = 0; i < MR; i++)
                dst[(size_t)k * MR + i] = i < rows ? src[(size_t)i * ldi + k] : 0.0f;
    }
}

/* One thread's columns [n_lo, n_hi) of the product, for all N rows, with its own packing
 * buffers. The threads split the columns, not the rows: each packs only its share of the
 * weights (read from memory once per call in all), and the inputs, which every thread packs, come
 * from cache. With the rows split, every thread packed all the weights, a tenth of an embedding
 * batch's time. */
static void matmul_cols(float *out, const float *inp, const float *weight, int N, int I, int O,
                        int n_lo, int n_hi, bool accumulate, float *packed_w, float *packed_x) {
    /* I in near-equal blocks of at most KC, multiples of 8 but the last: 576 is 192 x 3 rather
     * than 256 + 256 + 64, whose short last pass paid the tile write-back for little work */
    const int blocks = (I + KC - 1) / KC;
    const int k_step = ((I + blocks - 1) / blocks + 7) / 8 * 8;
    for (int jc = n_lo; jc < n_hi; jc += NC) {
        const int nc = min_int(NC, n_hi - jc);
        for (int pc = 0; pc < I; pc += k_step) {
            const int kc = min_int(k_step, I - pc);
            const bool add = accumulate || pc > 0;
            pack_weight(packed_w, weight + (size_t)jc * I + pc, I, nc, kc);
            for (int ic = 0; ic < N; ic += MC) {
                const int mc = min_int(MC, N - ic);
                pack_input(packed_x, inp + (size_t)ic * I + pc, I, mc, kc);
                for (int jr = 0; jr < nc; jr += NR)
                    for (int ir = 0; ir < mc; ir += MR)
                        micro_kernel(kc, packed_x + (size_t)ir * kc, packed_w + (size_t)jr * kc,
                                     out + (size_t)(ic + ir) * O + jc + jr, O, min_int(MR, mc - ir),
                                     min_int(NR, nc - jr), add);
            }
        }
    }
}

bool packed_matmul_forward(float *out, const float *inp, const float *weight, int N, int I, int O,
                           bool accumulate) {
    if (N <= 0 || O <= 0) return true;
    if (I <= 0) {
        if (!accumulate) memset(out, 0, (size_t)N * O * sizeof(float));
        return true;
    }
    const long work = (long)N * O * I;
    int threads = MG_WORTH_THREADS(work / 64) ? omp_get_max_threads() : 1;
    /* each thread gets whole NR-column panels, at least one */
    const int panels = (O + NR - 1) / NR;
    if (threads > panels) threads = panels;
    /* room for a whole NC block of columns, whatever share of them a thread gets: OpenMP may
     * run fewer threads than asked, and then each one's share is wider (pages a thread never
     * touches are never backed) */
    const size_t w_floats = (size_t)KC * min_int(NC, panels * NR);
    /* + the input packing's spill, rounded to keep every buffer 64-byte aligned */
    const size_t x_floats = (size_t)KC * MC + 16;
    const size_t per_thread = w_floats + x_floats;
    float *buffers = aligned_alloc(64, per_thread * threads * sizeof(float));
    if (buffers == NULL) return false;
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int n_lo = min_int(O, (int)((long)panels * t / n) * NR);
        const int n_hi = min_int(O, (int)((long)panels * (t + 1) / n) * NR);
        float *packed_w = buffers + per_thread * t;
        if (n_lo < n_hi)
            matmul_cols(out, inp, weight, N, I, O, n_lo, n_hi, accumulate, packed_w,
                        packed_w + w_floats);
    }
    free(buffers);
    return true;
}

#else

bool packed_matmul_forward(float *out, const float *inp, const float *weight, int N, int I, int O,
                           bool accumulate) {
    (void)out, (void)inp, (void)weight, (void)N, (void)I, (void)O, (void)accumulate;
    return false;
}

#endif
