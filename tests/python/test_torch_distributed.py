"""autolr.torch over more than one process (README "More than one process", docs/algorithms.md
§7): real torch.distributed processes (gloo on 127.0.0.1), world sizes 1, 2 and 3, started by
this file (it is also the worker, `python test_torch_distributed.py RANK WORLD PORT OUT`).

The model is a 5-7-3 tanh MLP (parameters of 35, 7, 21 and 3 elements: uneven slices over 2 and
3 ranks) in two param groups, on a regression batch of 12 rows per step, 50 steps.

- Sharded (`ZeroShards` + `reduce=all_reduce()`): every rank takes the whole batch, so the
  library gets bit-identical inputs and only its reductions differ from the unsharded run, in
  the order of their additions (per rank, then over ranks); the gathered parameters equal the
  unsharded single-process run to ≤ 2e-5 of each tensor's largest entry and the learning rates
  to 1e-5 relative (float32 reduction-order tolerance, fed back through 50 steps of the model),
  for every algorithm with reductions; the callback is called as often as the README's table
  says (the same on every rank), and never for an algorithm without reductions.
- Data parallel: rank r of K takes rows [12r/K, 12(r+1)/K) of the batch; the adapter sums
  SumGradSquared's Σg² and N over the ranks and averages GI's losses without a change to the
  loop, and 50 steps equal one process on the whole batch to ≤ 1e-4 of each tensor's largest
  entry and the rates to 1e-4 relative (the ranks' gradients and Σg² are added in another
  order than the whole batch's, in float32): DDP with AutoAdam and with GI over auto-adam,
  ZeRO-1 (`ZeroShards`) over DDP with AutoAdam, and FSDP2 (`fully_shard`, parameters sharded
  along dim 0 by torch: 7 rows over 3 ranks are 3, 3, 1) with TLR, GI over adam, and, with
  SumGradSquared's Σg² reduce-scattered by the adapter, AutoAdam, AutoSGD and GI over
  auto-adam.
- FSDP2's Σg² itself: each rank's shard equals torch's own sharding (distribute_tensor) of the
  brute-force sums (one backward pass per sample) to 1e-5 of each tensor's largest entry, for
  this rank's rows and for the whole batch, with fully_shard on the root only and per layer
  (a module without a closed form among them).
- A reduce callback that fails on one rank is an error on every rank with every rank's
  parameters untouched, whether the failing rank still took part in the collective (the others
  refuse the NaN it passed) or skipped it (the others' `all_reduce(timeout=...)` gives up).

Each launch of processes has its own timeout: a rank that hangs fails the test.
"""
import os
import pickle
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from conftest import import_torch

torch = import_torch()

import autolr  # noqa: E402
import autolr.torch as alt  # noqa: E402

F = torch.nn.functional
STEPS = 50
BATCH = 12
# Every algorithm with reductions (as in test_sharded.py), and some without.
SHARDED = {
    "auto-sgd": ("auto-sgd", {}),
    "auto-adam": ("auto-adam", {}),
    "auto-adagrad": ("auto-adagrad", {}),
    "tlr": ("tlr", dict(lr=0.05, momentum=0.5)),
    "vsgd-g": ("vsgd-g", dict(n0=3, slow_start_c=20.0)),
    "vsgd-b": ("vsgd-b", dict(n0=3, slow_start_c=20.0)),
    "gi-adam": ("gi", dict(base="adam", lr=0.01)),
    "gi-auto-adam": ("gi", dict(base="auto-adam")),
    "prodigy": ("prodigy", dict(weight_decay=0.01)),
    "dadapt-adam": ("dadapt-adam", {}),
    "dog": ("dog", {}),
    "adam": ("adam", dict(lr=0.01)),
    "vsgd-l": ("vsgd-l", dict(n0=2, slow_start_c=20.0)),
    "sf-adamw": ("sf-adamw", {}),
}
# Calls to the callback in 50 steps (README "More than one process"): AutoOpt one per step; TLR
# one per step that trains α (from step 2); vsgd-g/-b two; GI one for φ after its base's; the
# peers one (pass 1's sums).
CALLS = {"auto-sgd": 50, "auto-adam": 50, "auto-adagrad": 50, "tlr": 49, "vsgd-g": 100, "vsgd-b": 100, "gi-adam": 50,
         "gi-auto-adam": 100, "prodigy": 50, "dadapt-adam": 50, "dog": 50, "adam": 0, "vsgd-l": 0, "sf-adamw": 0}
