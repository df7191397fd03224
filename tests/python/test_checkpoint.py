"""Checkpoints, for every algorithm in autolr.ALGORITHMS (and GI over each base once 'gi' exists,
and schedule-free over gi over two of them):

- save at step k, load into a fresh optimizer, continue: bit-identical to an uninterrupted run
  (parameters, state_dict, lr, momentum, telemetry), for several k;
- load restores the options (set on the saved optimizer, different on the loading one);
- truncated / corrupted / mismatched buffers raise autolr.Error with status ALR_BAD_CHECKPOINT and
  leave the optimizer exactly as it was (state, options, and the trajectory that follows).

Inputs come from one generic generator (a quadratic model with per-sample data, curvature, loss
and callbacks); for each algorithm the smallest input set it accepts is found by trying them in
order, so a newly added algorithm is covered without editing this file.
"""
import math

import numpy as np
import pytest

import autolr

SHAPES = [(13,), (2, 3), (4, 4)]
GROUPS = [0, 1, 0]
N = 8  # samples per minibatch

# Input sets tried in this order; the first that an algorithm accepts for a few steps is used.
INPUT_SETS = [
    (),
    ("sum_sq",),
    ("per_sample",),
    ("sum_sq", "curvature"),
    ("curvature",),
    ("grad_closure",),
    ("sum_sq", "grad_closure"),
    ("loss", "closure"),
    ("sum_sq", "loss", "closure"),
    ("loss", "report"),
]

# Non-default values tried for every option an algorithm accepts (skipped where refused).
SAVED_VALUES = {"lr": 0.02, "momentum": 0.8, "dampening": 0.1, "weight_decay": 0.01, "beta1": 0.85, "beta2": 0.99,
                "eps": 1e-6, "alpha": 0.9, "nu": 0.95, "gamma_max": 0.99, "up": 1.3, "down": 0.6, "c": 0.2,
                "window": 3, "n0": 4}
# Different values set on the optimizer that loads, which load must overwrite.
OTHER_VALUES = {"lr": 0.5, "momentum": 0.3, "weight_decay": 0.2, "beta1": 0.5, "beta2": 0.9, "eps": 1e-3, "alpha": 0.5,
                "nu": 0.5, "check_finite": 0}


def algorithm_cases():
    """(name, base): base None, a base's name, or (base, base_base) — schedule-free over gi over
    base_base (docs/algorithms.md §3.3)."""
    out = [(name, None) for name in autolr.ALGORITHMS]
    if "gi" in autolr.ALGORITHMS:
        out += [("gi", base) for base in ("sgd", "momentum", "adam", "adagrad", "rmsprop")]
        out += [("schedule-free", ("gi", base)) for base in ("momentum", "auto-adam")]
    return out


def bases(base):
    """The string options of a case's base."""
    if base is None:
        return {}
    if isinstance(base, tuple):
        return {"base": base[0], "base_base": base[1]}
    return {"base": base}


def case_id(name, base):
    return "-".join([name, *bases(base).values()])


ALGORITHM_CASES = algorithm_cases()
ALGORITHM_IDS = [case_id(name, base) for name, base in ALGORITHM_CASES]


def f32(arrays):
    return [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]


