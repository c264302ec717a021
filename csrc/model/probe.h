/* Linear probes: softmax regression trained on frozen feature vectors (token vectors of the
 * evaluation suite, magnet/eval/probe.py), with AdamW over seeded minibatches. */
#ifndef MG_MODEL_PROBE_H
#define MG_MODEL_PROBE_H

#include <stdint.h>

#include "../core/error.h"

typedef struct {
    int epochs;         /* full passes over the rows, >= 1 */
    int batch_size;     /* rows per AdamW step, >= 1 (the last batch of an epoch may be smaller) */
    float lr;           /* constant AdamW learning rate */
    float weight_decay; /* decoupled decay on W (never on b) */
    float beta1, beta2, eps;
    int standardize; /* 1: train on features scaled to zero mean, unit variance per dimension */
    uint64_t seed;   /* the minibatch order of epoch e is a permutation drawn from (seed, e) */
} mg_probe_config;

/* Trains W[C, D] and b[C] (written; start from zero) to minimise the mean cross-entropy of
 * softmax(x W^T + b) against y over X[N, D], y[N] in [0, C). With standardize, training runs on
 * (x - mean) / std and the result is folded back, so W and b always apply to raw features:
 * W = W' / std, b = b' - W mean. epoch_loss[epochs] (may be NULL) receives each epoch's mean
 * training loss. Deterministic for a given seed, whatever the thread count. */
int mg_probe_train(const float *X, const int32_t *y, long N, int D, int C,
                   const mg_probe_config *cfg, float *W, float *b, float *epoch_loss,
                   mg_error *err);

/* pred[N] = argmax_c (x W^T + b)_c (the lowest index among ties). */
int mg_probe_predict(const float *X, long N, int D, int C, const float *W, const float *b,
                     int32_t *pred, mg_error *err);

#endif
