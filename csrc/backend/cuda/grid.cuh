/* Grid shapes shared by the kernels of this backend: grid-stride indices and the launch sizes of
 * kernels that give each row of a [N, D] matrix to one block. */
#ifndef MG_BACKEND_CUDA_GRID_CUH
#define MG_BACKEND_CUDA_GRID_CUH

#include "cuda_common.h"

/* Global index and stride of a 1-D grid-stride loop. */
#define MG_GRID_INDEX ((long)blockIdx.x * blockDim.x + threadIdx.x)
#define MG_GRID_STRIDE ((long)gridDim.x * blockDim.x)

/* Threads for a block that owns one row of D floats: enough warps to cover the row once, at most
 * `cap` (a multiple of 32). */
static inline int mg_cuda_row_threads(int D, int cap) {
    int t = (D + 31) / 32 * 32;
    if (t < 32) t = 32;
    return t > cap ? cap : t;
}

/* Blocks for a loop over `rows` rows, one row per block per step (grid-stride beyond). */
static inline unsigned mg_cuda_row_blocks(long rows) {
    if (rows < 1) return 1;
    return rows > 65535L * 16 ? 65535u * 16 : (unsigned)rows;
}

/* Threads per block of the kernels that give each row to a team of lanes. */
#define MG_ROW_TEAM_THREADS 256

/* Team shape for rows of D floats: threadIdx.x covers the row (a warp at least, 256 threads at
 * most), threadIdx.y stacks rows so that narrow rows still fill a block. */
static inline dim3 mg_cuda_row_team(int D) {
    const int tx = mg_cuda_row_threads(D, MG_ROW_TEAM_THREADS);
    return dim3((unsigned)tx, (unsigned)(MG_ROW_TEAM_THREADS / tx));
}

/* Blocks for `rows` rows in teams of shape `team` (grid-stride beyond). */
static inline unsigned mg_cuda_team_blocks(long rows, dim3 team) {
    return mg_cuda_row_blocks((rows + team.y - 1) / team.y);
}

/* Row index and stride of a loop over rows by teams. */
#define MG_ROW_INDEX ((long)blockIdx.x * blockDim.y + threadIdx.y)
#define MG_ROW_STRIDE ((long)gridDim.x * blockDim.y)

#endif
