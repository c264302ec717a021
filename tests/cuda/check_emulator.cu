/* Self-test of the CUDA emulator (csrc/backend/cuda/emulate): block barriers with static shared
 * memory, warp shuffles of every kind (with widths), votes, dynamic shared memory, atomics and
 * bfloat16 rounding. Built for the GPU too (tests/cuda/build_checks.sh cuda), where the same
 * expectations check that the emulator agrees with the hardware. Exit status 0 on success. */
#include "backend/cuda/cuda_common.h"

#include <cstdio>
#include <cstdlib>
#include <vector>

#ifdef MG_CUDA_EMULATE
#define CHECK_LAUNCH(kernel, grid, block, smem, ...)                                               \
    mg_emu_launch(dim3(grid), dim3(block), (size_t)(smem), [&]() { kernel(__VA_ARGS__); })
#else
#define CHECK_LAUNCH(kernel, grid, block, smem, ...)                                               \
    kernel<<<(grid), (block), (smem)>>>(__VA_ARGS__)
#endif

static int failures = 0;

#define EXPECT(cond, ...)                                                                          \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            std::printf("FAIL %s:%d: ", __FILE__, __LINE__);                                       \
            std::printf(__VA_ARGS__);                                                              \
            std::printf("\n");                                                                     \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

static void check_cuda(cudaError_t e, const char *what) {
    if (e != cudaSuccess) {
        std::printf("FAIL %s: %s\n", what, cudaGetErrorString(e));
        std::exit(1);
    }
}