# FSDP2's cases: the optimizer and its options, and whether it takes Σg² (from SumGradSquared).
FSDP2 = {
    "fsdp2-tlr": ("tlr", dict(lr=0.05, momentum=0.5), False),
    "fsdp2-gi-adam": ("gi", dict(base="adam", lr=0.01), False),
    "fsdp2-auto-adam": ("auto-adam", {}, True),
    "fsdp2-auto-sgd": ("auto-sgd", {}, True),
    "fsdp2-gi-auto-adam": ("gi", dict(base="auto-adam"), True),
}
DDP = ("ddp-auto-adam", "ddp-gi-auto-adam", "zero1-auto-adam") + tuple(FSDP2)
WORLDS = (1, 2, 3)
LAUNCH_TIMEOUT = 90  # seconds for one launch of every rank (normally a few)


# the model and one run ---------------------------------------------------------------------------

def model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(STEPS, BATCH, 5, generator=g), torch.randn(STEPS, BATCH, 3, generator=g)


def counted(reduce, calls):
    def call(values, op):
        calls[0] += 1
        reduce(values, op)
    return call


def sharded_run(case, sharded, fail=None):
    """The run of `case` on the whole batch: over this rank's slices when `sharded`, else the
    whole parameters in one process. `fail`: (step, "nan" | "skip"): the last rank's callback
    fails at that step, after joining the collective with NaN, or without joining it."""
    name, options = SHARDED[case]
    model, xs, ys = model_and_data()
    params = list(model.parameters())
    sgs = alt.SumGradSquared(model)
    calls, reduce, shards = [0], None, None
    tensors = params
    if sharded:
        shards = alt.ZeroShards(params)
        tensors = shards.params
        reduce = counted(alt.all_reduce(timeout=timedelta(seconds=3) if fail else None), calls)
    if fail:
        reduce = failing(reduce, fail, shards)
    opt = alt.AutoLR([{"params": tensors[:2]}, {"params": tensors[2:]}], name, reduce=reduce, data_parallel=False, **options)
    cut = shards.slice if sharded else (lambda ts: list(ts))
    lrs = []
    for step in range(STEPS):
        state = {"step": step}
        reduce_step[0] = step
        model.zero_grad()
        sgs.zero_()
        with torch.enable_grad():
            loss = F.mse_loss(model(xs[step]), ys[step])
            loss.backward()
        if sharded:
            shards.shard_grads()
        s = sgs.sum_sq_tensors(params)
        kwargs = {}
        if name.startswith("auto") or options.get("base") == "auto-adam":
            kwargs.update(sum_sq=cut(s), batch_size=sgs.batch_size, per_sample_scale=sgs.per_sample_scale)
        if name.startswith("vsgd"):
            kwargs["curvature"] = cut(s)  # the empirical Fisher's diagonal: a non-negative curvature
        if name == "gi":
            kwargs["loss"] = loss
        before = [t.detach().clone() for t in tensors]
        try:
            opt.step(**kwargs)
        except autolr.Error as e:
            untouched = all(torch.equal(a, b) for a, b in zip(before, tensors))
            return {"error": str(e), "status": e.status, "step": state["step"], "untouched": untouched, "calls": calls[0]}
        if shards is not None:
            shards.gather()
        if name == "gi":
            with torch.no_grad():
                opt.report_loss(F.mse_loss(model(xs[step]), ys[step]))
        lrs.append(opt.lr)
    return {"params": [p.detach().numpy().copy() for p in params], "lrs": np.array(lrs), "calls": calls[0]}


reduce_step = [0]  # the step the running case is at (read by `failing`)


def failing(reduce, fail, shards):
    """`reduce` on every rank but the last; there, from step `fail[0]` on, a callback that
    raises, having joined the collective with NaN ("nan") or not at all ("skip")."""
    import torch.distributed as dist
    step, how = fail

    def call(values, op):
        if dist.get_rank() != dist.get_world_size() - 1 or reduce_step[0] < step:
            return reduce(values, op)
        if how == "nan":
            values[...] = np.nan
            reduce(values, op)
        raise RuntimeError(f"the communicator failed on this rank ({how})")
    return call


