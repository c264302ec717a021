/* All parameters of a model live in one float32 block. A slot table names each tensor and its
 * place in the block, so loading, exporting (and later gradients and optimizer state, which
 * mirror the block) iterate one list instead of knowing every field. */
#ifndef MG_MODEL_PARAMS_H
#define MG_MODEL_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"
#include "../core/tensor.h"
#include "config.h"

#define MG_PARAM_NAME_MAX 64

typedef struct mg_param_slot_s {
    char name[MG_PARAM_NAME_MAX]; /* e.g. "layers.3.wq.weight" */
    int ndim;
    int64_t shape[2];
    size_t offset; /* in floats, into the parameter block */
    size_t numel;
} mg_param_slot;

typedef struct {
    float *attn_norm_w, *attn_norm_b;
    float *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo;
    float *mlp_norm_w, *mlp_norm_b;
    float *w_gate, *b_gate, *w_up, *b_up, *w_down, *b_down;
} mg_layer_params;

typedef struct {
    float *block; /* one allocation holding every parameter */
    size_t numel;
    mg_param_slot *slots;
    int n_slots;
    float *tok_embeddings, *pos_embeddings, *final_norm_w, *final_norm_b, *lm_head;
    mg_layer_params *layers;
} mg_params;

/* A tensor offered by a loader, by name; data is only read during mg_params_create. */
typedef struct {
    const char *name;
    mg_tensor tensor;
} mg_named_tensor;

/* Lays out the slots the config needs, then copies each offered tensor into its slot.
 * Required tensors must be present with the exact shape; optional ones (biases of the LLaMA
 * family, an untied lm_head) are taken when offered; an unknown name is an error. */
int mg_params_create(mg_params *p, const mg_config *c, const mg_named_tensor *tensors, int count,
                     mg_error *err);
void mg_params_release(mg_params *p);

#endif
