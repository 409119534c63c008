// Training-mode batch norm over [n, c, hw] (contiguous): per-channel statistics, the
// normalisation, and the backward's reduction and input gradient. Mirrors
// nas-ops/src/batch_norm.rs: statistics and reductions accumulate in f64.
#include "common.cuh"

// One block per channel: stats[ch] = mean, stats[c + ch] = biased variance (two passes).
template <typename T>
__device__ void bn_stats(const T* __restrict__ x, double* __restrict__ stats, int n, int c,
                         int hw) {
    for (int ch = blockIdx.x; ch < c; ch += gridDim.x) {
        size_t count = (size_t)n * hw;
        double sum = 0.0;
        for (size_t j = threadIdx.x; j < count; j += blockDim.x) {
            size_t img = j / hw, p = j % hw;
            sum += (double)x[(img * c + ch) * hw + p];
        }
        double mean = block_sum(sum) / (double)count;
        double sq = 0.0;
        for (size_t j = threadIdx.x; j < count; j += blockDim.x) {
            size_t img = j / hw, p = j % hw;
            double d = (double)x[(img * c + ch) * hw + p] - mean;
            sq += d * d;
        }
        double var = block_sum(sq) / (double)count;
        if (threadIdx.x == 0) {
            stats[ch] = mean;
            stats[c + ch] = var;
        }
    }
}

// y = x * scale[ch] + shift[ch]; coef = [scale; shift] (2c values).
template <typename T>
__device__ void bn_normalise(const T* __restrict__ x, const double* __restrict__ coef,
                             T* __restrict__ y, int n, int c, int hw) {
    size_t total = (size_t)n * c * hw;
    GRID_STRIDE(i, total) {
        int ch = (i / hw) % c;
        y[i] = x[i] * (T)coef[ch] + (T)coef[c + ch];
    }
}

// One block per channel: out[ch] = sum(dy), out[c + ch] = sum(dy * xhat), with
// saved = [mean; inv_std] (2c values).
template <typename T>
__device__ void bn_reduce(const T* __restrict__ dy, const T* __restrict__ x,
                          const double* __restrict__ saved, T* __restrict__ out, int n, int c,
                          int hw) {
    for (int ch = blockIdx.x; ch < c; ch += gridDim.x) {
        double mean = saved[ch], inv = saved[c + ch];
        size_t count = (size_t)n * hw;
        double a = 0.0, b = 0.0;
        for (size_t j = threadIdx.x; j < count; j += blockDim.x) {
            size_t img = j / hw, p = j % hw;
            size_t at = (img * c + ch) * hw + p;
            double d = (double)dy[at];
            a += d;
            b += d * ((double)x[at] - mean) * inv;
        }
        double sa = block_sum(a);
        double sb = block_sum(b);
        if (threadIdx.x == 0) {
            out[ch] = (T)sa;
            out[c + ch] = (T)sb;
        }
    }
}

// dx = k * dy + p * x + q per channel, from saved = [mean; inv_std; gamma] (3c values)
// and sums = [sum(dy); sum(dy * xhat)] (2c values of T).
template <typename T>
__device__ void bn_dgrad(const T* __restrict__ dy, const T* __restrict__ x,
                         const T* __restrict__ sums, const double* __restrict__ saved,
                         T* __restrict__ dx, int n, int c, int hw) {
    size_t total = (size_t)n * c * hw;
    double m = (double)n * hw;
    GRID_STRIDE(i, total) {
        int ch = (i / hw) % c;
        double mean = saved[ch], inv = saved[c + ch], gamma = saved[2 * c + ch];
        double k = gamma * inv;
        double a = (double)sums[ch] / m, b = (double)sums[c + ch] / m;
        double p = -k * b * inv;
        double q = -k * a + k * b * inv * mean;
        dx[i] = (T)k * dy[i] + (T)p * x[i] + (T)q;
    }
}

#define BN_KERNELS(T, S)                                                                  \
    extern "C" __global__ void bn_stats_##S(const T* x, double* stats, int n, int c,       \
                                            int hw) {                                     \
        bn_stats<T>(x, stats, n, c, hw);                                                  \
    }                                                                                     \
    extern "C" __global__ void bn_normalise_##S(const T* x, const double* coef, T* y,      \
                                                int n, int c, int hw) {                   \
        bn_normalise<T>(x, coef, y, n, c, hw);                                            \
    }                                                                                     \
    extern "C" __global__ void bn_reduce_##S(const T* dy, const T* x, const double* saved, \
                                             T* out, int n, int c, int hw) {              \
        bn_reduce<T>(dy, x, saved, out, n, c, hw);                                        \
    }                                                                                     \
    extern "C" __global__ void bn_dgrad_##S(const T* dy, const T* x, const T* sums,        \
                                            const double* saved, T* dx, int n, int c,     \
                                            int hw) {                                     \
        bn_dgrad<T>(dy, x, sums, saved, dx, n, c, hw);                                    \
    }

BN_KERNELS(float, f32)
BN_KERNELS(double, f64)
