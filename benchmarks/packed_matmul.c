/* magnet's packed GEMM (csrc/ops/packed_matmul.c) against OpenBLAS's sgemm on SmolLM2-135M's
 * linear layers, C[M, O] = X[M, I] W[O, I]^T, the layout of every forward.
 *
 * For each thread count (1 and the OpenMP maximum) and each shape it runs the two alternately,
 * `repeats` times each, and prints both medians in GFLOP/s, their ratio, and the largest
 * difference between the two results relative to the largest output. The last row of each
 * thread count is one forward's mix of the shapes (each weighted by how often a forward of
 * SmolLM2-135M runs it), the rate that decides the model's speed.
 *
 * Build and run from the repository root (OpenBLAS from the scipy-openblas32 wheel):
 *   L=$(python -c "import scipy_openblas32 as s; print(s.get_lib_dir().rsplit('/', 1)[0])")
 *   gcc -O3 -march=native -fopenmp -I$L/include benchmarks/packed_matmul.c \
 *       csrc/ops/packed_matmul.c csrc/backend/cpu/blas.c \
 *       -L$L/lib -lscipy_openblas -Wl,-rpath,$L/lib -lm -o /tmp/packed_matmul
 *   env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE /tmp/packed_matmul [rows] [repeats]
 * rows defaults to 2048 (batch 8 x 256); 512 is closer to a batch of sentence embeddings. */
#include "../csrc/ops/packed_matmul.h"
#include "../csrc/backend/cpu/blas.h"
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static float *random_floats(size_t n, unsigned seed) {
    float *p = malloc(n * sizeof(float));
    if (p == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (float)(seed >> 8) / (float)(1u << 24) - 0.5f;
    }
    return p;
}

int main(int argc, char **argv) {
    const int M = argc > 1 ? atoi(argv[1]) : 2048;
    const int repeats = argc > 2 ? atoi(argv[2]) : 7;
    if (M < 1 || repeats < 1 || repeats > 99) {
        fprintf(stderr, "usage: packed_matmul [rows >= 1] [repeats 1..99]\n");
        return 2;
    }
    if (!MG_HAVE_PACKED_MATMUL) {
        fprintf(stderr, "this build has no AVX2/FMA packed GEMM (compile with -march=native)\n");
        return 2;
    }
    mg_blas_init();
    /* q/o (576 -> 576), k/v (576 -> 192), gate/up (576 -> 1536), down (1536 -> 576), lm_head
     * (576 -> 49152), each with how often one forward runs it */
    const int shapes[][3] = {
        {576, 576, 60}, {576, 192, 60}, {576, 1536, 60}, {1536, 576, 30}, {576, 49152, 1}};
    const int n_shapes = 5, max_threads = omp_get_max_threads();
    printf("rows %d, %d repeats, medians\n", M, repeats);
    printf("%-22s %7s %12s %12s %8s %10s\n", "I -> O", "threads", "ours GF/s", "sgemm GF/s",
           "ratio", "rel diff");
    for (int n = 1;; n = max_threads) {
        omp_set_num_threads(n);
        mg_blas_set_num_threads(n);
        double ours_all = 0, blas_all = 0, flops_all = 0;
        for (int s = 0; s < n_shapes; s++) {
            const int I = shapes[s][0], O = shapes[s][1], count = shapes[s][2];
            float *x = random_floats((size_t)M * I, 1u + s);
            float *w = random_floats((size_t)O * I, 100u + s);
            float *ours = random_floats((size_t)M * O, 7u),
                  *blas = random_floats((size_t)M * O, 8u);
            double t_ours[99], t_blas[99];
            for (int r = 0; r < repeats; r++) {
                double t = now();
                if (!packed_matmul_forward(ours, x, w, M, I, O, false)) {
                    fprintf(stderr, "packed_matmul_forward could not allocate\n");
                    return 1;
                }
                t_ours[r] = now() - t;
                t = now();
                mg_sgemm(false, true, M, O, I, 1.0f, x, I, w, I, 0.0f, blas, O);
                t_blas[r] = now() - t;
            }
            double diff = 0, scale = 0;
            for (size_t i = 0; i < (size_t)M * O; i++) {
                diff = fmax(diff, fabs((double)ours[i] - blas[i]));
                scale = fmax(scale, fabs((double)blas[i]));
            }
            const double flops = 2.0 * M * I * O;
            const double mo = median(t_ours, repeats), mb = median(t_blas, repeats);
            char name[32];
            snprintf(name, sizeof name, "%d -> %d", I, O);
            printf("%-22s %7d %12.1f %12.1f %7.2fx %10.1e\n", name, n, flops / mo / 1e9,
                   flops / mb / 1e9, mb / mo, diff / scale);
            ours_all += count * mo;
            blas_all += count * mb;
            flops_all += count * flops;
            free(x), free(w), free(ours), free(blas);
        }
        printf("%-22s %7d %12.1f %12.1f %7.2fx\n", "one forward's mix", n,
               flops_all / ours_all / 1e9, flops_all / blas_all / 1e9, blas_all / ours_all);
        if (n == max_threads) break;
    }
    return 0;
}
