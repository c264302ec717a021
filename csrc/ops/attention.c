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

/* Softmax of score[lo..hi] over the keys the rule lets this query see; everything else in
 * [0, Tk) becomes exactly 0. Returns 0 when no key is visible (padding queries). */
MG_EXP_LOOP static int masked_softmax_row(float *score, uint8_t role, int32_t seg, int q_index,
                                          const uint8_t *k_roles, const int32_t *k_seg, int lo,
                                          int hi, int Tk) {
    /* Masking and the maximum in separate loops: together they did not vectorise. */
    for (int j = lo; j <= hi; j++)
        score[j] = key_visible(role, seg, q_index, k_roles[j], k_seg[j], j) ? score[j] : -INFINITY;
    float mx = -INFINITY;
    for (int j = lo; j <= hi; j++)
        mx = score[j] > mx ? score[j] : mx;
    if (seg < 0 || mx == -INFINITY) {
        memset(score, 0, sizeof(float) * Tk);
        return 0;
    }
    /* The exponentials in one vectorised loop, then the sum in order (a float sum cannot be
     * reordered without changing its rounding). */
    for (int j = lo; j <= hi; j++) { /* hidden keys (-inf) get exactly 0, without a branch */
        const float sc = score[j];
        score[j] = mg_expf(sc - mx) * (float)(sc != -INFINITY);
    }
    float sum = 0.0f;
    for (int j = lo; j <= hi; j++)
        sum += score[j];
    const float inv = 1.0f / sum;
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

/* Scores of ATT_GROUP (pre-scaled) queries against keys lo..hi of one row: a [4, 16] block of
 * accumulators stays in registers while the loop runs down the head dimension of the
 * transposed keys, so each key value is loaded once per group and each score stored once. */
static void group_scores(float *sc, float qs[ATT_GROUP][MG_ATT_MAX_HD], const float *kt, int hd,
                         int Tk, int lo, int hi) {
    int j0 = lo;
#if MG_ATT_SIMD
    /* The same sums in the same order as the portable loop below, with the eight accumulators,
     * two key vectors and a broadcast in registers (GCC spilled the array version and
     * reloaded the keys once per query). */
    for (; j0 + 16 <= hi + 1; j0 += 16) {
        __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
               a30 = a00, a31 = a00;
        for (int d = 0; d < hd; d++) {
            const float *kr = kt + (long)d * Tk + j0;
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
        _mm256_storeu_ps(o + Tk, a10);
        _mm256_storeu_ps(o + Tk + 8, a11);
        _mm256_storeu_ps(o + 2L * Tk, a20);
        _mm256_storeu_ps(o + 2L * Tk + 8, a21);
        _mm256_storeu_ps(o + 3L * Tk, a30);
        _mm256_storeu_ps(o + 3L * Tk + 8, a31);
    }
#else
    for (; j0 + 16 <= hi + 1; j0 += 16) {
        float acc[ATT_GROUP][16] = {{0}};
        for (int d = 0; d < hd; d++) {
            const float *kr = kt + (long)d * Tk + j0;
            for (int r = 0; r < ATT_GROUP; r++) {
                const float a = qs[r][d];
                for (int jj = 0; jj < 16; jj++)
                    acc[r][jj] += a * kr[jj];
            }
        }
        for (int r = 0; r < ATT_GROUP; r++)
            memcpy(sc + (long)r * Tk + j0, acc[r], sizeof(acc[r]));
    }
#endif
    for (int j = j0; j <= hi; j++) {
        for (int r = 0; r < ATT_GROUP; r++) {
            float acc = 0.0f;
            for (int d = 0; d < hd; d++)
                acc += qs[r][d] * kt[(long)d * Tk + j];
            sc[(long)r * Tk + j] = acc;
        }
    }
}

/* acc[r][dd] = sum_j w[r][j] rows[j][d0 + dd] for nd <= 16 dims and the group's four weight
 * rows (w[r] at w + r * Tk), keys lo..hi in order. A full block of 16 runs in AVX2 registers. */
static inline void group_weighted(float acc[ATT_GROUP][16], const float *w, const float *rows,
                                  long row_stride, int d0, int nd, int Tk, int lo, int hi) {
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
            b = _mm256_broadcast_ss(w + Tk + j);
            a10 = _mm256_fmadd_ps(b, x0, a10);
            a11 = _mm256_fmadd_ps(b, x1, a11);
            b = _mm256_broadcast_ss(w + 2L * Tk + j);
            a20 = _mm256_fmadd_ps(b, x0, a20);
            a21 = _mm256_fmadd_ps(b, x1, a21);
            b = _mm256_broadcast_ss(w + 3L * Tk + j);
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
        const float w0 = w[j], w1 = w[Tk + j], w2 = w[2L * Tk + j], w3 = w[3L * Tk + j];
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
                          long kv_row, int hd, int Tk, int lo, int hi, int nq) {
    float acc[ATT_GROUP][16];
    for (int d0 = 0; d0 < hd; d0 += 16) {
        const int nd = hd - d0 < 16 ? hd - d0 : 16;
        group_weighted(acc, sc, v, kv_row, d0, nd, Tk, lo, hi);
        for (int r = 0; r < nq; r++)
            for (int dd = 0; dd < nd; dd++)
                og[r][d0 + dd] = live[r] ? acc[r][dd] : 0.0f;
    }
}

/* Two phases. First K is transposed per (row, kv head) to [hd, Tk], so that scores for a group
 * of ATT_GROUP queries are axpy updates along contiguous keys (vectorised FMA, each key row
 * loaded once for the group). Then each query's probabilities weight V rows into its output.
 * No T x T array exists: a thread holds only its group's [ATT_GROUP, Tk] scores. */
void attention_forward(float *out, const float *q, const float *k, const float *v,
                       const uint8_t *q_roles, const int32_t *q_seg, const uint8_t *k_roles,
                       const int32_t *k_seg, attention_shape s, float *scratch) {
    const int group = s.Hq / s.Hkv, hd = s.hd, Tk = s.Tk;
    const float scale = 1.0f / sqrtf((float)hd);
    const long q_row = (long)s.Hq * hd, kv_row = (long)s.Hkv * hd;
    const int n_groups = (s.Tq + ATT_GROUP - 1) / ATT_GROUP;
    float *kT = scratch;
    float *scores = scratch + (long)s.B * s.Hkv * hd * Tk;
#pragma omp parallel if (MG_WORTH_THREADS((long)s.B * s.Hq * s.Tq * Tk * hd))
    {
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < s.B; b++)
            for (int kh = 0; kh < s.Hkv; kh++) {
                float *dst = kT + ((long)b * s.Hkv + kh) * hd * Tk;
                for (int j = 0; j < Tk; j++) {
                    const float *src = k + ((long)b * s.kv_stride + j) * kv_row + (long)kh * hd;
                    for (int d = 0; d < hd; d++)
                        dst[(long)d * Tk + j] = src[d];
                }
            }
        float *sc = scores + (long)omp_get_thread_num() * ATT_GROUP * Tk;
#pragma omp for collapse(3) schedule(dynamic, 1)
        for (int b = 0; b < s.B; b++) {
            for (int h = 0; h < s.Hq; h++) {
                for (int g = 0; g < n_groups; g++) {
                    const int i0 = g * ATT_GROUP;
                    const int nq = s.Tq - i0 < ATT_GROUP ? s.Tq - i0 : ATT_GROUP;
                    const long k0 = (long)b * s.kv_stride;
                    const int kh = h / group;
                    int lo, last_ctx;
                    row_key_bounds(k_seg + k0, k_roles + k0, Tk, &lo, &last_ctx);
                    int hi = s.q_start + i0 + nq - 1;
                    if (last_ctx > hi) hi = last_ctx;
                    if (hi > Tk - 1) hi = Tk - 1;
                    const float *kt = kT + ((long)b * s.Hkv + kh) * hd * Tk;
                    float qs[ATT_GROUP][MG_ATT_MAX_HD];
                    for (int r = 0; r < ATT_GROUP; r++) {
                        const int rr = r < nq ? r : nq - 1;
                        const float *qv = q + ((long)b * s.Tq + i0 + rr) * q_row + (long)h * hd;
                        for (int d = 0; d < hd; d++)
                            qs[r][d] = qv[d] * scale;
                    }
                    group_scores(sc, qs, kt, hd, Tk, lo, hi);
                    float *og[ATT_GROUP];
                    int live[ATT_GROUP];
                    for (int r = 0; r < ATT_GROUP; r++) {
                        const int rr = r < nq ? r : nq - 1;
                        const long qi = (long)b * s.Tq + i0 + rr;
                        og[r] = out + qi * q_row + (long)h * hd;
                        live[r] = r < nq && lo <= hi &&
                                  masked_softmax_row(sc + (long)r * Tk, q_roles[qi], q_seg[qi],
                                                     s.q_start + i0 + r, k_roles + k0, k_seg + k0,
                                                     lo, hi, Tk);
                        if (!live[r]) memset(sc + (long)r * Tk, 0, sizeof(float) * Tk);
                    }
                    group_outputs(og, live, sc, v + k0 * kv_row + (long)kh * hd, kv_row, hd, Tk, lo,
                                  hi, nq);
                }
            }
        }
    }
}

/* dst[r] += sum_j w[r][j] rows[j] for the first nq queries of a group, rows[j] at stride
 * row_stride: a [4, 16] block of accumulators stays in registers while the rows stream by. */
static void group_accumulate(float *dst[ATT_GROUP], const float *w, const float *rows,
                             long row_stride, int hd, int Tk, int lo, int hi, int nq) {
    float acc[ATT_GROUP][16];
    for (int d0 = 0; d0 < hd; d0 += 16) {
        const int nd = hd - d0 < 16 ? hd - d0 : 16;
        group_weighted(acc, w, rows, row_stride, d0, nd, Tk, lo, hi);
        for (int r = 0; r < nq; r++)
            for (int dd = 0; dd < nd; dd++)
                dst[r][d0 + dd] += acc[r][dd];
    }
}

/* rows[j] += sum_r w[r][j] src[r] for keys lo..hi (a rank-4 update of dK or dV rows). */
static void group_scatter(float *rows, long row_stride, const float *w, const float *src[ATT_GROUP],
                          int hd, int Tk, int lo, int hi) {
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
            const float w0 = w[j], w1 = w[Tk + j], w2 = w[2L * Tk + j], w3 = w[3L * Tk + j];
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
        const float w0 = w[j], w1 = w[Tk + j], w2 = w[2L * Tk + j], w3 = w[3L * Tk + j];
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
    const size_t per_thread = 2 * (size_t)hd * Tk + 2 * (size_t)ATT_GROUP * Tk;
#pragma omp parallel
    {
        float *kt = scratch + (size_t)omp_get_thread_num() * per_thread;
        float *vt = kt + (size_t)hd * Tk;
        float *pr = vt + (size_t)hd * Tk;        /* [ATT_GROUP, Tk] probabilities */
        float *ds = pr + (size_t)ATT_GROUP * Tk; /* [ATT_GROUP, Tk] dP, then scale * dS */
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
                        kt[(long)d * Tk + j] = kb[(long)j * kv_row + d];
                        vt[(long)d * Tk + j] = vb[(long)j * kv_row + d];
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
                        group_scores(pr, qs, kt, hd, Tk, lo, hi);
                        group_scores(ds, gs, vt, hd, Tk, lo, hi);
                        for (int r = 0; r < ATT_GROUP; r++) {
                            const long qi = (long)b * s.Tq + i0 + (r < nq ? r : nq - 1);
                            float *p = pr + (long)r * Tk, *dp = ds + (long)r * Tk;
                            const int live =
                                r < nq &&
                                masked_softmax_row(p, q_roles[qi], q_seg[qi], s.q_start + i0 + r,
                                                   k_roles + k0, k_seg + k0, lo, hi, Tk);
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
                        if (dq != NULL) group_accumulate(dqv, ds, kb, kv_row, hd, Tk, lo, hi, nq);
                        if (dkb != NULL) group_scatter(dkb, kv_row, ds, qv, hd, Tk, lo, hi);
                        if (dvb != NULL) group_scatter(dvb, kv_row, pr, gv, hd, Tk, lo, hi);
                    }
                }
            }
        }
    }
}
