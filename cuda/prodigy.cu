// Prodigy's rules on the device (docs/algorithms.md §6.1), the twins of src/adapt/prodigy.rs:
// pass 1 (`Absorb`, a dot pass over s and p0: p0 at the first step, s absorbs g, [Σ g·(p0 − θ),
// Σ|s|]), the d update (one record, `Solve`), pass 2 (`Step`, over the moments: they absorb g,
// then θ moves; coefficients read from the record). d, the
// numerator and dlr live in the record on the device: no step reads anything back.
//
// The elementwise arithmetic is the Rust's, operation for operation; the sums are reduced in
// another (fixed) order, so d agrees with the CPU's to rounding, not to the bit.

#include "peers.cuh"

// prodigy::Global: the options the reference reads from param group 0, by value.
struct ProdigyGlobal {
    double lr, beta1, beta2, beta3, d0, d_coef, growth_rate;
    unsigned bias_correction, pad;
};
ALR_SIZE(ProdigyGlobal, 64);
ALR_FIELD(ProdigyGlobal, beta3, 24);
ALR_FIELD(ProdigyGlobal, growth_rate, 48);
ALR_FIELD(ProdigyGlobal, bias_correction, 56);

// prodigy::Estimate: the one record, written by the solve.
struct ProdigyEstimate {
    double d, d_max, d_numerator, d_denom, d_hat, dlr;
    unsigned long long begun, k, skips;
    unsigned moved, pad;
    double d_before;  // d before the step's solve: what pass 2's moments absorb g with
};
ALR_SIZE(ProdigyEstimate, 88);
ALR_FIELD(ProdigyEstimate, d_numerator, 16);
ALR_FIELD(ProdigyEstimate, dlr, 40);
ALR_FIELD(ProdigyEstimate, begun, 48);
ALR_FIELD(ProdigyEstimate, skips, 64);
ALR_FIELD(ProdigyEstimate, moved, 72);
ALR_FIELD(ProdigyEstimate, d_before, 80);

// `dlr = d · lr · bias` of the step the record is about to take.
__device__ inline double prodigy_dlr(const ProdigyGlobal& g, const ProdigyEstimate& r) {
    return r.d * g.lr * bias_correction(g.bias_correction != 0, g.beta1, g.beta2, r.k);
}

// Pass 1's share of an element: s and p0 (prodigy::Estimator); pass 2's: the moments {m, v},
// or {v} at β1 = 0 (prodigy::WithM / NoM), kept apart so that pass 2 reads only them.
struct ProdigyEstimator {
    float s, p0;
};
ALR_SIZE(ProdigyEstimator, 8);
ALR_FIELD(ProdigyEstimator, p0, 4);

struct ProdigyWithM {
    float m, v;
};
ALR_SIZE(ProdigyWithM, 8);
ALR_FIELD(ProdigyWithM, v, 4);

struct ProdigyNoM {
    float v;
};
ALR_SIZE(ProdigyNoM, 4);

// prodigy::AbsorbCoeffs
struct ProdigyAbsorbCoeffs {
    ProdigyGlobal global;
    double coupled_decay;
    unsigned safeguard_warmup, active;
};
ALR_SIZE(ProdigyAbsorbCoeffs, 80);
ALR_FIELD(ProdigyAbsorbCoeffs, coupled_decay, 64);
ALR_FIELD(ProdigyAbsorbCoeffs, safeguard_warmup, 72);
ALR_FIELD(ProdigyAbsorbCoeffs, active, 76);

struct ProdigyAbsorbPrepared {
    float lambda, beta3, coef_s;
    bool active, first;
};

// Pass 1: p0 ← θ at the first step; s absorbs g; [g·(p0 − θ), |s|] (the moments absorb g in
// pass 2, with this step's old d).
struct ProdigyAbsorb {
    typedef ProdigyEstimator State;
    typedef ProdigyAbsorbCoeffs Coeffs;
    typedef ProdigyEstimate Record;
    typedef ProdigyAbsorbPrepared Prepared;
    // Each f32 coefficient is the reference's Python float, rounded once.
    __device__ static ProdigyAbsorbPrepared prepare(const ProdigyAbsorbCoeffs& c, const ProdigyEstimate& r) {
        const ProdigyGlobal& g = c.global;
        const double d = r.d, dlr = prodigy_dlr(g, r);
        return ProdigyAbsorbPrepared{(float)c.coupled_decay, (float)g.beta3,
                                     (float)((d / g.d0) * (c.safeguard_warmup != 0 ? d : dlr)), c.active != 0,
                                     r.begun == 0};
    }
    __device__ static void dot(const ProdigyAbsorbPrepared& p, float g, float theta, ProdigyEstimator* st, double* d0, double* d1) {
        if (p.first) st->p0 = theta;
        if (!p.active) {
            *d0 = 0.0;
            *d1 = 0.0;
            return;
        }
        if (p.lambda != 0.0f) g = fma32(theta, p.lambda, g);
        *d0 = (double)g * (double)(st->p0 - theta);
        st->s = fma32(g, p.coef_s, p.beta3 * st->s);
        *d1 = (double)fabsf(st->s);
    }
};

