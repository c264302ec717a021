/* What a training forward pass keeps for the backward pass: every layer's inputs to the ops
 * whose gradients need them. Keys and values stay in the pass's key/value cache (one slot per
 * layer). One allocation holds it all, and later passes reuse it: at batch 8 x 128 on a 135M
 * model it is 3 GB, and fresh pages for it cost every step about 4% in page faults. */
#ifndef MG_MODEL_ACTIVATIONS_H
#define MG_MODEL_ACTIVATIONS_H

#include "../backend/backend.h"
#include "../core/error.h"
#include "config.h"
#include "lora.h"

typedef struct {
    float *x_in;                    /* [N, D] residual stream entering the layer */
    float *h1;                      /* [N, D] attention-norm output */
    float *q;                       /* [N, QD] queries after RoPE */
    float *att;                     /* [N, QD] attention output (input of wo) */
    float *att_stats;               /* [N x n_heads] attention statistics, or NULL (backend.h) */
    float *x_mid;                   /* [N, D] residual stream after attention */
    float *h2;                      /* [N, D] MLP-norm output */
    float *gate;                    /* [N, F] gate projection (LLaMA) */
    float *up;                      /* [N, F] up projection, before the activation */
    float *act;                     /* [N, F] activation output (input of w_down) */
    float *lora_u[MG_LORA_TARGETS]; /* [N, rank] drop(x) A^T per adapted target */
} mg_layer_activations;

typedef struct {
    const mg_backend *be; /* whose memory holds the block */
    long N;
    float *block;
    size_t capacity; /* floats the block holds (at least what N needs) */
    mg_layer_activations *layers;
    float *x_final; /* [N, D] residual stream entering the final norm */
    float *hidden;  /* [N, D] final-norm output */
    int *pos;       /* [N] positions (backend memory) */
} mg_activations;

/* Lays out the activations of N rows. `a` is zeroed before its first use; an earlier init's
 * block is kept when it is large enough and on the same backend, and replaced otherwise. */
int mg_activations_init(mg_activations *a, const mg_backend *be, const mg_config *c,
                        const mg_lora *lora, long N, mg_error *err);
/* Frees the block and the table; `a` is zeroed and may be initialised again. */
void mg_activations_release(mg_activations *a);

/* Settings of one training (or evaluation) pass of the forward. */
typedef struct mg_train_pass_s {
    mg_activations *acts; /* record for the backward pass, or NULL */
    float resid_dropout;  /* on the attention and MLP outputs before the residual add */
    float lora_dropout;   /* on LoRA inputs */
    uint64_t seed;        /* dropout masks are a function of (seed, site, element) */
} mg_train_pass;

/* Dropout streams: one per site and layer, so masks never repeat within a pass. */
#define MG_DROP_STREAM_ATTN(l) ((uint64_t)(l) * 16 + 0)
#define MG_DROP_STREAM_MLP(l) ((uint64_t)(l) * 16 + 1)
#define MG_DROP_STREAM_LORA(l, t) ((uint64_t)(l) * 16 + 2 + (uint64_t)(t))

#endif
