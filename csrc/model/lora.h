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

/* One adapted projection in a LoRA call: its pair and dropout stream; forward: out[N, O] (row
 * stride ldo) += scale u B^T; backward: its output gradient dout (row stride ldd) and dA, dB
 * (accumulated; either may be NULL); u = drop(inp) A^T [N, rank], written by the forward and
 * read by the backward. */
typedef struct {
    const mg_lora_pair *pair;
    uint64_t stream;
    float *out;
    int ldo;
    const float *dout;
    int ldd;
    float *u;
    float *dA, *dB;
} mg_lora_site;

/* The LoRA updates of n (at most MG_DROPPED_MAX) adapted projections of one input inp[N, in]
 * (q, k and v share the attention norm's output; gate and up the MLP norm's), each with its own
 * dropout mask (rate p, stream (seed, site's stream)). With dropout the down products take one
 * dropped_matmul_forward call, which on a GPU reads inp once for all of them, so the sites' u
 * must be distinct; without, the sites run one after another (they may share u). drop_buf:
 * N * in floats of scratch for backends that materialise drop(inp) (the CPU). */
void lora_forward(const mg_backend *be, const mg_lora_site *sites, int n, const float *inp, int N,
                  float scale, float p, uint64_t seed, float *drop_buf);

/* Backward of lora_forward: accumulates every site's dA and dB, and dinp[N, in] (may be NULL)
 * += the input gradient of all n sites, in site order. scratch: N * (n * rank + in) floats. */
void lora_backward(const mg_backend *be, float *dinp, const mg_lora_site *sites, int n,
                   const float *inp, int N, float scale, float p, uint64_t seed, float *scratch);

/* W += scale * B A for every adapted projection of the model's parameters. */
void mg_lora_merge(const mg_backend *be, const mg_lora *l, mg_params *params, const mg_config *c);

/* The base weight (and its row offset inside it, for q/k/v of fused GPT-2 c_attn export) that
 * target t of layer l adapts. */
float *mg_lora_base_weight(mg_params *params, int layer, mg_lora_target t);

#endif
