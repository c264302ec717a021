#include "embedding.h"

#include <string.h>

void embedding_forward(float *out, const int *tokens, const int *pos, const float *wte,
                       const float *wpe, int N, int D) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *y = out + (long)n * D;
        memcpy(y, wte + (long)tokens[n] * D, sizeof(float) * D);
        if (wpe != NULL) {
            const float *p = wpe + (long)pos[n] * D;
            for (int i = 0; i < D; i++) y[i] += p[i];
        }
    }
}
