"""The float64 reference of the peers (reference_peers.py) against the authors' own code, where
the two overlap, so that the reference test_compositions.py relies on is known right: Prodigy
against prodigyopt 1.1.2's `Prodigy`, schedule-free over adamw and over sgd against
schedulefree 1.4.1's `AdamWScheduleFree` and `SGDScheduleFree` (docs/algorithms.md §6: these
packages are the specification). Both sides run in float64 — torch on float64 tensors, the
reference in NumPy — on the same gradients: three tensors of different sizes (one starting at
zero, Prodigy's scalar p0) in two param groups with different options, 120 steps.

Both sides compute in float64 and differ only in the order of their operations (torch fuses
lerp and addcmul and sums in its own order), ~1e-16 per operation. Schedule-free keeps that
(measured ≤ 1e-15 after 120 steps); Prodigy's d, a ratio of running sums whose numerator
cancels, amplifies it (measured ≤ 6.4e-12 in d_numerator, 5.1e-12 in the parameters). The tolerance is
1e-9 relative (to each tensor's largest entry, and for each scalar): a wrong operation shows at
1e-3 or more. Needs torch, prodigyopt and schedulefree
(scripts/test.sh's torch stage installs them and runs this file with AUTOLR_NO_SKIPS=1, where a
skip is a failure)."""
import os

import numpy as np
import pytest

from conftest import import_torch

torch = import_torch()
if os.environ.get("AUTOLR_NO_SKIPS") == "1":
    import prodigyopt
    import schedulefree
else:
    prodigyopt = pytest.importorskip("prodigyopt", reason="prodigyopt==1.1.2 is not in this venv; scripts/test.sh's torch stage installs it")
    schedulefree = pytest.importorskip("schedulefree", reason="schedulefree==1.4.1 is not in this venv; scripts/test.sh's torch stage installs it")

import reference_peers as rp  # noqa: E402

SHAPES = [(13, 7), (29,), (5, 3, 4)]
GROUPS = [0, 1, 0]
STEPS = 120
RTOL = 1e-9


def start():
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(s) for s in SHAPES]
    params[2][...] = 0.0          # Prodigy keeps a scalar p0 for an all-zero tensor
    return params


def gradient(rng, p):
    """A noisy quadratic's gradient at p (each side at its own parameters, the same noise)."""
    h = np.linspace(0.5, 2.0, p.size).reshape(p.shape)
    return h * (p - 0.3) + 0.5 * rng.standard_normal(p.shape)


def torch_groups(tensors, options):
    return [dict(params=[t for t, gid in zip(tensors, GROUPS) if gid == g], **opts) for g, opts in enumerate(options)]


def assert_close(ours, theirs, what):
    for i, (a, b) in enumerate(zip(ours, theirs)):
        b = b.detach().numpy()
        err = float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-300)
        assert err <= RTOL, f"{what}: tensor {i} differs by {err:.2e} (relative to its largest entry) > {RTOL:.0e}"


def run(params, tensors, official, ref, compare):
    """Steps both on the same gradient noise, each at its own parameters; `compare(t)` after
    step t."""
    rng_ref, rng_official = np.random.default_rng(9), np.random.default_rng(9)
    for t in range(STEPS):
        for tensor in tensors:
            tensor.grad = torch.from_numpy(gradient(rng_official, tensor.detach().numpy()))
        official.step()
        ref.step(params, [gradient(rng_ref, p) for p in params])
        compare(t)


PRODIGY_CASES = {
    "decoupled": (dict(lr=0.8), [dict(eps=1e-8, weight_decay=0.0), dict(eps=1e-6, weight_decay=0.1, safeguard_warmup=True)]),
    "coupled-bias-growth": (dict(decouple=False, use_bias_correction=True, growth_rate=1.05, d_coef=3.0, beta3=0.99),
                            [dict(eps=1e-8, weight_decay=0.05), dict(eps=1e-7, weight_decay=0.0)]),
    "beta1-0": (dict(betas=(0.0, 0.99), d0=1e-4, use_bias_correction=True), [dict(eps=1e-8), dict(eps=1e-8, weight_decay=0.02, safeguard_warmup=True)]),
    "group-lr-0": (dict(betas=(0.8, 0.999), weight_decay=0.01), [dict(lr=0.5), dict(lr=0.0)]),
}


