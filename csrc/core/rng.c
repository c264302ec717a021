#include "rng.h"

uint32_t mg_rng_uniform_int(uint64_t seed, uint64_t stream, uint64_t index, uint32_t n) {
    const uint64_t bits = mg_rng_u64(seed, stream, index) >> 32;
    return (uint32_t)((bits * (uint64_t)n) >> 32);
}

void mg_rng_fill_uniform(float *out, long n, uint64_t seed, uint64_t stream, uint64_t first) {
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n; i++)
        out[i] = mg_rng_uniform(seed, stream, first + (uint64_t)i);
}
