/* Matrix products on the GPU: cuBLAS (dlopen'ed, see cublas_api.h) plus the small kernels of
 * the linear layers (bias add, bias gradient, bfloat16 staging).
 *
 * Row-major to column-major. cuBLAS is column-major; our matrices are row-major. A row-major
 * matrix X[r, c] with row stride ld occupies exactly the memory of the column-major matrix X^T
 * (c x r, leading dimension ld). So the row-major product C[M, N] = op(A) op(B) is, in cuBLAS's
 * eyes, C^T (N x M, ldc) = op(B)^T op(A)^T: cuBLAS gets B first and A second, m = N, n = M,
 * k = K, and each keeps its own transpose flag (cuBLAS sees B^T in B's memory; op(B)^T is B^T,
 * i.e. that memory as is, when trans_b is false, and its transpose when trans_b is true).
 *
 * Precision. MG_PRECISION_FP32: float32 operands, CUBLAS_COMPUTE_32F and the default math mode,
 * which never uses TF32 (parity with the CPU within float32 rounding). MG_PRECISION_BF16: A and
 * B are rounded to bfloat16 into a staging area of the backend's workspace, multiplied by the
 * tensor cores with float32 accumulation (CUBLAS_COMPUTE_32F), and C stays float32; products
 * with a dimension of at most kUnstagedMaxDim (64) take float32 operands rounded to TF32 instead
 * (see there). */
#include "cublas_api.h"
#include "elementwise.cuh"
#include "runtime.h"

#include <limits.h>

#include <mutex>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MG_CUDA_EMULATE
#include <dlfcn.h>
#endif

/* ------------------------------------------------------------------ loading cuBLAS */

const char *mg_cublas_status_name(int status) {
    switch (status) {
    case MG_CUBLAS_STATUS_SUCCESS:
        return "CUBLAS_STATUS_SUCCESS";
    case MG_CUBLAS_STATUS_NOT_INITIALIZED:
        return "CUBLAS_STATUS_NOT_INITIALIZED";
    case MG_CUBLAS_STATUS_ALLOC_FAILED:
        return "CUBLAS_STATUS_ALLOC_FAILED";
    case MG_CUBLAS_STATUS_INVALID_VALUE:
        return "CUBLAS_STATUS_INVALID_VALUE";
    case MG_CUBLAS_STATUS_ARCH_MISMATCH:
        return "CUBLAS_STATUS_ARCH_MISMATCH";
    case MG_CUBLAS_STATUS_MAPPING_ERROR:
        return "CUBLAS_STATUS_MAPPING_ERROR";
    case MG_CUBLAS_STATUS_EXECUTION_FAILED:
        return "CUBLAS_STATUS_EXECUTION_FAILED";
    case MG_CUBLAS_STATUS_INTERNAL_ERROR:
        return "CUBLAS_STATUS_INTERNAL_ERROR";
    case MG_CUBLAS_STATUS_NOT_SUPPORTED:
        return "CUBLAS_STATUS_NOT_SUPPORTED";
    case MG_CUBLAS_STATUS_LICENSE_ERROR:
        return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "unknown cuBLAS status";
}

#ifdef MG_CUDA_EMULATE

const mg_cublas_api *mg_cublas_load(char *why, size_t why_len) {
    (void)why;
    (void)why_len;
    return mg_emu_cublas();
}

#else

namespace {

std::mutex g_cublas_mutex;
mg_cublas_api g_cublas;
bool g_cublas_loaded = false;

/* Appends to a message buffer, truncating (a long list of tried paths is still a message). */
__attribute__((format(printf, 3, 4))) void append(char *buf, size_t len, const char *fmt, ...) {
    const size_t used = strlen(buf);
    if (used + 1 >= len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + used, len - used, fmt, ap);
    va_end(ap);
}

/* dlopen's one library; on failure appends "path (reason)" to `tried`. */
void *open_library(const char *path, char *tried, size_t tried_len) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib != NULL) return lib;
    const char *reason = dlerror();
    append(tried, tried_len, "%s%s (%s)", tried[0] ? "; " : "", path,
           reason ? reason : "not loadable");
    return NULL;
}

