/* The one piece of global state: the worker-thread count, shared by OpenMP loops and OpenBLAS.
 *
 * The count is process-wide, but OpenMP keeps its team size per calling thread, so every entry
 * from Python applies it to the calling thread first (mg_threads_enter) and puts the thread's
 * own setting back when it leaves (PyTorch and threadpoolctl keep theirs there): a count set in
 * one thread holds in all of them, and a call that has started keeps the count it started with
 * (its scratch buffers are sized for it) even if another thread changes it meanwhile. */
#ifndef MG_CORE_THREADS_H
#define MG_CORE_THREADS_H

/* Once, at import: registers the fork handlers, notes the process's threads (see
 * mg_threads_forget_import) and sets the default count: OMP_NUM_THREADS when it is set, else
 * the CPUs this process may run on. */
void mg_threads_init(void);
/* Forgets the threads seen at import, so that every fork child runs one thread: for a process
 * whose libgomp was loaded before magnet (by PyTorch, say), whose threads at import may be
 * OpenMP workers already. */
void mg_threads_forget_import(void);
/* Sets the count (clamped to 1 .. OMP_THREAD_LIMIT). Returns -1, changing nothing, for n > 1 in
 * a process forked from one whose OpenMP worker threads may have started (by magnet's calls or
 * another library's, such as PyTorch's): they do not survive a fork, and a team larger than one
 * would wait for them forever (such a child starts with a count of 1). */
int mg_set_num_threads(int n);
int mg_get_num_threads(void);
/* Before a call's work: applies the count to the calling thread (OpenMP's team size,
 * OpenBLAS's); cheap when it already holds. Until the matching mg_threads_leave the thread is
 * inside the fork gate (below); entries nest. The outermost leave gives the thread back its own
 * OpenMP team size. */
void mg_threads_enter(void);
void mg_threads_leave(void);
/* Fork safety. A thread of the parent that is inside a call when another thread forks leaves
 * the child its locks held by a thread the child does not have: OpenBLAS's server lock, a
 * model's lock. The child's next call that needs one waits forever. So a thread about to fork
 * first waits, holding the gate alone, until no thread is inside a call (and no new call starts)
 * and reopens it after the fork: mg_threads_fork_prepare before fork() (with the GIL released:
 * the calls being waited for may need it to finish), mg_threads_fork_parent in the parent after
 * it; the child starts with the gate open. */
void mg_threads_fork_prepare(void);
void mg_threads_fork_parent(void);
/* The CPUs this process may run on (its affinity mask), at least 1. */
int mg_cpu_count(void);

#endif
