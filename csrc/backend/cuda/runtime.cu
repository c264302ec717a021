/* The CUDA backend's memory entries, its error reporting and the device count.
 *
 * Errors: the table's entries return nothing, and kernels fail asynchronously, so every
 * failure (a launch, a runtime call, a cuBLAS status) is recorded in the backend's sticky error
 * (the first one wins) and reported by the next `sync`, which the model layer calls before it
 * returns to Python. Only `alloc` reports at once, because its caller needs the pointer. */
#include "runtime.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

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

/* A block cache: passes allocate their workspaces per call, and cudaMalloc / cudaFree cost
 * tens of microseconds each (cudaFree also waits for the device), which a decode step of a few
 * hundred microseconds cannot afford. Freed blocks are kept and handed out again to a request
 * they fit closely; reuse is safe without waiting because all of a backend's work runs on its
 * one stream, in order. The cache is emptied when the device runs out of memory, and on free. */
#define MG_POOL_SLOTS 64

typedef struct {
    void *p;
    size_t bytes;
} mg_cuda_block;

struct mg_cuda_pool_s {
    pthread_mutex_t lock;
    int device;
    mg_cuda_block cached[MG_POOL_SLOTS];
    int n_cached;
    mg_cuda_block *live; /* every block handed out, with its size */
    int n_live, cap_live;
    mg_cuda_pool_s *next; /* in g_pools */
};

/* Every backend's cache (one per GPU model), so that an allocation that finds its device full
 * can take back the blocks the other models in this process keep cached there: with each cache
 * giving back only its own, two models could run out where one would not. The lock order is
 * g_pools_lock, then a pool's lock; an allocation drops its own pool's lock before taking
 * g_pools_lock. */
static pthread_mutex_t g_pools_lock = PTHREAD_MUTEX_INITIALIZER;
static mg_cuda_pool_s *g_pools = NULL;

int mg_cuda_pool_create(mg_cuda_ctx *ctx) {
    ctx->pool = static_cast<mg_cuda_pool_s *>(calloc(1, sizeof(mg_cuda_pool_s)));
    if (ctx->pool == NULL) return -1;
    pthread_mutex_init(&ctx->pool->lock, NULL);
    ctx->pool->device = ctx->device;
    pthread_mutex_lock(&g_pools_lock);
    ctx->pool->next = g_pools;
    g_pools = ctx->pool;
    pthread_mutex_unlock(&g_pools_lock);
    return 0;
}

static void pool_release_cached(mg_cuda_pool_s *pool) {
    for (int i = 0; i < pool->n_cached; i++)
        (void)cudaFree(pool->cached[i].p);
    pool->n_cached = 0;
}

void mg_cuda_pool_release_cached(mg_cuda_ctx *ctx) {
    pthread_mutex_lock(&g_pools_lock);
    for (mg_cuda_pool_s *pool = g_pools; pool != NULL; pool = pool->next) {
        if (pool->device != ctx->device) continue;
        pthread_mutex_lock(&pool->lock);
        pool_release_cached(pool);
        pthread_mutex_unlock(&pool->lock);
    }
    pthread_mutex_unlock(&g_pools_lock);
}

void mg_cuda_pool_free(mg_cuda_ctx *ctx) {
    mg_cuda_pool_s *pool = ctx->pool;
    if (pool == NULL) return;
    pthread_mutex_lock(&g_pools_lock);
    for (mg_cuda_pool_s **at = &g_pools; *at != NULL; at = &(*at)->next)
        if (*at == pool) {
            *at = pool->next;
            break;
        }
    pthread_mutex_unlock(&g_pools_lock);
    pool_release_cached(pool);
    for (int i = 0; i < pool->n_live; i++)
        (void)cudaFree(pool->live[i].p);
    free(pool->live);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
    ctx->pool = NULL;
}

