#include "matmul.h"

#include <stddef.h>

#include "../backend/cpu/blas.h"

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                    int I, int O, bool accumulate) {
    mg_sgemm(false, true, N, O, I, 1.0f, inp, I, weight, I, accumulate ? 1.0f : 0.0f, out, O);
    if (bias == NULL) return;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *row = out + (long)n * O;
        for (int o = 0; o < O; o++) row[o] += bias[o];
    }
}
