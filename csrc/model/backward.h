/* The decoder's backward pass over a recorded training forward pass. */
#ifndef MG_MODEL_BACKWARD_H
#define MG_MODEL_BACKWARD_H

#include "activations.h"
#include "model.h"
#include "workspace.h"

/* Gradient blocks mirroring the parameter blocks; NULL where that block is frozen. */
typedef struct {
    float *params; /* mirrors m->params.block (full fine-tuning) */
    float *lora;   /* mirrors m->lora->block */
} mg_grads;

/* The backward pass's memory for a [B, T] batch. The caller allocates it before it writes any
 * gradient (the LM head's, from the token losses), so that running out of memory fails the step
 * with the accumulated gradients as they were, rather than half a step's worth added. */
typedef struct {
    int32_t *ids_host;  /* host copy of the token ids, for the embedding gradient */
    mg_workspace arena; /* backend memory for every per-layer buffer */
    int B, T;
} mg_backward_scratch;

int mg_backward_scratch_init(mg_backward_scratch *s, const mg_model *m, int B, int T,
                             mg_error *err);
/* Safe on a zeroed or failed scratch. */
void mg_backward_scratch_release(mg_backward_scratch *s);

/* Accumulates into g the gradients of a scalar loss whose gradient with respect to the final
 * hidden states (after the final norm) is dhidden[B*T, D], for the pass `train` recorded with
 * `cache` (one slot per layer, filled from 0 with the T tokens of each row), in the memory of
 * `s` (made for the same B and T). It allocates nothing. Gradients flowing through the LM head
 * are the caller's (they need the logits). */
int mg_model_backward(const mg_model *m, const mg_grads *g, const mg_train_pass *train,
                      const mg_kv_cache *cache, const float *dhidden, const int32_t *tokens,
                      const uint8_t *roles, const int32_t *segments, int B, int T,
                      mg_backward_scratch *s, mg_error *err);

#endif
