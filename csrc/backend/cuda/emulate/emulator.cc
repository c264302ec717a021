/* The CPU emulator's runtime and scheduler (see emulator.h for the execution model).
 *
 * Coroutines: every thread slot of a block owns a stack (64 KiB plus a guard page, allocated
 * once and reused by later launches). A slot is entered the first time with makecontext and
 * swapcontext; from then on, switches between the scheduler and a slot use _setjmp/_longjmp,
 * which, unlike swapcontext, make no system call (swapcontext saves the signal mask each time).
 * A slot whose thread finished parks in its entry loop, ready to run the next thread body, so a
 * launch costs no context creation once the slots exist. */

/* glibc's fortified longjmp refuses jumps between stacks ("longjmp causes uninitialized stack
 * frame"); jumping between coroutine stacks is the point here. */
#undef _FORTIFY_SOURCE
#define _FORTIFY_SOURCE 0

#include "emulator.h"

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <new>

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace {

enum class State { Ready, AtBlockBarrier, AtWarpBarrier, Done };

struct Slot {
    char *stack = nullptr; /* mmap'ed region: guard page, then the stack */
    bool entered = false;  /* has a live entry loop parked at env */
    ucontext_t uc;
    jmp_buf env;
    State state = State::Ready;
    unsigned warp_mask = 0; /* lanes this thread waits for at a warp barrier */
    uint3 idx{0, 0, 0};
};

struct Warp {
    uint64_t slots[2][32]; /* the lane exchange, double-buffered by phase */
    unsigned phase;
};

constexpr size_t kStackBytes = 64 * 1024;

std::mutex g_launch_mutex;
thread_local cudaError_t g_last_error = cudaSuccess;

Slot g_slots[MG_EMU_MAX_THREADS];
Warp g_warps[MG_EMU_MAX_THREADS / 32];
size_t g_page = 0;
int g_nthreads = 0;
Slot *g_current = nullptr;
jmp_buf g_sched_env;
ucontext_t g_sched_uc;
void (*g_fn)(void *) = nullptr;
void *g_arg = nullptr;
unsigned char *g_smem = nullptr; /* dynamic shared memory of the running launch */
size_t g_smem_cap = 0;
size_t g_smem_bytes = 0;

void record(cudaError_t e) {
    if (g_last_error == cudaSuccess) g_last_error = e;
}

/* Back to the scheduler; returns when the scheduler resumes this thread. */
void yield_to_scheduler(Slot *s) {
    if (_setjmp(s->env) == 0) _longjmp(g_sched_env, 1);
}

/* The entry loop of a slot: runs one thread body per resumption, forever. */
void slot_main() {
    for (;;) {
        g_fn(g_arg);
        Slot *s = g_current;
        s->state = State::Done;
        yield_to_scheduler(s);
    }
}

bool ensure_stack(Slot *s) {
    if (s->stack != nullptr) return true;
    if (g_page == 0) g_page = (size_t)sysconf(_SC_PAGESIZE);
    void *p = mmap(nullptr, kStackBytes + g_page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    /* A stack overflow then faults at once instead of corrupting the next slot's stack. */
    mprotect(p, g_page, PROT_NONE);
    s->stack = static_cast<char *>(p);
    return true;
}

/* Resumes slot s until it finishes or reaches a barrier. */
void resume(Slot *s) {
    g_current = s;
    threadIdx = s->idx;
    if (_setjmp(g_sched_env) != 0) return;
    if (s->entered) _longjmp(s->env, 1);
    s->entered = true;
    getcontext(&s->uc);
    s->uc.uc_stack.ss_sp = s->stack + g_page;
    s->uc.uc_stack.ss_size = kStackBytes;
    s->uc.uc_link = nullptr;
    makecontext(&s->uc, slot_main, 0);
    swapcontext(&g_sched_uc, &s->uc);
}

/* Releases the warp barriers whose lanes have all arrived; true if any was released. A waiting
 * lane is satisfied when every lane of its mask has arrived at a warp barrier or finished (a
 * finished lane can never arrive: CUDA leaves that undefined, we let the others go). */
bool release_warps() {
    bool released = false;
    for (int w = 0; w * 32 < g_nthreads; w++) {
        const int first = w * 32;
        const int n = g_nthreads - first < 32 ? g_nthreads - first : 32;
        unsigned waiting = 0, done = 0;
        for (int l = 0; l < n; l++) {
            const State st = g_slots[first + l].state;
            if (st == State::AtWarpBarrier)
                waiting |= 1u << l;
            else if (st == State::Done)
                done |= 1u << l;
        }
        if (waiting == 0) continue;
        const unsigned exists = n == 32 ? 0xffffffffu : (1u << n) - 1u;
        bool complete = true;
        for (int l = 0; l < n && complete; l++)
            if (waiting & (1u << l))
                complete = (g_slots[first + l].warp_mask & exists & ~(waiting | done)) == 0;
        if (!complete) continue;
        for (int l = 0; l < n; l++)
            if (waiting & (1u << l)) g_slots[first + l].state = State::Ready;
        g_warps[w].phase ^= 1u;
        released = true;
    }
    return released;
}

/* Runs one block to completion; false on deadlock. */
bool run_block() {
    for (int t = 0; t < g_nthreads; t++)
        g_slots[t].state = State::Ready;
    for (int w = 0; w * 32 < g_nthreads; w++)
        g_warps[w].phase = 0;
    for (;;) {
        for (int t = 0; t < g_nthreads; t++)
            if (g_slots[t].state == State::Ready) resume(&g_slots[t]);
        int done = 0, at_block = 0;
        for (int t = 0; t < g_nthreads; t++) {
            done += g_slots[t].state == State::Done;
            at_block += g_slots[t].state == State::AtBlockBarrier;
        }
        if (done == g_nthreads) return true;
        if (release_warps()) continue;
        if (at_block + done == g_nthreads) {
            /* __syncthreads counts the threads that have not exited, as on sm_70 and later. */
            for (int t = 0; t < g_nthreads; t++)
                if (g_slots[t].state == State::AtBlockBarrier) g_slots[t].state = State::Ready;
            continue;
        }
        /* Threads wait at barriers that can never complete: abandon the block. The parked
         * coroutines are mid-kernel, so their slots must be entered afresh next time. */
        for (int t = 0; t < g_nthreads; t++)
            if (g_slots[t].state != State::Done) g_slots[t].entered = false;
        return false;
    }
}

Slot *current_thread(const char *what) {
    if (g_current == nullptr) {
        std::fprintf(stderr, "magnet CUDA emulator: %s called outside a kernel\n", what);
        std::abort();
    }
    return g_current;
}

void wait_warp(unsigned mask) {
    Slot *s = current_thread("a warp barrier");
    s->state = State::AtWarpBarrier;
    s->warp_mask = mask;
    yield_to_scheduler(s);
}

} // namespace

/* ---------------- launches ---------------- */

void mg_emu_launch_erased(dim3 grid, dim3 block, size_t dynamic_smem, void (*fn)(void *),
                          void *arg) {
    const unsigned long long nthreads = (unsigned long long)block.x * block.y * block.z;
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || nthreads == 0 ||
        nthreads > MG_EMU_MAX_THREADS || block.z > 64 || grid.y > 65535 || grid.z > 65535 ||
        grid.x > 0x7fffffffu) {
        record(cudaErrorInvalidConfiguration);
        return;
    }
    if (dynamic_smem > MG_EMU_SMEM_OPTIN) {
        record(cudaErrorInvalidValue);
        return;
    }
    std::lock_guard<std::mutex> lock(g_launch_mutex);
    g_nthreads = (int)nthreads;
    for (int t = 0; t < g_nthreads; t++) {
        if (!ensure_stack(&g_slots[t])) {
            record(cudaErrorMemoryAllocation);
            return;
        }
    }
    if (dynamic_smem > g_smem_cap) {
        void *p = std::aligned_alloc(256, (dynamic_smem + 255) / 256 * 256);
        if (p == nullptr) {
            record(cudaErrorMemoryAllocation);
            return;
        }
        std::free(g_smem);
        g_smem = static_cast<unsigned char *>(p);
        g_smem_cap = dynamic_smem;
    }
    g_smem_bytes = dynamic_smem;
    g_fn = fn;
    g_arg = arg;
    gridDim = grid;
    blockDim = block;
    for (int t = 0; t < g_nthreads; t++) {
        const unsigned u = (unsigned)t;
        g_slots[t].idx = uint3{u % block.x, (u / block.x) % block.y, u / (block.x * block.y)};
    }
    bool ok = true;
    for (unsigned bz = 0; bz < grid.z && ok; bz++)
        for (unsigned by = 0; by < grid.y && ok; by++)
            for (unsigned bx = 0; bx < grid.x && ok; bx++) {
                blockIdx = uint3{bx, by, bz};
                if (g_smem != nullptr) std::memset(g_smem, 0xff, g_smem_bytes);
                ok = run_block();
            }
    g_current = nullptr;
    g_fn = nullptr;
    if (!ok) record(cudaErrorLaunchFailure);
}

