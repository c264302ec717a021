/* Pointwise activations of the two MLP families. */
#ifndef MG_OPS_ACTIVATION_H
#define MG_OPS_ACTIVATION_H

/* LLaMA SwiGLU: out[i] = silu(gate[i]) * up[i], n elements. out may alias gate. */
void swiglu_forward(float *out, const float *gate, const float *up, long n);

/* GPT-2 GELU, tanh approximation, in place over n elements. */
void gelu_tanh_forward(float *x, long n);

#endif
