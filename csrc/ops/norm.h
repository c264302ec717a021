/* Normalisations over the last dimension of [N, D] rows. */
#ifndef MG_OPS_NORM_H
#define MG_OPS_NORM_H

/* LLaMA RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight. */
void rmsnorm_forward(float *out, const float *inp, const float *weight, int N, int D, float eps);

/* GPT-2 LayerNorm: out = (x - mean) / sqrt(var + eps) * weight + bias (biased variance). */
void layernorm_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                       int D, float eps);

/* Backwards, accumulating into dinp[N, D], dweight[D] (and dbias[D]); any may be NULL. The row
 * statistics are recomputed from inp. Weight and bias gradients are summed over rows in row
 * order by the thread owning each column, so results do not depend on the thread count. */
void rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                      const float *weight, int N, int D, float eps);
void layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int N, int D, float eps);

#endif
