/* The optimizer step and its helpers: AdamW with the arithmetic of csrc/ops/adamw.c (bias
 * corrections computed on the host in double, exactly as the CPU does), the sum of squares for
 * gradient clipping (deterministic: fixed per-block partials in double, combined in a fixed
 * order by one block), and the gradient scaling of the clip. */
#include "cuda_common.h"
#include "elementwise.cuh"
#include "reduce.cuh"

#include <math.h>

struct AdamwStep {
    float *param;
    const float *grad;
    float *m, *v;
    float beta1, beta2, one_minus_beta1, one_minus_beta2;
    float step_size, sqrt_bc2, eps, decay;
    /* the CPU's expression, term for term */
    __device__ void one(float &p, float g, float &mi, float &vi) const {
        mi = beta1 * mi + one_minus_beta1 * g;
        vi = beta2 * vi + one_minus_beta2 * g * g;
        p = p * decay - step_size * mi / (sqrtf(vi) / sqrt_bc2 + eps);
    }
    __device__ void at(long i) const {
        float p = param[i], mi = m[i], vi = v[i];
        one(p, grad[i], mi, vi);
        m[i] = mi;
        v[i] = vi;
        param[i] = p;
    }
    __device__ void at4(long i) const {
        mg_float4 p = mg_load4(param + i), mi = mg_load4(m + i), vi = mg_load4(v + i);
        const mg_float4 g = mg_load4(grad + i);
        one(p.x, g.x, mi.x, vi.x);
        one(p.y, g.y, mi.y, vi.y);
        one(p.z, g.z, mi.z, vi.z);
        one(p.w, g.w, mi.w, vi.w);
        mg_store4(m + i, mi);
        mg_store4(v + i, vi);
        mg_store4(param + i, p);
    }
};

extern "C" void cuda_adamw_update(const mg_backend *be, float *param, const float *grad, float *m,
                                  float *v, long n, float lr, float beta1, float beta2, float eps,
                                  float weight_decay, int step) {
    const double bc1 = 1.0 - pow((double)beta1, (double)step);
    const double bc2 = 1.0 - pow((double)beta2, (double)step);
    AdamwStep op;
    op.param = param;
    op.grad = grad;
    op.m = m;
    op.v = v;
    op.beta1 = beta1;
    op.beta2 = beta2;
    op.one_minus_beta1 = 1.0f - beta1;
    op.one_minus_beta2 = 1.0f - beta2;
    op.step_size = (float)((double)lr / bc1);
    op.sqrt_bc2 = (float)sqrt(bc2);
    op.eps = eps;
    op.decay = 1.0f - lr * weight_decay;
    const bool vec =
        mg_aligned16(param) && mg_aligned16(grad) && mg_aligned16(m) && mg_aligned16(v);
    MG_ELEMENTWISE(AdamwStep, op, n, vec, be);
}

struct Scale {
    float *x;
    float a;
    __device__ void at(long i) const {
        x[i] *= a;
    }
    __device__ void at4(long i) const {
        mg_float4 v = mg_load4(x + i);
        v.x *= a;
        v.y *= a;
        v.z *= a;
        v.w *= a;
        mg_store4(x + i, v);
    }
};

extern "C" void cuda_scale(const mg_backend *be, float *x, float a, long n) {
    const Scale op = {x, a};
    MG_ELEMENTWISE(Scale, op, n, mg_aligned16(x), be);
}

#define SUM_SQUARES_THREADS 256
/* Upper bound on the partials of the first pass (one per block), which one block then adds. */
#define SUM_SQUARES_MAX_BLOCKS 1024

/* Pass 1: partial[b] = sum of x^2 over the elements block b visits (double accumulation; a
 * float's square is exact in double). */
__global__ void sum_squares_partial_kernel(double *partial, const float *x, long n, int vec) {
    __shared__ double scratch[32];
    double acc = 0.0;
    long first = 0;
    if (vec) {
        const long groups = n >> 2;
        for (long j = MG_GRID_INDEX; j < groups; j += MG_GRID_STRIDE) {
            const mg_float4 v = mg_load4(x + (j << 2));
            acc += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
        }
        first = groups << 2;
    }
    for (long i = first + MG_GRID_INDEX; i < n; i += MG_GRID_STRIDE)
        acc += (double)x[i] * x[i];
    acc = mg_block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

/* Pass 2, one block: partial[count] = sum of partial[0 .. count). */
__global__ void sum_squares_final_kernel(double *partial, int count) {
    __shared__ double scratch[32];
    double acc = 0.0;
    for (int b = (int)threadIdx.x; b < count; b += (int)blockDim.x)
        acc += partial[b];
    acc = mg_block_sum(acc, scratch);
    if (threadIdx.x == 0) partial[count] = acc;
}

extern "C" double cuda_sum_squares(const mg_backend *be, const float *x, long n) {
    if (n <= 0) return 0.0;
    mg_cuda_ctx *ctx = mg_cuda_ctx_of(be);
    const bool vec = mg_aligned16(x);
    long blocks = mg_cuda_blocks(vec ? (n + 3) / 4 : n, SUM_SQUARES_THREADS);
    /* a few blocks per multiprocessor keep the memory busy; more only add partials */
    const long enough = ctx->sm_count > 0 ? 4L * ctx->sm_count : 256;
    if (blocks > enough) blocks = enough;
    if (blocks > SUM_SQUARES_MAX_BLOCKS) blocks = SUM_SQUARES_MAX_BLOCKS;
    const size_t need = sizeof(double) * (size_t)(blocks + 1);
    if (ctx->workspace == NULL || ctx->workspace_bytes < need) {
        mg_cuda_note(be, cudaErrorMemoryAllocation, "sum_squares: workspace too small");
        return NAN;
    }
    double *partial = (double *)ctx->workspace;
    MG_LAUNCH(sum_squares_partial_kernel, (unsigned)blocks, SUM_SQUARES_THREADS, 0, be, partial, x,
              n, vec ? 1 : 0);
    MG_LAUNCH(sum_squares_final_kernel, 1, SUM_SQUARES_THREADS, 0, be, partial, (int)blocks);
    double local = 0.0;
    double *host = ctx->host_result != NULL ? ctx->host_result : &local;
    cudaError_t status = cudaMemcpyAsync(host, partial + blocks, sizeof(double),
                                         cudaMemcpyDeviceToHost, ctx->stream);
    mg_cuda_note(be, status, "sum_squares: cudaMemcpyAsync");
    if (status != cudaSuccess) return NAN;
    status = cudaStreamSynchronize(ctx->stream);
    mg_cuda_note(be, status, "sum_squares: cudaStreamSynchronize");
    return status == cudaSuccess ? *host : NAN;
}
