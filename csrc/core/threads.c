#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "threads.h"

#include <ctype.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../backend/cpu/blas.h"

static int g_threads = 1;      /* the count every call runs with */
static int g_blas_threads = 0; /* the count OpenBLAS was last given (0: none yet) */
static int g_teams_used = 0;   /* a call may have started OpenMP's worker threads */
static int g_forked = 0;       /* a fork child of a process whose workers had started */
/* Held shared by every call inside the C core (mg_threads_enter .. mg_threads_leave) and alone
 * by a thread about to fork (mg_threads_fork_prepare): no call is half done in a child. */
static pthread_rwlock_t g_fork_gate;
static _Thread_local int t_gate_depth = 0; /* this thread's nesting inside the gate */

int mg_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Writers first: a thread that loops over calls must not keep a fork waiting forever. */
static void init_gate(void) {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
#ifdef __GLIBC__
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
    /* a default rwlock allocates nothing, so this cannot fail for lack of memory */
    pthread_rwlock_init(&g_fork_gate, &attr);
    pthread_rwlockattr_destroy(&attr);
}

/* The thread that called fork is the child's only thread: once the parent's calls may have
 * started OpenMP's workers, a team in the child (OpenBLAS's jobs run on it too) would wait for
 * workers that exist only in the parent. A parent that only imported magnet leaves no workers
 * behind, and its children keep the whole count. */
static void after_fork_in_child(void) {
    /* the forking thread held the gate alone; the child starts with it open (a fresh lock: the
     * holder's thread id is the parent's, so an unlock here would not be recognised) */
    memset(&g_fork_gate, 0, sizeof g_fork_gate);
    init_gate();
    t_gate_depth = 0;
    if (!__atomic_load_n(&g_teams_used, __ATOMIC_RELAXED)) return;
    __atomic_store_n(&g_threads, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&g_forked, 1, __ATOMIC_RELAXED);
}

/* Makes the calling thread's OpenMP team size, and OpenBLAS's, the count. */
static int apply(void) {
    const int n = __atomic_load_n(&g_threads, __ATOMIC_RELAXED);
    if (omp_get_max_threads() != n) omp_set_num_threads(n);
    if (__atomic_exchange_n(&g_blas_threads, n, __ATOMIC_RELAXED) != n) mg_blas_set_num_threads(n);
    return n;
}

/* OMP_NUM_THREADS's first value (a list names nested levels), when it is a positive number, read
 * as libgomp reads it: white space around the number is allowed. Above 4096 (the most
 * set_num_threads accepts) it counts as 4096; mg_set_num_threads caps it at the thread limit. */
static int env_threads(void) {
    const char *s = getenv("OMP_NUM_THREADS");
    if (s == NULL) return 0;
    char *end = NULL;
    const long n = strtol(s, &end, 10); /* skips leading white space */
    if (end == s) return 0;
    while (isspace((unsigned char)*end))
        end++;
    if ((*end != '\0' && *end != ',') || n < 1) return 0;
    return n > 4096 ? 4096 : (int)n;
}

void mg_threads_init(void) {
    init_gate();
    (void)pthread_atfork(NULL, NULL, after_fork_in_child);
    const int n = env_threads();
    mg_set_num_threads(n > 0 ? n : mg_cpu_count());
}

int mg_set_num_threads(int n) {
    if (n < 1) n = 1;
    /* OpenMP never runs more threads than this, and OpenBLAS's jobs need a thread each */
    if (n > omp_get_thread_limit()) n = omp_get_thread_limit();
    if (n > 1 && __atomic_load_n(&g_forked, __ATOMIC_RELAXED)) return -1;
    __atomic_store_n(&g_threads, n, __ATOMIC_RELAXED);
    apply();
    return 0;
}

int mg_get_num_threads(void) {
    return __atomic_load_n(&g_threads, __ATOMIC_RELAXED);
}

void mg_threads_enter(void) {
    /* only the outermost entry takes the gate: a nested one would wait behind a pending fork
     * that waits for this thread */
    if (t_gate_depth++ == 0) pthread_rwlock_rdlock(&g_fork_gate);
    if (apply() > 1) __atomic_store_n(&g_teams_used, 1, __ATOMIC_RELAXED);
}

void mg_threads_leave(void) {
    if (t_gate_depth > 0 && --t_gate_depth == 0) pthread_rwlock_unlock(&g_fork_gate);
}

void mg_threads_fork_prepare(void) {
    pthread_rwlock_wrlock(&g_fork_gate);
}

void mg_threads_fork_parent(void) {
    pthread_rwlock_unlock(&g_fork_gate);
}
