/* Moving data between the host and a model's backend. On the CPU backend the host memory is the
 * backend's memory, so staging returns the host pointer and nothing is copied. */
#ifndef MG_MODEL_TRANSFER_H
#define MG_MODEL_TRANSFER_H

#include <string.h>

#include "../backend/backend.h"
#include "../core/alloc.h"

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

/* Bytes of host memory a copy between two GPUs passes through at a time: a model's weights
 * need not fit in host memory twice over. */
#define MG_BOUNCE_BYTES ((size_t)64 << 20)

/* dst (memory of `to`) = src (memory of `from`). Two distinct GPU backends pass through the
 * host, in pieces of MG_BOUNCE_BYTES. MG_OK, or MG_ERR_NOMEM in err when that buffer cannot be
 * allocated (dst then holds nothing useful). */
static inline int copy_between(const mg_backend *from, const mg_backend *to, void *dst,
                               const void *src, size_t bytes, mg_error *err) {
    if (bytes == 0) return MG_OK;
    if (mg_on_host(from) && mg_on_host(to)) {
        memcpy(dst, src, bytes);
    } else if (mg_on_host(from)) {
        to->upload(to, dst, src, bytes);
    } else if (mg_on_host(to)) {
        from->download(from, dst, src, bytes);
    } else if (from == to) {
        to->copy(to, dst, src, bytes);
    } else {
        const size_t piece = bytes < MG_BOUNCE_BYTES ? bytes : MG_BOUNCE_BYTES;
        char *bounce = mg_alloc_uninit(piece, 1, "transfer buffer between GPUs", err);
        if (bounce == NULL) return err->code;
        for (size_t at = 0; at < bytes; at += piece) {
            const size_t n = bytes - at < piece ? bytes - at : piece;
            from->download(from, bounce, (const char *)src + at, n);
            to->upload(to, (char *)dst + at, bounce, n);
        }
        mg_free(bounce);
    }
    return MG_OK;
}

#endif
