/* The CPU backend: the op table over csrc/ops (OpenBLAS GEMMs, OpenMP loops) and host memory.
 * Each entry drops the backend argument and calls the op of the same name. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/alloc.h"
#include "../../ops/activation.h"
#include "../../ops/adamw.h"
#include "../../ops/dropout.h"
#include "../../ops/embedding.h"
#include "../../ops/loss.h"
#include "../../ops/matmul.h"
#include "../../ops/norm.h"
#include "../../ops/rope.h"
#include "../../ops/rows.h"
#include "../../ops/sampling.h"
#include "../backend.h"
#include "blas.h"

static void *cpu_alloc(const mg_backend *be, size_t bytes, const char *what, mg_error *err) {
    (void)be;
    return mg_alloc(bytes ? bytes : 1, 1, what, err);
}
static void cpu_free(const mg_backend *be, void *p) {
    (void)be;
    mg_free(p);
}
static void cpu_copy(const mg_backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (bytes && dst != src) memmove(dst, src, bytes);
}
static void cpu_zero(const mg_backend *be, void *dst, size_t bytes) {
    (void)be;
    if (bytes) memset(dst, 0, bytes);
}
static int cpu_sync(const mg_backend *be, mg_error *err) {
    (void)be;
    return err->code;
}
static void cpu_sgemm(const mg_backend *be, bool ta, bool tb, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C,
                      int ldc) {
    (void)be;
    mg_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static void cpu_matmul_forward(const mg_backend *be, float *out, const float *inp,
                               const float *weight, const float *bias, int N, int I, int O,
                               bool accumulate) {
    (void)be;
    matmul_forward(out, inp, weight, bias, N, I, O, accumulate);
}
static void cpu_matmul_backward(const mg_backend *be, float *dinp, float *dweight, float *dbias,
                                const float *dout, const float *inp, const float *weight, int N,
                                int I, int O) {
    (void)be;
    matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, I, O);
}
static void cpu_rmsnorm_forward(const mg_backend *be, float *out, const float *inp,
                                const float *weight, int N, int D, float eps) {
    (void)be;
    rmsnorm_forward(out, inp, weight, N, D, eps);
}
static void cpu_rmsnorm_backward(const mg_backend *be, float *dinp, float *dweight,
                                 const float *dout, const float *inp, const float *weight, int N,
                                 int D, float eps) {
    (void)be;
    rmsnorm_backward(dinp, dweight, dout, inp, weight, N, D, eps);
}
static void cpu_layernorm_forward(const mg_backend *be, float *out, const float *inp,
                                  const float *weight, const float *bias, int N, int D, float eps) {
    (void)be;
    layernorm_forward(out, inp, weight, bias, N, D, eps);
}
static void cpu_layernorm_backward(const mg_backend *be, float *dinp, float *dweight, float *dbias,
                                   const float *dout, const float *inp, const float *weight, int N,
                                   int D, float eps) {
    (void)be;
    layernorm_backward(dinp, dweight, dbias, dout, inp, weight, N, D, eps);
}
static void cpu_rope_forward(const mg_backend *be, float *x, const int *pos, const float *inv_freq,
                             int N, int H, int hd) {
    (void)be;
    rope_forward(x, pos, inv_freq, N, H, hd);
}
static void cpu_rope_backward(const mg_backend *be, float *dx, const int *pos,
                              const float *inv_freq, int N, int H, int hd) {
    (void)be;
    rope_backward(dx, pos, inv_freq, N, H, hd);
}
static size_t cpu_attention_scratch(const mg_backend *be, const attention_shape *s, bool backward) {
    (void)be;
    const int threads = omp_get_max_threads();
    return backward ? ATTENTION_BACKWARD_SCRATCH(s->hd, s->Tk, threads)
                    : ATTENTION_SCRATCH(s->B, s->Hkv, s->hd, s->Tk, threads);
}
static void cpu_attention_forward(const mg_backend *be, float *out, const float *q, const float *k,
                                  const float *v, const uint8_t *q_roles, const int32_t *q_seg,
                                  const uint8_t *k_roles, const int32_t *k_seg, attention_shape s,
                                  float *stats, float *scratch) {
    (void)be;
    (void)stats; /* attention_saves_stats is false: the backward recomputes */
    attention_forward(out, q, k, v, q_roles, q_seg, k_roles, k_seg, s, scratch);
}
static void cpu_attention_backward(const mg_backend *be, float *dq, float *dk, float *dv,
                                   const float *dout, const float *q, const float *k,
                                   const float *v, const uint8_t *q_roles, const int32_t *q_seg,
                                   const uint8_t *k_roles, const int32_t *k_seg, attention_shape s,
                                   const float *out, const float *stats, float *scratch) {
    (void)be;
    (void)out;
    (void)stats;
    attention_backward(dq, dk, dv, dout, q, k, v, q_roles, q_seg, k_roles, k_seg, s, scratch);
}
static void cpu_swiglu_forward(const mg_backend *be, float *out, const float *gate, const float *up,
                               long n) {
    (void)be;
    swiglu_forward(out, gate, up, n);
}
static void cpu_swiglu_backward(const mg_backend *be, float *dgate, float *dup, const float *dout,
                                const float *gate, const float *up, long n) {
    (void)be;
    swiglu_backward(dgate, dup, dout, gate, up, n);
}
static void cpu_gelu_tanh_forward(const mg_backend *be, float *x, long n) {
    (void)be;
    gelu_tanh_forward(x, n);
}
static void cpu_gelu_tanh_backward(const mg_backend *be, float *dx, const float *dout,
                                   const float *x, long n) {
    (void)be;
    gelu_tanh_backward(dx, dout, x, n);
}
static void cpu_embedding_forward(const mg_backend *be, float *out, const int *tokens,
                                  const int *pos, const float *wte, const float *wpe, int N,
                                  int D) {
    (void)be;
    embedding_forward(out, tokens, pos, wte, wpe, N, D);
}
static void cpu_embedding_backward(const mg_backend *be, float *dwte, float *dwpe,
                                   const float *dout, const int *tokens, const int *pos, int N,
                                   int D) {
    (void)be;
    embedding_backward(dwte, dwpe, dout, tokens, pos, N, D);
}
static void cpu_dropout_forward(const mg_backend *be, float *out, const float *inp, long n, float p,
                                uint64_t seed, uint64_t stream) {
    (void)be;
    dropout_forward(out, inp, n, p, seed, stream);
}
static void cpu_dropout_backward(const mg_backend *be, float *dinp, const float *dout, long n,
                                 float p, uint64_t seed, uint64_t stream) {
    (void)be;
    dropout_backward(dinp, dout, n, p, seed, stream);
}
/* Each drop_t(x) into scratch, then OpenBLAS: one product after another, as lora.c did before
 * the GPU fused them. */
