/* Internals shared by the CUDA backend's runtime files (runtime.cu, gemm.cu, cuda_backend.cu),
 * and the staging area that attention.cu also takes. Kernel files need only cuda_common.h. */
#ifndef MG_BACKEND_CUDA_RUNTIME_H
#define MG_BACKEND_CUDA_RUNTIME_H

#include "cuda_common.h"

/* Bytes at the start of mg_cuda_ctx.workspace that cuBLAS owns (cublasSetWorkspace): NVIDIA
 * recommends 32 MiB on Hopper. The rest of the workspace, if any, is the staging area: the
 * bfloat16 copies of GEMM operands (gemm.cu) and of attention's operands (attention_packed.cu),
 * grown on demand by mg_cuda_staging. */
#define MG_CUDA_CUBLAS_WORKSPACE ((size_t)32 << 20)

/* Doubles in mg_cuda_ctx.host_result (pinned). */
#define MG_CUDA_HOST_RESULT_SLOTS 64

#ifdef __cplusplus
extern "C" {
#endif

/* Records a failure with a message of our own (not a cudaError_t) for the next sync, unless an
 * earlier one is pending. */
void mg_cuda_fail(const mg_backend *be, mg_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The backend's block cache (runtime.cu): created with the backend, freed (with every block
 * still cached or handed out) when it is. */
int mg_cuda_pool_create(mg_cuda_ctx *ctx);
void mg_cuda_pool_free(mg_cuda_ctx *ctx);
/* Gives the free blocks of every cache on ctx's device back to the device (the caches of other
 * models in this process included), before retrying an allocation that failed. Takes the pools'
 * locks: the caller holds none. */
void mg_cuda_pool_release_cached(mg_cuda_ctx *ctx);

/* The staging area (after cuBLAS's part of the workspace), grown to at least `bytes`; NULL (the
 * failure recorded) if the GPU has no room. Ops run one at a time on the backend's stream, so
 * each may use the whole area for the length of its call; growing it waits for the device (the
 * old area is freed), so a pointer is good only until the next call. 256-byte aligned. */
void *mg_cuda_staging(const mg_backend *be, size_t bytes);

#ifdef __cplusplus
}
#endif

#endif
