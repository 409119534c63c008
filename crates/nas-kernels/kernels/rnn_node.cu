// The DARTS recurrent node update and its backward. Mirrors nas-ops/src/rnn_node.rs:
// states s [n, B, H], projections ch [n, B, 2H] (gate pre-activation c, then candidate
// pre-activation h), weights p [n, 5] over none, tanh, relu, sigmoid, identity; out [B, H]:
//   out[b, x] = sum_j P_j s + sigmoid(c) (F_j - P_j s),
// with P_j = sum_k p_jk and F_j = sum_k p_jk f_k(h) over the four activations.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ T sigm(T x) {
    return T(1) / (T(1) + exp(-x));
}

template <typename T>
struct Weights {
    T tanh_, relu_, sig, id, total;
    __device__ Weights(const T* row)
        : tanh_(row[1]), relu_(row[2]), sig(row[3]), id(row[4]),
          total(row[1] + row[2] + row[3] + row[4]) {}
    __device__ bool any() const {
        return tanh_ != T(0) || relu_ != T(0) || sig != T(0) || id != T(0);
    }
};

// One thread per output element; a state whose weights are all zero is skipped (as on
// the CPU: it adds exactly zero).
template <typename T>
__device__ void rnn_node_fwd(const T* __restrict__ s, const T* __restrict__ ch,
                             const T* __restrict__ p, T* __restrict__ out, int n, int b, int h) {
    GRID_STRIDE(i, (size_t)b * h) {
        size_t bi = i / h, x = i % h;
        T acc = T(0);
        for (int j = 0; j < n; ++j) {
            Weights<T> w(p + 5 * j);
            if (!w.any()) continue;
            size_t row = (size_t)j * b + bi;
            T sv = s[row * h + x];
            T cv = ch[row * 2 * h + x];
            T hv = ch[row * 2 * h + h + x];
            T f = w.tanh_ * tanh(hv) + w.relu_ * (hv > T(0) ? hv : T(0)) + w.sig * sigm(hv) +
                  w.id * hv;
            T ps = w.total * sv;
            acc += ps + sigm(cv) * (f - ps);
        }
        out[i] = acc;
    }
}

// `grads` is one buffer: d s [n, B, H], then d ch [n, B, 2H], then d p [n, 5] (written by
// rnn_node_pgrad). One thread per element of s.
template <typename T>
__device__ void rnn_node_bwd(const T* __restrict__ dy, const T* __restrict__ s,
                             const T* __restrict__ ch, const T* __restrict__ p,
                             T* __restrict__ grads, int n, int b, int h) {
    size_t total = (size_t)n * b * h;
    T* ds = grads;
    T* dch = grads + total;
    GRID_STRIDE(i, total) {
        size_t row = i / h, x = i % h;
        size_t j = row / b, bi = row % b;
        Weights<T> w(p + 5 * j);
        T gv = dy[bi * h + x], sv = s[i];
        T cv = ch[row * 2 * h + x], hv = ch[row * 2 * h + h + x];
        T gate = sigm(cv);
        T t = tanh(hv), r = hv > T(0) ? hv : T(0), sh = sigm(hv);
        T f = w.tanh_ * t + w.relu_ * r + w.sig * sh + w.id * hv;
        T ps = w.total * sv;
        ds[i] = gv * w.total * (T(1) - gate);
        dch[row * 2 * h + x] = gv * gate * (T(1) - gate) * (f - ps);
        T relu_slope = hv > T(0) ? w.relu_ : T(0);
        T df = w.tanh_ * (T(1) - t * t) + relu_slope + w.sig * sh * (T(1) - sh) + w.id;
        dch[row * 2 * h + h + x] = gv * gate * df;
    }
}

// One block per state j: d p_jk = sum_{b, x} g (s + sigmoid(c) (f_k(h) - s)) for the four
// activations, accumulated in f64; d p_j0 (none) = 0.
template <typename T>
__device__ void rnn_node_pgrad(const T* __restrict__ dy, const T* __restrict__ s,
                               const T* __restrict__ ch, T* __restrict__ grads, int n, int b,
                               int h) {
    size_t total = (size_t)n * b * h;
    T* dp = grads + 3 * total;
    for (int j = blockIdx.x; j < n; j += gridDim.x) {
        double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
        for (size_t e = threadIdx.x; e < (size_t)b * h; e += blockDim.x) {
            size_t bi = e / h, x = e % h;
            size_t row = (size_t)j * b + bi;
            T gv = dy[bi * h + x], sv = s[row * h + x];
            T cv = ch[row * 2 * h + x], hv = ch[row * 2 * h + h + x];
            T g_gate = gv * sigm(cv);
            T base = gv * (T(1) - sigm(cv)) * sv;
            a0 += (double)(base + g_gate * tanh(hv));
            a1 += (double)(base + g_gate * (hv > T(0) ? hv : T(0)));
            a2 += (double)(base + g_gate * sigm(hv));
            a3 += (double)(base + g_gate * hv);
        }
        double s0 = block_sum(a0), s1 = block_sum(a1), s2 = block_sum(a2), s3 = block_sum(a3);
        if (threadIdx.x == 0) {
            dp[5 * j] = T(0);
            dp[5 * j + 1] = (T)s0;
            dp[5 * j + 2] = (T)s1;
            dp[5 * j + 3] = (T)s2;
            dp[5 * j + 4] = (T)s3;
        }
    }
}

#define RNN_KERNELS(T, S)                                                                  \
    extern "C" __global__ void rnn_node_fwd_##S(const T* s, const T* ch, const T* p,       \
                                                T* out, int n, int b, int h) {             \
        rnn_node_fwd<T>(s, ch, p, out, n, b, h);                                           \
    }                                                                                      \
    extern "C" __global__ void rnn_node_bwd_##S(const T* dy, const T* s, const T* ch,      \
                                                const T* p, T* grads, int n, int b,        \
                                                int h) {                                   \
        rnn_node_bwd<T>(dy, s, ch, p, grads, n, b, h);                                     \
    }                                                                                      \
    extern "C" __global__ void rnn_node_pgrad_##S(const T* dy, const T* s, const T* ch,    \
                                                  T* grads, int n, int b, int h) {         \
        rnn_node_pgrad<T>(dy, s, ch, grads, n, b, h);                                      \
    }

RNN_KERNELS(float, f32)
RNN_KERNELS(double, f64)
