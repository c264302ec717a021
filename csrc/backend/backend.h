/* The op table: everything the model layer (csrc/model) does to tensor data goes through one of
 * these entries, so the same forward, backward, trainer, generation and embedding code runs on
 * the CPU (csrc/backend/cpu) and on an NVIDIA GPU (csrc/backend/cuda). A model's parameters,
 * activations, caches and gradients live in the memory of its backend; host arrays (token ids,
 * roles, segments, positions, labels) are uploaded by the model layer before an op reads them.
 *
 * Conventions, for every entry:
 * - pointers named as data (x, out, inp, weight, ...) are in the backend's memory; scalars and
 *   the results that an entry returns (double, float *loss where documented) are on the host;
 * - shapes are row-major and the arguments mean what they mean in csrc/ops/<family>.h, whose
 *   comments are the specification (the CPU entries are those functions);
 * - entries never fail on valid shapes; a GPU reports asynchronous failures (a launch that did
 *   not run, memory faults) through `sync`, which the model layer calls before returning. */
#ifndef MG_BACKEND_BACKEND_H
#define MG_BACKEND_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../core/error.h"
#include "../ops/attention.h"
#include "../ops/pooling.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MG_DEVICE_CPU = 0, MG_DEVICE_CUDA = 1 } mg_device;

/* Precision of the GPU's matrix products; the CPU computes in float32 always. */
typedef enum {
    MG_PRECISION_FP32 = 0, /* float32 inputs and accumulation (parity mode) */
    MG_PRECISION_BF16 = 1  /* bfloat16 inputs, float32 accumulation and storage */
} mg_precision;

typedef struct mg_backend_s mg_backend;

/* One product of the dropped_matmul entries (below): its factor A[r, in], its dropout stream,
 * and what it computes or consumes. */
#define MG_DROPPED_MAX 3
typedef struct {
    const float *A;
    uint64_t stream;
    float *u;        /* forward: [N, r] */
    const float *du; /* backward: [N, r] */
    float *dA;       /* backward: [r, in], may be NULL */
} mg_dropped_product;

struct mg_backend_s {
    mg_device device;
    const char *name; /* "cpu", "cuda:0 (NVIDIA H100 ...)", ... */
    mg_precision precision;
    void *ctx; /* the backend's own state (a GPU's stream and library handles); NULL on CPU */

    /* ---- memory ---- */
    /* Zero-filled block of `bytes`, or NULL with err set (the message names `what`). */
    void *(*alloc)(const mg_backend *be, size_t bytes, const char *what, mg_error *err);
    void (*free)(const mg_backend *be, void *p);
    /* host -> backend, backend -> host, backend -> backend; complete when they return */
    void (*upload)(const mg_backend *be, void *dst, const void *src, size_t bytes);
    void (*download)(const mg_backend *be, void *dst, const void *src, size_t bytes);
    void (*copy)(const mg_backend *be, void *dst, const void *src, size_t bytes);
    void (*zero)(const mg_backend *be, void *dst, size_t bytes);
    /* Waits for queued work; reports the first asynchronous failure since the last sync. */
    int (*sync)(const mg_backend *be, mg_error *err);
    /* Makes the backend current on the calling thread before it runs work there (a GPU: its
     * device, which the CUDA runtime keeps per thread); NULL where there is nothing to do. */
    void (*enter)(const mg_backend *be);

    /* ---- linear algebra ---- */
    /* mg_sgemm: row-major C[M,N] = alpha op(A) op(B) + beta C, lda/ldb/ldc row strides. */
    void (*sgemm)(const mg_backend *be, bool trans_a, bool trans_b, int M, int N, int K,
                  float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                  float *C, int ldc);
    void (*matmul_forward)(const mg_backend *be, float *out, const float *inp, const float *weight,
                           const float *bias, int N, int n_in, int n_out, bool accumulate);
    void (*matmul_backward)(const mg_backend *be, float *dinp, float *dweight, float *dbias,
                            const float *dout, const float *inp, const float *weight, int N,
                            int n_in, int n_out);