@pytest.mark.parametrize("case", sorted(PRODIGY_CASES))
def test_prodigy_reference_matches_prodigyopt(case):
    common, groups = PRODIGY_CASES[case]
    params = start()
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    official = prodigyopt.Prodigy(torch_groups(tensors, groups), **common)
    options = dict(common)
    if "betas" in options:
        options["beta1"], options["beta2"] = options.pop("betas")
    group_options = {g: dict(o) for g, o in enumerate(groups)}
    if "weight_decay" in options:
        for o in group_options.values():
            o.setdefault("weight_decay", options["weight_decay"])
        del options["weight_decay"]
    ref = rp.make("prodigy", SHAPES, groups=GROUPS, group_options=group_options, **options)

    def compare(t):
        assert_close(params, tensors, f"prodigy/{case} step {t}")
        g0 = official.param_groups[0]
        tele = ref.telemetry()
        for name in ("d", "d_max", "d_hat", "d_numerator", "d_denom"):
            np.testing.assert_allclose(tele[name][0], float(g0[name]), rtol=RTOL, err_msg=f"prodigy/{case} step {t}: {name}")
        assert tele["steps"][0] == g0["k"]

    run(params, tensors, official, ref, compare)
    assert ref.telemetry()["d"][0] > 100 * ref.opts["d0"], "d never grew: the comparison did not exercise the adaptation"


SF_CASES = {
    "sf-adamw": [dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, r=0.0, weight_lr_power=2.0),
                 dict(lr=0.004, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, r=0.5, weight_lr_power=1.0)],
    "sf-sgd": [dict(lr=0.3, momentum=0.9, weight_decay=0.0, r=0.0, weight_lr_power=2.0),
               dict(lr=0.1, momentum=0.75, weight_decay=0.05, r=1.0, weight_lr_power=0.0)],
}


@pytest.mark.parametrize("name", ["sf-adamw", "schedule-free", "sf-sgd"])
def test_schedule_free_reference_matches_schedulefree(name):
    """`schedule-free` with its default base (adamw) is sf-adamw; y after every step, x after
    every 10th (eval, compare, train)."""
    kind = "sf-sgd" if name == "sf-sgd" else "sf-adamw"
    groups = SF_CASES[kind]
    warmup = 10
    params = start()
    tensors = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    cls = schedulefree.SGDScheduleFree if kind == "sf-sgd" else schedulefree.AdamWScheduleFree
    official = cls(torch_groups(tensors, groups), warmup_steps=warmup, foreach=False)
    official.train()
    group_options = {}
    for g, o in enumerate(groups):
        o = dict(o)
        if "betas" in o:
            o["beta1"], o["beta2"] = o.pop("betas")
        group_options[g] = o
    ref = rp.make(name, SHAPES, groups=GROUPS, group_options=group_options, warmup_steps=warmup)

    def compare(t):
        assert_close(params, tensors, f"{name} step {t} (y)")
        tele = ref.telemetry()
        for g, group in enumerate(official.param_groups):
            for ours, theirs in (("sf_lr", "scheduled_lr"), ("lr_max", "lr_max"), ("weight_sum", "weight_sum")):
                np.testing.assert_allclose(tele[ours][g], group[theirs], rtol=RTOL, err_msg=f"{name} step {t}: {ours}")
        if t % 10 == 9:
            ref.eval(params)
            official.eval()
            assert_close(params, tensors, f"{name} step {t} (x)")
            ref.train(params)
            official.train()
            assert_close(params, tensors, f"{name} step {t} (y after train())")

    run(params, tensors, official, ref, compare)
