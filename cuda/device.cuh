// What every kernel of autolr shares: the device status word, the launch shape, the block
// reduction, the kernel templates of src/backend/mod.rs's rule kinds, and the layout checks of
// the records shared with Rust.
//
// The status word: a step cannot report bad input without a host synchronisation, so a check
// that finds some sets `code` (and `step`, the host's count of the step that found it) and every
// later launch that reads the status does nothing: parameters and state stay as they were
// before that step until the host reads the status (src/backend/cuda.rs does so whenever the
// caller reads rates, telemetry or a checkpoint), reports the error and clears it.
//
// Every .cu file is compiled in one translation unit (build.rs), with --fmad=false and IEEE
// division and square root, so elementwise arithmetic rounds as the CPU's does.
#pragma once

#include <stddef.h>
#include <type_traits>

enum { ALR_STATUS_NON_FINITE = 1, ALR_STATUS_NEGATIVE = 2 };

struct DeviceStatus {
    int code;                 // 0: fine
    int negative_sum_sq;      // set by a moments pass that met S < 0 (its sum is then NaN)
    unsigned long long step;  // the step that set `code`
};

// Records the first error only: later ones (the same step's other tensors) keep it.
__device__ inline void report(DeviceStatus* status, int code, unsigned long long step) {
    if (atomicCAS(&status->code, 0, code) == 0) status->step = step;
}

// Threads per block of every launch (src/backend/cuda.rs launches with the same number).
#define ALR_THREADS 256

// The layout of a struct shared with Rust, checked here at compile time and, from these same
// lines, against Rust's offset_of!/size_of by tests/cuda_layout.rs.
#define ALR_SIZE(Type, bytes) static_assert(sizeof(Type) == (bytes), #Type " size differs from Rust's")
#define ALR_FIELD(Type, field, offset) static_assert(offsetof(Type, field) == (offset), #Type "." #field " offset differs from Rust's")

struct NoRecord {};
struct NoState {};
struct NoParams {};

// Adds `sums` over the block's threads in a fixed tree (with `last_is_max`, the fourth slot
// takes the maximum instead); thread 0 gets the result.
__device__ inline void block_sum4(double sums[4], double (*shared)[ALR_THREADS], bool last_is_max = false) {
    for (int j = 0; j < 4; ++j) shared[j][threadIdx.x] = sums[j];
    __syncthreads();
    for (unsigned half = ALR_THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half)
            for (int j = 0; j < 4; ++j) {
                const double other = shared[j][threadIdx.x + half];
                shared[j][threadIdx.x] = (last_is_max && j == 3) ? fmax(shared[j][threadIdx.x], other) : shared[j][threadIdx.x] + other;
            }
        __syncthreads();
    }
    for (int j = 0; j < 4; ++j) sums[j] = shared[j][0];
}

// The block's four sums (`block_sum4`) into partials[4·block].
__device__ inline void block_partials(double sums[4], double (*shared)[ALR_THREADS], double* partials, bool last_is_max) {
    block_sum4(sums, shared, last_is_max);
    if (threadIdx.x == 0)
        for (int j = 0; j < 4; ++j) partials[4 * blockIdx.x + j] = sums[j];
}

#define ALR_GRID_STRIDE(i, len) \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (len); i += (size_t)gridDim.x * blockDim.x)

// Whether a rule sets θ itself (`static constexpr bool ASSIGNS = true` and `next`, as
// ElementRule::ASSIGNS in Rust: schedule-free's interpolations), else subtracts `advance`.
template <typename Rule, typename = void>
struct assigns : std::false_type {};
template <typename Rule>
struct assigns<Rule, std::void_t<decltype(Rule::ASSIGNS)>> : std::bool_constant<Rule::ASSIGNS> {};

// Whether a rule's displacement differs from the move `advance` makes (`delta`, as the peers'
// ElementRule::delta in Rust: the step itself, not θ − fl(θ − step)).
template <typename Rule, typename = void>
struct has_delta : std::false_type {};
template <typename Rule>
struct has_delta<Rule, std::void_t<decltype(&Rule::delta)>> : std::true_type {};

