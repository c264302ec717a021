#include "attention.h"

#include <math.h>
#include <omp.h>
#include <string.h>

/* Eight independent partial sums let the compiler vectorise without reassociation flags. */
static inline float dot(const float *a, const float *b, int n) {
    float acc[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++) acc[u] += a[i + u] * b[i + u];
    float s = 0.0f;
    for (; i < n; i++) s += a[i] * b[i];
    return s + ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static inline int key_visible(uint8_t q_role, int32_t q_seg, int q_index, uint8_t k_role,
                              int32_t k_seg, int k_index) {
    if (k_seg != q_seg) return 0;
    return k_role == MG_ROLE_CONTEXT || (q_role == MG_ROLE_SPAN && k_index <= q_index);
}

void attention_forward(float *out, const float *q, const float *k, const float *v,
                       const uint8_t *q_roles, const int32_t *q_seg, const uint8_t *k_roles,
                       const int32_t *k_seg, attention_shape s, float *scratch) {
    const int group = s.Hq / s.Hkv;
    const float scale = 1.0f / sqrtf((float)s.hd);
    const long q_row = (long)s.Hq * s.hd, kv_row = (long)s.Hkv * s.hd;
#pragma omp parallel for collapse(3) schedule(dynamic, 4)
    for (int b = 0; b < s.B; b++) {
        for (int h = 0; h < s.Hq; h++) {
            for (int i = 0; i < s.Tq; i++) {
                float *score = scratch + (long)omp_get_thread_num() * s.Tk;
                const long qi = (long)b * s.Tq + i;
                float *o = out + qi * q_row + (long)h * s.hd;
                const int32_t seg = q_seg[qi];
                memset(o, 0, sizeof(float) * s.hd);
                if (seg < 0) continue;
                const uint8_t role = q_roles[qi];
                const int q_index = s.q_start + i;
                const float *qv = q + qi * q_row + (long)h * s.hd;
                const long k0 = (long)b * s.kv_stride;
                const int kh = h / group;
                float mx = -INFINITY;
                for (int j = 0; j < s.Tk; j++) {
                    if (!key_visible(role, seg, q_index, k_roles[k0 + j], k_seg[k0 + j], j)) {
                        score[j] = -INFINITY;
                        continue;
                    }
                    float sc = dot(qv, k + (k0 + j) * kv_row + (long)kh * s.hd, s.hd) * scale;
                    score[j] = sc;
                    if (sc > mx) mx = sc;
                }
                if (mx == -INFINITY) continue; /* no visible key: only possible for stray input */
                float sum = 0.0f;
                for (int j = 0; j < s.Tk; j++) {
                    float p = score[j] == -INFINITY ? 0.0f : expf(score[j] - mx);
                    score[j] = p;
                    sum += p;
                }
                const float inv = 1.0f / sum;
                for (int j = 0; j < s.Tk; j++) {
                    if (score[j] == 0.0f) continue;
                    const float p = score[j] * inv;
                    const float *vv = v + (k0 + j) * kv_row + (long)kh * s.hd;
                    for (int d = 0; d < s.hd; d++) o[d] += p * vv[d];
                }
            }
        }
    }
}
