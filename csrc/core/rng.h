/* Counter-based random numbers: every draw is a pure function of (seed, stream, index), so a
 * dropout mask or a masking decision can be regenerated instead of stored, and does not depend
 * on the thread count or on the order in which draws are made. The hash is splitmix64's
 * finaliser applied to a splitmix64 counter whose origin (seed, stream) selects. */
#ifndef MG_CORE_RNG_H
#define MG_CORE_RNG_H

#include <stdint.h>

#define MG_RNG_GAMMA 0x9E3779B97F4A7C15ULL

static inline uint64_t mg_rng_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* 64 random bits for draw `index` of stream `stream` under `seed`. */
static inline uint64_t mg_rng_u64(uint64_t seed, uint64_t stream, uint64_t index) {
    const uint64_t origin = mg_rng_mix64(seed ^ mg_rng_mix64(stream + MG_RNG_GAMMA));
    return mg_rng_mix64(origin + (index + 1) * MG_RNG_GAMMA);
}

/* The origin of stream (seed, stream): hoisting it out of a loop leaves one hash per draw. */
static inline uint64_t mg_rng_origin(uint64_t seed, uint64_t stream) {
    return mg_rng_mix64(seed ^ mg_rng_mix64(stream + MG_RNG_GAMMA));
}

/* mg_rng_uniform(seed, stream, index) given origin = mg_rng_origin(seed, stream). */
static inline float mg_rng_uniform_at(uint64_t origin, uint64_t index) {
    return (float)(mg_rng_mix64(origin + (index + 1) * MG_RNG_GAMMA) >> 40) * (1.0f / 16777216.0f);
}

/* Uniform float in [0, 1), 24 random bits (every value is exactly representable). */
static inline float mg_rng_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
    return (float)(mg_rng_u64(seed, stream, index) >> 40) * (1.0f / 16777216.0f);
}

/* Uniform integer in [0, n) for 0 < n < 2^32 (multiply-shift of 32 random bits; the bias is below
 * n / 2^32). Returns 0 for n == 0. */
uint32_t mg_rng_uniform_int(uint64_t seed, uint64_t stream, uint64_t index, uint32_t n);

/* out[i] = mg_rng_uniform(seed, stream, first + i) for i < n. */
void mg_rng_fill_uniform(float *out, long n, uint64_t seed, uint64_t stream, uint64_t first);

#endif
