/* The CUDA backend's memory entries, its error reporting and the device count.
 *
 * Errors: the table's entries return nothing, and kernels fail asynchronously, so every
 * failure (a launch, a runtime call, a cuBLAS status) is recorded in the backend's sticky error
 * (the first one wins) and reported by the next `sync`, which the model layer calls before it
 * returns to Python. Only `alloc` reports at once, because its caller needs the pointer. */
#include "runtime.h"

#include <stdarg.h>
#include <stdio.h>

/* A failed runtime call also sets the runtime's per-thread last error; clearing it keeps the
 * next launch check (cudaGetLastError in MG_LAUNCH) from blaming the wrong kernel. Sticky
 * errors (a fault in a kernel) cannot be cleared: every later call reports them again, and the
 * first report is the one kept. */
static mg_code mg_cuda_code(cudaError_t status) {
    return status == cudaErrorMemoryAllocation ? MG_ERR_NOMEM : MG_ERR_IO;
}

void mg_cuda_note(const mg_backend *be, cudaError_t status, const char *what) {
    if (status == cudaSuccess) return;
    (void)cudaGetLastError();
    mg_fail(&mg_cuda_ctx_of(be)->sticky, mg_cuda_code(status), "CUDA error in %s on %s: %s (%s)",
            what, be->name, cudaGetErrorString(status), cudaGetErrorName(status));
}

void mg_cuda_fail(const mg_backend *be, mg_code code, const char *fmt, ...) {
    mg_error *sticky = &mg_cuda_ctx_of(be)->sticky;
    if (sticky->code != MG_OK) return;
    sticky->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sticky->msg, sizeof sticky->msg, fmt, ap);
    va_end(ap);
}

void *cuda_alloc(const mg_backend *be, size_t bytes, const char *what, mg_error *err) {
    void *p = NULL;
    /* cudaMalloc(0) may return NULL with success; a real block keeps NULL meaning failure */
    const size_t request = bytes > 0 ? bytes : 256;
    cudaError_t status = cudaMalloc(&p, request);
    if (status == cudaSuccess) {
        status = cudaMemsetAsync(p, 0, request, mg_cuda_stream(be));
        if (status == cudaSuccess) return p;
        cudaFree(p);
        p = NULL;
    }
    (void)cudaGetLastError();
    mg_fail(err, mg_cuda_code(status), "cannot allocate %zu bytes of GPU memory for %s on %s: %s",
            bytes, what ? what : "a buffer", be->name, cudaGetErrorString(status));
    return NULL;
}

void cuda_free(const mg_backend *be, void *p) {
    if (p == NULL) return;
    /* cudaFree waits for the device, so work still reading p finishes first */
    mg_cuda_note(be, cudaFree(p), "cudaFree");
}

/* Uploads and downloads wait for the copy: the caller may reuse or read its host buffer as soon
 * as they return (a pageable buffer would be safe earlier, a pinned one would not). */
void cuda_upload(const mg_backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return;
    const cudaStream_t stream = mg_cuda_stream(be);
    mg_cuda_note(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream), "upload");
    mg_cuda_note(be, cudaStreamSynchronize(stream), "upload (synchronize)");
}

void cuda_download(const mg_backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return;
    const cudaStream_t stream = mg_cuda_stream(be);
    mg_cuda_note(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream), "download");
    mg_cuda_note(be, cudaStreamSynchronize(stream), "download (synchronize)");
}

/* Device-to-device work is ordered on the stream, which is all "complete" means to the ops that
 * follow; the host sees the result only through a download, which waits. */
void cuda_copy(const mg_backend *be, void *dst, const void *src, size_t bytes) {
    if (bytes == 0 || dst == src) return;
    mg_cuda_note(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, mg_cuda_stream(be)),
                 "copy");
}

void cuda_zero(const mg_backend *be, void *dst, size_t bytes) {
    if (bytes == 0) return;
    mg_cuda_note(be, cudaMemsetAsync(dst, 0, bytes, mg_cuda_stream(be)), "zero");
}

int cuda_sync(const mg_backend *be, mg_error *err) {
    mg_cuda_ctx *ctx = mg_cuda_ctx_of(be);
    mg_cuda_note(be, cudaStreamSynchronize(ctx->stream), "synchronize");
    if (ctx->sticky.code == MG_OK) return MG_OK;
    const mg_code code = ctx->sticky.code;
    mg_fail(err, code, "%s", ctx->sticky.msg);
    mg_error_clear(&ctx->sticky);
    return code;
}

int mg_cuda_device_count(char *why, size_t why_len) {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
        (void)cudaGetLastError();
        if (why && why_len)
            snprintf(why, why_len, "the CUDA runtime reports no usable device: %s (%s)",
                     cudaGetErrorString(status), cudaGetErrorName(status));
        return 0;
    }
    if (count <= 0 && why && why_len) snprintf(why, why_len, "no CUDA device found");
    return count > 0 ? count : 0;
}
