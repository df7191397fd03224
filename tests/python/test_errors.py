"""Every status code reachable from Python raises autolr.Error (a ValueError) with a useful message
and the right .status; after every failed call the parameters and state_dict() are bit-identical
to before. Also: the binding's own checks (dtype, contiguity, shape), and that a destroyed or
stale optimizer handle is an error, not a crash.

ALR_CUDA_ERROR cannot be produced on a CPU build (a CUDA device is refused with ALR_UNSUPPORTED
before any driver call). ALR_CALLBACK_FAILED needs an algorithm that calls back ('gi', 'vsgd-l');
those tests skip until one is in autolr.ALGORITHMS.
"""
import ctypes
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import autolr
from autolr import _ffi
from autolr._lib import lib

SHAPES = [(13,), (2, 2), (3, 3)]
GROUPS = [0, 1, 0]


def make_params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def make_grads(params, t):
    rng = np.random.default_rng(100 + t)
    return [(0.5 * p + rng.standard_normal(p.shape)).astype(np.float32) for p in params]


@pytest.fixture
def adam():
    """An adam optimizer with non-default options, 3 steps into training (non-trivial state)."""
    params = make_params()
    opt = autolr.Optimizer("adam", params, groups=GROUPS, lr=0.01, beta2=0.99)
    opt.set_option("lr", 0.0125, group=0)
    for t in range(3):
        opt.step(make_grads(params, t))
    return opt, params


def snapshot(opt, params):
    return [p.tobytes() for p in params], opt.state_dict()


def assert_fails(opt, params, status, fn, *needles):
    """`fn()` raises autolr.Error with `status` and a message naming `needles`; nothing changed."""
    before = snapshot(opt, params) if opt is not None else ([p.tobytes() for p in params], None)
    with pytest.raises(autolr.Error) as info:
        fn()
    err = info.value
    assert isinstance(err, ValueError)
    msg = str(err)
    assert err.status == status, f"status {err.status}, want {status}: {msg}"
    assert len(msg) >= 15, f"message too short to help anyone: {msg!r}"
    for needle in needles:
        assert needle in msg, f"message {msg!r} should mention {needle!r}"
    if opt is not None:
        after = snapshot(opt, params)
        assert after[0] == before[0], "parameters changed by a failed call"
        assert after[1] == before[1], "state_dict changed by a failed call"
    else:
        assert [p.tobytes() for p in params] == before[0], "parameters changed by a failed call"
    return err


# --- raw C calls, for the statuses the Python API itself never lets through ---------------------

def raw_check(rc):
    """The binding's own status -> exception conversion."""
    autolr._check(rc)


def raw_create(algorithm=b"adam", lens=(13, 4, 9), groups=None, device=_ffi.ALR_DEVICE_CPU, struct_size=None, sharded=0, reduce=None):
    n = len(lens)
    args = _ffi.AlrCreateArgs()
    args.struct_size = ctypes.sizeof(args) if struct_size is None else struct_size
    args.sharded = sharded
    if reduce is not None:
        args.reduce = reduce
    args.algorithm = algorithm
    args.n_tensors = n
    c_lens = (ctypes.c_size_t * n)(*lens)
    args.lens = c_lens
    if groups is not None:
        c_groups = (ctypes.c_uint32 * n)(*groups)
        args.groups = c_groups
    args.device = device
    handle = ctypes.c_void_p(12345)
    rc = lib.alr_create(ctypes.byref(args), ctypes.byref(handle))
    return rc, handle


# --- ALR_INVALID_ARGUMENT -------------------------------------------------------------------------

def test_sharded_arguments_go_together():
    """`sharded` and `reduce` are given together or not at all; the first header's struct_size
    (before them) is accepted, one between the two versions is not."""
    identity = _ffi.AlrReduceFn(lambda _user, _values, _n, _op, _stream: 0)
    for sharded, reduce, expected in [(1, None, "reduce is NULL"), (0, identity, "sharded is 0"), (2, identity, "sharded is 2")]:
        rc, handle = raw_create(b"auto-adam", sharded=sharded, reduce=reduce)
        with pytest.raises(autolr.Error, match=expected) as info:
            raw_check(rc)
        assert info.value.status == "ALR_INVALID_ARGUMENT" and not handle.value
    rc, handle = raw_create(b"auto-adam", sharded=1, reduce=identity)
    raw_check(rc)
    lib.alr_destroy(handle)
    first = _ffi.AlrCreateArgs.sharded.offset
    rc, handle = raw_create(struct_size=first, sharded=7)  # beyond that size: never read
    raw_check(rc)
    lib.alr_destroy(handle)
    rc, handle = raw_create(struct_size=first + 4)
    with pytest.raises(autolr.Error, match="struct_size"):
        raw_check(rc)


def test_unknown_algorithm_lists_accepted_names():
    params = make_params()
    err = assert_fails(None, params, "ALR_INVALID_ARGUMENT", lambda: autolr.Optimizer("adamm", params), "adamm")
    for name in autolr.ALGORITHMS:
        assert name in str(err)


@pytest.mark.parametrize("groups,needle", [([0, 2, 0], "group 1"), ([1, 1, 1], "group 0"), ([0, 1, 5], "group id 5")])
def test_bad_group_ids(groups, needle):
    params = make_params()
    assert_fails(None, params, "ALR_INVALID_ARGUMENT", lambda: autolr.Optimizer("adam", params, groups=groups), needle)


@pytest.mark.parametrize("bad", [2**32, 1.7, -1, True])
def test_a_group_id_a_c_uint32_cannot_hold_is_refused_not_wrapped(bad):
    """2^32 once reached the library as group 0, 1.7 as group 1."""
    params = make_params()
    assert_fails(None, params, "ALR_INVALID_ARGUMENT", lambda: autolr.Optimizer("adam", params, groups=[0, 1, bad]), "groups[2]")
    # A whole number as a float is that number (np.zeros gives float ids).
    assert autolr.Optimizer("adam", params, groups=np.array([0.0, 1.0, 1.0])).n_groups == 2


def test_huge_group_id_is_an_error_not_an_abort():
    """A group id of 4e9 must be refused like any other unused id. It runs in a subprocess because
    a library that sizes an allocation by the largest id aborts the whole process (OOM)."""
    code = textwrap.dedent(
        """
        import numpy as np, autolr
        try:
            autolr.Optimizer("adam", [np.zeros(3, np.float32)] * 3, groups=[0, 1, 4_000_000_000])
        except autolr.Error as e:
            print(e.status, e)
        """
    )
    env_path = [p for p in sys.path if p]
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path[:0] = {env_path!r}\n" + code],
        capture_output=True, text=True, timeout=120, env={**os.environ, "RUST_BACKTRACE": "0"},
    )
    assert proc.returncode == 0, f"process died (rc {proc.returncode}): {proc.stderr.strip()[-300:]}"
    assert proc.stdout.startswith("ALR_INVALID_ARGUMENT"), proc.stdout + proc.stderr


