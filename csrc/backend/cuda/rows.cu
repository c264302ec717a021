/* Data movement within the model layer (csrc/backend/backend.h): sums of whole buffers, row
 * masks, gathers and scatters by index, strided row copies, and the placement of a step's
 * q/k/v rows into the attention's buffers. No arithmetic beyond one addition per element, so
 * results are bit-identical to plain loops on the CPU. Row kernels give each row to a team of
 * lanes (grid.cuh), coalesced along the row. */
#include "cuda_common.h"
#include "elementwise.cuh"
#include "grid.cuh"

struct AddInplace {
    float *x;
    const float *y;
    __device__ void at(long i) const {
        x[i] += y[i];
    }
    __device__ void at4(long i) const {
        mg_float4 a = mg_load4(x + i);
        const mg_float4 b = mg_load4(y + i);
        a.x += b.x;
        a.y += b.y;
        a.z += b.z;
        a.w += b.w;
        mg_store4(x + i, a);
    }
};

extern "C" void cuda_add_inplace(const mg_backend *be, float *x, const float *y, long n) {
    const AddInplace op = {x, y};
    MG_ELEMENTWISE(AddInplace, op, n, mg_aligned16(x) && mg_aligned16(y), be);
}

__global__ void zero_padding_rows_kernel(float *x, const int32_t *segments, long N, int D) {
    for (long n = MG_ROW_INDEX; n < N; n += MG_ROW_STRIDE) {
        if (segments[n] >= 0) continue;
        float *r = x + n * D;
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            r[i] = 0.0f;
    }
}

__global__ void gather_rows_kernel(float *out, const float *inp, const int64_t *idx, long n,
                                   int D) {
    for (long r = MG_ROW_INDEX; r < n; r += MG_ROW_STRIDE) {
        const float *src = inp + idx[r] * D;
        float *dst = out + r * D;
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            dst[i] = src[i];
    }
}

/* The indices are distinct, so no two rows write the same place: plain adds, no atomics. */
__global__ void scatter_add_rows_kernel(float *out, const float *inp, const int64_t *idx, long n,
                                        int D) {
    for (long r = MG_ROW_INDEX; r < n; r += MG_ROW_STRIDE) {
        const float *src = inp + r * D;
        float *dst = out + idx[r] * D;
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            dst[i] += src[i];
    }
}

__global__ void copy_rows_kernel(float *out, long ld_out, const float *inp, long ld_in, long n,
                                 int D) {
    for (long r = MG_ROW_INDEX; r < n; r += MG_ROW_STRIDE) {
        const float *src = inp + r * ld_in;
        float *dst = out + r * ld_out;
        for (int i = threadIdx.x; i < D; i += blockDim.x)
            dst[i] = src[i];
    }
}

/* One row n = b * Tq + t of the step: its q row, and its k and v rows at slot length + t of
 * sequence b in the cache. A missing bias adds nothing (not +0.0f, which would turn -0 to +0). */
__global__ void qkv_split_kernel(float *q, float *k_rows, float *v_rows, const float *src_q,
                                 const float *src_k, const float *src_v, long ld_q, long ld_kv,
                                 const float *bq, const float *bk, const float *bv, int B, int Tq,
                                 int QD, int KD, int capacity, int length) {
    const long rows = (long)B * Tq;
    for (long n = MG_ROW_INDEX; n < rows; n += MG_ROW_STRIDE) {
        const long b = n / Tq, t = n % Tq;
        const float *sq = src_q + n * ld_q;
        float *dq = q + n * QD;
        for (int i = threadIdx.x; i < QD; i += blockDim.x)
            dq[i] = bq != NULL ? sq[i] + bq[i] : sq[i];
        const long slot = (b * capacity + length + t) * KD;
        const float *sk = src_k + n * ld_kv, *sv = src_v + n * ld_kv;
        float *dk = k_rows + slot, *dv = v_rows + slot;
        for (int i = threadIdx.x; i < KD; i += blockDim.x) {
            dk[i] = bk != NULL ? sk[i] + bk[i] : sk[i];
            dv[i] = bv != NULL ? sv[i] + bv[i] : sv[i];
        }
    }
}

extern "C" void cuda_zero_padding_rows(const mg_backend *be, float *x, const int32_t *segments,
                                       long N, int D) {
    if (N <= 0 || D <= 0) return;
    const dim3 team = mg_cuda_row_team(D);
    MG_LAUNCH(zero_padding_rows_kernel, mg_cuda_team_blocks(N, team), team, 0, be, x, segments, N,
              D);
}

extern "C" void cuda_gather_rows(const mg_backend *be, float *out, const float *inp,
                                 const int64_t *idx, long n, int D) {
    if (n <= 0 || D <= 0) return;
    const dim3 team = mg_cuda_row_team(D);
    MG_LAUNCH(gather_rows_kernel, mg_cuda_team_blocks(n, team), team, 0, be, out, inp, idx, n, D);
}

extern "C" void cuda_scatter_add_rows(const mg_backend *be, float *out, const float *inp,
                                      const int64_t *idx, long n, int D) {
    if (n <= 0 || D <= 0) return;
    const dim3 team = mg_cuda_row_team(D);
    MG_LAUNCH(scatter_add_rows_kernel, mg_cuda_team_blocks(n, team), team, 0, be, out, inp, idx, n,
              D);
}

extern "C" void cuda_copy_rows(const mg_backend *be, float *out, long ld_out, const float *inp,
                               long ld_in, long n, int D) {
    if (n <= 0 || D <= 0) return;
    const dim3 team = mg_cuda_row_team(D);
    MG_LAUNCH(copy_rows_kernel, mg_cuda_team_blocks(n, team), team, 0, be, out, ld_out, inp, ld_in,
              n, D);
}

extern "C" void cuda_qkv_split(const mg_backend *be, float *q, float *k_rows, float *v_rows,
                               const float *src_q, const float *src_k, const float *src_v,
                               long ld_q, long ld_kv, const float *bq, const float *bk,
                               const float *bv, int B, int Tq, int QD, int KD, int capacity,
                               int length) {
    if (B <= 0 || Tq <= 0 || (QD <= 0 && KD <= 0)) return;
    const dim3 team = mg_cuda_row_team(QD > KD ? QD : KD);
    MG_LAUNCH(qkv_split_kernel, mg_cuda_team_blocks((long)B * Tq, team), team, 0, be, q, k_rows,
              v_rows, src_q, src_k, src_v, ld_q, ld_kv, bq, bk, bv, B, Tq, QD, KD, capacity,
              length);
}
