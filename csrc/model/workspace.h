/* A pass's scratch in its backend's memory: one block, sized up front, handed out by an arena,
 * so nothing allocates inside the per-layer loops on either backend. */
#ifndef MG_MODEL_WORKSPACE_H
#define MG_MODEL_WORKSPACE_H

#include "../backend/backend.h"
#include "../core/arena.h"

typedef struct {
    const mg_backend *be;
    mg_arena arena;
} mg_workspace;

static inline int mg_workspace_init(mg_workspace *w, const mg_backend *be, size_t bytes,
                                    mg_error *err) {
    w->be = be;
    if (be->device == MG_DEVICE_CPU) return mg_arena_init(&w->arena, bytes, err) == 0 ? 0 : -1;
    w->arena.used = 0;
    w->arena.size = bytes;
    w->arena.base = (char *)be->alloc(be, bytes ? bytes : 64, "pass workspace", err);
    return w->arena.base ? 0 : -1;
}

/* count floats, 64-byte aligned; NULL with err set when the plan was short */
static inline float *mg_workspace_floats(mg_workspace *w, size_t count, mg_error *err) {
    return mg_arena_floats(&w->arena, count, err);
}

/* Bytes to reserve for an array of `bytes` bytes taken with mg_workspace_floats. */
static inline size_t mg_workspace_bytes_for(size_t bytes) {
    return mg_arena_floats_bytes((bytes + sizeof(float) - 1) / sizeof(float));
}

static inline void mg_workspace_release(mg_workspace *w) {
    if (w->be->device == MG_DEVICE_CPU) {
        mg_arena_release(&w->arena);
    } else {
        w->be->free(w->be, w->arena.base);
        w->arena.base = NULL;
    }
}

#endif
