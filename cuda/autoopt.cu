// AutoOpt on the device (ALGORITHMS.md §1, paper 001): three launches per step, none of which
// needs the host to read anything back, so a step can be captured in a CUDA graph.
//
// 1. `moments` (per tensor): the four weighted sums of pass 1,
//    [Σ D (k² S − N g²) | Σ D·spread, Σ D g g, Σ D g d, Σ D d d], one partial per block.
//    The grid size is a function of the tensor length only (alr_cuda_autoopt_partials), each
//    thread visits a fixed set of elements in a fixed order, and blocks reduce in a fixed tree,
//    so the sums have the same bits on every run and every GPU.
// 2. `solve`: adds each group's partials in a fixed tree (one block per group), then one block
//    checks every group's sums and, only if all are finite, forms per group V, det,
//    the oracle γ_O (eq. 25, with ALGORITHMS.md §1's fallbacks), the smoothing of eq. 26 and the
//    direction multipliers of eq. 14, all in f64 as on the CPU (src/adapt/autoopt.rs).
// 3. `update` (per tensor): absorbs g into the base state and moves θ ← θ − D ĝ (eqs. 9, 14).
//
// Bad input (status.cuh): a non-finite sum (a NaN or Inf in g or the per-sample data) or a
// negative S sets the status code to ALR_STATUS_NON_FINITE / ALR_STATUS_NEGATIVE_SUM_SQ in
// `solve`, before any group is advanced; `update` then changes nothing, and neither does any
// later step until the host has read and cleared the status. `status` points at the code (the
// first field of DeviceStatus); the group step counts live on the device, so no step number is
// recorded.
//
// Compiled with --fmad=false and IEEE division and square root (build.rs), so the elementwise
// arithmetic rounds as the CPU's does; the reductions use a different (fixed) order from the
// CPU's, so the sums agree to rounding, not to the bit.

#include <cuda_runtime.h>
#include <stddef.h>

#include "status.cuh"

// The 2-D solution is rejected as ill-conditioned when det ≤ DET_RTOL · a e (as on the CPU).
#define DET_RTOL 1e-12

// Per-group options, copied to the device when they change (never during a step).
struct AutoOptOptions {
    double nu, gamma_max, eps, beta2;
};

// Per-group state and telemetry, living on the device; read back on demand. Whoever mirrors
// it on the host (tests/gpu/parity_autoopt.py now, the Rust engine later) checks its layout
// through alr_cuda_autoopt_struct_size.
struct AutoOptGroup {
    double gamma[2];  // γ_E (eq. 26)
    double noise, a, c, e, det, gamma_oracle[2];
    float coef_g, coef_d;  // this step's direction multipliers (eq. 14)
    int moved;             // 1: the last step moved θ; 0: skipped (zero gradient)
    int pad;
    unsigned long long steps, fallbacks, clamps, skips;
};

// Pass 1's four sums: [Σ D·spread or Σ D S, Σ D g g, Σ D g d, Σ D d d] (eqs. 22–24).
struct MomentSums {
    double spread, a, c, e;
};

// Where a group's partials lie in the partials buffer (its tensors' partials are contiguous).
struct PartialRange {
    unsigned long long start, count;
};

// The base's diagonal preconditioner D (eqs. 11–12). State: d alone (SGD) or {d, s or v}.
struct Identity {
    typedef float State;
    __device__ Identity(const AutoOptOptions&, unsigned long long) {}
    __device__ float absorb(State*, float) const { return 1.0f; }
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
        return 1.0f / (sqrtf(st->y) + eps);
    }
    __device__ static float direction(const State& st) { return st.x; }
    __device__ static void set_direction(State* st, float d) { st->x = d; }
};

// β^t exactly as the CPU's f64::powi forms it (compiler-rt's __powidf2: square-and-multiply), so
// the bias factor has the CPU's bits; pow() may differ in the last one.
__device__ static double powi(double base, long long exponent) {
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
          inv_sqrt_bias2((float)(1.0 / sqrt(1.0 - powi(o.beta2, (long long)(t < 1 ? 1 : t))))),
          eps((float)o.eps) {}
    // v ← β2 v + (1−β2) g², D = 1/(√(v/(1−β2^t)) + ε); the first-moment bias factor is dropped
    // (ALGORITHMS.md §1: β is adapted instead).
    __device__ float absorb(State* st, float g) const {
        st->y = beta2 * st->y + one_minus_beta2 * g * g;
        return 1.0f / (sqrtf(st->y) * inv_sqrt_bias2 + eps);
    }
    __device__ static float direction(const State& st) { return st.x; }
    __device__ static void set_direction(State* st, float d) { st->x = d; }
};

