/* Warp and block sums shared by the kernels of this backend. The order of the additions depends
 * only on the block shape, never on timing, so a kernel that reduces with these gives the same
 * bits on every run of the same launch. */
#ifndef MG_BACKEND_CUDA_REDUCE_CUH
#define MG_BACKEND_CUDA_REDUCE_CUH

#include "cuda_common.h"

/* Sum over the 32 lanes of a warp (all lanes active); every lane gets the same value. */
template <typename T> __device__ T mg_warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

/* Sum over all threads of the block (their count a multiple of 32, at most 1024); every thread
 * gets the result. `scratch` holds 32 values; the leading barrier lets a loop call this again
 * while slower warps may still be reading the previous result. */
template <typename T> __device__ T mg_block_sum(T v, T *scratch) {
    const int tid = (int)(threadIdx.y * blockDim.x + threadIdx.x);
    const int lane = tid & 31, warp = tid >> 5;
    const int warps = (int)(blockDim.x * blockDim.y * blockDim.z) >> 5;
    v = mg_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : T(0);
    return mg_warp_sum(v);
}

#endif
