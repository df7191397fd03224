// vSGD's rules on the device (docs/algorithms.md §2, paper 002), the twins of src/adapt/vsgd.rs:
// vSGD-l's per-element averages and step, vSGD-g/-b's pass 1 (averages and the unit's sums and
// h⁺), the unit solve of eq. 8 (one block for every unit) and the move with the unit's η read
// from its record, so no step reads anything back to the host. The finite-difference curvature
// calls a host callback and stays on the CPU: on a GPU the caller passes curvature.

#include "device.cuh"

// One translation unit holds every .cu file: vSGD's names stay in their own namespace.
namespace vsgd {

// Per-element state of vSGD-l and of vSGD-g/-b.
struct LocalElem {
    float gbar, vbar, hbar, tau;
};
ALR_SIZE(LocalElem, 16);
ALR_FIELD(LocalElem, tau, 12);

struct SharedElem {
    float gbar, hbar;
};
ALR_SIZE(SharedElem, 8);
ALR_FIELD(SharedElem, hbar, 4);

// One unit's scalars: the average l of Σ x, τ and η.
struct VsgdUnit {
    double l, tau, eta;
};
ALR_SIZE(VsgdUnit, 24);
ALR_FIELD(VsgdUnit, eta, 16);

// 1/n, (n − 1)/n and ε, in the precision of the arithmetic that reads them.
template <typename T>
struct Rates {
    T inv_n, frac, eps;
};
typedef Rates<float> VsgdRates;
ALR_SIZE(VsgdRates, 12);
ALR_FIELD(VsgdRates, eps, 8);

struct SlowStartCoeffs {
    float inv_t, eps, c;
    unsigned finishing;
};
ALR_SIZE(SlowStartCoeffs, 16);
ALR_FIELD(SlowStartCoeffs, c, 8);
ALR_FIELD(SlowStartCoeffs, finishing, 12);

struct AverageCoeffs {
    double slow_inv_t;
    float eps;
};
ALR_SIZE(AverageCoeffs, 16);
ALR_FIELD(AverageCoeffs, eps, 8);

struct UnitParams {
    Rates<double> rates;
    double slow_inv_t, c;
    unsigned finishing;
};
ALR_SIZE(UnitParams, 48);
ALR_FIELD(UnitParams, slow_inv_t, 24);
ALR_FIELD(UnitParams, c, 32);
ALR_FIELD(UnitParams, finishing, 40);

template <typename T>
__device__ inline T at_least(T a, T floor) {
    return a > floor ? a : floor;  // a NaN `a` gives `floor`
}

// (1 − 1/τ)·avg + (1/τ)·sample, formed in f64 (§2.2) and rounded once.
__device__ inline float average_f32(float avg, double sample, float inv_tau) {
    return (float)((1.0 - (double)inv_tau) * (double)avg + (double)inv_tau * sample);
}

template <typename T>
__device__ inline T rho_of(const Rates<T>& r, T gbar_sq, T second_moment) {
    return gbar_sq / at_least(second_moment * r.inv_n + r.frac * gbar_sq, r.eps);
}

template <typename T>
__device__ inline T eta_of(const Rates<T>& r, T rho, T curvature) {
    return rho / at_least(curvature, r.eps);
}

template <typename T>
__device__ inline T next_tau(T tau, T rho) {
    return at_least((T(1) - rho) * tau + T(1), T(1));
}

__device__ inline void local_average(LocalElem* e, float g, double x, float h, float inv_tau, float eps) {
    e->gbar = average_f32(e->gbar, (double)g, inv_tau);
    e->vbar = average_f32(e->vbar, x, inv_tau);
    e->hbar = average_f32(e->hbar, (double)at_least(h, eps), inv_tau);
}

__device__ inline float local_eta(const VsgdRates& r, const LocalElem& e) {
    return eta_of(r, rho_of(r, e.gbar * e.gbar, e.vbar), e.hbar);
}

struct LocalSlowStart {
    typedef LocalElem State;
    typedef SlowStartCoeffs Coeffs;
    typedef NoRecord Record;
    typedef SlowStartCoeffs Prepared;
    __device__ static SlowStartCoeffs prepare(const SlowStartCoeffs& c, const NoRecord&) { return c; }
    __device__ static Sampled advance(const SlowStartCoeffs& p, float g, double x, float h, LocalElem* e) {
        local_average(e, g, x, h, p.inv_t, p.eps);
        if (p.finishing) {
            e->vbar = p.c * e->vbar;
            e->tau = 2.0f;
        }
        return Sampled{0.0f, {0.0, 0.0, 0.0}, 0.0f};
    }
};

// Algorithm 1 after the slow start: the averages with 1/τ, ρ, τ, and the displacement η g.
struct LocalStep {
    typedef LocalElem State;
    typedef VsgdRates Coeffs;
    typedef NoRecord Record;
    typedef VsgdRates Prepared;
    __device__ static VsgdRates prepare(const VsgdRates& c, const NoRecord&) { return c; }
    __device__ static Sampled advance(const VsgdRates& r, float g, double x, float h, LocalElem* e) {
        local_average(e, g, x, h, 1.0f / e->tau, r.eps);
        const float rho = rho_of(r, e->gbar * e->gbar, e->vbar);
        e->tau = next_tau(e->tau, rho);
        const float displacement = eta_of(r, rho, e->hbar) * g;
        return Sampled{displacement, {(double)g * (double)displacement, 0.0, 0.0}, 0.0f};
    }
};

// θ ← θ − η g from the advanced state (GI's apply over vsgd-l).
struct LocalMove {
    typedef LocalElem State;
    typedef VsgdRates Coeffs;
    typedef NoRecord Record;
    typedef VsgdRates Prepared;
    __device__ static VsgdRates prepare(const VsgdRates& c, const NoRecord&) { return c; }
    __device__ static float advance(const VsgdRates& r, float g, float, LocalElem* e) { return local_eta(r, *e) * g; }
};

struct AveragePrepared {
    float inv_tau, eps;
};

__device__ inline double unit_inv_tau(double slow_inv_t, const VsgdUnit& u) { return slow_inv_t > 0.0 ? slow_inv_t : 1.0 / u.tau; }

// Pass 1 of vSGD-g/-b: gbar and hbar with the unit's 1/τ, and [gbar², x, g²] with max hbar.
struct SharedAverages {
    typedef SharedElem State;
    typedef AverageCoeffs Coeffs;
    typedef VsgdUnit Record;
    typedef AveragePrepared Prepared;
    __device__ static AveragePrepared prepare(const AverageCoeffs& c, const VsgdUnit& u) {
        return AveragePrepared{(float)unit_inv_tau(c.slow_inv_t, u), c.eps};
    }
    __device__ static Sampled advance(const AveragePrepared& p, float g, double x, float h, SharedElem* e) {
        e->gbar = average_f32(e->gbar, (double)g, p.inv_tau);
        e->hbar = average_f32(e->hbar, (double)at_least(h, p.eps), p.inv_tau);
        const double gbar = (double)e->gbar, gd = (double)g;
        return Sampled{0.0f, {gbar * gbar, x, gd * gd}, e->hbar};
    }
};

// Eq. 8 on a unit's [Σ gbar², Σ x, Σ g², h⁺]: l's average, then (after the slow start) ρ, η, τ.
struct UnitSolve {
    typedef VsgdUnit Record;
    typedef NoRecord Coeffs;
    typedef UnitParams Params;
    __device__ static void solve(const UnitParams& p, const NoRecord&, const double* sums, VsgdUnit* u) {
        const double inv_tau = unit_inv_tau(p.slow_inv_t, *u);
        u->l = (1.0 - inv_tau) * u->l + inv_tau * sums[1];
        if (p.slow_inv_t > 0.0) {
            if (p.finishing) {
                u->l *= p.c;
                u->tau = 2.0;
            }
            return;
        }
        const double rho = rho_of(p.rates, sums[0], u->l);
        u->eta = eta_of(p.rates, rho, sums[3]);
        u->tau = next_tau(u->tau, rho);
    }
};

// θ ← θ − η g with the unit's η.
struct SharedMove {
    typedef SharedElem State;
    typedef NoParams Coeffs;
    typedef VsgdUnit Record;
    typedef float Prepared;
    __device__ static float prepare(const NoParams&, const VsgdUnit& u) { return (float)u.eta; }
    __device__ static float advance(float eta, float g, float, SharedElem*) { return eta * g; }
};

}  // namespace vsgd

ALR_SAMPLED_KERNEL(alr_vsgd_local_slow_start, vsgd::LocalSlowStart)
ALR_SAMPLED_KERNEL(alr_vsgd_local_step, vsgd::LocalStep)
ALR_ELEMENT_KERNEL(alr_vsgd_local_move, vsgd::LocalMove)
ALR_SAMPLED_KERNEL(alr_vsgd_shared_averages, vsgd::SharedAverages)
ALR_SOLVE_KERNEL(alr_vsgd_unit_solve, vsgd::UnitSolve)
ALR_ELEMENT_KERNEL(alr_vsgd_shared_move, vsgd::SharedMove)
