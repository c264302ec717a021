#include "blas.h"

#ifdef MG_SYSTEM_OPENBLAS
#include <cblas.h>
#define MG_CBLAS_SGEMM cblas_sgemm
#define MG_BLAS_SET_THREADS openblas_set_num_threads
#else
#include <cblas.h> /* the scipy-openblas32 header, which declares scipy_-prefixed symbols */
#define MG_CBLAS_SGEMM scipy_cblas_sgemm
#define MG_BLAS_SET_THREADS scipy_openblas_set_num_threads
#define MG_BLAS_SET_CALLBACK scipy_openblas_set_threads_callback_function
#endif

#include <omp.h>
#include <stddef.h>

void mg_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    MG_CBLAS_SGEMM(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                   trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C,
                   ldc);
}

void mg_blas_set_num_threads(int n) {
    MG_BLAS_SET_THREADS(n);
}

#ifdef MG_BLAS_SET_CALLBACK
/* OpenBLAS's parallel jobs run on our OpenMP team instead of its own pthread pool: two pools
 * spinning on the same cores slowed small models down by orders of magnitude. The jobs of one
 * call synchronise with each other, so they need a team of their own size: a smaller team
 * deadlocks, each thread spinning for a job that no thread runs. So dynamic team sizes
 * (OMP_DYNAMIC=true, which let OpenMP give fewer threads) are off for this region, the thread
 * count never exceeds OMP_THREAD_LIMIT (mg_set_num_threads), and we never call a GEMM from
 * inside a parallel region (where the team would shrink to one thread). */
static void run_blas_jobs_on_openmp(int sync, openblas_dojob_callback dojob, int numjobs,
                                    size_t jobdata_elsize, void *jobdata, int dojob_data) {
    (void)sync;
    const int dynamic = omp_get_dynamic();
    omp_set_dynamic(0);
#pragma omp parallel for num_threads(numjobs) schedule(static, 1)
    for (int i = 0; i < numjobs; i++)
        dojob(i, (char *)jobdata + (size_t)i * jobdata_elsize, dojob_data);
    omp_set_dynamic(dynamic);
}
#endif

void mg_blas_init(void) {
#ifdef MG_BLAS_SET_CALLBACK
    MG_BLAS_SET_CALLBACK(run_blas_jobs_on_openmp);
#endif
}
