/* Token and learned position embeddings (csrc/ops/embedding.c).
 *
 * The backward adds row n of dout to dwte[tokens[n]] (and dwpe[pos[n]]); ids repeat, so rows
 * collide, and parameter gradients must not depend on timing (no float atomics). The CPU adds
 * the colliding rows in row order; so does the GPU, which makes it bit-identical to the CPU:
 *   1. a link pass gives every row n its successor next[n], the next row with the same id (-1
 *      if none), and marks the leader of each id (the row with no earlier row of that id);
 *   2. a chain pass gives each leader one block that walks its chain in row order, adding the
 *      rows to the table row it loads once (columns across the threads).
 * The link pass compares every pair of rows, O(N^2) integer comparisons out of shared memory,
 * which is cheap for the few thousand rows of a batch (N = 8192: tens of microseconds) and needs
 * only 3 N ints of workspace. Without that workspace a slower pass of the CPU's own shape runs:
 * one thread per column adding all rows in order. */
#include "cuda_common.h"
#include "grid.cuh"

#define EMBEDDING_ROW_THREADS 256
#define EMBEDDING_LINK_THREADS 128

__global__ void embedding_forward_kernel(float *out, const int *tokens, const int *pos,
                                         const float *wte, const float *wpe, int N, int D) {
    for (long n = blockIdx.x; n < N; n += gridDim.x) {
        const float *t = wte + (long)tokens[n] * D;
        const float *p = wpe != NULL ? wpe + (long)pos[n] * D : NULL;
        float *y = out + n * D;
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            y[i] = p != NULL ? t[i] + p[i] : t[i];
    }
}

/* Leader bits of embedding_link_kernel's lead[n]. */
#define LEAD_TOKEN 1
#define LEAD_POSITION 2

/* Pass 1: for each row n with tokens[n] >= 0, next_tok[n] = the smallest m > n with the same
 * token (else -1) and the same for positions when with_pos; lead[n] says whether n is the first
 * row of its token (LEAD_TOKEN) and of its position (LEAD_POSITION). Rows with a negative token
 * take part in neither chain, as on the CPU. Each thread owns a row; the block streams all rows
 * through shared memory in tiles, so every comparison reads a broadcast word. */
__global__ void embedding_link_kernel(int *next_tok, int *next_pos, int *lead, const int *tokens,
                                      const int *pos, int N, int with_pos) {
    __shared__ int tile_tok[EMBEDDING_LINK_THREADS], tile_pos[EMBEDDING_LINK_THREADS];
    const int tid = threadIdx.x;
    /* the trip count is the same for every thread of a block (barriers inside) */
    for (long base = (long)blockIdx.x * blockDim.x; base < N; base += MG_GRID_STRIDE) {
        const long n = base + tid;
        const bool valid = n < N && tokens[n] >= 0;
        const int my_tok = valid ? tokens[n] : -1;
        const int my_pos = valid && with_pos ? pos[n] : -1;
        long nt = -1, np = -1;
        bool prev_tok = false, prev_pos = false;
        for (long m0 = 0; m0 < N; m0 += blockDim.x) {
            __syncthreads(); /* the previous tile is read by every thread */
            const long m = m0 + tid;
            const bool m_valid = m < N && tokens[m] >= 0;
            tile_tok[tid] = m_valid ? tokens[m] : -1;
            tile_pos[tid] = m_valid && with_pos ? pos[m] : -1;
            __syncthreads();
            if (!valid) continue;
            const int count = N - m0 < (long)blockDim.x ? (int)(N - m0) : (int)blockDim.x;
            for (int j = 0; j < count; j++) {
                const long mm = m0 + j;
                if (tile_tok[j] == my_tok) {
                    if (mm < n)
                        prev_tok = true;
                    else if (mm > n && nt < 0)
                        nt = mm;
                }
                if (with_pos && tile_pos[j] == my_pos) {
                    if (mm < n)
                        prev_pos = true;
                    else if (mm > n && np < 0)
                        np = mm;
                }
            }
        }
        if (n < N) {
            next_tok[n] = (int)nt;
            next_pos[n] = (int)np;
            lead[n] =
                valid ? (prev_tok ? 0 : LEAD_TOKEN) | (with_pos && !prev_pos ? LEAD_POSITION : 0)
                      : 0;
        }
    }
}

