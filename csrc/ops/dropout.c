#include "dropout.h"
#include "../core/parallel.h"

#include "../core/rng.h"

void dropout_forward(float *out, const float *inp, long n, float p, uint64_t seed,
                     uint64_t offset) {
    const float keep_scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n))
    for (long i = 0; i < n; i++)
        out[i] = mg_rng_uniform(seed, offset, (uint64_t)i) >= p ? inp[i] * keep_scale : 0.0f;
}

void dropout_backward(float *dinp, const float *dout, long n, float p, uint64_t seed,
                      uint64_t offset) {
    const float keep_scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
#pragma omp parallel for schedule(static) if (MG_WORTH_THREADS(n))
    for (long i = 0; i < n; i++)
        if (mg_rng_uniform(seed, offset, (uint64_t)i) >= p) dinp[i] += dout[i] * keep_scale;
}
