/* One engine for MAGNET adaptation: a training step computes the masked view (MNTP + MSG) and
 * the two SSCL views in one forward/backward over a combined batch, accumulates gradients over
 * micro-batches, and applies AdamW with warm-up + cosine decay and global-norm clipping. */
#ifndef MG_MODEL_TRAINER_H
#define MG_MODEL_TRAINER_H

#include <stdint.h>

#include "../ops/pooling.h"
#include "backward.h"
#include "model.h"
#include "objectives.h"

typedef struct {
    mg_masking_config masking;
    float temperature;   /* InfoNCE (0.05) */
    float resid_dropout; /* residual-stream dropout during training (0.0 by default) */
    float lora_dropout;  /* 0.05 */
    int full_finetune;   /* train the base weights instead of LoRA adapters */
    /* AdamW and schedule */
    float lr, beta1, beta2, eps, weight_decay, clip_norm;
    int warmup_steps, total_steps;
    float min_lr_ratio; /* cosine decays to lr * min_lr_ratio */
} mg_train_config;

/* Token rows handed in for one micro-batch: [rows, T] int32, right-padded, with lengths. */
typedef struct {
    const int32_t *tokens;
    const int32_t *lengths;
    int rows, T;
} mg_token_rows;

typedef struct {
    mg_token_rows masked; /* texts for the MNTP/MSG view (rows may be 0) */
    mg_token_rows sscl_a; /* instruction + text + EOS rows (rows may be 0) */
    mg_token_rows sscl_b; /* their positives; tokens NULL: dropout twins of sscl_a */
    const int32_t *pool_start_a, *pool_start_b; /* first text token (mean pooling) */
    float w_mntp, w_sscl, w_msg;
    mg_pooling pooling;
    float grad_scale; /* 1 / micro-batches per optimizer step */
    uint64_t seed;    /* per micro-batch: masking draws and dropout masks derive from it */
} mg_micro_batch;

typedef struct {
    double mntp, msg, sscl; /* mean losses (0 when absent) */
    long mntp_count, msg_count, sscl_count;
    long tokens; /* non-padding tokens processed */
} mg_losses;

typedef struct {
    mg_model *model;
    unsigned long lora_version; /* the model's adapters this trainer was sized for */
    mg_train_config cfg;
    mg_grads grads;
    float *m_params, *v_params; /* AdamW moments for full fine-tuning */
    float *m_lora, *v_lora;     /* ... for LoRA */
    int step;                   /* optimizer steps taken */
    mg_activations acts;        /* the forward's records, reused by every micro step */
} mg_trainer;

/* The model must have adapters attached unless cfg->full_finetune. */
mg_trainer *mg_trainer_create(mg_model *model, const mg_train_config *cfg, mg_error *err);
void mg_trainer_free(mg_trainer *t);

/* MG_OK, or an error when the model's adapters were attached, merged or detached since the
 * trainer was made (its buffers are sized for the old ones). Every trainer call checks it. */
int mg_trainer_check_adapters(const mg_trainer *t, mg_error *err);

/* Forward (and, when train, backward accumulating gradients) of one micro-batch. */
int mg_trainer_micro_step(mg_trainer *t, const mg_micro_batch *mb, int train, mg_losses *out,
                          mg_error *err);

/* Learning rate of optimizer step `step` (0-based): linear warm-up, then cosine decay. */
float mg_trainer_lr(const mg_train_config *cfg, int step);

/* Clips, applies AdamW at the scheduled rate, zeroes the gradients, advances the step. Writes the
 * pre-clip gradient norm and the rate used. */
int mg_trainer_apply(mg_trainer *t, double *grad_norm, float *lr_used, mg_error *err);

/* Trainable parameters and their moments, as flat blocks of numel floats each. */
size_t mg_trainer_numel(const mg_trainer *t);
float *mg_trainer_params(const mg_trainer *t);
float *mg_trainer_grads(const mg_trainer *t);

#endif
