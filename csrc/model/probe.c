#include "probe.h"

#include <math.h>
#include <string.h>

#include "../core/alloc.h"
#include "../core/rng.h"
#include "../ops/adamw.h"
#include "../ops/loss.h"
#include "../ops/matmul.h"

/* Rows scored per GEMM in mg_probe_predict. */
#define PROBE_PREDICT_ROWS 4096
/* Standard deviations below this are treated as this (constant features). */
#define PROBE_STD_FLOOR 1e-6

static int check_args(long N, int D, int C, mg_error *err) {
    if (N < 1 || D < 1 || C < 1)
        return mg_fail(err, MG_ERR_VALUE,
                       "probe needs N >= 1 rows, D >= 1 features and C >= 1 "
                       "classes (got N=%ld, D=%d, C=%d)",
                       N, D, C);
    if (N > (1L << 31) - 1) return mg_fail(err, MG_ERR_VALUE, "probe: too many rows (%ld)", N);
    return MG_OK;
}

/* Per-dimension mean and std (population) over X[N, D], accumulated in double. */
static void feature_moments(const float *X, long N, int D, float *mean, float *std) {
#pragma omp parallel for schedule(static)
    for (int d = 0; d < D; d++) {
        double s = 0.0, ss = 0.0;
        for (long n = 0; n < N; n++)
            s += X[n * D + d];
        const double mu = s / (double)N;
        for (long n = 0; n < N; n++) {
            const double t = X[n * D + d] - mu;
            ss += t * t;
        }
        const double sd = sqrt(ss / (double)N);
        mean[d] = (float)mu;
        std[d] = (float)(sd > PROBE_STD_FLOOR ? sd : 1.0);
    }
}