// The d update from [Σ g·(p0 − θ), Σ|s|] over every group's tensors (one record).
struct ProdigySolve {
    typedef ProdigyEstimate Record;
    typedef NoRecord Coeffs;
    typedef ProdigyGlobal Params;
    __device__ static void solve(const ProdigyGlobal& g, const NoRecord&, const double* sums, ProdigyEstimate* r) {
        const double d = r->d, dlr = prodigy_dlr(g, *r);
        const double numerator = g.beta3 * r->d_numerator + (d / g.d0) * dlr * sums[0];
        const double den = sums[1];
        r->begun += 1;
        r->d_before = d;
        if (den == 0.0) {
            // The reference returns before the step: k, d and the numerator are not stored.
            r->moved = 0;
            r->skips += 1;
            return;
        }
        double d_new = d, d_max = r->d_max, d_hat = d;
        if (g.lr > 0.0) {
            d_hat = g.d_coef * numerator / den;
            if (d == g.d0) d_new = py_max(d_new, d_hat);
            d_max = py_max(d_max, d_hat);
            d_new = py_min(d_max, d_new * g.growth_rate);
        }
        r->d = d_new;
        r->d_max = d_max;
        r->d_numerator = numerator;
        r->d_denom = den;
        r->d_hat = d_hat;
        r->dlr = dlr;
        r->k += 1;
        r->moved = 1;
    }
};

// prodigy::StepCoeffs
struct ProdigyStepCoeffs {
    double eps, coupled_decay, decoupled_decay, beta1, beta2;
    unsigned active, pad;
};
ALR_SIZE(ProdigyStepCoeffs, 48);
ALR_FIELD(ProdigyStepCoeffs, decoupled_decay, 16);
ALR_FIELD(ProdigyStepCoeffs, beta2, 32);
ALR_FIELD(ProdigyStepCoeffs, active, 40);

struct ProdigyStepPrepared {
    bool active;
    float beta1, coef_m, beta2, coef_v;
    bool moved;
    float scale, eps, decay, lambda;
};

// `m ← β1 m + coef_m g`, `v ← β2 v + coef_v g²` (no m without m), and the step's direction (m,
// or g itself without m).
__device__ inline float prodigy_absorbed_v(const ProdigyStepPrepared& p, float v, float g) { return fma32(p.coef_v * g, g, p.beta2 * v); }
__device__ inline void prodigy_absorb(const ProdigyStepPrepared& p, ProdigyWithM* st, float g) {
    st->m = fma32(g, p.coef_m, p.beta1 * st->m);
    st->v = prodigy_absorbed_v(p, st->v, g);
}
__device__ inline void prodigy_absorb(const ProdigyStepPrepared& p, ProdigyNoM* st, float g) { st->v = prodigy_absorbed_v(p, st->v, g); }
__device__ inline float prodigy_direction(const ProdigyWithM& st, float) { return st.m; }
__device__ inline float prodigy_direction(const ProdigyNoM&, float g) { return g; }

// Pass 2: the moments absorb g with the step's old d, then θ ← θ − dlr λ θ and
// θ ← θ − scale · direction / (√v + d ε), with the record's old dlr and new d; the displacement
// θ − θ_new (the Rust's `displacement`).
template <typename M>
struct ProdigyStep {
    typedef M State;
    typedef ProdigyStepCoeffs Coeffs;
    typedef ProdigyEstimate Record;
    typedef ProdigyStepPrepared Prepared;
    __device__ static ProdigyStepPrepared prepare(const ProdigyStepCoeffs& c, const ProdigyEstimate& r) {
        // torch's `value=-dlr` (with m) or `value=-dlr * d` (without).
        const bool has_m = std::is_same<M, ProdigyWithM>::value;
        const double d = r.d_before;
        return ProdigyStepPrepared{c.active != 0,
                                   (float)c.beta1,
                                   (float)(d * (1.0 - c.beta1)),
                                   (float)c.beta2,
                                   (float)(d * d * (1.0 - c.beta2)),
                                   r.moved != 0,
                                   has_m ? (float)r.dlr : (float)(r.dlr * r.d),
                                   (float)(r.d * c.eps),
                                   (float)(c.decoupled_decay * r.dlr),
                                   (float)c.coupled_decay};
    }
    __device__ static float advance(const ProdigyStepPrepared& p, float g, float theta, M* st) {
        if (p.lambda != 0.0f) g = fma32(theta, p.lambda, g);
        if (p.active) prodigy_absorb(p, st, g);
        if (!p.moved) return 0.0f;
        const float decayed = p.decay != 0.0f ? fma32(theta, -p.decay, theta) : theta;
        return theta - (decayed - p.scale * prodigy_direction(*st, g) / (sqrtf(st->v) + p.eps));
    }
    // The step itself (a scaled launch's: src/adapt/prodigy.rs's Step::delta).
    __device__ static float delta(const ProdigyStepPrepared& p, float g, float theta, const M* st) {
        if (!p.moved) return 0.0f;
        if (p.lambda != 0.0f) g = fma32(theta, p.lambda, g);
        const float step = p.scale * prodigy_direction(*st, g) / (sqrtf(st->v) + p.eps);
        return p.decay != 0.0f ? fma32(theta, p.decay, step) : step;
    }
};

ALR_DOT_KERNEL(alr_prodigy_absorb, ProdigyAbsorb)
ALR_SOLVE_KERNEL(alr_prodigy_solve, ProdigySolve)
ALR_ELEMENT_KERNEL(alr_prodigy_step_m, ProdigyStep<ProdigyWithM>)
ALR_ELEMENT_KERNEL(alr_prodigy_step, ProdigyStep<ProdigyNoM>)
