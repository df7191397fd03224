"""Compositions of the peers with the papers' algorithms (issue 19 item 4), step by step against
the float64 reference reference_peers.py (written from docs/algorithms.md §1, §3, §6 and the
README's schedule-free list without reading the library's code, and itself checked against
prodigyopt and schedulefree by test_peers_reference.py): schedule-free over auto-adam, gi over
prodigy, and schedule-free over gi (base auto-adam).

The problem: every step a batch of N = 8 samples, sample i's loss 0.5·Σ h (θ − c_i)² over three
tensors of different sizes in two groups with different options. The batch (the c_i) is the
same float32 data for both sides; each side gets, at its own parameters, the mean gradient, the
sum of squared per-sample gradients with the batch size (AutoOpt's per-sample data, §1), the
batch loss and a closure that re-evaluates the same batch (GI, §3). 120 steps; after each one
the parameters (and for schedule-free the evaluation parameters x, through eval() and back
through train()), lr, momentum and the telemetry are compared.

Tolerance: 1e-5 relative (parameters: to max(1, the tensor's largest entry); scalars: to their
own value). The library keeps parameters and per-element state in float32 (docs/algorithms.md
"Numerics"), so every step rounds y, z and the base's state a few times at 2^-24 ≈ 6e-8; on
this contracting problem those errors add up rather than grow, ≤ 120 steps × a few roundings ≈
3e-5 at worst, ~√120 × that per step ≈ 3e-6 typically (measured: parameters ≤ 4e-7 for
schedule-free over auto-adam, y and x, ≤ 8e-7 for gi over prodigy and ≤ 3.0e-6 for schedule-free
over gi; telemetry ≤ 5e-6 of its scale, Prodigy's cancelling d_numerator, and φ_y ≤ 5.4e-6 of
itself: y − y' is a difference of float32 values a few hundred times larger than it); a wrong
rule shows at 1e-4 or more. GI's η adapts by
comparing ρ with `hi` and `lo`: the comparison is well-posed only while the reference's ρ stays
clear of both by more than the two sides' difference in ρ (~1e-6), which the test asserts."""
import numpy as np
import pytest

import autolr
import reference as ref
import reference_peers as rp
from conftest import SideBySide, f32

SHAPES = [(13, 7), (29,), (5, 3, 4)]
GROUPS = [0, 1, 0]
N = 8
STEPS = 120
RTOL = 1e-5
H = [np.linspace(0.5, 2.0, int(np.prod(s))).reshape(s) for s in SHAPES]
COUNTERS = ("fallbacks", "clamps", "skips", "skipped", "steps")


def batch(rng, noise):
    """The centers c_i of one batch, float32 (both sides see the same)."""
    return [f32(0.3 + noise * rng.standard_normal((N,) + s)) for s in SHAPES]


def inputs(params, centers):
    """Mean gradient, Σ g_i² and the mean loss of the batch at `params`."""
    rows = [np.stack([h * (p.astype(np.float64) - c[i]) for i in range(N)]) for h, p, c in zip(H, params, centers)]
    loss = np.mean([sum(0.5 * np.sum(h * (p.astype(np.float64) - c[i]) ** 2) for h, p, c in zip(H, params, centers)) for i in range(N)])
    return [f32(r.mean(axis=0)) for r in rows], [f32((r * r).sum(axis=0)) for r in rows], float(loss)


def telemetry_of(opt):
    """The reference's telemetry with its bases' entries after its own, as the library lists
    them (docs/algorithms.md §5: "then the base's entries")."""
    out = dict(opt.telemetry())
    base = getattr(opt, "base", None)
    if isinstance(base, ref._Optimizer):
        for name, values in telemetry_of(base).items():
            out.setdefault(name, values)
    return out


def scale_of(name, k, tele, loss):
    """What an entry's error is measured against: its own size, except for the entries that are
    differences of larger terms or amplify them — AutoOpt's c = Σ D g d (|c| ≤ √(a·e)), det =
    a·e − c² (§1.2), the oracle γ_O, a 2×2 solve whose condition number is a·e/det (§1.3) — and
    GI's ρ = (f − f+)/(φ/2) (§3), whose f and f+ carry the float32 parameters' rounding while
    their difference is small."""
    if name == "c":
        return np.sqrt(tele["a"][k] * tele["e"][k])
    if name == "det":
        return tele["a"][k] * tele["e"][k]
    if name in ("gamma1_oracle", "gamma2_oracle"):
        size = max(abs(tele["gamma1_oracle"][k]), abs(tele["gamma2_oracle"][k]))
        det = abs(tele["det"][k])
        return size * max(1.0, tele["a"][k] * tele["e"][k] / det) if det > 0 else size
    if name == "rho":
        # ρ's denominator: φ/2 (§3), or φ_y/2 under schedule-free over gi (§3.3).
        phi = tele["phi_y"][k] if "phi_y" in tele else tele["phi"][k]
        if phi != 0:
            return 2 * abs(loss) / abs(phi)
    return abs(tele[name][k])


