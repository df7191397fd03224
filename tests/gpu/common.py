"""What the GPU harnesses share: the library (the CPU optimizers every harness compares with),
device buffers between NaN sentinels, and the summary line recorded in docs/gpu-validation.md."""
import datetime
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bindings" / "python"))
import autolr  # noqa: E402,F401  (re-exported: the CPU library every harness compares with)

PAD = 64  # sentinel floats on each side of every device buffer


def padded(host):
    """A device buffer holding `host` (float32, flattened) between NaN sentinels; returns
    (buffer, view of the data)."""
    host = np.ascontiguousarray(host, np.float32).ravel()
    buf = torch.full((host.size + 2 * PAD,), float("nan"), dtype=torch.float32, device="cuda")
    buf[PAD:PAD + host.size] = torch.from_numpy(host).cuda()
    return buf, buf[PAD:PAD + host.size]


def sentinels_intact(*bufs):
    return all(bool(torch.isnan(b[:PAD]).all() and torch.isnan(b[-PAD:]).all()) for b in bufs if b is not None)


def report(check, ok, detail=""):
    """One line per check; returns 1 on failure (to count)."""
    print(f"{'ok  ' if ok else 'FAIL'} {check} {detail}".rstrip(), flush=True)
    return 0 if ok else 1


def summary(failures):
    props = torch.cuda.get_device_properties(0)
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True).stdout.strip()
    print(f"{datetime.date.today()} {props.name} driver {driver} torch {torch.__version__}: {failures} failure(s)")
    sys.exit(1 if failures else 0)