const char *const kSonames[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};

void *open_in_dir(const char *dir, char *loaded, size_t loaded_len, char *tried, size_t tried_len) {
    for (const char *soname : kSonames) {
        char path[1024] = "";
        append(path, sizeof path, "%s/%s", dir, soname);
        void *lib = open_library(path, tried, tried_len);
        if (lib != NULL) {
            snprintf(loaded, loaded_len, "%s", path);
            return lib;
        }
    }
    return NULL;
}

/* The lib folder of the nvidia-cublas wheel (site-packages/nvidia/cublas/lib) when magnet is
 * installed beside it: this library is site-packages/magnet/_C*.so. */
bool wheel_dir(char *dir, size_t dir_len) {
    Dl_info info;
    if (dladdr(reinterpret_cast<void *>(&mg_cublas_load), &info) == 0 || info.dli_fname == NULL)
        return false;
    const char *slash = strrchr(info.dli_fname, '/');
    if (slash == NULL) return false;
    snprintf(dir, dir_len, "%.*s/../nvidia/cublas/lib", (int)(slash - info.dli_fname),
             info.dli_fname);
    return true;
}

void *find_cublas(char *loaded, size_t loaded_len, char *tried, size_t tried_len) {
    const char *override = getenv("MAGNET_CUBLAS_PATH");
    if (override != NULL && override[0] != '\0') {
        /* a file, or a folder holding one of the sonames; nothing else is tried */
        void *lib = open_library(override, tried, tried_len);
        if (lib == NULL)
            lib = open_in_dir(override, loaded, loaded_len, tried, tried_len);
        else
            snprintf(loaded, loaded_len, "%s", override);
        return lib;
    }
    for (const char *soname : kSonames) {
        void *lib = open_library(soname, tried, tried_len);
        if (lib != NULL) {
            snprintf(loaded, loaded_len, "%s", soname);
            return lib;
        }
    }
    char dir[1024];
    if (wheel_dir(dir, sizeof dir)) return open_in_dir(dir, loaded, loaded_len, tried, tried_len);
    return NULL;
}

template <typename F> bool bind(void *lib, F *slot, const char *name, char *why, size_t why_len) {
    void *sym = dlsym(lib, name);
    if (sym == NULL) {
        if (why && why_len) snprintf(why, why_len, "cuBLAS lacks %s", name);
        return false;
    }
    *slot = reinterpret_cast<F>(sym);
    return true;
}

} // namespace

const mg_cublas_api *mg_cublas_load(char *why, size_t why_len) {
    std::lock_guard<std::mutex> lock(g_cublas_mutex);
    if (g_cublas_loaded) return &g_cublas;
    char tried[2048] = "";
    mg_cublas_api api;
    memset(&api, 0, sizeof api);
    void *lib = find_cublas(api.library, sizeof api.library, tried, sizeof tried);
    if (lib == NULL) {
        if (why && why_len)
            snprintf(why, why_len,
                     "cuBLAS could not be loaded (tried: %s); install the CUDA toolkit's cuBLAS or "
                     "`pip install nvidia-cublas`, or set MAGNET_CUBLAS_PATH",
                     tried);
        return NULL;
    }
    /* The library stays loaded for the life of the process: cuBLAS does not support unloading
     * while its kernels may still be registered with the driver. */
    char missing[256] = "";
    const bool ok =
        bind(lib, &api.create, "cublasCreate_v2", missing, sizeof missing) &&
        bind(lib, &api.destroy, "cublasDestroy_v2", missing, sizeof missing) &&
        bind(lib, &api.set_stream, "cublasSetStream_v2", missing, sizeof missing) &&
        bind(lib, &api.set_workspace, "cublasSetWorkspace_v2", missing, sizeof missing) &&
        bind(lib, &api.set_math_mode, "cublasSetMathMode", missing, sizeof missing) &&
        bind(lib, &api.gemm_ex, "cublasGemmEx", missing, sizeof missing) &&
        bind(lib, &api.gemm_strided_batched_ex, "cublasGemmStridedBatchedEx", missing,
             sizeof missing);
    if (!ok) {
        if (why && why_len) snprintf(why, why_len, "%s (loaded from %s)", missing, api.library);
        return NULL;
    }
    g_cublas = api;
    g_cublas_loaded = true;
    return &g_cublas;
}

