// What the tuning-free peers' kernels share (cuda/prodigy.cu, dadapt.cu, dog.cu), the twins of
// the helpers src/adapt/prodigy.rs exports to dadapt.rs and dog.rs.
#pragma once

#include "device.cuh"

// `a·b + c` rounded once to f32, as torch's CPU kernels form `add_(x, alpha=a)` and `addcmul_`:
// formed in f64 (the product is exact there) and rounded once, as prodigy::fma32 does, so the
// bits do not depend on an FMA instruction (and --fmad=false keeps nvcc from fusing the f64
// multiply and add).
__device__ inline float fma32(float a, float b, float c) { return (float)((double)a * (double)b + (double)c); }

// Python's max(a, b) and min(a, b): `b` only when it is larger (smaller); a NaN `b` keeps `a`.
__device__ inline double py_max(double a, double b) { return b > a ? b : a; }
__device__ inline double py_min(double a, double b) { return b < a ? b : a; }

// The references' bias correction ((1 − β2^(k+1))^0.5) / (1 − β1^(k+1)), 1 when off. The CPU
// forms the powers with libm's pow, which CUDA's pow matches to within its 2-ulp bound, not
// always to the bit; x^0.5 is sqrt here (correctly rounded; libm's pow(x, 0.5) is within
// 0.52 ulp of it). So these scalars agree with the CPU's to rounding, as the reductions do.
__device__ inline double bias_correction(bool on, double beta1, double beta2, unsigned long long k) {
    if (!on) return 1.0;
    const double t = (double)(k + 1);
    return sqrt(1.0 - pow(beta2, t)) / (1.0 - pow(beta1, t));
}
