"""Sharded training through the caller's communicator (docs/algorithms.md §7, README "More than
one process"): K processes, here threads of one process whose all-reduce meets at a barrier,
each step the slices of every tensor they hold; every reduction of a step is summed over them
through the `reduce` callback. Checked for world sizes 1, 2 and 3 with uneven slices:

- 50 steps of the sharded run equal the unsharded run of the whole tensors to float32
  reduction-order tolerance (the group sums are added in another order: per process, then over
  processes): ≤ 2e-5 of each tensor's largest entry, and the learning rates to 1e-6 relative;
- the reduce callback is called the same number of times on every process, and never for an
  algorithm without reductions;
- bad input on one process, or a callback that fails on one process, is an error on every
  process (no process waits for another) with every process's parameters and state untouched.
"""
import threading

import numpy as np
import pytest

import autolr

LENS = [37, 300, 11]
GROUPS = [0, 1, 0]
N = 8
STEPS = 50

# Every algorithm with reductions, and some without (their callback must never be called).
REDUCING = {
    "auto-sgd": {},
    "auto-adam": {},
    "auto-adagrad": {},
    "tlr": dict(lr=0.05, momentum=0.5),
    "tlr-window": dict(lr=0.05, window=3),
    "vsgd-g": dict(n0=3, slow_start_c=20.0),
    "vsgd-b": dict(n0=3, slow_start_c=20.0),
    "gi-adam": dict(base="adam"),
    "gi-auto-adam": dict(base="auto-adam"),
    "prodigy": dict(weight_decay=0.01),
    "dadapt-adam": {},
    "dog": {},
    "ldog": {},
    "sf-over-auto-adam": dict(base="auto-adam"),
    "sf-over-gi-adam": dict(base="gi", base_base="adam", base_lr=0.01),
    "sf-over-gi-auto-adam": dict(base="gi", base_base="auto-adam"),
}
# Calls to the communicator in 50 steps (README "More than one process"): AutoOpt one per step;
# TLR one per step that trains α (from step 2; with window 3 at steps 7, 10, …, 49); vsgd-g/-b
# two (the sums, and h⁺'s maximum); GI one for φ after its base's; prodigy, dadapt-adam, dog and
# ldog one (pass 1's sums); schedule-free its base's, over gi GI's and then φ_y's on every adapting
# step (docs/algorithms.md §3.3).
CALLS = {"auto-sgd": 50, "auto-adam": 50, "auto-adagrad": 50, "tlr": 49, "tlr-window": 15, "vsgd-g": 100, "vsgd-b": 100,
         "gi-adam": 50, "gi-auto-adam": 100, "prodigy": 50, "dadapt-adam": 50, "dog": 50, "ldog": 50, "sf-over-auto-adam": 50,
         "sf-over-gi-adam": 100, "sf-over-gi-auto-adam": 150}
WITHOUT = {"adam": dict(lr=0.01), "vsgd-l": dict(n0=2, slow_start_c=20.0), "sf-adamw": {}}


def algorithm(case):
    return {"tlr-window": "tlr", "gi-adam": "gi", "gi-auto-adam": "gi", "sf-over-auto-adam": "schedule-free",
            "sf-over-gi-adam": "schedule-free", "sf-over-gi-auto-adam": "schedule-free"}.get(case, case)


