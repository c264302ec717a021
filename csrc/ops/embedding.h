/* Token (and learned position) embeddings. */
#ifndef MG_OPS_EMBEDDING_H
#define MG_OPS_EMBEDDING_H

/* out[n] = wte[tokens[n]] + (wpe ? wpe[pos[n]] : 0), rows of D floats. Ids are validated by the
 * caller. */
void embedding_forward(float *out, const int *tokens, const int *pos, const float *wte,
                       const float *wpe, int N, int D);

#endif
