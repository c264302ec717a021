/* Token (and learned position) embeddings. */
#ifndef MG_OPS_EMBEDDING_H
#define MG_OPS_EMBEDDING_H

/* out[n] = wte[tokens[n]] + (wpe ? wpe[pos[n]] : 0), rows of D floats. Ids are validated by the
 * caller. */
void embedding_forward(float *out, const int *tokens, const int *pos, const float *wte,
                       const float *wpe, int N, int D);

/* Backward, accumulating: dwte[tokens[n]] += dout[n] and, when dwpe is not NULL,
 * dwpe[pos[n]] += dout[n]. Rows with a negative token id are skipped (both tables). Threads own
 * column ranges and add rows in order, so repeated ids sum deterministically. */
void embedding_backward(float *dwte, float *dwpe, const float *dout, const int *tokens,
                        const int *pos, int N, int D);

#endif