    /* ---- layers (csrc/ops) ---- */
    void (*rmsnorm_forward)(const mg_backend *be, float *out, const float *inp, const float *weight,
                            int N, int D, float eps);
    void (*rmsnorm_backward)(const mg_backend *be, float *dinp, float *dweight, const float *dout,
                             const float *inp, const float *weight, int N, int D, float eps);
    void (*layernorm_forward)(const mg_backend *be, float *out, const float *inp,
                              const float *weight, const float *bias, int N, int D, float eps);
    void (*layernorm_backward)(const mg_backend *be, float *dinp, float *dweight, float *dbias,
                               const float *dout, const float *inp, const float *weight, int N,
                               int D, float eps);
    void (*rope_forward)(const mg_backend *be, float *x, const int *pos, const float *inv_freq,
                         int N, int H, int hd);
    void (*rope_backward)(const mg_backend *be, float *dx, const int *pos, const float *inv_freq,
                          int N, int H, int hd);
    /* Floats of scratch that attention_forward (backward: attention_backward) needs. */
    size_t (*attention_scratch)(const mg_backend *be, const attention_shape *s, bool backward);
    /* Whether attention_forward saves per-query statistics for attention_backward (B x Hq x Tq
     * floats, the backend's own layout), so that the backward does not run the forward again.
     * A training pass keeps them beside the attention output; the CPU keeps none. */
    bool attention_saves_stats;
    /* stats: NULL, or where the statistics go (written only when attention_saves_stats). */
    void (*attention_forward)(const mg_backend *be, float *out, const float *q, const float *k,
                              const float *v, const uint8_t *q_roles, const int32_t *q_seg,
                              const uint8_t *k_roles, const int32_t *k_seg, attention_shape s,
                              float *stats, float *scratch);
    /* out, stats: the output and statistics of the attention_forward call whose gradient this
     * is, or both NULL (the backward recomputes what it needs from q, k and v). */
    void (*attention_backward)(const mg_backend *be, float *dq, float *dk, float *dv,
                               const float *dout, const float *q, const float *k, const float *v,
                               const uint8_t *q_roles, const int32_t *q_seg, const uint8_t *k_roles,
                               const int32_t *k_seg, attention_shape s, const float *out,
                               const float *stats, float *scratch);
    void (*swiglu_forward)(const mg_backend *be, float *out, const float *gate, const float *up,
                           long n);
    void (*swiglu_backward)(const mg_backend *be, float *dgate, float *dup, const float *dout,
                            const float *gate, const float *up, long n);
    void (*gelu_tanh_forward)(const mg_backend *be, float *x, long n);
    void (*gelu_tanh_backward)(const mg_backend *be, float *dx, const float *dout, const float *x,
                               long n);
    void (*embedding_forward)(const mg_backend *be, float *out, const int *tokens, const int *pos,
                              const float *wte, const float *wpe, int N, int D);
    void (*embedding_backward)(const mg_backend *be, float *dwte, float *dwpe, const float *dout,
                               const int *tokens, const int *pos, int N, int D);
    void (*dropout_forward)(const mg_backend *be, float *out, const float *inp, long n, float p,
                            uint64_t seed, uint64_t stream);
    void (*dropout_backward)(const mg_backend *be, float *dinp, const float *dout, long n, float p,
                             uint64_t seed, uint64_t stream);
    /* Products with a dropped input, for LoRA's down projections: up to MG_DROPPED_MAX products
     * of one input x[N, in] (q, k and v share theirs), each with its own factor, dropout stream
     * and result. drop_t(x) is dropout_forward(x, N * in elements, p, seed, prods[t].stream); a
     * GPU draws the masks where it reads x, once for all n products, instead of writing drop(x)
     * out; the CPU materialises each in scratch (N * in floats, both entries).
     *   forward:  prods[t].u[N, r] = drop_t(x) A_t[r, in]^T
     *   backward: prods[t].dA[r, in] += du_t[N, r]^T drop_t(x)     (when dA is not NULL)
     *             dinp[N, in] += sum_t drop_t'(du_t A_t)              (when dinp is not NULL; the
     *                                                  dropout_backward of each mask, in order t)
     */
    void (*dropped_matmul_forward)(const mg_backend *be, const float *x, int N, int in, int r,
                                   float p, uint64_t seed, const mg_dropped_product *prods, int n,
                                   float *scratch);
    void (*dropped_matmul_backward)(const mg_backend *be, float *dinp, const float *x, int N,
                                    int in, int r, float p, uint64_t seed,
                                    const mg_dropped_product *prods, int n, float *scratch);

    /* ---- losses and optimizer ---- */
    /* Softmax cross-entropy over rows of logits[N, V] (overwritten by grad_scale * dlogits);
     * rows whose label is MG_IGNORE_LABEL are skipped (gradient 0). The loss sum and the count
     * of scored rows come back on the host. Labels were validated by the caller. */
    void (*cross_entropy)(const mg_backend *be, float *logits, const int32_t *labels, long N, int V,
                          float grad_scale, double *loss_sum, long *count);
    /* infonce_forward_backward; *loss is on the host; scratch: infonce_scratch(n, D) floats. */
    size_t (*infonce_scratch)(const mg_backend *be, int n, int D);
    void (*infonce)(const mg_backend *be, float *loss, float *da, float *db, const float *a,
                    const float *b, int n, int D, float temperature, float grad_scale,
                    float *scratch);
    void (*adamw_update)(const mg_backend *be, float *param, const float *grad, float *m, float *v,
                         long n, float lr, float beta1, float beta2, float eps, float weight_decay,
                         int step);
    /* Sum of squares of x[n], in double, on the host. */
    double (*sum_squares)(const mg_backend *be, const float *x, long n);