class World:
    """`size` ranks in threads; `reduce(rank)` is rank's callback: every rank's values are added
    (or maxed) in rank order, so all ranks get the same bits."""

    def __init__(self, size, fail_rank=None):
        self.size, self.fail_rank = size, fail_rank
        # The optimizers' communicator, and the test's own (the model's loss), which a failing
        # optimizer communicator leaves alone.
        self.barriers = {True: threading.Barrier(size, timeout=30), False: threading.Barrier(size, timeout=30)}
        self.slots = {True: [None] * size, False: [None] * size}
        self.calls = [0] * size

    def reduce(self, rank, counted=True):
        barrier, slots = self.barriers[counted], self.slots[counted]

        def all_reduce(values, op):
            self.calls[rank] += counted
            if rank == self.fail_rank and counted:
                barrier.abort()  # the others' wait fails at once instead of timing out
                raise RuntimeError("the communicator failed on this rank")
            slots[rank] = values.copy()
            barrier.wait()
            combined = slots[0].copy()
            for other in slots[1:]:
                combined = combined + other if op == "sum" else np.maximum(combined, other)
            barrier.wait()  # every rank has read every slot
            values[...] = combined
        return all_reduce

    def run(self, per_rank):
        """per_rank(rank) on every rank at once; returns the results (exceptions included)."""
        results = [None] * self.size

        def body(rank):
            try:
                results[rank] = per_rank(rank)
            except BaseException as e:  # noqa: BLE001 — reported to the test
                results[rank] = e

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "a rank hangs"
        return results


def slices(world):
    """Uneven contiguous slices of every tensor per rank: (start, stop)."""
    out = []
    for n in LENS:
        cuts = np.linspace(0, n, world + 1).astype(int)
        cuts[1:-1] += np.arange(1, world) % 2  # uneven
        out.append([(int(cuts[r]), int(cuts[r + 1])) for r in range(world)])
    return out


class Problem:
    """A noisy quadratic f(θ) = Σ ½ a (θ − c)² with per-sample gradients a(θ − c) + noise."""

    def __init__(self, seed):
        rng = np.random.default_rng(seed)
        self.a = [rng.uniform(0.5, 2.0, n).astype(np.float32) for n in LENS]
        self.c = [rng.standard_normal(n).astype(np.float32) for n in LENS]
        self.theta0 = [rng.standard_normal(n).astype(np.float32) for n in LENS]
        self.noise = [[rng.standard_normal((N, n)).astype(np.float32) * 0.3 for n in LENS] for _ in range(STEPS)]

    def inputs(self, step, theta, cut=None):
        """Gradient, Σg² and curvature of step `step` on the slices `cut` (None: everything);
        elementwise in float32, so a slice's are the bits of the whole run's."""
        cut = cut or [(0, n) for n in LENS]
        rows = [self.a[t][a:b] * (theta[t] - self.c[t][a:b]) + self.noise[step][t][:, a:b] for t, (a, b) in enumerate(cut)]
        grads = [r.mean(axis=0).astype(np.float32) for r in rows]
        sum_sq = [(r * r).sum(axis=0).astype(np.float32) for r in rows]
        curvature = [self.a[t][a:b].copy() for t, (a, b) in enumerate(cut)]
        return grads, sum_sq, curvature

    def partial_loss(self, theta, cut=None):
        cut = cut or [(0, n) for n in LENS]
        return sum(float(np.sum(0.5 * self.a[t][a:b].astype(np.float64) * (theta[t].astype(np.float64) - self.c[t][a:b]) ** 2))
                   for t, (a, b) in enumerate(cut))


def step_kwargs(case, problem, step, theta, grads, sum_sq, curvature, loss_of):
    name = algorithm(case)
    if name.startswith("auto") or case in ("gi-auto-adam", "sf-over-auto-adam", "sf-over-gi-auto-adam"):
        kwargs = dict(sum_sq=sum_sq, batch_size=N)
    elif name.startswith("vsgd"):
        kwargs = dict(curvature=curvature)
    else:
        kwargs = {}
    if name == "gi" or case.startswith("sf-over-gi"):
        kwargs.update(loss=loss_of(theta), closure=lambda: loss_of(theta))
    return kwargs


def whole_run(case, options, problem):
    theta = [p.copy() for p in problem.theta0]
    opt = autolr.Optimizer(algorithm(case), theta, groups=GROUPS, **options)
    lrs = []
    for step in range(STEPS):
        grads, sum_sq, curvature = problem.inputs(step, theta)
        opt.step(grads, **step_kwargs(case, problem, step, theta, grads, sum_sq, curvature, problem.partial_loss))
        lrs.append(opt.lr)
    return theta, lrs


