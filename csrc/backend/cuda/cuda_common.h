/* What every .cu file of the CUDA backend includes. Under nvcc it is the CUDA runtime; built with
 * MG_CUDA_EMULATE (a host C++ compiler, for tests on machines without a GPU) it is the CPU
 * emulator of emulate/emulator.h, which runs each kernel launch block by block with every thread
 * of a block a coroutine, so __syncthreads, shared memory and warp shuffles keep their meaning.
 *
 * Rules for kernel code, so that both builds compile it:
 * - launch only through MG_LAUNCH (never <<< >>> directly);
 * - dynamic shared memory only through MG_DYNAMIC_SHARED; static __shared__ arrays are fine;
 * - device built-ins limited to what emulate/emulator.h provides (threadIdx, blockIdx, blockDim,
 *   gridDim, warpSize, __syncthreads, __syncwarp, __shfl_xor_sync, __shfl_down_sync,
 *   __shfl_sync, atomicAdd on float/double/int/unsigned long long, atomicMax on int, __expf,
 *   __logf, rsqrtf, __fdividef, __float2bfloat16, __bfloat162float and the C math library);
 * - no device-side printf, no dynamic parallelism, no cooperative groups. */
#ifndef MG_BACKEND_CUDA_COMMON_H
#define MG_BACKEND_CUDA_COMMON_H

#ifdef MG_CUDA_EMULATE
#include "emulate/emulator.h"
#else
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#endif

#include "../../core/error.h"
#include "cuda_ops.h"

/* The backend's state (mg_backend.ctx). One per backend object: a model on the GPU owns one. */
typedef struct {
    int device;
    cudaStream_t stream;
    void *cublas;    /* cublasHandle_t, from the dlopen'ed libcublas */
    int sm_count;    /* multiprocessors */
    int smem_optin;  /* largest dynamic shared memory a block may opt in to (bytes) */
    void *workspace; /* GEMM and reduction scratch (device) */
    size_t workspace_bytes;
    double *host_result;         /* pinned host slot for scalar results (loss sums, norms) */
    mg_error sticky;             /* first asynchronous failure, reported by the next sync */
    struct mg_cuda_pool_s *pool; /* freed blocks kept for reuse (runtime.cu) */
} mg_cuda_ctx;

static inline mg_cuda_ctx *mg_cuda_ctx_of(const mg_backend *be) {
    return (mg_cuda_ctx *)be->ctx;
}

static inline cudaStream_t mg_cuda_stream(const mg_backend *be) {
    return mg_cuda_ctx_of(be)->stream;
}

/* Records the first failure of a launch or runtime call (by name) for the next sync. */
void mg_cuda_note(const mg_backend *be, cudaError_t status, const char *what);

/* Grid size for n independent items at `threads` per block (grid-stride loops cover the rest). */
static inline unsigned mg_cuda_blocks(long n, int threads) {
    long b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 65535L * 16) b = 65535L * 16;
    return (unsigned)b;
}

#ifdef MG_CUDA_EMULATE
#define MG_LAUNCH(kernel, grid, block, smem, be, ...)                                              \
    do {                                                                                           \
        mg_emu_launch(dim3(grid), dim3(block), (size_t)(smem), [&]() { kernel(__VA_ARGS__); });    \
        mg_cuda_note((be), cudaGetLastError(), #kernel);                                           \
    } while (0)
#define MG_DYNAMIC_SHARED(type, name) type *name = reinterpret_cast<type *>(mg_emu_dynamic_shared())
#else
#define MG_LAUNCH(kernel, grid, block, smem, be, ...)                                              \
    do {                                                                                           \
        kernel<<<(grid), (block), (smem), mg_cuda_stream(be)>>>(__VA_ARGS__);                      \
        mg_cuda_note((be), cudaGetLastError(), #kernel);                                           \
    } while (0)
#define MG_DYNAMIC_SHARED(type, name)                                                              \
    extern __shared__ __align__(128) unsigned char mg_dynamic_smem[];                              \
    type *name = reinterpret_cast<type *>(mg_dynamic_smem)
#endif

/* Loop unrolling for nvcc (registers instead of local-memory arrays); nothing for the emulator's
 * host compiler. */
#if defined(__CUDACC__) && !defined(MG_CUDA_EMULATE)
#define MG_UNROLL _Pragma("unroll")
#else
#define MG_UNROLL
#endif

#endif