def test_zero_size_and_no_tensors():
    params = [np.zeros(3, np.float32), np.zeros(0, np.float32)]
    assert_fails(None, params, "ALR_INVALID_ARGUMENT", lambda: autolr.Optimizer("sgd", params), "tensor 1")
    assert_fails(None, [], "ALR_INVALID_ARGUMENT", lambda: autolr.Optimizer("sgd", []))


@pytest.mark.parametrize(
    "bad,needle",
    [
        (lambda p: p.astype(np.float64), "float32"),
        (lambda p: np.ones((p.shape[0], 2 * p.shape[1] if p.ndim > 1 else 2), np.float32)[:, ::2] if p.ndim > 1 else np.ones(2 * p.size, np.float32)[::2], "contiguous"),
        (lambda p: p.tolist(), "numpy"),
    ],
    ids=["float64", "non-contiguous", "list"],
)
def test_param_dtype_contiguity_type(bad, needle):
    params = make_params()
    params[1] = bad(params[1])
    keep = [p.tobytes() if isinstance(p, np.ndarray) else None for p in params]
    with pytest.raises(autolr.Error) as info:
        autolr.Optimizer("adam", params)
    assert info.value.status == "ALR_INVALID_ARGUMENT" and needle in str(info.value), str(info.value)
    assert [p.tobytes() if isinstance(p, np.ndarray) else None for p in params] == keep


def test_read_only_params():
    params = make_params()
    params[2].flags.writeable = False
    with pytest.raises(autolr.Error, match="read-only") as info:
        autolr.Optimizer("adam", params)
    assert info.value.status == "ALR_INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "bad,needle",
    [
        (lambda g: g.astype(np.float64), "float32"),
        (lambda g: np.asfortranarray(np.stack([g, g], axis=-1))[..., 0], "contiguous"),
        (lambda g: g.tolist(), "numpy"),
    ],
    ids=["float64", "non-contiguous", "list"],
)
def test_grad_dtype_contiguity_type(adam, bad, needle):
    opt, params = adam
    grads = make_grads(params, 3)
    grads[2] = bad(grads[2])
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.step(grads), "grads[2]", needle)


def test_option_errors(adam):
    opt, params = adam
    err = assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("learning_rate", 0.1), "learning_rate")
    for name in ("lr", "beta1", "beta2", "eps", "weight_decay", "check_finite"):
        assert name in str(err)
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("lr", -0.1), "lr", "[0, inf)")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("beta1", 1.0), "beta1", "[0, 1)")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("eps", 0.0), "eps")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("lr", float("nan")), "lr")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("lr", float("inf")), "lr")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("check_finite", 0.5), "0 or 1")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("beta2", 1.5, group=1), "beta2")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("lr", 0.1, group=2), "group 2")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("check_finite", 0, group=0), "check_finite")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.get_option("momentum"), "momentum")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.get_option("lr", group=2), "group 2")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("base", "sgd", group=0), "base")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("lr", None), "lr", "number")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("betas", (0.9, 0.99)), "beta1")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("lr", 10**400), "lr", "C double")


def test_option_errors_in_constructor():
    params = make_params()
    with pytest.raises(autolr.Error, match="lr") as info:
        autolr.Optimizer("adam", params, lr=-1.0)
    assert info.value.status == "ALR_INVALID_ARGUMENT"
    with pytest.raises(autolr.Error, match="bogus") as info:
        autolr.Optimizer("sgd", params, bogus=1.0)
    assert info.value.status == "ALR_INVALID_ARGUMENT"


def test_string_option_on_algorithm_without_one():
    params = make_params()
    opt = autolr.Optimizer("adam", params)
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("base", "sgd"), "base")


def test_invalid_option_combination_at_step():
    params = make_params()
    opt = autolr.Optimizer("momentum", params, groups=GROUPS, lr=0.01, nesterov=1, dampening=0.5)
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.step(make_grads(params, 0)), "nesterov")


def test_step_argument_errors(adam):
    opt, params = adam
    grads = make_grads(params, 3)
    sq = [4 * g * g for g in grads]
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.step(grads, per_sample_scale="batch"), "per_sample_scale")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.step(grads, sum_sq=sq), "batch_size")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.step(grads, sum_sq=sq, batch_size=-3), "batch_size")
    # N is a C size_t: a larger value is refused, not wrapped (2^64 + 16 once stepped as N = 16)
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.step(grads, sum_sq=sq, batch_size=2**64 + 16), "batch_size")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.step(grads, sum_sq=sq, batch_size=16.5), "batch_size")
    per_sample = [np.stack([g] * 4) for g in grads]
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.step(grads, sum_sq=sq, per_sample=per_sample, batch_size=4), "not both")


# --- ALR_SHAPE_MISMATCH ---------------------------------------------------------------------------

def test_shape_mismatch(adam):
    opt, params = adam
    grads = make_grads(params, 3)
    assert_fails(opt, params, "ALR_SHAPE_MISMATCH", lambda: opt.step(grads[:2]), "2", "3")
    assert_fails(opt, params, "ALR_SHAPE_MISMATCH", lambda: opt.step(grads + grads[:1]))
    wrong = list(grads)
    wrong[1] = np.zeros((4,), np.float32)  # same size, other shape
    assert_fails(opt, params, "ALR_SHAPE_MISMATCH", lambda: opt.step(wrong), "grads[1]", "(2, 2)")
    wrong[1] = np.zeros((2, 3), np.float32)
    assert_fails(opt, params, "ALR_SHAPE_MISMATCH", lambda: opt.step(wrong), "grads[1]")
    sq = [g * g for g in grads]
    sq[0] = sq[0][:5].copy()
    assert_fails(opt, params, "ALR_SHAPE_MISMATCH", lambda: opt.step(grads, sum_sq=sq, batch_size=4), "sum_sq[0]")
    assert_fails(opt, params, "ALR_SHAPE_MISMATCH", lambda: opt.step(grads, curvature=grads[:1]), "curvature")


def test_groups_length_mismatch():
    params = make_params()
    assert_fails(None, params, "ALR_SHAPE_MISMATCH", lambda: autolr.Optimizer("adam", params, groups=[0, 0]), "groups")