def ddp_run(case, world, rank):
    """`case` on rank `rank`'s rows of every batch under DDP (world None: one process, the whole
    batch, no torch.distributed)."""
    model, xs, ys = model_and_data()
    net = model
    fsdp = case.startswith("fsdp2") and world is not None
    if fsdp:
        from torch.distributed.fsdp import fully_shard
        fully_shard(model)  # parameters become DTensors, sharded along dim 0
    elif world is not None:
        net = torch.nn.parallel.DistributedDataParallel(model)
    if world is not None:
        rows = slice(BATCH * rank // world, BATCH * (rank + 1) // world)
    else:
        rows = slice(0, BATCH)
    params = list(model.parameters())
    # Under FSDP2 the helper is created after fully_shard: it holds the DTensors.
    sgs = alt.SumGradSquared(model) if case not in FSDP2 or FSDP2[case][2] else None
    shards = None
    # FSDP2: this rank's shards are the DTensors' local tensors (views of FSDP's storage, which
    # it keeps from step to step); the optimizer steps them in place.
    tensors = [p.to_local().detach() for p in params] if fsdp else params
    if case in FSDP2:
        name, options, sum_sq = FSDP2[case]
        opt = alt.AutoLR(tensors, name, reduce=alt.all_reduce() if fsdp else None, **options)
    elif case == "zero1-auto-adam" and world is not None:
        shards = alt.ZeroShards(params)
        opt = alt.AutoAdam(shards.params, reduce=alt.all_reduce())
    elif case == "ddp-gi-auto-adam":
        opt = alt.GI(params, base="auto-adam")
    else:
        opt = alt.AutoAdam(params)
    lrs = []
    for step in range(STEPS):
        x, y = xs[step][rows], ys[step][rows]
        if case in FSDP2:
            for p in params:
                p.grad = None
            loss = F.mse_loss(net(x), y)
            loss.backward()
            for t, p in zip(tensors, params):
                t.grad = p.grad.to_local().detach() if fsdp else p.grad
            # Σg² of the whole batch, this rank's shard of it: reduce-scattered by the adapter
            opt.step(loss=loss if name == "gi" else None, sum_sq=sgs if sum_sq else None)
            if name == "gi":
                with torch.no_grad():
                    opt.report_loss(F.mse_loss(net(x), y))  # averaged over the ranks by the adapter
            lrs.append(opt.lr)
            continue

        def closure(backward=True):
            opt.zero_grad()
            loss = F.mse_loss(net(x), y)
            if backward:
                loss.backward()
            return loss
        if case == "ddp-gi-auto-adam":
            opt.step(closure, sum_sq=sgs)
        elif shards is not None:
            model.zero_grad()
            sgs.zero_()
            F.mse_loss(net(x), y).backward()
            shards.shard_grads()
            s, n = alt.sum_sq_over_ranks(sgs, params)
            opt.step(sum_sq=shards.slice(s), batch_size=n)
            shards.gather()
        else:
            closure()
            opt.step(sum_sq=sgs)
        lrs.append(opt.lr)
    if fsdp:
        params = [p.full_tensor() for p in params]  # every rank's shards
    return {"params": [p.detach().numpy().copy() for p in params], "lrs": np.array(lrs)}


class Scale(torch.nn.Module):
    """x ⊙ w: a module SumGradSquared has no closed form for (its torch.func fallback)."""

    def __init__(self, n):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return x * self.weight


def layered_model(layout):
    """The initial model of `layout`: "root" the MLP, "per layer" the MLP and a Scale(3) after
    it (each layer gets its own fully_shard under FSDP2, as in torch's FSDP2 recipe)."""
    model = model_and_data()[0]
    if layout == "per layer":
        model.append(Scale(3))
    return model


def brute_force_sum_sq(layout, rows):
    """Σ_i g_i² (the "sample" convention) of the initial model's loss on each row of step 0's
    batch in `rows`, from one backward pass per row: the per-sample gradients themselves."""
    model, (_, xs, ys) = layered_model(layout), model_and_data()
    sums = [torch.zeros_like(p) for p in model.parameters()]
    for i in range(rows.start, rows.stop):
        model.zero_grad()
        F.mse_loss(model(xs[0][i:i + 1]), ys[0][i:i + 1]).backward()
        for s, p in zip(sums, model.parameters()):
            s += p.grad * p.grad
    return sums


def fsdp2_sum_sq(world, rank, layout):
    """Step 0's Σg² under FSDP2 (rank `rank` of `world` on its rows), with torch's own sharding
    of the brute-force sums (distribute_tensor, Shard(0)) as what this rank should hold: this
    rank's view (its rows, the "mean" convention of its N) read through the local tensors and
    through the DTensors, and the whole batch's (sum_sq_over_ranks, "sample")."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor
    model, (_, xs, ys) = layered_model(layout), model_and_data()
    if layout == "per layer":
        for layer in model:
            if any(True for _ in layer.parameters()):
                fully_shard(layer)
    fully_shard(model)
    params = list(model.parameters())
    local = [p.to_local().detach() for p in params]
    sgs = alt.SumGradSquared(model)
    rows = slice(BATCH * rank // world, BATCH * (rank + 1) // world)
    F.mse_loss(model(xs[0][rows]), ys[0][rows]).backward()
    n = rows.stop - rows.start
    # this rank's own sums, not rank 0's: src_data_rank=None splits them where they are
    shard = lambda sums: [distribute_tensor(s, p.device_mesh, [Shard(0)], src_data_rank=None).to_local()  # noqa: E731
                          for s, p in zip(sums, params)]
    view = shard([s / n**2 for s in brute_force_sum_sq(layout, rows)])
    out = {"view": (sgs.sum_sq_tensors(local), view), "view of the DTensors": (sgs.sum_sq_tensors(params), view)}
    whole, total = alt.sum_sq_over_ranks(sgs, local)
    out["whole batch"] = (whole, shard(brute_force_sum_sq(layout, slice(0, BATCH))))
    out = {k: ([a.numpy().copy() for a in got], [b.numpy().copy() for b in want]) for k, (got, want) in out.items()}
    out["n"] = total
    out["rows"] = [t.shape[0] for t in local]
    return out


# the worker ---------------------------------------------------------------------------------------

def worker(rank, world, port, out):
    import torch.distributed as dist
    torch.set_num_threads(1)  # the same matmul blocking in every process
    results = {}
    if world == 1:  # the references: one process, no torch.distributed
        results["reference"] = {case: sharded_run(case, sharded=False) for case in SHARDED}
        results["ddp-reference"] = {case: ddp_run(case, None, 0) for case in DDP}
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=60))
    results["sharded"] = {case: sharded_run(case, sharded=True) for case in SHARDED}
    results["ddp"] = {case: ddp_run(case, world, rank) for case in DDP}
    results["fsdp2-sum-sq"] = {layout: fsdp2_sum_sq(world, rank, layout) for layout in ("root", "per layer")}
    results["fail-nan"] = {case: sharded_run(case, sharded=True, fail=(3, "nan")) for case in ("auto-adam", "tlr", "vsgd-g", "gi-adam")}
    if world == 3:  # last, as it leaves the process group broken
        # The last rank leaves the others in the collective; they give up after 3 s (it stays
        # alive meanwhile, so that their error is the timeout, not its closed connection).
        results["fail-skip"] = sharded_run("auto-adam", sharded=True, fail=(3, "skip"))
        if rank == world - 1:
            time.sleep(6)
    with open(out, "wb") as f:
        pickle.dump(results, f)
    sys.stdout.flush()
    os._exit(0)  # after a skipped collective, gloo's teardown could wait for it


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world, tmp):
    """Every rank's results, or a failure naming the rank that hung or crashed."""
    port = free_port()
    outs = [tmp / f"rank{r}.pkl" for r in range(world)]
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(world), str(port), str(outs[r])],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(world)]
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    logs = []
    try:
        for r, p in enumerate(procs):
            try:
                logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0].decode())
            except subprocess.TimeoutExpired:
                pytest.fail(f"world {world}: rank {r} hangs after {LAUNCH_TIMEOUT} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"world {world}: rank {r} exited with {p.returncode}:\n{log[-3000:]}"
    results = []
    for out in outs:
        with open(out, "rb") as f:
            results.append(pickle.load(f))
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """ranks(world): every rank's results of one launch of `world` processes (launched once)."""
    launched = {}

    def get(world):
        if world not in launched:
            launched[world] = launch(world, tmp_path_factory.mktemp(f"world{world}"))
        return launched[world]
    return get


# the tests ----------------------------------------------------------------------------------------

def assert_equal_runs(got, want, tol, lr_rtol, what):
    assert "error" not in got, f"{what}: {got.get('error')}"
    for t, (a, b) in enumerate(zip(got["params"], want["params"])):
        err = float(np.max(np.abs(a - b))) / float(np.max(np.abs(b)))
        assert err <= tol, f"{what}, tensor {t}: differs from the single process by {err:.1e} of its largest entry"
    if lr_rtol is not None:
        np.testing.assert_allclose(got["lrs"], want["lrs"], rtol=lr_rtol, atol=0, err_msg=f"{what}: learning rates")


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", list(SHARDED))
def test_sharded_run_equals_the_single_process_run(ranks, case, world):
    want = ranks(1)[0]["reference"][case]
    initial = [p.detach().numpy() for p in model_and_data()[0].parameters()]
    assert all(not np.array_equal(a, b) for a, b in zip(want["params"], initial)), f"{case}: the run moved nothing"
    assert want["calls"] == 0
    for rank, result in enumerate(ranks(world)):
        got = result["sharded"][case]
        # vsgd-l's rate is the median over each rank's own elements: its parameters are compared
        assert_equal_runs(got, want, 2e-5, 1e-5 if case != "vsgd-l" else None, f"{case}, world {world}, rank {rank}")
        assert got["calls"] == CALLS[case], f"{case}: {got['calls']} calls to the callback in {STEPS} steps"


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", DDP)
def test_data_parallel_run_equals_one_process_on_the_whole_batch(ranks, case, world):
    want = ranks(1)[0]["ddp-reference"][case]
    for rank, result in enumerate(ranks(world)):
        assert_equal_runs(result["ddp"][case], want, 1e-4, 1e-4, f"{case}, world {world}, rank {rank}")


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("layout", ["root", "per layer"])
def test_fsdp2_sum_sq_is_this_ranks_shard_of_the_brute_force_sums(ranks, layout, world):
    """SumGradSquared under FSDP2 (hooks on the unsharded parameters; closed forms, and the
    torch.func fallback for Scale) gives each rank torch's dim-0 shard (7 rows over 3 ranks: 3,
    3, 1) of the per-sample gradients' squares, summed over its own rows, and
    sum_sq_over_ranks that of the whole batch; within 1e-5 of each tensor's largest entry
    (float32 sums in another order than the brute force's)."""
    sizes = (7, 7, 3, 3) + ((3,) if layout == "per layer" else ())
    for rank, result in enumerate(ranks(world)):
        r = result["fsdp2-sum-sq"][layout]
        chunks = [-(-n // world) for n in sizes]
        want_rows = [max(0, min(c, n - rank * c)) for c, n in zip(chunks, sizes)]
        assert r["rows"] == want_rows and r["n"] == BATCH, f"world {world}, rank {rank}: rows {r['rows']}, N {r['n']}"
        for what in ("view", "view of the DTensors", "whole batch"):
            got, want = r[what]
            for t, (a, b) in enumerate(zip(got, want)):
                assert a.shape == b.shape, f"{what}, world {world}, rank {rank}, tensor {t}: shape {a.shape}, want {b.shape}"
                err = float(np.max(np.abs(a - b))) / float(np.max(np.abs(b)))
                assert err <= 1e-5, f"{layout}, {what}, world {world}, rank {rank}, tensor {t}: differs from brute force by {err:.1e}"


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("case", ["auto-adam", "tlr", "vsgd-g", "gi-adam"])
def test_a_callback_failing_on_one_rank_is_an_error_on_every_rank(ranks, case, world):
    """The last rank's callback joins the collective with NaN, then raises, at step 4 (index 3):
    it reports the callback's failure, the others refuse the NaN sums; nothing moved anywhere."""
    results = [r["fail-nan"][case] for r in ranks(world)]
    for rank, r in enumerate(results):
        assert "error" in r, f"{case}, world {world}: rank {rank} went on"
        assert r["step"] == 3 and r["untouched"], f"rank {rank}: step {r['step']}, untouched {r['untouched']}"
        want = "ALR_CALLBACK_FAILED" if rank == world - 1 else "ALR_NON_FINITE"
        assert r["status"] == want, f"{case}, world {world}, rank {rank}: {r['status']}: {r['error']}"
    if world > 1:
        assert "process" in results[0]["error"], results[0]["error"]


def test_a_rank_that_skips_the_collective_fails_the_others_without_a_hang(ranks):
    """The last of 3 ranks raises without joining at step 4: the others' all_reduce(timeout=3 s)
    gives up, so every rank's step 4 is an error with nothing changed, well inside the launch's
    timeout."""
    for rank, result in enumerate(ranks(3)):
        r = result["fail-skip"]
        assert "error" in r, f"rank {rank} went on"
        assert r["status"] == "ALR_CALLBACK_FAILED" and r["step"] == 3 and r["untouched"], f"rank {rank}: {r}"
        why = "failed on this rank (skip)" if rank == 2 else "imed out"
        assert why in r["error"], f"rank {rank}: {r['error']}"


def test_data_parallel_needs_torch_distributed():
    with pytest.raises(autolr.Error, match="not initialised"):
        alt.AutoAdam([torch.nn.Parameter(torch.zeros(3))], data_parallel=True)
    with pytest.raises(autolr.Error, match="needs torch.distributed initialised"):
        alt.ZeroShards([torch.nn.Parameter(torch.zeros(3))])


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))
