"""CPU/GPU parity of the fixed-rate rules (cuda/fixed_rate.cu), for a machine with an NVIDIA GPU and PyTorch:

    python3 tests/gpu/parity_fixed_rate.py            # every check of its section
    python3 tests/gpu/parity_fixed_rate.py --small    # without the largest cases (for compute-sanitizer)
    compute-sanitizer --tool memcheck python3 tests/gpu/parity_fixed_rate.py --small

The kernels are reached only through the library's CUDA device (the C ABI), so this runs the
"fixed-rate" section of parity_capi.py, where the checks are described.
"""
import parity_capi

if __name__ == "__main__":
    parity_capi.main(sections={"fixed-rate"})
