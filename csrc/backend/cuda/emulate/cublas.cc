/* cuBLAS emulated on the host, with cuBLAS's column-major semantics and argument checks, so that
 * the backend's row-major to column-major translation (gemm.cu) runs in emulation exactly as it
 * will against the real library. The product itself is our CPU GEMM (mg_sgemm, row-major):
 * a column-major matrix X (r x c, leading dimension ld) is, read row-major with row stride ld,
 * the matrix X^T, so column-major C = op(A) op(B) is row-major C^T = op(B)^T op(A)^T.
 * bfloat16 inputs are widened to float exactly (fp32 accumulation, as CUBLAS_COMPUTE_32F);
 * CUBLAS_COMPUTE_32F_FAST_TF32 rounds float inputs to TF32 first, as the tensor cores do. */
#include "../cublas_api.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../cpu/blas.h"

namespace {

struct Handle {
    cudaStream_t stream;
    void *workspace;
    size_t workspace_bytes;
    int math_mode;
};

int emu_create(void **handle) {
    Handle *h = new (std::nothrow) Handle{nullptr, nullptr, 0, MG_CUBLAS_DEFAULT_MATH};
    if (h == nullptr) return MG_CUBLAS_STATUS_ALLOC_FAILED;
    *handle = h;
    return MG_CUBLAS_STATUS_SUCCESS;
}

int emu_destroy(void *handle) {
    delete static_cast<Handle *>(handle);
    return MG_CUBLAS_STATUS_SUCCESS;
}

int emu_set_stream(void *handle, cudaStream_t stream) {
    if (handle == nullptr) return MG_CUBLAS_STATUS_NOT_INITIALIZED;
    static_cast<Handle *>(handle)->stream = stream;
    return MG_CUBLAS_STATUS_SUCCESS;
}

int emu_set_workspace(void *handle, void *workspace, size_t bytes) {
    if (handle == nullptr) return MG_CUBLAS_STATUS_NOT_INITIALIZED;
    /* cuBLAS requires 256-byte alignment of a user workspace */
    if ((reinterpret_cast<uintptr_t>(workspace) & 255u) != 0) return MG_CUBLAS_STATUS_INVALID_VALUE;
    static_cast<Handle *>(handle)->workspace = workspace;
    static_cast<Handle *>(handle)->workspace_bytes = bytes;
    return MG_CUBLAS_STATUS_SUCCESS;
}

int emu_set_math_mode(void *handle, int mode) {
    if (handle == nullptr) return MG_CUBLAS_STATUS_NOT_INITIALIZED;
    static_cast<Handle *>(handle)->math_mode = mode;
    return MG_CUBLAS_STATUS_SUCCESS;
}

int max1(int v) {
    return v > 1 ? v : 1;
}

/* A dense float copy of a column-major rows x cols matrix of type `type` (leading dimension ld),
 * with leading dimension rows; rounded to TF32 when `tf32`. */
bool widen(std::vector<float> &out, const void *src, int type, int rows, int cols, int ld,
           bool tf32) {
    out.resize((size_t)rows * cols);
    for (int j = 0; j < cols; j++)
        for (int i = 0; i < rows; i++) {
            const size_t at = (size_t)j * ld + i;
            const float x = type == MG_CUDA_R_32F
                                ? static_cast<const float *>(src)[at]
                                : __bfloat162float(static_cast<const __nv_bfloat16 *>(src)[at]);
            out[(size_t)j * rows + i] = tf32 ? mg_emu_tf32(x) : x;
        }
    return true;
}

int emu_gemm_ex(void *handle, int transa, int transb, int m, int n, int k, const void *alpha,
                const void *A, int Atype, int lda, const void *B, int Btype, int ldb,
                const void *beta, void *C, int Ctype, int ldc, int compute_type, int algo) {
    if (handle == nullptr) return MG_CUBLAS_STATUS_NOT_INITIALIZED;
    /* cuBLAS's checks (cublasGemmEx documentation, "error values") */
    if (m < 0 || n < 0 || k < 0) return MG_CUBLAS_STATUS_INVALID_VALUE;
    if ((transa != MG_CUBLAS_OP_N && transa != MG_CUBLAS_OP_T) ||
        (transb != MG_CUBLAS_OP_N && transb != MG_CUBLAS_OP_T))
        return MG_CUBLAS_STATUS_INVALID_VALUE;
    if (lda < max1(transa == MG_CUBLAS_OP_N ? m : k) ||
        ldb < max1(transb == MG_CUBLAS_OP_N ? k : n) || ldc < max1(m))
        return MG_CUBLAS_STATUS_INVALID_VALUE;
    if (alpha == nullptr || beta == nullptr) return MG_CUBLAS_STATUS_INVALID_VALUE;
    /* the combinations the backend uses, and that cuBLAS supports with a float32 output */
    const bool f32 = Atype == MG_CUDA_R_32F && Btype == MG_CUDA_R_32F;
    const bool bf16 = Atype == MG_CUDA_R_16BF && Btype == MG_CUDA_R_16BF;
    if (Ctype != MG_CUDA_R_32F || !(f32 || bf16)) return MG_CUBLAS_STATUS_NOT_SUPPORTED;
    const bool tf32 = compute_type == MG_CUBLAS_COMPUTE_32F_FAST_TF32;
    if (compute_type != MG_CUBLAS_COMPUTE_32F && compute_type != MG_CUBLAS_COMPUTE_32F_PEDANTIC &&
        !(tf32 && f32))
        return MG_CUBLAS_STATUS_NOT_SUPPORTED;
    if (algo != MG_CUBLAS_GEMM_DEFAULT) return MG_CUBLAS_STATUS_NOT_SUPPORTED;
    if (m == 0 || n == 0) return MG_CUBLAS_STATUS_SUCCESS;

    const float a = *static_cast<const float *>(alpha), b = *static_cast<const float *>(beta);
    float *c = static_cast<float *>(C);
    if (k == 0 || a == 0.0f) {
        /* C = beta C; like cuBLAS, beta == 0 writes zeros without reading C */
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++) {
                float &x = c[(size_t)j * ldc + i];
                x = b == 0.0f ? 0.0f : b * x;
            }
        return MG_CUBLAS_STATUS_SUCCESS;
    }
    if (b == 0.0f)
        for (int j = 0; j < n; j++)
            std::memset(c + (size_t)j * ldc, 0, (size_t)m * sizeof(float));