#endif

/* ------------------------------------------------------------------ kernels */

namespace {

constexpr int kThreads = 256;

/* In bf16 mode a product with a dimension this small or smaller is not staged: the LoRA factors
 * (rank 16), decoding (a few rows) and the like are bound by memory, not arithmetic, and
 * bfloat16 copies of the operands would cost more traffic than they save. cuBLAS reads the float32
 * operands and rounds them to TF32 for the tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32). Measured
 * on an H100, 1B benchmark training step: plain float32 products on the CUDA cores took 68 ms of
 * a 377 ms step; with TF32 the whole step took 339 ms. */
constexpr int kUnstagedMaxDim = 64;

/* out[r * cols + c] = bf16(in[r * ld + c]): a packed bfloat16 copy of a strided matrix, four
 * elements per item when `vec` (cols and ld multiples of 4, `in` 16-byte aligned: 16-byte loads,
 * 8-byte stores). Index is unsigned when the items fit in 32 bits: the one division per item
 * that finds its row is then a 32-bit one (a 64-bit division per element cost more than the
 * copy itself). */
struct alignas(8) mg_bf16x4 {
    __nv_bfloat16 v[4];
};

template <typename Index>
__global__ void to_bf16_kernel(__nv_bfloat16 *__restrict__ out, const float *__restrict__ in,
                               Index rows, Index cols, long ld, int vec) {
    const Index per_row = vec ? cols / 4 : cols, n = rows * per_row;
    for (Index i = (Index)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (Index)gridDim.x * blockDim.x) {
        const Index r = i / per_row, g = i - r * per_row;
        if (!vec) {
            out[i] = __float2bfloat16(in[r * ld + g]);
            continue;
        }
        const mg_float4 f = mg_load4(in + r * ld + 4 * g);
        mg_bf16x4 b;
        b.v[0] = __float2bfloat16(f.x);
        b.v[1] = __float2bfloat16(f.y);
        b.v[2] = __float2bfloat16(f.z);
        b.v[3] = __float2bfloat16(f.w);
#ifdef MG_CUDA_EMULATE
        for (int k = 0; k < 4; k++)
            out[4 * i + k] = b.v[k];
#else
        *reinterpret_cast<mg_bf16x4 *>(out + 4 * i) = b;
#endif
    }
}

/* C = beta C over rows x cols with row stride ldc; beta == 0 writes zeros without reading C,
 * as a GEMM with beta == 0 does (C may hold garbage, even NaN). */
__global__ void scale_rows_kernel(float *c, int rows, int cols, long ldc, float beta) {
    const long n = (long)rows * cols;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        const long r = i / cols, col = i - r * cols;
        float *x = c + r * ldc + col;
        *x = beta == 0.0f ? 0.0f : beta * *x;
    }
}

/* out[n, o] += bias[o] */
__global__ void add_bias_kernel(float *__restrict__ out, const float *__restrict__ bias, int N,
                                int O) {
    const long n = (long)N * O;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x)
        out[i] += bias[i % O];
}

/* dbias[o] += sum over n of dout[n, o]. A block owns 32 columns (one warp's coalesced row
 * segment); its 8 rows of threads sum rows y, y + 8, ... and the 8 partial sums are added in a
 * fixed order, so the result does not depend on scheduling. */
constexpr int kBiasCols = 32, kBiasRows = 8;
__global__ void bias_grad_kernel(float *__restrict__ dbias, const float *__restrict__ dout, int N,
                                 int O) {
    __shared__ float partial[kBiasRows][kBiasCols + 1];
    const int o = blockIdx.x * kBiasCols + threadIdx.x;
    float acc = 0.0f;
    if (o < O)
        for (int n = threadIdx.y; n < N; n += kBiasRows)
            acc += dout[(long)n * O + o];
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && o < O) {
        float sum = 0.0f;
        for (int r = 0; r < kBiasRows; r++)
            sum += partial[r][threadIdx.x];
        dbias[o] += sum;
    }
}

