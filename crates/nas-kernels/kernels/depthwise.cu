// Depthwise 2-D convolution (one k x k filter per channel) on relu?(x): forward, input
// gradient and weight gradient. Mirrors nas-ops/src/depthwise.rs; x [n, c, h, w],
// w [c, 1, k, k], y [n, c, oh, ow], all contiguous.
#include "common.cuh"

struct DwGeom {
    int n, c, h, w, k, oh, ow, stride, pad, dil, relu;
};

template <typename T>
__device__ __forceinline__ T act(T v, int relu) {
    return (relu && v < T(0)) ? T(0) : v;
}

// One thread per output element.
template <typename T>
__device__ void depthwise_fwd(const T* __restrict__ x, const T* __restrict__ wt,
                              T* __restrict__ y, DwGeom g) {
    size_t total = (size_t)g.n * g.c * g.oh * g.ow;
    GRID_STRIDE(i, total) {
        int ow = i % g.ow;
        int oh = (i / g.ow) % g.oh;
        size_t plane = i / ((size_t)g.oh * g.ow);
        int ch = plane % g.c;
        const T* xp = x + plane * g.h * g.w;
        const T* wp = wt + (size_t)ch * g.k * g.k;
        T acc = T(0);
        for (int kh = 0; kh < g.k; ++kh) {
            int ih = oh * g.stride + kh * g.dil - g.pad;
            if (ih < 0 || ih >= g.h) continue;
            for (int kw = 0; kw < g.k; ++kw) {
                int iw = ow * g.stride + kw * g.dil - g.pad;
                if (iw < 0 || iw >= g.w) continue;
                acc += wp[kh * g.k + kw] * act(xp[ih * g.w + iw], g.relu);
            }
        }
        y[i] = acc;
    }
}

// One thread per input element: gathers every output its value reached (no atomics).
template <typename T>
__device__ void depthwise_dgrad(const T* __restrict__ dy, const T* __restrict__ wt,
                                const T* __restrict__ x, T* __restrict__ dx, DwGeom g) {
    size_t total = (size_t)g.n * g.c * g.h * g.w;
    GRID_STRIDE(i, total) {
        if (g.relu && x[i] <= T(0)) {
            dx[i] = T(0);
            continue;
        }
        int iw = i % g.w;
        int ih = (i / g.w) % g.h;
        size_t plane = i / ((size_t)g.h * g.w);
        int ch = plane % g.c;
        const T* dyp = dy + plane * g.oh * g.ow;
        const T* wp = wt + (size_t)ch * g.k * g.k;
        T acc = T(0);
        for (int kh = 0; kh < g.k; ++kh) {
            int num_h = ih + g.pad - kh * g.dil;  // = oh * stride
            if (num_h < 0 || num_h % g.stride) continue;
            int oh = num_h / g.stride;
            if (oh >= g.oh) continue;
            for (int kw = 0; kw < g.k; ++kw) {
                int num_w = iw + g.pad - kw * g.dil;
                if (num_w < 0 || num_w % g.stride) continue;
                int ow = num_w / g.stride;
                if (ow >= g.ow) continue;
                acc += wp[kh * g.k + kw] * dyp[oh * g.ow + ow];
            }
        }
        dx[i] = acc;
    }
}

// One block per (channel, tap); the block sums dy * relu?(x) over batch and space.
template <typename T>
__device__ void depthwise_wgrad(const T* __restrict__ dy, const T* __restrict__ x,
                                T* __restrict__ dw, DwGeom g) {
    int kk = g.k * g.k;
    for (int job = blockIdx.x; job < g.c * kk; job += gridDim.x) {
        int ch = job / kk;
        int tap = job % kk;
        int kh = tap / g.k, kw = tap % g.k;
        int per_image = g.oh * g.ow;
        int count = g.n * per_image;
        T acc = T(0);
        for (int j = threadIdx.x; j < count; j += blockDim.x) {
            int img = j / per_image;
            int o = j % per_image;
            int oh = o / g.ow, ow = o % g.ow;
            int ih = oh * g.stride + kh * g.dil - g.pad;
            int iw = ow * g.stride + kw * g.dil - g.pad;
            if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
            size_t plane = (size_t)img * g.c + ch;
            acc += dy[plane * per_image + o] * act(x[plane * g.h * g.w + ih * g.w + iw], g.relu);
        }
        T total = block_sum(acc);
        if (threadIdx.x == 0) dw[job] = total;
    }
}

#define DEPTHWISE_KERNELS(T, S)                                                          \
    extern "C" __global__ void depthwise_fwd_##S(const T* x, const T* wt, T* y, DwGeom g) { \
        depthwise_fwd<T>(x, wt, y, g);                                                   \
    }                                                                                    \
    extern "C" __global__ void depthwise_dgrad_##S(const T* dy, const T* wt, const T* x,  \
                                                   T* dx, DwGeom g) {                    \
        depthwise_dgrad<T>(dy, wt, x, dx, g);                                            \
    }                                                                                    \
    extern "C" __global__ void depthwise_wgrad_##S(const T* dy, const T* x, T* dw,        \
                                                   DwGeom g) {                           \
        depthwise_wgrad<T>(dy, x, dw, g);                                                \
    }

DEPTHWISE_KERNELS(float, f32)
DEPTHWISE_KERNELS(double, f64)
