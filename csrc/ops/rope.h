/* Rotary position embedding in Hugging Face's "rotate_half" layout: within a head of size hd,
 * element k pairs with element k + hd/2 and both turn by angle pos * inv_freq[k]. */
#ifndef MG_OPS_ROPE_H
#define MG_OPS_ROPE_H

/* Rotates x[N, H, hd] in place; pos[N] is each row's position, inv_freq[hd/2] the frequencies. */
void rope_forward(float *x, const int *pos, const float *inv_freq, int N, int H, int hd);

/* Backward of rope_forward, in place on dx[N, H, hd]: each pair turns by the negative angle
 * (the rotation's transpose). */
void rope_backward(float *dx, const int *pos, const float *inv_freq, int N, int H, int hd);

#endif
