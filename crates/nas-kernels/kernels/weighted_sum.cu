// The MixedOp's weighted sum y = sum_k w[k] * o[k] over k stacked outputs of `size`
// elements each (contiguous), and its two gradients. Mirrors nas-ops/src/weighted_sum.rs.
#include "common.cuh"

template <typename T>
__device__ void ws_fwd(const T* __restrict__ o, const T* __restrict__ w, T* __restrict__ y,
                       int k, size_t size) {
    GRID_STRIDE(i, size) {
        T acc = T(0);
        for (int j = 0; j < k; ++j) acc += w[j] * o[(size_t)j * size + i];
        y[i] = acc;
    }
}

// One block per weight: dw[j] = sum(dy * o[j]), accumulated in f64.
template <typename T>
__device__ void ws_wgrad(const T* __restrict__ dy, const T* __restrict__ o,
                         T* __restrict__ dw, int k, size_t size) {
    for (int j = blockIdx.x; j < k; j += gridDim.x) {
        double acc = 0.0;
        for (size_t i = threadIdx.x; i < size; i += blockDim.x)
            acc += (double)(dy[i] * o[(size_t)j * size + i]);
        double total = block_sum(acc);
        if (threadIdx.x == 0) dw[j] = (T)total;
    }
}

// d_outputs[j] = w[j] * dy.
template <typename T>
__device__ void ws_ograd(const T* __restrict__ dy, const T* __restrict__ w,
                         T* __restrict__ dout, int k, size_t size) {
    GRID_STRIDE(i, (size_t)k * size) { dout[i] = w[i / size] * dy[i % size]; }
}

#define WS_KERNELS(T, S)                                                                  \
    extern "C" __global__ void ws_fwd_##S(const T* o, const T* w, T* y, int k,             \
                                          size_t size) {                                  \
        ws_fwd<T>(o, w, y, k, size);                                                      \
    }                                                                                     \
    extern "C" __global__ void ws_wgrad_##S(const T* dy, const T* o, T* dw, int k,         \
                                            size_t size) {                                \
        ws_wgrad<T>(dy, o, dw, k, size);                                                  \
    }                                                                                     \
    extern "C" __global__ void ws_ograd_##S(const T* dy, const T* w, T* dout, int k,       \
                                            size_t size) {                                \
        ws_ograd<T>(dy, w, dout, k, size);                                                \
    }

WS_KERNELS(float, f32)
WS_KERNELS(double, f64)