def test_shape_mismatch_from_the_library(adam):
    """The binding checks shapes itself; the library's own check is reached through the raw call."""
    opt, params = adam
    before = snapshot(opt, params)
    grads = make_grads(params, 3)
    args = _ffi.AlrStepArgs()
    args.struct_size = ctypes.sizeof(args)
    args.n_tensors = 2
    p = (ctypes.POINTER(ctypes.c_float) * 3)(*[a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for a in params])
    g = (ctypes.POINTER(ctypes.c_float) * 3)(*[a.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) for a in grads])
    args.params = ctypes.cast(p, ctypes.POINTER(ctypes.POINTER(ctypes.c_float)))
    args.grads = ctypes.cast(g, ctypes.POINTER(ctypes.POINTER(ctypes.c_float)))
    with pytest.raises(autolr.Error, match="n_tensors") as info:
        raw_check(lib.alr_step(opt._handle, ctypes.byref(args)))
    assert info.value.status == "ALR_SHAPE_MISMATCH"
    assert snapshot(opt, params) == before
    args.n_tensors = 3
    args.struct_size = ctypes.sizeof(args) - 8
    with pytest.raises(autolr.Error, match="struct_size") as info:
        raw_check(lib.alr_step(opt._handle, ctypes.byref(args)))
    assert info.value.status == "ALR_INVALID_ARGUMENT"
    assert snapshot(opt, params) == before


# --- ALR_NON_FINITE -------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_gradient(adam, value):
    opt, params = adam
    grads = make_grads(params, 3)
    grads[2][1, 2] = value  # the last tensor: earlier ones would already be updated without up-front validation
    assert_fails(opt, params, "ALR_NON_FINITE", lambda: opt.step(grads), "tensor 2", "[5]")


def test_non_finite_check_can_be_turned_off():
    params = make_params()
    opt = autolr.Optimizer("sgd", params, lr=0.1, check_finite=0)
    grads = make_grads(params, 0)
    grads[0][3] = np.nan
    opt.step(grads)  # accepted: the caller took responsibility, NaN propagates
    assert np.isnan(params[0][3]) and np.isfinite(np.delete(params[0], 3)).all()


# --- ALR_WRONG_STATE ------------------------------------------------------------------------------

def test_report_loss_on_non_gi(adam):
    opt, params = adam
    assert_fails(opt, params, "ALR_WRONG_STATE", lambda: opt.report_loss(1.0), "adam", "gi")


# --- ALR_UNSUPPORTED ------------------------------------------------------------------------------

def test_inputs_adam_does_not_use(adam):
    opt, params = adam
    grads = make_grads(params, 3)
    sq = [4 * g * g for g in grads]
    calls = []

    def closure():
        calls.append("loss")
        return 1.0

    def grad_closure(ps):
        calls.append("grad")
        return [np.zeros_like(p) for p in ps]

    assert_fails(opt, params, "ALR_UNSUPPORTED", lambda: opt.step(grads, sum_sq=sq, batch_size=4), "adam", "per-sample")
    per_sample = [np.stack([g] * 4) for g in grads]
    assert_fails(opt, params, "ALR_UNSUPPORTED", lambda: opt.step(grads, per_sample=per_sample), "per-sample")
    assert_fails(opt, params, "ALR_UNSUPPORTED", lambda: opt.step(grads, curvature=sq), "curvature")
    assert_fails(opt, params, "ALR_UNSUPPORTED", lambda: opt.step(grads, loss=1.0), "loss")
    assert_fails(opt, params, "ALR_UNSUPPORTED", lambda: opt.step(grads, closure=closure), "loss callback")
    assert_fails(opt, params, "ALR_UNSUPPORTED", lambda: opt.step(grads, grad_closure=grad_closure), "gradient callback")
    assert calls == [], "a refused callback was called"


def test_cuda_device_on_cpu_build():
    rc, handle = raw_create(device=_ffi.ALR_DEVICE_CUDA)
    with pytest.raises(autolr.Error, match="(?i)cuda") as info:
        raw_check(rc)
    assert info.value.status == "ALR_UNSUPPORTED"
    assert handle.value is None, "alr_create must set *out = NULL on failure"


def test_cuda_optimizer_on_cpu_build_says_how_to_get_one():
    with pytest.raises(autolr.Error, match="without the `cuda` feature") as info:
        autolr.CudaOptimizer("auto-adam", [10, 3], device=0)
    assert info.value.status == "ALR_UNSUPPORTED"
    assert set(autolr.CUDA_ALGORITHMS) < set(autolr.ALGORITHMS)


def test_the_library_lists_the_algorithms_of_each_device():
    lib = autolr._lib.lib
    assert lib.alr_algorithms(7) is None, "a value that is no AlrDevice gives NULL"
    cpu = lib.alr_algorithms(autolr._ffi.ALR_DEVICE_CPU).decode().split(",")
    assert tuple(cpu) == autolr.ALGORITHMS and len(cpu) == len(set(cpu)) >= 14
    for name in cpu:  # every listed name is accepted (GI needs no base to be created)
        autolr.Optimizer(name, [np.zeros(3, np.float32)])
    cuda = autolr.CUDA_ALGORITHMS
    assert "tlr" in cuda and "auto-adam" in cuda and "gi" not in cuda and set(cuda) < set(cpu)
    assert {"prodigy", "dadapt-adam", "dog", "ldog", "schedule-free", "sf-adamw", "sf-sgd", "vsgd-l", "vsgd-g", "vsgd-b"} <= set(cuda)


# --- ALR_NULL_POINTER and stale handles -----------------------------------------------------------

def test_null_pointers_from_raw_calls():
    handle = ctypes.c_void_p()
    with pytest.raises(autolr.Error, match="args") as info:
        raw_check(lib.alr_create(None, ctypes.byref(handle)))
    assert info.value.status == "ALR_NULL_POINTER"
    rc, handle = raw_create(algorithm=None)
    with pytest.raises(autolr.Error, match="algorithm") as info:
        raw_check(rc)
    assert info.value.status == "ALR_NULL_POINTER"
    rc, handle = raw_create(struct_size=8)
    with pytest.raises(autolr.Error, match="struct_size") as info:
        raw_check(rc)
    assert info.value.status == "ALR_INVALID_ARGUMENT"
    assert handle.value is None


def test_destroyed_optimizer_raises_instead_of_crashing():
    params = make_params()
    opt = autolr.Optimizer("adam", params, groups=GROUPS)
    opt.step(make_grads(params, 0))
    opt.__del__()  # what garbage collection does; the object is still reachable here
    before = [p.tobytes() for p in params]
    for call in (
        lambda: opt.step(make_grads(params, 1)),
        lambda: opt.lr,
        lambda: opt.momentum,
        lambda: opt.telemetry(),
        lambda: opt.state_dict(),
        lambda: opt.load_state_dict(b"AUTOLR\0\x01"),
        lambda: opt.set_option("lr", 0.1),
        lambda: opt.get_option("lr"),
        lambda: opt.report_loss(1.0),
    ):
        with pytest.raises(autolr.Error) as info:
            call()
        assert info.value.status == "ALR_NULL_POINTER" and "opt" in str(info.value), str(info.value)
    assert [p.tobytes() for p in params] == before
    opt.__del__()  # twice: still fine
    del opt


