#include "embedding.h"
#include "../core/parallel.h"

#include <string.h>

void embedding_forward(float *out, const int *tokens, const int *pos, const float *wte,
                       const float *wpe, int N, int D) {
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS((long)N * D))
    for (int n = 0; n < N; n++) {
        float *y = out + (long)n * D;
        memcpy(y, wte + (long)tokens[n] * D, sizeof(float) * D);
        if (wpe != NULL) {
            const float *p = wpe + (long)pos[n] * D;
            for (int i = 0; i < D; i++)
                y[i] += p[i];
        }
    }
}

/* Columns per work item of the backward. */
#define EMBEDDING_COLS 64

void embedding_backward(float *dwte, float *dwpe, const float *dout, const int *tokens,
                        const int *pos, int N, int D) {
    const int chunks = (D + EMBEDDING_COLS - 1) / EMBEDDING_COLS;
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS((long)N * D))
    for (int c = 0; c < chunks; c++) {
        const int i0 = c * EMBEDDING_COLS;
        const int ni = D - i0 < EMBEDDING_COLS ? D - i0 : EMBEDDING_COLS;
        for (int n = 0; n < N; n++) {
            if (tokens[n] < 0) continue;
            const float *g = dout + (long)n * D + i0;
            if (dwte != NULL) {
                float *w = dwte + (long)tokens[n] * D + i0;
                for (int i = 0; i < ni; i++)
                    w[i] += g[i];
            }
            if (dwpe != NULL) {
                float *p = dwpe + (long)pos[n] * D + i0;
                for (int i = 0; i < ni; i++)
                    p[i] += g[i];
            }
        }
    }
}