// One element of an ElementRule: θ − advance(…) (`scaled` 0), θ − scale·delta(…) from the
// advanced state (`scaled` 1: update_scaled; delta is advance's value unless the rule has its
// own), or next(…) for a rule that assigns.
template <typename Rule>
__device__ inline float element_next(const typename Rule::Prepared& p, float g, float theta, typename Rule::State* st, float scale, int scaled) {
    if constexpr (assigns<Rule>::value) {
        return Rule::next(p, g, theta, st);
    } else {
        const float moved = Rule::advance(p, g, theta, st);
        if constexpr (has_delta<Rule>::value)
            if (scaled) return theta - scale * Rule::delta(p, g, theta, st);
        return scaled ? theta - scale * moved : theta - moved;
    }
}

// An ElementRule (src/backend/mod.rs): θ ← θ − scale·advance(prepare(c, record), g, θ, state),
// or θ ← next(…) for a rule that assigns. `advance` returns the displacement from the advanced
// state, so a scaled launch is the CPU's advance-then-`θ − scale·delta` (update_scaled).
template <typename Rule>
__device__ void element_update(float* __restrict__ param, const float* __restrict__ grad, void* state, size_t len,
                               const typename Rule::Coeffs& c, const void* record, const DeviceStatus* status, float scale, int scaled) {
    typedef typename Rule::State State;
    if (status->code != 0) return;  // this or an earlier step found bad input: change nothing
    const typename Rule::Prepared p = Rule::prepare(c, *(const typename Rule::Record*)record);
    ALR_GRID_STRIDE(i, len) {
        const float theta = param[i];
        if constexpr (std::is_empty<State>::value) {
            State none;
            param[i] = element_next<Rule>(p, grad[i], theta, &none, scale, scaled);
        } else {
            State st = ((State*)state)[i];
            param[i] = element_next<Rule>(p, grad[i], theta, &st, scale, scaled);
            ((State*)state)[i] = st;
        }
    }
}

#define ALR_ELEMENT_KERNEL(name, Rule)                                                                       \
    extern "C" __global__ void name(float* param, const float* grad, void* state, unsigned long long len,   \
                                    Rule::Coeffs c, const void* record, const DeviceStatus* status,         \
                                    float scale, int scaled) {                                               \
        element_update<Rule>(param, grad, state, len, c, record, status, scale, scaled);                     \
    }

// A NestedRule (src/backend/mod.rs): θ ← Rule::next<Inner>(prepare(c, record), inner's
// scalars, g, θ, z, state), the inner rule stepping the rule's own variable z with its state in
// the same pass (schedule-free's y, z and a fixed-rate base).
template <typename Rule, typename Inner>
__device__ void nested_update(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ outer, void* state, size_t len,
                              const typename Rule::Coeffs& c, const typename Inner::Coeffs& ic, const void* record, const DeviceStatus* status) {
    typedef typename Inner::State State;
    if (status->code != 0) return;  // this or an earlier step found bad input: change nothing
    const typename Rule::Prepared p = Rule::prepare(c, *(const typename Rule::Record*)record);
    const typename Inner::Prepared q = Inner::prepare(ic, NoRecord{});
    ALR_GRID_STRIDE(i, len) {
        float z = outer[i];
        if constexpr (std::is_empty<State>::value) {
            State none;
            param[i] = Rule::template next<Inner>(p, q, grad[i], param[i], &z, &none);
        } else {
            State st = ((State*)state)[i];
            param[i] = Rule::template next<Inner>(p, q, grad[i], param[i], &z, &st);
            ((State*)state)[i] = st;
        }
        outer[i] = z;
    }
}

#define ALR_NESTED_KERNEL(name, Rule, Inner)                                                                      \
    extern "C" __global__ void name(float* param, const float* grad, float* outer, void* state, unsigned long long len, \
                                    Rule::Coeffs c, Inner::Coeffs ic, const void* record, const DeviceStatus* status) {  \
        nested_update<Rule, Inner>(param, grad, outer, state, len, c, ic, record, status);                        \
    }

