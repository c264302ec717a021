/* The CUDA backend object: its op table (every entry of backend.h pointing at its cuda_*
 * function of cuda_ops.h), creation and release. */
#include "cublas_api.h"
#include "runtime.h"

#include <stdio.h>
#include <stdlib.h>

namespace {

/* The backend, its state and its name in one allocation. */
struct CudaBackend {
    mg_backend be;
    mg_cuda_ctx ctx;
    char name[320];
};

/* The model layer calls this under the model's lock, so every allocation, launch and cuBLAS
 * call that follows on this thread goes to the backend's device, not to whichever device the
 * thread last used. */
void cuda_enter(const mg_backend *be) {
    mg_cuda_note(be, cudaSetDevice(mg_cuda_ctx_of(be)->device), "cudaSetDevice");
}

void fill_table(mg_backend *be) {
    be->enter = cuda_enter;
    be->alloc = cuda_alloc;
    be->free = cuda_free;
    be->upload = cuda_upload;
    be->download = cuda_download;
    be->copy = cuda_copy;
    be->zero = cuda_zero;
    be->sync = cuda_sync;
    be->sgemm = cuda_sgemm;
    be->matmul_forward = cuda_matmul_forward;
    be->matmul_backward = cuda_matmul_backward;
    be->rmsnorm_forward = cuda_rmsnorm_forward;
    be->rmsnorm_backward = cuda_rmsnorm_backward;
    be->layernorm_forward = cuda_layernorm_forward;
    be->layernorm_backward = cuda_layernorm_backward;
    be->rope_forward = cuda_rope_forward;
    be->rope_backward = cuda_rope_backward;
    be->attention_scratch = cuda_attention_scratch;
    be->attention_saves_stats = true;
    be->attention_forward = cuda_attention_forward;
    be->attention_backward = cuda_attention_backward;
    be->swiglu_forward = cuda_swiglu_forward;
    be->swiglu_backward = cuda_swiglu_backward;
    be->gelu_tanh_forward = cuda_gelu_tanh_forward;
    be->gelu_tanh_backward = cuda_gelu_tanh_backward;
    be->embedding_forward = cuda_embedding_forward;
    be->embedding_backward = cuda_embedding_backward;
    be->dropout_forward = cuda_dropout_forward;
    be->dropout_backward = cuda_dropout_backward;
    be->dropped_matmul_forward = cuda_dropped_matmul_forward;
    be->dropped_matmul_backward = cuda_dropped_matmul_backward;
    be->cross_entropy = cuda_cross_entropy;
    be->infonce_scratch = cuda_infonce_scratch;
    be->infonce = cuda_infonce;
    be->adamw_update = cuda_adamw_update;
    be->sum_squares = cuda_sum_squares;
    be->scale = cuda_scale;
    be->add_inplace = cuda_add_inplace;
    be->zero_padding_rows = cuda_zero_padding_rows;
    be->gather_rows = cuda_gather_rows;
    be->scatter_add_rows = cuda_scatter_add_rows;
    be->copy_rows = cuda_copy_rows;
    be->qkv_split = cuda_qkv_split;
    be->range_pool_forward = cuda_range_pool_forward;
    be->range_pool_backward = cuda_range_pool_backward;
    be->l2_normalize_rows = cuda_l2_normalize_rows;
    be->greedy_rows = cuda_greedy_rows;
}

/* Fails creation with the runtime's reason for `status` (and clears the runtime's last error). */
mg_backend *fail_create(mg_backend *be, mg_error *err, mg_code code, const char *what, int device,
                        cudaError_t status) {
    (void)cudaGetLastError();
    mg_fail(err, code, "cannot set up CUDA device %d: %s failed: %s (%s)", device, what,
            cudaGetErrorString(status), cudaGetErrorName(status));
    mg_backend_cuda_free(be);
    return NULL;
}

} // namespace

