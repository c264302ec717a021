#include "activation.h"

#include <math.h>

#include "fast_exp.h"

void swiglu_forward(float *out, const float *gate, const float *up, long n) {
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + mg_expf(-g)) * up[i];
    }
}

void gelu_tanh_forward(float *x, long n) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++) {
        float v = x[i];
        /* 1 + tanh(z) = 2 - 2 / (e^{2z} + 1) */
        const float z = c * (v + 0.044715f * v * v * v);
        x[i] = 0.5f * v * (2.0f - 2.0f / (mg_expf(2.0f * z) + 1.0f));
    }
}
