#include "activation.h"
#include "../core/parallel.h"

#include <math.h>
#include <stddef.h>

#include "fast_exp.h"

MG_EXP_LOOP void swiglu_forward(float *out, const float *gate, const float *up, long n) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n))
    for (long i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + mg_expf(-g)) * up[i];
    }
}

MG_EXP_LOOP void gelu_tanh_forward(float *x, long n) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n))
    for (long i = 0; i < n; i++) {
        float v = x[i];
        /* 1 + tanh(z) = 2 - 2 / (e^{2z} + 1) */
        const float z = c * (v + 0.044715f * v * v * v);
        x[i] = 0.5f * v * (2.0f - 2.0f / (mg_expf(2.0f * z) + 1.0f));
    }
}

MG_EXP_LOOP void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                                 const float *up, long n) {
    /* One loop per case: tests on the pointers inside the loop kept it from vectorising. */
    if (dup != NULL && dgate != NULL) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n))
        for (long i = 0; i < n; i++) {
            const float g = gate[i];
            const float s = 1.0f / (1.0f + mg_expf(-g));
            dup[i] = dout[i] * g * s;
            dgate[i] = dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
        }
    } else if (dup != NULL) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n))
        for (long i = 0; i < n; i++) {
            const float g = gate[i];
            dup[i] = dout[i] * g * (1.0f / (1.0f + mg_expf(-g)));
        }
    } else if (dgate != NULL) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n))
        for (long i = 0; i < n; i++) {
            const float g = gate[i];
            const float s = 1.0f / (1.0f + mg_expf(-g));
            dgate[i] = dout[i] * up[i] * s * (1.0f + g * (1.0f - s));
        }
    }
}

/* y = x/2 (1 + t), t = tanh(z), z = c (x + a x^3):
 *   dy/dx = (1 + t)/2 + x/2 (1 - t^2) c (1 + 3 a x^2). */
MG_EXP_LOOP void gelu_tanh_backward(float *dx, const float *dout, const float *x, long n) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n))
    for (long i = 0; i < n; i++) {
        const float v = x[i];
        const float z = c * (v + 0.044715f * v * v * v);
        const float t = 1.0f - 2.0f / (mg_expf(2.0f * z) + 1.0f);
        const float d =
            0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * c * (1.0f + 3.0f * 0.044715f * v * v);
        dx[i] = dout[i] * d;
    }
}