class Quadratic:
    """Per-sample losses l_i(θ) = ½ Σ a ⊙ (θ − c_i)², batch t drawn from a seed of its own, so two
    runs see identical batches at the same step."""

    def __init__(self, shapes, seed=0):
        rng = np.random.default_rng(seed)
        self.a = [rng.uniform(0.5, 2.0, s) for s in shapes]

    def centres(self, t):
        rng = np.random.default_rng(1000 + t)
        return [rng.standard_normal((N,) + a.shape) for a in self.a]

    def loss(self, params, c):
        total = 0.0
        for a, p, ci in zip(self.a, params, c):
            d = np.asarray(p, np.float64)[None] - ci
            total += float(np.mean(0.5 * np.sum((a * d * d).reshape(N, -1), axis=1)))
        return total

    def inputs(self, params, t, keys):
        c = self.centres(t)
        per_sample = [a * (np.asarray(p, np.float64)[None] - ci) for a, p, ci in zip(self.a, params, c)]
        kw = {"grads": f32([g.mean(axis=0) for g in per_sample])}
        if "sum_sq" in keys:
            kw["sum_sq"] = f32([np.sum(g * g, axis=0) for g in per_sample])
            kw["batch_size"] = N
        if "per_sample" in keys:
            kw["per_sample"] = f32(per_sample)
        if "curvature" in keys:
            kw["curvature"] = f32(self.a)
        if "loss" in keys:
            kw["loss"] = self.loss(params, c)
        if "closure" in keys:
            kw["closure"] = lambda: self.loss(params, c)
        if "grad_closure" in keys:
            means = [ci.mean(axis=0) for ci in c]
            kw["grad_closure"] = lambda ps: [a * (np.asarray(p, np.float64) - m) for a, p, m in zip(self.a, ps, means)]
        return kw, c

    reports = 0  # loss reports accepted (two-phase protocol), for the tests to check it ran

    def step(self, opt, params, t, keys):
        kw, c = self.inputs(params, t, keys)
        opt.step(**kw)
        if "report" in keys:
            # A step that did not adapt (GI: φ ≤ 0, or adapt_every) waits for no report, and the
            # caller cannot tell beforehand: the library answers ALR_WRONG_STATE then.
            try:
                opt.report_loss(self.loss(params, c))
                self.reports += 1
            except autolr.Error as e:
                if e.status != "ALR_WRONG_STATE":
                    raise


def init_params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def option_names(opt):
    """The option names an algorithm accepts, from the message of an unknown one."""
    with pytest.raises(autolr.Error) as info:
        opt.set_option("__no_such_option__", 1.0)
    msg = str(info.value)
    assert "accepted:" in msg, msg
    return [n.strip() for n in msg.split("accepted:")[1].split(",") if n.strip()]


def set_values(opt, values, per_group_lr=None):
    """Sets every value the algorithm accepts; returns what was set."""
    done = {}
    names = option_names(opt)
    for name, value in values.items():
        if name in names:
            try:
                opt.set_option(name, value)
                done[name] = value
            except autolr.Error:
                pass
    if per_group_lr is not None and "lr" in names:
        try:
            opt.set_option("lr", per_group_lr, group=1)
        except autolr.Error:
            pass
    return done


# Algorithms found (by inputs_for) to refuse a per-group lr at step time (e.g. one global rate).
_NO_GROUP_LR = set()


def make(name, base, params, values=SAVED_VALUES):
    opt = autolr.Optimizer(name, params, groups=GROUPS, **bases(base))
    if values is SAVED_VALUES:
        set_values(opt, values, per_group_lr=None if (name, base) in _NO_GROUP_LR else 0.03)
    elif values:
        set_values(opt, values)
    return opt


def options(opt):
    return {(name, g): opt.get_option(name, g) for name in option_names(opt) for g in range(opt.n_groups)}


