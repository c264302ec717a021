#include "norm.h"

#include <math.h>

void rmsnorm_forward(float *out, const float *inp, const float *weight, int N, int D, float eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (long)n * D;
        float *y = out + (long)n * D;
        float ss = 0.0f;
        for (int i = 0; i < D; i++) ss += x[i] * x[i];
        float rstd = 1.0f / sqrtf(ss / (float)D + eps);
        for (int i = 0; i < D; i++) y[i] = x[i] * rstd * weight[i];
    }
}

void layernorm_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                       int D, float eps) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = inp + (long)n * D;
        float *y = out + (long)n * D;
        float mean = 0.0f;
        for (int i = 0; i < D; i++) mean += x[i];
        mean /= (float)D;
        float var = 0.0f;
        for (int i = 0; i < D; i++) {
            float d = x[i] - mean;
            var += d * d;
        }
        float rstd = 1.0f / sqrtf(var / (float)D + eps);
        for (int i = 0; i < D; i++) y[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
    }
}
