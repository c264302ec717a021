/* Pointwise activations of the two MLP families. */
#ifndef MG_OPS_ACTIVATION_H
#define MG_OPS_ACTIVATION_H

/* LLaMA SwiGLU: out[i] = silu(gate[i]) * up[i], n elements. out may alias gate. */
void swiglu_forward(float *out, const float *gate, const float *up, long n);

/* GPT-2 GELU, tanh approximation, in place over n elements. */
void gelu_tanh_forward(float *x, long n);

/* Backward of swiglu_forward, written (not added: the MLP's backward needs no memset, and the
 * gradients are not read): with s = sigmoid(g),
 *   dup = dout g s,   dgate = dout up s (1 + g (1 - s)).
 * Either gradient may be NULL; neither may alias dout, gate or up. */
void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                     const float *up, long n);

/* Backward of gelu_tanh_forward, written (not added): dx = dout * gelu'(x) where x is the
 * pre-activation input. dx must not alias dout or x. */
void gelu_tanh_backward(float *dx, const float *dout, const float *x, long n);

#endif
