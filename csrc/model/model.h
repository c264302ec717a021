/* A decoder: its config, its parameters, and the RoPE frequencies derived from the config. */
#ifndef MG_MODEL_MODEL_H
#define MG_MODEL_MODEL_H

#include <pthread.h>
#include <stdint.h>

#include "../backend/backend.h"
#include "config.h"
#include "kv_cache.h"
#include "lora.h"
#include "params.h"

#define MG_MAX_HEAD_DIM 512

typedef struct mg_model_s {
    mg_config config;
    /* Where the parameters, the rope table and the adapters live, and whose ops run them. */
    const mg_backend *be;
    mg_backend *owned_be; /* a GPU backend this model created and frees; NULL on the CPU */
    mg_params params;
    float *inv_freq; /* [head_dim / 2], LLaMA family only */
    mg_lora *lora;   /* attached adapters (owned), applied by every forward; NULL when none */
    /* Counts adapter swaps (attach, merge, detach): a trainer made for one set of adapters
     * refuses to run on another instead of writing through stale sizes. */
    unsigned long lora_version;
    /* Readers (forward passes, training forward/backward) share it; whatever changes weights
     * or swaps adapters (optimizer step, merge, attach, load) holds it alone. Callers take it
     * around their calls (the Python binding does, with the GIL released). */
    pthread_rwlock_t guard;
} mg_model;

static inline void mg_model_lock_read(mg_model *m) {
    /* a GPU backend has one stream and one scratch workspace: its passes take turns */
    if (m->be->device == MG_DEVICE_CPU)
        pthread_rwlock_rdlock(&m->guard);
    else
        pthread_rwlock_wrlock(&m->guard);
    if (m->be->enter) m->be->enter(m->be); /* this thread may last have used another GPU */
}
static inline void mg_model_lock_write(mg_model *m) {
    pthread_rwlock_wrlock(&m->guard);
    if (m->be->enter) m->be->enter(m->be);
}
static inline void mg_model_unlock(mg_model *m) {
    pthread_rwlock_unlock(&m->guard);
}

/* Builds a model from named float32 tensors (copied). Returns NULL with err set on failure. */
mg_model *mg_model_create(const mg_config *config, const mg_named_tensor *tensors, int count,
                          mg_error *err);
void mg_model_free(mg_model *m);

/* Full-sequence forward of tokens[B, T] under the unified attention rule.
 * roles[B, T]: 0 CONTEXT, 1 SPAN; segments[B, T]: >= 0 sequence id within the row, -1 padding.
 * Positions restart at 0 in each segment. hidden_out[B, T, D] (after the final norm) and
 * logits_out[B, T, V] may each be NULL; padding rows of both are zero. Thread-safe: the model
 * is only read. */
int mg_model_forward(const mg_model *m, const int32_t *tokens, const uint8_t *roles,
                     const int32_t *segments, int B, int T, float *hidden_out, float *logits_out,
                     mg_error *err);

/* Appends Tq tokens per row to `cache` and runs them through the decoder: queries see the
 * cached keys (and each other) under the unified rule, with the key index of the first new
 * token equal to cache->length. positions[B, Tq] are the tokens' positions (RoPE or learned).
 * hidden_out [B, Tq, D]; logits_out [B, Tq, V], or [B, V] for each row's last token when
 * logits_last_only. On success cache->length grows by Tq. */
int mg_model_step(const mg_model *m, mg_kv_cache *cache, const int32_t *tokens,
                  const uint8_t *roles, const int32_t *segments, const int *positions, int B,
                  int Tq, float *hidden_out, float *logits_out, int logits_last_only,
                  mg_error *err);

/* mg_model_step for a caller that needs the outputs of some rows only: keep_rows (host, n_keep
 * flat indices into the B x Tq tokens) pick them, and hidden_out [n_keep, D] and
 * logits_out [n_keep, V] (either may be NULL) hold them in that order. Every row still updates
 * the cache and is seen by the others; the last layer's row-wise work runs on the kept rows only.
 */
int mg_model_step_rows(const mg_model *m, mg_kv_cache *cache, const int32_t *tokens,
                       const uint8_t *roles, const int32_t *segments, const int *positions, int B,
                       int Tq, const int64_t *keep_rows, int n_keep, float *hidden_out,
                       float *logits_out, mg_error *err);

struct mg_train_pass_s;

/* mg_model_step with training settings: dropout, and recording activations for the backward
 * pass (train may be NULL: inference). */
int mg_model_step_ex(const mg_model *m, mg_kv_cache *cache, const int32_t *tokens,
                     const uint8_t *roles, const int32_t *segments, const int *positions, int B,
                     int Tq, float *hidden_out, float *logits_out, int logits_last_only,
                     const struct mg_train_pass_s *train, mg_error *err);

/* Whether the q, k, v weights of a layer are adjacent: one [QD + 2 KD, D] matrix. */
static inline int mg_qkv_fused(const mg_layer_params *L, int QD, int KD, int D) {
    return L->wk == L->wq + (long)QD * D && L->wv == L->wk + (long)KD * D;
}

/* A copy of `src` (parameters, adapters) in the memory of `be`. The copy takes ownership of `be`
 * when owns_be (a GPU backend made for it); the CPU backend is never owned. */
mg_model *mg_model_copy_to(const mg_model *src, const mg_backend *be, int owns_be, mg_error *err);

/* Attaches adapters made on the CPU (the model takes ownership; any previous ones are freed);
 * on another backend they are moved into its memory first. */
int mg_model_attach_lora(mg_model *m, mg_lora *lora, mg_error *err);
/* Folds the attached adapters into the base weights and detaches them. */
void mg_model_merge_lora(mg_model *m);

/* Each token's position within its segment (0 for padding); returns the longest segment. */
int mg_segment_positions(int *pos, const int32_t *segments, int B, int T);

#endif
