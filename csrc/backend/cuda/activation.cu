/* SwiGLU and tanh-GELU, forward and backward: the formulas of csrc/ops/activation.c, element for
 * element (the same exp approximation, so the GPU and the CPU round alike), with the same
 * semantics (forwards overwrite, backwards accumulate; NULL gradients are skipped). */
#include "cuda_common.h"
#include "elementwise.cuh"

#include "../../ops/fast_exp.h"

#define GELU_C 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

__device__ inline float swiglu_value(float g, float u) {
    return g / (1.0f + mg_expf(-g)) * u;
}

__device__ inline float gelu_value(float v) {
    /* 1 + tanh(z) = 2 - 2 / (e^{2z} + 1) */
    const float z = GELU_C * (v + GELU_A * v * v * v);
    return 0.5f * v * (2.0f - 2.0f / (mg_expf(2.0f * z) + 1.0f));
}

/* d gelu / dv; see csrc/ops/activation.c for the derivation. */
__device__ inline float gelu_slope(float v) {
    const float z = GELU_C * (v + GELU_A * v * v * v);
    const float t = 1.0f - 2.0f / (mg_expf(2.0f * z) + 1.0f);
    return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * v * v);
}

struct SwigluForward {
    float *out;
    const float *gate, *up;
    __device__ void at(long i) const {
        out[i] = swiglu_value(gate[i], up[i]);
    }
    __device__ void at4(long i) const {
        const mg_float4 g = mg_load4(gate + i), u = mg_load4(up + i);
        mg_store4(out + i, {swiglu_value(g.x, u.x), swiglu_value(g.y, u.y), swiglu_value(g.z, u.z),
                            swiglu_value(g.w, u.w)});
    }
};

struct SwigluBackward {
    float *dgate, *dup;
    const float *dout, *gate, *up;
    /* s = sigmoid(g): dup = dout g s, dgate = dout up s (1 + g (1 - s)); written, not added,
     * so the gradients need no memset and are not read */
    __device__ void at(long i) const {
        const float g = gate[i], d = dout[i];
        const float s = 1.0f / (1.0f + mg_expf(-g));
        if (dup != NULL) dup[i] = d * g * s;
        if (dgate != NULL) dgate[i] = d * up[i] * s * (1.0f + g * (1.0f - s));
    }
    __device__ void at4(long i) const {
        const mg_float4 g = mg_load4(gate + i), d = mg_load4(dout + i);
        const mg_float4 s = {1.0f / (1.0f + mg_expf(-g.x)), 1.0f / (1.0f + mg_expf(-g.y)),
                             1.0f / (1.0f + mg_expf(-g.z)), 1.0f / (1.0f + mg_expf(-g.w))};
        if (dup != NULL)
            mg_store4(dup + i,
                      {d.x * g.x * s.x, d.y * g.y * s.y, d.z * g.z * s.z, d.w * g.w * s.w});
        if (dgate != NULL) {
            const mg_float4 u = mg_load4(up + i);
            mg_store4(dgate + i, {d.x * u.x * s.x * (1.0f + g.x * (1.0f - s.x)),
                                  d.y * u.y * s.y * (1.0f + g.y * (1.0f - s.y)),
                                  d.z * u.z * s.z * (1.0f + g.z * (1.0f - s.z)),
                                  d.w * u.w * s.w * (1.0f + g.w * (1.0f - s.w))});
        }
    }
};

struct GeluForward {
    float *x;
    __device__ void at(long i) const {
        x[i] = gelu_value(x[i]);
    }
    __device__ void at4(long i) const {
        const mg_float4 v = mg_load4(x + i);
        mg_store4(x + i, {gelu_value(v.x), gelu_value(v.y), gelu_value(v.z), gelu_value(v.w)});
    }
};

struct GeluBackward {
    float *dx;
    const float *dout, *x;
    __device__ void at(long i) const {
        dx[i] = dout[i] * gelu_slope(x[i]);
    }
    __device__ void at4(long i) const {
        const mg_float4 v = mg_load4(x + i), d = mg_load4(dout + i);
        mg_store4(dx + i, {d.x * gelu_slope(v.x), d.y * gelu_slope(v.y), d.z * gelu_slope(v.z),
                           d.w * gelu_slope(v.w)});
    }
};

extern "C" void cuda_swiglu_forward(const mg_backend *be, float *out, const float *gate,
                                    const float *up, long n) {
    const SwigluForward op = {out, gate, up};
    const bool vec = mg_aligned16(out) && mg_aligned16(gate) && mg_aligned16(up);
    MG_ELEMENTWISE(SwigluForward, op, n, vec, be);
}

extern "C" void cuda_swiglu_backward(const mg_backend *be, float *dgate, float *dup,
                                     const float *dout, const float *gate, const float *up,
                                     long n) {
    if (dgate == NULL && dup == NULL) return;
    const SwigluBackward op = {dgate, dup, dout, gate, up};
    const bool vec = mg_aligned16(dgate) && mg_aligned16(dup) && mg_aligned16(dout) &&
                     mg_aligned16(gate) && mg_aligned16(up);
    MG_ELEMENTWISE(SwigluBackward, op, n, vec, be);
}

extern "C" void cuda_gelu_tanh_forward(const mg_backend *be, float *x, long n) {
    const GeluForward op = {x};
    MG_ELEMENTWISE(GeluForward, op, n, mg_aligned16(x), be);
}

extern "C" void cuda_gelu_tanh_backward(const mg_backend *be, float *dx, const float *dout,
                                        const float *x, long n) {
    const GeluBackward op = {dx, dout, x};
    const bool vec = mg_aligned16(dx) && mg_aligned16(dout) && mg_aligned16(x);
    MG_ELEMENTWISE(GeluBackward, op, n, vec, be);
}
