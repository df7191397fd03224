// DoG's rules on the device (docs/algorithms.md §6.1), the twins of src/adapt/dog.rs: pass 1
// (`Distance`, a dot pass: x0 at the first step, [‖θ − x0‖², ‖g + λθ‖²] per tensor), the
// per-group η update (`Solve`, one block for every group), pass 2 (`Step`, η read from the
// group's record). r̄, G and η live on the device: no step reads anything back.
//
// The elementwise arithmetic is the Rust's; the norms are reduced in another (fixed) order, so
// η agrees with the CPU's to rounding, not to the bit.

#include "peers.cuh"

// dog::GroupRecord: per group, written by the solve.
struct DogGroup {
    double rbar, g_sum, eta;
    unsigned long long steps;
};
ALR_SIZE(DogGroup, 32);
ALR_FIELD(DogGroup, eta, 16);
ALR_FIELD(DogGroup, steps, 24);

// dog::GroupOptions: per group, uploaded when an option changes.
struct DogOptions {
    double lr, reps_rel, eps, init_eta;  // init_eta NaN: unset
};
ALR_SIZE(DogOptions, 32);
ALR_FIELD(DogOptions, eps, 16);
ALR_FIELD(DogOptions, init_eta, 24);

struct DogDistancePrepared {
    float lambda;
    bool first;
};

// Pass 1: [‖θ − x0‖², ‖g + λθ‖²] (at the first step x0 ← θ and [‖θ‖², …]). Coefficient: λ.
struct DogDistance {
    typedef float State;
    typedef float Coeffs;
    typedef DogGroup Record;
    typedef DogDistancePrepared Prepared;
    __device__ static DogDistancePrepared prepare(const float& lambda, const DogGroup& r) {
        return DogDistancePrepared{lambda, r.steps == 0};
    }
    __device__ static void dot(const DogDistancePrepared& p, float g, float theta, float* x0, double* d0, double* d1) {
        const double gd = (double)(p.lambda != 0.0f ? fma32(theta, p.lambda, g) : g);
        double r;
        if (p.first) {
            *x0 = theta;
            r = (double)theta;
        } else {
            r = (double)(theta - *x0);
        }
        *d0 = r * r;
        *d1 = gd * gd;
    }
};

// η = lr · r̄ / √G per group (the first step with init_eta set: η = init_eta, reps_rel 0).
struct DogSolve {
    typedef DogGroup Record;
    typedef DogOptions Coeffs;
    typedef NoParams Params;
    __device__ static void solve(const NoParams&, const DogOptions& o, const double* sums, DogGroup* r) {
        const bool init_eta = !isnan(o.init_eta);
        if (r->steps == 0) {
            const double reps_rel = init_eta ? 0.0 : o.reps_rel;
            r->rbar = reps_rel * (1.0 + sqrt(sums[0]));
            r->g_sum = sums[1] + o.eps;
        } else {
            const double d = sqrt(sums[0]);
            // torch.maximum: NaN wins.
            r->rbar = (isnan(d) || d > r->rbar) ? d : r->rbar;
            r->g_sum += sums[1];
        }
        r->eta = (init_eta && r->steps == 0) ? o.init_eta : o.lr * r->rbar / sqrt(r->g_sum);
        r->steps += 1;
    }
};

struct DogStepPrepared {
    float eta, lambda;
};

// Pass 2: θ ← θ − η (g + λθ) in one rounding; the displacement θ − θ_new. Coefficient: λ.
struct DogStep {
    typedef float State;
    typedef float Coeffs;
    typedef DogGroup Record;
    typedef DogStepPrepared Prepared;
    __device__ static DogStepPrepared prepare(const float& lambda, const DogGroup& r) { return DogStepPrepared{(float)r.eta, lambda}; }
    __device__ static float advance(const DogStepPrepared& p, float g, float theta, float*) {
        if (p.lambda != 0.0f) g = fma32(theta, p.lambda, g);
        return theta - fma32(g, -p.eta, theta);
    }
    // The step itself (a scaled launch's: src/adapt/dog.rs's Step::delta).
    __device__ static float delta(const DogStepPrepared& p, float g, float theta, const float*) {
        if (p.lambda != 0.0f) g = fma32(theta, p.lambda, g);
        return p.eta * g;
    }
};

ALR_DOT_KERNEL(alr_dog_distance, DogDistance)
ALR_SOLVE_KERNEL(alr_dog_solve, DogSolve)
ALR_ELEMENT_KERNEL(alr_dog_step, DogStep)
