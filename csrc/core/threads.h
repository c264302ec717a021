/* The one piece of global state: the worker-thread count, shared by OpenMP loops and OpenBLAS. */
#ifndef MG_CORE_THREADS_H
#define MG_CORE_THREADS_H

void mg_set_num_threads(int n);
int mg_get_num_threads(void);
int mg_cpu_count(void);

#endif
