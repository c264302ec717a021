#include "blas.h"

#ifdef MG_SYSTEM_OPENBLAS
#include <cblas.h>
#define MG_CBLAS_SGEMM cblas_sgemm
#define MG_BLAS_SET_THREADS openblas_set_num_threads
#else
#include <cblas.h> /* the scipy-openblas32 header, which declares scipy_-prefixed symbols */
#define MG_CBLAS_SGEMM scipy_cblas_sgemm
#define MG_BLAS_SET_THREADS scipy_openblas_set_num_threads
#endif

void mg_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    MG_CBLAS_SGEMM(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                   trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
                   ldc);
}

void mg_blas_set_num_threads(int n) {
    MG_BLAS_SET_THREADS(n);
}