def sharded_run(case, options, problem, world_size, poison=None, fail_rank=None):
    """Every rank's final slices, learning rates and callback count (or the exception it raised)."""
    world, cut_of = World(world_size, fail_rank), slices(world_size)

    def rank_run(rank):
        cut = [cut_of[t][rank] for t in range(len(LENS))]
        theta = [p[a:b].copy() for p, (a, b) in zip(problem.theta0, cut)]
        reduce = world.reduce(rank)
        opt = autolr.Optimizer(algorithm(case), theta, groups=GROUPS, reduce=reduce, **options)

        def loss_of(th):
            # The loss of the whole model: every rank's part, summed over the ranks (the test's
            # own reduction, not counted as the optimizer's).
            total = np.array([problem.partial_loss(th, cut)])
            world.reduce(rank, counted=False)(total, "sum")
            return float(total[0])

        lrs = []
        for step in range(STEPS):
            grads, sum_sq, curvature = problem.inputs(step, theta, cut)
            if poison is not None and step == poison[1] and rank == poison[0]:
                grads[1][0] = np.nan
            before, state = [p.copy() for p in theta], opt.state_dict()
            try:
                opt.step(grads, **step_kwargs(case, problem, step, theta, grads, sum_sq, curvature, loss_of))
            except autolr.Error as e:
                untouched = all(np.array_equal(a, b) for a, b in zip(before, theta)) and opt.state_dict() == state
                return e, untouched, world.calls[rank]
            lrs.append(opt.lr)
        return theta, lrs, world.calls[rank]

    return world.run(rank_run)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("case", list(REDUCING) + list(WITHOUT))
def test_sharded_run_equals_the_whole_run(case, world_size):
    options = {**REDUCING, **WITHOUT}[case]
    problem = Problem(seed=world_size * 100 + len(case))
    whole, whole_lrs = whole_run(case, options, problem)
    results = sharded_run(case, options, problem, world_size)
    for rank, result in enumerate(results):
        assert not isinstance(result, BaseException), f"rank {rank}: {result!r}"
        assert not isinstance(result[0], BaseException), f"rank {rank}: {result[0]}"
    calls = [r[2] for r in results]
    assert len(set(calls)) == 1, f"ranks called the communicator different numbers of times: {calls}"
    assert calls[0] == CALLS.get(case, 0), f"{case}: {calls[0]} calls to the communicator in {STEPS} steps"
    for t, n in enumerate(LENS):
        joined = np.concatenate([results[r][0][t] for r in range(world_size)])
        assert joined.shape == (n,)
        scale = float(np.max(np.abs(whole[t])))
        err = float(np.max(np.abs(joined - whole[t]))) / scale
        assert err <= 2e-5, f"{case}, world {world_size}, tensor {t}: sharded differs from whole by {err:.1e}"
        assert not np.array_equal(whole[t], problem.theta0[t]), "the run moved nothing"
    if algorithm(case) != "vsgd-l":  # vsgd-l's lr is the median over the process's own elements
        for rank in range(world_size):
            for step, (a, b) in enumerate(zip(results[rank][1], whole_lrs)):
                assert np.allclose(a, b, rtol=1e-6, atol=0), f"{case} rank {rank} step {step}: lr {a} vs {b}"


@pytest.mark.parametrize("case, step", [(c, 5) for c in ("auto-adam", "tlr", "vsgd-b", "gi-auto-adam", "gi-adam", "prodigy", "dadapt-adam", "dog", "ldog",
                                                       "sf-over-auto-adam", "sf-over-gi-adam", "sf-over-gi-auto-adam")]
                         + [("prodigy", 0), ("dadapt-adam", 0)])
def test_bad_input_on_one_process_is_an_error_on_every_process(case, step):
    """A NaN gradient on rank 1 at `step` (0: before prodigy's and dadapt-adam's state exists):
    every rank refuses that step with its parameters and state untouched, and none waits for
    another."""
    results = sharded_run(case, {**REDUCING}[case], Problem(seed=7), 3, poison=(1, step))
    for rank, (error, untouched, _) in enumerate(results):
        assert isinstance(error, autolr.Error), f"rank {rank} went on: {error!r}"
        assert untouched, f"rank {rank}: the refused step changed the parameters or the state"
        if rank != 1:
            assert "process" in str(error), str(error)
        else:
            assert error.status == "ALR_NON_FINITE" and "grad" in str(error), f"rank 1 is told of its own bad gradient: {error.status} {error}"


