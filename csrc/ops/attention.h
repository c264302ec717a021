/* Scaled dot-product attention under MAGNET's unified rule (docs/method.md).
 *
 * Query i may attend key j iff seg[i] == seg[j] (>= 0) and
 *     role[j] == CONTEXT  or  (role[i] == SPAN and j <= i).
 * All-SPAN is the causal LM, all-CONTEXT a bidirectional encoder, a mix is infilling. The rule
 * is evaluated per (query, key) pair from the roles and segments: no T x T mask exists. */
#ifndef MG_OPS_ATTENTION_H
#define MG_OPS_ATTENTION_H

#include <stdint.h>

/* C linkage for the CUDA checks (C++), which call the CPU ops as references. */
#ifdef __cplusplus
extern "C" {
#endif

enum { MG_ROLE_CONTEXT = 0, MG_ROLE_SPAN = 1 };

typedef struct {
    int B;         /* batch rows */
    int Tq;        /* queries per row */
    int Tk;        /* keys per row (keys 0..Tk-1) */
    int q_start;   /* key index of query 0: queries are keys q_start .. q_start+Tq-1 */
    int kv_stride; /* keys allocated per row in k/v (>= Tk), for KV caches */
    int Hq, Hkv, hd;
} attention_shape;

/* Queries scored together by the CPU kernel (the kernel's inner loop is unrolled for 4). */
#define ATT_GROUP 4
/* Largest head size the CPU kernel handles (checked when a model is built). */
#define MG_ATT_MAX_HD 512

/* Keys per row of the CPU kernel's transposed keys and scores: Tk rounded up to whole blocks
 * of ATT_KEY_BLOCK, so that the score kernel runs whole register blocks over a row's last keys
 * instead of a scalar loop (up to 15 keys per query group at a causal row's ragged end, and 9
 * of a 25-token sentence's 25). */
#define ATT_KEY_BLOCK 16
#define ATT_PADDED_KEYS(Tk) (((size_t)(Tk) + ATT_KEY_BLOCK - 1) / ATT_KEY_BLOCK * ATT_KEY_BLOCK)

/* Floats of scratch attention_forward needs. */
#define ATTENTION_SCRATCH(B, Hkv, hd, Tk, threads)                                                 \
    (((size_t)(B) * (Hkv) * (hd) + (size_t)(threads) * ATT_GROUP) * ATT_PADDED_KEYS(Tk))

/* out/q: [B, Tq, Hq, hd]; k/v: [B, kv_stride, Hkv, hd]; q_roles/q_seg: [B, Tq];
 * k_roles/k_seg: [B, kv_stride]. scratch: ATTENTION_SCRATCH(B, Hkv, hd, Tk, omp_get_max_threads()).
 * A padding query (seg < 0) gets a zero output. */
void attention_forward(float *out, const float *q, const float *k, const float *v,
                       const uint8_t *q_roles, const int32_t *q_seg, const uint8_t *k_roles,
                       const int32_t *k_seg, attention_shape s, float *scratch);

/* Floats of scratch attention_backward needs: per thread, K and V of one (row, kv head)
 * transposed to [hd, padded Tk], and the probabilities and their gradients of one query group. */
#define ATTENTION_BACKWARD_SCRATCH(hd, Tk, threads)                                                \
    ((size_t)(threads) * (2 * (size_t)(hd) + 2 * (size_t)ATT_GROUP) * ATT_PADDED_KEYS(Tk))

/* Backward of attention_forward, same shapes and rule, accumulating into dq [B, Tq, Hq, hd] and
 * dk/dv [B, kv_stride, Hkv, hd] (any may be NULL). Each query's probabilities P are recomputed
 * from q and k exactly as the forward computes them; with dP_ij = dO_i . V_j and
 * D_i = sum_j P_ij dP_ij (= dO_i . O_i, so O is not needed):
 *     dV_j += sum_i P_ij dO_i,  dS_ij = P_ij (dP_ij - D_i),
 *     dQ_i += scale sum_j dS_ij K_j,  dK_j += scale sum_i dS_ij Q_i.
 * Work is split by (batch row, kv head): one thread owns that slice of dK/dV and the dQ of the
 * query heads that share it (GQA groups sum into their kv head), and runs through it in a fixed
 * order, so the result is the same for any thread count. No T x T array exists.
 * scratch: ATTENTION_BACKWARD_SCRATCH(hd, Tk, omp_get_max_threads()). */
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                        const float *k, const float *v, const uint8_t *q_roles,
                        const int32_t *q_seg, const uint8_t *k_roles, const int32_t *k_seg,
                        attention_shape s, float *scratch);

#ifdef __cplusplus
}
#endif

#endif
