#include "activations.h"

#include <string.h>

#include "../core/alloc.h"

/* Every buffer starts on a 64-byte boundary (16 floats): the GPU kernels take their float4 paths
 * and cuBLAS its aligned ones only on 16-byte aligned rows, and a size such as N * n_heads (9 heads
 * for SmolLM2) would otherwise shift every buffer after it. */
static size_t padded(size_t n) {
    return (n + 15) & ~(size_t)15;
}

/* Walks the layout of N rows once: with base set, points every buffer into it; with base NULL,
 * only counts. Returns the floats the layout takes, so the size and the pointers cannot drift. */
static size_t lay_out(mg_activations *a, const mg_config *c, const mg_lora *lora, size_t N,
                      size_t stats, float *base) {
    const size_t D = c->dim, F = c->hidden_dim, QD = (size_t)c->n_heads * c->head_dim;
    const size_t r = lora ? (size_t)lora->rank : 0;
    size_t off = 0;
    mg_layer_activations counting; /* where the pointers go while only counting */
#define TAKE(n) (off += padded(n), base ? base + off - padded(n) : NULL)
    for (int l = 0; l < c->n_layers; l++) {
        mg_layer_activations *L = base ? &a->layers[l] : &counting;
        L->x_in = TAKE(N * D);
        L->h1 = TAKE(N * D);
        L->q = TAKE(N * QD);
        L->att = TAKE(N * QD);
        L->att_stats = stats ? TAKE(N * stats) : NULL;
        L->x_mid = TAKE(N * D);
        L->h2 = TAKE(N * D);
        L->gate = TAKE(N * F);
        L->up = TAKE(N * F);
        L->act = TAKE(N * F);
        for (int t = 0; t < MG_LORA_TARGETS; t++)
            L->lora_u[t] = lora && ((lora->targets >> t) & 1) ? TAKE(N * r) : NULL;
    }
    float *x_final = TAKE(N * D), *hidden = TAKE(N * D), *pos = TAKE(N);
#undef TAKE
    if (base) {
        a->x_final = x_final;
        a->hidden = hidden;
        a->pos = (int *)pos;
    }
    return off;
}

int mg_activations_init(mg_activations *a, const mg_backend *be, const mg_config *c,
                        const mg_lora *lora, long N, mg_error *err) {
    const size_t stats = be->attention_saves_stats ? (size_t)c->n_heads : 0;
    const size_t rows = lay_out(a, c, lora, (size_t)N, stats, NULL);
    if (a->block != NULL && (a->be != be || a->capacity < rows)) mg_activations_release(a);
    if (a->layers == NULL)
        a->layers =
            mg_alloc((size_t)c->n_layers, sizeof(mg_layer_activations), "activation table", err);
    if (a->layers != NULL && a->block == NULL) {
        a->be = be;
        a->block = be->device == MG_DEVICE_CPU
                       ? mg_alloc_uninit(rows, sizeof(float), "training activations", err)
                       : be->alloc(be, rows * sizeof(float), "training activations", err);
        a->capacity = a->block != NULL ? rows : 0;
    }
    if (err->code != MG_OK) {
        mg_activations_release(a);
        return err->code;
    }
    a->N = N;
    lay_out(a, c, lora, (size_t)N, stats, a->block);
    return MG_OK;
}

void mg_activations_release(mg_activations *a) {
    if (a->be != NULL && a->be->device != MG_DEVICE_CPU)
        a->be->free(a->be, a->block);
    else
        mg_free(a->block);
    mg_free(a->layers);
    memset(a, 0, sizeof(*a));
}
