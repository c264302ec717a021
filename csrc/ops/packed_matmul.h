/* Linear layers for many rows (a full sequence): y = x W^T with a cache-blocked GEMM of our own.
 *
 * Specialised to the one layout the forward uses (row-major x[N, I] against PyTorch's
 * weight[O, I]): panels packed for a 6 x 16 AVX2 micro-kernel written in assembly, blocked for
 * the L1 and L2 caches, the output columns split between threads. On its own it runs at
 * OpenBLAS's sgemm rate (benchmarks/packed_matmul.c, 2-core Zen 3: 0.96x to 1.13x per shape of
 * SmolLM2-135M). In the model it is faster (embedding batches 1.1x in A/B runs,
 * docs/performance.md): around its kernel, OpenBLAS spent about 15 % of an embedding batch
 * zeroing the output before a beta = 0 product, spinning while its threads waited for each
 * other's packed panels, and packing; this GEMM writes its first pass over the output directly,
 * and its threads share nothing. */
#ifndef MG_OPS_PACKED_MATMUL_H
#define MG_OPS_PACKED_MATMUL_H

#include <stdbool.h>

/* The micro-kernel is x86-64 assembly with AVX2 and FMA. A CPU with AVX-512 keeps OpenBLAS: its
 * 512-bit sgemm kernels run twice as many FMAs per instruction as this 256-bit kernel (2-core
 * Zen 5, benchmarks/packed_matmul.c: this GEMM at 0.48x to 0.58x of sgemm; the SmolLM2 forward
 * 1.37x to 1.55x faster with OpenBLAS, docs/performance.md). */
#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define MG_HAVE_PACKED_MATMUL 1
#else
#define MG_HAVE_PACKED_MATMUL 0
#endif

/* The widest output the forward sends here. Wider products (a language-model head of 49152
 * columns) stay with OpenBLAS, which was 1.07x to 1.14x faster on them in the same runs. */
#define MG_PACKED_MAX_COLS 8192

/* out[N, O] (= or +=, by accumulate) inp[N, I] @ weight[O, I]^T. Returns false, having written
 * nothing, when this build has no AVX2 kernel or the packing buffers cannot be allocated; the
 * caller then uses the BLAS. Must not be called from inside an OpenMP parallel region. Every
 * output element is summed over I in the same order (the same blocks of I, each in ascending
 * order) whatever N and the thread count are, so a row's result does not depend on the other
 * rows of the call or on the threads. */
bool packed_matmul_forward(float *out, const float *inp, const float *weight, int N, int I, int O,
                           bool accumulate);

#endif
