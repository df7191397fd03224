// D-Adapt Adam's rules on the device (docs/algorithms.md §6.1), the twins of
// src/adapt/dadapt.rs: pass 1 (`Absorb`, a dot pass: the moments absorb g,
// [Σ g s/(√v + ε), Σ|s|]), the d update (one record, `Solve`), pass 2 (`Step`). d, the numerator
// and dlr live in the record on the device: no step reads anything back.
//
// The elementwise arithmetic is the Rust's, operation for operation; the sums are reduced in
// another (fixed) order, so d agrees with the CPU's to rounding, not to the bit.

#include "peers.cuh"

// dadapt::Global: the options the reference reads from param group 0, by value.
struct DAdaptGlobal {
    double lr, beta1, beta2, sqrt_beta2, growth_rate;
    unsigned bias_correction, pad;
};
ALR_SIZE(DAdaptGlobal, 48);
ALR_FIELD(DAdaptGlobal, sqrt_beta2, 24);
ALR_FIELD(DAdaptGlobal, bias_correction, 40);

// dadapt::Estimate: the one record, written by the solve.
struct DAdaptEstimate {
    double d, numerator, sk_l1, d_hat, dlr;
    unsigned long long begun, k, skips;
    unsigned moved, pad;
};
ALR_SIZE(DAdaptEstimate, 72);
ALR_FIELD(DAdaptEstimate, dlr, 32);
ALR_FIELD(DAdaptEstimate, begun, 40);
ALR_FIELD(DAdaptEstimate, skips, 56);
ALR_FIELD(DAdaptEstimate, moved, 64);

__device__ inline double dadapt_dlr(const DAdaptGlobal& g, const DAdaptEstimate& r) {
    return r.d * g.lr * bias_correction(g.bias_correction != 0, g.beta1, g.beta2, r.k);
}

// One element: {s, m, v} (dadapt::Elem).
struct DAdaptElem {
    float s, m, v;
};
ALR_SIZE(DAdaptElem, 12);
ALR_FIELD(DAdaptElem, m, 4);
ALR_FIELD(DAdaptElem, v, 8);

// dadapt::AbsorbCoeffs
struct DAdaptAbsorbCoeffs {
    DAdaptGlobal global;
    double eps, coupled_decay;
    unsigned active, pad;
};
ALR_SIZE(DAdaptAbsorbCoeffs, 72);
ALR_FIELD(DAdaptAbsorbCoeffs, eps, 48);
ALR_FIELD(DAdaptAbsorbCoeffs, coupled_decay, 56);
ALR_FIELD(DAdaptAbsorbCoeffs, active, 64);

struct DAdaptAbsorbPrepared {
    float lambda, eps, beta1, coef_m, beta2, coef_v, sqrt_beta2, coef_s;
    bool active;
};

// Pass 1: [g · s/(√v + ε) with s and v before this step's update, |s| after it].
struct DAdaptAbsorb {
    typedef DAdaptElem State;
    typedef DAdaptAbsorbCoeffs Coeffs;
    typedef DAdaptEstimate Record;
    typedef DAdaptAbsorbPrepared Prepared;
    __device__ static DAdaptAbsorbPrepared prepare(const DAdaptAbsorbCoeffs& c, const DAdaptEstimate& r) {
        const DAdaptGlobal& g = c.global;
        const double dlr = dadapt_dlr(g, r);
        // The reference's `r * dlr * (1 - beta1)` with layer_scale r = 1.
        return DAdaptAbsorbPrepared{(float)c.coupled_decay,       (float)c.eps,
                                    (float)g.beta1,               (float)(dlr * (1.0 - g.beta1)),
                                    (float)g.beta2,               (float)(1.0 - g.beta2),
                                    (float)g.sqrt_beta2,          (float)(dlr * (1.0 - g.sqrt_beta2)),
                                    c.active != 0};
    }
    __device__ static void dot(const DAdaptAbsorbPrepared& p, float g, float theta, DAdaptElem* e, double* d0, double* d1) {
        if (!p.active) {
            *d0 = 0.0;
            *d1 = 0.0;
            return;
        }
        if (p.lambda != 0.0f) g = fma32(theta, p.lambda, g);
        *d0 = (double)g * (double)(e->s / (sqrtf(e->v) + p.eps));
        e->m = fma32(g, p.coef_m, p.beta1 * e->m);
        e->v = fma32(p.coef_v * g, g, p.beta2 * e->v);
        e->s = fma32(g, p.coef_s, p.sqrt_beta2 * e->s);
        *d1 = (double)fabsf(e->s);
    }
};

