/* Keys and values of the tokens a decoder has seen, per layer, with each key's role and segment
 * so the unified rule can be applied to later queries. A one-shot forward pass uses a cache of
 * one layer slot (reused by every layer); generation and infilling keep all layers. */
#ifndef MG_MODEL_KV_CACHE_H
#define MG_MODEL_KV_CACHE_H

#include <stdint.h>

#include "../backend/backend.h"
#include "../core/error.h"
#include "config.h"

typedef struct {
    const mg_backend *be; /* whose memory holds k, v, roles and segments */
    int n_slots;          /* layer slots: n_layers, or 1 when layers need not be kept */
    int B;                /* rows */
    int capacity;         /* tokens per row */
    int length;           /* tokens filled per row (the same for every row; padding fills gaps) */
    int kv_dim;           /* n_kv_heads * head_dim */
    float *k, *v;         /* [n_slots, B, capacity, kv_dim] */
    uint8_t *roles;       /* [B, capacity] */
    int32_t *segments;    /* [B, capacity], -1 = padding */
} mg_kv_cache;

int mg_kv_cache_init(mg_kv_cache *c, const mg_backend *be, const mg_config *cfg, int B,
                     int capacity, int n_slots, mg_error *err);
void mg_kv_cache_release(mg_kv_cache *c);

/* Keys (or values) of layer slot `slot`, row b, from token 0. */
static inline float *mg_kv_cache_rows(const mg_kv_cache *c, float *base, int slot, int b) {
    return base + (((long)slot * c->B + b) * c->capacity) * c->kv_dim;
}

#endif
