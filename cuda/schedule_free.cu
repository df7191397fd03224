// Schedule-free's rules on the device (docs/algorithms.md §6), the twins of
// src/adapt/schedule_free.rs: the first step's z ← y (a dot pass with no sums), the per-group
// averaging scalars (`Advance`, one block for every group), the weight decay at y, the
// interpolation of y and the swap between y and x (rules that set θ: ASSIGNS). An automatic base
// steps z with its own kernels in between; over a fixed-rate base one kernel (SfStep) does the
// decay, the base's step and the interpolation. The scalars live in the records on the device: no
// step reads anything back.
//
// The elementwise arithmetic is the Rust's, operation for operation; the weights' powers use
// CUDA's pow, which matches libm's to within its 2-ulp bound (not always to the bit).

#include "device.cuh"

// schedule_free::Average: per group, written by the solve.
struct SfAverage {
    unsigned long long k;
    double lr, lr_max, weight, weight_sum, ckp1;
};
ALR_SIZE(SfAverage, 48);
ALR_FIELD(SfAverage, lr, 8);
ALR_FIELD(SfAverage, weight_sum, 32);
ALR_FIELD(SfAverage, ckp1, 40);

// schedule_free::AverageOptions: per group, uploaded when an option changes.
struct SfAverageOptions {
    double lr, warmup_steps, r, weight_lr_power;
};
ALR_SIZE(SfAverageOptions, 32);
ALR_FIELD(SfAverageOptions, r, 16);
ALR_FIELD(SfAverageOptions, weight_lr_power, 24);

// torch's lerp(a, b, w) (its scalar formula; no FMA under --fmad=false).
__device__ inline float sf_lerp(float a, float b, float w) { return fabsf(w) < 0.5f ? a + w * (b - a) : b - (b - a) * (1.0f - w); }

// One step of the reference's per-group scalars, in its order: lr · min((k+1)/warmup, 1),
// lr_max, w = (k+1)^r lr_max^p, Σw, c = w/Σw (0 where the reference catches ZeroDivisionError).
struct SfAdvance {
    typedef SfAverage Record;
    typedef SfAverageOptions Coeffs;
    typedef NoParams Params;
    __device__ static void solve(const NoParams&, const SfAverageOptions& o, const double*, SfAverage* a) {
        const double k = (double)a->k;
        const double lr = o.lr * (k < o.warmup_steps ? (k + 1.0) / o.warmup_steps : 1.0);
        a->lr_max = a->lr_max > lr ? a->lr_max : lr;
        a->weight = pow((double)(a->k + 1), o.r) * pow(a->lr_max, o.weight_lr_power);
        a->weight_sum += a->weight;
        a->ckp1 = a->weight_sum == 0.0 ? 0.0 : a->weight / a->weight_sum;
        a->lr = lr;
        a->k += 1;
    }
};

// The first step: z ← y. Param y, state z.
struct SfInitZ {
    typedef float State;
    typedef NoParams Coeffs;
    typedef NoRecord Record;
    typedef NoParams Prepared;
    __device__ static NoParams prepare(const NoParams& c, const NoRecord&) { return c; }
    __device__ static void dot(const NoParams&, float, float y, float* z, double* d0, double* d1) {
        *z = y;
        *d0 = 0.0;
        *d1 = 0.0;
    }
};

// previous ← z, then z ← z − lr·λ·y. Param z, "gradient" y, state the previous z. Coefficient: λ.
struct SfDecayAtY {
    typedef float State;
    typedef double Coeffs;
    typedef SfAverage Record;
    typedef float Prepared;  // lr·λ
    __device__ static float prepare(const double& lambda, const SfAverage& a) { return (float)(a.lr * lambda); }
    __device__ static float advance(float decay, float y, float z, float* previous) {
        *previous = z;
        // No decay leaves z's bits alone (the reference skips the term).
        return decay == 0.0f ? 0.0f : decay * y;
    }
};

