/* One warp's 16 x 8 x 8 matrix product on the tensor cores in TF32 (mma.sync.m16n8k8, float32
 * accumulation), for kernels whose operands live in registers straight from global memory: the
 * fragments of m16n8k8 are single float32 words, so a lane can load its share with ordinary
 * (vector) loads and no shared-memory staging.
 *
 * In the CPU emulator (and in a build for a target below sm_80, which the default targets never
 * make) the lanes compute the product with shuffles, to the same fragment layout, on the same
 * TF32-rounded operands: the same results up to the order and rounding of the float32 sums. */
#ifndef MG_BACKEND_CUDA_MMA_TF32_CUH
#define MG_BACKEND_CUDA_MMA_TF32_CUH

#include <stdint.h>

#include "cuda_common.h"

#if defined(__CUDACC__) && !defined(MG_CUDA_EMULATE) && defined(__CUDA_ARCH__) &&                  \
    __CUDA_ARCH__ >= 800
#define MG_TF32_PTX 1
#endif

/* x rounded to TF32 (10 mantissa bits; to nearest, ties away from zero, as cvt.rna), as the bits
 * of a float32 whose low 13 bits are zero. Infinities and NaNs pass unchanged. */
__device__ inline uint32_t mg_tf32(float x) {
#ifdef MG_TF32_PTX
    uint32_t r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
#else
    uint32_t b = __float_as_uint(x);
    /* adding half a unit of the 10-bit mantissa to the magnitude bits rounds half away from 0 */
    if ((b & 0x7f800000u) != 0x7f800000u) b = (b + 0x1000u) & 0xffffe000u;
    return b;
#endif
}

/* c += A B for one warp, g = lane / 4, t = lane % 4:
 *   A 16 x 8:  a[0] = A[g][t], a[1] = A[g + 8][t], a[2] = A[g][t + 4], a[3] = A[g + 8][t + 4];
 *   B 8 x 8:   b0 = B[t][g], b1 = B[t + 4][g];
 *   C 16 x 8:  c[0] = C[g][2t], c[1] = C[g][2t + 1], c[2] = C[g + 8][2t], c[3] = C[g + 8][2t + 1].
 * Operands are TF32 bit patterns (mg_tf32). Every lane of the warp must call it (sync.aligned).
 * Because each lane supplies A's and B's k = t and t + 4 itself, a kernel may let "k" stand for
 * any columns of its choosing, as long as A and B use the same ones (see dropped_matmul_tc.cuh). */
__device__ inline void mg_mma_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                   uint32_t b1) {
#ifdef MG_TF32_PTX
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, "
                 "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    /* A[row][k] lives in lane 4 row + k % 4 (a[0] / a[1] for k < 4, a[2] / a[3] above); B[k][n]
     * in lane 4 n + k % 4 (b0 for k < 4, b1 above). */
    const unsigned full = 0xffffffffu;
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    for (int k = 0; k < 8; k++) {
        const int src = k % 4;
        const float top = __uint_as_float(__shfl_sync(full, k < 4 ? a[0] : a[2], 4 * g + src));
        const float bottom = __uint_as_float(__shfl_sync(full, k < 4 ? a[1] : a[3], 4 * g + src));
        const float left = __uint_as_float(__shfl_sync(full, k < 4 ? b0 : b1, 8 * t + src));
        const float right = __uint_as_float(__shfl_sync(full, k < 4 ? b0 : b1, 8 * t + 4 + src));
        c[0] += top * left;
        c[1] += top * right;
        c[2] += bottom * left;
        c[3] += bottom * right;
    }
#endif
}

#endif
