#include "dropout.h"
#include "../core/parallel.h"

#include "../core/rng.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

/* The mask of eight consecutive elements at once, bit for bit the scalar mg_rng_uniform_at(...)
 * >= p: dropout's hash was 12% of a training step, one scalar splitmix64 per element. */

/* Low 64 bits of a * b in each 64-bit lane (AVX2 has no 64-bit multiply): three 32 x 32 -> 64
 * products, b_hi = b >> 32. */
static inline __m256i mul64_lo(__m256i a, __m256i b, __m256i b_hi) {
    const __m256i lo = _mm256_mul_epu32(a, b);
    const __m256i cross =
        _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), b), _mm256_mul_epu32(a, b_hi));
    return _mm256_add_epi64(lo, _mm256_slli_epi64(cross, 32));
}

/* mg_rng_mix64 in four lanes. */
static inline __m256i mix64_x4(__m256i z) {
    const __m256i c1 = _mm256_set1_epi64x((long long)0xBF58476D1CE4E5B9ULL);
    const __m256i c2 = _mm256_set1_epi64x((long long)0x94D049BB133111EBULL);
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 30));
    z = mul64_lo(z, c1, _mm256_srli_epi64(c1, 32));
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 27));
    z = mul64_lo(z, c2, _mm256_srli_epi64(c2, 32));
    return _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
}

/* Lanes all ones where element i + k (k < 8) is kept. u = bits / 2^24 >= p holds exactly when
 * the integer bits >= ceil(p 2^24) (p 2^24 is exact in float), so the test is integer. */
static inline __m256 keep_mask8(uint64_t origin, uint64_t i, __m256i min_bits) {
    const uint64_t g = MG_RNG_GAMMA;
    const uint64_t base = origin + (i + 1) * g;
    const __m256i lo4 = _mm256_set_epi64x((long long)(base + 3 * g), (long long)(base + 2 * g),
                                          (long long)(base + g), (long long)base);
    const __m256i hi4 = _mm256_add_epi64(lo4, _mm256_set1_epi64x((long long)(4 * g)));
    const __m256i b_lo = _mm256_srli_epi64(mix64_x4(lo4), 40); /* 24 bits per 64-bit lane */
    const __m256i b_hi = _mm256_srli_epi64(mix64_x4(hi4), 40);
    /* the low halves of the eight 64-bit lanes, in order, as 32-bit lanes */
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const __m256i bits = _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(b_lo, even),
                                                   _mm256_permutevar8x32_epi32(b_hi, even), 0x20);
    return _mm256_castsi256_ps(
        _mm256_cmpgt_epi32(bits, _mm256_sub_epi32(min_bits, _mm256_set1_epi32(1))));
}

/* ceil(p 2^24) as the threshold of keep_mask8, for 0 <= p < 1. */
static inline __m256i keep_threshold(float p) {
    const float scaled = p * 16777216.0f;
    int t = (int)scaled;
    if ((float)t < scaled) t++;
    return _mm256_set1_epi32(t);
}
#define MG_DROPOUT_SIMD 1
#endif

void dropout_forward(float *out, const float *inp, long n, float p, uint64_t seed,
                     uint64_t offset) {
    const float keep_scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    const uint64_t origin = mg_rng_origin(seed, offset);
    long head = 0; /* elements [0, head) done eight at a time */
#ifdef MG_DROPOUT_SIMD
    if (p >= 0.0f && p < 1.0f) {
        head = n / 8 * 8;
        const __m256i min_bits = keep_threshold(p);
        const __m256 scale = _mm256_set1_ps(keep_scale);
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n))
        for (long i = 0; i < head; i += 8) {
            const __m256 kept = _mm256_mul_ps(_mm256_loadu_ps(inp + i), scale);
            _mm256_storeu_ps(out + i,
                             _mm256_and_ps(keep_mask8(origin, (uint64_t)i, min_bits), kept));
        }
    }
#endif
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n - head))
    for (long i = head; i < n; i++)
        out[i] = mg_rng_uniform_at(origin, (uint64_t)i) >= p ? inp[i] * keep_scale : 0.0f;
}

void dropout_backward(float *dinp, const float *dout, long n, float p, uint64_t seed,
                      uint64_t offset) {
    const float keep_scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    const uint64_t origin = mg_rng_origin(seed, offset);
    long head = 0;
#ifdef MG_DROPOUT_SIMD
    if (p >= 0.0f && p < 1.0f) {
        head = n / 8 * 8;
        const __m256i min_bits = keep_threshold(p);
        const __m256 scale = _mm256_set1_ps(keep_scale);
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n))
        for (long i = 0; i < head; i += 8) {
            /* dinp += dout * scale where kept, one fused multiply-add as in the scalar loop */
            const __m256 acc = _mm256_loadu_ps(dinp + i);
            const __m256 sum = _mm256_fmadd_ps(_mm256_loadu_ps(dout + i), scale, acc);
            _mm256_storeu_ps(dinp + i,
                             _mm256_blendv_ps(acc, sum, keep_mask8(origin, (uint64_t)i, min_bits)));
        }
    }
#endif
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n - head))
    for (long i = head; i < n; i++)
        if (mg_rng_uniform_at(origin, (uint64_t)i) >= p) dinp[i] += dout[i] * keep_scale;
}