// The d update from [Σ g s/(√v + ε), Σ|s|] over every group's tensors (one record).
struct DAdaptSolve {
    typedef DAdaptEstimate Record;
    typedef NoRecord Coeffs;
    typedef DAdaptGlobal Params;
    __device__ static void solve(const DAdaptGlobal& g, const NoRecord&, const double* sums, DAdaptEstimate* r) {
        const double d = r->d, dlr = dadapt_dlr(g, *r);
        const double numerator = g.sqrt_beta2 * r->numerator + (1.0 - g.sqrt_beta2) * (dlr * sums[0]);
        const double sk_l1 = sums[1];
        r->begun += 1;
        if (sk_l1 == 0.0) {
            r->moved = 0;
            r->skips += 1;
            return;
        }
        double d_new = d, d_hat = d;
        if (g.lr > 0.0) {
            d_hat = numerator / ((1.0 - g.sqrt_beta2) * sk_l1);
            d_new = py_max(d, py_min(d_hat, d * g.growth_rate));
        }
        r->d = d_new;
        r->numerator = numerator;
        r->sk_l1 = sk_l1;
        r->d_hat = d_hat;
        r->dlr = dlr;
        r->k += 1;
        r->moved = 1;
    }
};

// dadapt::StepCoeffs
struct DAdaptStepCoeffs {
    double eps, decoupled_decay;
};
ALR_SIZE(DAdaptStepCoeffs, 16);
ALR_FIELD(DAdaptStepCoeffs, decoupled_decay, 8);

struct DAdaptStepPrepared {
    bool moved;
    float eps, decay;
};

// Pass 2: θ ← θ − dlr λ θ (old dlr), then θ ← θ − m / (√v + ε); the displacement θ − θ_new.
struct DAdaptStep {
    typedef DAdaptElem State;
    typedef DAdaptStepCoeffs Coeffs;
    typedef DAdaptEstimate Record;
    typedef DAdaptStepPrepared Prepared;
    __device__ static DAdaptStepPrepared prepare(const DAdaptStepCoeffs& c, const DAdaptEstimate& r) {
        return DAdaptStepPrepared{r.moved != 0, (float)c.eps, (float)(c.decoupled_decay * r.dlr)};
    }
    __device__ static float advance(const DAdaptStepPrepared& p, float, float theta, DAdaptElem* e) {
        if (!p.moved) return 0.0f;
        const float decayed = p.decay != 0.0f ? fma32(theta, -p.decay, theta) : theta;
        return theta - (decayed - e->m / (sqrtf(e->v) + p.eps));
    }
    // The step itself (a scaled launch's: src/adapt/dadapt.rs's Step::delta).
    __device__ static float delta(const DAdaptStepPrepared& p, float, float theta, const DAdaptElem* e) {
        if (!p.moved) return 0.0f;
        const float step = e->m / (sqrtf(e->v) + p.eps);
        return p.decay != 0.0f ? fma32(theta, p.decay, step) : step;
    }
};

ALR_DOT_KERNEL(alr_dadapt_adam_absorb, DAdaptAbsorb)
ALR_SOLVE_KERNEL(alr_dadapt_adam_solve, DAdaptSolve)
ALR_ELEMENT_KERNEL(alr_dadapt_adam_step, DAdaptStep)