// A DotRule: per block [Σ dot₀, Σ dot₁, 0, 0] into partials[4·block] (the state advanced, or
// with `commit` 0 only read: a sharded step's measuring pass).
template <typename Rule>
__device__ void dot_partials(const float* __restrict__ param, const float* __restrict__ grad, void* state, size_t len,
                             const typename Rule::Coeffs& c, const void* record, const DeviceStatus* status,
                             double* __restrict__ partials, int commit) {
    __shared__ double shared[4][ALR_THREADS];
    if (status->code != 0) return;
    typedef typename Rule::State State;
    const typename Rule::Prepared p = Rule::prepare(c, *(const typename Rule::Record*)record);
    double sums[4] = {0.0, 0.0, 0.0, 0.0};
    ALR_GRID_STRIDE(i, len) {
        State st = ((State*)state)[i];
        double d0, d1;
        Rule::dot(p, grad[i], param[i], &st, &d0, &d1);
        if (commit) ((State*)state)[i] = st;
        sums[0] += d0;
        sums[1] += d1;
    }
    block_partials(sums, shared, partials, false);
}

#define ALR_DOT_KERNEL(name, Rule)                                                                            \
    extern "C" __global__ void name(const float* param, const float* grad, void* state, unsigned long long len, \
                                    Rule::Coeffs c, const void* record, const DeviceStatus* status,           \
                                    double* partials, int commit) {                                           \
        dot_partials<Rule>(param, grad, state, len, c, record, status, partials, commit);                    \
    }

// A MomentRule: per block [Σ w·s, Σ w g g, Σ w g y, Σ w y y] with (w, y) = weights(state, g) and s
// the column's spread Σ_i (k x_ij)² − N g_j² from the N × len rows, or S_j itself from Σg² (the
// group sums then form k² Σ w S − N Σ w g g). `rows` (k·g_i, row-major) or `sum_sq`.
template <typename Rule>
__device__ void moment_partials(const float* __restrict__ grad, const void* state, const float* __restrict__ sum_sq,
                                const float* __restrict__ rows, size_t n_rows, float k, size_t len,
                                const typename Rule::Coeffs& c, const void* record, DeviceStatus* status,
                                double* __restrict__ partials) {
    __shared__ double shared[4][ALR_THREADS];
    if (status->code != 0) return;
    typedef typename Rule::State State;
    const typename Rule::Prepared p = Rule::prepare(c, *(const typename Rule::Record*)record);
    double sums[4] = {0.0, 0.0, 0.0, 0.0};
    bool negative = false;
    ALR_GRID_STRIDE(j, len) {
        const float g = grad[j];
        float w, y;
        Rule::weights(p, ((const State*)state)[j], g, &w, &y);
        float spread;
        if (rows) {
            // Σ_i (k x_ij − g_j)² + 2 g_j Σ_i (k x_ij − g_j) = Σ_i (k x_ij)² − N g_j², in the
            // CPU's order (rows in order, f32 sums, combined in f64 and rounded once): a mean
            // much larger than the spread does not cancel the spread away.
            float sq = 0.0f, dev = 0.0f;
            for (size_t i = 0; i < n_rows; ++i) {
                const float x = k * rows[i * len + j] - g;
                sq += x * x;
                dev += x;
            }
            spread = (float)((double)sq + 2.0 * (double)g * (double)dev);
        } else {
            spread = sum_sq[j];
            negative |= spread < 0.0f;
        }
        const float wg = w * g, wy = w * y;
        sums[0] += (double)(w * spread);
        sums[1] += (double)(wg * g);
        sums[2] += (double)(wg * y);
        sums[3] += (double)(wy * y);
    }
    // A negative S poisons its sum, as on the CPU, and is flagged so that the check of the
    // sums tells it from a NaN in the data (which poisons the sum too).
    if (negative) {
        sums[0] = __longlong_as_double(0x7ff8000000000001LL);
        status->negative_sum_sq = 1;
    }
    block_partials(sums, shared, partials, false);
}