/* A packed bfloat16 copy of the rows x cols matrix at src (row stride ld) at dst. */
void stage_bf16(const mg_backend *be, __nv_bfloat16 *dst, const float *src, int rows, int cols,
                int ld) {
    /* dst is 8-byte aligned for every row when cols % 4 == 0 (the staging area is 256-aligned) */
    const int vec = cols % 4 == 0 && ld % 4 == 0 && mg_aligned16(src) && mg_aligned16(dst);
    const long items = (long)rows * (vec ? cols / 4 : cols);
    const unsigned blocks = mg_cuda_blocks(items, kThreads);
    if (items < (long)UINT_MAX - (long)blocks * kThreads)
        MG_LAUNCH(to_bf16_kernel<unsigned>, blocks, kThreads, 0, be, dst, src, (unsigned)rows,
                  (unsigned)cols, (long)ld, vec);
    else
        MG_LAUNCH(to_bf16_kernel<long>, blocks, kThreads, 0, be, dst, src, (long)rows, (long)cols,
                  (long)ld, vec);
}

mg_code cublas_code(int status) {
    if (status == MG_CUBLAS_STATUS_ALLOC_FAILED) return MG_ERR_NOMEM;
    if (status == MG_CUBLAS_STATUS_INVALID_VALUE) return MG_ERR_VALUE;
    return MG_ERR_IO;
}

} // namespace

/* ------------------------------------------------------------------ staging area */

void *mg_cuda_staging(const mg_backend *be, size_t bytes) {
    mg_cuda_ctx *ctx = mg_cuda_ctx_of(be);
    const size_t need = MG_CUDA_CUBLAS_WORKSPACE + bytes;
    if (ctx->workspace_bytes < need) {
        size_t grow = ctx->workspace_bytes + ctx->workspace_bytes / 2;
        if (grow < need) grow = need;
        grow = (grow + ((size_t)1 << 20) - 1) & ~(((size_t)1 << 20) - 1);
        void *p = NULL;
        cudaError_t status = cudaMalloc(&p, grow);
        if (status == cudaErrorMemoryAllocation) { /* the block cache may hold what is needed */
            (void)cudaGetLastError();
            mg_cuda_pool_release_cached(ctx);
            status = cudaMalloc(&p, grow);
        }
        if (status != cudaSuccess) {
            (void)cudaGetLastError();
            mg_cuda_fail(be, MG_ERR_NOMEM,
                         "cannot allocate %zu bytes of GPU memory for the bfloat16 staging "
                         "on %s: %s",
                         grow, be->name, cudaGetErrorString(status));
            return NULL;
        }
        /* cudaFree waits for the device, so no queued GEMM still uses the old workspace */
        mg_cuda_note(be, cudaFree(ctx->workspace), "cudaFree (GEMM workspace)");
        ctx->workspace = p;
        ctx->workspace_bytes = grow;
        const mg_cublas_api *api = mg_cublas_load(NULL, 0);
        const int st = api->set_workspace(ctx->cublas, p, MG_CUDA_CUBLAS_WORKSPACE);
        if (st != MG_CUBLAS_STATUS_SUCCESS)
            mg_cuda_fail(be, MG_ERR_IO, "cublasSetWorkspace failed on %s: %s", be->name,
                         mg_cublas_status_name(st));
    }
    return static_cast<char *>(ctx->workspace) + MG_CUDA_CUBLAS_WORKSPACE;
}

/* ------------------------------------------------------------------ entries */