static const unsigned THREADS = 256;
// Partials per tensor at most: enough blocks to fill an H100 several times over.
static const size_t MAX_PARTIALS = 1024;

static size_t partials_for(size_t len) {
    size_t blocks = (len + THREADS - 1) / THREADS;
    if (blocks > MAX_PARTIALS) blocks = MAX_PARTIALS;
    return blocks == 0 ? 1 : blocks;
}

// Adds `sums` over the block's threads in a fixed tree; thread 0 gets the result.
__device__ static void block_sum4(double sums[4], double (*shared)[THREADS]) {
    for (int j = 0; j < 4; ++j) shared[j][threadIdx.x] = sums[j];
    __syncthreads();
    for (unsigned half = THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half)
            for (int j = 0; j < 4; ++j) shared[j][threadIdx.x] += shared[j][threadIdx.x + half];
        __syncthreads();
    }
    for (int j = 0; j < 4; ++j) sums[j] = shared[j][0];
}

// Pass 1 over one tensor. `rows` (N × len, row-major) or `sum_sq` (len) holds k·g_i or
// Σ (k·g_i)²/k² — entries scaled by k (1 for each sample's own loss, N for BackPACK's g_i/N).
template <typename P>
__global__ void autoopt_moments(const float* __restrict__ grad, const typename P::State* __restrict__ state,
                                const float* __restrict__ sum_sq, const float* __restrict__ rows, size_t n_rows,
                                float k, size_t len, const AutoOptGroup* group, const AutoOptOptions* options,
                                int* status, MomentSums* __restrict__ partials) {
    __shared__ double shared[4][THREADS];
    if (*status != 0) return;  // a sticky error: this step changes nothing (solve skips too)
    const P precond(*options, group->steps + 1);
    double sums[4] = {0.0, 0.0, 0.0, 0.0};
    bool negative = false;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < len; j += stride) {
        const float g = grad[j];
        typename P::State st = state[j];
        const float d = P::direction(st);
        const float w = precond.absorb(&st, g);  // D as the state will be after absorbing g
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
        const float wg = w * g, wd = w * d;
        sums[0] += (double)(w * spread);
        sums[1] += (double)(wg * g);
        sums[2] += (double)(wg * d);
        sums[3] += (double)(wd * d);
    }
    // A negative S poisons its sum, as on the CPU, and says so in DeviceStatus.pad (status[1]),
    // so that solve tells it from a NaN in the data (which poisons the sum too).
    if (negative) {
        sums[0] = __longlong_as_double(0x7ff8000000000001LL);
        status[1] = 1;
    }
    block_sum4(sums, shared);
    if (threadIdx.x == 0) partials[blockIdx.x] = MomentSums{sums[0], sums[1], sums[2], sums[3]};
}

__device__ static bool is_finite(double x) { return isfinite(x); }

// The group's partials added in a fixed tree (block `blockIdx.x` = group).
__global__ void autoopt_group_sums(const MomentSums* __restrict__ partials, const PartialRange* ranges,
                                   MomentSums* __restrict__ group_sums, const int* status) {
    __shared__ double shared[4][THREADS];
    if (*status != 0) return;
    const PartialRange range = ranges[blockIdx.x];
    double sums[4] = {0.0, 0.0, 0.0, 0.0};
    for (size_t p = threadIdx.x; p < range.count; p += blockDim.x) {
        const MomentSums part = partials[range.start + p];
        sums[0] += part.spread;
        sums[1] += part.a;
        sums[2] += part.c;
        sums[3] += part.e;
    }
    block_sum4(sums, shared);
    if (threadIdx.x == 0) group_sums[blockIdx.x] = MomentSums{sums[0], sums[1], sums[2], sums[3]};
}

// The spread sum Σ D (k² S − N g²): `square_scale` is k² for the Σg² form (whose first sum is
// Σ D S) and 0 for the matrix form (whose first sum is already the spread).
__device__ static double spread_of(MomentSums sums, double n, double square_scale) {
    return square_scale != 0.0 ? square_scale * sums.spread - n * sums.a : sums.spread;
}

