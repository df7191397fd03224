"""Checkpoints whose checksum is valid but whose contents no run of the algorithm could have
produced are refused (ALR_BAD_CHECKPOINT), with parameters, state and read-back unchanged; and
what a long run can really reach (2^31 steps) still gives finite Adam steps.

The checkpoint is parsed field by field here (the layout of src/checkpoint.rs and each
algorithm's `save`), one value is replaced, and the buffer is resealed, so the library's own
value checks are what is tested, not its checksum."""
import struct

import numpy as np
import pytest

import autolr
from test_checkpoint import reseal


class Fields:
    """Offsets of the fields of a checkpoint body, in order, as (kind, offset, count)."""

    def __init__(self, state):
        self.body = bytearray(state[:-8])
        self.pos = 12  # magic (8) and format version (4)
        self.fields = []

    def _u64(self):
        (v,) = struct.unpack_from("<Q", self.body, self.pos)
        self.pos += 8
        return v

    def str(self):
        n = self._u64()
        s = bytes(self.body[self.pos:self.pos + n]).decode()
        self.fields.append(("str", self.pos, n))
        self.pos += n
        return s

    def vec(self, kind):
        size = {"f32": 4, "f64": 8, "u64": 8}[kind]
        n = self._u64()
        at = self.pos
        self.fields.append((kind, at, n))
        self.pos += size * n
        return at, n

    def u32(self):
        at = self.pos
        self.pos += 4
        return at

    def u64(self):
        at = self.pos
        self.pos += 8
        return at

    def header(self, n_groups):
        """Through the algorithm name that opens the state section; returns the offsets of
        the option rows and of the `started` flag."""
        self.str(), self.str()
        self.vec("f64"), self.vec("f64")
        n_specs = self._u64()
        names = [self.str() for _ in range(n_specs)]
        rows = [self.vec("f64")[0] for _ in range(n_groups)]
        started = self.u32()
        self.str()
        return names, rows, started

    def put(self, fmt, at, value):
        struct.pack_into(fmt, self.body, at, value)
        return reseal(self.body)


SHAPES = [(4, 3), (3,), (6,)]
GROUPS = [0, 0, 1]


def trained(name, steps=3, **options):
    rng = np.random.default_rng(5)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    opt = autolr.Optimizer(name, params, groups=GROUPS, **options)
    for t in range(steps):
        rows = [rng.standard_normal((4,) + s).astype(np.float32) for s in SHAPES]
        kw = {}
        if name.startswith("auto") or options.get("base", "").startswith("auto"):
            kw.update(per_sample=rows, batch_size=4)
        if name.startswith("vsgd"):
            kw.update(per_sample=rows, batch_size=4, curvature=[np.ones(s, np.float32) for s in SHAPES])
        if name == "gi":
            kw.update(loss=1.0 / (t + 1), closure=lambda: 0.9 / (t + 1))
        opt.step([r.mean(axis=0) for r in rows], **kw)
    return opt, params


def refused(opt, params, bad, what):
    before = ([p.tobytes() for p in params], opt.state_dict(), repr(opt.lr), repr(opt.momentum))  # repr: NaN == NaN
    with pytest.raises(autolr.Error) as info:
        opt.load_state_dict(bad)
    assert info.value.status == "ALR_BAD_CHECKPOINT", f"{what}: {info.value.status}: {info.value}"
    after = ([p.tobytes() for p in params], opt.state_dict(), repr(opt.lr), repr(opt.momentum))
    assert after == before, f"{what}: a refused load changed something"
    return str(info.value)


def state_floats(name, **options):
    """A trained optimizer, the parsed checkpoint, and the offset of tensor 0's element states
    (fixed-rate rules and AutoOpt: per-group counts or records first, then one f32 vector per
    tensor)."""
    opt, params = trained(name, **options)
    f = Fields(opt.state_dict())
    f.header(2)
    if name.startswith("auto"):
        for _ in range(2):
            f.vec("f64"), f.vec("u64"), f.vec("f64")
    else:
        f.vec("u64")
    at, _ = f.vec("f32")
    return opt, params, f, at


@pytest.mark.parametrize("name,element,value,why", [
    ("adam", 1, -1.0, "v < 0"),
    ("adam", 0, float("nan"), "m = NaN"),
    ("adamw", 1, float("nan"), "v = NaN"),
    ("adagrad", 0, -0.5, "sum < 0"),
    ("rmsprop", 0, -0.5, "s < 0"),
    ("momentum", 0, float("inf"), "m = Inf"),
    ("auto-sgd", 0, float("nan"), "d = NaN"),
    ("auto-adam", 0, float("inf"), "d = Inf"),
    ("auto-adagrad", 1, -2.0, "s < 0"),
])
def test_impossible_element_states_are_refused(name, element, value, why):
    opt, params, f, at = state_floats(name)
    message = refused(opt, params, f.put("<f", at + 4 * element, value), why)
    assert "tensor 0, element 0" in message and name in message


def test_a_count_beyond_any_run_is_refused():
    opt, params, f, _ = state_floats("adam")
    counts = next(off for kind, off, n in f.fields if kind == "u64")
    message = refused(opt, params, f.put("<Q", counts, (1 << 53) + 1), "steps = 2^53 + 1")
    assert "step counts" in message


