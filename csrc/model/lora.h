/* LoRA adapters (Hu et al. 2021) on the decoder's linear projections: y = x W^T + b +
 * (alpha / rank) * drop(x) A^T B^T with A [rank, in], B [out, rank]. The base stays frozen;
 * every A and B lives in one block so gradients and optimizer state mirror it. */
#ifndef MG_MODEL_LORA_H
#define MG_MODEL_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "../backend/backend.h"
#include "../core/error.h"
#include "config.h"
#include "params.h"

/* GPT-2's c_attn maps to q/k/v, attention c_proj to o, c_fc to up, mlp c_proj to down. */
typedef enum {
    MG_LORA_Q = 0,
    MG_LORA_K,
    MG_LORA_V,
    MG_LORA_O,
    MG_LORA_GATE,
    MG_LORA_UP,
    MG_LORA_DOWN,
    MG_LORA_TARGETS
} mg_lora_target;

typedef struct {
    float *A; /* [rank, in], NULL when the target is not adapted */
    float *B; /* [out, rank] */
    int in, out, rank;
} mg_lora_pair;

typedef struct {
    int rank;
    float alpha;
    float scale;      /* alpha / rank */
    unsigned targets; /* bit t set: target t adapted */
    int n_layers;
    const mg_backend *be; /* whose memory holds the block */
    float *block;         /* every A then B, pair by pair */
    size_t numel;
    mg_lora_pair *pairs; /* [n_layers * MG_LORA_TARGETS] */
    mg_param_slot *slots;
    int n_slots;
} mg_lora;

/* Creates adapters for `targets` (a GPT-2 model has no gate: its bit is ignored). A is drawn
 * uniform in +-1/sqrt(in) from `seed` (PEFT's kaiming-uniform bound), B is zero, so the adapted
 * model starts equal to the base. */
mg_lora *mg_lora_create(const mg_config *c, int rank, float alpha, unsigned targets, uint64_t seed,
                        mg_error *err);
void mg_lora_free(mg_lora *l);

/* A copy of l whose block lives in the memory of `be`. */
mg_lora *mg_lora_copy_to(const mg_lora *l, const mg_backend *be, mg_error *err);

static inline const mg_lora_pair *mg_lora_get(const mg_lora *l, int layer, mg_lora_target t) {
    if (l == NULL) return NULL;
    const mg_lora_pair *p = &l->pairs[layer * MG_LORA_TARGETS + t];
    return p->A ? p : NULL;
}

/* The same pair's place in a block that mirrors l->block (gradients, optimizer moments). */
static inline mg_lora_pair mg_lora_mirror(const mg_lora *l, const mg_lora_pair *p, float *mirror) {
    mg_lora_pair q = *p;
    q.A = mirror + (p->A - l->block);
    q.B = mirror + (p->B - l->block);
    return q;
}

/* out[N, O] (row stride ldo) += scale * u B^T with u = drop(inp) A^T stored in u[N, rank].
 * Dropout (rate p, stream (seed, stream)) is applied to a copy of inp in drop_buf[N, in]. */
void lora_forward(const mg_backend *be, float *out, int ldo, const float *inp, int N,
                  const mg_lora_pair *pair, float scale, float p, uint64_t seed, uint64_t stream,
                  float *drop_buf, float *u);

/* Backward of lora_forward given dout (row stride ldd): accumulates dA, dB (may be NULL) and
 * dinp[N, in] (may be NULL). scratch: N * (rank + in) floats. */
void lora_backward(const mg_backend *be, float *dinp, float *dA, float *dB, const float *dout,
                   int ldd, const float *inp, const float *u, int N, const mg_lora_pair *pair,
                   float scale, float p, uint64_t seed, uint64_t stream, float *scratch);

/* W += scale * B A for every adapted projection of the model's parameters. */
void mg_lora_merge(const mg_backend *be, const mg_lora *l, mg_params *params, const mg_config *c);

/* The base weight (and its row offset inside it, for q/k/v of fused GPT-2 c_attn export) that
 * target t of layer l adapts. */
float *mg_lora_base_weight(mg_params *params, int layer, mg_lora_target t);

#endif
