#include "adamw.h"

#include <math.h>
#include <stddef.h>

/* Fixed number of partial sums per buffer in grad_global_norm. */
#define NORM_CHUNKS 64

void adamw_update(float *param, const float *grad, float *m, float *v, long n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int step) {
    const double bc1 = 1.0 - pow((double)beta1, (double)step);
    const double bc2 = 1.0 - pow((double)beta2, (double)step);
    const float step_size = (float)((double)lr / bc1);
    const float sqrt_bc2 = (float)sqrt(bc2);
    const float decay = 1.0f - lr * weight_decay;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        const float g = grad[i];
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] = param[i] * decay - step_size * mi / (sqrtf(vi) / sqrt_bc2 + eps);
    }
}

double grad_global_norm(const float *const *bufs, const long *lens, int count) {
    double total = 0.0;
    for (int b = 0; b < count; b++) {
        const float *x = bufs[b];
        const long n = lens[b], per = (n + NORM_CHUNKS - 1) / NORM_CHUNKS;
        if (x == NULL || n <= 0) continue;
        double part[NORM_CHUNKS];
#pragma omp parallel for schedule(static)
        for (int c = 0; c < NORM_CHUNKS; c++) {
            const long i0 = c * per, i1 = i0 + per < n ? i0 + per : n;
            double acc = 0.0;
            for (long i = i0; i < i1; i++) acc += (double)x[i] * x[i];
            part[c] = acc;
        }
        for (int c = 0; c < NORM_CHUNKS; c++) total += part[c];
    }
    return sqrt(total);
}