static void cpu_dropped_matmul_forward(const mg_backend *be, const float *x, int N, int in, int r,
                                       float p, uint64_t seed, const mg_dropped_product *prods,
                                       int n, float *scratch) {
    (void)be;
    for (int t = 0; t < n; t++) {
        dropout_forward(scratch, x, (long)N * in, p, seed, prods[t].stream);
        mg_sgemm(false, true, N, r, in, 1.0f, scratch, in, prods[t].A, in, 0.0f, prods[t].u, r);
    }
}
static void cpu_dropped_matmul_backward(const mg_backend *be, float *dinp, const float *x, int N,
                                        int in, int r, float p, uint64_t seed,
                                        const mg_dropped_product *prods, int n, float *scratch) {
    (void)be;
    for (int t = 0; t < n; t++) {
        const mg_dropped_product *d = &prods[t];
        if (d->dA) {
            dropout_forward(scratch, x, (long)N * in, p, seed, d->stream);
            mg_sgemm(true, false, r, in, N, 1.0f, d->du, r, scratch, in, 1.0f, d->dA, in);
        }
        if (dinp) {
            mg_sgemm(false, false, N, in, r, 1.0f, d->du, r, d->A, in, 0.0f, scratch, in);
            dropout_backward(dinp, scratch, (long)N * in, p, seed, d->stream);
        }
    }
}
static void cpu_cross_entropy(const mg_backend *be, float *logits, const int32_t *labels, long N,
                              int V, float grad_scale, double *loss_sum, long *count) {
    (void)be;
    mg_error ignored = {MG_OK, ""}; /* labels were validated by the model layer */
    cross_entropy_forward_backward(logits, labels, N, V, grad_scale, loss_sum, count, &ignored);
}
static size_t cpu_infonce_scratch(const mg_backend *be, int n, int D) {
    (void)be;
    return INFONCE_SCRATCH(n, D);
}
static void cpu_infonce(const mg_backend *be, float *loss, float *da, float *db, const float *a,
                        const float *b, int n, int D, float temperature, float grad_scale,
                        float *scratch) {
    (void)be;
    infonce_forward_backward(loss, da, db, a, b, n, D, temperature, grad_scale, scratch);
}
static void cpu_adamw_update(const mg_backend *be, float *param, const float *grad, float *m,
                             float *v, long n, float lr, float beta1, float beta2, float eps,
                             float weight_decay, int step) {
    (void)be;
    adamw_update(param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, step);
}
static double cpu_sum_squares(const mg_backend *be, const float *x, long n) {
    (void)be;
    return rows_sum_squares(x, n);
}
static void cpu_scale(const mg_backend *be, float *x, float a, long n) {
    (void)be;
    rows_scale(x, a, n);
}
static void cpu_add_inplace(const mg_backend *be, float *x, const float *y, long n) {
    (void)be;
    rows_add_inplace(x, y, n);
}
static void cpu_zero_padding_rows(const mg_backend *be, float *x, const int32_t *segments, long N,
                                  int D) {
    (void)be;
    rows_zero_padding(x, segments, N, D);
}
static void cpu_gather_rows(const mg_backend *be, float *out, const float *inp, const int64_t *idx,
                            long n, int D) {
    (void)be;
    rows_gather(out, inp, idx, n, D);
}
static void cpu_scatter_add_rows(const mg_backend *be, float *out, const float *inp,
                                 const int64_t *idx, long n, int D) {
    (void)be;
    rows_scatter_add(out, inp, idx, n, D);
}
static void cpu_copy_rows(const mg_backend *be, float *out, long ld_out, const float *inp,
                          long ld_in, long n, int D) {
    (void)be;
    rows_copy(out, ld_out, inp, ld_in, n, D);
}
static void cpu_qkv_split(const mg_backend *be, float *q, float *k_rows, float *v_rows,
                          const float *src_q, const float *src_k, const float *src_v, long ld_q,
                          long ld_kv, const float *bq, const float *bk, const float *bv, int B,
                          int Tq, int QD, int KD, int capacity, int length) {
    (void)be;
    rows_qkv_split(q, k_rows, v_rows, src_q, src_k, src_v, ld_q, ld_kv, bq, bk, bv, B, Tq, QD, KD,
                   capacity, length);
}
static void cpu_range_pool_forward(const mg_backend *be, float *out, const float *hidden,
                                   const int64_t *start, const int64_t *end, int n, int D,
                                   mg_pooling mode) {
    (void)be;
    rows_range_pool_forward(out, hidden, start, end, n, D, mode);
}
static void cpu_range_pool_backward(const mg_backend *be, float *dhidden, const float *dvec,
                                    const int64_t *start, const int64_t *end, int n, int D,
                                    mg_pooling mode) {
    (void)be;
    rows_range_pool_backward(dhidden, dvec, start, end, n, D, mode);
}
static void cpu_l2_normalize_rows(const mg_backend *be, float *x, int N, int D) {
    (void)be;
    l2_normalize_rows(x, N, D);
}

