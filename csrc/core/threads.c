#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "threads.h"

#include <ctype.h>
#include <dirent.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../backend/cpu/blas.h"

static int g_threads = 1;      /* the count every call runs with */
static int g_blas_threads = 0; /* the count OpenBLAS was last given (0: none yet) */
static int g_blas_lock = 0;    /* a spin lock, held only while OpenBLAS's count is set */
static int g_teams_used = 0;   /* a call may have started OpenMP's worker threads */
static int g_forked = 0;       /* a fork child of a process whose workers had started */
/* The threads the process had at import (g_import_threads < 0: unknown, or too many to keep),
 * and whether the last fork found others (read in the parent just before it, for the child). */
#define MG_KNOWN_THREADS 64
static int g_import_tids[MG_KNOWN_THREADS];
static int g_import_threads = -1;
static int g_new_threads_at_fork = 1;
/* Held shared by every call inside the C core (mg_threads_enter .. mg_threads_leave) and alone
 * by a thread about to fork (mg_threads_fork_prepare): no call is half done in a child. */
static pthread_rwlock_t g_fork_gate;
static _Thread_local int t_gate_depth = 0; /* this thread's nesting inside the gate */
/* The calling thread's OpenMP team size before its outermost call, put back when the call
 * leaves: PyTorch (torch.set_num_threads) and threadpoolctl keep theirs in the same libgomp
 * setting, so a call must not leave magnet's count behind in it. */
static _Thread_local int t_caller_threads = 0;

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

/* Fills tids with the ids of this process's threads (/proc/self/task); returns their number, or
 * -1 when the list cannot be read or holds more than max. Runs at import and just before a
 * fork (opendir's allocation is fine there: glibc takes malloc's locks after the handlers). */
static int list_threads(int *tids, int max) {
    DIR *dir = opendir("/proc/self/task");
    if (dir == NULL) return -1;
    int n = 0;
    const struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (n == max) {
            n = -1;
            break;
        }
        tids[n++] = atoi(e->d_name);
    }
    closedir(dir);
    return n;
}

/* Whether a thread other than the caller has started since import (or cannot be told apart
 * from one). */
static int threads_since_import(void) {
    if (g_import_threads < 0) return 1;
    int tids[MG_KNOWN_THREADS];
    const int n = list_threads(tids, MG_KNOWN_THREADS);
    if (n < 0) return 1;
    const int self = (int)syscall(SYS_gettid);
    for (int i = 0; i < n; i++) {
        if (tids[i] == self) continue;
        int known = 0;
        for (int j = 0; j < g_import_threads && !known; j++)
            known = tids[i] == g_import_tids[j];
        if (!known) return 1;
    }
    return 0;
}

static void before_fork(void) {
    __atomic_store_n(&g_new_threads_at_fork, threads_since_import(), __ATOMIC_RELAXED);
}

/* The thread that called fork is the child's only thread: once OpenMP's workers may have
 * started in the parent, a team in the child (OpenBLAS's jobs run on it too) would wait for
 * workers that exist only in the parent. They may have been started by magnet's calls, or by
 * another library that shares the process's libgomp: PyTorch's ops do (torch ships a libgomp,
 * which then serves magnet too). A worker is a thread, so a parent with a thread that was not
 * there at import (or that cannot be told apart from one) gives its child one thread; those
 * there at import are typically numpy's and OpenBLAS's idle servers. A parent that only imported
 * magnet and started no thread since leaves no workers behind, and its children keep the whole
 * count. */
static void after_fork_in_child(void) {
    /* the forking thread held the gate alone; the child starts with it open (a fresh lock: the
     * holder's thread id is the parent's, so an unlock here would not be recognised) */
    memset(&g_fork_gate, 0, sizeof g_fork_gate);
    init_gate();
    t_gate_depth = 0;
    __atomic_store_n(&g_blas_lock, 0, __ATOMIC_RELEASE); /* its holder, if any, is not here */
    if (!__atomic_load_n(&g_teams_used, __ATOMIC_RELAXED) &&
        !__atomic_load_n(&g_new_threads_at_fork, __ATOMIC_RELAXED))
        return;
    __atomic_store_n(&g_threads, 1, __ATOMIC_RELAXED);
    __atomic_store_n(&g_forked, 1, __ATOMIC_RELAXED);
}

/* Makes the calling thread's OpenMP team size, and OpenBLAS's, the count. */
static int apply(void) {
    const int n = __atomic_load_n(&g_threads, __ATOMIC_RELAXED);
    if (omp_get_max_threads() != n) omp_set_num_threads(n);
    /* OpenBLAS's count is one setting for the process, set and recorded by one thread at a
     * time: two calls that read the count on either side of a change set OpenBLAS in one order
     * and recorded it in the other, and the record then matched the count while OpenBLAS kept
     * the old one, for good. (A call with a stale count leaves a record that the next call
     * corrects.) */
    if (__atomic_load_n(&g_blas_threads, __ATOMIC_ACQUIRE) != n) {
        while (__atomic_exchange_n(&g_blas_lock, 1, __ATOMIC_ACQUIRE))
            sched_yield();
        if (__atomic_load_n(&g_blas_threads, __ATOMIC_RELAXED) != n) {
            mg_blas_set_num_threads(n);
            __atomic_store_n(&g_blas_threads, n, __ATOMIC_RELEASE);
        }
        __atomic_store_n(&g_blas_lock, 0, __ATOMIC_RELEASE);
    }
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
    g_import_threads = list_threads(g_import_tids, MG_KNOWN_THREADS);
    (void)pthread_atfork(before_fork, NULL, after_fork_in_child);
    const int n = env_threads();
    mg_set_num_threads(n > 0 ? n : mg_cpu_count());
}

void mg_threads_forget_import(void) {
    g_import_threads = -1;
}

int mg_set_num_threads(int n) {
    if (n < 1) n = 1;
    /* OpenMP never runs more threads than this, and OpenBLAS's jobs need a thread each */
    if (n > omp_get_thread_limit()) n = omp_get_thread_limit();
    if (n > 1 && __atomic_load_n(&g_forked, __ATOMIC_RELAXED)) return -1;
    /* applied by each call as it enters (mg_threads_enter), not here: the calling thread's own
     * OpenMP setting belongs to whoever else uses it (PyTorch, threadpoolctl) */
    __atomic_store_n(&g_threads, n, __ATOMIC_RELAXED);
    return 0;
}

int mg_get_num_threads(void) {
    return __atomic_load_n(&g_threads, __ATOMIC_RELAXED);
}

void mg_threads_enter(void) {
    /* only the outermost entry takes the gate: a nested one would wait behind a pending fork
     * that waits for this thread */
    if (t_gate_depth++ == 0) {
        pthread_rwlock_rdlock(&g_fork_gate);
        t_caller_threads = omp_get_max_threads();
    }
    if (apply() > 1) __atomic_store_n(&g_teams_used, 1, __ATOMIC_RELAXED);
}

void mg_threads_leave(void) {
    if (t_gate_depth > 0 && --t_gate_depth == 0) {
        if (omp_get_max_threads() != t_caller_threads) omp_set_num_threads(t_caller_threads);
        pthread_rwlock_unlock(&g_fork_gate);
    }
}

void mg_threads_fork_prepare(void) {
    pthread_rwlock_wrlock(&g_fork_gate);
}

void mg_threads_fork_parent(void) {
    pthread_rwlock_unlock(&g_fork_gate);
}
