/* The decoder's backward pass over a recorded training forward pass. */
#ifndef MG_MODEL_BACKWARD_H
#define MG_MODEL_BACKWARD_H

#include "activations.h"
#include "model.h"

/* Gradient blocks mirroring the parameter blocks; NULL where that block is frozen. */
typedef struct {
    float *params; /* mirrors m->params.block (full fine-tuning) */
    float *lora;   /* mirrors m->lora->block */
} mg_grads;

/* Accumulates into g the gradients of a scalar loss whose gradient with respect to the final
 * hidden states (after the final norm) is dhidden[B*T, D], for the pass `train` recorded with
 * `cache` (one slot per layer, filled from 0 with the T tokens of each row). Gradients flowing
 * through the LM head are the caller's (they need the logits). */
int mg_model_backward(const mg_model *m, const mg_grads *g, const mg_train_pass *train,
                      const mg_kv_cache *cache, const float *dhidden, const int32_t *tokens,
                      const uint8_t *roles, const int32_t *segments, int B, int T, mg_error *err);

#endif
