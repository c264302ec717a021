/* Helpers shared by the CUDA check programs that compare a backend entry with its CPU reference:
 * a CUDA backend, device buffers, a fixed-seed generator and the error measures. */
#ifndef MG_TESTS_CUDA_CHECK_COMMON_H
#define MG_TESTS_CUDA_CHECK_COMMON_H

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_common.h"

namespace check {

/* The precision of the backend that backend() returns (fp32 unless a check switches it between
 * cases, with no Dev buffer alive). */
inline mg_precision &precision() {
    static mg_precision p = MG_PRECISION_FP32;
    return p;
}

/* The CUDA backend on device 0 in precision(), created on first use. */
inline const mg_backend *backend() {
    static mg_backend *be[2] = {nullptr, nullptr};
    const int slot = precision() == MG_PRECISION_BF16 ? 1 : 0;
    if (be[slot] == nullptr) {
        mg_error err;
        mg_error_clear(&err);
        be[slot] = mg_backend_cuda_create(0, precision(), &err);
        if (be[slot] == nullptr) {
            std::printf("FAIL: no CUDA backend: %s\n", err.msg);
            std::exit(1);
        }
    }
    return be[slot];
}

/* Waits for the backend and exits on an asynchronous failure. */
inline void sync(const char *what) {
    mg_error err;
    mg_error_clear(&err);
    if (backend()->sync(backend(), &err) != MG_OK) {
        std::printf("FAIL %s: %s\n", what, err.msg);
        std::exit(1);
    }
}

/* A device copy of a host vector (NULL for an empty one), freed at scope exit. */
template <typename T> struct Dev {
    T *p = nullptr;
    size_t n = 0;
    Dev() = default;
    explicit Dev(const std::vector<T> &h) : n(h.size()) {
        if (n == 0) return;
        mg_error err;
        mg_error_clear(&err);
        p = static_cast<T *>(backend()->alloc(backend(), n * sizeof(T), "check buffer", &err));
        if (p == nullptr) {
            std::printf("FAIL: %s\n", err.msg);
            std::exit(1);
        }
        backend()->upload(backend(), p, h.data(), n * sizeof(T));
    }
    Dev(const Dev &) = delete;
    Dev &operator=(const Dev &) = delete;
    ~Dev() {
        if (p != nullptr) backend()->free(backend(), p);
    }
    std::vector<T> get() const {
        std::vector<T> h(n);
        if (n) backend()->download(backend(), h.data(), p, n * sizeof(T));
        return h;
    }
};

/* Fixed-seed uniform floats in [lo, hi) (xorshift64*). */
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 2654435761u + 1) {}
    uint64_t next() {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        return s * 2685821657736338717ull;
    }
    float uniform(float lo, float hi) {
        return lo + (hi - lo) * (float)((next() >> 40) * (1.0 / 16777216.0));
    }
    int below(int n) {
        return (int)((next() >> 33) % (uint64_t)n);
    }
    std::vector<float> vec(size_t n, float lo, float hi) {
        std::vector<float> v(n);
        for (auto &x : v)
            x = uniform(lo, hi);
        return v;
    }
};

inline double max_abs(const std::vector<float> &a) {
    double m = 0.0;
    for (float x : a)
        m = std::fmax(m, std::fabs((double)x));
    return m;
}

/* Largest |got - want| relative to the largest |want| (the tensor's scale): elements near zero
 * are judged against the tensor's magnitude, not their own. NaN anywhere gives infinity. */
inline double rel_err(const std::vector<float> &got, const std::vector<float> &want,
                      double scale = -1.0) {
    if (scale < 0.0) scale = max_abs(want);
    if (scale == 0.0) scale = 1.0;
    double m = 0.0;
    for (size_t i = 0; i < want.size(); i++) {
        const double d = std::fabs((double)got[i] - (double)want[i]);
        if (!(d == d)) return INFINITY;
        m = std::fmax(m, d / scale);
    }
    return m;
}

} // namespace check

#endif
