/* Greedy decoding on the device: per row of logits, the first index of the maximum and its raw
 * log-probability, so a decode step reads back two numbers per row instead of the whole
 * vocabulary. Matches sampling_greedy_rows (csrc/ops/sampling.c): the first index of the largest
 * logit that is not NaN (0 when all are), and log p = x - max - log sum exp(x - max) over the
 * logits that are not NaN, with the sum in double. */
#include <math.h>

#include "cuda_common.h"
#include "reduce.cuh"

#define GREEDY_THREADS 256

/* (value, index) pairs: the larger value wins, a tie goes to the lower index. NaN values never
 * enter a pair: a thread that saw only NaN holds (-inf, kNone), which any other pair displaces. */
constexpr int kNone = 0x7fffffff;
__device__ __forceinline__ void greedy_merge(float &v, int &i, float ov, int oi) {
    if (ov > v || (ov == v && oi < i)) {
        v = ov;
        i = oi;
    }
}

__global__ void greedy_rows_kernel(const float *__restrict__ logits, int V,
                                   int32_t *__restrict__ tokens, float *__restrict__ logprobs) {
    __shared__ float best_v[32];
    __shared__ int best_i[32];
    __shared__ double sums[32];
    const float *x = logits + (long)blockIdx.x * V;
    const int tid = (int)threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warps = (int)blockDim.x >> 5;
    float v = -INFINITY;
    int idx = kNone;
    for (int k = tid; k < V; k += (int)blockDim.x)
        if (x[k] > v || (idx == kNone && x[k] == v)) { /* the first occurrence in this thread */
            v = x[k];
            idx = k;
        }
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, offset);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, offset);
        greedy_merge(v, idx, ov, oi);
    }
    if (lane == 0) {
        best_v[warp] = v;
        best_i[warp] = idx;
    }
    __syncthreads();
    if (tid == 0) {
        float bv = best_v[0];
        int bi = best_i[0];
        for (int w = 1; w < warps; w++)
            greedy_merge(bv, bi, best_v[w], best_i[w]);
        best_v[0] = bv;
        best_i[0] = bi;
    }
    __syncthreads();
    const int chosen = best_i[0] == kNone ? 0 : best_i[0];
    /* the CPU's log-sum-exp takes the largest logit that is not NaN: the chosen value */
    const float m = best_v[0];
    double z = 0.0;
    for (int k = tid; k < V; k += (int)blockDim.x)
        if (!isnan(x[k])) z += exp((double)x[k] - (double)m);
    z = mg_block_sum(z, sums);
    if (tid == 0) {
        tokens[blockIdx.x] = chosen;
        logprobs[blockIdx.x] = (float)((double)x[chosen] - (double)m - log(z));
    }
}

extern "C" void cuda_greedy_rows(const mg_backend *be, const float *logits, int rows, int V,
                                 int32_t *tokens, float *logprobs) {
    if (rows <= 0) return;
    mg_cuda_ctx *ctx = mg_cuda_ctx_of(be);
    const size_t need = (size_t)rows * (sizeof(int32_t) + sizeof(float));
    if (ctx->workspace == NULL || ctx->workspace_bytes < need) {
        mg_cuda_note(be, cudaErrorMemoryAllocation, "greedy_rows: workspace too small");
        return;
    }
    int32_t *d_tokens = (int32_t *)ctx->workspace;
    float *d_logprobs = (float *)(d_tokens + rows);
    MG_LAUNCH(greedy_rows_kernel, (unsigned)rows, GREEDY_THREADS, 0, be, logits, V, d_tokens,
              d_logprobs);
    mg_cuda_note(be,
                 cudaMemcpyAsync(tokens, d_tokens, sizeof(int32_t) * rows, cudaMemcpyDeviceToHost,
                                 ctx->stream),
                 "greedy_rows: tokens");
    mg_cuda_note(be,
                 cudaMemcpyAsync(logprobs, d_logprobs, sizeof(float) * rows, cudaMemcpyDeviceToHost,
                                 ctx->stream),
                 "greedy_rows: log-probabilities");
    mg_cuda_note(be, cudaStreamSynchronize(ctx->stream), "greedy_rows: synchronize");
}
