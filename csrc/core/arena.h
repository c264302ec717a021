/* Bump allocator over one block: a forward pass takes all its activations from one arena,
 * sized up front, so nothing allocates inside the per-layer or per-token loops. */
#ifndef MG_CORE_ARENA_H
#define MG_CORE_ARENA_H

#include <stddef.h>

#include "error.h"

typedef struct {
    char *base;
    size_t size;
    size_t used;
} mg_arena;

/* Reserves `bytes` (64-byte aligned). */
int mg_arena_init(mg_arena *a, size_t bytes, mg_error *err);
/* Returns a 64-byte aligned region of count floats, or NULL with err set when the plan was short.
 */
float *mg_arena_floats(mg_arena *a, size_t count, mg_error *err);
void mg_arena_release(mg_arena *a);

/* Bytes that mg_arena_floats(count) will consume, for sizing an arena before creating it. */
static inline size_t mg_arena_floats_bytes(size_t count) {
    return (count * sizeof(float) + 63) & ~(size_t)63;
}

#endif
