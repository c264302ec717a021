#include "loss.h"

#include <math.h>
#include <string.h>

#include "../backend/cpu/blas.h"
#include "fast_exp.h"

/* Fixed number of row chunks whose partial loss sums are combined in order. */
#define CE_CHUNKS 64

MG_EXP_LOOP int cross_entropy_forward_backward(float *logits, const int32_t *labels, long N, int V,
                                               float grad_scale, double *loss_sum, long *count,
                                               mg_error *err) {
    for (long n = 0; n < N; n++)
        if (labels[n] != MG_IGNORE_LABEL && (labels[n] < 0 || labels[n] >= V))
            return mg_fail(err, MG_ERR_VALUE,
                           "label %d at row %ld is out of range for %d classes (use %d to ignore)",
                           labels[n], n, V, MG_IGNORE_LABEL);
    double part[CE_CHUNKS];
    long cnt[CE_CHUNKS];
    const long per = (N + CE_CHUNKS - 1) / CE_CHUNKS;
#pragma omp parallel for schedule(dynamic, 1)
    for (int c = 0; c < CE_CHUNKS; c++) {
        const long n0 = c * per, n1 = n0 + per < N ? n0 + per : N;
        double acc = 0.0;
        long k = 0;
        for (long n = n0; n < n1; n++) {
            float *x = logits + n * V;
            const int y = labels[n];
            if (y == MG_IGNORE_LABEL) {
                memset(x, 0, sizeof(float) * V);
                continue;
            }
            float mx = x[0];
            for (int j = 1; j < V; j++)
                mx = x[j] > mx ? x[j] : mx;
            const float target = x[y];
            /* Vectorised exponentials, then the sum in order (same rounding as one loop). */
            for (int j = 0; j < V; j++)
                x[j] = mg_expf(x[j] - mx);
            float sum = 0.0f;
            for (int j = 0; j < V; j++)
                sum += x[j];
            acc += log((double)sum) + (double)mx - (double)target;
            k++;
            const float f = grad_scale / sum;
            for (int j = 0; j < V; j++)
                x[j] *= f;
            x[y] -= grad_scale;
        }
        part[c] = acc;
        cnt[c] = k;
    }
    double total = 0.0;
    long k = 0;
    for (int c = 0; c < CE_CHUNKS; c++) {
        total += part[c];
        k += cnt[c];
    }
    *loss_sum = total;
    *count = k;
    return MG_OK;
}

/* Rows of x[n, D] scaled to unit length into xn; norm[i] = max(|x_i|, eps). */
static void normalise_rows(float *xn, float *norm, const float *x, int n, int D) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const float *r = x + (long)i * D;
        float ss = 0.0f;
        for (int d = 0; d < D; d++)
            ss += r[d] * r[d];
        float nr = sqrtf(ss);
        nr = nr > MG_INFONCE_NORM_EPS ? nr : MG_INFONCE_NORM_EPS;
        norm[i] = nr;
        for (int d = 0; d < D; d++)
            xn[(long)i * D + d] = r[d] / nr;
    }
}

/* Through x^ = x / |x|: dx = (dx^ - x^ (x^ . dx^)) / |x| (the Jacobian of normalisation is
 * (I - x^ x^T) / |x|); below the eps clamp the norm is a constant and dx = dx^ / eps. */
static void normalise_rows_backward(float *dx, const float *dxn, const float *xn, const float *norm,
                                    int n, int D) {
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; i++) {
        const float *g = dxn + (long)i * D, *u = xn + (long)i * D;
        float *out = dx + (long)i * D;
        float dot = 0.0f;
        if (norm[i] > MG_INFONCE_NORM_EPS)
            for (int d = 0; d < D; d++)
                dot += u[d] * g[d];
        const float inv = 1.0f / norm[i];
        for (int d = 0; d < D; d++)
            out[d] += (g[d] - u[d] * dot) * inv;
    }
}

/* With S = A^ B^^T / t and G = d loss / d S = (softmax_rows(S) - I) / n:
 *     d A^ = G B^ / t,   d B^ = G^T A^ / t,
 * then each through its row normalisation. Every b_j is a negative for every a_i, so db_j
 * collects column j of G. */
void infonce_forward_backward(float *loss, float *da, float *db, const float *a, const float *b,
                              int n, int D, float temperature, float grad_scale, float *scratch) {
    const size_t nD = (size_t)n * D;
    float *an = scratch, *bn = an + nD, *S = bn + nD, *dan = S + (size_t)n * n, *dbn = dan + nD;
    float *norm_a = dbn + nD, *norm_b = norm_a + n;
    if (n <= 0 || D <= 0) {
        *loss = 0.0f;
        return;
    }
    const float inv_t = 1.0f / temperature;
    normalise_rows(an, norm_a, a, n, D);
    normalise_rows(bn, norm_b, b, n, D);
    mg_sgemm(false, true, n, n, D, inv_t, an, D, bn, D, 0.0f, S, n);
    double total = 0.0;
    const float g = grad_scale / (float)n;
    for (int i = 0; i < n; i++) {
        float *s = S + (long)i * n;
        float mx = s[0];
        for (int j = 1; j < n; j++)
            mx = s[j] > mx ? s[j] : mx;
        const float diag = s[i];
        double sum = 0.0;
        for (int j = 0; j < n; j++) {
            s[j] = (float)exp((double)(s[j] - mx));
            sum += s[j];
        }
        total += log(sum) + (double)mx - (double)diag;
        const float f = (float)(g / sum);
        for (int j = 0; j < n; j++)
            s[j] *= f;
        s[i] -= g;
    }
    *loss = (float)(total / n);
    if (da != NULL) {
        mg_sgemm(false, false, n, D, n, inv_t, S, n, bn, D, 0.0f, dan, D);
        normalise_rows_backward(da, dan, an, norm_a, n, D);
    }
    if (db != NULL) {
        mg_sgemm(true, false, n, D, n, inv_t, S, n, an, D, 0.0f, dbn, D);
        normalise_rows_backward(db, dbn, bn, norm_b, n, D);
    }
}
