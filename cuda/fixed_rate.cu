// Fixed-rate rules (docs/algorithms.md §0): each `advance` is the same arithmetic, operation for
// operation, as its Rust twin in src/base/*.rs, so a GPU step gives the CPU's bits. The
// coefficient structs are the Rust `#[repr(C)]` `*Coeffs` structs, field for field (checked by
// the ALR_FIELD lines and tests/cuda_layout.rs); the state is interleaved as on the CPU (Adam:
// [m, v] per element), so a checkpoint is the same bytes on either device.

#include "device.cuh"

struct SgdCoeffs {
    float lr, weight_decay;
};
ALR_SIZE(SgdCoeffs, 8);
ALR_FIELD(SgdCoeffs, weight_decay, 4);

struct MomentumCoeffs {
    float lr, weight_decay, mu, keep, gain;
    bool nesterov;
};
ALR_SIZE(MomentumCoeffs, 24);
ALR_FIELD(MomentumCoeffs, keep, 12);
ALR_FIELD(MomentumCoeffs, nesterov, 20);

struct AdagradCoeffs {
    float lr, weight_decay, eps;
};
ALR_SIZE(AdagradCoeffs, 12);
ALR_FIELD(AdagradCoeffs, eps, 8);

struct RmsPropCoeffs {
    float lr, weight_decay, alpha, one_minus_alpha, eps;
};
ALR_SIZE(RmsPropCoeffs, 20);
ALR_FIELD(RmsPropCoeffs, eps, 16);

struct AdamCoeffs {
    float weight_decay, beta1, beta2, one_minus_beta1, one_minus_beta2, step_size, inv_sqrt_bias2, eps,
        decoupled_decay;
};
ALR_SIZE(AdamCoeffs, 36);
ALR_FIELD(AdamCoeffs, step_size, 20);
ALR_FIELD(AdamCoeffs, decoupled_decay, 32);

// A rule whose scalars all come by value (src/base/mod.rs's `Fixed`).
template <typename C, typename S>
struct FixedRule {
    typedef C Coeffs;
    typedef S State;
    typedef NoRecord Record;
    typedef C Prepared;
    __device__ static C prepare(const C& c, const NoRecord&) { return c; }
};

// θ ← θ − η (g + λθ)
struct Sgd : FixedRule<SgdCoeffs, NoState> {
    __device__ static float advance(const SgdCoeffs& c, float g, float theta, NoState*) {
        return c.lr * (g + c.weight_decay * theta);
    }
};

// PyTorch's momentum: m ← keep·m + gain·g; θ ← θ − η m, or η (g + μ m) with Nesterov.
struct Momentum : FixedRule<MomentumCoeffs, float> {
    __device__ static float advance(const MomentumCoeffs& c, float g, float theta, float* m) {
        g = g + c.weight_decay * theta;
        *m = c.keep * *m + c.gain * g;
        return c.nesterov ? c.lr * (g + c.mu * *m) : c.lr * *m;
    }
};

// s ← s + g²; θ ← θ − η g / (√s + ε)
struct Adagrad : FixedRule<AdagradCoeffs, float> {
    __device__ static float advance(const AdagradCoeffs& c, float g, float theta, float* s) {
        g = g + c.weight_decay * theta;
        *s += g * g;
        return c.lr * g / (sqrtf(*s) + c.eps);
    }
};

// s ← α s + (1−α) g²; θ ← θ − η g / (√s + ε)
struct RmsProp : FixedRule<RmsPropCoeffs, float> {
    __device__ static float advance(const RmsPropCoeffs& c, float g, float theta, float* s) {
        g = g + c.weight_decay * theta;
        *s = c.alpha * *s + c.one_minus_alpha * g * g;
        return c.lr * g / (sqrtf(*s) + c.eps);
    }
};

// Adam(W): m ← β1 m + (1−β1) g, v ← β2 v + (1−β2) g², θ ← θ − η m̂/(√v̂ + ε) (− ηλθ for AdamW).
struct Adam : FixedRule<AdamCoeffs, float2> {
    __device__ static float advance(const AdamCoeffs& c, float g, float theta, float2* mv) {
        g = g + c.weight_decay * theta;
        mv->x = c.beta1 * mv->x + c.one_minus_beta1 * g;
        mv->y = c.beta2 * mv->y + c.one_minus_beta2 * g * g;
        return c.step_size * mv->x / (sqrtf(mv->y) * c.inv_sqrt_bias2 + c.eps) + c.decoupled_decay * theta;
    }
};

ALR_ELEMENT_KERNEL(alr_sgd_step, Sgd)
ALR_ELEMENT_KERNEL(alr_momentum_step, Momentum)
ALR_ELEMENT_KERNEL(alr_adagrad_step, Adagrad)
ALR_ELEMENT_KERNEL(alr_rmsprop_step, RmsProp)
ALR_ELEMENT_KERNEL(alr_adam_step, Adam)
