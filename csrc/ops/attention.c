#include "attention.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "../core/parallel.h"
#include "fast_exp.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MG_ATT_SIMD 1 /* register-blocked AVX2 kernels (same sums, same order) */
#else
#define MG_ATT_SIMD 0
#endif

/* The unified rule for one (query, key) pair, branch-free so the loops over keys vectorise. */
static inline int key_visible(uint8_t q_role, int32_t q_seg, int q_index, uint8_t k_role,
                              int32_t k_seg, int k_index) {
    return (k_seg == q_seg) &
           ((k_role == MG_ROLE_CONTEXT) | ((q_role == MG_ROLE_SPAN) & (k_index <= q_index)));
}

/* The largest of x[0, n) (-inf for n = 0). A maximum is exact in any order, so the AVX2 loop
 * gives the portable loop's result; GCC kept that loop scalar (a chain of vmaxss), and it took
 * a third of the softmax's time. */
static inline float max_of(const float *x, int n) {
    float mx = -INFINITY;
    int i = 0;
#if MG_ATT_SIMD
    if (n >= 8) {
        __m256 m = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8)
            m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
        mx = _mm_cvtss_f32(h);
    }
#endif
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    return mx;
}

/* The sum of x[0, n) in a fixed order: eight partial sums (p[k] takes x[k], x[k + 8], ...),
 * then (p0 + p4) + (p2 + p6) and (p1 + p5) + (p3 + p7), and those two. The AVX2 loop and the
 * portable one add the same numbers in the same order, so they agree bit for bit; a single
 * running sum was a chain of dependent adds, a fifth of the softmax's time. */
static inline float sum_of(const float *x, int n) {
    float p[8] = {0};
    int i = 0;
#if MG_ATT_SIMD
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8)
        acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + i));
    _mm256_storeu_ps(p, acc);
#endif
    for (; i < n; i++)
        p[i % 8] += x[i];
    const float s0 = p[0] + p[4], s1 = p[1] + p[5], s2 = p[2] + p[6], s3 = p[3] + p[7];
    return (s0 + s2) + (s1 + s3);
}

/* Softmax of score[lo..hi] over the keys the rule lets this query see; the hidden ones among
 * them become exactly 0. Returns 0, with score[0, len) cleared, when no key is visible (padding
 * queries). */
MG_EXP_LOOP static int masked_softmax_row(float *score, uint8_t role, int32_t seg, int q_index,
                                          const uint8_t *k_roles, const int32_t *k_seg, int lo,
                                          int hi, int len) {
    /* Masking and the maximum in separate loops: together they did not vectorise. */
    for (int j = lo; j <= hi; j++)
        score[j] = key_visible(role, seg, q_index, k_roles[j], k_seg[j], j) ? score[j] : -INFINITY;
    const float mx = max_of(score + lo, hi - lo + 1);
    if (seg < 0 || mx == -INFINITY) {
        memset(score, 0, sizeof(float) * len);
        return 0;
    }
    for (int j = lo; j <= hi; j++) { /* hidden keys (-inf) get exactly 0, without a branch */
        const float sc = score[j];
        score[j] = mg_expf(sc - mx) * (float)(sc != -INFINITY);
    }
    const float inv = 1.0f / sum_of(score + lo, hi - lo + 1);
    for (int j = lo; j <= hi; j++)
        score[j] *= inv;
    return 1;
}

/* Keys a row can ever show: from its first non-padding key to the last CONTEXT key, or further
 * for span queries (which see span keys up to themselves). Lets causal rows skip the future. */
static void row_key_bounds(const int32_t *k_seg, const uint8_t *k_roles, int Tk, int *first,
                           int *last_context) {
    *first = Tk;
    *last_context = -1;
    for (int j = 0; j < Tk; j++) {
        if (k_seg[j] < 0) continue;
        if (j < *first) *first = j;
        if (k_roles[j] == MG_ROLE_CONTEXT) *last_context = j;
    }
}