/* In-place Fisher-Yates shuffle of perm[N] with draws from (seed, stream = epoch). */
static void shuffle(int32_t *perm, long N, uint64_t seed, uint64_t epoch) {
    for (long i = 0; i < N; i++)
        perm[i] = (int32_t)i;
    for (long i = N - 1; i > 0; i--) {
        const long j = (long)mg_rng_uniform_int(seed, epoch, (uint64_t)i, (uint32_t)(i + 1));
        const int32_t t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
}

int mg_probe_train(const float *X, const int32_t *y, long N, int D, int C,
                   const mg_probe_config *cfg, float *W, float *b, float *epoch_loss,
                   mg_error *err) {
    if (check_args(N, D, C, err)) return err->code;
    /* isfinite: an infinite lr or decay (or a double that overflowed float) gives NaN weights */
    if (!(isfinite(cfg->lr) && cfg->lr >= 0.0f))
        return mg_fail(err, MG_ERR_VALUE, "probe lr must be a finite number >= 0 (got %g)",
                       (double)cfg->lr);
    if (!(isfinite(cfg->weight_decay) && cfg->weight_decay >= 0.0f))
        return mg_fail(err, MG_ERR_VALUE,
                       "probe weight_decay must be a finite number >= 0 (got %g)",
                       (double)cfg->weight_decay);
    if (cfg->epochs < 1 || cfg->batch_size < 1 || !(cfg->beta1 >= 0.0f && cfg->beta1 < 1.0f) ||
        !(cfg->beta2 >= 0.0f && cfg->beta2 < 1.0f) || !(isfinite(cfg->eps) && cfg->eps > 0.0f))
        return mg_fail(err, MG_ERR_VALUE,
                       "probe needs epochs >= 1, batch_size >= 1, betas in [0, 1) and a finite "
                       "eps > 0");
    for (long n = 0; n < N; n++)
        if (y[n] < 0 || y[n] >= C)
            return mg_fail(err, MG_ERR_VALUE, "probe label %d at row %ld is outside [0, %d)", y[n],
                           n, C);
    const int B = cfg->batch_size < N ? cfg->batch_size : (int)N;
    const size_t CD = (size_t)C * (size_t)D;
    float *mean = mg_alloc((size_t)D, sizeof(float), "probe feature means", err);
    float *std = mg_alloc((size_t)D, sizeof(float), "probe feature scales", err);
    float *xb = mg_alloc((size_t)B * (size_t)D, sizeof(float), "probe batch", err);
    float *logits = mg_alloc((size_t)B * (size_t)C, sizeof(float), "probe logits", err);
    int32_t *yb = mg_alloc((size_t)B, sizeof(int32_t), "probe batch labels", err);
    int32_t *perm = mg_alloc((size_t)N, sizeof(int32_t), "probe order", err);
    float *dW = mg_alloc(CD, sizeof(float), "probe weight gradient", err);
    float *mW = mg_alloc(CD, sizeof(float), "probe AdamW state", err);
    float *vW = mg_alloc(CD, sizeof(float), "probe AdamW state", err);
    float *db = mg_alloc((size_t)C * 4, sizeof(float), "probe bias state", err);
    if (err->code != MG_OK) goto done;
    float *mb = db + C, *vb = db + 2 * C;
    memset(W, 0, CD * sizeof(float));
    memset(b, 0, (size_t)C * sizeof(float));
    if (cfg->standardize) {
        feature_moments(X, N, D, mean, std);
    } else {
        for (int d = 0; d < D; d++)
            std[d] = 1.0f;
    }
    int step = 0;
    for (int e = 0; e < cfg->epochs; e++) {
        shuffle(perm, N, cfg->seed, (uint64_t)e);
        double loss_total = 0.0;
        for (long start = 0; start < N; start += B) {
            const int nb = (int)(N - start < B ? N - start : B);
#pragma omp parallel for schedule(static)
            for (int i = 0; i < nb; i++) {
                const float *src = X + (long)perm[start + i] * D;
                float *dst = xb + (long)i * D;
                for (int d = 0; d < D; d++)
                    dst[d] = (src[d] - mean[d]) / std[d];
            }
            for (int i = 0; i < nb; i++)
                yb[i] = y[perm[start + i]];
            matmul_forward(logits, xb, W, b, nb, D, C, false);
            double loss_sum;
            long count;
            if (cross_entropy_forward_backward(logits, yb, nb, C, 1.0f / (float)nb, &loss_sum,
                                               &count, err))
                goto done;
            loss_total += loss_sum;
            memset(dW, 0, CD * sizeof(float));
            memset(db, 0, (size_t)C * sizeof(float));
            matmul_backward(NULL, dW, db, logits, xb, W, nb, D, C);
            step++;
            adamw_update(W, dW, mW, vW, (long)CD, cfg->lr, cfg->beta1, cfg->beta2, cfg->eps,
                         cfg->weight_decay, step);
            adamw_update(b, db, mb, vb, C, cfg->lr, cfg->beta1, cfg->beta2, cfg->eps, 0.0f, step);
        }
        if (epoch_loss) epoch_loss[e] = (float)(loss_total / (double)N);
    }
    /* Fold the standardisation: W' ((x - mean) / std) + b' = (W' / std) x + (b' - (W'/std) mean) */
    for (int c = 0; c < C; c++) {
        double shift = 0.0;
        float *row = W + (size_t)c * D;
        for (int d = 0; d < D; d++) {
            row[d] /= std[d];
            shift += (double)row[d] * mean[d];
        }
        b[c] -= (float)shift;
    }
done:
    mg_free(mean);
    mg_free(std);
    mg_free(xb);
    mg_free(logits);
    mg_free(yb);
    mg_free(perm);
    mg_free(dW);
    mg_free(mW);
    mg_free(vW);
    mg_free(db);
    return err->code;
}

int mg_probe_predict(const float *X, long N, int D, int C, const float *W, const float *b,
                     int32_t *pred, mg_error *err) {
    if (check_args(N, D, C, err)) return err->code;
    const long rows = N < PROBE_PREDICT_ROWS ? N : PROBE_PREDICT_ROWS;
    float *scores = mg_alloc_uninit((size_t)rows * (size_t)C, sizeof(float), "probe scores", err);
    if (scores == NULL) return err->code;
    for (long start = 0; start < N; start += rows) {
        const int nb = (int)(N - start < rows ? N - start : rows);
        matmul_forward(scores, X + start * D, W, b, nb, D, C, false);
#pragma omp parallel for schedule(static)
        for (int i = 0; i < nb; i++) {
            const float *s = scores + (long)i * C;
            int best = 0;
            for (int c = 1; c < C; c++)
                best = s[c] > s[best] ? c : best;
            pred[start + i] = best;
        }
    }
    mg_free(scores);
    return MG_OK;
}
