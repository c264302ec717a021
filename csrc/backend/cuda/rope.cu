/* Rotary position embedding in Hugging Face's rotate_half layout (csrc/ops/rope.c): within a head
 * of hd floats, element k pairs with k + hd/2 and both turn by pos[n] * inv_freq[k].
 *
 * One block per row n: threadIdx.x walks the pair index k (coalesced over the head), threadIdx.y
 * the heads, so each thread computes one angle's cosine and sine and applies it to every head
 * it visits. The angle is the CPU's float product; its cosine and sine are evaluated in double
 * and rounded once, within half an ulp of the true value as glibc's cosf/sinf are (0.56 ulp),
 * and independent of -use_fast_math, whose cosf is poor at the large angles of long positions. */
#include "cuda_common.h"
#include "grid.cuh"

#define ROPE_THREADS 256

/* sign +1: forward (turn by +angle); -1: backward (the transpose, turn by -angle). */
__global__ void rope_kernel(float *x, const int *pos, const float *inv_freq, int N, int H, int hd,
                            float sign) {
    const int half = hd / 2;
    for (long n = blockIdx.x; n < N; n += gridDim.x) {
        for (int k = threadIdx.x; k < half; k += blockDim.x) {
            const float angle = (float)pos[n] * inv_freq[k];
            const float cs = (float)cos((double)angle);
            const float sn = sign * (float)sin((double)angle);
            for (int h = threadIdx.y; h < H; h += blockDim.y) {
                float *v = x + (n * H + h) * hd;
                const float a = v[k], b = v[k + half];
                v[k] = a * cs - b * sn;
                v[k + half] = b * cs + a * sn;
            }
        }
    }
}

static void rope_launch(const mg_backend *be, float *x, const int *pos, const float *inv_freq,
                        int N, int H, int hd, float sign) {
    if (N <= 0 || H <= 0 || hd < 2) return;
    const int tx = mg_cuda_row_threads(hd / 2, ROPE_THREADS);
    int ty = ROPE_THREADS / tx;
    if (ty > H) ty = H;
    MG_LAUNCH(rope_kernel, mg_cuda_row_blocks(N), dim3((unsigned)tx, (unsigned)ty), 0, be, x, pos,
              inv_freq, N, H, hd, sign);
}

extern "C" void cuda_rope_forward(const mg_backend *be, float *x, const int *pos,
                                  const float *inv_freq, int N, int H, int hd) {
    rope_launch(be, x, pos, inv_freq, N, H, hd, 1.0f);
}

/* The CPU's backward writes a cs + b sn and b cs - a sn: the forward with sn negated, exactly. */
extern "C" void cuda_rope_backward(const mg_backend *be, float *dx, const int *pos,
                                   const float *inv_freq, int N, int H, int hd) {
    rope_launch(be, dx, pos, inv_freq, N, H, hd, -1.0f);
}
