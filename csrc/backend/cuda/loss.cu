/* The training losses on the GPU (csrc/ops/loss.h is the specification): token cross-entropy
 * and InfoNCE over sentence vectors. Both return their loss to the host; every sum is taken in a
 * fixed order (per-row values in a buffer, then one block reduces them), so results do not
 * depend on scheduling. */
#include <math.h>
#include <stdint.h>

#include "../../ops/loss.h"
#include "cuda_common.h"

#if defined(__CUDACC__) && !defined(MG_CUDA_EMULATE)
#define MG_BOUNDS(n) __launch_bounds__(n)
#else
#define MG_BOUNDS(n)
#endif

namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr int kRowThreads = 512;    /* cross-entropy: one block per row of logits */
constexpr int kReduceThreads = 256; /* the single block that sums per-row values */

/* (m, s) summarises a set of logits as s = sum exp(x - m); two summaries merge by rescaling to
 * the larger max. m = -inf means the empty set (s = 0). */
__device__ inline void lse_merge(float &m, float &s, float m2, float s2) {
    const float mn = fmaxf(m, m2);
    if (mn == -INFINITY) return;
    s = (m == -INFINITY ? 0.0f : s * expf(m - mn)) + (m2 == -INFINITY ? 0.0f : s2 * expf(m2 - mn));
    m = mn;
}

/* Block-wide (m, s) over kRowThreads threads; every thread gets the result. */
__device__ inline void block_lse(float &m, float &s) {
    __shared__ float red_m[kRowThreads / 32], red_s[kRowThreads / 32];
    for (int off = 16; off > 0; off /= 2) {
        const float m2 = __shfl_xor_sync(kFull, m, off), s2 = __shfl_xor_sync(kFull, s, off);
        lse_merge(m, s, m2, s2);
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        red_m[warp] = m;
        red_s[warp] = s;
    }
    __syncthreads();
    m = red_m[0];
    s = red_s[0];
    for (int w = 1; w < kRowThreads / 32; w++)
        lse_merge(m, s, red_m[w], red_s[w]);
    __syncthreads();
}

/* One block per row of logits[rows, V] (rows counted from this chunk's first row): a single
 * read computes the row's max and sum of exponentials online, a second read writes the gradient
 * grad_scale * (softmax - onehot) in place. row_loss[r] = logsumexp - logit[label] (0 for an
 * ignored row, whose gradient is zero). A label outside [0, V) other than MG_IGNORE_LABEL cannot
 * reach here (the caller validates); it is treated as ignored rather than written out of bounds. */
__global__ void MG_BOUNDS(kRowThreads)
    cross_entropy_rows(float *logits, const int32_t *labels, long rows, int V, float grad_scale,
                       double *row_loss) {
    for (long r = blockIdx.x; r < rows; r += gridDim.x) {
        float *x = logits + r * (long)V;
        const int y = labels[r];
        if (y < 0 || y >= V) {
            for (int j = threadIdx.x; j < V; j += kRowThreads)
                x[j] = 0.0f;
            if (threadIdx.x == 0) row_loss[r] = 0.0;
            continue;
        }
        float m = -INFINITY, s = 0.0f;
        for (int j = threadIdx.x; j < V; j += kRowThreads) {
            const float v = x[j];
            if (v > m) {
                s = (m == -INFINITY ? 0.0f : s * expf(m - v)) + 1.0f;
                m = v;
            } else if (m != -INFINITY) {
                s += expf(v - m);
            }
        }
        const float target = x[y]; /* read before the block synchronises and rewrites the row */
        block_lse(m, s);
        const float f = grad_scale / s;
        for (int j = threadIdx.x; j < V; j += kRowThreads) {
            float g = expf(x[j] - m) * f;
            if (j == y) g -= grad_scale;
            x[j] = g;
        }
        if (threadIdx.x == 0) row_loss[r] = log((double)s) + (double)m - (double)target;
    }
}

/* Fixed-order sum of double values and of a count, in one block of kReduceThreads: each thread
 * sums a strided subset in order, then a tree halves the partials. */