/* Scores of ATT_GROUP (pre-scaled) queries against keys lo..hi of one row, in whole blocks of
 * ATT_KEY_BLOCK keys, from the block holding lo to the block holding hi: the transposed keys and
 * the score rows (both ld = ATT_PADDED_KEYS(Tk) floats apart) are long enough for those blocks,
 * and the scores outside lo..hi are never read. A [4, 16] block of accumulators stays in
 * registers while the loop runs down the head dimension, so each key value is loaded once per
 * group and each score stored once. */
static void group_scores(float *sc, float qs[ATT_GROUP][MG_ATT_MAX_HD], const float *kt, int hd,
                         int ld, int lo, int hi) {
    _Static_assert(ATT_KEY_BLOCK == 16, "the kernels below are written for 16-key blocks");
    if (lo > hi) return;
    for (int j0 = lo / ATT_KEY_BLOCK * ATT_KEY_BLOCK; j0 <= hi; j0 += ATT_KEY_BLOCK) {
#if MG_ATT_SIMD
        /* The same sums in the same order as the portable loop below, with the eight
         * accumulators, two key vectors and a broadcast in registers (GCC spilled the array
         * version and reloaded the keys once per query). */
        __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
               a30 = a00, a31 = a00;
        for (int d = 0; d < hd; d++) {
            const float *kr = kt + (long)d * ld + j0;
            const __m256 k0 = _mm256_loadu_ps(kr), k1 = _mm256_loadu_ps(kr + 8);
            __m256 b = _mm256_broadcast_ss(&qs[0][d]);
            a00 = _mm256_fmadd_ps(b, k0, a00);
            a01 = _mm256_fmadd_ps(b, k1, a01);
            b = _mm256_broadcast_ss(&qs[1][d]);
            a10 = _mm256_fmadd_ps(b, k0, a10);
            a11 = _mm256_fmadd_ps(b, k1, a11);
            b = _mm256_broadcast_ss(&qs[2][d]);
            a20 = _mm256_fmadd_ps(b, k0, a20);
            a21 = _mm256_fmadd_ps(b, k1, a21);
            b = _mm256_broadcast_ss(&qs[3][d]);
            a30 = _mm256_fmadd_ps(b, k0, a30);
            a31 = _mm256_fmadd_ps(b, k1, a31);
        }
        float *o = sc + j0;
        _mm256_storeu_ps(o, a00);
        _mm256_storeu_ps(o + 8, a01);
        _mm256_storeu_ps(o + ld, a10);
        _mm256_storeu_ps(o + ld + 8, a11);
        _mm256_storeu_ps(o + 2L * ld, a20);
        _mm256_storeu_ps(o + 2L * ld + 8, a21);
        _mm256_storeu_ps(o + 3L * ld, a30);
        _mm256_storeu_ps(o + 3L * ld + 8, a31);
#else
        float acc[ATT_GROUP][16] = {{0}};
        for (int d = 0; d < hd; d++) {
            const float *kr = kt + (long)d * ld + j0;
            for (int r = 0; r < ATT_GROUP; r++) {
                const float a = qs[r][d];
                for (int jj = 0; jj < 16; jj++)
                    acc[r][jj] += a * kr[jj];
            }
        }
        for (int r = 0; r < ATT_GROUP; r++)
            memcpy(sc + (long)r * ld + j0, acc[r], sizeof(acc[r]));
#endif
    }
}

/* acc[r][dd] = sum_j w[r][j] rows[j][d0 + dd] for nd <= 16 dims and the group's four weight
 * rows (w[r] at w + r * ld), keys lo..hi in order. A full block of 16 runs in AVX2 registers. */