struct SfInterpolation {
    float c, b;
};

// y ← lerp(y, z, c) + (β(1−c) − 1)·(z − z'). Param y, "gradient" z', state z before the step.
// Coefficient: β.
struct SfInterpolate {
    static constexpr bool ASSIGNS = true;
    typedef float State;
    typedef double Coeffs;
    typedef SfAverage Record;
    typedef SfInterpolation Prepared;
    __device__ static SfInterpolation prepare(const double& beta, const SfAverage& a) {
        return SfInterpolation{(float)a.ckp1, (float)(beta * (1.0 - a.ckp1) - 1.0)};
    }
    __device__ static float next(const SfInterpolation& p, float z_new, float y, float* z) {
        return sf_lerp(y, *z, p.c) + p.b * (*z - z_new);
    }
};

// schedule_free::StepCoeffs: a group's λ and β, by value.
struct SfStepCoeffs {
    double weight_decay, beta;
};
ALR_SIZE(SfStepCoeffs, 16);
ALR_FIELD(SfStepCoeffs, beta, 8);

struct SfStepScalars {
    float decay;
    SfInterpolation y;
};

// One step over a fixed-rate base in one pass (a NestedRule; param y, state z, the base's state
// beside): the three passes' arithmetic in their order, z ← z − lr·λ·y, z ← z − advance(g, z),
// y ← lerp(y, z_old, c) + (β(1−c) − 1)·(z_old − z).
struct SfStep {
    typedef float State;
    typedef SfStepCoeffs Coeffs;
    typedef SfAverage Record;
    typedef SfStepScalars Prepared;
    __device__ static SfStepScalars prepare(const SfStepCoeffs& c, const SfAverage& a) {
        return SfStepScalars{SfDecayAtY::prepare(c.weight_decay, a), SfInterpolate::prepare(c.beta, a)};
    }
    template <typename Inner>
    __device__ static float next(const SfStepScalars& p, const typename Inner::Prepared& q, float g, float y, float* z, typename Inner::State* st) {
        float z_old = *z, unused;
        const float decayed = z_old - SfDecayAtY::advance(p.decay, y, z_old, &unused);
        *z = decayed - Inner::advance(q, g, decayed, st);
        return SfInterpolate::next(p.y, *z, y, &z_old);
    }
};

// θ ← lerp(θ, z, w): to x (w = 1 − 1/β) or back to y (w = 1 − β). Param θ, "gradient" z.
struct SfSwap {
    static constexpr bool ASSIGNS = true;
    typedef NoState State;
    typedef float Coeffs;
    typedef NoRecord Record;
    typedef float Prepared;
    __device__ static float prepare(const float& w, const NoRecord&) { return w; }
    __device__ static float next(float w, float z, float theta, NoState*) { return sf_lerp(theta, z, w); }
};

ALR_SOLVE_KERNEL(alr_sf_advance, SfAdvance)
ALR_DOT_KERNEL(alr_sf_init_z, SfInitZ)
ALR_ELEMENT_KERNEL(alr_sf_decay_at_y, SfDecayAtY)
ALR_ELEMENT_KERNEL(alr_sf_interpolate, SfInterpolate)
ALR_ELEMENT_KERNEL(alr_sf_swap, SfSwap)
// The fixed-rate rules are fixed_rate.cu's, which precedes this file in the one translation unit
// build.rs makes (the files in name order).
ALR_NESTED_KERNEL(alr_sf_sgd_step, SfStep, Sgd)
ALR_NESTED_KERNEL(alr_sf_momentum_step, SfStep, Momentum)
ALR_NESTED_KERNEL(alr_sf_adagrad_step, SfStep, Adagrad)
ALR_NESTED_KERNEL(alr_sf_rmsprop_step, SfStep, RmsProp)
ALR_NESTED_KERNEL(alr_sf_adam_step, SfStep, Adam)
