// Soft-max cross-entropy of a decoder with bias, as nas-ops/src/cross_entropy.rs: logits
// z [n, v], bias b [v], targets t [n] (u32). The forward writes each row's log-sum-exp
// (f64) and loss; the mean is a second, one-block reduction. The backward writes
// dz = scale (softmax(z + b) - onehot(t)) and db = sum over rows of dz.
#include "common.cuh"

template <typename A>
__device__ A block_max(A v) {
    __shared__ A shared[1024];
    shared[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) shared[threadIdx.x] = fmax(shared[threadIdx.x], shared[threadIdx.x + s]);
        __syncthreads();
    }
    A m = shared[0];
    __syncthreads();
    return m;
}

// One block per row: lse[row] and loss[row] = lse - (z + b)[t].
template <typename T>
__device__ void xent_rows(const T* __restrict__ z, const T* __restrict__ bias,
                          const uint32_t* __restrict__ t, double* __restrict__ lse,
                          double* __restrict__ loss, int n, int v) {
    for (int row = blockIdx.x; row < n; row += gridDim.x) {
        const T* zr = z + (size_t)row * v;
        double m = -INFINITY;
        for (int c = threadIdx.x; c < v; c += blockDim.x) m = fmax(m, (double)(zr[c] + bias[c]));
        m = block_max(m);
        double sum = 0.0;
        for (int c = threadIdx.x; c < v; c += blockDim.x) sum += exp((double)(zr[c] + bias[c]) - m);
        sum = block_sum(sum);
        if (threadIdx.x == 0) {
            double l = m + log(sum);
            lse[row] = l;
            loss[row] = l - (double)(zr[t[row]] + bias[t[row]]);
        }
    }
}

// One block: out[0] = mean of loss[0..n].
template <typename T>
__device__ void xent_mean(const double* __restrict__ loss, T* __restrict__ out, int n) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) acc += loss[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[0] = (T)(acc / n);
}

template <typename T>
__device__ void xent_dlogits(const T* __restrict__ z, const T* __restrict__ bias,
                             const uint32_t* __restrict__ t, const double* __restrict__ lse,
                             T* __restrict__ dz, double scale, int n, int v) {
    GRID_STRIDE(i, (size_t)n * v) {
        size_t row = i / v, c = i % v;
        T d = (T)scale * exp(z[i] + bias[c] - (T)lse[row]);
        if (c == t[row]) d -= (T)scale;
        dz[i] = d;
    }
}

// One thread per column: db[c] = sum over rows of dz[row, c] (f64, rows in order).
template <typename T>
__device__ void xent_dbias(const T* __restrict__ dz, T* __restrict__ db, int n, int v) {
    GRID_STRIDE(c, (size_t)v) {
        double acc = 0.0;
        for (int row = 0; row < n; ++row) acc += (double)dz[(size_t)row * v + c];
        db[c] = (T)acc;
    }
}

#define XENT_KERNELS(T, S)                                                                  \
    extern "C" __global__ void xent_rows_##S(const T* z, const T* bias, const uint32_t* t,   \
                                             double* lse, double* loss, int n, int v) {     \
        xent_rows<T>(z, bias, t, lse, loss, n, v);                                          \
    }                                                                                       \
    extern "C" __global__ void xent_mean_##S(const double* loss, T* out, int n) {           \
        xent_mean<T>(loss, out, n);                                                         \
    }                                                                                       \
    extern "C" __global__ void xent_dlogits_##S(const T* z, const T* bias, const uint32_t* t,\
                                                const double* lse, T* dz, double scale,     \
                                                int n, int v) {                             \
        xent_dlogits<T>(z, bias, t, lse, dz, scale, n, v);                                  \
    }                                                                                       \
    extern "C" __global__ void xent_dbias_##S(const T* dz, T* db, int n, int v) {           \
        xent_dbias<T>(dz, db, n, v);                                                        \
    }

XENT_KERNELS(float, f32)
XENT_KERNELS(double, f64)
