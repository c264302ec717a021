/* A CPU emulator of the part of CUDA that the backend uses, so its .cu files compile with a host
 * C++ compiler (g++ -x c++ -std=c++17 -DMG_CUDA_EMULATE) and its kernels run, slowly but with
 * CUDA's semantics, on machines without a GPU. Only for tests: nothing here is fast.
 *
 * Execution model: mg_emu_launch runs the blocks of a grid one after another on the calling OS
 * thread; the threads of a block are coroutines (each on its own stack) that run until they
 * finish or reach a barrier (__syncthreads, __syncwarp, a shuffle or vote). When every running
 * thread waits, the scheduler releases the barriers whose participants have all arrived. So:
 * - __shared__ is `static`: one block runs at a time, so a function-local static is exactly the
 *   memory the block's threads share;
 * - threadIdx/blockIdx/blockDim/gridDim are globals the scheduler sets before resuming a thread;
 * - atomics are plain read-modify-writes: threads switch only at barriers, never inside one;
 * - a launch that deadlocks (threads of a block waiting at different barriers) fails with
 *   cudaErrorLaunchFailure instead of hanging.
 * Launches are serialised by a mutex (Python threads may launch concurrently); cudaGetLastError
 * is per host thread, as in CUDA. Device memory is host memory.
 *
 * Cost (one core of the development machine): ~0.1 us per emulated thread without barriers,
 * ~0.15 us more per barrier or shuffle it passes; keep test sizes to thousands of threads. */
#ifndef MG_BACKEND_CUDA_EMULATE_EMULATOR_H
#define MG_BACKEND_CUDA_EMULATE_EMULATOR_H

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

/* ---------------- qualifiers ---------------- */
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

/* ---------------- built-in types and variables ---------------- */
struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

/* ---------------- runtime types ---------------- */
typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorNoDevice = 100,
    cudaErrorLaunchFailure = 719,
} cudaError_t;

typedef enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
} cudaMemcpyKind;

typedef enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9,
} cudaFuncAttribute;

typedef enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrMaxSharedMemoryPerBlock = 8,
    cudaDevAttrWarpSize = 10,
    cudaDevAttrMultiProcessorCount = 16,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
    cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
} cudaDeviceAttr;

struct CUstream_st;
#define cudaStreamDefault 0x00
#define cudaStreamNonBlocking 0x01
typedef CUstream_st *cudaStream_t;

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    size_t sharedMemPerBlockOptin;
    int multiProcessorCount;
    int maxThreadsPerBlock;
    int warpSize;
    int major;
    int minor;
};

/* The emulated device's limits (those of an H100, so launch configurations are checked as on
 * the GPUs we target). */
#define MG_EMU_MAX_THREADS 1024
#define MG_EMU_SMEM_OPTIN (227u * 1024u)

/* ---------------- runtime API ---------------- */
const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t bytes);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream = nullptr);
cudaError_t cudaMemset(void *dst, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t stream = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t *stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);
template <typename T> cudaError_t cudaFuncSetAttribute(T *, cudaFuncAttribute, int value) {
    return (value >= 0 && (unsigned)value <= MG_EMU_SMEM_OPTIN) ? cudaSuccess
                                                                : cudaErrorInvalidValue;
}

/* ---------------- launches ---------------- */
void mg_emu_launch_erased(dim3 grid, dim3 block, size_t dynamic_smem, void (*fn)(void *),
                          void *arg);

/* Runs body() once per thread of every block of grid (see the execution model above); failures
 * (bad configuration, deadlock) are reported by cudaGetLastError. */
template <typename F> void mg_emu_launch(dim3 grid, dim3 block, size_t dynamic_smem, F body) {
    mg_emu_launch_erased(
        grid, block, dynamic_smem, [](void *f) { (*static_cast<F *>(f))(); }, &body);
}

/* The running launch's dynamic shared memory, filled with 0xFF bytes (NaN as floats) before
 * each block so that reads of never-written shared memory show up. */
void *mg_emu_dynamic_shared(void);

/* ---------------- barriers, shuffles, votes ---------------- */
void __syncthreads(void);
void __syncwarp(unsigned mask = 0xffffffffu);