@pytest.mark.parametrize("case", ["auto-sgd", "tlr", "vsgd-g", "prodigy", "dog", "ldog", "gi-adam", "gi-auto-adam", "sf-over-auto-adam", "sf-over-gi-adam",
                                  "sf-over-gi-auto-adam"])
def test_a_failing_callback_is_an_error_on_every_process(case):
    """The communicator fails on rank 2 (at its first call, step 1 or 2): every rank's step
    returns an error with nothing changed there, and no rank hangs."""
    results = sharded_run(case, REDUCING[case], Problem(seed=11), 3, fail_rank=2)
    for rank, (error, untouched, _) in enumerate(results):
        assert isinstance(error, autolr.Error), f"rank {rank} went on: {error!r}"
        assert error.status == "ALR_CALLBACK_FAILED", f"rank {rank}: {error.status} {error}"
        assert untouched, f"rank {rank}: the failed step changed the parameters or the state"


@pytest.mark.parametrize("name", ["vsgd-l", "vsgd-g", "vsgd-b"])
def test_vsgd_over_shards_needs_its_slow_start_constant(name):
    """C = d/10 counts every parameter of the model, which no shard sees: it must be given."""
    theta = [np.ones(4, np.float32)]
    opt = autolr.Optimizer(name, theta, reduce=lambda values, op: None)
    with pytest.raises(autolr.Error, match="slow_start_c") as info:
        opt.step([np.ones(4, np.float32)], curvature=[np.ones(4, np.float32)])
    assert info.value.status == "ALR_INVALID_ARGUMENT"
    assert np.array_equal(theta[0], np.ones(4, np.float32))


def communicator_failing_at(call):
    """A reduce callback over one process (the sum is the value) that raises at its `call`-th
    call (never with None)."""
    calls = [0]

    def reduce(values, op):
        calls[0] += 1
        if calls[0] == call:
            raise RuntimeError("the communicator failed")
    return reduce


@pytest.mark.parametrize("base", ["adam", "auto-adam"])
def test_gi_failing_phi_reduction_changes_nothing(base):
    """GI reduces φ after its base's proposal advanced the base's state (src/adapt/gi.rs); a
    snapshot restores that state when the reduction fails, so a retried step equals a clean run
    bit for bit (without the snapshot the retry counts the gradient twice: measured 0.025 apart
    over adam)."""
    phi_call = 2 if base == "adam" else 4  # step 2's φ: after the base's own call over auto-adam
    def run(fail_at):
        theta = [np.linspace(-1, 1, 5, dtype=np.float32)]
        reduce = communicator_failing_at(fail_at)
        opt = autolr.Optimizer("gi", theta, reduce=reduce, base=base, lr=0.1)
        rng = np.random.default_rng(3)
        errors = []
        for _ in range(3):
            g = [rng.standard_normal(5).astype(np.float32)]
            kwargs = dict(sum_sq=[g[0] * g[0] * 4 + 0.5], batch_size=4) if base == "auto-adam" else {}
            for _attempt in range(2):
                before = theta[0].copy()
                try:
                    opt.step(g, loss=1.0, closure=lambda: 0.9, **kwargs)
                    break
                except autolr.Error as e:
                    errors.append((e, np.array_equal(before, theta[0])))
        return theta[0], errors

    clean, none = run(None)
    retried, errors = run(phi_call)
    assert not none and len(errors) == 1
    error, untouched = errors[0]
    assert error.status == "ALR_CALLBACK_FAILED" and untouched
    assert "nothing changed" in str(error), str(error)
    assert np.array_equal(clean, retried), f"the retried step differs from a clean run by {np.max(np.abs(clean - retried)):.1e}"


