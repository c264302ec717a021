#include "rope.h"
#include "../core/parallel.h"

#include <math.h>

void rope_forward(float *x, const int *pos, const float *inv_freq, int N, int H, int hd) {
    int half = hd / 2;
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS((long)N * H * hd))
    for (int n = 0; n < N; n++) {
        float cs[512], sn[512]; /* hd/2 <= 512 is checked when the model is built */
        for (int k = 0; k < half; k++) {
            /* float32 angle, as the reference computes it, so long positions round alike */
            float angle = (float)pos[n] * inv_freq[k];
            cs[k] = cosf(angle);
            sn[k] = sinf(angle);
        }
        for (int h = 0; h < H; h++) {
            float *v = x + ((long)n * H + h) * hd;
            for (int k = 0; k < half; k++) {
                float a = v[k], b = v[k + half];
                v[k] = a * cs[k] - b * sn[k];
                v[k + half] = b * cs[k] + a * sn[k];
            }
        }
    }
}

void rope_backward(float *dx, const int *pos, const float *inv_freq, int N, int H, int hd) {
    int half = hd / 2;
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS((long)N * H * hd))
    for (int n = 0; n < N; n++) {
        float cs[512], sn[512]; /* hd/2 <= 512, as in the forward */
        for (int k = 0; k < half; k++) {
            float angle = (float)pos[n] * inv_freq[k];
            cs[k] = cosf(angle);
            sn[k] = sinf(angle);
        }
        for (int h = 0; h < H; h++) {
            float *v = dx + ((long)n * H + h) * hd;
            for (int k = 0; k < half; k++) {
                float a = v[k], b = v[k + half];
                v[k] = a * cs[k] + b * sn[k];
                v[k + half] = b * cs[k] - a * sn[k];
            }
        }
    }
}