static void cpu_greedy_rows(const mg_backend *be, const float *logits, int rows, int V,
                            int32_t *tokens, float *logprobs) {
    (void)be;
    sampling_greedy_rows(logits, rows, V, tokens, logprobs);
}

static const mg_backend cpu_backend = {
    .device = MG_DEVICE_CPU,
    .name = "cpu",
    .precision = MG_PRECISION_FP32,
    .ctx = NULL,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .sgemm = cpu_sgemm,
    .matmul_forward = cpu_matmul_forward,
    .matmul_backward = cpu_matmul_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .rope_forward = cpu_rope_forward,
    .rope_backward = cpu_rope_backward,
    .attention_scratch = cpu_attention_scratch,
    .attention_saves_stats = false,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .gelu_tanh_forward = cpu_gelu_tanh_forward,
    .gelu_tanh_backward = cpu_gelu_tanh_backward,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .dropout_forward = cpu_dropout_forward,
    .dropout_backward = cpu_dropout_backward,
    .dropped_matmul_forward = cpu_dropped_matmul_forward,
    .dropped_matmul_backward = cpu_dropped_matmul_backward,
    .cross_entropy = cpu_cross_entropy,
    .infonce_scratch = cpu_infonce_scratch,
    .infonce = cpu_infonce,
    .adamw_update = cpu_adamw_update,
    .sum_squares = cpu_sum_squares,
    .scale = cpu_scale,
    .add_inplace = cpu_add_inplace,
    .zero_padding_rows = cpu_zero_padding_rows,
    .gather_rows = cpu_gather_rows,
    .scatter_add_rows = cpu_scatter_add_rows,
    .copy_rows = cpu_copy_rows,
    .qkv_split = cpu_qkv_split,
    .range_pool_forward = cpu_range_pool_forward,
    .range_pool_backward = cpu_range_pool_backward,
    .l2_normalize_rows = cpu_l2_normalize_rows,
    .greedy_rows = cpu_greedy_rows,
};

const mg_backend *mg_backend_cpu(void) {
    return &cpu_backend;
}
