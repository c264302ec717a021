/* The one piece of global state: the worker-thread count, shared by OpenMP loops and OpenBLAS.
 *
 * The count is process-wide, but OpenMP keeps its team size per calling thread, so every entry
 * from Python applies it to the calling thread first (mg_threads_enter): a count set in one
 * thread holds in all of them, and a call that has started keeps the count it started with
 * (its scratch buffers are sized for it) even if another thread changes it meanwhile. */
#ifndef MG_CORE_THREADS_H
#define MG_CORE_THREADS_H

/* Once, at import: registers the fork handler and sets the default count: OMP_NUM_THREADS when
 * it is set, else the CPUs this process may run on. */
void mg_threads_init(void);
/* Sets the count (clamped to 1 .. OMP_THREAD_LIMIT). Returns -1, changing nothing, for n > 1 in
 * a process forked from one whose calls may have started OpenMP's worker threads: they do not
 * survive a fork, and a team larger than one would wait for them forever (such a child starts
 * with a count of 1). */
int mg_set_num_threads(int n);
int mg_get_num_threads(void);
/* Before a call's work: applies the count to the calling thread (OpenMP's team size,
 * OpenBLAS's); cheap when it already holds. */
void mg_threads_enter(void);
/* The CPUs this process may run on (its affinity mask), at least 1. */
int mg_cpu_count(void);

#endif
