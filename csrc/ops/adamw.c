#include "adamw.h"

#include "rows.h"

#include <math.h>
#include <stddef.h>

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
    for (int b = 0; b < count; b++)
        if (bufs[b] != NULL && lens[b] > 0) total += rows_sum_squares(bufs[b], lens[b]);
    return sqrt(total);
}