    const float *pa = static_cast<const float *>(A), *pb = static_cast<const float *>(B);
    int la = lda, lb = ldb;
    std::vector<float> wa, wb;
    if (bf16 || tf32) {
        const int ar = transa == MG_CUBLAS_OP_N ? m : k, ac = transa == MG_CUBLAS_OP_N ? k : m;
        const int br = transb == MG_CUBLAS_OP_N ? k : n, bc = transb == MG_CUBLAS_OP_N ? n : k;
        widen(wa, A, Atype, ar, ac, lda, tf32);
        widen(wb, B, Btype, br, bc, ldb, tf32);
        pa = wa.data();
        pb = wb.data();
        la = ar;
        lb = br;
    }
    /* row-major C^T (n x m) = op(B)^T (n x k) op(A)^T (k x m); the row-major view of column-major
     * B is B^T, so op(B)^T is that view transposed exactly when transb is T (same for A) */
    mg_sgemm(transb == MG_CUBLAS_OP_T, transa == MG_CUBLAS_OP_T, n, m, k, a, pb, lb, pa, la, b, c,
             ldc);
    return MG_CUBLAS_STATUS_SUCCESS;
}

int emu_gemm_strided_batched_ex(void *handle, int transa, int transb, int m, int n, int k,
                                const void *alpha, const void *A, int Atype, int lda,
                                long long stride_a, const void *B, int Btype, int ldb,
                                long long stride_b, const void *beta, void *C, int Ctype, int ldc,
                                long long stride_c, int batch, int compute_type, int algo) {
    if (batch < 0) return MG_CUBLAS_STATUS_INVALID_VALUE;
    const size_t ea = Atype == MG_CUDA_R_16BF ? 2 : 4, eb = Btype == MG_CUDA_R_16BF ? 2 : 4;
    for (int i = 0; i < batch; i++) {
        const int st = emu_gemm_ex(
            handle, transa, transb, m, n, k, alpha,
            static_cast<const char *>(A) + (size_t)(i * stride_a) * ea, Atype, lda,
            static_cast<const char *>(B) + (size_t)(i * stride_b) * eb, Btype, ldb, beta,
            static_cast<float *>(C) + (size_t)(i * stride_c), Ctype, ldc, compute_type, algo);
        if (st != MG_CUBLAS_STATUS_SUCCESS) return st;
    }
    return MG_CUBLAS_STATUS_SUCCESS;
}

} // namespace

const mg_cublas_api *mg_emu_cublas(void) {
    static const mg_cublas_api api = {emu_create,
                                      emu_destroy,
                                      emu_set_stream,
                                      emu_set_workspace,
                                      emu_set_math_mode,
                                      emu_gemm_ex,
                                      emu_gemm_strided_batched_ex,
                                      "emulated cuBLAS (host, mg_sgemm)"};
    return &api;
}