static inline void group_weighted(float acc[ATT_GROUP][16], const float *w, const float *rows,
                                  long row_stride, int d0, int nd, int ld, int lo, int hi) {
#if MG_ATT_SIMD
    if (nd == 16) {
        __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
               a30 = a00, a31 = a00;
        for (int j = lo; j <= hi; j++) {
            const float *x = rows + (long)j * row_stride + d0;
            const __m256 x0 = _mm256_loadu_ps(x), x1 = _mm256_loadu_ps(x + 8);
            __m256 b = _mm256_broadcast_ss(w + j);
            a00 = _mm256_fmadd_ps(b, x0, a00);
            a01 = _mm256_fmadd_ps(b, x1, a01);
            b = _mm256_broadcast_ss(w + ld + j);
            a10 = _mm256_fmadd_ps(b, x0, a10);
            a11 = _mm256_fmadd_ps(b, x1, a11);
            b = _mm256_broadcast_ss(w + 2L * ld + j);
            a20 = _mm256_fmadd_ps(b, x0, a20);
            a21 = _mm256_fmadd_ps(b, x1, a21);
            b = _mm256_broadcast_ss(w + 3L * ld + j);
            a30 = _mm256_fmadd_ps(b, x0, a30);
            a31 = _mm256_fmadd_ps(b, x1, a31);
        }
        _mm256_storeu_ps(acc[0], a00);
        _mm256_storeu_ps(acc[0] + 8, a01);
        _mm256_storeu_ps(acc[1], a10);
        _mm256_storeu_ps(acc[1] + 8, a11);
        _mm256_storeu_ps(acc[2], a20);
        _mm256_storeu_ps(acc[2] + 8, a21);
        _mm256_storeu_ps(acc[3], a30);
        _mm256_storeu_ps(acc[3] + 8, a31);
        return;
    }
#endif
    memset(acc, 0, sizeof(float) * ATT_GROUP * 16);
    for (int j = lo; j <= hi; j++) {
        const float *x = rows + (long)j * row_stride + d0;
        const float w0 = w[j], w1 = w[ld + j], w2 = w[2L * ld + j], w3 = w[3L * ld + j];
        for (int dd = 0; dd < nd; dd++) {
            acc[0][dd] += w0 * x[dd];
            acc[1][dd] += w1 * x[dd];
            acc[2][dd] += w2 * x[dd];
            acc[3][dd] += w3 * x[dd];
        }
    }
}

/* out[r] = sum_j p[r][j] v[j] for the group: accumulators for 4 queries x 16 dims stay in
 * registers while the keys stream by, so each V row is loaded once per group and block. */
static void group_outputs(float *og[ATT_GROUP], const int *live, const float *sc, const float *v,
                          long kv_row, int hd, int ld, int lo, int hi, int nq) {
    float acc[ATT_GROUP][16];
    for (int d0 = 0; d0 < hd; d0 += 16) {
        const int nd = hd - d0 < 16 ? hd - d0 : 16;
        group_weighted(acc, sc, v, kv_row, d0, nd, ld, lo, hi);
        for (int r = 0; r < nq; r++)
            for (int dd = 0; dd < nd; dd++)
                og[r][d0 + dd] = live[r] ? acc[r][dd] : 0.0f;
    }
}

/* Two phases. First K is transposed per (row, kv head) to [hd, ld], so that scores for a group
 * of ATT_GROUP queries are axpy updates along contiguous keys (vectorised FMA, each key row
 * loaded once for the group). Then each query's probabilities weight V rows into its output.
 * No T x T array exists: a thread holds only its group's [ATT_GROUP, ld] scores (ld: Tk rounded
 * up to whole key blocks). */
