/* What the two kernel sets of LoRA's dropped products share (dropped_matmul.cu, on the CUDA
 * cores, and dropped_matmul_tc.cuh, on the tensor cores): the products of one call as the kernels
 * receive them, and the dropout of one element under a product's mask. */
#ifndef MG_BACKEND_CUDA_DROPPED_GROUP_CUH
#define MG_BACKEND_CUDA_DROPPED_GROUP_CUH

#include <stdint.h>

#include "cuda_common.h"
#include "dropout_mask.cuh"

namespace mg_dropped {

/* The products of one call (at most MG_DROPPED_MAX), by value into the kernels. origin: each
 * product's dropout stream, mg_rng_origin(seed, stream). */
struct Group {
    const float *A[MG_DROPPED_MAX];
    float *u[MG_DROPPED_MAX];
    const float *du[MG_DROPPED_MAX];
    float *dA[MG_DROPPED_MAX];
    uint64_t origin[MG_DROPPED_MAX];
};

/* ptrs[tt] for a tt computed at run time, by selects: indexing the kernel's Group parameter with
 * a run-time index would copy it to local memory. */
template <class P> __device__ inline P pick(const P (&ptrs)[MG_DROPPED_MAX], int tt) {
    return tt == 0 ? ptrs[0] : tt == 1 ? ptrs[1] : ptrs[2];
}

/* drop(v) for element e of the call under one product's mask. */
__device__ inline float dropped(float v, uint64_t origin, long e, float p, float keep_scale) {
    return dropout_keep(origin, (uint64_t)e, p) ? v * keep_scale : 0.0f;
}

} // namespace mg_dropped

#endif
