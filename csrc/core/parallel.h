/* When a loop is worth a parallel region: waking the OpenMP team costs microseconds (far more
 * on a busy machine), so small loops (a decode step, a tiny model) stay on the calling thread. */
#ifndef MG_CORE_PARALLEL_H
#define MG_CORE_PARALLEL_H

#define MG_PARALLEL_MIN_WORK 32768L
#define MG_WORTH_THREADS(work) ((long)(work) >= MG_PARALLEL_MIN_WORK)

#endif
