"""The tuning-free peers against their authors' PyTorch code (docs/algorithms.md §6: the
reference *is* the specification): prodigyopt 1.1.2 `Prodigy`, dadaptation 3.2 `DAdaptAdam`,
dog-optimizer 1.0.3 `DoG` and `LDoG`.

Both sides start from the same float32 tensors (4 tensors of different sizes in 2 param groups
with different options, weight decay on in one group and off in the other) and take 120 steps;
both get the same float32 gradient tensors every step (a noisy quadratic's gradient at the
reference's parameters). After every step the adapted scalars (Prodigy's d, d_hat, d_max; D-Adapt's
d; DoG's η, r̄, G per group, LDoG's per tensor) must agree to RTOL = 1e-5 relative, the parameters to PARAM_RTOL.

The elementwise arithmetic is the reference's, rounding for rounding (torch's fused multiply-adds
included: with the same d the parameters agree bit for bit, as the first steps show), but every
per-step scalar is a reduction, and there order and precision differ: the references reduce in
float32 (torch.dot, .sum(), norms; DoG keeps r̄ and G as float32 tensors), autolr in float64 lanes
(docs/algorithms.md "Numerics"). So d and η differ by ~1e-7 relative, and the parameters drift
apart by that much per step. Measured worst over 120 steps (pytest -s prints them): parameters
≤ 3e-6 for Prodigy and DoG, 8.5e-6 for D-Adapt Adam, scalars ≤ 1.1e-6. RTOL = 1e-5 holds for all
scalars and for the parameters of Prodigy and DoG; D-Adapt Adam's parameters get RTOL_REDUCED =
1e-4, because its m accumulates every step's dlr (the reduction error of every d lands in every
element) and its measured 8.5e-6 leaves too little margin for a torch whose float32 dot sums in
another order (another SIMD width).

Skipped (with the reason) where torch or a reference package is missing; scripts/test.sh's
torch stage installs them in .venv-torch and runs this file with AUTOLR_NO_SKIPS=1.
"""

import importlib
import os

import numpy as np
import pytest

from conftest import import_torch

torch = import_torch()


def import_reference(module, package):
    """A reference package, or a skip of this module; under AUTOLR_NO_SKIPS=1 (scripts/test.sh's
    torch stage) a missing one is an error, not a skip."""
    if os.environ.get("AUTOLR_NO_SKIPS") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f"{package} is not installed (scripts/test.sh's torch stage installs it in .venv-torch)")


prodigyopt = import_reference("prodigyopt", "prodigyopt==1.1.2")
dadaptation = import_reference("dadaptation", "dadaptation==3.2")
dog = import_reference("dog", "dog-optimizer==1.0.3")

import autolr  # noqa: E402

SHAPES = [(37,), (8, 13), (5,), (3, 4, 6)]
GROUPS = [0, 1, 0, 1]
STEPS = 120
RTOL = 1e-5
RTOL_REDUCED = 1e-4  # D-Adapt Adam's parameters: reductions differ in order (see above)
PARAM_RTOL = {"prodigy": RTOL, "dadapt-adam": RTOL_REDUCED, "dog": RTOL, "ldog": RTOL}


def test_reference_versions():
    from importlib.metadata import version
    assert version("prodigyopt") == "1.1.2"
    assert version("dadaptation") == "3.2"
    assert version("dog-optimizer") == "1.0.3"