/* table[key] += the dout rows of key's chain, in row order, starting from its leader n. */
__device__ void embedding_add_chain(float *table, const float *dout, const int *next, long n,
                                    int key, int D) {
    float *w = table + (long)key * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float acc = w[i];
        for (long m = n; m >= 0; m = next[m])
            acc += dout[m * D + i];
        w[i] = acc;
    }
}

/* Pass 2: one block per leader row (grid-stride over rows). */
__global__ void embedding_chain_kernel(float *dwte, float *dwpe, const float *dout,
                                       const int *tokens, const int *pos, const int *next_tok,
                                       const int *next_pos, const int *lead, int N, int D) {
    for (long n = blockIdx.x; n < N; n += gridDim.x) {
        const int l = lead[n];
        if (dwte != NULL && (l & LEAD_TOKEN))
            embedding_add_chain(dwte, dout, next_tok, n, tokens[n], D);
        if (dwpe != NULL && (l & LEAD_POSITION))
            embedding_add_chain(dwpe, dout, next_pos, n, pos[n], D);
    }
}

/* The workspace-free backward: each thread owns a column and adds every row in order. */
__global__ void embedding_backward_columns_kernel(float *dwte, float *dwpe, const float *dout,
                                                  const int *tokens, const int *pos, int N, int D) {
    for (long i = MG_GRID_INDEX; i < D; i += MG_GRID_STRIDE) {
        for (long n = 0; n < N; n++) {
            if (tokens[n] < 0) continue;
            const float g = dout[n * D + i];
            if (dwte != NULL) dwte[(long)tokens[n] * D + i] += g;
            if (dwpe != NULL) dwpe[(long)pos[n] * D + i] += g;
        }
    }
}

extern "C" void cuda_embedding_forward(const mg_backend *be, float *out, const int *tokens,
                                       const int *pos, const float *wte, const float *wpe, int N,
                                       int D) {
    if (N <= 0 || D <= 0) return;
    MG_LAUNCH(embedding_forward_kernel, mg_cuda_row_blocks(N),
              mg_cuda_row_threads(D, EMBEDDING_ROW_THREADS), 0, be, out, tokens, pos, wte, wpe, N,
              D);
}

extern "C" void cuda_embedding_backward(const mg_backend *be, float *dwte, float *dwpe,
                                        const float *dout, const int *tokens, const int *pos, int N,
                                        int D) {
    if (N <= 0 || D <= 0 || (dwte == NULL && dwpe == NULL)) return;
    mg_cuda_ctx *ctx = mg_cuda_ctx_of(be);
    const size_t need = 3 * sizeof(int) * (size_t)N;
    if (ctx->workspace == NULL || ctx->workspace_bytes < need) {
        MG_LAUNCH(embedding_backward_columns_kernel, mg_cuda_blocks(D, 128), 128, 0, be, dwte, dwpe,
                  dout, tokens, pos, N, D);
        return;
    }
    int *next_tok = (int *)ctx->workspace, *next_pos = next_tok + N, *lead = next_pos + N;
    MG_LAUNCH(embedding_link_kernel, mg_cuda_blocks(N, EMBEDDING_LINK_THREADS),
              EMBEDDING_LINK_THREADS, 0, be, next_tok, next_pos, lead, tokens, pos, N,
              dwpe != NULL ? 1 : 0);
    MG_LAUNCH(embedding_chain_kernel, mg_cuda_row_blocks(N),
              mg_cuda_row_threads(D, EMBEDDING_ROW_THREADS), 0, be, dwte, dwpe, dout, tokens, pos,
              next_tok, next_pos, lead, N, D);
}
