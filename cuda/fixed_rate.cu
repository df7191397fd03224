// Fused fixed-rate updates (ALGORITHMS.md §0): one pass, θ ← θ − delta(g, θ, state).
//
// Each rule mirrors its CPU twin in src/base/*.rs operation for operation; build.rs compiles
// with --fmad=false and IEEE division and square root, so a GPU step gives the CPU's bits.
// The coefficient structs are the Rust `#[repr(C)]` `*Coeffs` structs, field for field
// (alr_cuda_coeffs_size lets the Rust side check the sizes when a device is opened).
// Per-element state is interleaved exactly as on the CPU (Adam: [m, v] per element), so a
// checkpoint is the same bytes on either device.

#include <cuda_runtime.h>
#include <stddef.h>

#include "status.cuh"

struct SgdCoeffs {
    float lr, weight_decay;
};

struct MomentumCoeffs {
    float lr, weight_decay, mu, keep, gain;
    bool nesterov;
};

struct AdagradCoeffs {
    float lr, weight_decay, eps;
};

struct RmsPropCoeffs {
    float lr, weight_decay, alpha, one_minus_alpha, eps;
};

struct AdamCoeffs {
    float weight_decay, beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, inv_sqrt_bias2, eps,
        decoupled_decay;
};

struct NoState {};

// θ ← θ − η (g + λθ)
struct Sgd {
    typedef SgdCoeffs Coeffs;
    typedef NoState State;
    __device__ static float advance(const Coeffs& c, float g, float theta, State*) {
        return c.lr * (g + c.weight_decay * theta);
    }
};

// PyTorch's momentum: m ← keep·m + gain·g; θ ← θ − η m, or η (g + μ m) with Nesterov.
struct Momentum {
    typedef MomentumCoeffs Coeffs;
    typedef float State;
    __device__ static float advance(const Coeffs& c, float g, float theta, State* m) {
        g = g + c.weight_decay * theta;
        *m = c.keep * *m + c.gain * g;
        return c.nesterov ? c.lr * (g + c.mu * *m) : c.lr * *m;
    }
};

// s ← s + g²; θ ← θ − η g / (√s + ε)
struct Adagrad {
    typedef AdagradCoeffs Coeffs;
    typedef float State;
    __device__ static float advance(const Coeffs& c, float g, float theta, State* s) {
        g = g + c.weight_decay * theta;
        *s += g * g;
        return c.lr * g / (sqrtf(*s) + c.eps);
    }
};

// s ← α s + (1−α) g²; θ ← θ − η g / (√s + ε)
struct RmsProp {
    typedef RmsPropCoeffs Coeffs;
    typedef float State;
    __device__ static float advance(const Coeffs& c, float g, float theta, State* s) {
        g = g + c.weight_decay * theta;
        *s = c.alpha * *s + c.one_minus_alpha * g * g;
        return c.lr * g / (sqrtf(*s) + c.eps);
    }
};

// Adam(W): m ← β1 m + (1−β1) g, v ← β2 v + (1−β2) g², θ ← θ − η m̂/(√v̂ + ε) (− ηλθ for AdamW).
struct Adam {
    typedef AdamCoeffs Coeffs;
    typedef float2 State;
    __device__ static float advance(const Coeffs& c, float g, float theta, State* mv) {
        g = g + c.weight_decay * theta;
        mv->x = c.beta1 * mv->x + c.one_minus_beta1 * g;
        mv->y = c.beta2 * mv->y + c.one_minus_beta2 * g * g;
        return c.step_size * mv->x / (sqrtf(mv->y) * c.inv_sqrt_bias2 + c.eps) + c.decoupled_decay * theta;
    }
};

template <typename Rule>
__global__ void fixed_rate_step(float* __restrict__ param, const float* __restrict__ grad,
                                typename Rule::State* __restrict__ state, size_t len, typename Rule::Coeffs c,
                                const DeviceStatus* status) {
    // A check of this or an earlier step found bad input: change nothing (status.cuh).
    if (status && status->code != 0) return;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += stride) {
        const float theta = param[i];
        // Sgd has no state (state is NULL); its advance never reads the pointer.
        param[i] = theta - Rule::advance(c, grad[i], theta, state ? state + i : state);
    }
}

static const unsigned THREADS = 256;
// A grid-stride loop covers any length; more blocks than this add nothing on an H100.
static const size_t MAX_BLOCKS = 8192;

static unsigned blocks_for(size_t len) {
    size_t blocks = (len + THREADS - 1) / THREADS;
    return (unsigned)(blocks > MAX_BLOCKS ? MAX_BLOCKS : blocks);
}

template <typename Rule>
static int launch(float* param, const float* grad, void* state, size_t len, const void* coeffs, const void* status,
                  void* stream) {
    if (len == 0) return 0;
    fixed_rate_step<Rule><<<blocks_for(len), THREADS, 0, (cudaStream_t)stream>>>(
        param, grad, (typename Rule::State*)state, len, *(const typename Rule::Coeffs*)coeffs,
        (const DeviceStatus*)status);
    return (int)cudaGetLastError();
}

// One entry point per rule: enqueue the step of one tensor on `stream` (no synchronisation).
// `status`: a DeviceStatus the checks of this step wrote (NULL: unchecked). Returns the
// cudaError_t of the launch (0 = cudaSuccess).
#define ALR_FIXED_RATE_ENTRY(name, Rule)                                                              \
    extern "C" int alr_cuda_##name##_step(float* param, const float* grad, void* state, size_t len, \
                                          const void* coeffs, const void* status, void* stream) {    \
        return launch<Rule>(param, grad, state, len, coeffs, status, stream);                        \
    }

ALR_FIXED_RATE_ENTRY(sgd, Sgd)
ALR_FIXED_RATE_ENTRY(momentum, Momentum)
ALR_FIXED_RATE_ENTRY(adagrad, Adagrad)
ALR_FIXED_RATE_ENTRY(rmsprop, RmsProp)
ALR_FIXED_RATE_ENTRY(adam, Adam)

// Sets the status (status.cuh) when `x` holds a NaN or Inf, before any update of the step runs.
__global__ void check_finite(const float* __restrict__ x, size_t len, unsigned long long step, DeviceStatus* status) {
    if (status->code != 0) return;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += stride) {
        if (!isfinite(x[i])) {
            report(status, ALR_STATUS_NON_FINITE, step);
            return;
        }
    }
}

// Enqueues the finiteness check of one input buffer of host step `step`.
extern "C" int alr_cuda_check_finite(const float* x, size_t len, unsigned long long step, void* status, void* stream) {
    if (len == 0) return 0;
    check_finite<<<blocks_for(len), THREADS, 0, (cudaStream_t)stream>>>(x, len, step, (DeviceStatus*)status);
    return (int)cudaGetLastError();
}

// sizeof of each coefficient struct, in the order sgd, momentum, adagrad, rmsprop, adam, then
// of DeviceStatus (5); -1 past it.
extern "C" long alr_cuda_coeffs_size(int rule) {
    switch (rule) {
        case 0: return (long)sizeof(SgdCoeffs);
        case 1: return (long)sizeof(MomentumCoeffs);
        case 2: return (long)sizeof(AdagradCoeffs);
        case 3: return (long)sizeof(RmsPropCoeffs);
        case 4: return (long)sizeof(AdamCoeffs);
        case 5: return (long)sizeof(DeviceStatus);
        default: return -1;
    }
}
