/* How close OpenBLAS's sgemm comes to the machine's float32 FMA peak, on SmolLM2-135M's GEMM
 * shapes. This puts the "sgemm ceiling" of forward.py and adapt.py in hardware terms: a target
 * stated against PyTorch (which calls a GEMM of its own) can need more of the hardware than
 * OpenBLAS reaches.
 *
 * Prints, per thread count n (1 and the OpenMP maximum):
 *   - the FMA peak: every thread runs ten independent FMA chains of the widest vectors the
 *     build has (16 floats with AVX-512, else 8), enough to hide the FMA latency on two FMA
 *     pipes, so this is the rate no float32 kernel can exceed;
 *   - OpenBLAS sgemm (the library magnet links) on the forward's GEMMs for batch 8 x 256
 *     (M = 2048 rows against each weight, B transposed as magnet calls it), best of 5;
 *   - with n > 1, also n single-threaded sgemms on n independent copies at once: what each core
 *     reaches when the cores only share the caches and memory, with no split to coordinate.
 *
 * Build and run from the repository root (OpenBLAS from the scipy-openblas32 wheel):
 *   L=$(python -c "import scipy_openblas32 as s; print(s.get_lib_dir().rsplit('/', 1)[0])")
 *   gcc -O2 -march=native -fopenmp -I$L/include benchmarks/cpu_peak.c csrc/backend/cpu/blas.c \
 *       -L$L/lib -lscipy_openblas -Wl,-rpath,$L/lib -lm -o /tmp/cpu_peak
 *   env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /tmp/cpu_peak
 */
#include "../csrc/backend/cpu/blas.h"
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* The widest FMA this build has: 512-bit (16 floats, 32 flops each) with AVX-512, else 256-bit.
 * Measured with the narrower one, an AVX-512 CPU's peak would read half of what its sgemm can
 * reach. */
#if defined(__AVX512F__)
typedef __m512 vec;
#define VEC_SET1 _mm512_set1_ps
#define VEC_FMA _mm512_fmadd_ps
#define VEC_ADD _mm512_add_ps
#define VEC_STORE _mm512_storeu_ps
#define VEC_FLOATS 16
#else
typedef __m256 vec;
#define VEC_SET1 _mm256_set1_ps
#define VEC_FMA _mm256_fmadd_ps
#define VEC_ADD _mm256_add_ps
#define VEC_STORE _mm256_storeu_ps
#define VEC_FLOATS 8
#endif

/* GFLOP/s of one thread running ten independent FMA chains for `iters` rounds. The empty asm
 * keeps the chains in registers and stops the compiler from folding the loop. */
static double fma_rate(long iters) {
    vec b = VEC_SET1(1.0000001f), c = VEC_SET1(1e-7f);
    vec a0 = b, a1 = c, a2 = b, a3 = c, a4 = b, a5 = c, a6 = b, a7 = c, a8 = b, a9 = c;
    double t = now();
    for (long i = 0; i < iters; i++) {
        a0 = VEC_FMA(a0, b, c);
        a1 = VEC_FMA(a1, b, c);
        a2 = VEC_FMA(a2, b, c);
        a3 = VEC_FMA(a3, b, c);
        a4 = VEC_FMA(a4, b, c);
        a5 = VEC_FMA(a5, b, c);
        a6 = VEC_FMA(a6, b, c);
        a7 = VEC_FMA(a7, b, c);
        a8 = VEC_FMA(a8, b, c);
        a9 = VEC_FMA(a9, b, c);
        __asm__ volatile(""
                         : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6),
                           "+v"(a7), "+v"(a8), "+v"(a9));
    }
    t = now() - t;
    float sink[VEC_FLOATS];
    VEC_STORE(sink, VEC_ADD(VEC_ADD(a0, a9), VEC_ADD(a4, a5)));
    if (sink[0] == 1234.5f) puts(""); /* keeps the result alive */
    return iters * 10.0 * 2.0 * VEC_FLOATS / t / 1e9;
}

/* Sum over n threads of their FMA rates, all running at once. */
static double fma_peak(int n) {
    double total = 0;
#pragma omp parallel num_threads(n) reduction(+ : total)
    total += fma_rate(100000000L);
    return total;
}

