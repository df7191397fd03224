// AutoOpt's rules on the device (docs/algorithms.md §1, paper 001), the twins of
// src/adapt/autoopt.rs's `Moments`, `Solve` and `Update`: pass 1's weights, the per-group
// solve (one block for every group; src/backend/cuda.rs first adds each group's partials and
// stops the step when any sum is not finite), and pass 2. The group records and options live on
// the device, so a step needs no host read and can be captured in a CUDA graph.
//
// The reductions use a different (fixed) order from the CPU's, so the sums agree to rounding,
// not to the bit; the elementwise arithmetic rounds as the CPU's does.

#include "device.cuh"

// The 2-D solution is rejected as ill-conditioned when det ≤ DET_RTOL · a e (as on the CPU).
#define DET_RTOL 1e-12

// GroupOptions (src/adapt/autoopt.rs): per group, uploaded when an option changes.
struct AutoOptOptions {
    double nu, gamma_max, eps, beta2;
};
ALR_SIZE(AutoOptOptions, 32);
ALR_FIELD(AutoOptOptions, eps, 16);
ALR_FIELD(AutoOptOptions, beta2, 24);

// GroupRecord (src/adapt/autoopt.rs): per group, written by the solve.
struct AutoOptGroup {
    double gamma[2];  // γ_E (eq. 26); γ1 unset (NaN) before the first step
    double noise, a, c, e, det, gamma_oracle[2];
    float coef_g, coef_d;  // this step's direction multipliers (eq. 14)
    int moved;             // 1: the last step moved θ; 0: skipped (zero gradient)
    int pad;
    unsigned long long steps, fallbacks, clamps, skips;
};
ALR_SIZE(AutoOptGroup, 120);
ALR_FIELD(AutoOptGroup, noise, 16);
ALR_FIELD(AutoOptGroup, gamma_oracle, 56);
ALR_FIELD(AutoOptGroup, coef_g, 72);
ALR_FIELD(AutoOptGroup, moved, 80);
ALR_FIELD(AutoOptGroup, steps, 88);
ALR_FIELD(AutoOptGroup, skips, 112);

struct SolveParams {
    double n;  // the batch size N
};
ALR_SIZE(SolveParams, 8);

// The base's diagonal preconditioner D (eqs. 11–12). State: d alone (SGD) or {d, s or v}.
struct Identity {
    typedef float State;
    __device__ Identity(const AutoOptOptions&, unsigned long long) {}
    __device__ float absorb(State*, float) const { return 1.0f; }
    __device__ float diag(const State&) const { return 1.0f; }
    __device__ static float direction(const State& st) { return st; }
    __device__ static void set_direction(State* st, float d) { *st = d; }
};

struct AdagradDiag {
    typedef float2 State;
    float eps;
    __device__ AdagradDiag(const AutoOptOptions& o, unsigned long long) : eps((float)o.eps) {}
    // s ← s + g², D = 1/(√s + ε)
    __device__ float absorb(State* st, float g) const {
        st->y += g * g;
        return diag(*st);
    }
    __device__ float diag(const State& st) const { return 1.0f / (sqrtf(st.y) + eps); }
    __device__ static float direction(const State& st) { return st.x; }
    __device__ static void set_direction(State* st, float d) { st->x = d; }
};

// β^t exactly as the CPU's f64::powi forms it (compiler-rt's __powidf2: square-and-multiply), so
// the bias factor has the CPU's bits; pow() may differ in the last one. Past 2^31 steps the CPU
// uses powf (src/base/mod.rs's bias_power), as does this.
__device__ inline double bias_power(double base, unsigned long long t) {
    if (t > 2147483647ULL) return pow(base, (double)t);
    long long exponent = (long long)t;
    double result = 1.0;
    for (;;) {
        if (exponent & 1) result *= base;
        exponent /= 2;
        if (exponent == 0) break;
        base *= base;
    }
    return result;
}

struct AdamDiag {
    typedef float2 State;
    float beta2, one_minus_beta2, inv_sqrt_bias2, eps;
    // At the group's step t (from 1); 1 − β2 and the bias factor formed in f64, as on the CPU.
    __device__ AdamDiag(const AutoOptOptions& o, unsigned long long t)
        : beta2((float)o.beta2),
          one_minus_beta2((float)(1.0 - o.beta2)),
          inv_sqrt_bias2((float)(1.0 / sqrt(1.0 - bias_power(o.beta2, t < 1 ? 1 : t)))),
          eps((float)o.eps) {}
    // v ← β2 v + (1−β2) g², D = 1/(√(v/(1−β2^t)) + ε); the first-moment bias factor is dropped
    // (docs/algorithms.md §1: β is adapted instead).
    __device__ float absorb(State* st, float g) const {
        st->y = beta2 * st->y + one_minus_beta2 * g * g;
        return diag(*st);
    }
    __device__ float diag(const State& st) const { return 1.0f / (sqrtf(st.y) * inv_sqrt_bias2 + eps); }
    __device__ static float direction(const State& st) { return st.x; }
    __device__ static void set_direction(State* st, float d) { st->x = d; }
};