def same(a, b):
    """Equality where NaN equals NaN (unset options, telemetry)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def readback(opt):
    return {"lr": opt.lr, "momentum": opt.momentum, "telemetry": opt.telemetry(), "options": options(opt)}


_ACCEPTED = {}


def _works(name, base, keys):
    params = init_params(7)
    opt = make(name, base, params)
    model = Quadratic(SHAPES)
    try:
        for t in range(3):
            model.step(opt, params, t, keys)
    except autolr.Error as e:
        return f"{keys}: {e.status}: {e}"
    return None


def accepted_input_sets(name, base):
    """Every input set of INPUT_SETS this algorithm accepts for 3 steps (with a per-group lr where
    the algorithm allows one); fails the test, listing what was refused, when there is none."""
    key = (name, base)
    if key not in _ACCEPTED:
        errors = []
        for group_lr in (True, False):
            if not group_lr:
                _NO_GROUP_LR.add(key)
            found = []
            for keys in INPUT_SETS:
                err = _works(name, base, keys)
                if err is None:
                    found.append(keys)
                else:
                    errors.append(f"(per-group lr: {group_lr}) {err}")
            if found:
                _ACCEPTED[key] = found
                break
        else:
            _NO_GROUP_LR.discard(key)
            pytest.fail(f"no input set works for {key}; tried:\n" + "\n".join(errors))
    return _ACCEPTED[key]


def inputs_for(name, base):
    """The first (smallest) accepted input set."""
    return accepted_input_sets(name, base)[0]


def input_cases():
    """(name, base, keys) for every algorithm and every input set it accepts, found at collection
    (an algorithm nothing works for keeps one case with keys None, which fails with the reasons)."""
    out = []
    for name, base in ALGORITHM_CASES:
        try:
            sets = accepted_input_sets(name, base)
        except BaseException:  # pytest.fail outside a test: report it inside the test instead
            sets = [None]
        out += [(name, base, keys) for keys in sets]
    return out


CASES = input_cases()
IDS = [case_id(name, base) + ("" if keys is None else "[" + "+".join(keys or ("grads",)) + "]")
       for name, base, keys in CASES]


TOTAL = 16


def uninterrupted(name, base, keys):
    params = init_params()
    opt = make(name, base, params)
    model = Quadratic(SHAPES)
    for t in range(TOTAL):
        model.step(opt, params, t, keys)
    if "report" in keys:
        assert model.reports >= TOTAL // 2, f"only {model.reports} of {TOTAL} loss reports were accepted"
    return params, opt.state_dict(), readback(opt)


@pytest.mark.parametrize("name,base,keys", CASES, ids=IDS)
@pytest.mark.parametrize("k", [1, 5, 12])
def test_resume_is_bit_identical(name, base, keys, k):
    keys = keys if keys is not None else inputs_for(name, base)
    ref_params, ref_state, ref_read = uninterrupted(name, base, keys)

    params = init_params()
    opt = make(name, base, params)
    model = Quadratic(SHAPES)
    for t in range(k):
        model.step(opt, params, t, keys)
    saved = opt.state_dict()
    saved_read = readback(opt)
    saved_params = [p.copy() for p in params]
    del opt

    # a fresh optimizer, with other option values that load must overwrite
    resumed = [p.copy() for p in saved_params]
    opt2 = make(name, base, resumed, values=OTHER_VALUES)
    opt2.load_state_dict(saved)
    assert opt2.state_dict() == saved, "state_dict right after load differs from the loaded bytes"
    assert same(readback(opt2), saved_read), "lr/momentum/telemetry/options not restored by load"
    for t in range(k, TOTAL):
        model.step(opt2, resumed, t, keys)
    for i, (a, b) in enumerate(zip(resumed, ref_params)):
        assert a.tobytes() == b.tobytes(), f"tensor {i}: resumed run differs from the uninterrupted one (max |Δ| {np.abs(a - b).max():.3e})"
    assert opt2.state_dict() == ref_state, "final state differs from the uninterrupted run"
    assert same(readback(opt2), ref_read)


@pytest.mark.parametrize("name,base", ALGORITHM_CASES, ids=ALGORITHM_IDS)
def test_load_restores_options(name, base):
    params = init_params()
    opt = make(name, base, params)
    want = options(opt)
    assert want != options(make(name, base, init_params(), values=OTHER_VALUES)), "test does not vary any option"
    target = make(name, base, init_params(), values=OTHER_VALUES)
    target.load_state_dict(opt.state_dict())
    assert same(options(target), want)


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def reseal(body):
    """A buffer with a correct checksum (src/checkpoint.rs: FNV-1a 64, little-endian, last 8 bytes)."""
    return bytes(body) + fnv1a64(body).to_bytes(8, "little")


def corrupted(good, name):
    out = {
        "empty": b"",
        "4 bytes": good[:4],
        "header only": good[:20],
        "truncated by 1": good[:-1],
        "no checksum": good[:-8],
        "half": good[: len(good) // 2],
        "trailing byte": good + b"\x00",
        "duplicated": good + good,
        "zeros": bytes(len(good)),
    }
    for pos in sorted({0, 7, 8, 12, 20, 40, len(good) // 3, len(good) // 2, len(good) - 12, len(good) - 9, len(good) - 1}):
        flipped = bytearray(good)
        flipped[pos] ^= 0x80
        out[f"byte {pos} flipped"] = bytes(flipped)
    body = bytearray(good[:-8])
    assert reseal(body) == good, "this test's FNV-1a differs from the library's"
    version = bytearray(body)
    version[8] ^= 0x01
    out["other format version (resealed)"] = reseal(version)
    renamed = bytearray(body)
    at = bytes(renamed).find(name.encode(), 12)
    renamed[at + len(name) - 1] ^= 0x01
    out["other algorithm name (resealed)"] = reseal(renamed)
    out["trailing byte (resealed)"] = reseal(body + b"\x00")
    out["last state byte missing (resealed)"] = reseal(body[:-1])
    return out


def mismatched(name, base):
    """Valid checkpoints of other configurations."""
    out = {}
    model = Quadratic(SHAPES)
    other_name = next(n for n in autolr.ALGORITHMS if n not in (name, "gi"))
    try:
        params = init_params()
        other = make(other_name, None, params)
        model.step(other, params, 0, inputs_for(other_name, None))
        out[f"algorithm {other_name}"] = other.state_dict()
    except autolr.Error:
        pass
    shapes = list(SHAPES)
    shapes[2] = (4, 3)
    out["other tensor sizes"] = make(name, base, [np.zeros(s, np.float32) for s in shapes]).state_dict()
    out["other groups"] = autolr.Optimizer(name, init_params(), **bases(base)).state_dict()
    out["fewer tensors"] = autolr.Optimizer(name, init_params()[:2], groups=[0, 1], **bases(base)).state_dict()
    if isinstance(base, tuple):
        other_base = (base[0], "adam" if base[1] != "adam" else "sgd")
        out[f"{name} over gi over {other_base[1]}"] = make(name, other_base, init_params()).state_dict()
    elif base is not None:
        other_base = "adam" if base != "adam" else "sgd"
        out[f"gi over {other_base}"] = make(name, other_base, init_params()).state_dict()
    return out


@pytest.mark.parametrize("name,base", ALGORITHM_CASES, ids=ALGORITHM_IDS)
def test_bad_checkpoints_raise_and_change_nothing(name, base):
    keys = inputs_for(name, base)
    model = Quadratic(SHAPES)
    params = init_params()
    opt = make(name, base, params)
    twin_params = init_params()
    twin = make(name, base, twin_params)
    for t in range(3):
        model.step(opt, params, t, keys)
        model.step(twin, twin_params, t, keys)
    good = opt.state_dict()
    before = ([p.tobytes() for p in params], good, readback(opt))

    bad = corrupted(good, name)
    bad.update(mismatched(name, base))
    for what, buf in bad.items():
        with pytest.raises(autolr.Error) as info:
            opt.load_state_dict(buf)
        err = info.value
        assert err.status == "ALR_BAD_CHECKPOINT", f"{what}: {err.status}: {err}"
        assert len(str(err)) >= 20, f"{what}: message too short: {err}"
        after = ([p.tobytes() for p in params], opt.state_dict(), readback(opt))
        assert after[0] == before[0], f"{what}: parameters changed"
        assert after[1] == before[1], f"{what}: state changed"
        assert same(after[2], before[2]), f"{what}: options or read-back changed"

    # and the trajectory that follows is the one of an optimizer that never saw a bad buffer
    for t in range(3, 8):
        model.step(opt, params, t, keys)
        model.step(twin, twin_params, t, keys)
    assert [p.tobytes() for p in params] == [p.tobytes() for p in twin_params]
    assert opt.state_dict() == twin.state_dict()


@pytest.mark.parametrize("name,base", ALGORITHM_CASES, ids=ALGORITHM_IDS)
def test_load_before_any_step_and_reload(name, base):
    """A checkpoint of a fresh optimizer loads into a used one (resetting it); loading the same
    bytes twice is idempotent."""
    keys = inputs_for(name, base)
    fresh = make(name, base, init_params()).state_dict()
    params = init_params()
    opt = make(name, base, params)
    model = Quadratic(SHAPES)
    for t in range(3):
        model.step(opt, params, t, keys)
    opt.load_state_dict(fresh)
    assert opt.state_dict() == fresh
    opt.load_state_dict(fresh)
    assert opt.state_dict() == fresh
