/* Inverted dropout with the mask of csrc/ops/dropout.c: element i is kept iff
 * mg_rng_uniform(seed, stream, i) >= p, the counter-based hash of csrc/core/rng.h evaluated here
 * in device code, so a mask drawn on the GPU is the CPU's mask bit for bit (and the backward
 * regenerates it from (seed, stream) instead of storing it). */
#include "cuda_common.h"
#include "dropout_mask.cuh"
#include "elementwise.cuh"

struct DropoutForward {
    float *out;
    const float *inp;
    uint64_t origin;
    float p, keep_scale;
    __device__ float value(long i, float x) const {
        return dropout_keep(origin, (uint64_t)i, p) ? x * keep_scale : 0.0f;
    }
    __device__ void at(long i) const {
        out[i] = value(i, inp[i]);
    }
    __device__ void at4(long i) const {
        const mg_float4 x = mg_load4(inp + i);
        mg_store4(out + i,
                  {value(i, x.x), value(i + 1, x.y), value(i + 2, x.z), value(i + 3, x.w)});
    }
};

struct DropoutBackward {
    float *dinp;
    const float *dout;
    uint64_t origin;
    float p, keep_scale;
    __device__ void at(long i) const {
        if (dropout_keep(origin, (uint64_t)i, p)) dinp[i] += dout[i] * keep_scale;
    }
    __device__ void at4(long i) const {
        const mg_float4 d = mg_load4(dout + i);
        mg_float4 a = mg_load4(dinp + i);
        if (dropout_keep(origin, (uint64_t)i, p)) a.x += d.x * keep_scale;
        if (dropout_keep(origin, (uint64_t)i + 1, p)) a.y += d.y * keep_scale;
        if (dropout_keep(origin, (uint64_t)i + 2, p)) a.z += d.z * keep_scale;
        if (dropout_keep(origin, (uint64_t)i + 3, p)) a.w += d.w * keep_scale;
        mg_store4(dinp + i, a);
    }
};

extern "C" void cuda_dropout_forward(const mg_backend *be, float *out, const float *inp, long n,
                                     float p, uint64_t seed, uint64_t stream) {
    /* the scale and the stream origin are computed on the host, as the CPU computes them */
    const float keep_scale = dropout_keep_scale(p);
    const DropoutForward op = {out, inp, mg_rng_origin(seed, stream), p, keep_scale};
    MG_ELEMENTWISE(DropoutForward, op, n, mg_aligned16(out) && mg_aligned16(inp), be);
}

extern "C" void cuda_dropout_backward(const mg_backend *be, float *dinp, const float *dout, long n,
                                      float p, uint64_t seed, uint64_t stream) {
    const float keep_scale = dropout_keep_scale(p);
    const DropoutBackward op = {dinp, dout, mg_rng_origin(seed, stream), p, keep_scale};
    MG_ELEMENTWISE(DropoutBackward, op, n, mg_aligned16(dinp) && mg_aligned16(dout), be);
}
