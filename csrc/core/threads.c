#include "threads.h"

#include <omp.h>
#include <unistd.h>

#include "../backend/cpu/blas.h"

int mg_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

void mg_set_num_threads(int n) {
    if (n < 1) n = 1;
    /* OpenMP never runs more threads than this, and OpenBLAS's jobs need a thread each */
    if (n > omp_get_thread_limit()) n = omp_get_thread_limit();
    omp_set_num_threads(n);
    mg_blas_set_num_threads(n);
}

int mg_get_num_threads(void) {
    return omp_get_max_threads();
}