void *mg_emu_dynamic_shared(void) {
    return g_smem;
}

/* ---------------- barriers, shuffles, votes ---------------- */

void __syncthreads(void) {
    Slot *s = current_thread("__syncthreads");
    s->state = State::AtBlockBarrier;
    yield_to_scheduler(s);
}

void __syncwarp(unsigned mask) {
    wait_warp(mask);
}

unsigned mg_emu_lane(void) {
    return (unsigned)(current_thread("a warp function") - g_slots) & 31u;
}

/* Writes into the buffer of the warp's current phase; the barrier's release flips the phase, so
 * the next exchange writes the other buffer while slow lanes may still read this one. A buffer is
 * reused only after a later barrier that every lane reading it has passed. */
uint64_t mg_emu_warp_exchange(unsigned mask, uint64_t bits, int src) {
    Slot *s = current_thread("a shuffle");
    const int id = (int)(s - g_slots);
    Warp &w = g_warps[id / 32];
    const unsigned phase = w.phase;
    w.slots[phase][id & 31] = bits;
    wait_warp(mask);
    const int first = id & ~31;
    if (src < 0 || src > 31 || first + src >= g_nthreads) return bits; /* no such lane */
    return w.slots[phase][src];
}

unsigned mg_emu_warp_ballot(unsigned mask, int predicate) {
    Slot *s = current_thread("a vote");
    const int id = (int)(s - g_slots);
    Warp &w = g_warps[id / 32];
    const unsigned phase = w.phase;
    w.slots[phase][id & 31] = predicate != 0;
    wait_warp(mask);
    const int first = id & ~31;
    unsigned out = 0;
    for (int l = 0; l < 32 && first + l < g_nthreads; l++)
        if ((mask & (1u << l)) && w.slots[phase][l]) out |= 1u << l;
    return out;
}

