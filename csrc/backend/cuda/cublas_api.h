/* The few cuBLAS declarations the backend uses, written out here so that the build needs neither
 * cuBLAS headers nor a link-time dependency: libcublas is dlopen'ed when a backend is created
 * (gemm.cu), so a wheel built with nvcc imports on machines without cuBLAS or without a GPU.
 *
 * The values are cuBLAS's ABI, checked against the real headers' text:
 * - cublasOperation_t (cublas_api.h): CUBLAS_OP_N = 0, CUBLAS_OP_T = 1;
 * - cublasMath_t (cublas_api.h): CUBLAS_DEFAULT_MATH = 0 (no TF32, no BF16x9 emulation);
 * - cublasComputeType_t (cublas_api.h): CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_32F_PEDANTIC = 69,
 *   CUBLAS_COMPUTE_32F_FAST_TF32 = 77;
 * - cublasGemmAlgo_t (cublas_api.h): CUBLAS_GEMM_DEFAULT = -1;
 * - cublasStatus_t (cublas_api.h): SUCCESS 0, NOT_INITIALIZED 1, ALLOC_FAILED 3,
 *   INVALID_VALUE 7, ARCH_MISMATCH 8, MAPPING_ERROR 11, EXECUTION_FAILED 13, INTERNAL_ERROR 14,
 *   NOT_SUPPORTED 15, LICENSE_ERROR 16;
 * - cudaDataType (library_types.h, CUDA 13.0's copy in the toolkit): CUDA_R_32F = 0,
 *   CUDA_R_16BF = 14.
 * The enums are passed as int, which is how a C enum of these ranges is passed in the x86-64
 * and aarch64 calling conventions; cublasHandle_t is an opaque pointer. The entry points are
 * the _v2 names that cublas_v2.h maps cublasCreate & co. to, as exported by libcublas.so. */
#ifndef MG_BACKEND_CUDA_CUBLAS_API_H
#define MG_BACKEND_CUDA_CUBLAS_API_H

#include <stddef.h>

#ifdef MG_CUDA_EMULATE
#include "emulate/emulator.h"
#else
#include <cuda_runtime.h>
#endif

enum {
    MG_CUBLAS_STATUS_SUCCESS = 0,
    MG_CUBLAS_STATUS_NOT_INITIALIZED = 1,
    MG_CUBLAS_STATUS_ALLOC_FAILED = 3,
    MG_CUBLAS_STATUS_INVALID_VALUE = 7,
    MG_CUBLAS_STATUS_ARCH_MISMATCH = 8,
    MG_CUBLAS_STATUS_MAPPING_ERROR = 11,
    MG_CUBLAS_STATUS_EXECUTION_FAILED = 13,
    MG_CUBLAS_STATUS_INTERNAL_ERROR = 14,
    MG_CUBLAS_STATUS_NOT_SUPPORTED = 15,
    MG_CUBLAS_STATUS_LICENSE_ERROR = 16,
};
enum { MG_CUBLAS_OP_N = 0, MG_CUBLAS_OP_T = 1 };
enum { MG_CUBLAS_DEFAULT_MATH = 0 };
enum { MG_CUDA_R_32F = 0, MG_CUDA_R_16BF = 14 };
enum {
    MG_CUBLAS_COMPUTE_32F = 68,
    MG_CUBLAS_COMPUTE_32F_PEDANTIC = 69,
    MG_CUBLAS_COMPUTE_32F_FAST_TF32 = 77
};
enum { MG_CUBLAS_GEMM_DEFAULT = -1 };

/* The loaded entry points (all return a cublasStatus_t). */
typedef struct {
    int (*create)(void **handle);
    int (*destroy)(void *handle);
    int (*set_stream)(void *handle, cudaStream_t stream);
    int (*set_workspace)(void *handle, void *workspace, size_t bytes);
    int (*set_math_mode)(void *handle, int mode);
    int (*gemm_ex)(void *handle, int transa, int transb, int m, int n, int k, const void *alpha,
                   const void *A, int Atype, int lda, const void *B, int Btype, int ldb,
                   const void *beta, void *C, int Ctype, int ldc, int compute_type, int algo);
    int (*gemm_strided_batched_ex)(void *handle, int transa, int transb, int m, int n, int k,
                                   const void *alpha, const void *A, int Atype, int lda,
                                   long long stride_a, const void *B, int Btype, int ldb,
                                   long long stride_b, const void *beta, void *C, int Ctype,
                                   int ldc, long long stride_c, int batch, int compute_type,
                                   int algo);
    char library[512]; /* what was loaded (a path or a soname) */
} mg_cublas_api;

/* cuBLAS's entry points, loaded once per process (thread-safe); NULL with the reason in `why`
 * (naming every library tried) when none loads. In emulation: the host emulation of
 * emulate/cublas.cc. */
const mg_cublas_api *mg_cublas_load(char *why, size_t why_len);

/* The name of a cublasStatus_t, for messages. */
const char *mg_cublas_status_name(int status);

#ifdef MG_CUDA_EMULATE
/* Column-major cuBLAS semantics on the host (emulate/cublas.cc). */
const mg_cublas_api *mg_emu_cublas(void);
#endif

#endif