void attention_forward(float *out, const float *q, const float *k, const float *v,
                       const uint8_t *q_roles, const int32_t *q_seg, const uint8_t *k_roles,
                       const int32_t *k_seg, attention_shape s, float *scratch) {
    const int group = s.Hq / s.Hkv, hd = s.hd, Tk = s.Tk;
    const float scale = 1.0f / sqrtf((float)hd);
    const long q_row = (long)s.Hq * hd, kv_row = (long)s.Hkv * hd;
    const int n_groups = (s.Tq + ATT_GROUP - 1) / ATT_GROUP;
    const int ld = (int)ATT_PADDED_KEYS(Tk);
    float *kT = scratch;
    float *scores = scratch + (long)s.B * s.Hkv * hd * ld;
#pragma omp parallel if (MG_WORTH_THREADS((long)s.B * s.Hq * s.Tq * Tk * hd))
    {
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < s.B; b++)
            for (int kh = 0; kh < s.Hkv; kh++) {
                float *dst = kT + ((long)b * s.Hkv + kh) * hd * ld;
                for (int j = 0; j < Tk; j++) {
                    const float *src = k + ((long)b * s.kv_stride + j) * kv_row + (long)kh * hd;
                    for (int d = 0; d < hd; d++)
                        dst[(long)d * ld + j] = src[d];
                }
                for (int d = 0; d < hd; d++) /* the last block's keys past Tk */
                    memset(dst + (long)d * ld + Tk, 0, sizeof(float) * (ld - Tk));
            }
        float *sc = scores + (long)omp_get_thread_num() * ATT_GROUP * ld;
        /* a row's key bounds, kept while this thread's work items stay in the same row (the
         * scan over its keys is as long as a short row's attention) */
        int bounds_row = -1, lo = 0, last_ctx = -1;
#pragma omp for collapse(3) schedule(dynamic, 1)
        for (int b = 0; b < s.B; b++) {
            for (int h = 0; h < s.Hq; h++) {
                for (int g = 0; g < n_groups; g++) {
                    const int i0 = g * ATT_GROUP;
                    const int nq = s.Tq - i0 < ATT_GROUP ? s.Tq - i0 : ATT_GROUP;
                    const long k0 = (long)b * s.kv_stride;
                    const int kh = h / group;
                    if (b != bounds_row) {
                        row_key_bounds(k_seg + k0, k_roles + k0, Tk, &lo, &last_ctx);
                        bounds_row = b;
                    }
                    int hi = s.q_start + i0 + nq - 1;
                    if (last_ctx > hi) hi = last_ctx;
                    if (hi > Tk - 1) hi = Tk - 1;
                    const float *kt = kT + ((long)b * s.Hkv + kh) * hd * ld;
                    float qs[ATT_GROUP][MG_ATT_MAX_HD];
                    for (int r = 0; r < ATT_GROUP; r++) {
                        const int rr = r < nq ? r : nq - 1;
                        const float *qv = q + ((long)b * s.Tq + i0 + rr) * q_row + (long)h * hd;
                        for (int d = 0; d < hd; d++)
                            qs[r][d] = qv[d] * scale;
                    }
                    group_scores(sc, qs, kt, hd, ld, lo, hi);
                    float *og[ATT_GROUP];
                    int live[ATT_GROUP];
                    for (int r = 0; r < ATT_GROUP; r++) {
                        const int rr = r < nq ? r : nq - 1;
                        const long qi = (long)b * s.Tq + i0 + rr;
                        og[r] = out + qi * q_row + (long)h * hd;
                        live[r] = r < nq && lo <= hi &&
                                  masked_softmax_row(sc + (long)r * ld, q_roles[qi], q_seg[qi],
                                                     s.q_start + i0 + r, k_roles + k0, k_seg + k0,
                                                     lo, hi, ld);
                        if (!live[r]) memset(sc + (long)r * ld, 0, sizeof(float) * ld);
                    }
                    group_outputs(og, live, sc, v + k0 * kv_row + (long)kh * hd, kv_row, hd, ld, lo,
                                  hi, nq);
                }
            }
        }
    }
}

/* dst[r] += sum_j w[r][j] rows[j] for the first nq queries of a group, rows[j] at stride
 * row_stride: a [4, 16] block of accumulators stays in registers while the rows stream by. */
static void group_accumulate(float *dst[ATT_GROUP], const float *w, const float *rows,
                             long row_stride, int hd, int ld, int lo, int hi, int nq) {
    float acc[ATT_GROUP][16];
    for (int d0 = 0; d0 < hd; d0 += 16) {
        const int nd = hd - d0 < 16 ? hd - d0 : 16;
        group_weighted(acc, w, rows, row_stride, d0, nd, ld, lo, hi);
        for (int r = 0; r < nq; r++)
            for (int dd = 0; dd < nd; dd++)
                dst[r][d0 + dd] += acc[r][dd];
    }
}

/* rows[j] += sum_r w[r][j] src[r] for keys lo..hi (a rank-4 update of dK or dV rows), w[r] at
 * w + r * ld. */