    /* ---- data movement within the model layer ---- */
    /* x[i] *= a */
    void (*scale)(const mg_backend *be, float *x, float a, long n);
    /* x[i] += y[i] */
    void (*add_inplace)(const mg_backend *be, float *x, const float *y, long n);
    /* Rows n of x[N, D] with segments[n] < 0 (padding) become zero. */
    void (*zero_padding_rows)(const mg_backend *be, float *x, const int32_t *segments, long N,
                              int D);
    /* out[i, :] = inp[idx[i], :] for i < n. */
    void (*gather_rows)(const mg_backend *be, float *out, const float *inp, const int64_t *idx,
                        long n, int D);
    /* out[idx[i], :] += inp[i, :] for i < n (idx distinct). */
    void (*scatter_add_rows)(const mg_backend *be, float *out, const float *inp, const int64_t *idx,
                             long n, int D);
    /* out[i, :] = inp[i, :] for i < n between row strides (floats): copies a column block. */
    void (*copy_rows)(const mg_backend *be, float *out, long ld_out, const float *inp, long ld_in,
                      long n, int D);
    /* The attention input of one step, written where the attention reads it, biases added:
     *   q[n, :]                       = src_q[n, :] + bq
     *   k_rows[b, length + t, :]      = src_k[n, :] + bk      (n = b * Tq + t)
     *   v_rows[b, length + t, :]      = src_v[n, :] + bv
     * src_* have row strides ld_q, ld_kv (floats); k_rows/v_rows are one cache slot laid out
     * [B, capacity, KD]; biases may be NULL. */
    void (*qkv_split)(const mg_backend *be, float *q, float *k_rows, float *v_rows,
                      const float *src_q, const float *src_k, const float *src_v, long ld_q,
                      long ld_kv, const float *bq, const float *bk, const float *bv, int B, int Tq,
                      int QD, int KD, int capacity, int length);
    /* Sentence vectors over flat row ranges of hidden[*, D]: out[i] is the state at row
     * end[i] - 1 (MG_POOL_LAST) or the mean over rows [start[i], end[i]) (MG_POOL_MEAN). */
    void (*range_pool_forward)(const mg_backend *be, float *out, const float *hidden,
                               const int64_t *start, const int64_t *end, int n, int D,
                               mg_pooling mode);
    /* Its backward: dhidden rows of each range += dvec[i] (divided by the range length for
     * MG_POOL_MEAN; only row end[i] - 1 for MG_POOL_LAST). Ranges are disjoint. */
    void (*range_pool_backward)(const mg_backend *be, float *dhidden, const float *dvec,
                                const int64_t *start, const int64_t *end, int n, int D,
                                mg_pooling mode);
    /* Scales each row of x[N, D] to unit L2 norm (rows of norm 0 stay 0). */
    void (*l2_normalize_rows)(const mg_backend *be, float *x, int N, int D);

    /* ---- sampling ---- */
    /* Greedy choice per row of logits[rows, V]: the first index of the maximum (sampling.c's
     * greedy rule) and its raw log-probability (sampling_logprob); both written to host arrays.
     * Decoding on a GPU reads back these 2 x rows values instead of rows x V logits. */
    void (*greedy_rows)(const mg_backend *be, const float *logits, int rows, int V, int32_t *tokens,
                        float *logprobs);
};

/* The CPU backend (a static table; never NULL). */
const mg_backend *mg_backend_cpu(void);

/* Whether this build has the CUDA backend, and how many devices the driver reports. On a build
 * without CUDA, or without a usable driver or device, returns 0 and writes why to `why`. */
int mg_cuda_device_count(char *why, size_t why_len);

/* A CUDA backend on `device` with `precision`; NULL with err set (MG_ERR_UNSUPPORTED) when this
 * build has no CUDA, or when the driver, the device or cuBLAS is missing. */
mg_backend *mg_backend_cuda_create(int device, mg_precision precision, mg_error *err);
void mg_backend_cuda_free(mg_backend *be);

#ifdef __cplusplus
}
#endif

#endif
