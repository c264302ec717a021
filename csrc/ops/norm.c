#include "norm.h"
#include "../core/parallel.h"

#include <math.h>
#include <stddef.h>

void rmsnorm_forward(float *out, const float *inp, const float *weight, int N, int D, float eps) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS((long)N * D))
    for (int n = 0; n < N; n++) {
        const float *x = inp + (long)n * D;
        float *y = out + (long)n * D;
        float ss = 0.0f;
        for (int i = 0; i < D; i++)
            ss += x[i] * x[i];
        float rstd = 1.0f / sqrtf(ss / (float)D + eps);
        for (int i = 0; i < D; i++)
            y[i] = x[i] * rstd * weight[i];
    }
}

void layernorm_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                       int D, float eps) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS((long)N * D))
    for (int n = 0; n < N; n++) {
        const float *x = inp + (long)n * D;
        float *y = out + (long)n * D;
        float mean = 0.0f;
        for (int i = 0; i < D; i++)
            mean += x[i];
        mean /= (float)D;
        float var = 0.0f;
        for (int i = 0; i < D; i++) {
            float d = x[i] - mean;
            var += d * d;
        }
        float rstd = 1.0f / sqrtf(var / (float)D + eps);
        for (int i = 0; i < D; i++)
            y[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
    }
}

/* Rows whose statistics are held at once (on the stack) while column owners reduce over them. */
#define NORM_ROW_BLOCK 256
/* Columns per work item in the weight/bias reductions. */
#define NORM_COLS 64

/* RMSNorm, y = x r w with r = (mean(x^2) + eps)^-1/2. With g = dy * w:
 *   dx = r g - x r^3 / D * sum(g x),   dw += dy x r. */
void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                      const float *weight, int N, int D, float eps) {
    float rstd[NORM_ROW_BLOCK];
    const int chunks = (D + NORM_COLS - 1) / NORM_COLS;
    for (int n0 = 0; n0 < N; n0 += NORM_ROW_BLOCK) {
        const int nr = N - n0 < NORM_ROW_BLOCK ? N - n0 : NORM_ROW_BLOCK;
#pragma omp parallel
        {
#pragma omp for schedule(static)
            for (int r = 0; r < nr; r++) {
                const long n = n0 + r;
                const float *x = inp + n * D;
                float ss = 0.0f;
                for (int i = 0; i < D; i++)
                    ss += x[i] * x[i];
                const float rs = 1.0f / sqrtf(ss / (float)D + eps);
                rstd[r] = rs;
                if (dinp == NULL) continue;
                const float *dy = dout + n * D;
                float dot = 0.0f;
                for (int i = 0; i < D; i++)
                    dot += dy[i] * weight[i] * x[i];
                const float c = dot * rs * rs * rs / (float)D;
                float *dx = dinp + n * D;
                for (int i = 0; i < D; i++)
                    dx[i] += dy[i] * weight[i] * rs - x[i] * c;
            }
            if (dweight != NULL) {
#pragma omp for schedule(static)
                for (int c = 0; c < chunks; c++) {
                    const int i0 = c * NORM_COLS, ni = D - i0 < NORM_COLS ? D - i0 : NORM_COLS;
                    float acc[NORM_COLS] = {0};
                    for (int r = 0; r < nr; r++) {
                        const long off = (long)(n0 + r) * D + i0;
                        for (int i = 0; i < ni; i++)
                            acc[i] += dout[off + i] * inp[off + i] * rstd[r];
                    }
                    for (int i = 0; i < ni; i++)
                        dweight[i0 + i] += acc[i];
                }
            }
        }
    }
}

/* LayerNorm, y = xh w + b with xh = (x - mean) r. With g = dy * w:
 *   dx = r (g - mean(g) - xh mean(g xh)),   dw += dy xh,   db += dy. */
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int N, int D, float eps) {
    float mean_of[NORM_ROW_BLOCK], rstd[NORM_ROW_BLOCK];
    const int chunks = (D + NORM_COLS - 1) / NORM_COLS;
    for (int n0 = 0; n0 < N; n0 += NORM_ROW_BLOCK) {
        const int nr = N - n0 < NORM_ROW_BLOCK ? N - n0 : NORM_ROW_BLOCK;
#pragma omp parallel
        {
#pragma omp for schedule(static)
            for (int r = 0; r < nr; r++) {
                const long n = n0 + r;
                const float *x = inp + n * D;
                float mean = 0.0f;
                for (int i = 0; i < D; i++)
                    mean += x[i];
                mean /= (float)D;
                float var = 0.0f;
                for (int i = 0; i < D; i++) {
                    const float d = x[i] - mean;
                    var += d * d;
                }
                const float rs = 1.0f / sqrtf(var / (float)D + eps);
                mean_of[r] = mean;
                rstd[r] = rs;
                if (dinp == NULL) continue;
                const float *dy = dout + n * D;
                float gsum = 0.0f, gxsum = 0.0f;
                for (int i = 0; i < D; i++) {
                    const float g = dy[i] * weight[i];
                    gsum += g;
                    gxsum += g * (x[i] - mean) * rs;
                }
                const float gmean = gsum / (float)D, gxmean = gxsum / (float)D;
                float *dx = dinp + n * D;
                for (int i = 0; i < D; i++)
                    dx[i] += rs * (dy[i] * weight[i] - gmean - (x[i] - mean) * rs * gxmean);
            }
            if (dweight != NULL || dbias != NULL) {
#pragma omp for schedule(static)
                for (int c = 0; c < chunks; c++) {
                    const int i0 = c * NORM_COLS, ni = D - i0 < NORM_COLS ? D - i0 : NORM_COLS;
                    float accw[NORM_COLS] = {0}, accb[NORM_COLS] = {0};
                    for (int r = 0; r < nr; r++) {
                        const long off = (long)(n0 + r) * D + i0;
                        for (int i = 0; i < ni; i++) {
                            const float dy = dout[off + i];
                            accw[i] += dy * (inp[off + i] - mean_of[r]) * rstd[r];
                            accb[i] += dy;
                        }
                    }
                    for (int i = 0; i < ni; i++) {
                        if (dweight != NULL) dweight[i0 + i] += accw[i];
                        if (dbias != NULL) dbias[i0 + i] += accb[i];
                    }
                }
            }
        }
    }
}