static void group_scatter(float *rows, long row_stride, const float *w, const float *src[ATT_GROUP],
                          int hd, int ld, int lo, int hi) {
    const float *s0 = src[0], *s1 = src[1], *s2 = src[2], *s3 = src[3];
    int d0 = 0;
#if MG_ATT_SIMD
    /* 16 dims at a time: the four source rows' slices stay in registers for every key. */
    for (; d0 + 16 <= hd; d0 += 16) {
        const __m256 s00 = _mm256_loadu_ps(s0 + d0), s01 = _mm256_loadu_ps(s0 + d0 + 8);
        const __m256 s10 = _mm256_loadu_ps(s1 + d0), s11 = _mm256_loadu_ps(s1 + d0 + 8);
        const __m256 s20 = _mm256_loadu_ps(s2 + d0), s21 = _mm256_loadu_ps(s2 + d0 + 8);
        const __m256 s30 = _mm256_loadu_ps(s3 + d0), s31 = _mm256_loadu_ps(s3 + d0 + 8);
        for (int j = lo; j <= hi; j++) {
            const float w0 = w[j], w1 = w[ld + j], w2 = w[2L * ld + j], w3 = w[3L * ld + j];
            if (w0 == 0.0f && w1 == 0.0f && w2 == 0.0f && w3 == 0.0f) continue;
            const __m256 b0 = _mm256_set1_ps(w0), b1 = _mm256_set1_ps(w1), b2 = _mm256_set1_ps(w2),
                         b3 = _mm256_set1_ps(w3);
            float *x = rows + (long)j * row_stride + d0;
            __m256 t0 = _mm256_mul_ps(b0, s00), t1 = _mm256_mul_ps(b0, s01);
            t0 = _mm256_fmadd_ps(b1, s10, t0);
            t1 = _mm256_fmadd_ps(b1, s11, t1);
            t0 = _mm256_fmadd_ps(b2, s20, t0);
            t1 = _mm256_fmadd_ps(b2, s21, t1);
            t0 = _mm256_fmadd_ps(b3, s30, t0);
            t1 = _mm256_fmadd_ps(b3, s31, t1);
            _mm256_storeu_ps(x, _mm256_add_ps(_mm256_loadu_ps(x), t0));
            _mm256_storeu_ps(x + 8, _mm256_add_ps(_mm256_loadu_ps(x + 8), t1));
        }
    }
#endif
    if (d0 >= hd) return;
    for (int j = lo; j <= hi; j++) {
        const float w0 = w[j], w1 = w[ld + j], w2 = w[2L * ld + j], w3 = w[3L * ld + j];
        if (w0 == 0.0f && w1 == 0.0f && w2 == 0.0f && w3 == 0.0f) continue;
        float *x = rows + (long)j * row_stride;
        for (int d = d0; d < hd; d++)
            x[d] += w0 * s0[d] + w1 * s1[d] + w2 * s2[d] + w3 * s3[d];
    }
}

