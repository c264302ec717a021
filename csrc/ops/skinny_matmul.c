#include "skinny_matmul.h"

#include <stddef.h>
#include <stdlib.h>

#include "../core/parallel.h"

/* Weight rows per work item: a block stays in L1 (or L2 for wide rows) while every tile of input
 * rows passes over it, so W is read from memory once per call whatever N is. Blocks of 8 rows
 * were faster than blocks of 32 at every N in benchmarks/skinny_matmul.c. */
#define SKINNY_BLOCK_ROWS 8

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

typedef __m256 vec8;
static inline vec8 vec_zero(void) {
    return _mm256_setzero_ps();
}
static inline vec8 vec_load(const float *p) {
    return _mm256_loadu_ps(p);
}
static inline vec8 vec_fma(vec8 a, vec8 b, vec8 acc) {
    return _mm256_fmadd_ps(a, b, acc);
}
/* Lanes (0+4, 1+5, 2+6, 3+7), then pairs, then the last two: the same order as the portable
 * version below. */
static inline float vec_sum(vec8 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#else
/* Portable lanes: plain arrays the compiler can map onto whatever vector unit it has. */
typedef struct {
    float f[8];
} vec8;
static inline vec8 vec_zero(void) {
    vec8 v = {{0}};
    return v;
}
static inline vec8 vec_load(const float *p) {
    vec8 v;
    for (int i = 0; i < 8; i++)
        v.f[i] = p[i];
    return v;
}
static inline vec8 vec_fma(vec8 a, vec8 b, vec8 acc) {
    for (int i = 0; i < 8; i++)
        acc.f[i] += a.f[i] * b.f[i];
    return acc;
}
static inline float vec_sum(vec8 v) {
    float s[4];
    for (int i = 0; i < 4; i++)
        s[i] = v.f[i] + v.f[i + 4];
    const float lo = s[0] + s[2], hi = s[1] + s[3];
    return lo + hi;
}
#endif

/* res[r * C + c] = dot(w[r], x[c]) over I elements for an R x C tile. R and C are constants at
 * every call, so after inlining the accumulators live in registers. Each dot product runs in
 * the same order (8 lanes over k, the lane sum, then the tail) in every tile shape. */
static inline __attribute__((always_inline)) void
dot_tile(int R, int C, const float *const *w, const float *const *x, int I, float *res) {
    vec8 acc[8][4];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            acc[r][c] = vec_zero();
    int k = 0;
    for (; k + 8 <= I; k += 8) {
        vec8 xv[4];
        for (int c = 0; c < C; c++)
            xv[c] = vec_load(x[c] + k);
        for (int r = 0; r < R; r++) {
            const vec8 wv = vec_load(w[r] + k);
            for (int c = 0; c < C; c++)
                acc[r][c] = vec_fma(wv, xv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            float s = vec_sum(acc[r][c]);
            for (int kk = k; kk < I; kk++)
                s += w[r][kk] * x[c][kk];
            res[r * C + c] = s;
        }
}

/* The tile shapes, chosen so the accumulators, one weight vector and the input vectors fit in
 * the 16 vector registers of AVX2: 8 x 1 (one input row), 4 x 2 and 2 x 4. */
static void dot_8x1(const float *const *w, const float *const *x, int I, float *res) {
    dot_tile(8, 1, w, x, I, res);
}
static void dot_4x2(const float *const *w, const float *const *x, int I, float *res) {
    dot_tile(4, 2, w, x, I, res);
}
static void dot_2x4(const float *const *w, const float *const *x, int I, float *res) {
    dot_tile(2, 4, w, x, I, res);
}

/* One block of weight rows [o0, o1) against every input row. */
static void skinny_block(float *out, const float *inp, const float *weight, const float *bias,
                         int N, int I, int O, bool accumulate, int o0, int o1) {
    float res[8];
    for (int n0 = 0; n0 < N; n0 += 4) {
        const int nc = N - n0 < 4 ? N - n0 : 4;
        const int C = nc >= 3 ? 4 : nc;
        const int R = 8 / C;
        /* Missing input rows repeat the last real one; their results are dropped. */
        const float *x[4];
        for (int c = 0; c < C; c++)
            x[c] = inp + (size_t)(n0 + (c < nc ? c : nc - 1)) * I;
        for (int o = o0; o < o1; o += R) {
            const int nr = o1 - o < R ? o1 - o : R;
            const float *w[8];
            for (int r = 0; r < R; r++)
                w[r] = weight + (size_t)(o + (r < nr ? r : nr - 1)) * I;
            if (C == 1)
                dot_8x1(w, x, I, res);
            else if (C == 2)
                dot_4x2(w, x, I, res);
            else
                dot_2x4(w, x, I, res);
            for (int c = 0; c < nc; c++) {
                float *row = out + (size_t)(n0 + c) * O;
                for (int r = 0; r < nr; r++) {
                    float v = accumulate ? row[o + r] + res[r * C + c] : res[r * C + c];
                    if (bias != NULL) v += bias[o + r];
                    row[o + r] = v;
                }
            }
        }
    }
}

#if defined(__AVX2__) && defined(__FMA__)
/* 8 weight rows against 8 input rows stored k-major (xt[k * 8 + n]): for each k one vector of
 * the 8 inputs, times each weight broadcast, into one accumulator per weight row. No horizontal
 * sums, one load per FMA and no register spills, so it keeps the FMA units busy where the
 * dot-product tiles run out of load slots. Sums over k in order, one lane per input row. */
static void bcast_tile_8x8(const float *const *w, const float *xt, int I, float *res) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    const float *w0 = w[0], *w1 = w[1], *w2 = w[2], *w3 = w[3], *w4 = w[4], *w5 = w[5], *w6 = w[6],
                *w7 = w[7];
    for (int k = 0; k < I; k++) {
        const __m256 xv = _mm256_load_ps(xt + (size_t)k * 8);
        a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(w0 + k), xv, a0);
        a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(w1 + k), xv, a1);
        a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(w2 + k), xv, a2);
        a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(w3 + k), xv, a3);
        a4 = _mm256_fmadd_ps(_mm256_broadcast_ss(w4 + k), xv, a4);
        a5 = _mm256_fmadd_ps(_mm256_broadcast_ss(w5 + k), xv, a5);
        a6 = _mm256_fmadd_ps(_mm256_broadcast_ss(w6 + k), xv, a6);
        a7 = _mm256_fmadd_ps(_mm256_broadcast_ss(w7 + k), xv, a7);
    }
    _mm256_storeu_ps(res + 0, a0);
    _mm256_storeu_ps(res + 8, a1);
    _mm256_storeu_ps(res + 16, a2);
    _mm256_storeu_ps(res + 24, a3);
    _mm256_storeu_ps(res + 32, a4);
    _mm256_storeu_ps(res + 40, a5);
    _mm256_storeu_ps(res + 48, a6);
    _mm256_storeu_ps(res + 56, a7);
}

