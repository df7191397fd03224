// The device's own kernels (src/backend/cuda.rs), which know nothing of any algorithm: input
// checks, and the per-record sums a solve reads.

#include "device.cuh"

// Sets the status when `x` holds a NaN or Inf (or, with `non_negative`, a negative value),
// before any update of the step runs.
extern "C" __global__ void alr_check_values(const float* x, unsigned long long len, unsigned long long step, int non_negative,
                                            DeviceStatus* status) {
    if (status->code != 0) return;
    ALR_GRID_STRIDE(i, len) {
        const bool bad = non_negative ? x[i] < 0.0f : !isfinite(x[i]);
        if (bad) {
            report(status, non_negative ? ALR_STATUS_NEGATIVE : ALR_STATUS_NON_FINITE, step);
            return;
        }
    }
}

// Where a record's partials lie in the partials buffer (its tensors' partials are contiguous).
struct PartialRange {
    unsigned long long start, count;
};
ALR_SIZE(PartialRange, 16);

// Block r adds record r's partials in a fixed tree. `square_scale` k² (Σg² moments): the first
// sum becomes k² Σ w S − N Σ w g g, the spread; 0 (rows, dots): the sums are kept as they are.
// `last_is_max`: the fourth slot is the maximum of the partials (a sampled pass's), not their sum.
extern "C" __global__ void alr_group_sums(const double* __restrict__ partials, const PartialRange* ranges,
                                          double* __restrict__ group_sums, double n, double square_scale, int last_is_max,
                                          const DeviceStatus* status) {
    __shared__ double shared[4][ALR_THREADS];
    if (status->code != 0) return;
    const PartialRange range = ranges[blockIdx.x];
    double sums[4] = {0.0, 0.0, 0.0, 0.0};
    for (size_t p = threadIdx.x; p < range.count; p += blockDim.x)
        for (int j = 0; j < 4; ++j) {
            const double v = partials[4 * (range.start + p) + j];
            sums[j] = (last_is_max && j == 3) ? fmax(sums[j], v) : sums[j] + v;
        }
    block_sum4(sums, shared, last_is_max != 0);
    if (threadIdx.x == 0) {
        if (square_scale != 0.0) sums[0] = square_scale * sums[0] - n * sums[1];
        for (int j = 0; j < 4; ++j) group_sums[4 * blockIdx.x + j] = sums[j];
    }
}

// One block: when any record's sums are not finite, the step stops here, before any record
// changes (as on the CPU). A NaN or Inf in the inputs is reported before a negative S.
extern "C" __global__ void alr_check_sums(const double* group_sums, unsigned long long n_records, unsigned long long step,
                                          DeviceStatus* status) {
    __shared__ int bad;
    if (status->code != 0) return;
    if (threadIdx.x == 0) bad = 3;  // above every code: atomicMin keeps the most basic one found
    __syncthreads();
    for (size_t r = threadIdx.x; r < n_records; r += blockDim.x) {
        const double* s = group_sums + 4 * r;
        if (!(isfinite(s[0]) && isfinite(s[1]) && isfinite(s[2]) && isfinite(s[3]))) {
            const bool negative = status->negative_sum_sq != 0 && isfinite(s[1]) && isfinite(s[2]) && isfinite(s[3]);
            atomicMin(&bad, negative ? ALR_STATUS_NEGATIVE : ALR_STATUS_NON_FINITE);
        }
    }
    __syncthreads();
    if (threadIdx.x == 0 && bad != 3) report(status, bad, step);
}

// Sharded solves whose fourth slot is a maximum: that slot of every record into `maxima`
// (`aside`), where the communicator combines it by a maximum, or back after it has.
extern "C" __global__ void alr_move_maxima(double* group_sums, double* maxima, unsigned long long n_records, int aside) {
    for (size_t r = threadIdx.x; r < n_records; r += blockDim.x) {
        if (aside)
            maxima[r] = group_sums[4 * r + 3];
        else
            group_sums[4 * r + 3] = maxima[r];
    }
}

ALR_SIZE(DeviceStatus, 16);
ALR_FIELD(DeviceStatus, negative_sum_sq, 4);
ALR_FIELD(DeviceStatus, step, 8);
