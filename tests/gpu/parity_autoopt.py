"""CPU/GPU parity of the AutoOpt rules (cuda/autoopt.cu): the "autoopt" section of parity_capi.py
(through the C ABI, the only way to the kernels), where the checks and flags are described."""
import parity_capi

if __name__ == "__main__":
    parity_capi.main(sections={"autoopt"})
