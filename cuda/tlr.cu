// TLR's rules on the device (docs/algorithms.md §4, paper 004), the twins of src/adapt/tlr.rs:
// the dots α is trained from (per step, or when a window closes), the α update of eq. 9 (one
// block for every unit), and the SGD(+momentum) step with the unit's α read from its record,
// so no step reads anything back to the host.

#include "device.cuh"

// Rate (src/adapt/tlr.rs): one trained α per unit and what its latest update saw.
struct Rate {
    double alpha, ip, den;
    unsigned long long cap_hits;
};
ALR_SIZE(Rate, 32);
ALR_FIELD(Rate, den, 16);
ALR_FIELD(Rate, cap_hits, 24);

struct RateOptions {
    double c, alpha_min;
};
ALR_SIZE(RateOptions, 16);
ALR_FIELD(RateOptions, alpha_min, 8);

struct StepCoeffs {
    float weight_decay, keep;
};
ALR_SIZE(StepCoeffs, 8);
ALR_FIELD(StepCoeffs, keep, 4);

struct StepPrepared {
    float alpha, weight_decay, keep;
};

// θ ← θ − α m with m ← keep·m + G (`Momentum`), or θ ← θ − α G (`Plain`), G = g + λθ.
template <bool MOMENTUM>
struct SgdStep {
    typedef typename std::conditional<MOMENTUM, float, NoState>::type State;
    typedef StepCoeffs Coeffs;
    typedef Rate Record;
    typedef StepPrepared Prepared;
    __device__ static StepPrepared prepare(const StepCoeffs& c, const Rate& r) {
        return StepPrepared{(float)r.alpha, c.weight_decay, c.keep};
    }
    __device__ static float advance(const StepPrepared& p, float g, float theta, State* m) {
        const float big_g = g + p.weight_decay * theta;
        if constexpr (MOMENTUM) {
            *m = p.keep * *m + big_g;
            return p.alpha * *m;
        } else {
            return p.alpha * big_g;
        }
    }
};

// Algorithm 2, lines 5 and 7: [G_t·G_{t−1}, G_t·G_t], keeping G_t (λ by value).
struct StepDots {
    typedef float State;
    typedef float Coeffs;
    typedef NoRecord Record;
    typedef float Prepared;
    __device__ static float prepare(const float& lambda, const NoRecord&) { return lambda; }
    __device__ static void dot(float lambda, float g, float theta, float* previous, double* d0, double* d1) {
        const float now = g + lambda * theta;
        const float before = *previous;
        *previous = now;
        *d0 = (double)now * (double)before;
        *d1 = (double)now * (double)now;
    }
};

// Eq. 10 when a window closes: G = (θ_snapshot − θ)/α, [G·G_prev, G·G], then G_prev ← G and
// θ_snapshot ← θ. State: {θ_snapshot, G_prev}.
struct WindowDots {
    typedef float2 State;
    typedef NoParams Coeffs;
    typedef Rate Record;
    typedef double Prepared;
    __device__ static double prepare(const NoParams&, const Rate& r) { return r.alpha; }
    __device__ static void dot(double alpha, float, float theta, float2* st, double* d0, double* d1) {
        const double now = ((double)st->x - (double)theta) / alpha;
        const double before = (double)st->y;
        st->y = (float)now;
        st->x = theta;
        *d0 = now * before;
        *d1 = now * now;
    }
};

// The first window opens: θ_snapshot ← θ.
struct OpenWindow {
    typedef float2 State;
    typedef NoParams Coeffs;
    typedef NoRecord Record;
    typedef NoParams Prepared;
    __device__ static NoParams prepare(const NoParams& c, const NoRecord&) { return c; }
    __device__ static void dot(NoParams, float, float theta, float2* st, double* d0, double* d1) {
        st->x = theta;
        *d0 = 0.0;
        *d1 = 0.0;
    }
};

// One α update (eq. 9) from [ip, nn]: α (1 + ip/den), den = max(4 (nn − ip), ip/c); a zero
// or non-finite den, or a non-finite result, leaves α; never below alpha_min.
struct Train {
    typedef Rate Record;
    typedef RateOptions Coeffs;
    typedef NoParams Params;
    __device__ static void solve(const NoParams&, const RateOptions& o, const double* sums, Rate* rate) {
        const double ip = sums[0], nn = sums[1];
        const double newton = 4.0 * (nn - ip), cap = ip / o.c;
        const double den = fmax(newton, cap);
        rate->ip = ip;
        rate->den = den;
        if (!(isfinite(ip) && isfinite(nn) && isfinite(den)) || den <= 0.0) return;
        const double next = rate->alpha * (1.0 + ip / den);
        if (!isfinite(next)) return;
        rate->alpha = fmax(next, o.alpha_min);
        rate->cap_hits += cap >= newton ? 1 : 0;
    }
};

ALR_ELEMENT_KERNEL(alr_tlr_step_plain, SgdStep<false>)
ALR_ELEMENT_KERNEL(alr_tlr_step_momentum, SgdStep<true>)
ALR_DOT_KERNEL(alr_tlr_step_dots, StepDots)
ALR_DOT_KERNEL(alr_tlr_window_dots, WindowDots)
ALR_DOT_KERNEL(alr_tlr_open_window, OpenWindow)
ALR_SOLVE_KERNEL(alr_tlr_train, Train)