def test_adam_past_two_to_the_31_steps_stays_finite():
    """A count that a long run reaches is accepted, and the bias correction at it is not the
    one of a negative step number (which made the step NaN)."""
    opt, params, f, _ = state_floats("adam")
    counts = next(off for kind, off, n in f.fields if kind == "u64")
    good = f.put("<Q", counts, 1 << 31)
    opt.load_state_dict(good)
    opt.step([np.full(s, 0.1, np.float32) for s in SHAPES])
    assert all(np.isfinite(p).all() for p in params)


def test_autoopt_group_records_are_checked():
    opt, params = trained("auto-adam")
    for what, slot, value in [("γ1 = 1.5", 0, 1.5), ("γ2 = −0.1", 1, -0.1), ("γ1 = NaN after steps", 0, float("nan"))]:
        f = Fields(opt.state_dict())
        f.header(2)
        gamma, _ = f.vec("f64")
        refused(opt, params, f.put("<d", gamma + 8 * slot, value), what)
    f = Fields(opt.state_dict())
    f.header(2)
    f.vec("f64")
    counts, _ = f.vec("u64")
    refused(opt, params, f.put("<Q", counts + 8 * 1, 99), "more fallbacks than steps")


@pytest.mark.parametrize("value", [float("inf"), -1.0, float("nan")])
def test_gi_eta_is_checked(value):
    opt, params = trained("gi", base="adam")
    f = Fields(opt.state_dict())
    f.header(2)
    eta, _ = f.vec("f64")
    refused(opt, params, f.put("<d", eta, value), f"η = {value}")


@pytest.mark.parametrize("value", [float("nan"), 0.0, -1.0])
def test_tlr_alpha_is_checked(value):
    opt, params = trained("tlr")
    f = Fields(opt.state_dict())
    f.header(2)
    f.u64()
    alpha, _ = f.vec("f64")
    refused(opt, params, f.put("<d", alpha, value), f"α = {value}")


def test_vsgd_tau_below_one_is_refused():
    opt, params = trained("vsgd-l", n0=1)
    f = Fields(opt.state_dict())
    f.header(2)
    f.u64()
    f.vec("f64")
    elems, _ = f.vec("f32")
    refused(opt, params, f.put("<f", elems + 4 * 3, 0.0), "τ = 0")


def test_started_flag_is_zero_or_one_and_true_for_a_trained_state():
    opt, params = trained("tlr")
    f = Fields(opt.state_dict())
    _, _, started = f.header(2)
    refused(opt, params, f.put("<I", started, 2), "started = 2")
    message = refused(opt, params, f.put("<I", started, 0), "started = 0 on a trained TLR")
    assert "trained" in message


def test_a_one_value_option_must_agree_between_groups():
    opt, params = trained("tlr", window=2)
    f = Fields(opt.state_dict())
    names, rows, _ = f.header(2)
    for option in ("check_finite", "window"):
        i = names.index(option)
        current = struct.unpack_from("<d", f.body, rows[1] + 8 * i)[0]
        other = 0.0 if option == "check_finite" else current + 1
        message = refused(opt, params, f.put("<d", rows[1] + 8 * i, other), f"{option} differs between rows")
        assert option in message


def test_the_state_section_names_its_algorithm():
    """auto-adam's and auto-adagrad's states are laid out alike; an auto-adam state behind an
    auto-adagrad header and options is still refused."""
    adagrad, params = trained("auto-adagrad")
    adam, _ = trained("auto-adam")
    head = Fields(adagrad.state_dict())
    head.header(2)
    section = Fields(adam.state_dict())
    section.header(2)
    name_len = len("auto-adagrad")
    forged = head.body[:head.pos - name_len - 8] + section.body[section.pos - len("auto-adam") - 8:]
    message = refused(adagrad, params, reseal(forged), "auto-adam state under an auto-adagrad header")
    assert "auto-adam" in message


def test_prodigy_at_d_zero_resumes():
    """A growth rate below 1 shrinks d, to 0 by underflow: a state accepted steps reach, so its
    checkpoint loads and resumes bit for bit."""
    opt, params = trained("prodigy", steps=4, growth_rate=5e-324)
    assert opt.telemetry()["d"] == [0.0, 0.0]  # d is global: each group reports it
    saved, at = opt.state_dict(), [p.copy() for p in params]
    twin, twin_params = trained("prodigy", steps=0, growth_rate=5e-324)
    for p, q in zip(twin_params, at):
        p[...] = q
    twin.load_state_dict(saved)
    g = [np.full(s, 0.1, np.float32) for s in SHAPES]
    opt.step(g)
    twin.step(g)
    assert all(np.array_equal(a, b) for a, b in zip(params, twin_params)) and opt.state_dict() == twin.state_dict()


@pytest.mark.parametrize("name, options", [("sf-sgd", dict(r=1e10)), ("dog", dict(weight_decay=1e300)), ("prodigy", dict(d_coef=1e300))])
def test_a_diverged_state_is_refused_as_one(name, options):
    """Options far too large make a run overflow through accepted steps; its checkpoint saves
    (for inspection) and is refused on load with a message that says the run diverged, not
    only that the bytes may be corrupted."""
    opt, params = trained(name, steps=4, **options)
    saved = opt.state_dict()
    message = refused(opt, params, saved, f"{name} {options}")
    assert "diverged" in message and "earlier checkpoint" in message, message
