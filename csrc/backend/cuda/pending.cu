/* TEMPORARY: weak stand-ins for the table entries that the kernel branches provide (norm, rope,
 * activation, embedding, dropout, adamw, rows, pooling, attention, loss), so that this branch
 * links and its backend can be created before they merge. Each records "not implemented yet"
 * for the next sync. A real definition in another object overrides these; the lead deletes this
 * file at the merge. */
#include "runtime.h"

#define MG_PENDING(name) mg_cuda_fail(be, MG_ERR_UNSUPPORTED, "not implemented yet: %s", name)

__attribute__((weak)) void cuda_rmsnorm_forward(const mg_backend *be, float *out, const float *inp,
                                                const float *weight, int N, int D, float eps) {
    (void)out;
    (void)inp;
    (void)weight;
    (void)N;
    (void)D;
    (void)eps;
    MG_PENDING("rmsnorm_forward");
}

__attribute__((weak)) void cuda_rmsnorm_backward(const mg_backend *be, float *dinp, float *dweight,
                                                 const float *dout, const float *inp,
                                                 const float *weight, int N, int D, float eps) {
    (void)dinp;
    (void)dweight;
    (void)dout;
    (void)inp;
    (void)weight;
    (void)N;
    (void)D;
    (void)eps;
    MG_PENDING("rmsnorm_backward");
}

__attribute__((weak)) void cuda_layernorm_forward(const mg_backend *be, float *out,
                                                  const float *inp, const float *weight,
                                                  const float *bias, int N, int D, float eps) {
    (void)out;
    (void)inp;
    (void)weight;
    (void)bias;
    (void)N;
    (void)D;
    (void)eps;
    MG_PENDING("layernorm_forward");
}

__attribute__((weak)) void cuda_layernorm_backward(const mg_backend *be, float *dinp,
                                                   float *dweight, float *dbias, const float *dout,
                                                   const float *inp, const float *weight, int N,
                                                   int D, float eps) {
    (void)dinp;
    (void)dweight;
    (void)dbias;
    (void)dout;
    (void)inp;
    (void)weight;
    (void)N;
    (void)D;
    (void)eps;
    MG_PENDING("layernorm_backward");
}

__attribute__((weak)) void cuda_rope_forward(const mg_backend *be, float *x, const int *pos,
                                             const float *inv_freq, int N, int H, int hd) {
    (void)x;
    (void)pos;
    (void)inv_freq;
    (void)N;
    (void)H;
    (void)hd;
    MG_PENDING("rope_forward");
}

__attribute__((weak)) void cuda_rope_backward(const mg_backend *be, float *dx, const int *pos,
                                              const float *inv_freq, int N, int H, int hd) {
    (void)dx;
    (void)pos;
    (void)inv_freq;
    (void)N;
    (void)H;
    (void)hd;
    MG_PENDING("rope_backward");
}

__attribute__((weak)) size_t cuda_attention_scratch(const mg_backend *be, const attention_shape *s,
                                                    bool backward) {
    (void)s;
    (void)backward;
    MG_PENDING("attention_scratch");
    return 0;
}

__attribute__((weak)) void cuda_attention_forward(const mg_backend *be, float *out, const float *q,
                                                  const float *k, const float *v,
                                                  const uint8_t *q_roles, const int32_t *q_seg,
                                                  const uint8_t *k_roles, const int32_t *k_seg,
                                                  attention_shape s, float *scratch) {
    (void)out;
    (void)q;
    (void)k;
    (void)v;
    (void)q_roles;
    (void)q_seg;
    (void)k_roles;
    (void)k_seg;
    (void)s;
    (void)scratch;
    MG_PENDING("attention_forward");
}

__attribute__((weak)) void cuda_attention_backward(const mg_backend *be, float *dq, float *dk,
                                                   float *dv, const float *dout, const float *q,
                                                   const float *k, const float *v,
                                                   const uint8_t *q_roles, const int32_t *q_seg,
                                                   const uint8_t *k_roles, const int32_t *k_seg,
                                                   attention_shape s, float *scratch) {
    (void)dq;
    (void)dk;
    (void)dv;
    (void)dout;
    (void)q;
    (void)k;
    (void)v;
    (void)q_roles;
    (void)q_seg;
    (void)k_roles;
    (void)k_seg;
    (void)s;
    (void)scratch;
    MG_PENDING("attention_backward");
}

