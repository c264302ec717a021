#include "attention.h"

#include <math.h>
#include <omp.h>
#include <string.h>

#include "fast_exp.h"

static inline int key_visible(uint8_t q_role, int32_t q_seg, int q_index, uint8_t k_role,
                              int32_t k_seg, int k_index) {
    if (k_seg != q_seg) return 0;
    return k_role == MG_ROLE_CONTEXT || (q_role == MG_ROLE_SPAN && k_index <= q_index);
}

/* Softmax of score[lo..hi] over the keys the rule lets this query see; everything else in
 * [0, Tk) becomes exactly 0. Returns 0 when no key is visible (padding queries). */
static int masked_softmax_row(float *score, uint8_t role, int32_t seg, int q_index,
                              const uint8_t *k_roles, const int32_t *k_seg, int lo, int hi,
                              int Tk) {
    float mx = -INFINITY;
    for (int j = lo; j <= hi; j++) {
        if (!key_visible(role, seg, q_index, k_roles[j], k_seg[j], j))
            score[j] = -INFINITY;
        else if (score[j] > mx)
            mx = score[j];
    }
    if (seg < 0 || mx == -INFINITY) {
        memset(score, 0, sizeof(float) * Tk);
        return 0;
    }
    float sum = 0.0f;
    for (int j = lo; j <= hi; j++) {
        float p = score[j] == -INFINITY ? 0.0f : mg_expf(score[j] - mx);
        score[j] = p;
        sum += p;
    }
    const float inv = 1.0f / sum;
    for (int j = lo; j <= hi; j++) score[j] *= inv;
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
    for (; j0 + 16 <= hi + 1; j0 += 16) {
        float acc[ATT_GROUP][16] = {{0}};
        for (int d = 0; d < hd; d++) {
            const float *kr = kt + (long)d * Tk + j0;
            for (int r = 0; r < ATT_GROUP; r++) {
                const float a = qs[r][d];
                for (int jj = 0; jj < 16; jj++) acc[r][jj] += a * kr[jj];
            }
        }
        for (int r = 0; r < ATT_GROUP; r++) memcpy(sc + (long)r * Tk + j0, acc[r], sizeof(acc[r]));
    }
    for (int j = j0; j <= hi; j++) {
        for (int r = 0; r < ATT_GROUP; r++) {
            float acc = 0.0f;
            for (int d = 0; d < hd; d++) acc += qs[r][d] * kt[(long)d * Tk + j];
            sc[(long)r * Tk + j] = acc;
        }
    }
}

/* out[r] = sum_j p[r][j] v[j] for the group: accumulators for 4 queries x 32 dims stay in
 * registers while the keys stream by, so each V row is loaded once per group. */
static void group_outputs(float *og[ATT_GROUP], const int *live, const float *sc, const float *v,
                          long kv_row, int hd, int Tk, int lo, int hi, int nq) {
    for (int d0 = 0; d0 < hd; d0 += 32) {
        const int nd = hd - d0 < 32 ? hd - d0 : 32;
        float acc[ATT_GROUP][32] = {{0}};
        for (int j = lo; j <= hi; j++) {
            const float *vv = v + (long)j * kv_row + d0;
            const float p0 = sc[j], p1 = sc[Tk + j], p2 = sc[2L * Tk + j], p3 = sc[3L * Tk + j];
            if (nd == 32) {
                for (int dd = 0; dd < 32; dd++) {
                    const float x = vv[dd];
                    acc[0][dd] += p0 * x;
                    acc[1][dd] += p1 * x;
                    acc[2][dd] += p2 * x;
                    acc[3][dd] += p3 * x;
                }
            } else {
                for (int dd = 0; dd < nd; dd++) {
                    const float x = vv[dd];
                    acc[0][dd] += p0 * x;
                    acc[1][dd] += p1 * x;
                    acc[2][dd] += p2 * x;
                    acc[3][dd] += p3 * x;
                }
            }
        }
        for (int r = 0; r < nq; r++)
            for (int dd = 0; dd < nd; dd++) og[r][d0 + dd] = live[r] ? acc[r][dd] : 0.0f;
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
#pragma omp parallel
    {
#pragma omp for collapse(2) schedule(static)
        for (int b = 0; b < s.B; b++)
            for (int kh = 0; kh < s.Hkv; kh++) {
                float *dst = kT + ((long)b * s.Hkv + kh) * hd * Tk;
                for (int j = 0; j < Tk; j++) {
                    const float *src = k + ((long)b * s.kv_stride + j) * kv_row + (long)kh * hd;
                    for (int d = 0; d < hd; d++) dst[(long)d * Tk + j] = src[d];
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
                        for (int d = 0; d < hd; d++) qs[r][d] = qv[d] * scale;
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
                    group_outputs(og, live, sc, v + k0 * kv_row + (long)kh * hd, kv_row, hd, Tk,
                                  lo, hi, nq);
                }
            }
        }
    }
}
