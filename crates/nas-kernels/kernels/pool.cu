// Max and average 2-D pooling with padding: forward and backward. Mirrors
// nas-ops/src/pool.rs; x [n, c, h, w], y [n, c, oh, ow], contiguous. Max pooling saves
// the plane-local index of the first maximum (row-major), as PyTorch picks it; padding
// never wins. Average pooling divides by the covered input positions unless
// count_include_pad is set.
#include "common.cuh"

struct PoolGeom {
    int n, c, h, w, oh, ow, kernel, stride, pad, count_include_pad;
};

__device__ __forceinline__ void span(int o, int size, const PoolGeom& g, int* lo, int* hi) {
    int start = o * g.stride - g.pad;
    int end = min(start + g.kernel, size);
    *lo = max(start, 0);
    *hi = max(end, 0);
}

__device__ __forceinline__ int divisor(int oh, int ow, int rows, int cols, const PoolGeom& g) {
    if (!g.count_include_pad) return rows * cols;
    int sh = oh * g.stride, sw = ow * g.stride;
    int eh = min(sh + g.kernel, g.h + 2 * g.pad), ew = min(sw + g.kernel, g.w + 2 * g.pad);
    return (eh - sh) * (ew - sw);
}

// Output rows (or columns) whose window covers input index `i` along a side: [lo, hi).
__device__ __forceinline__ void covering(int i, int out, const PoolGeom& g, int* lo, int* hi) {
    // o * stride - pad <= i  and  i < o * stride - pad + kernel
    int a = i + g.pad - g.kernel + 1;  // o * stride >= a
    *lo = a <= 0 ? 0 : (a + g.stride - 1) / g.stride;
    *hi = min((i + g.pad) / g.stride + 1, out);
}

template <typename T>
__device__ void pool_max_fwd(const T* __restrict__ x, T* __restrict__ y,
                             uint32_t* __restrict__ arg, PoolGeom g) {
    size_t total = (size_t)g.n * g.c * g.oh * g.ow;
    GRID_STRIDE(i, total) {
        int ow = i % g.ow;
        int oh = (i / g.ow) % g.oh;
        size_t plane = i / ((size_t)g.oh * g.ow);
        const T* xp = x + plane * g.h * g.w;
        int r0, r1, c0, c1;
        span(oh, g.h, g, &r0, &r1);
        span(ow, g.w, g, &c0, &c1);
        T best = -INFINITY;
        int at = r0 * g.w + c0;
        for (int ih = r0; ih < r1; ++ih) {
            for (int iw = c0; iw < c1; ++iw) {
                T v = xp[ih * g.w + iw];
                if (v > best || (isnan(v) && !isnan(best))) {
                    best = v;
                    at = ih * g.w + iw;
                }
            }
        }
        y[i] = best;
        arg[i] = (uint32_t)at;
    }
}

template <typename T>
__device__ void pool_avg_fwd(const T* __restrict__ x, T* __restrict__ y, PoolGeom g) {
    size_t total = (size_t)g.n * g.c * g.oh * g.ow;
    GRID_STRIDE(i, total) {
        int ow = i % g.ow;
        int oh = (i / g.ow) % g.oh;
        size_t plane = i / ((size_t)g.oh * g.ow);
        const T* xp = x + plane * g.h * g.w;
        int r0, r1, c0, c1;
        span(oh, g.h, g, &r0, &r1);
        span(ow, g.w, g, &c0, &c1);
        T sum = T(0);
        for (int ih = r0; ih < r1; ++ih)
            for (int iw = c0; iw < c1; ++iw) sum += xp[ih * g.w + iw];
        y[i] = sum / T(divisor(oh, ow, r1 - r0, c1 - c0, g));
    }
}

// Backward passes gather, per input element, over the outputs whose window covers it, in
// ascending output order (the order of the CPU kernel's scatter): no atomics.
template <typename T>
__device__ void pool_max_bwd(const T* __restrict__ dy, const uint32_t* __restrict__ arg,
                             T* __restrict__ dx, PoolGeom g) {
    size_t total = (size_t)g.n * g.c * g.h * g.w;
    GRID_STRIDE(i, total) {
        int iw = i % g.w;
        int ih = (i / g.w) % g.h;
        size_t plane = i / ((size_t)g.h * g.w);
        size_t base = plane * g.oh * g.ow;
        uint32_t self = (uint32_t)(ih * g.w + iw);
        int r0, r1, c0, c1;
        covering(ih, g.oh, g, &r0, &r1);
        covering(iw, g.ow, g, &c0, &c1);
        T acc = T(0);
        for (int oh = r0; oh < r1; ++oh)
            for (int ow = c0; ow < c1; ++ow) {
                size_t o = base + oh * g.ow + ow;
                if (arg[o] == self) acc += dy[o];
            }
        dx[i] = acc;
    }
}

template <typename T>
__device__ void pool_avg_bwd(const T* __restrict__ dy, T* __restrict__ dx, PoolGeom g) {
    size_t total = (size_t)g.n * g.c * g.h * g.w;
    GRID_STRIDE(i, total) {
        int iw = i % g.w;
        int ih = (i / g.w) % g.h;
        size_t plane = i / ((size_t)g.h * g.w);
        size_t base = plane * g.oh * g.ow;
        int r0, r1, c0, c1;
        covering(ih, g.oh, g, &r0, &r1);
        covering(iw, g.ow, g, &c0, &c1);
        T acc = T(0);
        for (int oh = r0; oh < r1; ++oh) {
            int a0, a1;
            span(oh, g.h, g, &a0, &a1);
            for (int ow = c0; ow < c1; ++ow) {
                int b0, b1;
                span(ow, g.w, g, &b0, &b1);
                acc += dy[base + oh * g.ow + ow] / T(divisor(oh, ow, a1 - a0, b1 - b0, g));
            }
        }
        dx[i] = acc;
    }
}

#define POOL_KERNELS(T, S)                                                                \
    extern "C" __global__ void pool_max_fwd_##S(const T* x, T* y, uint32_t* arg,           \
                                                PoolGeom g) {                             \
        pool_max_fwd<T>(x, y, arg, g);                                                    \
    }                                                                                     \
    extern "C" __global__ void pool_avg_fwd_##S(const T* x, T* y, PoolGeom g) {           \
        pool_avg_fwd<T>(x, y, g);                                                         \
    }                                                                                     \
    extern "C" __global__ void pool_max_bwd_##S(const T* dy, const uint32_t* arg, T* dx,   \
                                                PoolGeom g) {                             \
        pool_max_bwd<T>(dy, arg, dx, g);                                                  \
    }                                                                                     \
    extern "C" __global__ void pool_avg_bwd_##S(const T* dy, T* dx, PoolGeom g) {         \
        pool_avg_bwd<T>(dy, dx, g);                                                       \
    }

POOL_KERNELS(float, f32)
POOL_KERNELS(double, f64)
