/* The CPU backend's GEMM: OpenBLAS, from the scipy-openblas32 wheel (symbols prefixed scipy_)
 * or, with MG_SYSTEM_OPENBLAS defined at build time, the system's libopenblas. */
#ifndef MG_BACKEND_CPU_BLAS_H
#define MG_BACKEND_CPU_BLAS_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Row-major C[M,N] = alpha * op(A) op(B) + beta * C, op = transpose when trans_* is true.
 * lda/ldb/ldc are the row strides of A, B, C as stored. */
void mg_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);

void mg_blas_set_num_threads(int n);

/* Once, at module load: route OpenBLAS's threading through our OpenMP pool where supported. */
void mg_blas_init(void);

#ifdef __cplusplus
}
#endif

#endif