// Pass 1's weights: w = D as the state will be after absorbing g, y = d.
template <typename P>
struct Moments {
    typedef typename P::State State;
    typedef AutoOptOptions Coeffs;
    typedef AutoOptGroup Record;
    typedef P Prepared;
    __device__ static P prepare(const AutoOptOptions& o, const AutoOptGroup& g) { return P(o, g.steps + 1); }
    __device__ static void weights(const P& p, State st, float g, float* w, float* y) {
        *y = P::direction(st);
        *w = p.absorb(&st, g);
    }
};

// Pass 2: absorb g; where the group moved, d ← ĝ = coef_g g + coef_d d and θ ← θ − D ĝ.
template <typename P>
struct Pass2 {
    P precond;
    bool moved;
    float coef_g, coef_d;
};

template <typename P>
struct Update {
    typedef typename P::State State;
    typedef AutoOptOptions Coeffs;
    typedef AutoOptGroup Record;
    typedef Pass2<P> Prepared;
    // The solve has counted this step already.
    __device__ static Pass2<P> prepare(const AutoOptOptions& o, const AutoOptGroup& g) {
        return Pass2<P>{P(o, g.steps), g.moved != 0, g.coef_g, g.coef_d};
    }
    __device__ static float advance(const Pass2<P>& p, float g, float, State* st) {
        const float diag = p.precond.absorb(st, g);
        if (!p.moved) return 0.0f;
        const float direction = p.coef_g * g + p.coef_d * P::direction(*st);
        P::set_direction(st, direction);
        return diag * direction;
    }
};

// Steps 1–5 of docs/algorithms.md §1 for one group, from its sums [spread, a, c, e] (finite).
struct Solve {
    typedef AutoOptGroup Record;
    typedef AutoOptOptions Coeffs;
    typedef SolveParams Params;
    __device__ static void solve(const SolveParams& p, const AutoOptOptions& o, const double* sums, AutoOptGroup* gs) {
        const double n = p.n, a = sums[1], c = sums[2], e = sums[3];
        // Step 1: V = Σ D (S − N g²) / (N (N−1)) (eq. 22), clamped at 0.
        double noise = sums[0] / (n * (n - 1.0));
        if (noise < 0.0) noise = 0.0;
        const double det = a * e - c * c;
        // γ_E starts at [γ_max, 0].
        const double start[2] = {gs->steps == 0 ? o.gamma_max : gs->gamma[0], gs->steps == 0 ? 0.0 : gs->gamma[1]};
        gs->noise = noise;
        gs->a = a;
        gs->c = c;
        gs->e = e;
        gs->det = det;
        gs->steps += 1;
        if (a == 0.0) {
            // Zero gradient: the base state still absorbs g; γ_E, d and θ stay as they are.
            gs->gamma[0] = start[0];
            gs->gamma[1] = start[1];
            gs->gamma_oracle[0] = gs->gamma_oracle[1] = 0.0;
            gs->moved = 0;
            gs->skips += 1;
            return;
        }
        // Step 3: the oracle (eq. 25), else the 1-D problem γ = [min(V/a, γ_max), 0].
        double oracle[2] = {0.0, 0.0};
        bool fell_back = true;
        if (isfinite(det) && det > DET_RTOL * a * e) {
            const double gamma1 = noise * (e - c) / det, gamma2 = noise * c / det;
            if (isfinite(gamma1) && isfinite(gamma2) && gamma1 >= 0.0 && gamma1 <= o.gamma_max && gamma2 >= 0.0 &&
                gamma1 + gamma2 < 1.0) {
                oracle[0] = gamma1;
                oracle[1] = gamma2;
                fell_back = false;
            }
        }
        if (fell_back) {
            oracle[0] = fmin(noise / a, o.gamma_max);
            oracle[1] = 0.0;
        }
        // Step 4: γ_E ← min((1−ν) γ_O + ν γ_E, γ_max) (eq. 26).
        const double raw[2] = {(1.0 - o.nu) * oracle[0] + o.nu * start[0], (1.0 - o.nu) * oracle[1] + o.nu * start[1]};
        const bool clamped = raw[0] > o.gamma_max || raw[1] > o.gamma_max;
        gs->gamma[0] = fmin(raw[0], o.gamma_max);
        gs->gamma[1] = fmin(raw[1], o.gamma_max);
        gs->gamma_oracle[0] = oracle[0];
        gs->gamma_oracle[1] = oracle[1];
        // Steps 5–6: ĝ = (1 − γ1 − γ2) g + γ2 d (eq. 14).
        gs->coef_g = (float)(1.0 - gs->gamma[0] - gs->gamma[1]);
        gs->coef_d = (float)gs->gamma[1];
        gs->moved = 1;
        gs->fallbacks += fell_back ? 1 : 0;
        gs->clamps += clamped ? 1 : 0;
    }
};

ALR_MOMENT_KERNEL(alr_autoopt_moments_sgd, Moments<Identity>)
ALR_MOMENT_KERNEL(alr_autoopt_moments_adam, Moments<AdamDiag>)
ALR_MOMENT_KERNEL(alr_autoopt_moments_adagrad, Moments<AdagradDiag>)
ALR_ELEMENT_KERNEL(alr_autoopt_update_sgd, Update<Identity>)
ALR_ELEMENT_KERNEL(alr_autoopt_update_adam, Update<AdamDiag>)
ALR_ELEMENT_KERNEL(alr_autoopt_update_adagrad, Update<AdagradDiag>)
ALR_SOLVE_KERNEL(alr_autoopt_solve, Solve)
