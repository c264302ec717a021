/* Normalisations over the last dimension of [N, D] rows. */
#ifndef MG_OPS_NORM_H
#define MG_OPS_NORM_H

/* LLaMA RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight. */
void rmsnorm_forward(float *out, const float *inp, const float *weight, int N, int D, float eps);

/* GPT-2 LayerNorm: out = (x - mean) / sqrt(var + eps) * weight + bias (biased variance). */
void layernorm_forward(float *out, const float *inp, const float *weight, const float *bias, int N,
                       int D, float eps);

#endif