def assert_telemetry_close(sbs, loss, what):
    lib, theirs = sbs.lib.telemetry(), telemetry_of(sbs.ref)
    for name, values in theirs.items():
        assert name in lib, f"{what}: the library has no telemetry entry {name!r}"
        if name in COUNTERS:
            assert lib[name] == values, f"{what}: {name} {lib[name]} != {values}"
            continue
        for k, (a, b) in enumerate(zip(lib[name], values)):
            err = abs(a - b)
            assert err <= RTOL * scale_of(name, k, theirs, loss), f"{what}: {name} of group {k} is {a}, the reference's {b}"


def side_by_side(algorithm, options, group_options, noise=0.5, per_sample=False, needs_loss=False, schedule_free=False):
    """Runs the library and the reference for STEPS steps, comparing after each (see the module
    docstring); returns the pair."""
    sbs = SideBySide(algorithm, SHAPES, seed=3, groups=GROUPS, group_options=group_options, reference=rp.make, **options)
    rng = np.random.default_rng(11)
    gi = sbs.ref if algorithm == "gi" else getattr(sbs.ref, "base", None)
    sbs.assert_rates_close(RTOL, f"{algorithm} over {options['base']}, before the first step")
    for t in range(STEPS):
        centers = batch(rng, noise)
        kw = {"batch_size": N} if per_sample else {}
        for side, params in (("lib", sbs.p32), ("ref", sbs.p64)):
            grads, sum_sq, loss = inputs(params, centers)
            kw[f"{side}_grads"] = grads
            if per_sample:
                kw[f"{side}_sum_sq"] = sum_sq
            if needs_loss:
                kw[f"{side}_loss"] = loss
                kw[f"{side}_closure"] = lambda params=params: inputs(params, centers)[2]
        sbs.step(**kw)
        ref_loss = loss                 # the last side of the loop above is the reference
        what = f"{algorithm} over {options['base']}, step {t}"
        sbs.assert_close(RTOL, what)
        if schedule_free:
            sbs.lib.eval()
            sbs.ref.eval(sbs.p64)
            sbs.assert_close(RTOL, what + ", x (eval mode)")
            sbs.lib.train()
            sbs.ref.train(sbs.p64)
            sbs.assert_close(RTOL, what + ", y after train()")
        sbs.assert_rates_close(RTOL, what)
        assert_telemetry_close(sbs, ref_loss, what)
        if needs_loss and gi.telemetry()["rho"][0] != 0.0:
            rho = gi.telemetry()["rho"][0]
            clear = min(abs(rho - gi.opts["hi"]), abs(rho - gi.opts["lo"]))
            assert clear > 1e-4, f"{what}: ρ = {rho} is within {clear:.1e} of hi/lo, too close to compare η's adaptation"
    return sbs


def test_schedule_free_over_auto_adam():
    """README sf: the automatic base at its own rate, scaled by lr (a factor) times the warmup.
    schedule-free's lr and warmup_steps are one value for the optimizer (the library takes no
    per-group lr over an automatic base); every other option differs between the groups."""
    groups = {0: dict(momentum=0.9, r=0.0, weight_lr_power=2.0, nu=0.99),
              1: dict(momentum=0.8, weight_decay=0.1, r=0.5, weight_lr_power=1.0, nu=0.9, beta2=0.99, eps=1e-6)}
    sbs = side_by_side("schedule-free", dict(base="auto-adam", lr=0.8, warmup_steps=10), groups, per_sample=True, schedule_free=True)
    tele = sbs.ref.telemetry()
    assert min(tele["ckp1"]) < 0.05 and tele["fallbacks"] != [STEPS] * 2, "the run did not exercise averaging and the 2-D oracle"


@pytest.mark.parametrize("variant", [dict(decouple=1), dict(decouple=0, use_bias_correction=1)], ids=["decoupled", "coupled-bias-correction"])
def test_gi_over_prodigy(variant):
    """GI over prodigy (§3 over an automatic base: v = η s). d0 = 0.1, so that the first moves
    (≈ d·lr) are far above the float32 spacing of θ: at the default d0 = 1e-6 the first moves are
    ~25 ulps of θ, their float32 rounding (up to 2% of each) enters Prodigy's ⟨g, p0 − θ⟩, and no
    float32 implementation can then follow a float64 reference to 1e-5. Prodigy's lr (`base_lr`
under GI, §3.1) is not 1, so that safeguard_warmup (d in place of dlr) changes the run."""
    groups = {0: dict(eps=1e-8), 1: dict(eps=1e-6, weight_decay=0.1, safeguard_warmup=1)}
    sbs = side_by_side("gi", dict(base="prodigy", base_lr=0.7, d0=0.1, **variant), groups, noise=0.1, needs_loss=True)
    tele = telemetry_of(sbs.ref)
    assert tele["eta"][0] != 1.0 and tele["d"][0] != 0.1, "η or d never adapted: the comparison did not exercise them"


