#include "kv_cache.h"

#include <string.h>

#include "../core/alloc.h"

int mg_kv_cache_init(mg_kv_cache *c, const mg_backend *be, const mg_config *cfg, int B,
                     int capacity, int n_slots, mg_error *err) {
    memset(c, 0, sizeof(*c));
    if (B <= 0 || capacity <= 0 || n_slots <= 0)
        return mg_fail(err, MG_ERR_VALUE, "invalid cache size (%d rows x %d tokens)", B, capacity);
    c->be = be;
    c->n_slots = n_slots;
    c->B = B;
    c->capacity = capacity;
    c->kv_dim = cfg->n_kv_heads * cfg->head_dim;
    size_t rows = (size_t)n_slots * (size_t)B * (size_t)capacity, floats;
    if (mg_mul_size(rows, (size_t)c->kv_dim, &floats) != 0)
        return mg_fail(err, MG_ERR_NOMEM, "key/value cache of %zu rows is too large", rows);
    /* keys and values together (each alone may pass the per-allocation check); host memory
     * bounds a cache on the CPU only (a GPU's allocator reports its own shortage) */
    if (floats > SIZE_MAX / (2 * sizeof(float)) ||
        (be->device == MG_DEVICE_CPU && 2 * sizeof(float) * floats >= MG_CHECKED_ALLOC &&
         2 * sizeof(float) * floats > mg_memory_available()))
        return mg_fail(err, MG_ERR_NOMEM,
                       "cannot allocate the key/value cache: %zu bytes needed, more than the "
                       "memory available",
                       2 * sizeof(float) * floats);
    if (be->device == MG_DEVICE_CPU) {
        c->k = mg_alloc_uninit(floats, sizeof(float), "key cache", err);
        c->v = mg_alloc_uninit(floats, sizeof(float), "value cache", err);
        c->roles = mg_alloc((size_t)B * capacity, sizeof(uint8_t), "cache roles", err);
        c->segments = mg_alloc((size_t)B * capacity, sizeof(int32_t), "cache segments", err);
    } else {
        c->k = be->alloc(be, floats * sizeof(float), "key cache", err);
        if (c->k) c->v = be->alloc(be, floats * sizeof(float), "value cache", err);
        if (c->v) c->roles = be->alloc(be, (size_t)B * capacity, "cache roles", err);
        if (c->roles)
            c->segments =
                be->alloc(be, (size_t)B * capacity * sizeof(int32_t), "cache segments", err);
    }
    if (err->code != MG_OK) {
        mg_kv_cache_release(c);
        return err->code;
    }
    return MG_OK;
}

void mg_kv_cache_release(mg_kv_cache *c) {
    if (c->be != NULL && c->be->device != MG_DEVICE_CPU) {
        c->be->free(c->be, c->k);
        c->be->free(c->be, c->v);
        c->be->free(c->be, c->roles);
        c->be->free(c->be, c->segments);
    } else {
        mg_free(c->k);
        mg_free(c->v);
        mg_free(c->roles);
        mg_free(c->segments);
    }
    memset(c, 0, sizeof(*c));
}
