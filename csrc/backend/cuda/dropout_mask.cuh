/* The dropout mask of csrc/ops/dropout.c in device code: element i of a call is kept iff
 * mg_rng_uniform(seed, stream, i) >= p, the counter-based hash of csrc/core/rng.h, so a mask
 * drawn on the GPU is the CPU's mask bit for bit, and a backward regenerates it from
 * (seed, stream) instead of storing it. Shared by dropout.cu and dropped_matmul.cu. */
#ifndef MG_BACKEND_CUDA_DROPOUT_MASK_CUH
#define MG_BACKEND_CUDA_DROPOUT_MASK_CUH

#include <stdint.h>

#include "cuda_common.h"

#include "../../core/rng.h"

/* mg_rng_mix64 for device code (the same constants and shifts). */
__device__ inline uint64_t dropout_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* mg_rng_uniform_at(origin, i) >= p: 24 random bits as a float in [0, 1), exactly
 * representable, against p. origin = mg_rng_origin(seed, stream), computed on the host. */
__device__ inline bool dropout_keep(uint64_t origin, uint64_t i, float p) {
    const float u =
        (float)(dropout_mix64(origin + (i + 1) * MG_RNG_GAMMA) >> 40) * (1.0f / 16777216.0f);
    return u >= p;
}

/* 1 / (1 - p), the inverted-dropout scale of a kept element, as the CPU computes it. */
static inline float dropout_keep_scale(float p) {
    return p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
}

#endif