/* The smallest cached block that holds `bytes` without wasting more than a quarter, or NULL. */
static void *pool_take(mg_cuda_pool_s *pool, size_t bytes, size_t *got) {
    int best = -1;
    for (int i = 0; i < pool->n_cached; i++) {
        const size_t b = pool->cached[i].bytes;
        if (b >= bytes && b - bytes <= bytes / 4 + 4096 &&
            (best < 0 || b < pool->cached[best].bytes))
            best = i;
    }
    if (best < 0) return NULL;
    void *p = pool->cached[best].p;
    *got = pool->cached[best].bytes;
    pool->cached[best] = pool->cached[--pool->n_cached];
    return p;
}

static int pool_track(mg_cuda_pool_s *pool, void *p, size_t bytes) {
    if (pool->n_live == pool->cap_live) {
        const int cap = pool->cap_live ? 2 * pool->cap_live : 64;
        void *grown = realloc(pool->live, sizeof(mg_cuda_block) * (size_t)cap);
        if (grown == NULL) return -1;
        pool->live = static_cast<mg_cuda_block *>(grown);
        pool->cap_live = cap;
    }
    pool->live[pool->n_live++] = {p, bytes};
    return 0;
}

void *cuda_alloc(const mg_backend *be, size_t bytes, const char *what, mg_error *err) {
    mg_cuda_pool_s *pool = mg_cuda_ctx_of(be)->pool;
    /* cudaMalloc(0) may return NULL with success; a real block keeps NULL meaning failure */
    const size_t request = bytes > 0 ? bytes : 256;
    pthread_mutex_lock(&pool->lock);
    size_t got = request;
    void *p = pool_take(pool, request, &got);
    cudaError_t status = cudaSuccess;
    if (p == NULL) {
        status = cudaMalloc(&p, request);
        if (status == cudaErrorMemoryAllocation) {
            /* give every cache on this device back and try once more (this pool's lock is
             * dropped meanwhile: see g_pools) */
            (void)cudaGetLastError();
            pthread_mutex_unlock(&pool->lock);
            mg_cuda_pool_release_cached(mg_cuda_ctx_of(be));
            pthread_mutex_lock(&pool->lock);
            status = cudaMalloc(&p, request);
        }
        if (status != cudaSuccess) p = NULL;
    }
    if (p != NULL && pool_track(pool, p, got) != 0) {
        (void)cudaFree(p);
        p = NULL;
        status = cudaErrorMemoryAllocation;
    }
    pthread_mutex_unlock(&pool->lock);
    if (p != NULL) {
        status = cudaMemsetAsync(p, 0, request, mg_cuda_stream(be));
        if (status == cudaSuccess) return p;
        cuda_free(be, p);
    }
    (void)cudaGetLastError();
    mg_fail(err, mg_cuda_code(status), "cannot allocate %zu bytes of GPU memory for %s on %s: %s",
            bytes, what ? what : "a buffer", be->name, cudaGetErrorString(status));
    return NULL;
}

void cuda_free(const mg_backend *be, void *p) {
    if (p == NULL) return;
    mg_cuda_pool_s *pool = mg_cuda_ctx_of(be)->pool;
    pthread_mutex_lock(&pool->lock);
    size_t bytes = 0;
    int found = 0;
    for (int i = pool->n_live - 1; i >= 0; i--)
        if (pool->live[i].p == p) {
            bytes = pool->live[i].bytes;
            pool->live[i] = pool->live[--pool->n_live];
            found = 1;
            break;
        }
    if (found && pool->n_cached == MG_POOL_SLOTS) { /* full: the oldest block goes back */
        (void)cudaFree(pool->cached[0].p);
        pool->cached[0] = pool->cached[--pool->n_cached];
    }
    if (found) pool->cached[pool->n_cached++] = {p, bytes};
    pthread_mutex_unlock(&pool->lock);
    if (!found)
        mg_cuda_fail(be, MG_ERR_VALUE,
                     "internal: freeing GPU memory this backend did not "
                     "allocate");
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