__attribute__((weak)) void cuda_swiglu_forward(const mg_backend *be, float *out, const float *gate,
                                               const float *up, long n) {
    (void)out;
    (void)gate;
    (void)up;
    (void)n;
    MG_PENDING("swiglu_forward");
}

__attribute__((weak)) void cuda_swiglu_backward(const mg_backend *be, float *dgate, float *dup,
                                                const float *dout, const float *gate,
                                                const float *up, long n) {
    (void)dgate;
    (void)dup;
    (void)dout;
    (void)gate;
    (void)up;
    (void)n;
    MG_PENDING("swiglu_backward");
}

__attribute__((weak)) void cuda_gelu_tanh_forward(const mg_backend *be, float *x, long n) {
    (void)x;
    (void)n;
    MG_PENDING("gelu_tanh_forward");
}

__attribute__((weak)) void cuda_gelu_tanh_backward(const mg_backend *be, float *dx,
                                                   const float *dout, const float *x, long n) {
    (void)dx;
    (void)dout;
    (void)x;
    (void)n;
    MG_PENDING("gelu_tanh_backward");
}

__attribute__((weak)) void cuda_embedding_forward(const mg_backend *be, float *out,
                                                  const int *tokens, const int *pos,
                                                  const float *wte, const float *wpe, int N,
                                                  int D) {
    (void)out;
    (void)tokens;
    (void)pos;
    (void)wte;
    (void)wpe;
    (void)N;
    (void)D;
    MG_PENDING("embedding_forward");
}

__attribute__((weak)) void cuda_embedding_backward(const mg_backend *be, float *dwte, float *dwpe,
                                                   const float *dout, const int *tokens,
                                                   const int *pos, int N, int D) {
    (void)dwte;
    (void)dwpe;
    (void)dout;
    (void)tokens;
    (void)pos;
    (void)N;
    (void)D;
    MG_PENDING("embedding_backward");
}

__attribute__((weak)) void cuda_dropout_forward(const mg_backend *be, float *out, const float *inp,
                                                long n, float p, uint64_t seed, uint64_t stream) {
    (void)out;
    (void)inp;
    (void)n;
    (void)p;
    (void)seed;
    (void)stream;
    MG_PENDING("dropout_forward");
}

__attribute__((weak)) void cuda_dropout_backward(const mg_backend *be, float *dinp,
                                                 const float *dout, long n, float p, uint64_t seed,
                                                 uint64_t stream) {
    (void)dinp;
    (void)dout;
    (void)n;
    (void)p;
    (void)seed;
    (void)stream;
    MG_PENDING("dropout_backward");
}

__attribute__((weak)) void cuda_cross_entropy(const mg_backend *be, float *logits,
                                              const int32_t *labels, long N, int V,
                                              float grad_scale, double *loss_sum, long *count) {
    (void)logits;
    (void)labels;
    (void)N;
    (void)V;
    (void)grad_scale;
    *loss_sum = 0.0;
    *count = 0;
    MG_PENDING("cross_entropy");
}

__attribute__((weak)) size_t cuda_infonce_scratch(const mg_backend *be, int n, int D) {
    (void)n;
    (void)D;
    MG_PENDING("infonce_scratch");
    return 0;
}

__attribute__((weak)) void cuda_infonce(const mg_backend *be, float *loss, float *da, float *db,
                                        const float *a, const float *b, int n, int D,
                                        float temperature, float grad_scale, float *scratch) {
    (void)da;
    (void)db;
    (void)a;
    (void)b;
    (void)n;
    (void)D;
    (void)temperature;
    (void)grad_scale;
    (void)scratch;
    *loss = 0.0f;
    MG_PENDING("infonce");
}

