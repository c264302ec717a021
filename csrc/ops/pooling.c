#include "pooling.h"

#include <math.h>
#include <string.h>

void pooling_forward(float *out, const float *hidden, const int32_t *start, const int32_t *end,
                     int B, int T, int D, mg_pooling mode) {
#pragma omp parallel for schedule(static)
    for (int b = 0; b < B; b++) {
        const float *h = hidden + (long)b * T * D;
        float *o = out + (long)b * D;
        if (mode == MG_POOL_LAST) {
            memcpy(o, h + (long)(end[b] - 1) * D, sizeof(float) * D);
            continue;
        }
        const double inv = 1.0 / (end[b] - start[b]);
        for (int d = 0; d < D; d++) {
            double acc = 0.0;
            for (int t = start[b]; t < end[b]; t++)
                acc += h[(long)t * D + d];
            o[d] = (float)(acc * inv);
        }
    }
}

void l2_normalize_rows(float *x, int N, int D) {
    for (int n = 0; n < N; n++) {
        float *r = x + (long)n * D;
        double ss = 0.0;
        for (int d = 0; d < D; d++)
            ss += (double)r[d] * r[d];
        if (ss <= 0.0) continue;
        const float inv = (float)(1.0 / sqrt(ss));
        for (int d = 0; d < D; d++)
            r[d] *= inv;
    }
}