__device__ inline void block_sum2(double &a, long long &c) {
    __shared__ double ra[kReduceThreads];
    __shared__ long long rc[kReduceThreads];
    ra[threadIdx.x] = a;
    rc[threadIdx.x] = c;
    __syncthreads();
    for (int half = kReduceThreads / 2; half > 0; half /= 2) {
        if ((int)threadIdx.x < half) {
            ra[threadIdx.x] += ra[threadIdx.x + half];
            rc[threadIdx.x] += rc[threadIdx.x + half];
        }
        __syncthreads();
    }
    a = ra[0];
    c = rc[0];
}

/* result[0] (+)= sum of row_loss[0:rows], result[1] (+)= rows with a label in [0, V). */
__global__ void MG_BOUNDS(kReduceThreads)
    cross_entropy_total(double *result, const double *row_loss, const int32_t *labels, long rows,
                        int V, int first) {
    double acc = 0.0;
    long long cnt = 0;
    for (long r = threadIdx.x; r < rows; r += kReduceThreads) {
        acc += row_loss[r];
        cnt += labels[r] >= 0 && labels[r] < V;
    }
    block_sum2(acc, cnt);
    if (threadIdx.x == 0) {
        result[0] = first ? acc : result[0] + acc;
        result[1] = first ? (double)cnt : result[1] + (double)cnt;
    }
}

/* ---- InfoNCE ---- */

constexpr int kNormThreads = 256;
constexpr int kGemmTile = 16;

__device__ inline float block_sum_f(float v) {
    __shared__ float red[kNormThreads / 32];
    for (int off = 16; off > 0; off /= 2)
        v += __shfl_xor_sync(kFull, v, off);
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    v = red[0];
    for (int w = 1; w < kNormThreads / 32; w++)
        v += red[w];
    __syncthreads();
    return v;
}

/* xn[i] = x[i] / norm[i], norm[i] = max(|x_i|, eps); one block per row. */
__global__ void MG_BOUNDS(kNormThreads)
    infonce_normalise(float *xn, float *norm, const float *x, int D) {
    const float *r = x + (long)blockIdx.x * D;
    float ss = 0.0f;
    for (int d = threadIdx.x; d < D; d += kNormThreads)
        ss = fmaf(r[d], r[d], ss);
    ss = block_sum_f(ss);
    float nr = sqrtf(ss);
    nr = nr > MG_INFONCE_NORM_EPS ? nr : MG_INFONCE_NORM_EPS;
    for (int d = threadIdx.x; d < D; d += kNormThreads)
        xn[(long)blockIdx.x * D + d] = r[d] / nr;
    if (threadIdx.x == 0) norm[blockIdx.x] = nr;
}

/* dx[i] += (g - u (u . g)) / |x_i| with u = x^_i, g = dx^_i (the normalisation's Jacobian is
 * (I - u u^T) / |x|); below the eps clamp the norm is constant and dx += g / eps. */
__global__ void MG_BOUNDS(kNormThreads)
    infonce_normalise_backward(float *dx, const float *dxn, const float *xn, const float *norm,
                               int D) {
    const long off = (long)blockIdx.x * D;
    const float nr = norm[blockIdx.x];
    float dot = 0.0f;
    if (nr > MG_INFONCE_NORM_EPS)
        for (int d = threadIdx.x; d < D; d += kNormThreads)
            dot = fmaf(xn[off + d], dxn[off + d], dot);
    dot = block_sum_f(dot);
    const float inv = 1.0f / nr;
    for (int d = threadIdx.x; d < D; d += kNormThreads)
        dx[off + d] += (dxn[off + d] - xn[off + d] * dot) * inv;
}

/* Row-major C[M, N] = alpha op(A) op(B), op(A) [M, K], op(B) [K, N], float32 throughout: a plain
 * shared-memory tiled product, enough for InfoNCE's n x n x D shapes (n at most a few hundred)
 * and independent of the backend's GEMM precision setting. */
