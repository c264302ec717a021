/* Elementwise kernels: one grid-stride kernel per op, whose struct says what one element (at)
 * and one aligned group of four (at4) do. The groups use 16-byte loads and stores, so a warp
 * moves 512 contiguous bytes per instruction; they run only when every pointer of the call is
 * 16-byte aligned (checked on the host), else the scalar path runs. */
#ifndef MG_BACKEND_CUDA_ELEMENTWISE_CUH
#define MG_BACKEND_CUDA_ELEMENTWISE_CUH

#include <stdint.h>
#include <string.h>

#include "cuda_common.h"
#include "grid.cuh"

struct alignas(16) mg_float4 {
    float x, y, z, w;
};

#ifdef MG_CUDA_EMULATE
/* memcpy keeps the host compiler's aliasing rules intact; the bits are the same. */
static inline mg_float4 mg_load4(const float *p) {
    mg_float4 v;
    memcpy(&v, p, sizeof(v));
    return v;
}
static inline void mg_store4(float *p, mg_float4 v) {
    memcpy(p, &v, sizeof(v));
}
#else
__device__ inline mg_float4 mg_load4(const float *p) {
    return *reinterpret_cast<const mg_float4 *>(p);
}
__device__ inline void mg_store4(float *p, mg_float4 v) {
    *reinterpret_cast<mg_float4 *>(p) = v;
}
#endif

/* Whether p may be read and written four floats at a time (NULL counts as aligned). */
static inline bool mg_aligned16(const void *p) {
    return ((uintptr_t)p & 15u) == 0;
}

/* Runs op.at4(j) for every group j of four elements (elements 4j .. 4j+3) and op.at(i) for the
 * tail when `vec`, else op.at(i) for every element: one kernel per elementwise op. */
template <class Op> __global__ void mg_elementwise_kernel(Op op, long n, int vec) {
    long first = 0;
    if (vec) {
        const long groups = n >> 2;
        for (long j = MG_GRID_INDEX; j < groups; j += MG_GRID_STRIDE)
            op.at4(j << 2);
        first = groups << 2;
    }
    for (long i = first + MG_GRID_INDEX; i < n; i += MG_GRID_STRIDE)
        op.at(i);
}

/* Threads per block of the elementwise kernels. */
#define MG_ELEMENTWISE_THREADS 256

/* Launches mg_elementwise_kernel<Op> over n elements; vec when every pointer is aligned. */
#define MG_ELEMENTWISE(OpType, op, n, vec, be)                                                     \
    do {                                                                                           \
        const long mg_n_ = (n);                                                                    \
        if (mg_n_ <= 0) break;                                                                     \
        const long mg_items_ = (vec) ? (mg_n_ + 3) / 4 : mg_n_;                                    \
        MG_LAUNCH(mg_elementwise_kernel<OpType>,                                                   \
                  mg_cuda_blocks(mg_items_, MG_ELEMENTWISE_THREADS), MG_ELEMENTWISE_THREADS, 0,    \
                  (be), (op), mg_n_, (vec) ? 1 : 0);                                               \
    } while (0)

#endif
