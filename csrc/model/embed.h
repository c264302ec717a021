/* Sentence embeddings: a bidirectional (all-CONTEXT) forward pass and pooling, in one call. */
#ifndef MG_MODEL_EMBED_H
#define MG_MODEL_EMBED_H

#include <stdint.h>

#include "../ops/pooling.h"
#include "model.h"

/* tokens/segments [B, T] (segments -1: padding), every token CONTEXT. out[B, D] pools the final
 * states t in [start[b], end[b]) of row b (see pooling_forward); the range must hold no
 * padding. normalize: unit L2 rows. */
int mg_model_embed(const mg_model *m, const int32_t *tokens, const int32_t *segments,
                   const int32_t *start, const int32_t *end, int B, int T, mg_pooling mode,
                   int normalize, float *out, mg_error *err);

#endif