template <typename T> static T *device_copy(const std::vector<T> &h) {
    void *p = nullptr;
    check_cuda(cudaMalloc(&p, h.size() * sizeof(T) + 1), "cudaMalloc");
    check_cuda(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
    return static_cast<T *>(p);
}

template <typename T> static std::vector<T> host_copy(const T *d, size_t n) {
    std::vector<T> h(n);
    check_cuda(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return h;
}

/* Tree reduction in static shared memory: one sum per block. */
__global__ void block_sum(float *out, const float *x, int n) {
    __shared__ float buf[256];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) buf[threadIdx.x] += buf[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = buf[0];
}

/* Warp reduction with xor shuffles, warp sums combined through shared memory, in a 2-D block. */
__global__ void warp_sum(double *out, const double *x) {
    __shared__ double partial[32];
    const int t = threadIdx.y * blockDim.x + threadIdx.x;
    double v = x[t];
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((t & 31) == 0) partial[t >> 5] = v;
    __syncthreads();
    if (t < 32) {
        const int nwarps = (int)(blockDim.x * blockDim.y) / 32;
        double w = t < nwarps ? partial[t] : 0.0;
        for (int o = 16; o > 0; o >>= 1)
            w += __shfl_down_sync(0xffffffffu, w, o);
        if (t == 0) *out = w;
    }
}

/* Every shuffle flavour, with and without a width, on int lanes. */
__global__ void shuffles(int *down, int *up, int *xor8, int *idx, int *bcast, unsigned *ballot) {
    const int lane = threadIdx.x & 31;
    const int v = 100 + (int)threadIdx.x;
    down[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 3, 8);
    up[threadIdx.x] = __shfl_up_sync(0xffffffffu, v, 2);
    xor8[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 8, 16);
    idx[threadIdx.x] = __shfl_sync(0xffffffffu, v, lane + 5, 16);
    bcast[threadIdx.x] = __shfl_sync(0xffffffffu, v, 7);
    const unsigned b = __ballot_sync(0xffffffffu, lane % 3 == 0);
    if (lane == 0) ballot[threadIdx.x / 32] = b;
}

/* Dynamic shared memory: each block reverses its slice of x. */
__global__ void reverse_blocks(float *out, const float *x) {
    MG_DYNAMIC_SHARED(float, tile);
    const int base = blockIdx.x * blockDim.x;
    tile[threadIdx.x] = x[base + threadIdx.x];
    __syncthreads();
    out[base + threadIdx.x] = tile[blockDim.x - 1 - threadIdx.x];
}

__global__ void atomics(float *fsum, double *dsum, int *isum, unsigned *usum,
                        unsigned long long *llsum, int *imax, int *cas_count) {
    const int g = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(fsum, 0.5f);
    atomicAdd(dsum, 0.25);
    atomicAdd(isum, g);
    atomicAdd(usum, 2u);
    atomicAdd(llsum, 1ull << 33);
    atomicMax(imax, (g * 37) % 1001);
    /* a spin-free CAS increment: retry until our compare matched */
    int old = *cas_count, assumed;
    do {
        assumed = old;
        old = atomicCAS(cas_count, assumed, assumed + 1);
    } while (old != assumed);
}

#ifdef MG_CUDA_EMULATE
/* Lanes 0-15 of warp 0 wait at __syncthreads, lanes 16-31 at a full-warp shuffle that needs
 * lanes 0-15: a deadlock that the emulator must report rather than hang on. */
__global__ void deadlock(int *x) {
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        x[0] = __shfl_sync(0xffffffffu, 1, 0);
    }
}
#endif

__global__ void to_bf16(__nv_bfloat16 *out, const float *x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(x[i]);
}

int main() {
    /* block reduction */
    {
        const int n = 1000, threads = 256, blocks = (n + threads - 1) / threads;
        std::vector<float> x(n);
        for (int i = 0; i < n; i++)
            x[i] = (float)(i % 17) - 8.0f;
        float *dx = device_copy(x), *dout = device_copy(std::vector<float>(blocks));
        CHECK_LAUNCH(block_sum, blocks, threads, 0, dout, dx, n);
        check_cuda(cudaGetLastError(), "block_sum");
        std::vector<float> got = host_copy(dout, blocks);
        for (int b = 0; b < blocks; b++) {
            float want = 0.0f;
            for (int i = b * threads; i < n && i < (b + 1) * threads; i++)
                want += x[i];
            EXPECT(got[b] == want, "block_sum[%d] = %g, want %g", b, got[b], want);
        }
        cudaFree(dx);
        cudaFree(dout);
    }
    /* warp shuffle reduction in a 2-D block of 64 x 4 */
    {
        std::vector<double> x(256);
        double want = 0.0;
        for (int i = 0; i < 256; i++)
            want += (x[i] = 0.001 * i * i);
        double *dx = device_copy(x), *dout = device_copy(std::vector<double>(1));
        CHECK_LAUNCH(warp_sum, 1, dim3(64, 4), 0, dout, dx);
        check_cuda(cudaGetLastError(), "warp_sum");
        const double got = host_copy(dout, 1)[0];
        EXPECT(std::fabs(got - want) < 1e-9 * want, "warp_sum = %.17g, want %.17g", got, want);
        cudaFree(dx);
        cudaFree(dout);
    }
    /* shuffle semantics */
    {
        const int n = 64;
        std::vector<int> zeros(n);
        int *down = device_copy(zeros), *up = device_copy(zeros), *xr = device_copy(zeros);
        int *idx = device_copy(zeros), *bc = device_copy(zeros);
        unsigned *ballot = device_copy(std::vector<unsigned>(2));
        CHECK_LAUNCH(shuffles, 1, n, 0, down, up, xr, idx, bc, ballot);
        check_cuda(cudaGetLastError(), "shuffles");
        std::vector<int> hd = host_copy(down, n), hu = host_copy(up, n), hx = host_copy(xr, n);
        std::vector<int> hi = host_copy(idx, n), hb = host_copy(bc, n);
        std::vector<unsigned> hbal = host_copy(ballot, 2);
        for (int t = 0; t < n; t++) {
            const int lane = t & 31, warp0 = t - lane, v = 100 + t;
            const int wd = (lane % 8) + 3 < 8 ? v + 3 : v;
            const int wu = lane >= 2 ? v - 2 : v;
            const int seg16 = lane & ~15;
            const int wx = (lane ^ 8) <= seg16 + 15 ? 100 + warp0 + (lane ^ 8) : v;
            const int wi = 100 + warp0 + seg16 + ((lane + 5) & 15);
            const int wb = 100 + warp0 + 7;
            EXPECT(hd[t] == wd, "shfl_down[%d] = %d, want %d", t, hd[t], wd);
            EXPECT(hu[t] == wu, "shfl_up[%d] = %d, want %d", t, hu[t], wu);
            EXPECT(hx[t] == wx, "shfl_xor[%d] = %d, want %d", t, hx[t], wx);
            EXPECT(hi[t] == wi, "shfl_idx[%d] = %d, want %d", t, hi[t], wi);
            EXPECT(hb[t] == wb, "shfl_bcast[%d] = %d, want %d", t, hb[t], wb);
        }
        unsigned want_ballot = 0;
        for (int l = 0; l < 32; l++)
            if (l % 3 == 0) want_ballot |= 1u << l;
        EXPECT(hbal[0] == want_ballot && hbal[1] == want_ballot, "ballot = %08x %08x, want %08x",
               hbal[0], hbal[1], want_ballot);
        cudaFree(down);
        cudaFree(up);
        cudaFree(xr);
        cudaFree(idx);
        cudaFree(bc);
        cudaFree(ballot);
    }
    /* dynamic shared memory */
    {
        const int threads = 96, blocks = 3, n = threads * blocks;
        std::vector<float> x(n);
        for (int i = 0; i < n; i++)
            x[i] = (float)i;
        float *dx = device_copy(x), *dout = device_copy(std::vector<float>(n));
        CHECK_LAUNCH(reverse_blocks, blocks, threads, threads * sizeof(float), dout, dx);
        check_cuda(cudaGetLastError(), "reverse_blocks");
        std::vector<float> got = host_copy(dout, n);
        for (int i = 0; i < n; i++) {
            const int b = i / threads, t = i % threads;
            const float want = (float)(b * threads + threads - 1 - t);
            EXPECT(got[i] == want, "reverse[%d] = %g, want %g", i, got[i], want);
        }
        cudaFree(dx);
        cudaFree(dout);
    }
    /* atomics */
    {
        const int blocks = 5, threads = 128, n = blocks * threads;
        float *fs = device_copy(std::vector<float>(1));
        double *ds = device_copy(std::vector<double>(1));
        int *is = device_copy(std::vector<int>(1)), *im = device_copy(std::vector<int>(1, -5));
        int *cas = device_copy(std::vector<int>(1));
        unsigned *us = device_copy(std::vector<unsigned>(1));
        unsigned long long *ls = device_copy(std::vector<unsigned long long>(1));
        CHECK_LAUNCH(atomics, blocks, threads, 0, fs, ds, is, us, ls, im, cas);
        check_cuda(cudaGetLastError(), "atomics");
        int want_max = -5;
        for (int g = 0; g < n; g++)
            want_max = (g * 37) % 1001 > want_max ? (g * 37) % 1001 : want_max;
        EXPECT(host_copy(fs, 1)[0] == 0.5f * n, "atomicAdd float");
        EXPECT(host_copy(ds, 1)[0] == 0.25 * n, "atomicAdd double");
        EXPECT(host_copy(is, 1)[0] == n * (n - 1) / 2, "atomicAdd int");
        EXPECT(host_copy(us, 1)[0] == 2u * n, "atomicAdd unsigned");
        EXPECT(host_copy(ls, 1)[0] == (unsigned long long)n << 33, "atomicAdd unsigned long long");
        EXPECT(host_copy(im, 1)[0] == want_max, "atomicMax = %d, want %d", host_copy(im, 1)[0],
               want_max);
        EXPECT(host_copy(cas, 1)[0] == n, "atomicCAS count = %d, want %d", host_copy(cas, 1)[0], n);
        cudaFree(fs);
        cudaFree(ds);
        cudaFree(is);
        cudaFree(im);
        cudaFree(cas);
        cudaFree(us);
        cudaFree(ls);
    }
    /* bfloat16: the device conversion agrees with the host one, on the rounding cases */
    {
        const float cases[] = {0.0f,         -0.0f,       1.0f,      1.00390625f, 1.01171875f,
                               1.005859375f, 3.14159265f, -2.71828f, 1e-40f,      3.4e38f,
                               INFINITY,     -INFINITY,   NAN,       65504.0f,    1.0000001f};
        const int n = sizeof cases / sizeof cases[0];
        std::vector<float> x(cases, cases + n);
        float *dx = device_copy(x);
        unsigned short *dout = device_copy(std::vector<unsigned short>(n));
        CHECK_LAUNCH(to_bf16, 1, 32, 0, reinterpret_cast<__nv_bfloat16 *>(dout), dx, n);
        check_cuda(cudaGetLastError(), "to_bf16");
        std::vector<unsigned short> got = host_copy(dout, n);
        /* expected bits worked out by hand: round to nearest, ties to even, NaN canonical */
        const unsigned short want[] = {0x0000, 0x8000, 0x3f80, 0x3f80, 0x3f82,
                                       0x3f81, 0x4049, 0xc02e, 0x0001, 0x7f80,
                                       0x7f80, 0xff80, 0x7fff, 0x4780, 0x3f80};
        for (int i = 0; i < n; i++) {
            EXPECT(got[i] == want[i], "bf16(%g) = %04x, want %04x", cases[i], got[i], want[i]);
            const float back = __bfloat162float(__float2bfloat16(cases[i]));
            EXPECT(std::isnan(cases[i]) ? std::isnan(back)
                                        : back == __bfloat162float(__nv_bfloat16_raw{want[i]}),
                   "bf16 round trip of %g", cases[i]);
        }
        cudaFree(dx);
        cudaFree(dout);
    }
#ifdef MG_CUDA_EMULATE
    /* emulator-only: deadlocks and bad configurations are errors, not hangs or crashes */
    {
        int *dx = device_copy(std::vector<int>(1));
        CHECK_LAUNCH(deadlock, 1, 64, 0, dx);
        EXPECT(cudaGetLastError() == cudaErrorLaunchFailure, "deadlock not reported");
        CHECK_LAUNCH(deadlock, 1, 2048, 0, dx);
        EXPECT(cudaGetLastError() == cudaErrorInvalidConfiguration, "2048 threads accepted");
        EXPECT(cudaGetLastError() == cudaSuccess, "cudaGetLastError did not clear");
        /* the slots abandoned by the deadlock still work */
        std::vector<float> x(256, 1.0f);
        float *fx = device_copy(x), *fo = device_copy(std::vector<float>(1));
        CHECK_LAUNCH(block_sum, 1, 256, 0, fo, fx, 256);
        EXPECT(host_copy(fo, 1)[0] == 256.0f, "block_sum after a deadlock");
        cudaFree(dx);
        cudaFree(fx);
        cudaFree(fo);
    }
#endif
    check_cuda(cudaDeviceSynchronize(), "synchronize");
    if (failures) {
        std::printf("check_emulator: %d failures\n", failures);
        return 1;
    }
    std::printf("check_emulator: all passed\n");
    return 0;
}