#define ALR_MOMENT_KERNEL(name, Rule)                                                                        \
    extern "C" __global__ void name(const float* grad, const void* state, const float* sum_sq, const float* rows, \
                                    unsigned long long n_rows, float k, unsigned long long len, Rule::Coeffs c,  \
                                    const void* record, DeviceStatus* status, double* partials) {            \
        moment_partials<Rule>(grad, state, sum_sq, rows, n_rows, k, len, c, record, status, partials);      \
    }

// What a SampledRule makes of one element (src/backend/mod.rs's `Sampled`).
struct Sampled {
    float displacement;
    double sums[3];
    float max;
};

// A SampledRule: per element, x = Σ_i (k x_ij)² / N from the N × len rows (rows in order, f32
// sums, as the CPU's spread about 0) or from Σg² (k² S / N in f64), or g² without either; then
// the rule advances the state (written only with `commit`). With `param` it moves θ by the
// displacement; otherwise per block [Σ sums₀, Σ sums₁, Σ sums₂, max(0, max)] into partials[4·block].
template <typename Rule>
__device__ void sampled_pass(float* __restrict__ param, const float* __restrict__ grad, const float* __restrict__ h, void* state,
                             const float* __restrict__ sum_sq, const float* __restrict__ rows, size_t n_rows, double k, size_t len,
                             const typename Rule::Coeffs& c, const void* record, const DeviceStatus* status,
                             double* __restrict__ partials, int commit) {
    __shared__ double shared[4][ALR_THREADS];
    if (status->code != 0) return;
    typedef typename Rule::State State;
    const typename Rule::Prepared p = Rule::prepare(c, *(const typename Rule::Record*)record);
    double sums[4] = {0.0, 0.0, 0.0, 0.0};
    float max = 0.0f;
    ALR_GRID_STRIDE(j, len) {
        const float g = grad[j];
        double x;
        if (rows) {
            const float kf = (float)k;
            float sq = 0.0f;
            for (size_t i = 0; i < n_rows; ++i) {
                const float d = kf * rows[i * len + j];
                sq += d * d;
            }
            x = (double)sq / (double)n_rows;
        } else if (sum_sq) {
            x = k * k * (double)sum_sq[j] / (double)n_rows;
        } else {
            x = (double)g * (double)g;
        }
        State st = ((State*)state)[j];
        const Sampled out = Rule::advance(p, g, x, h[j], &st);
        if (commit) ((State*)state)[j] = st;
        if (param) {
            param[j] = param[j] - out.displacement;
        } else {
            for (int i = 0; i < 3; ++i) sums[i] += out.sums[i];
            max = fmaxf(max, out.max);
        }
    }
    if (param) return;
    sums[3] = (double)max;
    block_partials(sums, shared, partials, true);
}

#define ALR_SAMPLED_KERNEL(name, Rule)                                                                           \
    extern "C" __global__ void name(float* param, const float* grad, const float* h, void* state, const float* sum_sq, \
                                    const float* rows, unsigned long long n_rows, double k, unsigned long long len,   \
                                    Rule::Coeffs c, const void* record, const DeviceStatus* status, double* partials,   \
                                    int commit) {                                                                      \
        sampled_pass<Rule>(param, grad, h, state, sum_sq, rows, n_rows, k, len, c, record, status, partials, commit); \
    }

// A SolveRule: one block, every record from its four sums (already added and checked).
#define ALR_SOLVE_KERNEL(name, Rule)                                                                         \
    extern "C" __global__ void name(const double* sums, void* records, const void* coeffs,                  \
                                    unsigned long long n_records, Rule::Params p, const DeviceStatus* status) { \
        if (status->code != 0) return;                                                                       \
        for (size_t r = threadIdx.x; r < n_records; r += blockDim.x)                                         \
            Rule::solve(p, ((const Rule::Coeffs*)coeffs)[r], sums + 4 * r, ((Rule::Record*)records) + r);   \
    }