def test_stale_handle_is_reported_not_dereferenced():
    """A copy of a handle that outlived its optimizer (the C situation): every call is refused."""
    params = make_params()
    opt = autolr.Optimizer("adam", params, groups=GROUPS)
    stale = ctypes.c_void_p(opt._handle.value)
    assert lib.alr_destroy(opt._handle) == _ffi.ALR_OK
    opt._handle = None
    # No optimizer is created between the destroy and these calls, so the address is not reused.
    ghost = object.__new__(autolr.Optimizer)
    ghost._params, ghost._shapes, ghost._handle = params, [p.shape for p in params], stale
    try:
        before = [p.tobytes() for p in params]
        for call in (lambda: ghost.step(make_grads(params, 0)), lambda: ghost.state_dict(), lambda: ghost.lr,
                     lambda: ghost.set_option("lr", 0.5)):
            with pytest.raises(autolr.Error, match="not a live optimizer") as info:
                call()
            assert info.value.status == "ALR_INVALID_ARGUMENT"
        assert [p.tobytes() for p in params] == before
        assert lib.alr_destroy(stale) == _ffi.ALR_INVALID_ARGUMENT
    finally:
        ghost._handle = None  # never let __del__ free an address a later optimizer may reuse


# --- ALR_BAD_CHECKPOINT ---------------------------------------------------------------------------