__attribute__((weak)) void cuda_adamw_update(const mg_backend *be, float *param, const float *grad,
                                             float *m, float *v, long n, float lr, float beta1,
                                             float beta2, float eps, float weight_decay, int step) {
    (void)param;
    (void)grad;
    (void)m;
    (void)v;
    (void)n;
    (void)lr;
    (void)beta1;
    (void)beta2;
    (void)eps;
    (void)weight_decay;
    (void)step;
    MG_PENDING("adamw_update");
}

__attribute__((weak)) double cuda_sum_squares(const mg_backend *be, const float *x, long n) {
    (void)x;
    (void)n;
    MG_PENDING("sum_squares");
    return 0.0;
}

__attribute__((weak)) void cuda_scale(const mg_backend *be, float *x, float a, long n) {
    (void)x;
    (void)a;
    (void)n;
    MG_PENDING("scale");
}

__attribute__((weak)) void cuda_add_inplace(const mg_backend *be, float *x, const float *y,
                                            long n) {
    (void)x;
    (void)y;
    (void)n;
    MG_PENDING("add_inplace");
}

__attribute__((weak)) void cuda_zero_padding_rows(const mg_backend *be, float *x,
                                                  const int32_t *segments, long N, int D) {
    (void)x;
    (void)segments;
    (void)N;
    (void)D;
    MG_PENDING("zero_padding_rows");
}

__attribute__((weak)) void cuda_gather_rows(const mg_backend *be, float *out, const float *inp,
                                            const int64_t *idx, long n, int D) {
    (void)out;
    (void)inp;
    (void)idx;
    (void)n;
    (void)D;
    MG_PENDING("gather_rows");
}

__attribute__((weak)) void cuda_scatter_add_rows(const mg_backend *be, float *out, const float *inp,
                                                 const int64_t *idx, long n, int D) {
    (void)out;
    (void)inp;
    (void)idx;
    (void)n;
    (void)D;
    MG_PENDING("scatter_add_rows");
}

__attribute__((weak)) void cuda_copy_rows(const mg_backend *be, float *out, long ld_out,
                                          const float *inp, long ld_in, long n, int D) {
    (void)out;
    (void)ld_out;
    (void)inp;
    (void)ld_in;
    (void)n;
    (void)D;
    MG_PENDING("copy_rows");
}

__attribute__((weak)) void cuda_qkv_split(const mg_backend *be, float *q, float *k_rows,
                                          float *v_rows, const float *src_q, const float *src_k,
                                          const float *src_v, long ld_q, long ld_kv,
                                          const float *bq, const float *bk, const float *bv, int B,
                                          int Tq, int QD, int KD, int capacity, int length) {
    (void)q;
    (void)k_rows;
    (void)v_rows;
    (void)src_q;
    (void)src_k;
    (void)src_v;
    (void)ld_q;
    (void)ld_kv;
    (void)bq;
    (void)bk;
    (void)bv;
    (void)B;
    (void)Tq;
    (void)QD;
    (void)KD;
    (void)capacity;
    (void)length;
    MG_PENDING("qkv_split");
}

__attribute__((weak)) void cuda_range_pool_forward(const mg_backend *be, float *out,
                                                   const float *hidden, const int64_t *start,
                                                   const int64_t *end, int n, int D,
                                                   mg_pooling mode) {
    (void)out;
    (void)hidden;
    (void)start;
    (void)end;
    (void)n;
    (void)D;
    (void)mode;
    MG_PENDING("range_pool_forward");
}

__attribute__((weak)) void cuda_range_pool_backward(const mg_backend *be, float *dhidden,
                                                    const float *dvec, const int64_t *start,
                                                    const int64_t *end, int n, int D,
                                                    mg_pooling mode) {
    (void)dhidden;
    (void)dvec;
    (void)start;
    (void)end;
    (void)n;
    (void)D;
    (void)mode;
    MG_PENDING("range_pool_backward");
}

__attribute__((weak)) void cuda_l2_normalize_rows(const mg_backend *be, float *x, int N, int D) {
    (void)x;
    (void)N;
    (void)D;
    MG_PENDING("l2_normalize_rows");
}