__global__ void infonce_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha,
                             const float *A, int lda, const float *B, int ldb, float *C, int ldc) {
    __shared__ float As[kGemmTile][kGemmTile + 1], Bs[kGemmTile][kGemmTile + 1];
    const int tx = threadIdx.x % kGemmTile, ty = threadIdx.x / kGemmTile;
    const int row = blockIdx.y * kGemmTile + ty, col = blockIdx.x * kGemmTile + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < K; k0 += kGemmTile) {
        /* As[ty][tx] = op(A)[blockIdx.y * 16 + ty][k0 + tx], Bs[ty][tx] = op(B)[k0 + ty][col] */
        const int ar = blockIdx.y * kGemmTile + ty, ak = k0 + tx;
        As[ty][tx] =
            ar < M && ak < K ? (trans_a ? A[(long)ak * lda + ar] : A[(long)ar * lda + ak]) : 0.0f;
        const int bk = k0 + ty;
        Bs[ty][tx] = bk < K && col < N
                         ? (trans_b ? B[(long)col * ldb + bk] : B[(long)bk * ldb + col])
                         : 0.0f;
        __syncthreads();
        for (int kk = 0; kk < kGemmTile; kk++)
            acc = fmaf(As[ty][kk], Bs[kk][tx], acc);
        __syncthreads();
    }
    if (row < M && col < N) C[(long)row * ldc + col] = alpha * acc;
}

/* Row i of S (n x n): S_i <- g softmax(S_i) - g e_i with g = grad_scale / n, and
 * row_loss[i] = logsumexp(S_i) - S_ii, the exponentials taken in double as on the CPU. */
__global__ void MG_BOUNDS(kNormThreads)
    infonce_softmax_rows(float *S, double *row_loss, int n, float g) {
    __shared__ double red_d[kNormThreads / 32];
    __shared__ float red_f[kNormThreads / 32];
    float *s = S + (long)blockIdx.x * n;
    const int i = blockIdx.x;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < n; j += kNormThreads)
        mx = fmaxf(mx, s[j]);
    for (int off = 16; off > 0; off /= 2)
        mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, off));
    if (threadIdx.x % 32 == 0) red_f[threadIdx.x / 32] = mx;
    __syncthreads();
    mx = red_f[0];
    for (int w = 1; w < kNormThreads / 32; w++)
        mx = fmaxf(mx, red_f[w]);
    const float diag = s[i];
    __syncthreads(); /* every thread has read the diagonal before it is overwritten */
    double sum = 0.0;
    for (int j = threadIdx.x; j < n; j += kNormThreads) {
        const float e = (float)exp((double)(s[j] - mx));
        s[j] = e;
        sum += e;
    }
    for (int off = 16; off > 0; off /= 2)
        sum += __shfl_xor_sync(kFull, sum, off);
    if (threadIdx.x % 32 == 0) red_d[threadIdx.x / 32] = sum;
    __syncthreads();
    sum = red_d[0];
    for (int w = 1; w < kNormThreads / 32; w++)
        sum += red_d[w];
    const float f = (float)(g / sum);
    for (int j = threadIdx.x; j < n; j += kNormThreads) {
        float v = s[j] * f;
        if (j == i) v -= g;
        s[j] = v;
    }
    if (threadIdx.x == 0) row_loss[i] = log(sum) + (double)mx - (double)diag;
}

/* result[0] = sum of row_loss[0:n] / n. */
__global__ void MG_BOUNDS(kReduceThreads)
    infonce_total(double *result, const double *row_loss, int n) {
    double acc = 0.0;
    long long unused = 0;
    for (int r = threadIdx.x; r < n; r += kReduceThreads)
        acc += row_loss[r];
    block_sum2(acc, unused);
    if (threadIdx.x == 0) result[0] = acc / n;
}

void gemm(const mg_backend *be, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
          const float *A, int lda, const float *B, int ldb, float *C, int ldc) {
    const dim3 grid((unsigned)((N + kGemmTile - 1) / kGemmTile),
                    (unsigned)((M + kGemmTile - 1) / kGemmTile));
    MG_LAUNCH(infonce_gemm, grid, kGemmTile * kGemmTile, 0, be, trans_a ? 1 : 0, trans_b ? 1 : 0, M,
              N, K, alpha, A, lda, B, ldb, C, ldc);
}

/* Device -> host copy of `bytes` from the backend's stream, complete on return. dst is the
 * context's pinned result slot when it has one (a true asynchronous copy), else host memory. */
void fetch(const mg_backend *be, void *dst, const void *src, size_t bytes) {
    mg_cuda_note(be, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, mg_cuda_stream(be)),
                 "cudaMemcpyAsync (loss)");
    mg_cuda_note(be, cudaStreamSynchronize(mg_cuda_stream(be)), "cudaStreamSynchronize (loss)");
}

} // namespace

