// Shared helpers of the nas-kernels CUDA sources.
#pragma once
#include <stdint.h>

// Every element index i in [0, n) exactly once, whatever the grid.
#define GRID_STRIDE(i, n)                                                              \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)(n);    \
         i += (size_t)blockDim.x * gridDim.x)

// Sum of `v` over the block, returned to every thread. The reduction tree is fixed by
// blockDim (a power of two, at most 1024), so results are deterministic.
template <typename A>
__device__ A block_sum(A v) {
    __shared__ A shared[1024];
    shared[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
        __syncthreads();
    }
    A total = shared[0];
    __syncthreads();
    return total;
}