// Steps 1–5 of ALGORITHMS.md §1 for one group, from its sums (known finite).
__device__ static void solve_group(MomentSums sums, double n, double square_scale, const AutoOptOptions& o, AutoOptGroup* gs) {
    const double a = sums.a, c = sums.c, e = sums.e;
    // Step 1: V = Σ D (S − N g²) / (N (N−1)) (eq. 22), clamped at 0.
    double noise = spread_of(sums, n, square_scale) / (n * (n - 1.0));
    if (noise < 0.0) noise = 0.0;
    const double det = a * e - c * c;
    // γ_E starts at [γ_max, 0] (ALGORITHMS.md §1).
    const double gamma_start[2] = {gs->steps == 0 ? o.gamma_max : gs->gamma[0], gs->steps == 0 ? 0.0 : gs->gamma[1]};
    gs->noise = noise;
    gs->a = a;
    gs->c = c;
    gs->e = e;
    gs->det = det;
    gs->steps += 1;
    if (a == 0.0) {
        // Zero gradient: the base state still absorbs g; γ_E, d and θ stay as they are.
        gs->gamma_oracle[0] = gs->gamma_oracle[1] = 0.0;
        gs->gamma[0] = gamma_start[0];
        gs->gamma[1] = gamma_start[1];
        gs->moved = 0;
        gs->skips += 1;
        return;
    }
    // Step 3: the oracle (eq. 25), else the 1-D problem γ = [min(V/a, γ_max), 0].
    double oracle[2] = {0.0, 0.0};
    bool fell_back = true;
    if (is_finite(det) && det > DET_RTOL * a * e) {
        const double gamma1 = noise * (e - c) / det, gamma2 = noise * c / det;
        if (is_finite(gamma1) && is_finite(gamma2) && gamma1 >= 0.0 && gamma1 <= o.gamma_max && gamma2 >= 0.0 &&
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
    const double raw[2] = {(1.0 - o.nu) * oracle[0] + o.nu * gamma_start[0], (1.0 - o.nu) * oracle[1] + o.nu * gamma_start[1]};
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

// One block: first every group's sums are checked, and only when all are finite is any group's
// state advanced — a bad tensor in one group leaves every group as it was (as on the CPU).
__global__ void autoopt_solve(const MomentSums* __restrict__ group_sums, AutoOptGroup* groups, const AutoOptOptions* options,
                              size_t n_groups, double n, double square_scale, int* status) {
    __shared__ int bad;
    if (*status != 0) return;
    if (threadIdx.x == 0) bad = 3;  // above every code: atomicMin keeps the most basic one found
    __syncthreads();
    for (size_t g = threadIdx.x; g < n_groups; g += blockDim.x) {
        const MomentSums s = group_sums[g];
        if (!(is_finite(spread_of(s, n, square_scale)) && is_finite(s.a) && is_finite(s.c) && is_finite(s.e))) {
            // A NaN or Inf in the inputs is reported before a negative S (status[1], set by
            // moments), as the CPU checks finiteness first.
            const bool negative = square_scale != 0.0 && status[1] != 0 && is_finite(s.a) && is_finite(s.c) && is_finite(s.e);
            atomicMin(&bad, negative ? ALR_STATUS_NEGATIVE_SUM_SQ : ALR_STATUS_NON_FINITE);
        }
    }
    __syncthreads();
    if (bad != 3) {
        if (threadIdx.x == 0) *status = bad;
        return;
    }
    for (size_t g = threadIdx.x; g < n_groups; g += blockDim.x) solve_group(group_sums[g], n, square_scale, options[g], &groups[g]);
}

// Pass 2 over one tensor: absorb g; unless the group was skipped, d ← ĝ and θ ← θ − D ĝ.
template <typename P>
__global__ void autoopt_update(float* __restrict__ param, const float* __restrict__ grad,
                               typename P::State* __restrict__ state, size_t len, const AutoOptGroup* group,
                               const AutoOptOptions* options, const int* status) {
    if (*status != 0) return;
    const P precond(*options, group->steps);  // solve has counted this step already
    const bool moved = group->moved != 0;
    const float coef_g = group->coef_g, coef_d = group->coef_d;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < len; j += stride) {
        const float g = grad[j];
        typename P::State st = state[j];
        const float diag = precond.absorb(&st, g);
        if (moved) {
            const float direction = coef_g * g + coef_d * P::direction(st);
            P::set_direction(&st, direction);
            param[j] -= diag * direction;
        }
        state[j] = st;
    }
}

// ---- C entry points: each enqueues on `stream` and returns the launch's cudaError_t. ----
// `precond`: 0 auto-sgd, 1 auto-adam, 2 auto-adagrad.

extern "C" size_t alr_cuda_autoopt_partials(size_t len) { return partials_for(len); }

template <typename P>
static int launch_moments(const float* grad, const void* state, const float* sum_sq, const float* rows,
                          size_t n_rows, float k, size_t len, const AutoOptGroup* group,
                          const AutoOptOptions* options, int* status, MomentSums* partials, cudaStream_t stream) {
    autoopt_moments<P><<<(unsigned)partials_for(len), THREADS, 0, stream>>>(
        grad, (const typename P::State*)state, sum_sq, rows, n_rows, k, len, group, options, status, partials);
    return (int)cudaGetLastError();
}

extern "C" int alr_cuda_autoopt_moments(int precond, const float* grad, const void* state, const float* sum_sq,
                                        const float* rows, size_t n_rows, float k, size_t len,
                                        const AutoOptGroup* group, const AutoOptOptions* options,
                                        int* status, double* partials, void* stream) {
    if (len == 0) return 0;
    MomentSums* out = (MomentSums*)partials;
    cudaStream_t s = (cudaStream_t)stream;
    switch (precond) {
        case 0: return launch_moments<Identity>(grad, state, sum_sq, rows, n_rows, k, len, group, options, status, out, s);
        case 1: return launch_moments<AdamDiag>(grad, state, sum_sq, rows, n_rows, k, len, group, options, status, out, s);
        case 2: return launch_moments<AdagradDiag>(grad, state, sum_sq, rows, n_rows, k, len, group, options, status, out, s);
        default: return (int)cudaErrorInvalidValue;
    }
}

// Per-group sums, then the solve of every group. `partials` as written by the moments launches,
// `ranges` (n_groups PartialRange) where each group's lie, `group_sums` scratch of n_groups MomentSums.
extern "C" int alr_cuda_autoopt_solve(const double* partials, const void* ranges, double* group_sums, void* groups,
                                      const void* options, size_t n_groups, double n, double square_scale, int* status,
                                      void* stream) {
    if (n_groups == 0) return 0;
    cudaStream_t s = (cudaStream_t)stream;
    autoopt_group_sums<<<(unsigned)n_groups, THREADS, 0, s>>>((const MomentSums*)partials, (const PartialRange*)ranges,
                                                               (MomentSums*)group_sums, status);
    int rc = (int)cudaGetLastError();
    if (rc != 0) return rc;
    autoopt_solve<<<1, THREADS, 0, s>>>((const MomentSums*)group_sums, (AutoOptGroup*)groups, (const AutoOptOptions*)options,
                                         n_groups, n, square_scale, status);
    return (int)cudaGetLastError();
}

// Grid of the elementwise update: a grid-stride loop covers any length.
static const size_t MAX_UPDATE_BLOCKS = 8192;

template <typename P>
static int launch_update(float* param, const float* grad, void* state, size_t len, const AutoOptGroup* group,
                         const AutoOptOptions* options, const int* status, cudaStream_t stream) {
    size_t blocks = (len + THREADS - 1) / THREADS;
    if (blocks > MAX_UPDATE_BLOCKS) blocks = MAX_UPDATE_BLOCKS;
    autoopt_update<P><<<(unsigned)blocks, THREADS, 0, stream>>>(param, grad, (typename P::State*)state, len, group,
                                                                 options, status);
    return (int)cudaGetLastError();
}

extern "C" int alr_cuda_autoopt_update(int precond, float* param, const float* grad, void* state, size_t len,
                                       const void* group, const void* options, const int* status, void* stream) {
    if (len == 0) return 0;
    const AutoOptGroup* gs = (const AutoOptGroup*)group;
    const AutoOptOptions* o = (const AutoOptOptions*)options;
    cudaStream_t s = (cudaStream_t)stream;
    switch (precond) {
        case 0: return launch_update<Identity>(param, grad, state, len, gs, o, status, s);
        case 1: return launch_update<AdamDiag>(param, grad, state, len, gs, o, status, s);
        case 2: return launch_update<AdagradDiag>(param, grad, state, len, gs, o, status, s);
        default: return (int)cudaErrorInvalidValue;
    }
}

// sizeof of the structs shared with the host: 0 AutoOptGroup, 1 AutoOptOptions, 2 PartialRange; -1 past.
extern "C" long alr_cuda_autoopt_struct_size(int which) {
    switch (which) {
        case 0: return (long)sizeof(AutoOptGroup);
        case 1: return (long)sizeof(AutoOptOptions);
        case 2: return (long)sizeof(PartialRange);
        default: return -1;
    }
}