mg_backend *mg_backend_cuda_create(int device, mg_precision precision, mg_error *err) {
    char why[1024] = "";
    const int count = mg_cuda_device_count(why, sizeof why);
    if (count == 0) {
        mg_fail(err, MG_ERR_UNSUPPORTED, "CUDA device %d is not available: %s", device, why);
        return NULL;
    }
    if (device < 0 || device >= count) {
        mg_fail(err, MG_ERR_VALUE, "CUDA device %d does not exist (this machine has %d: 0..%d)",
                device, count, count - 1);
        return NULL;
    }
    if (precision != MG_PRECISION_FP32 && precision != MG_PRECISION_BF16) {
        mg_fail(err, MG_ERR_VALUE, "unknown GPU precision %d (fp32 = 0, bf16 = 1)", (int)precision);
        return NULL;
    }
    cudaError_t status = cudaSetDevice(device);
    if (status != cudaSuccess)
        return fail_create(NULL, err, MG_ERR_UNSUPPORTED, "cudaSetDevice", device, status);
    cudaDeviceProp prop;
    status = cudaGetDeviceProperties(&prop, device);
    if (status != cudaSuccess)
        return fail_create(NULL, err, MG_ERR_UNSUPPORTED, "cudaGetDeviceProperties", device,
                           status);
    if (precision == MG_PRECISION_BF16 && prop.major < 8) {
        mg_fail(err, MG_ERR_UNSUPPORTED,
                "bfloat16 matrix products need compute capability 8.0 or newer; CUDA device %d "
                "(%s) is %d.%d: use precision fp32",
                device, prop.name, prop.major, prop.minor);
        return NULL;
    }
    const mg_cublas_api *api = mg_cublas_load(why, sizeof why);
    if (api == NULL) {
        mg_fail(err, MG_ERR_UNSUPPORTED, "cannot use CUDA device %d: %s", device, why);
        return NULL;
    }

    CudaBackend *box = static_cast<CudaBackend *>(calloc(1, sizeof(CudaBackend)));
    if (box == NULL) {
        mg_fail(err, MG_ERR_NOMEM, "out of host memory creating the CUDA backend");
        return NULL;
    }
    mg_backend *be = &box->be;
    mg_cuda_ctx *ctx = &box->ctx;
    snprintf(box->name, sizeof box->name, "cuda:%d (%s)", device, prop.name);
    be->device = MG_DEVICE_CUDA;
    be->name = box->name;
    be->precision = precision;
    be->ctx = ctx;
    ctx->device = device;
    ctx->sm_count = prop.multiProcessorCount;
    ctx->smem_optin = (int)prop.sharedMemPerBlockOptin;
    mg_error_clear(&ctx->sticky);
    if (mg_cuda_pool_create(ctx) != 0) {
        mg_fail(err, MG_ERR_NOMEM, "out of host memory creating the CUDA backend");
        free(box);
        return NULL;
    }

    /* non-blocking: our work does not serialise with the legacy default stream that other
     * libraries in the process (a framework, a viewer) may use */
    status = cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking);
    if (status != cudaSuccess)
        return fail_create(be, err, MG_ERR_UNSUPPORTED, "cudaStreamCreate", device, status);
    status = cudaMalloc(&ctx->workspace, MG_CUDA_CUBLAS_WORKSPACE);
    if (status != cudaSuccess) {
        ctx->workspace = NULL;
        return fail_create(be, err, MG_ERR_NOMEM, "allocating the GEMM workspace", device, status);
    }
    ctx->workspace_bytes = MG_CUDA_CUBLAS_WORKSPACE;
    void *host = NULL;
    status = cudaMallocHost(&host, MG_CUDA_HOST_RESULT_SLOTS * sizeof(double));
    if (status != cudaSuccess)
        return fail_create(be, err, MG_ERR_NOMEM, "allocating pinned host memory", device, status);
    ctx->host_result = static_cast<double *>(host);

    int st = api->create(&ctx->cublas);
    const char *step = "cublasCreate";
    if (st == MG_CUBLAS_STATUS_SUCCESS) {
        step = "cublasSetStream";
        st = api->set_stream(ctx->cublas, ctx->stream);
    }
    if (st == MG_CUBLAS_STATUS_SUCCESS) {
        step = "cublasSetWorkspace";
        st = api->set_workspace(ctx->cublas, ctx->workspace, MG_CUDA_CUBLAS_WORKSPACE);
    }
    if (st == MG_CUBLAS_STATUS_SUCCESS) {
        /* no TF32 and no reduced-precision emulation: fp32 products stay fp32 */
        step = "cublasSetMathMode";
        st = api->set_math_mode(ctx->cublas, MG_CUBLAS_DEFAULT_MATH);
    }
    if (st != MG_CUBLAS_STATUS_SUCCESS) {
        mg_fail(err, st == MG_CUBLAS_STATUS_ALLOC_FAILED ? MG_ERR_NOMEM : MG_ERR_UNSUPPORTED,
                "cannot use CUDA device %d: %s failed: %s (cuBLAS from %s)", device, step,
                mg_cublas_status_name(st), api->library);
        mg_backend_cuda_free(be);
        return NULL;
    }
    fill_table(be);
    return be;
}

void mg_backend_cuda_free(mg_backend *be) {
    if (be == NULL) return;
    mg_cuda_ctx *ctx = mg_cuda_ctx_of(be);
    if (ctx->stream != NULL) (void)cudaStreamSynchronize(ctx->stream);
    if (ctx->cublas != NULL) {
        const mg_cublas_api *api = mg_cublas_load(NULL, 0);
        if (api != NULL) api->destroy(ctx->cublas);
    }
    if (ctx->workspace != NULL) (void)cudaFree(ctx->workspace);
    mg_cuda_pool_free(ctx);
    if (ctx->host_result != NULL) (void)cudaFreeHost(ctx->host_result);
    if (ctx->stream != NULL) (void)cudaStreamDestroy(ctx->stream);
    (void)cudaGetLastError();
    free(reinterpret_cast<CudaBackend *>(be));
}