def test_gi_over_prodigy_phi_is_g_dot_v_at_the_default_d0():
    """φ = η·Σ g·s (§3; "Numerics", GI: "φ = η · Σ g·s in f64", s "recomputed in f32 from the
    base's advanced state"), s Prodigy's displacement dlr·m/(√v + d·ε) — not the float32 move
    θ − fl(θ − s) the base would make on the parameters. At the default d0 = 1e-6 the first move
    (≈ 3.2e-6) is ~25 float32 spacings of θ, so the two differ by up to 2% per element and φ by
    ~1e-3. One step from the same float32 inputs on both sides, at η = 3."""
    sbs = SideBySide("gi", SHAPES, seed=3, groups=GROUPS, reference=rp.make, base="prodigy", lr=3.0)
    centers = batch(np.random.default_rng(11), 0.1)
    grads, _, loss = inputs(sbs.p64, centers)
    sbs.step(grads=grads, loss=loss, lib_closure=lambda: inputs(sbs.p32, centers)[2], ref_closure=lambda: inputs(sbs.p64, centers)[2])
    lib, theirs = sbs.lib.telemetry()["phi"][0], sbs.ref.telemetry()["phi"][0]
    assert abs(lib - theirs) <= RTOL * abs(theirs), f"φ is {lib}, η·Σ g·s is {theirs} (relative {abs(lib - theirs) / abs(theirs):.1e})"


SF_OVER_GI = dict(base="gi", base_base="auto-adam", lr=0.8, warmup_steps=10)
SF_OVER_GI_GROUPS = {0: dict(momentum=0.9, nu=0.99), 1: dict(momentum=0.8, weight_decay=0.1, nu=0.9)}


def test_schedule_free_over_gi():
    """docs/algorithms.md §3.3: GI's move steps z (k from φ = η·g·s in z's frame), ρ = (f − f+)/
    (φ_y/2) with φ_y = Σ g·(y − y') and f+ at y' (the closure), under schedule-free's warmup and
    its per-group β and weight decay at y; y and x after every step, η, ρ, φ, φ_y, skipped and
    auto-adam's telemetry (reference_peers.py decision S8)."""
    sbs = side_by_side("schedule-free", SF_OVER_GI, SF_OVER_GI_GROUPS, per_sample=True, needs_loss=True, schedule_free=True)
    tele = telemetry_of(sbs.ref)
    assert tele["eta"][0] != 1.0 and tele["skipped"][0] < STEPS, f"η never adapted ({tele['eta'][0]}, {tele['skipped'][0]} skipped): the comparison did not exercise ρ"


def run_reference(algorithm, options, group_options, after_step=None):
    """The reference alone on the problem above; `after_step(seen, params)` is called after each
    step with the parameters each closure call saw."""
    opt = rp.make(algorithm, SHAPES, groups=GROUPS, group_options=group_options, **options)
    params = [f32(np.random.default_rng(3).standard_normal(s)) for s in SHAPES]
    rng = np.random.default_rng(11)
    for _ in range(STEPS):
        centers = batch(rng, 0.5)
        grads, sum_sq, loss = inputs(params, centers)
        seen = []

        def closure():
            seen.append([p.copy() for p in params])
            return inputs(params, centers)[2]

        kw = dict(loss=loss, closure=closure) if options["base"] == "gi" else {}
        opt.step(params, grads, sum_sq=sum_sq, batch_size=N, **kw)
        if after_step is not None:
            after_step(seen, params)
    return opt, params


def test_reference_schedule_free_over_gi_without_adaptation_is_over_auto_adam():
    """With up = down = 1 (η fixed) and f_star unset, GI's move is η·s (§3), so schedule-free over
    gi at η = base_lr is schedule-free over auto-adam at lr·η: checks that the reference routes
    the options (base_base, base_lr) and GI's displacement through schedule-free."""
    over_gi, p_gi = run_reference("schedule-free", dict(SF_OVER_GI, base_lr=0.5, up=1.0, down=1.0), SF_OVER_GI_GROUPS)
    groups = {k: dict(o, weight_decay=2 * o.get("weight_decay", 0.0)) for k, o in SF_OVER_GI_GROUPS.items()}  # λ at y is scaled by lr
    _, p_auto = run_reference("schedule-free", dict(base="auto-adam", lr=0.4, warmup_steps=10), groups)
    for a, b in zip(p_gi, p_auto):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert over_gi.base.telemetry()["eta"][0] == 0.5


def test_reference_schedule_free_over_gi_reevaluates_at_the_new_y():
    """Decision S8: GI's f+ is the loss at the parameters the caller holds after the step (the
    new y), once per step (adapt_every = 1, φ > 0 on this problem)."""
    def after_step(seen, params):
        assert len(seen) == 1, f"{len(seen)} closure calls in one step"
        for a, b in zip(seen[0], params):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)

    opt, _ = run_reference("schedule-free", SF_OVER_GI, SF_OVER_GI_GROUPS, after_step)
    assert opt.base.telemetry()["eta"][0] != 1.0, "η never adapted"