void cuda_sgemm(const mg_backend *be, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        /* an empty product: C = beta C (cuBLAS would reject the zero leading dimensions that
         * an empty A or B may come with) */
        MG_LAUNCH(scale_rows_kernel, mg_cuda_blocks((long)M * N, kThreads), kThreads, 0, be, C, M,
                  N, (long)ldc, beta);
        return;
    }
    mg_cuda_ctx *ctx = mg_cuda_ctx_of(be);
    const mg_cublas_api *api = mg_cublas_load(NULL, 0);
    const void *a = A, *b = B;
    int type = MG_CUDA_R_32F, la = lda, lb = ldb, compute = MG_CUBLAS_COMPUTE_32F;
    const bool skinny = M <= kUnstagedMaxDim || N <= kUnstagedMaxDim || K <= kUnstagedMaxDim;
    if (be->precision == MG_PRECISION_BF16 && skinny)
        compute = MG_CUBLAS_COMPUTE_32F_FAST_TF32;
    else if (be->precision == MG_PRECISION_BF16) {
        /* as stored: A is M x K (K x M when transposed), B is K x N (N x K) */
        const int ar = trans_a ? K : M, ac = trans_a ? M : K;
        const int br = trans_b ? N : K, bc = trans_b ? K : N;
        const size_t a_bytes = ((size_t)ar * ac * sizeof(__nv_bfloat16) + 255) & ~(size_t)255;
        char *stage = static_cast<char *>(
            mg_cuda_staging(be, a_bytes + (size_t)br * bc * sizeof(__nv_bfloat16)));
        if (stage == NULL) return;
        __nv_bfloat16 *sa = reinterpret_cast<__nv_bfloat16 *>(stage);
        __nv_bfloat16 *sb = reinterpret_cast<__nv_bfloat16 *>(stage + a_bytes);
        stage_bf16(be, sa, A, ar, ac, lda);
        stage_bf16(be, sb, B, br, bc, ldb);
        a = sa;
        b = sb;
        la = ac;
        lb = bc;
        type = MG_CUDA_R_16BF;
    }
    /* C^T (N x M) = op(B)^T op(A)^T in column-major: see the top of this file */
    const int st =
        api->gemm_ex(ctx->cublas, trans_b ? MG_CUBLAS_OP_T : MG_CUBLAS_OP_N,
                     trans_a ? MG_CUBLAS_OP_T : MG_CUBLAS_OP_N, N, M, K, &alpha, b, type, lb, a,
                     type, la, &beta, C, MG_CUDA_R_32F, ldc, compute, MG_CUBLAS_GEMM_DEFAULT);
    if (st != MG_CUBLAS_STATUS_SUCCESS)
        mg_cuda_fail(be, cublas_code(st),
                     "cuBLAS GEMM failed on %s: %s (row-major M=%d N=%d K=%d, trans_a=%d "
                     "trans_b=%d, lda=%d ldb=%d ldc=%d, %s)",
                     be->name, mg_cublas_status_name(st), M, N, K, (int)trans_a, (int)trans_b, lda,
                     ldb, ldc,
                     type == MG_CUDA_R_16BF                       ? "bf16"
                     : compute == MG_CUBLAS_COMPUTE_32F_FAST_TF32 ? "tf32"
                                                                  : "fp32");
}

void cuda_matmul_forward(const mg_backend *be, float *out, const float *inp, const float *weight,
                         const float *bias, int N, int I, int O, bool accumulate) {
    if (N <= 0 || O <= 0) return;
    cuda_sgemm(be, false, true, N, O, I, 1.0f, inp, I, weight, I, accumulate ? 1.0f : 0.0f, out, O);
    if (bias == NULL) return;
    MG_LAUNCH(add_bias_kernel, mg_cuda_blocks((long)N * O, kThreads), kThreads, 0, be, out, bias, N,
              O);
}

void cuda_matmul_backward(const mg_backend *be, float *dinp, float *dweight, float *dbias,
                          const float *dout, const float *inp, const float *weight, int N, int I,
                          int O) {
    if (N <= 0 || O <= 0) return;
    if (dinp != NULL && I > 0)
        cuda_sgemm(be, false, false, N, I, O, 1.0f, dout, O, weight, I, 1.0f, dinp, I);
    if (dweight != NULL && I > 0)
        cuda_sgemm(be, true, false, O, I, N, 1.0f, dout, O, inp, I, 1.0f, dweight, I);
    if (dbias == NULL) return;
    MG_LAUNCH(bias_grad_kernel, (unsigned)((O + kBiasCols - 1) / kBiasCols),
              dim3(kBiasCols, kBiasRows), 0, be, dbias, dout, N, O);
}