/* ---------------- runtime ---------------- */

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess:
        return "cudaSuccess";
    case cudaErrorInvalidValue:
        return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
        return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
        return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
        return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice:
        return "cudaErrorNoDevice";
    case cudaErrorLaunchFailure:
        return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess:
        return "no error";
    case cudaErrorInvalidValue:
        return "invalid argument";
    case cudaErrorMemoryAllocation:
        return "out of memory";
    case cudaErrorInvalidConfiguration:
        return "invalid configuration argument";
    case cudaErrorInvalidDevice:
        return "invalid device ordinal";
    case cudaErrorNoDevice:
        return "no CUDA-capable device is detected";
    case cudaErrorLaunchFailure:
        return "unspecified launch failure (emulator: threads of a block deadlocked at barriers)";
    }
    return "unknown error";
}

cudaError_t cudaGetLastError(void) {
    const cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) {
    return g_last_error;
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = nullptr;
    void *q = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
    if (q == nullptr) return cudaErrorMemoryAllocation;
    /* cudaMalloc does not clear memory: poison it so reads of unwritten memory show up. */
    std::memset(q, 0xff, bytes);
    *p = q;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
    std::free(p);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes) {
    *p = std::malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaFreeHost(void *p) {
    std::free(p);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    if ((int)kind < 0 || (int)kind > 4) return cudaErrorInvalidValue;
    if (bytes) std::memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t) {
    return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemset(void *dst, int value, size_t bytes) {
    if (bytes) std::memset(dst, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t) {
    return cudaMemset(dst, value, bytes);
}

struct CUstream_st {
    int unused;
};

cudaError_t cudaStreamCreate(cudaStream_t *stream) {
    *stream = new (std::nothrow) CUstream_st{0};
    return *stream ? cudaSuccess : cudaErrorMemoryAllocation;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags) {
    return flags <= cudaStreamNonBlocking ? cudaStreamCreate(stream) : cudaErrorInvalidValue;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    delete stream;
    return cudaSuccess;
}

/* Work runs when it is queued, so there is never anything to wait for. */
cudaError_t cudaStreamSynchronize(cudaStream_t) {
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    return device == 0 ? cudaSuccess : cudaErrorInvalidDevice;
}

cudaError_t cudaGetDevice(int *device) {
    *device = 0;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int *count) {
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device) {
    if (device != 0) return cudaErrorInvalidDevice;
    std::memset(prop, 0, sizeof *prop);
    std::snprintf(prop->name, sizeof prop->name, "emulated CUDA device (CPU)");
    prop->totalGlobalMem = (size_t)16 << 30;
    prop->sharedMemPerBlock = 48 * 1024;
    prop->sharedMemPerBlockOptin = MG_EMU_SMEM_OPTIN;
    prop->multiProcessorCount = 4;
    prop->maxThreadsPerBlock = MG_EMU_MAX_THREADS;
    prop->warpSize = 32;
    prop->major = 9;
    prop->minor = 0;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    cudaDeviceProp prop;
    const cudaError_t e = cudaGetDeviceProperties(&prop, device);
    if (e != cudaSuccess) return e;
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock:
        *value = prop.maxThreadsPerBlock;
        break;
    case cudaDevAttrMaxSharedMemoryPerBlock:
        *value = (int)prop.sharedMemPerBlock;
        break;
    case cudaDevAttrWarpSize:
        *value = prop.warpSize;
        break;
    case cudaDevAttrMultiProcessorCount:
        *value = prop.multiProcessorCount;
        break;
    case cudaDevAttrComputeCapabilityMajor:
        *value = prop.major;
        break;
    case cudaDevAttrComputeCapabilityMinor:
        *value = prop.minor;
        break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
        *value = (int)prop.sharedMemPerBlockOptin;
        break;
    default:
        return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}
