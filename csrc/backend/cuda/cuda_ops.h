/* The CUDA backend's entries: one function per op-table entry of csrc/backend/backend.h, with
 * the same arguments (device pointers where the table says "backend memory"). The table itself
 * is assembled in cuda_backend.cu; the kernels live one family per file beside it. */
#ifndef MG_BACKEND_CUDA_OPS_H
#define MG_BACKEND_CUDA_OPS_H

#include "../backend.h"

#ifdef __cplusplus
extern "C" {
#endif

void *cuda_alloc(const mg_backend *be, size_t bytes, const char *what, mg_error *err);
void cuda_free(const mg_backend *be, void *p);
void cuda_upload(const mg_backend *be, void *dst, const void *src, size_t bytes);
void cuda_download(const mg_backend *be, void *dst, const void *src, size_t bytes);
void cuda_copy(const mg_backend *be, void *dst, const void *src, size_t bytes);
void cuda_zero(const mg_backend *be, void *dst, size_t bytes);
int cuda_sync(const mg_backend *be, mg_error *err);
void cuda_sgemm(const mg_backend *be, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
void cuda_matmul_forward(const mg_backend *be, float *out, const float *inp, const float *weight,
                         const float *bias, int N, int n_in, int n_out, bool accumulate);
void cuda_matmul_backward(const mg_backend *be, float *dinp, float *dweight, float *dbias,
                          const float *dout, const float *inp, const float *weight, int N, int n_in,
                          int n_out);
void cuda_rmsnorm_forward(const mg_backend *be, float *out, const float *inp, const float *weight,
                          int N, int D, float eps);
void cuda_rmsnorm_backward(const mg_backend *be, float *dinp, float *dweight, const float *dout,
                           const float *inp, const float *weight, int N, int D, float eps);
void cuda_layernorm_forward(const mg_backend *be, float *out, const float *inp, const float *weight,
                            const float *bias, int N, int D, float eps);
void cuda_layernorm_backward(const mg_backend *be, float *dinp, float *dweight, float *dbias,
                             const float *dout, const float *inp, const float *weight, int N, int D,
                             float eps);
void cuda_rope_forward(const mg_backend *be, float *x, const int *pos, const float *inv_freq, int N,
                       int H, int hd);
void cuda_rope_backward(const mg_backend *be, float *dx, const int *pos, const float *inv_freq,
                        int N, int H, int hd);
size_t cuda_attention_scratch(const mg_backend *be, const attention_shape *s, bool backward);
void cuda_attention_forward(const mg_backend *be, float *out, const float *q, const float *k,
                            const float *v, const uint8_t *q_roles, const int32_t *q_seg,
                            const uint8_t *k_roles, const int32_t *k_seg, attention_shape s,
                            float *stats, float *scratch);
void cuda_attention_backward(const mg_backend *be, float *dq, float *dk, float *dv,
                             const float *dout, const float *q, const float *k, const float *v,
                             const uint8_t *q_roles, const int32_t *q_seg, const uint8_t *k_roles,
                             const int32_t *k_seg, attention_shape s, const float *out,
                             const float *stats, float *scratch);
void cuda_swiglu_forward(const mg_backend *be, float *out, const float *gate, const float *up,
                         long n);
void cuda_swiglu_backward(const mg_backend *be, float *dgate, float *dup, const float *dout,
                          const float *gate, const float *up, long n);
void cuda_gelu_tanh_forward(const mg_backend *be, float *x, long n);
void cuda_gelu_tanh_backward(const mg_backend *be, float *dx, const float *dout, const float *x,
                             long n);
void cuda_embedding_forward(const mg_backend *be, float *out, const int *tokens, const int *pos,
                            const float *wte, const float *wpe, int N, int D);
void cuda_embedding_backward(const mg_backend *be, float *dwte, float *dwpe, const float *dout,
                             const int *tokens, const int *pos, int N, int D);
void cuda_dropout_forward(const mg_backend *be, float *out, const float *inp, long n, float p,
                          uint64_t seed, uint64_t stream);
void cuda_dropout_backward(const mg_backend *be, float *dinp, const float *dout, long n, float p,
                           uint64_t seed, uint64_t stream);
void cuda_dropped_matmul_forward(const mg_backend *be, const float *x, int N, int in, int r,
                                 float p, uint64_t seed, const mg_dropped_product *prods, int n,
                                 float *scratch);
void cuda_dropped_matmul_backward(const mg_backend *be, float *dinp, const float *x, int N, int in,
                                  int r, float p, uint64_t seed, const mg_dropped_product *prods,
                                  int n, float *scratch);
void cuda_cross_entropy(const mg_backend *be, float *logits, const int32_t *labels, long N, int V,
                        float grad_scale, double *loss_sum, long *count);
size_t cuda_infonce_scratch(const mg_backend *be, int n, int D);
void cuda_infonce(const mg_backend *be, float *loss, float *da, float *db, const float *a,
                  const float *b, int n, int D, float temperature, float grad_scale,
                  float *scratch);
void cuda_adamw_update(const mg_backend *be, float *param, const float *grad, float *m, float *v,
                       long n, float lr, float beta1, float beta2, float eps, float weight_decay,
                       int step);
double cuda_sum_squares(const mg_backend *be, const float *x, long n);
void cuda_scale(const mg_backend *be, float *x, float a, long n);
void cuda_add_inplace(const mg_backend *be, float *x, const float *y, long n);
void cuda_zero_padding_rows(const mg_backend *be, float *x, const int32_t *segments, long N, int D);
void cuda_gather_rows(const mg_backend *be, float *out, const float *inp, const int64_t *idx,
                      long n, int D);
void cuda_scatter_add_rows(const mg_backend *be, float *out, const float *inp, const int64_t *idx,
                           long n, int D);
void cuda_copy_rows(const mg_backend *be, float *out, long ld_out, const float *inp, long ld_in,
                    long n, int D);
void cuda_qkv_split(const mg_backend *be, float *q, float *k_rows, float *v_rows,
                    const float *src_q, const float *src_k, const float *src_v, long ld_q,
                    long ld_kv, const float *bq, const float *bk, const float *bv, int B, int Tq,
                    int QD, int KD, int capacity, int length);
void cuda_range_pool_forward(const mg_backend *be, float *out, const float *hidden,
                             const int64_t *start, const int64_t *end, int n, int D,
                             mg_pooling mode);
void cuda_range_pool_backward(const mg_backend *be, float *dhidden, const float *dvec,
                              const int64_t *start, const int64_t *end, int n, int D,
                              mg_pooling mode);
void cuda_l2_normalize_rows(const mg_backend *be, float *x, int N, int D);
void cuda_greedy_rows(const mg_backend *be, const float *logits, int rows, int V, int32_t *tokens,
                      float *logprobs);

#ifdef __cplusplus
}
#endif

#endif