/* Rows are processed in chunks whose per-row losses fit the workspace (after a 64-byte slot for
 * the running result); each chunk's sum is added to the result on the device in chunk order. */
void cuda_cross_entropy(const mg_backend *be, float *logits, const int32_t *labels, long N, int V,
                        float grad_scale, double *loss_sum, long *count) {
    *loss_sum = 0.0;
    *count = 0;
    if (N <= 0 || V <= 0) return;
    mg_cuda_ctx *ctx = mg_cuda_ctx_of(be);
    double *result = (double *)ctx->workspace;
    double *row_loss = result + 8;
    const long cap = (long)((ctx->workspace_bytes - 8 * sizeof(double)) / sizeof(double));
    for (long n0 = 0; n0 < N; n0 += cap) {
        const long rows = N - n0 < cap ? N - n0 : cap;
        const unsigned grid = (unsigned)(rows < 65535L * 32 ? rows : 65535L * 32);
        MG_LAUNCH(cross_entropy_rows, grid, kRowThreads, 0, be, logits + n0 * (long)V, labels + n0,
                  rows, V, grad_scale, row_loss);
        MG_LAUNCH(cross_entropy_total, 1, kReduceThreads, 0, be, result, row_loss, labels + n0,
                  rows, V, n0 == 0 ? 1 : 0);
    }
    double local[2] = {0.0, 0.0};
    double *host = ctx->host_result != NULL ? ctx->host_result : local;
    fetch(be, host, result, 2 * sizeof(double));
    *loss_sum = host[0];
    *count = (long)host[1];
}

/* The same layout as the CPU's scratch: an, bn, S, dan, dbn, norm_a, norm_b. */
size_t cuda_infonce_scratch(const mg_backend *be, int n, int D) {
    (void)be;
    return INFONCE_SCRATCH(n, D);
}

/* With S = A^ B^^T / t and G = d loss / d S = (softmax_rows(S) - I) / n:
 *     d A^ = G B^ / t,   d B^ = G^T A^ / t,
 * then each through its row normalisation (infonce_forward_backward in csrc/ops/loss.c). */
void cuda_infonce(const mg_backend *be, float *loss, float *da, float *db, const float *a,
                  const float *b, int n, int D, float temperature, float grad_scale,
                  float *scratch) {
    *loss = 0.0f;
    if (n <= 0 || D <= 0) return;
    const size_t nD = (size_t)n * D;
    float *an = scratch, *bn = an + nD, *S = bn + nD, *dan = S + (size_t)n * n, *dbn = dan + nD;
    float *norm_a = dbn + nD, *norm_b = norm_a + n;
    mg_cuda_ctx *ctx = mg_cuda_ctx_of(be);
    double *result = (double *)ctx->workspace, *row_loss = result + 8;
    if ((size_t)(n + 8) * sizeof(double) > ctx->workspace_bytes) {
        mg_cuda_note(be, cudaErrorInvalidValue, "infonce: batch larger than the workspace");
        return;
    }
    const float inv_t = 1.0f / temperature;
    MG_LAUNCH(infonce_normalise, n, kNormThreads, 0, be, an, norm_a, a, D);
    MG_LAUNCH(infonce_normalise, n, kNormThreads, 0, be, bn, norm_b, b, D);
    gemm(be, false, true, n, n, D, inv_t, an, D, bn, D, S, n);
    const float g = grad_scale / (float)n;
    MG_LAUNCH(infonce_softmax_rows, n, kNormThreads, 0, be, S, row_loss, n, g);
    MG_LAUNCH(infonce_total, 1, kReduceThreads, 0, be, result, row_loss, n);
    if (da != NULL) {
        gemm(be, false, false, n, D, n, inv_t, S, n, bn, D, dan, D);
        MG_LAUNCH(infonce_normalise_backward, n, kNormThreads, 0, be, da, dan, an, norm_a, D);
    }
    if (db != NULL) {
        gemm(be, true, false, n, D, n, inv_t, S, n, an, D, dbn, D);
        MG_LAUNCH(infonce_normalise_backward, n, kNormThreads, 0, be, db, dbn, bn, norm_b, D);
    }
    double local = 0.0;
    double *host = ctx->host_result != NULL ? ctx->host_result : &local;
    fetch(be, host, result, sizeof(double));
    *loss = (float)*host;
}