void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                        const float *k, const float *v, const uint8_t *q_roles,
                        const int32_t *q_seg, const uint8_t *k_roles, const int32_t *k_seg,
                        attention_shape s, float *scratch) {
    const int group = s.Hq / s.Hkv, hd = s.hd, Tk = s.Tk;
    const float scale = 1.0f / sqrtf((float)hd);
    const long q_row = (long)s.Hq * hd, kv_row = (long)s.Hkv * hd;
    const int n_groups = (s.Tq + ATT_GROUP - 1) / ATT_GROUP;
    const int ld = (int)ATT_PADDED_KEYS(Tk);
    const size_t per_thread = (2 * (size_t)hd + 2 * (size_t)ATT_GROUP) * ld;
#pragma omp parallel
    {
        float *kt = scratch + (size_t)omp_get_thread_num() * per_thread;
        float *vt = kt + (size_t)hd * ld;
        float *pr = vt + (size_t)hd * ld;        /* [ATT_GROUP, ld] probabilities */
        float *ds = pr + (size_t)ATT_GROUP * ld; /* [ATT_GROUP, ld] dP, then scale * dS */
#pragma omp for collapse(2) schedule(dynamic, 1)
        for (int b = 0; b < s.B; b++) {
            for (int kh = 0; kh < s.Hkv; kh++) {
                const long k0 = (long)b * s.kv_stride;
                int lo, last_ctx;
                row_key_bounds(k_seg + k0, k_roles + k0, Tk, &lo, &last_ctx);
                if (lo >= Tk) continue; /* an all-padding row has no gradient */
                const float *kb = k + k0 * kv_row + (long)kh * hd;
                const float *vb = v + k0 * kv_row + (long)kh * hd;
                for (int j = lo; j < Tk; j++)
                    for (int d = 0; d < hd; d++) {
                        kt[(long)d * ld + j] = kb[(long)j * kv_row + d];
                        vt[(long)d * ld + j] = vb[(long)j * kv_row + d];
                    }
                /* the score blocks also cover the keys before lo in lo's block and past Tk in
                 * the last: zeros, so that no stale or uninitialised value is ever used */
                const int lo_block = lo / ATT_KEY_BLOCK * ATT_KEY_BLOCK;
                for (int d = 0; d < hd; d++) {
                    memset(kt + (long)d * ld + lo_block, 0, sizeof(float) * (lo - lo_block));
                    memset(vt + (long)d * ld + lo_block, 0, sizeof(float) * (lo - lo_block));
                    memset(kt + (long)d * ld + Tk, 0, sizeof(float) * (ld - Tk));
                    memset(vt + (long)d * ld + Tk, 0, sizeof(float) * (ld - Tk));
                }
                float *dkb = dk != NULL ? dk + k0 * kv_row + (long)kh * hd : NULL;
                float *dvb = dv != NULL ? dv + k0 * kv_row + (long)kh * hd : NULL;
                for (int h = kh * group; h < (kh + 1) * group; h++) {
                    for (int g = 0; g < n_groups; g++) {
                        const int i0 = g * ATT_GROUP;
                        const int nq = s.Tq - i0 < ATT_GROUP ? s.Tq - i0 : ATT_GROUP;
                        int hi = s.q_start + i0 + nq - 1;
                        if (last_ctx > hi) hi = last_ctx;
                        if (hi > Tk - 1) hi = Tk - 1;
                        if (lo > hi) continue;
                        float qs[ATT_GROUP][MG_ATT_MAX_HD], gs[ATT_GROUP][MG_ATT_MAX_HD];
                        const float *qv[ATT_GROUP], *gv[ATT_GROUP];
                        float *dqv[ATT_GROUP];
                        for (int r = 0; r < ATT_GROUP; r++) {
                            const int rr = r < nq ? r : nq - 1;
                            const long off = ((long)b * s.Tq + i0 + rr) * q_row + (long)h * hd;
                            qv[r] = q + off;
                            gv[r] = dout + off;
                            dqv[r] = dq != NULL ? dq + off : NULL;
                            for (int d = 0; d < hd; d++) {
                                qs[r][d] = qv[r][d] * scale;
                                gs[r][d] = gv[r][d];
                            }
                        }
                        group_scores(pr, qs, kt, hd, ld, lo, hi);
                        group_scores(ds, gs, vt, hd, ld, lo, hi);
                        for (int r = 0; r < ATT_GROUP; r++) {
                            const long qi = (long)b * s.Tq + i0 + (r < nq ? r : nq - 1);
                            float *p = pr + (long)r * ld, *dp = ds + (long)r * ld;
                            const int live =
                                r < nq &&
                                masked_softmax_row(p, q_roles[qi], q_seg[qi], s.q_start + i0 + r,
                                                   k_roles + k0, k_seg + k0, lo, hi, ld);
                            if (!live) {
                                memset(p + lo, 0, sizeof(float) * (hi - lo + 1));
                                memset(dp + lo, 0, sizeof(float) * (hi - lo + 1));
                                continue;
                            }
                            float di = 0.0f;
                            for (int j = lo; j <= hi; j++)
                                di += p[j] * dp[j];
                            for (int j = lo; j <= hi; j++)
                                dp[j] = p[j] * (dp[j] - di) * scale;
                        }
                        if (dq != NULL) group_accumulate(dqv, ds, kb, kv_row, hd, ld, lo, hi, nq);
                        if (dkb != NULL) group_scatter(dkb, kv_row, ds, qv, hd, ld, lo, hi);
                        if (dvb != NULL) group_scatter(dvb, kv_row, pr, gv, hd, ld, lo, hi);
                    }
                }
            }
        }
    }
}