/* The lane exchange behind shuffles and votes: publishes `bits` for this lane, waits for the
 * lanes of `mask`, and returns what lane `src` published. */
uint64_t mg_emu_warp_exchange(unsigned mask, uint64_t bits, int src);
/* Publishes bits, waits for the lanes of mask, returns the OR of (published != 0) << lane over
 * the lanes of mask (a ballot). */
unsigned mg_emu_warp_ballot(unsigned mask, int predicate);
unsigned mg_emu_lane(void);

template <typename T> inline T mg_emu_shfl(unsigned mask, T v, int src_lane) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                  "shuffled values are at most 8 bytes");
    uint64_t bits = 0, got;
    std::memcpy(&bits, &v, sizeof(T));
    got = mg_emu_warp_exchange(mask, bits, src_lane);
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}

/* Lane arithmetic as PTX's shfl.sync defines it: a width-`width` segment of the warp; sources
 * past the end of the segment (down, xor) or before its start (up) give the caller's value. */
template <typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = warpSize) {
    const int lane = (int)mg_emu_lane();
    const int base = lane & ~(width - 1);
    return mg_emu_shfl(mask, v, base + (src & (width - 1)));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    const int lane = (int)mg_emu_lane();
    const int last = (lane & ~(width - 1)) + width - 1;
    const int src = lane + (int)delta;
    return mg_emu_shfl(mask, v, src > last ? lane : src);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
    const int lane = (int)mg_emu_lane();
    const int first = lane & ~(width - 1);
    const int src = lane - (int)delta;
    return mg_emu_shfl(mask, v, src < first ? lane : src);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
    const int lane = (int)mg_emu_lane();
    const int last = (lane & ~(width - 1)) + width - 1;
    const int src = lane ^ lane_mask;
    return mg_emu_shfl(mask, v, src > last ? lane : src);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) {
    return mg_emu_warp_ballot(mask, predicate);
}
inline int __any_sync(unsigned mask, int predicate) {
    return mg_emu_warp_ballot(mask, predicate) != 0;
}
inline int __all_sync(unsigned mask, int predicate) {
    return mg_emu_warp_ballot(mask, !predicate) == 0;
}

/* ---------------- atomics (plain RMW: no thread switch can happen inside one) ---------------- */
template <typename T> inline T mg_emu_atomic_add(T *p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
inline float atomicAdd(float *p, float v) {
    return mg_emu_atomic_add(p, v);
}
inline double atomicAdd(double *p, double v) {
    return mg_emu_atomic_add(p, v);
}
inline int atomicAdd(int *p, int v) {
    return mg_emu_atomic_add(p, v);
}
inline unsigned atomicAdd(unsigned *p, unsigned v) {
    return mg_emu_atomic_add(p, v);
}
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
    return mg_emu_atomic_add(p, v);
}
inline int atomicMax(int *p, int v) {
    int old = *p;
    if (v > old) *p = v;
    return old;
}
inline unsigned atomicMax(unsigned *p, unsigned v) {
    unsigned old = *p;
    if (v > old) *p = v;
    return old;
}
inline int atomicMin(int *p, int v) {
    int old = *p;
    if (v < old) *p = v;
    return old;
}
template <typename T> inline T mg_emu_atomic_cas(T *p, T compare, T v) {
    T old = *p;
    if (old == compare) *p = v;
    return old;
}
inline int atomicCAS(int *p, int compare, int v) {
    return mg_emu_atomic_cas(p, compare, v);
}
inline unsigned atomicCAS(unsigned *p, unsigned compare, unsigned v) {
    return mg_emu_atomic_cas(p, compare, v);
}
inline unsigned long long atomicCAS(unsigned long long *p, unsigned long long compare,
                                    unsigned long long v) {
    return mg_emu_atomic_cas(p, compare, v);
}
template <typename T> inline T atomicExch(T *p, T v) {
    T old = *p;
    *p = v;
    return old;
}

