"""CPU/GPU parity of the AutoOpt rules (cuda/autoopt.cu), for a machine with an NVIDIA GPU and PyTorch:

    python3 tests/gpu/parity_autoopt.py            # every check of its section
    python3 tests/gpu/parity_autoopt.py --small    # without the largest cases (for compute-sanitizer)
    compute-sanitizer --tool memcheck python3 tests/gpu/parity_autoopt.py --small

The kernels are reached only through the library's CUDA device (the C ABI), so this runs the
"autoopt" section of parity_capi.py, where the checks are described.
"""
import parity_capi

if __name__ == "__main__":
    parity_capi.main(sections={"autoopt"})