class Problem:
    """Per tensor: g = a ⊙ (θ − c) + noise_t, all float32 (θ: the reference's parameters)."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.start = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
        self.a = [rng.uniform(0.5, 2.0, s).astype(np.float32) for s in SHAPES]
        self.c = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]

    def grads(self, params, t):
        rng = np.random.default_rng(1000 + t)
        out = []
        for p, a, c in zip(params, self.a, self.c):
            noise = (0.1 * rng.standard_normal(p.shape)).astype(np.float32)
            out.append(np.ascontiguousarray(a * (p - c) + noise, dtype=np.float32))
        return out


# name -> cases: (id, global options (autolr names), per-group options [group 0, group 1]).
# Per-group options are the reference's param-group keys; the global ones go to its constructor.
CASES = {
    "prodigy": [
        ("defaults-decoupled-wd", {}, [{"eps": 1e-8}, {"weight_decay": 0.05, "eps": 1e-6}]),
        ("coupled-wd-bias-safeguard", {"decouple": 0, "use_bias_correction": 1, "beta3": 0.98, "d_coef": 0.8, "growth_rate": 1.05, "d0": 1e-5},
         [{"weight_decay": 0.02, "safeguard_warmup": 1}, {"eps": 1e-7}]),
        ("beta1-0-coupled-wd", {"beta1": 0.0, "beta2": 0.99, "decouple": 0}, [{}, {"weight_decay": 0.1}]),
        ("group-lr-0", {"lr": 0.5}, [{"weight_decay": 0.05}, {"lr": 0.0, "weight_decay": 0.05}]),
    ],
    "dadapt-adam": [
        ("defaults-coupled-wd", {}, [{}, {"weight_decay": 0.05, "eps": 1e-6}]),
        ("decoupled-bias-growth", {"decouple": 1, "use_bias_correction": 1, "growth_rate": 1.1, "d0": 1e-5, "beta1": 0.8, "beta2": 0.99},
         [{"weight_decay": 0.02}, {"eps": 1e-7}]),
        ("group-lr-0", {"lr": 0.5}, [{}, {"lr": 0.0, "weight_decay": 0.05}]),
    ],
    "dog": [
        ("defaults-wd", {}, [{}, {"weight_decay": 0.05}]),
        ("init-eta", {"init_eta": 1e-3}, [{"eps": 1e-6}, {"lr": 0.8, "weight_decay": 0.01}]),
        ("reps-rel-lr", {}, [{"reps_rel": 1e-4}, {"reps_rel": 1e-5, "lr": 0.8, "weight_decay": 0.01}]),
    ],
    # DoG's options (LDoG subclasses DoG); each tensor gets its own η, so a group's shares options only.
    "ldog": [
        ("defaults-wd", {}, [{}, {"weight_decay": 0.05}]),
        ("init-eta", {"init_eta": 1e-3}, [{"eps": 1e-6}, {"lr": 0.8, "weight_decay": 0.01}]),
        ("reps-rel-lr", {}, [{"reps_rel": 1e-4}, {"reps_rel": 1e-5, "lr": 0.8, "weight_decay": 0.01}]),
    ],
}


def reference(name, params, global_opts, group_opts):
    """The reference optimizer over `params` (torch tensors) in the two groups."""
    g = dict(global_opts)
    groups = []
    for gi in range(2):
        groups.append({"params": [p for p, k in zip(params, GROUPS) if k == gi], **group_opts[gi]})
    if name in ("prodigy", "dadapt-adam"):
        betas = (g.pop("beta1", 0.9), g.pop("beta2", 0.999))
        for key in ("decouple", "use_bias_correction"):
            if key in g:
                g[key] = bool(g[key])
        for grp in groups:
            if "safeguard_warmup" in grp:
                grp["safeguard_warmup"] = bool(grp["safeguard_warmup"])
        lr = g.pop("lr", 1.0)
        for grp in groups:
            grp.setdefault("lr", lr)
        cls = prodigyopt.Prodigy if name == "prodigy" else dadaptation.DAdaptAdam
        return cls(groups, lr=lr, betas=betas, **g)
    return (dog.LDoG if name == "ldog" else dog.DoG)(groups, **g)


def make_lib(name, params, global_opts, group_opts):
    opt = autolr.Optimizer(name, params, groups=GROUPS, **global_opts)
    for gi, opts in enumerate(group_opts):
        for k, v in opts.items():
            opt.set_option(k, v, group=gi)
    return opt


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(b).max()
    return float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a - b).max())


def ref_scalars(name, opt):
    """The reference's adapted scalars after a step, by autolr's telemetry names."""
    g0 = opt.param_groups[0]
    if name == "prodigy":
        return {"d": g0["d"], "d_hat": g0.get("d_hat", 0.0), "d_max": g0["d_max"]}
    if name == "dadapt-adam":
        return {"d": g0["d"]}
    if name == "ldog":
        # Per tensor, groups in order (autolr's telemetry lists a group's tensors in its order).
        return {k: [float(v) for grp in opt.param_groups for v in (grp[k] if k == "eta" else grp[k].tolist())] for k in ("eta", "rbar", "G")}
    return {k: [float(grp[k2][0]) if k2 == "eta" else float(grp[k2]) for grp in opt.param_groups] for k, k2 in (("eta", "eta"), ("rbar", "rbar"), ("G", "G"))}


@pytest.mark.parametrize("name,case", [(n, c) for n, cs in CASES.items() for c in cs], ids=[f"{n}-{c[0]}" for n, cs in CASES.items() for c in cs])
def test_steps_like_the_reference(name, case):
    _, global_opts, group_opts = case
    problem = Problem()
    lib_params = [p.copy() for p in problem.start]
    ref_params = [torch.tensor(p.copy()) for p in problem.start]
    lib = make_lib(name, lib_params, global_opts, group_opts)
    ref = reference(name, ref_params, global_opts, group_opts)
    worst = {"params": 0.0}
    moved = False
    for t in range(STEPS):
        grads = problem.grads([p.detach().numpy() for p in ref_params], t)
        lib.step([g.copy() for g in grads])
        for p, g in zip(ref_params, grads):
            p.grad = torch.from_numpy(g.copy())  # the references change p.grad in place (weight decay)
        ref.step()
        err = max(rel(a, b.detach().numpy()) for a, b in zip(lib_params, ref_params))
        worst["params"] = max(worst["params"], err)
        assert err <= PARAM_RTOL[name], f"{name} {case[0]} step {t + 1}: parameters differ by {err:.2e} relative"
        tele = lib.telemetry()
        for key, want in ref_scalars(name, ref).items():
            got = tele[key] if name in ("dog", "ldog") else tele[key][0]
            # LDoG's scalars differ by tensor: each against its own (one large η hides no small one).
            e = max(rel(a, b) for a, b in zip(got, want, strict=True)) if name == "ldog" else rel(got, want)
            worst[key] = max(worst.get(key, 0.0), e)
            assert e <= RTOL, f"{name} {case[0]} step {t + 1}: {key} = {got}, reference {want} ({e:.2e})"
        moved = moved or any(not np.array_equal(a, s) for a, s in zip(lib_params, problem.start))
    assert moved
    # The adaptation did something: d grew from d0 (Prodigy, D-Adapt) or r̄ from its floor (DoG).
    tele = lib.telemetry()
    if name in ("dog", "ldog"):
        assert min(tele["rbar"]) > 1e-3, tele
    else:
        assert tele["d"][0] > 100 * global_opts.get("d0", 1e-6), tele
    print(f"\n{name} {case[0]}: worst relative errors over {STEPS} steps: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


@pytest.mark.parametrize("name,options,floats", [
    ("prodigy", {}, 4), ("prodigy", {"beta1": 0.0}, 3), ("dadapt-adam", {}, 3), ("dog", {}, 1), ("ldog", {}, 1),
    # schedule-free: z plus the base's own state (sgd: none; adamw: m and v; momentum: its buffer;
    # prodigy: its four), not the scratch copy of the previous z.
    ("sf-sgd", {}, 1), ("sf-adamw", {}, 3), ("schedule-free", {"base": "momentum"}, 2),
    ("schedule-free", {"base": "prodigy"}, 5),
])
def test_state_is_the_references_buffers(name, options, floats):
    """Per element the state holds exactly the reference's buffers, nothing more (Prodigy:
    exp_avg, exp_avg_sq, s, p0, and no exp_avg at β1 = 0; D-Adapt Adam: s, exp_avg, exp_avg_sq;
    DoG and LDoG: x0; schedule-free: z and its base's): ten more elements in one tensor make the
    checkpoint 10 · floats · 4 bytes longer."""

    def size(extra):
        shapes = [(37 + extra,), (8, 13)]
        params = [np.full(s, 0.5, np.float32) for s in shapes]
        opt = autolr.Optimizer(name, params, **options)
        opt.step([np.full(s, 0.25, np.float32) for s in shapes])
        return len(opt.state_dict())

    assert size(10) - size(0) == 10 * floats * 4


def step_both(problem, t, ours, opt, theirs, ref):
    """Step t of `problem` on autolr.torch's `opt` and the reference's `ref`, the same gradients
    in both (the gradient at the reference's parameters); the parameters' relative difference."""
    grads = problem.grads([p.detach().numpy() for p in theirs], t)
    for a, b, g in zip(ours, theirs, grads):
        a.grad = torch.from_numpy(g.copy())
        b.grad = torch.from_numpy(g.copy())
    opt.step()
    ref.step()
    return max(rel(a.detach().numpy(), b.numpy()) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("name", list(CASES))
def test_torch_classes_step_like_the_reference(name):
    """autolr.torch's Prodigy, DAdaptAdam, DoG and LDoG (a drop-in for the reference's class, the
    parameters a torch model's) with the first case's options follow the reference like the
    numpy API does."""
    import autolr.torch as alt

    cls = {"prodigy": alt.Prodigy, "dadapt-adam": alt.DAdaptAdam, "dog": alt.DoG, "ldog": alt.LDoG}[name]
    _, global_opts, group_opts = CASES[name][0]
    problem = Problem()
    ours = [torch.nn.Parameter(torch.tensor(p.copy())) for p in problem.start]
    theirs = [torch.tensor(p.copy()) for p in problem.start]
    groups = [{"params": [p for p, k in zip(ours, GROUPS) if k == g], **group_opts[g]} for g in range(2)]
    opt = cls(groups, **global_opts)
    ref = reference(name, theirs, global_opts, group_opts)
    for t in range(20):
        err = step_both(problem, t, ours, opt, theirs, ref)
        assert err <= PARAM_RTOL[name], f"{name} step {t + 1}: parameters differ by {err:.2e} relative"
    assert opt.algorithm == name and not all(np.array_equal(a.detach().numpy(), s) for a, s in zip(ours, problem.start))


@pytest.mark.parametrize("name", ["prodigy", "dadapt-adam"])
def test_betas_cycled_by_one_cycle_lr_follow_the_reference(name):
    """OneCycleLR with cycle_momentum writes every group's betas each step (the one-cycle policy
    for Adam-style optimizers); autolr.torch sends the global β1 once for all groups, and
    Prodigy's β1, whose being 0 or not shapes the state, may change while it stays above 0."""
    import autolr.torch as alt

    cls = {"prodigy": alt.Prodigy, "dadapt-adam": alt.DAdaptAdam}[name]
    problem = Problem()
    ours = [torch.nn.Parameter(torch.tensor(p.copy())) for p in problem.start]
    theirs = [torch.tensor(p.copy()) for p in problem.start]
    split = lambda ps: [{"params": [p for p, k in zip(ps, GROUPS) if k == g]} for g in range(2)]  # noqa: E731
    opt = cls(split(ours), betas=(0.9, 0.99))
    ref = (prodigyopt.Prodigy if name == "prodigy" else dadaptation.DAdaptAdam)(split(theirs), lr=1.0, betas=(0.9, 0.99))
    scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1.0, total_steps=40, base_momentum=0.8, max_momentum=0.95)
              for o in (opt, ref)]
    seen = set()
    for t in range(30):
        err = step_both(problem, t, ours, opt, theirs, ref)
        seen.add(opt._core.get_option("beta1"))
        for s in scheds:
            s.step()
        assert err <= PARAM_RTOL[name], f"{name} step {t + 1}: parameters differ by {err:.2e} relative"
    assert len(seen) > 20, "β1 did not follow the scheduler"
    if name == "prodigy":
        with pytest.raises(autolr.Error, match="whether it is 0") as info:
            opt.set_option("beta1", 0.0)
        assert info.value.status == "ALR_WRONG_STATE"
