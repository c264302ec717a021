/* The decode-step linear layer: skinny_matmul_forward against OpenBLAS sgemm, on SmolLM2-135M's
 * shapes (I x O) for 1 to 32 rows, with the weights cycled through ~200 MB so they come from
 * memory as in a real decode. Prints the best of 3 per shape and the max difference.
 *
 * Build and run from the repository root (OpenBLAS from the scipy-openblas32 wheel):
 *   L=$(python -c "import scipy_openblas32 as s; print(s.get_lib_dir().rsplit('/', 1)[0])")
 *   gcc -O3 -march=native -fopenmp -I$L/include benchmarks/skinny_matmul.c \
 *       csrc/ops/skinny_matmul.c csrc/backend/cpu/blas.c -L$L/lib -lscipy_openblas \
 *       -Wl,-rpath,$L/lib -lm -o /tmp/skinny_bench
 *   env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OMP_NUM_THREADS=2 /tmp/skinny_bench
 */
#include "../csrc/ops/skinny_matmul.h"
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
int main(void) {
    mg_blas_init();
    int shapes[][2] = {{576, 576}, {576, 1536}, {1536, 576}, {576, 49152}};
    int Ns[] = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32};
    for (int s = 0; s < 4; s++) {
        int I = shapes[s][0], O = shapes[s][1];
        /* many copies of the weight so it is not cache-resident, like the 30 layers in a decode */
        int copies = (int)(200e6 / (4.0 * I * O));
        if (copies < 1) copies = 1;
        float *W = malloc(sizeof(float) * (size_t)I * O * copies),
              *x = malloc(sizeof(float) * 32 * I), *y1 = malloc(sizeof(float) * 32 * O),
              *y2 = malloc(sizeof(float) * 32 * O);
        for (size_t i = 0; i < (size_t)I * O * copies; i++)
            W[i] = (float)rand() / RAND_MAX - 0.5f;
        for (int i = 0; i < 32 * I; i++)
            x[i] = (float)rand() / RAND_MAX - 0.5f;
        for (int ni = 0; ni < 10; ni++) {
            int N = Ns[ni];
            double tb = 1e9, ts = 1e9;
            for (int rep = 0; rep < 3; rep++) {
                double t = now();
                for (int c = 0; c < copies; c++)
                    mg_sgemm(false, true, N, O, I, 1, x, I, W + (size_t)c * I * O, I, 0, y1, O);
                t = (now() - t) / copies;
                if (t < tb) tb = t;
                t = now();
                for (int c = 0; c < copies; c++)
                    skinny_matmul_forward(y2, x, W + (size_t)c * I * O, NULL, N, I, O, false);
                t = (now() - t) / copies;
                if (t < ts) ts = t;
            }
            double md = 0;
            for (int i = 0; i < N * O; i++) {
                double d = fabs(y1[i] - y2[i]);
                if (d > md) md = d;
            }
            printf("I=%5d O=%5d N=%2d  blas %8.1f us  skinny %8.1f us  ratio %.2f  GB/s skinny "
                   "%.1f maxdiff %.1e\n",
                   I, O, N, tb * 1e6, ts * 1e6, tb / ts, 4.0 * I * O / ts / 1e9, md);
        }
        free(W);
        free(x);
        free(y1);
        free(y2);
    }
}