/* ---------------- math intrinsics ---------------- */
inline float __expf(float x) {
    return std::exp(x);
}
inline float __logf(float x) {
    return std::log(x);
}
inline float __sinf(float x) {
    return std::sin(x);
}
inline float __cosf(float x) {
    return std::cos(x);
}
inline float __powf(float x, float y) {
    return std::pow(x, y);
}
inline float rsqrtf(float x) {
    return 1.0f / std::sqrt(x);
}
inline double rsqrt(double x) {
    return 1.0 / std::sqrt(x);
}
inline float __fdividef(float a, float b) {
    return a / b;
}
inline float __frcp_rn(float x) {
    return 1.0f / x;
}
inline float __fmaf_rn(float a, float b, float c) {
    return std::fma(a, b, c);
}
/* x rounded to TF32 (10 mantissa bits, nearest with ties away from zero), as wmma's
 * __float_to_tf32 and cuBLAS's CUBLAS_COMPUTE_32F_FAST_TF32 feed the tensor cores. */
inline float mg_emu_tf32(float x) {
    unsigned u;
    std::memcpy(&u, &x, sizeof u);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
    std::memcpy(&x, &u, sizeof x);
    return x;
}
/* a product rounded on its own: nvcc never fuses __fmul_rn into a multiply-add */
inline float __fmul_rn(float a, float b) {
    volatile float p = a * b;
    return p;
}
inline float __saturatef(float x) {
    return x > 0.0f ? (x < 1.0f ? x : 1.0f) : 0.0f;
}
inline int __float_as_int(float x) {
    int i;
    std::memcpy(&i, &x, sizeof i);
    return i;
}
inline float __int_as_float(int i) {
    float x;
    std::memcpy(&x, &i, sizeof x);
    return x;
}
inline unsigned __float_as_uint(float x) {
    unsigned i;
    std::memcpy(&i, &x, sizeof i);
    return i;
}
inline float __uint_as_float(unsigned i) {
    float x;
    std::memcpy(&x, &i, sizeof x);
    return x;
}
template <typename T> inline T __ldg(const T *p) {
    return *p;
}
/* CUDA's integer min/max overloads (device code may call them unqualified). */
inline int min(int a, int b) {
    return a < b ? a : b;
}
inline int max(int a, int b) {
    return a > b ? a : b;
}
inline unsigned min(unsigned a, unsigned b) {
    return a < b ? a : b;
}
inline unsigned max(unsigned a, unsigned b) {
    return a > b ? a : b;
}
inline long min(long a, long b) {
    return a < b ? a : b;
}
inline long max(long a, long b) {
    return a > b ? a : b;
}
inline long long min(long long a, long long b) {
    return a < b ? a : b;
}
inline long long max(long long a, long long b) {
    return a > b ? a : b;
}
inline float min(float a, float b) {
    return std::fmin(a, b);
}
inline float max(float a, float b) {
    return std::fmax(a, b);
}

/* ---------------- bfloat16 (bit-exact with cuda_bf16.h) ---------------- */
/* As in cuda_bf16.h, the bits are reachable only through __nv_bfloat16_raw, so code that builds
 * here builds under nvcc too. */
struct __nv_bfloat16_raw {
    unsigned short x;
};

class __nv_bfloat16 {
  protected:
    unsigned short __x;

  public:
    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(const __nv_bfloat16_raw &r) : __x(r.x) {}
    constexpr operator __nv_bfloat16_raw() const {
        return __nv_bfloat16_raw{__x};
    }
};
typedef __nv_bfloat16 nv_bfloat16;

/* Round to nearest even; any NaN becomes the canonical 0x7fff, as CUDA's conversion does. */
inline __nv_bfloat16 __float2bfloat16(float f) {
    unsigned x;
    std::memcpy(&x, &f, sizeof x);
    __nv_bfloat16_raw r;
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        r.x = 0x7fffu;
        return r;
    }
    const unsigned remainder = x << 16;
    r.x = (unsigned short)(x >> 16);
    if (remainder > 0x80000000u || (remainder == 0x80000000u && (r.x & 1u))) r.x++;
    return r;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    return __float2bfloat16(f);
}
inline float __bfloat162float(__nv_bfloat16 b) {
    const unsigned x = (unsigned)static_cast<__nv_bfloat16_raw>(b).x << 16;
    float f;
    std::memcpy(&f, &x, sizeof f);
    return f;
}

#endif
