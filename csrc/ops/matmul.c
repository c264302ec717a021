#include "matmul.h"
#include "../core/parallel.h"

#include <stddef.h>

#include "../backend/cpu/blas.h"
#include "packed_matmul.h"
#include "skinny_matmul.h"

void matmul_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                    int I, int O, bool accumulate) {
    if (N <= MG_SKINNY_MAX_ROWS) { /* a decode step: bound by reading the weights */
        skinny_matmul_forward(out, inp, weight, bias, N, I, O, accumulate);
        return;
    }
    const bool packed =
        O <= MG_PACKED_MAX_COLS && packed_matmul_forward(out, inp, weight, N, I, O, accumulate);
    if (!packed)
        mg_sgemm(false, true, N, O, I, 1.0f, inp, I, weight, I, accumulate ? 1.0f : 0.0f, out, O);
    if (bias == NULL) return;
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS((long)N * O))
    for (int n = 0; n < N; n++) {
        float *row = out + (long)n * O;
        for (int o = 0; o < O; o++)
            row[o] += bias[o];
    }
}

/* Columns of dbias per work item: each item sums its columns over all rows in a fixed order. */
#define MATMUL_BIAS_COLS 64

void matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                     const float *weight, int N, int I, int O) {
    if (N <= 0 || O <= 0) return;
    if (dinp != NULL && I > 0)
        mg_sgemm(false, false, N, I, O, 1.0f, dout, O, weight, I, 1.0f, dinp, I);
    if (dweight != NULL && I > 0)
        mg_sgemm(true, false, O, I, N, 1.0f, dout, O, inp, I, 1.0f, dweight, I);
    if (dbias == NULL) return;
    const int chunks = (O + MATMUL_BIAS_COLS - 1) / MATMUL_BIAS_COLS;
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS((long)N * O))
    for (int c = 0; c < chunks; c++) {
        const int o0 = c * MATMUL_BIAS_COLS;
        const int no = O - o0 < MATMUL_BIAS_COLS ? O - o0 : MATMUL_BIAS_COLS;
        float acc[MATMUL_BIAS_COLS] = {0};
        for (int n = 0; n < N; n++) {
            const float *row = dout + (long)n * O + o0;
            for (int o = 0; o < no; o++)
                acc[o] += row[o];
        }
        for (int o = 0; o < no; o++)
            dbias[o0 + o] += acc[o];
    }
}