def test_bad_checkpoints(adam):
    opt, params = adam
    good = opt.state_dict()
    cases = {
        "empty": b"",
        "11 bytes": good[:11],
        "truncated by 1": good[:-1],
        "no checksum": good[:-8],
        "half": good[: len(good) // 2],
        "trailing byte": good + b"\0",
        "not a checkpoint": b"x" * len(good),
    }
    for pos in (0, 8, 20, len(good) // 2, len(good) - 9, len(good) - 1):
        flipped = bytearray(good)
        flipped[pos] ^= 0x01
        cases[f"byte {pos} flipped"] = bytes(flipped)
    for what, buf in cases.items():
        err = assert_fails(opt, params, "ALR_BAD_CHECKPOINT", lambda: opt.load_state_dict(buf))
        assert "checkpoint" in str(err) or "checksum" in str(err), (what, str(err))


def test_checkpoint_of_another_configuration(adam):
    opt, params = adam
    others = {
        "momentum": autolr.Optimizer("momentum", make_params(), groups=GROUPS),
        "other sizes": autolr.Optimizer("adam", [np.zeros(13, np.float32), np.zeros((2, 2), np.float32), np.zeros(8, np.float32)], groups=GROUPS),
        "other groups": autolr.Optimizer("adam", make_params()),
        "two tensors": autolr.Optimizer("adam", make_params()[:2]),
    }
    for what, other in others.items():
        buf = other.state_dict()
        assert_fails(opt, params, "ALR_BAD_CHECKPOINT", lambda: opt.load_state_dict(buf))


def test_checkpoint_of_schedule_free_over_another_gi_base():
    """Schedule-free over gi's checkpoint names GI's base (base_base) in GI's part: one of another
    base_base is refused, with nothing changed, and the message says which base this one has."""
    params = make_params()
    opt = autolr.Optimizer("schedule-free", params, groups=GROUPS, base="gi", base_base="adam")
    opt.step(make_grads(params, 0), loss=_loss(params), closure=lambda: _loss(params))
    for base_base, needle in (("adamw", "'adam' where this optimizer's 'adamw'"), ("sgd", "another base_base than this optimizer's 'sgd'")):
        other_params = make_params()
        other = autolr.Optimizer("schedule-free", other_params, groups=GROUPS, base="gi", base_base=base_base)
        buf = opt.state_dict()
        assert_fails(other, other_params, "ALR_BAD_CHECKPOINT", lambda: other.load_state_dict(buf), needle)


# --- ALR_PANIC ------------------------------------------------------------------------------------

def test_panic_is_an_error_and_the_library_survives(adam):
    opt, params = adam
    before = snapshot(opt, params)
    with pytest.raises(autolr.Error, match="alr_selftest_panic") as info:
        raw_check(lib.alr_selftest_panic())
    assert info.value.status == "ALR_PANIC"
    assert snapshot(opt, params) == before
    opt.step(make_grads(params, 3))  # still works


def test_panic_prints_nothing_to_stderr():
    """A caught panic's message goes to the last-error text only: nothing on the host's stderr,
    also with RUST_BACKTRACE=1 (Rust's default hook would print the message and a backtrace)."""
    code = textwrap.dedent(
        """
        from autolr._lib import lib
        from autolr import _ffi
        rc = lib.alr_selftest_panic()
        print(_ffi.AlrStatus_NAMES[rc], lib.alr_last_error().decode())
        """
    )
    env_path = [p for p in sys.path if p]
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path[:0] = {env_path!r}\n" + code],
        capture_output=True, text=True, timeout=120, env={**os.environ, "RUST_BACKTRACE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ALR_PANIC"), proc.stdout
    assert "alr_selftest_panic was called" in proc.stdout and "api.rs" in proc.stdout, proc.stdout
    assert proc.stderr == "", f"the library printed to stderr: {proc.stderr!r}"


# --- ALR_CALLBACK_FAILED (only once an algorithm takes callbacks) ---------------------------------

class Boom(RuntimeError):
    pass


def _loss(params):
    return float(sum(0.25 * np.sum(p.astype(np.float64) ** 2) for p in params))


@pytest.mark.skipif("gi" not in autolr.ALGORITHMS, reason="'gi' is not in autolr.ALGORITHMS yet")
def test_gi_loss_callback_failure():
    params = make_params()
    opt = autolr.Optimizer("gi", params, groups=GROUPS)

    def closure():
        raise Boom("loss evaluation failed")

    with pytest.raises(autolr.Error) as info:
        opt.step(make_grads(params, 0), loss=_loss(params), closure=closure)
    err = info.value
    assert err.status == "ALR_CALLBACK_FAILED" and "Boom" in str(err), str(err)
    assert isinstance(err.__cause__, Boom)
    # Documented exception to "unchanged": GI's move stands, eta is not adapted. It must not be stuck:
    opt.step(make_grads(params, 1), loss=_loss(params), closure=lambda: _loss(params))


@pytest.mark.skipif("vsgd-l" not in autolr.ALGORITHMS, reason="'vsgd-l' is not in autolr.ALGORITHMS yet")
def test_vsgd_gradient_callback_failure():
    params = make_params()
    opt = autolr.Optimizer("vsgd-l", params, groups=GROUPS)

    def grad_closure(ps):
        raise Boom("gradient evaluation failed")

    err = assert_fails(opt, params, "ALR_CALLBACK_FAILED", lambda: opt.step(make_grads(params, 0), grad_closure=grad_closure), "Boom")
    assert isinstance(err.__cause__, Boom)


def test_every_reachable_status_is_covered():
    """Keeps this file honest: every status name of the header is either tested above or explained."""
    tested = {"ALR_NULL_POINTER", "ALR_INVALID_ARGUMENT", "ALR_SHAPE_MISMATCH", "ALR_NON_FINITE", "ALR_WRONG_STATE",
              "ALR_UNSUPPORTED", "ALR_CALLBACK_FAILED", "ALR_BAD_CHECKPOINT", "ALR_PANIC"}
    not_on_cpu = {"ALR_CUDA_ERROR"}
    assert set(_ffi.AlrStatus_NAMES.values()) - {"ALR_OK"} == tested | not_on_cpu


@pytest.mark.skipif("gi" not in autolr.ALGORITHMS, reason="'gi' is not in autolr.ALGORITHMS yet")
def test_gi_wrong_state():
    """The base cannot change after the first step; while a step waits for its loss report, a new
    step and a save are refused (and the refused step moves nothing)."""
    params = make_params()
    opt = autolr.Optimizer("gi", params, groups=GROUPS)
    opt.step(make_grads(params, 0), loss=_loss(params), closure=lambda: _loss(params))
    assert_fails(opt, params, "ALR_WRONG_STATE", lambda: opt.set_option("base", "adam"), "base")
    opt.step(make_grads(params, 1), loss=_loss(params))  # two-phase: waits for report_loss
    moved = [p.tobytes() for p in params]
    with pytest.raises(autolr.Error, match="report") as info:
        opt.step(make_grads(params, 2), loss=_loss(params))
    assert info.value.status == "ALR_WRONG_STATE"
    with pytest.raises(autolr.Error, match="report") as info:
        opt.state_dict()
    assert info.value.status == "ALR_WRONG_STATE"
    assert [p.tobytes() for p in params] == moved
    opt.report_loss(_loss(params))
    with pytest.raises(autolr.Error) as info:
        opt.report_loss(_loss(params))
    assert info.value.status == "ALR_WRONG_STATE"
    opt.state_dict()


def test_schedule_free_over_gi_wrong_state_and_bad_input():
    """Schedule-free over gi (docs/algorithms.md §3.3) keeps GI's protocol: the loss is required
    on an adapting step; while a step waits for its report, a step, a save and eval() are refused
    with nothing changed (eval would rewrite the parameters GI's report is about); a report
    without a waiting step is refused; base_base exists only over gi, and not after a step; the
    unused curvature is refused; a failing loss callback leaves the move standing."""
    params = make_params()
    with pytest.raises(autolr.Error, match="set base = 'gi' first") as info:
        autolr.Optimizer("schedule-free", params, groups=GROUPS, base_base="adam")
    assert info.value.status == "ALR_INVALID_ARGUMENT"
    opt = autolr.Optimizer("schedule-free", params, groups=GROUPS, base="gi", base_base="adam", base_lr=0.01)
    assert_fails(opt, params, "ALR_WRONG_STATE", lambda: opt.report_loss(1.0), "no gi step is waiting")
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.step(make_grads(params, 0)), "pass loss")
    assert_fails(opt, params, "ALR_UNSUPPORTED", lambda: opt.step(make_grads(params, 0), loss=_loss(params), curvature=make_grads(params, 0)), "curvature")
    assert_fails(opt, params, "ALR_NON_FINITE", lambda: opt.step(make_grads(params, 0), loss=float("nan")), "loss")
    opt.step(make_grads(params, 0), loss=_loss(params), closure=lambda: _loss(params))
    assert_fails(opt, params, "ALR_WRONG_STATE", lambda: opt.set_option("base_base", "sgd"), "base_base")
    opt.step(make_grads(params, 1), loss=_loss(params))  # two-phase: waits for report_loss
    moved = [p.tobytes() for p in params]
    for call in (lambda: opt.step(make_grads(params, 2), loss=_loss(params)), opt.state_dict, opt.eval):
        with pytest.raises(autolr.Error, match="report") as info:
            call()
        assert info.value.status == "ALR_WRONG_STATE"
        assert [p.tobytes() for p in params] == moved
    opt.report_loss(_loss(params))
    assert_fails(opt, params, "ALR_WRONG_STATE", lambda: opt.report_loss(1.0), "no gi step is waiting")
    opt.eval()
    assert [p.tobytes() for p in params] != moved
    opt.train()

    def closure():
        raise Boom("loss evaluation failed")

    before = [p.tobytes() for p in params]
    with pytest.raises(autolr.Error) as info:
        opt.step(make_grads(params, 3), loss=_loss(params), closure=closure)
    assert info.value.status == "ALR_CALLBACK_FAILED" and isinstance(info.value.__cause__, Boom)
    assert [p.tobytes() for p in params] != before, "the move of a step whose callback failed did not stand"
    opt.step(make_grads(params, 4), loss=_loss(params), closure=lambda: _loss(params))


# --- values C can send that Rust types could not hold, re-entry, sizes -------------------------

def test_out_of_range_enum_values_are_errors():
    assert lib.alr_status_name(42) == b"ALR_UNKNOWN_STATUS"
    assert lib.alr_status_name(-1) == b"ALR_UNKNOWN_STATUS"
    rc, handle = raw_create(device=7)
    with pytest.raises(autolr.Error, match="device is 7") as info:
        raw_check(rc)
    assert info.value.status == "ALR_INVALID_ARGUMENT" and handle.value is None
    params = [np.ones(4, np.float32)]
    opt = autolr.Optimizer("auto-sgd", params)
    before = params[0].copy(), opt.state_dict()
    args = _ffi.AlrStepArgs()
    args.struct_size = ctypes.sizeof(args)
    args.n_tensors = 1
    ptr = (ctypes.POINTER(ctypes.c_float) * 1)(params[0].ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
    g = np.ones(4, np.float32)
    gptr = (ctypes.POINTER(ctypes.c_float) * 1)(g.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
    args.params = ctypes.cast(ptr, ctypes.POINTER(ctypes.POINTER(ctypes.c_float)))
    args.grads = ctypes.cast(gptr, ctypes.POINTER(ctypes.POINTER(ctypes.c_float)))
    args.sum_sq = args.grads
    args.batch_size = 4
    args.per_sample_scale = 5
    rc = lib.alr_step(opt._handle, ctypes.byref(args))
    assert _ffi.AlrStatus_NAMES[rc] == "ALR_INVALID_ARGUMENT"
    assert "per_sample_scale is 5" in lib.alr_last_error().decode()
    assert np.array_equal(params[0], before[0]) and opt.state_dict() == before[1]


def test_callbacks_cannot_reenter_their_optimizer():
    """A loss callback that calls back into the same optimizer (read-back, load, step) is refused
    with ALR_WRONG_STATE inside the callback, instead of aliasing the optimizer mid-step."""
    params = [np.ones(3, np.float32)]
    opt = autolr.Optimizer("gi", params, base="adam")
    state = opt.state_dict()
    for reentry in (lambda: opt.lr, lambda: opt.load_state_dict(state), lambda: opt.step([np.ones(3, np.float32)], loss=1.0)):
        def closure():
            reentry()
            return 0.5
        with pytest.raises(autolr.Error) as info:
            opt.step([np.ones(3, np.float32)], loss=1.0, closure=closure)
        assert info.value.status == "ALR_CALLBACK_FAILED"
        assert "in use" in str(info.value.__cause__)
    assert len(opt.lr) == 1  # still usable afterwards


@pytest.mark.parametrize("length", [2**42, 2**62])
def test_impossible_tensor_sizes_are_errors_not_aborts(length):
    rc, handle = raw_create(algorithm=b"adam", lens=(length,))
    with pytest.raises(autolr.Error) as info:
        raw_check(rc)
    assert info.value.status == "ALR_INVALID_ARGUMENT" and handle.value is None


def test_gi_initial_eta_is_fixed_after_the_first_step():
    params = [np.ones(3, np.float32)]
    opt = autolr.Optimizer("gi", params, base="sgd", lr=0.01)
    opt.set_option("lr", 0.02)  # before the first step: fine
    opt.step([np.ones(3, np.float32)], loss=1.0, closure=lambda: 0.9)
    with pytest.raises(autolr.Error) as info:
        opt.set_option("lr", 0.5)
    assert info.value.status == "ALR_WRONG_STATE"


def test_gi_over_tlr_keeps_tlr_momentum_default():
    opt = autolr.Optimizer("gi", [np.ones(3, np.float32)], base="tlr")
    assert opt.get_option("momentum") == 0.0
    assert autolr.Optimizer("gi", [np.ones(3, np.float32)], base="momentum").get_option("momentum") == 0.5


# --- sizes no buffer can have (issue 17, item 1) --------------------------------------------------

def _raw_step(opt, params, grads, per_sample=None, curvature=None, batch_size=0):
    P = ctypes.POINTER(ctypes.c_float)
    keep = []

    def plist(arrays):
        arr = (P * len(arrays))(*[a.ctypes.data_as(P) for a in arrays])
        keep.append(arr)
        return ctypes.cast(arr, ctypes.POINTER(P))

    args = _ffi.AlrStepArgs()
    args.struct_size = ctypes.sizeof(args)
    args.n_tensors = len(params)
    args.params = plist(params)
    args.grads = plist(grads)
    if per_sample is not None:
        args.per_sample = plist(per_sample)
    if curvature is not None:
        args.curvature = plist(curvature)
    args.batch_size = batch_size
    rc = lib.alr_step(opt._handle, ctypes.byref(args))
    return _ffi.AlrStatus_NAMES[rc], lib.alr_last_error().decode()


@pytest.mark.parametrize("algorithm,length,batch_size", [
    ("auto-sgd", 5, 1 << 61),          # N·len fits in size_t, N·len·4 bytes does not fit in isize
    ("vsgd-l", 5, 1 << 61),
    ("auto-adam", (1 << 21) + 1, 1 << 40),
    ("auto-adagrad", 5, (2**64 - 1) // 5),
])
def test_per_sample_batch_no_buffer_can_hold_is_refused(algorithm, length, batch_size):
    """The per-sample buffer given is 8 floats: a library that made a slice of N·len floats and read
    it would crash this process. It must refuse the size instead, changing nothing."""
    params = [np.linspace(-1, 1, length).astype(np.float32)]
    opt = autolr.Optimizer(algorithm, params)
    before = snapshot(opt, params)
    rows = np.ones(8, np.float32)
    curvature = [np.ones(length, np.float32)] if algorithm.startswith("vsgd") else None
    status, msg = _raw_step(opt, params, [np.full(length, 0.25, np.float32)], per_sample=[rows],
                            curvature=curvature, batch_size=batch_size)
    assert status == "ALR_INVALID_ARGUMENT", msg
    assert "larger than any buffer" in msg and str(batch_size) in msg, msg
    assert snapshot(opt, params) == before


def _dl(array_or_ptr, shape, keep):
    c_shape = (ctypes.c_int64 * len(shape))(*shape)
    t = _ffi.AlrDLTensor()
    t.data = array_or_ptr.ctypes.data
    t.device = _ffi.AlrDLDevice(1, 0)
    t.ndim = len(shape)
    t.dtype = _ffi.AlrDLDataType(2, 32, 1)
    t.shape = c_shape
    keep += [c_shape, t]
    arr = (ctypes.POINTER(_ffi.AlrDLTensor) * 1)(ctypes.pointer(t))
    keep.append(arr)
    return ctypes.cast(arr, ctypes.POINTER(ctypes.POINTER(_ffi.AlrDLTensor)))


@pytest.mark.parametrize("param_shape,per_sample_shape", [
    ((5,), (1 << 61, 5)),                          # per_sample shape [2^61, len]
    ((3, 6148914691236517207), None),              # 3 × that = 2^64 + 5: wraps to the registered 5
    ((5,), (2, 3, 6148914691236517207)),
    ((1 << 32, 1 << 32, 5), None),                 # wraps to 0
])
def test_dlpack_shapes_no_buffer_can_hold_are_refused(param_shape, per_sample_shape):
    params = [np.arange(5, dtype=np.float32)]
    opt = autolr.Optimizer("auto-sgd", params)
    before = snapshot(opt, params)
    keep = []
    g = np.ones(5, np.float32)
    rows = np.ones(10, np.float32)
    args = _ffi.AlrDLStepArgs()
    args.struct_size = ctypes.sizeof(args)
    args.n_tensors = 1
    args.params = _dl(params[0], param_shape, keep)
    args.grads = _dl(g, (5,), keep)
    if per_sample_shape is None:
        args.sum_sq = _dl(g, (5,), keep)
        args.batch_size = 4
    else:
        args.per_sample = _dl(rows, per_sample_shape, keep)
    rc = lib.alr_step_dlpack(opt._handle, ctypes.byref(args))
    msg = lib.alr_last_error().decode()
    assert _ffi.AlrStatus_NAMES[rc] == "ALR_INVALID_ARGUMENT", msg
    assert "more elements than any float32 buffer" in msg, msg
    assert snapshot(opt, params) == before


# --- allocation failure is an error, not an abort (issue 17, item 2) ----------------------------

_LIMITED_PREAMBLE = textwrap.dedent(
    """
    import ctypes, resource, numpy as np, autolr
    from autolr import _ffi
    from autolr._lib import lib

    def vm_size():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024

    def limit(headroom):
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vm_size() + headroom, hard))

    def unlimit():
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    """
)


def _run_limited(code):
    """Runs `code` in a fresh interpreter whose address space it limits itself; a library that
    aborts on a failed allocation kills that interpreter (SIGABRT) instead of raising."""
    env_path = [p for p in sys.path if p]
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path[:0] = {env_path!r}\n" + _LIMITED_PREAMBLE + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"process died (rc {proc.returncode}): {proc.stderr.strip()[-400:]}"
    return proc.stdout


def test_save_needs_no_copy_of_the_state():
    """alr_save_size and alr_save of a 128 MiB state with 48 MiB of address space to spare: the
    size is counted and the state written straight into the caller's buffer (the old code built
    the serialised state in a growing vector first and aborted here)."""
    out = _run_limited(
        """
        params = [np.zeros(1 << 20, np.float32) for _ in range(16)]
        opt = autolr.Optimizer("adam", params)
        size, again, written = ctypes.c_size_t(), ctypes.c_size_t(), ctypes.c_size_t()
        assert lib.alr_save_size(opt._handle, ctypes.byref(size)) == 0
        buf, ref = (ctypes.c_uint8 * size.value)(), (ctypes.c_uint8 * size.value)()
        limit(48 << 20)
        rc1 = lib.alr_save_size(opt._handle, ctypes.byref(again))
        rc2 = lib.alr_save(opt._handle, buf, size.value, ctypes.byref(written))
        unlimit()
        print(_ffi.AlrStatus_NAMES[rc1], _ffi.AlrStatus_NAMES[rc2], again.value == size.value, written.value == size.value)
        assert lib.alr_save(opt._handle, ref, size.value, ctypes.byref(written)) == 0
        print(ctypes.string_at(buf, size.value) == ctypes.string_at(ref, size.value))
        """
    )
    assert out.split() == ["ALR_OK", "ALR_OK", "True", "True", "True"], out


def test_create_with_millions_of_tensors_is_an_error_not_an_abort():
    out = _run_limited(
        """
        n = 8 << 20
        lens = np.ones(n, np.uint64)
        args = _ffi.AlrCreateArgs()
        args.struct_size = ctypes.sizeof(args)
        args.algorithm = b"adam"
        args.n_tensors = n
        args.lens = lens.ctypes.data_as(ctypes.POINTER(ctypes.c_size_t))
        handle = ctypes.c_void_p(12345)
        limit(32 << 20)
        rc = lib.alr_create(ctypes.byref(args), ctypes.byref(handle))
        unlimit()
        print(_ffi.AlrStatus_NAMES[rc], handle.value is None, lib.alr_last_error().decode())
        """
    )
    assert out.startswith("ALR_INVALID_ARGUMENT True") and "allocate" in out, out


# --- every status alr_load returns is one its header comment lists (issue 17, item 5) ----------

def _documented_statuses(function):
    import re
    header = open(os.path.join(os.path.dirname(__file__), "..", "..", "include", "autolr.h")).read()
    decl = header.index(f"AlrStatus {function}(")
    doc = header[header.rindex(");\n", 0, decl) + 3:decl]  # from the end of the previous declaration
    return set(re.findall(r"ALR_[A-Z_]+", doc)) - {"ALR_OK"}


def test_alr_load_returns_only_documented_statuses(adam):
    opt, params = adam
    documented = _documented_statuses("alr_load")
    good = opt.state_dict()
    seen = {}
    buf = (ctypes.c_uint8 * len(good)).from_buffer_copy(good)
    seen["null buf"] = lib.alr_load(opt._handle, None, 10)
    seen["bad bytes"] = lib.alr_load(opt._handle, buf, len(good) - 1)
    ghost = autolr.Optimizer("adam", make_params(), groups=GROUPS)
    stale = ghost._handle
    ghost.__del__()  # destroys it; `stale` keeps the old value, as C code would
    seen["destroyed handle"] = lib.alr_load(stale, buf, len(good))
    gi_params = [np.ones(3, np.float32)]
    gi = autolr.Optimizer("gi", gi_params, base="adam")
    state = gi.state_dict()
    inner = {}

    def closure():
        b = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        inner["rc"] = lib.alr_load(gi._handle, b, len(state))
        return 0.5

    gi.step([np.ones(3, np.float32)], loss=1.0, closure=closure)
    seen["from its own callback"] = inner["rc"]
    names = {what: _ffi.AlrStatus_NAMES[rc] for what, rc in seen.items()}
    assert names["destroyed handle"] == "ALR_INVALID_ARGUMENT" and names["from its own callback"] == "ALR_WRONG_STATE", names
    undocumented = {what: name for what, name in names.items() if name not in documented}
    assert not undocumented, f"alr_load returned statuses its header comment does not list: {undocumented} (lists {sorted(documented)})"


def test_alr_load_with_a_length_no_buffer_can_have(adam):
    """A length above isize::MAX is refused before a slice of it is formed (the old code read past
    the buffer looking for the checksum, and crashed)."""
    opt, params = adam
    good = opt.state_dict()
    buf = (ctypes.c_uint8 * len(good)).from_buffer_copy(good)
    before = snapshot(opt, params)
    rc = lib.alr_load(opt._handle, buf, 2**64 - 1)
    assert _ffi.AlrStatus_NAMES[rc] == "ALR_BAD_CHECKPOINT", lib.alr_last_error()
    assert "larger than any buffer" in lib.alr_last_error().decode()
    assert snapshot(opt, params) == before


# --- the tuning-free peers (issue 19, item 9): the guarantees of every other algorithm ----------
# Corrupt and mismatched checkpoints of every algorithm, these included, are test_checkpoint.py's
# test_bad_checkpoints_raise_and_change_nothing (it runs over autolr.ALGORITHMS).

# algorithm -> (values outside each option's range, docs/algorithms.md §6.1 and schedule-free's
# table; an option that shapes the state, refused after the first step, or None)
PEERS = {
    "prodigy": ({"lr": -1.0, "beta1": 1.0, "beta3": 1.5, "d0": 0.0, "d_coef": -1.0, "growth_rate": 0.0, "safeguard_warmup": 0.5}, "d0"),
    "dadapt-adam": ({"lr": float("nan"), "beta2": 1.0, "eps": 0.0, "d0": -1.0, "growth_rate": -2.0, "decouple": 2.0}, "d0"),
    "dog": ({"lr": 0.0, "reps_rel": 0.0, "eps": 0.0, "init_eta": -1.0, "weight_decay": -0.1}, None),
    "ldog": ({"lr": -1.0, "reps_rel": float("nan"), "eps": -1e-8, "init_eta": 0.0, "weight_decay": float("inf")}, None),
    "schedule-free": ({"lr": float("inf"), "beta1": 0.0, "warmup_steps": 1.5, "r": -1.0, "weight_lr_power": -1.0, "beta2": 1.0}, None),
    "sf-adamw": ({"beta1": 1.0, "warmup_steps": -1.0, "eps": 0.0, "weight_decay": -1.0}, None),
    "sf-sgd": ({"momentum": 0.0, "lr": -0.5, "base_weight_decay": -1.0}, None),
}
TWO_VIEWS = {"schedule-free", "sf-adamw", "sf-sgd"}


def trained(name):
    """`name` over SHAPES in GROUPS, 3 steps into training."""
    params = make_params()
    opt = autolr.Optimizer(name, params, groups=GROUPS)
    for t in range(3):
        opt.step(make_grads(params, t))
    return opt, params


@pytest.mark.parametrize("name", PEERS)
def test_peer_option_errors(name):
    out_of_range, structural = PEERS[name]
    params = make_params()
    fresh = autolr.Optimizer(name, params, groups=GROUPS)
    for option, value in out_of_range.items():
        # before the first step, when every option (a structural one too) may still be set
        assert_fails(fresh, params, "ALR_INVALID_ARGUMENT", lambda: fresh.set_option(option, value), f"'{option}'", "out of range")
        with pytest.raises(autolr.Error, match=option) as info:
            autolr.Optimizer(name, make_params(), **{option: value})
        assert info.value.status == "ALR_INVALID_ARGUMENT"
    opt, params = trained(name)
    err = assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("learning_rate", 0.1), "learning_rate", "accepted")
    assert all(f" {option}" in str(err) for option in out_of_range), str(err)
    assert_fails(opt, params, "ALR_INVALID_ARGUMENT", lambda: opt.set_option("weight_decay", 0.1, group=2), "group 2")
    if structural is not None:
        assert_fails(opt, params, "ALR_WRONG_STATE", lambda: opt.set_option(structural, 2e-6), structural, "before the first step")
    # only 'schedule-free' has a base to set (the aliases fix theirs); it is fixed once training started
    base_status = "ALR_WRONG_STATE" if name == "schedule-free" else "ALR_INVALID_ARGUMENT"
    assert_fails(opt, params, base_status, lambda: opt.set_option("base", "sgd"), "base")
    assert_fails(opt, params, "ALR_WRONG_STATE", lambda: opt.report_loss(1.0), name)


def raw_step_args(params, grads, n_tensors=None):
    """AlrStepArgs over numpy arrays (and the ctypes arrays that must outlive the call)."""
    args = _ffi.AlrStepArgs()
    args.struct_size = ctypes.sizeof(args)
    args.n_tensors = len(params) if n_tensors is None else n_tensors
    fp = ctypes.POINTER(ctypes.c_float)
    p = (fp * len(params))(*[a.ctypes.data_as(fp) for a in params])
    g = (fp * len(grads))(*[a.ctypes.data_as(fp) if a is not None else None for a in grads])
    args.params = ctypes.cast(p, ctypes.POINTER(fp))
    args.grads = ctypes.cast(g, ctypes.POINTER(fp))
    return args, (p, g)


@pytest.mark.parametrize("name", PEERS)
def test_peer_step_errors(name):
    opt, params = trained(name)
    grads = make_grads(params, 3)
    assert_fails(opt, params, "ALR_SHAPE_MISMATCH", lambda: opt.step(grads[:2]), "2", "3")
    assert_fails(opt, params, "ALR_SHAPE_MISMATCH", lambda: opt.step(grads + grads[:1]))
    wrong = list(grads)
    wrong[1] = np.zeros((2, 3), np.float32)
    assert_fails(opt, params, "ALR_SHAPE_MISMATCH", lambda: opt.step(wrong), "grads[1]")
    for value in (np.nan, np.inf, -np.inf):
        bad = [g.copy() for g in grads]
        bad[2][1, 2] = value  # the last tensor: the first ones would be moved already without up-front checks
        assert_fails(opt, params, "ALR_NON_FINITE", lambda: opt.step(bad), "tensor 2", "[5]")
    # what the Python API never sends, through the raw call: null pointers, a wrong tensor count
    for what, args_keep, status in [
        ("grads[1]", raw_step_args(params, [grads[0], None, grads[2]]), "ALR_NULL_POINTER"),
        ("n_tensors", raw_step_args(params, grads, n_tensors=2), "ALR_SHAPE_MISMATCH"),
    ]:
        args = args_keep[0]
        assert_fails(opt, params, status, lambda: raw_check(lib.alr_step(opt._handle, ctypes.byref(args))), what)
    assert_fails(opt, params, "ALR_NULL_POINTER", lambda: raw_check(lib.alr_step(opt._handle, None)), "args")
    assert_fails(opt, params, "ALR_NULL_POINTER", lambda: raw_check(lib.alr_set_mode(opt._handle, None)), "args")
    # and the trajectory that follows is that of an optimizer that saw none of it
    twin, twin_params = trained(name)
    opt.step(grads)
    twin.step(make_grads(twin_params, 3))
    assert [p.tobytes() for p in params] == [p.tobytes() for p in twin_params]
    assert opt.state_dict() == twin.state_dict()


@pytest.mark.parametrize("name", PEERS)
def test_peer_modes_in_the_wrong_order(name):
    """Schedule-free: eval() twice, a step in eval mode and train() twice are ALR_WRONG_STATE with
    nothing changed; for prodigy, dadapt-adam, dog and ldog eval()/train() are no-ops."""
    opt, params = trained(name)
    at_y = [p.tobytes() for p in params]
    opt.eval()
    assert ([p.tobytes() for p in params] != at_y) == (name in TWO_VIEWS)
    grads = make_grads(params, 3)
    if name in TWO_VIEWS:
        assert_fails(opt, params, "ALR_WRONG_STATE", opt.eval, "already in eval mode")
        assert_fails(opt, params, "ALR_WRONG_STATE", lambda: opt.step(grads), "eval mode", "ALR_MODE_TRAIN")
        opt.train()
        assert_fails(opt, params, "ALR_WRONG_STATE", opt.train, "already in train mode")
    else:
        opt.eval()
        opt.step(grads)  # eval mode means nothing to these: the step is taken
        opt.train()
        opt.train()
        twin, twin_params = trained(name)
        twin.step(make_grads(twin_params, 3))
        assert [p.tobytes() for p in params] == [p.tobytes() for p in twin_params]