/* One block of 8 weight rows [o0, o1) against every group of 8 packed input rows. */
static void bcast_block(float *out, const float *xt, const float *weight, const float *bias, int N,
                        int I, int O, bool accumulate, int o0, int o1) {
    float res[64];
    const int nr = o1 - o0;
    const float *w[8];
    for (int r = 0; r < 8; r++) /* missing weight rows repeat the last one; dropped below */
        w[r] = weight + (size_t)(o0 + (r < nr ? r : nr - 1)) * I;
    for (int n0 = 0; n0 < N; n0 += 8) {
        bcast_tile_8x8(w, xt + (size_t)(n0 / 8) * I * 8, I, res);
        const int nc = N - n0 < 8 ? N - n0 : 8;
        for (int c = 0; c < nc; c++) {
            float *row = out + (size_t)(n0 + c) * O;
            for (int r = 0; r < nr; r++) {
                float v = accumulate ? row[o0 + r] + res[r * 8 + c] : res[r * 8 + c];
                if (bias != NULL) v += bias[o0 + r];
                row[o0 + r] = v;
            }
        }
    }
}

/* The broadcast kernel for MG_SKINNY_DOT_MAX_ROWS < N <= MG_SKINNY_MAX_ROWS. Returns false when
 * the packed inputs cannot be allocated (the caller then uses the dot-product tiles). */
static bool bcast_matmul_forward(float *out, const float *inp, const float *weight,
                                 const float *bias, int N, int I, int O, bool accumulate) {
    const int groups = (N + 7) / 8;
    const size_t floats = (size_t)groups * I * 8;
    float *xt = aligned_alloc(32, ((floats * sizeof(float) + 31) / 32) * 32);
    if (xt == NULL) return false;
    for (int g = 0; g < groups; g++) /* xt[g][k][n]: zero lanes past the last row */
        for (int k = 0; k < I; k++)
            for (int c = 0; c < 8; c++) {
                const int n = g * 8 + c;
                xt[((size_t)g * I + k) * 8 + c] = n < N ? inp[(size_t)n * I + k] : 0.0f;
            }
    const int blocks = (O + 7) / 8;
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS((long)O * I))
    for (int b = 0; b < blocks; b++) {
        const int o0 = b * 8;
        const int o1 = o0 + 8 < O ? o0 + 8 : O;
        bcast_block(out, xt, weight, bias, N, I, O, accumulate, o0, o1);
    }
    free(xt);
    return true;
}
#endif

void skinny_matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                           int N, int I, int O, bool accumulate) {
    if (N <= 0 || O <= 0) return;
#if defined(__AVX2__) && defined(__FMA__)
    if (N > MG_SKINNY_DOT_MAX_ROWS &&
        bcast_matmul_forward(out, inp, weight, bias, N, I, O, accumulate))
        return;
#endif
    const int blocks = (O + SKINNY_BLOCK_ROWS - 1) / SKINNY_BLOCK_ROWS;
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS((long)O * I))
    for (int b = 0; b < blocks; b++) {
        const int o0 = b * SKINNY_BLOCK_ROWS;
        const int o1 = o0 + SKINNY_BLOCK_ROWS < O ? o0 + SKINNY_BLOCK_ROWS : O;
        skinny_block(out, inp, weight, bias, N, I, O, accumulate, o0, o1);
    }
}
