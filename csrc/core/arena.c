#include "arena.h"

#include "alloc.h"

int mg_arena_init(mg_arena *a, size_t bytes, mg_error *err) {
    a->used = 0;
    a->size = bytes;
    a->base = mg_alloc_uninit(bytes, 1, "activation arena", err);
    return a->base ? 0 : -1;
}

float *mg_arena_floats(mg_arena *a, size_t count, mg_error *err) {
    size_t need = mg_arena_floats_bytes(count);
    if (need > a->size - a->used) {
        mg_fail(err, MG_ERR_NOMEM, "internal: activation arena too small (%zu more bytes)", need);
        return NULL;
    }
    float *p = (float *)(a->base + a->used);
    a->used += need;
    return p;
}

void mg_arena_release(mg_arena *a) {
    mg_free(a->base);
    a->base = NULL;
    a->size = a->used = 0;
}
