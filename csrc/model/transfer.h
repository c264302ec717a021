/* Moving data between the host and a model's backend. On the CPU backend the host memory is the
 * backend's memory, so staging returns the host pointer and nothing is copied. */
#ifndef MG_MODEL_TRANSFER_H
#define MG_MODEL_TRANSFER_H

#include <stdlib.h>
#include <string.h>

#include "../backend/backend.h"

static inline int mg_on_host(const mg_backend *be) {
    return be->device == MG_DEVICE_CPU;
}

/* A host array as the backend sees it: the array itself on the CPU, else its copy uploaded into
 * `dev` (bytes of backend memory). */
static inline const void *mg_stage(const mg_backend *be, void *dev, const void *host,
                                   size_t bytes) {
    if (mg_on_host(be)) return host;
    if (bytes) be->upload(be, dev, host, bytes);
    return dev;
}

/* Bytes of staging buffer to reserve for a host array: none on the CPU. */
static inline size_t mg_stage_bytes(const mg_backend *be, size_t bytes) {
    return mg_on_host(be) ? 0 : bytes;
}

/* dst (memory of `to`) = src (memory of `from`). Two distinct GPU backends pass through the
 * host. Returns 0, or -1 when the bounce buffer cannot be allocated. */
static inline int copy_between(const mg_backend *from, const mg_backend *to, void *dst,
                               const void *src, size_t bytes) {
    if (bytes == 0) return 0;
    if (mg_on_host(from) && mg_on_host(to)) {
        memcpy(dst, src, bytes);
    } else if (mg_on_host(from)) {
        to->upload(to, dst, src, bytes);
    } else if (mg_on_host(to)) {
        from->download(from, dst, src, bytes);
    } else if (from == to) {
        to->copy(to, dst, src, bytes);
    } else {
        void *bounce = malloc(bytes);
        if (bounce == NULL) return -1;
        from->download(from, bounce, src, bytes);
        to->upload(to, dst, bounce, bytes);
        free(bounce);
    }
    return 0;
}

#endif
