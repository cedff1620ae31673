// CPU grid emulator for runtime/cuda/kernels.cu (tests only).
//
// kernels.cu is written without shared memory, warp intrinsics or __syncthreads, so each CUDA
// thread is an independent call: this file defines the CUDA keywords away, includes the very same
// source, and runs every (block, thread) of a launch in a loop. Arguments arrive exactly as
// cuLaunchKernel takes them (void** kernelParams), so the Python packing is exercised too.
#include <cstring>
#include <utility>

struct dlt_dim3 { unsigned x, y, z; };
static dlt_dim3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict

#include "kernels.cu"

template <typename... A, std::size_t... I>
static void dlt_call(void (*kernel)(A...), void** params, std::index_sequence<I...>) {
    kernel(*static_cast<A*>(params[I])...);
}

template <typename... A>
static void dlt_run(void (*kernel)(A...), unsigned gx, unsigned gy, unsigned bx, unsigned by, void** params) {
    gridDim = {gx, gy, 1};
    blockDim = {bx, by, 1};
    for (unsigned byi = 0; byi < gy; ++byi)
        for (unsigned bxi = 0; bxi < gx; ++bxi)
            for (unsigned ty = 0; ty < by; ++ty)
                for (unsigned tx = 0; tx < bx; ++tx) {
                    blockIdx = {bxi, byi, 0};
                    threadIdx = {tx, ty, 0};
                    dlt_call(kernel, params, std::index_sequence_for<A...>{});
                }
}

extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned bx, unsigned by, void** params) {
#define DLT_CASE(k) if (!std::strcmp(name, #k)) { dlt_run(k, gx, gy, bx, by, params); return 0; }
    DLT_KERNELS(DLT_CASE)
#undef DLT_CASE
    return -1;
}