typedef struct {
    int M, N, K;
    float *A, *B, *C;
} Gemm;

static Gemm gemm_new(int M, int N, int K) {
    Gemm g = {M,
              N,
              K,
              malloc(sizeof(float) * (size_t)M * K),
              malloc(sizeof(float) * (size_t)N * K),
              malloc(sizeof(float) * (size_t)M * N)};
    if (!g.A || !g.B || !g.C) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < (size_t)M * K; i++)
        g.A[i] = (float)(i % 7) * 0.1f;
    for (size_t i = 0; i < (size_t)N * K; i++)
        g.B[i] = (float)(i % 5) * 0.1f;
    return g;
}

static void gemm_run(const Gemm *g) {
    mg_sgemm(false, true, g->M, g->N, g->K, 1.0f, g->A, g->K, g->B, g->K, 0.0f, g->C, g->N);
}

static void gemm_free(Gemm *g) {
    free(g->A);
    free(g->B);
    free(g->C);
}

int main(void) {
    mg_blas_init();
    /* SmolLM2-135M's GEMMs for 2048 rows: q/o (576x576), k/v (576x192), gate/up (576->1536),
     * down (1536->576), lm_head (576->49152), weighted by how often one forward runs them. */
    const int shapes[][4] = {{2048, 576, 576, 60},
                             {2048, 192, 576, 60},
                             {2048, 1536, 576, 60},
                             {2048, 576, 1536, 30},
                             {2048, 49152, 576, 1}};
    const int n_shapes = 5, max_threads = omp_get_max_threads();
    printf("%-28s %8s %12s %16s\n", "", "threads", "GFLOP/s", "share of peak");
    for (int n = 1; n <= max_threads; n = n < max_threads ? max_threads : n + 1) {
        double peak = fma_peak(n);
        printf("%-28s %8d %12.1f %15.0f%%\n", "FMA peak", n, peak, 100.0);
        double flops_all = 0, time_all = 0, time_apart = 0;
        for (int s = 0; s < n_shapes; s++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], count = shapes[s][3];
            double flops = 2.0 * M * N * K;
            Gemm g = gemm_new(M, N, K);
            mg_blas_set_num_threads(n);
            double best = 1e30;
            for (int r = 0; r < 5; r++) {
                double t = now();
                gemm_run(&g);
                t = now() - t;
                best = t < best ? t : best;
            }
            gemm_free(&g);
            char name[64];
            snprintf(name, sizeof name, "sgemm %dx%dx%d", M, N, K);
            printf("%-28s %8d %12.1f %15.0f%%\n", name, n, flops / best / 1e9,
                   100.0 * flops / best / 1e9 / peak);
            flops_all += count * flops;
            time_all += count * best;
            if (n == 1) continue;
            /* n independent single-threaded GEMMs at once; the rate counts all n. */
            mg_blas_set_num_threads(1);
            double apart = 0; /* the slowest thread's best time (a max reduction) */
#pragma omp parallel num_threads(n) reduction(max : apart)
            {
                Gemm mine = gemm_new(M, N, K);
                double own = 1e30;
                for (int r = 0; r < 5; r++) {
#pragma omp barrier
                    double t = now();
                    gemm_run(&mine);
                    t = now() - t;
                    own = t < own ? t : own;
                }
                gemm_free(&mine);
                apart = own;
            }
            printf("%-28s %8s %12.1f %15.0f%%\n", "  n single-threaded at once", "1 each",
                   n * flops / apart / 1e9, 100.0 * n * flops / apart / 1e9 / peak);
            time_apart += count * apart / n;
        }
        printf("%-28s %8d %12.1f %15.0f%%\n", "sgemm, one forward's mix", n,
               flops_all / time_all / 1e9, 100.0 * flops_all / time_all / 1e9 / peak);
        if (n > 1)
            printf("%-28s %8s %12.1f %15.0f%%\n", "  n single-threaded at once", "1 each",
                   flops_all / time_apart / 1e9, 100.0 * flops_all / time_apart / 1e9 / peak);
        if (n == max_threads) break;
    }
    return 0;
}