def test_schedule_free_over_gi_failing_reductions():
    """Schedule-free over gi (docs/algorithms.md §3.3) reduces φ before the move and φ_y after it.
    A failed φ changes nothing (z and the averages go back, GI's base's state is restored), so a
    retried step equals a clean run bit for bit; a failed φ_y leaves the move standing and η not
    adapted, as a failed loss callback does, and says so."""
    def run(fail_at):
        theta = [np.linspace(-1, 1, 5, dtype=np.float32)]
        reduce = communicator_failing_at(fail_at)
        opt = autolr.Optimizer("schedule-free", theta, reduce=reduce, base="gi", base_base="adam", base_lr=0.1)
        rng = np.random.default_rng(3)
        errors = []
        for _ in range(3):
            g = [rng.standard_normal(5).astype(np.float32)]
            for _attempt in range(2):
                before, state = theta[0].copy(), opt.state_dict()
                try:
                    opt.step(g, loss=1.0, closure=lambda: 0.0)  # ρ ≫ hi: every adapted step grows η
                    break
                except autolr.Error as e:
                    errors.append((e, np.array_equal(before, theta[0]) and opt.state_dict() == state))
                    if "φ_y" in str(e):
                        break  # the move stands: not retried
        return theta[0], opt.telemetry()["eta"][0], errors

    clean, clean_eta, none = run(None)
    assert not none
    retried, retried_eta, errors = run(3)  # step 2's φ
    assert len(errors) == 1 and errors[0][0].status == "ALR_CALLBACK_FAILED" and errors[0][1], errors
    assert np.array_equal(clean, retried) and clean_eta == retried_eta, "the retried step differs from a clean run"
    moved, moved_eta, errors = run(4)  # step 2's φ_y
    assert len(errors) == 1 and errors[0][0].status == "ALR_CALLBACK_FAILED" and not errors[0][1], errors
    assert "the parameters were moved, η was not adapted" in str(errors[0][0])
    assert moved_eta == pytest.approx(clean_eta / 1.2, rel=1e-12) and not np.array_equal(clean, moved), "the step whose φ_y failed adapted η"


@pytest.mark.parametrize("case", ["prodigy", "auto-adam", "vsgd-g"])
def test_a_reduce_that_takes_the_values_alone_sums(case):
    """DESIGN.md's form `reduce(values)` (sums in place): the run is the two-argument run's bits
    for an algorithm that only sums; vsgd-g, which also takes a maximum, refuses the step with an
    error that says which form to give, nothing changed."""
    options, problem = REDUCING[case], Problem(seed=5)
    runs = {}
    for form in ("values, op", "values"):
        world = World(2)

        def rank_run(rank):
            reduce = world.reduce(rank)
            sums_only = (lambda values: reduce(values, "sum")) if form == "values" else reduce
            cut = [slices(2)[t][rank] for t in range(len(LENS))]
            theta = [p[a:b].copy() for p, (a, b) in zip(problem.theta0, cut)]
            opt = autolr.Optimizer(algorithm(case), theta, groups=GROUPS, reduce=sums_only, **options)
            for step in range(5):
                grads, sum_sq, curvature = problem.inputs(step, theta, cut)
                before = [p.copy() for p in theta]
                try:
                    opt.step(grads, **step_kwargs(case, problem, step, theta, grads, sum_sq, curvature, None))
                except autolr.Error as e:
                    return e, all(np.array_equal(a, b) for a, b in zip(before, theta))
            return theta
        runs[form] = world.run(rank_run)
    if case == "vsgd-g":
        for error, untouched in runs["values"]:
            assert isinstance(error, autolr.Error) and error.status == "ALR_CALLBACK_FAILED", repr(error)
            assert "reduce(values, op)" in str(error) and untouched, str(error)
        return
    for two, one in zip(runs["values, op"], runs["values"]):
        assert isinstance(one, list), f"the one-argument run failed: {one!r}"
        assert all(np.array_equal(a, b) for a, b in zip(two, one))
