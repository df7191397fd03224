"""autolr.torch: every autolr algorithm as a ``torch.optim.Optimizer``, and ``SumGradSquared``.

    import torch, autolr.torch as alt

    opt = alt.Adam(model.parameters(), lr=1e-3)            # or alt.AutoLR(params, "adam", lr=1e-3)
    loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()

    sgs = alt.SumGradSquared(model)                        # Σ_i g_i² of every parameter (hooks)
    opt = alt.AutoSGD(model.parameters())
    loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward()
    opt.step(sum_sq=sgs)                                   # scale and N come from the helper

    opt = alt.GI(model.parameters(), base="adam", lr=1e-3)
    def closure(backward=True):                            # see step() for `backward`
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if backward:
            loss.backward()
        return loss
    opt.step(closure)

Tensors: parameters must be float32 and contiguous, all on the CPU or all on one CUDA device.
CUDA tensors need a library built with the `cuda` feature and an algorithm in
``autolr.CUDA_ALGORITHMS``; their state then lives on that device, every tensor is passed by
device pointer, and a step is enqueued on the stream that was current when the optimizer was
created (stepping under another stream is an error) without waiting for it. A NaN/Inf found on
the device makes that step and later ones no-ops and is raised by the next read of ``lr``,
``momentum``, ``telemetry()`` or ``state_dict()``. On the CPU the optimizer keeps zero-copy numpy
views of their storage (``tensor.detach().numpy()`` shares memory) and the library updates them
in place, so parameters must not be re-allocated after the optimizer is created (``model.to()``,
``.half()``, ``p.data = ...``): ``step`` detects a moved storage (or a parameter re-viewed in
place, ``p.data = p.data[:2]``) and raises ``autolr.Error``.
Create the optimizer after moving the model. ``model.load_state_dict`` copies in place and is fine.

Param groups: each torch param group is one autolr group. Options given to the constructor
are set for every group; a key of a param group whose value differs from them is set for that
group only (``set_option(name, value, group=g)``), so ``[{"params": a}, {"params": b, "lr": 0.1}]``
works as in torch. A changed ``param_groups[g][name]`` (an LR scheduler's ``lr``) is sent to the
library at the next ``step`` (so is one that differs after ``load_state_dict``: the library then
holds the options its checkpoint saved). torch's ``betas=(b1, b2)`` is autolr's ``beta1`` and
``beta2``. A value of an autolr option that is not a number is an error; other keys are left
alone. ``param_groups[g]["lr"]`` stays the setting; the learning rate the
algorithm actually used is ``opt.lr[g]`` (and ``opt.momentum[g]``, ``opt.telemetry()``).

``state_dict()`` is torch's dict plus ``"autolr"``: the library's checkpoint (versioned,
checksummed) as a 1-D uint8 tensor, so ``torch.load(weights_only=True)`` reads it back.
``load_state_dict`` restores both (and still takes the bytes older versions saved).
"""
import contextlib
import ctypes
import importlib
import inspect
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from . import CudaOptimizer as _CudaCore
from . import Error
from . import Optimizer as _Core
from . import _batch_size, _index, _is_number, _number

__all__ = [
    "Auto", "AutoLR", "SGD", "Momentum", "Adam", "AdamW", "Adagrad", "RMSprop", "AutoSGD", "AutoAdam",
    "AutoAdagrad", "GI", "TLR", "VSGD", "Prodigy", "DAdaptAdam", "DoG", "LDoG", "ScheduleFree", "SGDScheduleFree", "AdamWScheduleFree", "SumGradSquared",
    "all_reduce", "sum_sq_over_ranks", "ZeroShards",
]

def _describe(i, p):
    return f"parameter {i} (shape {tuple(p.shape)})"


def _check_param(i, p):
    if not isinstance(p, torch.Tensor):
        raise Error(f"parameter {i} is a {type(p).__name__}, not a torch.Tensor")
    if p.device.type not in ("cpu", "cuda"):
        raise Error(f"{_describe(i, p)} is on {p.device}; autolr.torch takes CPU or CUDA tensors")
    if p.dtype != torch.float32:
        raise Error(f"{_describe(i, p)} has dtype {p.dtype}; autolr works in float32 (model.float())")
    if p.is_sparse or not p.is_contiguous():
        raise Error(f"{_describe(i, p)} is not a dense contiguous tensor; autolr needs contiguous storage")
    if p.numel() == 0:
        raise Error(f"{_describe(i, p)} has no elements")


def _to_array(x, what, copy=False):
    """A float32 C-contiguous numpy array for a tensor (zero-copy when possible) or an array."""
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.device.type != "cpu":
            raise Error(f"{what} is on {x.device}; autolr.torch takes CPU tensors")
        if x.is_sparse:
            raise Error(f"{what} is sparse; autolr needs dense tensors")
        if x.dtype != torch.float32:
            x = x.float()
        x = x.contiguous().numpy()
    else:
        x = np.asarray(x, dtype=np.float32)
    x = np.ascontiguousarray(x)
    return x.copy() if copy else x


_F32 = torch.float32
_STRIDED = torch.strided
_data_ptr = torch.Tensor.data_ptr
_numel = torch.Tensor.numel
_is_contiguous = torch.Tensor.is_contiguous
_PtrArray = ctypes.POINTER(ctypes.POINTER(ctypes.c_float))


def _to_cpu_tensor(x, what, copy=False):
    """A float32 contiguous CPU tensor for a tensor (as it is when possible) or an array."""
    if not isinstance(x, torch.Tensor):
        return torch.from_numpy(np.array(x, dtype=np.float32, order="C", copy=True))
    x = x.detach()
    if x.device.type != "cpu":
        raise Error(f"{what} is on {x.device}; this optimizer's tensors are on the CPU")
    if x.layout is not _STRIDED:
        raise Error(f"{what} is sparse; autolr needs dense tensors")
    converted = x.dtype != _F32 or not x.is_contiguous()
    x = x.float().contiguous()
    return x.clone() if copy and not converted else x


def _to_device(x, what, device):
    """A float32 contiguous tensor on the optimizer's CUDA device (converted, never moved)."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)
    x = x.detach()
    if x.device != device:
        raise Error(f"{what} is on {x.device}; this optimizer's tensors are on {device}")
    if x.is_sparse:
        raise Error(f"{what} is sparse; autolr needs dense tensors")
    return x.float().contiguous()


def _as_float(value):
    """A loss as a float (a one-element tensor, or a number), or an autolr.Error."""
    return _number("loss", value)


class _Held:
    """Puts `params` back as they were (`restore`, and when the block ends): torch's optimizers
    leave a parameter without a gradient alone (frozen, or unused by this step's loss), while the
    library steps every tensor it was created over (with a zero gradient there, which weight
    decay, momentum or schedule-free's averaging would still move)."""

    def __init__(self, params):
        self._params = params
        self._kept = None

    def __enter__(self):
        if self._params:
            self._kept = [p.detach().clone() for p in self._params]
        return self

    def restore(self):
        if self._kept is not None:
            with torch.no_grad():
                for p, value in zip(self._params, self._kept):
                    p.copy_(value)

    def __exit__(self, *_):
        self.restore()


# Keys torch's schedulers keep in param groups for themselves (OneCycleLR's and CyclicLR's momentum
# range); one is also an option name (schedule-free's base_momentum: constructor or set_option).
_SCHEDULER_KEYS = ("base_momentum", "max_momentum")


def _taken_in_part(error):
    """Whether the library reports a step it took in part (GI's move stands; the loss after it
    could not be taken): ALR_CALLBACK_FAILED saying that the parameters were moved."""
    return isinstance(error, Error) and error.status == "ALR_CALLBACK_FAILED" and "were moved" in str(error)


def _same(a, b):
    """Whether two option values are the same setting (an unset, NaN, one included)."""
    return a == b or (a != a and b != b)


def _option_items(group):
    """A param group's (or the constructor's) options by autolr name: torch's ``betas=(b1, b2)``
    (what Adam-style optimizers take, and what OneCycleLR's momentum cycling writes) is
    autolr's ``beta1`` and ``beta2``."""
    if "betas" in group and ("beta1" in group or "beta2" in group):
        raise Error("a param group holds betas and beta1/beta2: give betas=(beta1, beta2) or beta1= and beta2=, not both")
    for name, value in group.items():
        if name == "params":
            continue
        if name == "betas":
            try:
                beta1, beta2 = (None, None) if isinstance(value, (str, bytes)) else value
            except (TypeError, ValueError):
                beta1 = beta2 = None
            if beta1 is None or beta2 is None:
                raise Error(f"betas is {value!r}; it takes two numbers, (beta1, beta2)")
            yield "beta1", beta1
            yield "beta2", beta2
        else:
            yield name, value


_BACKWARD_KWARG = {}  # code object -> whether its function takes `backward`


def _accepts_backward_kwarg(fn):
    # A closure is usually a new function object each step over the same code: the answer is kept
    # per code object (inspect.signature costs tens of µs a call).
    code = getattr(fn, "__code__", None)
    if code is not None and code in _BACKWARD_KWARG:
        return _BACKWARD_KWARG[code]
    try:
        params = inspect.signature(fn).parameters
        takes = "backward" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes = False
    if code is not None and inspect.isfunction(fn):
        _BACKWARD_KWARG[code] = takes
    return takes


_OPTIMIZER_MODULE = importlib.import_module("torch.optim.optimizer")
_profiler_enabled = torch._C._autograd._profiler_enabled


def _observed(opt):
    """Whether a step of `opt` has an observer: a step hook (its own or a global one) or a running
    profiler (what torch's step wrapper serves)."""
    return bool(opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks
                or _OPTIMIZER_MODULE._global_optimizer_pre_hooks or _OPTIMIZER_MODULE._global_optimizer_post_hooks
                or _profiler_enabled())


def _observable_step(self, closure=None, **inputs):
    return self._unobserved_step(closure, **inputs)


_torch_wrapped_step = torch.optim.Optimizer.profile_hook_step(_observable_step)


def _torch_observed_step(opt, closure, **inputs):
    """The step under torch's own wrapper (profiler range, hooks), given the arguments the caller
    gave (a hook sees no keyword left at its default)."""
    args = (opt,) if closure is None else (opt, closure)
    return _torch_wrapped_step(*args, **{k: v for k, v in inputs.items() if v is not None})


class AutoLR(torch.optim.Optimizer):
    """Any autolr algorithm as a ``torch.optim.Optimizer``.

    ``params``: ``model.parameters()`` or a list of param-group dicts. ``algorithm``: one of
    ``autolr.ALGORITHMS``. ``options``: by name (docs/algorithms.md), e.g. ``lr=1e-3``, ``nu=0.9``,
    ``base="adam"`` for GI. A parameter whose ``.grad`` is None (frozen, or unused by the step's
    loss) is not moved, as torch leaves it: the adapter copies it before the step and back after
    it (and before GI's re-evaluation). Its state in the library still takes the step with a zero
    gradient (the library steps every tensor it was created over: Adam's moments decay, say,
    and schedule-free's z, from which eval() forms x for a parameter that had gradients before;
    one that never had a gradient keeps its value in both views).

    More than one process (README "More than one process"): ``reduce`` makes the parameters
    this process's shards of tensors split over processes, ``reduce(values, op)`` combining the
    step's sums over them (``all_reduce()`` for ``torch.distributed``, whose ``on_device`` form
    a CUDA optimizer calls; see ``ZeroShards``). ``data_parallel``: the process group whose ranks train replicas on their own
    batches (DDP, ZeRO-1): a ``SumGradSquared`` given to ``step`` is summed over its ranks (Σg²
    and N) and GI's losses are averaged over them. Default ``None``: the default group when
    ``torch.distributed`` is initialised with more than one rank when the optimizer is created,
    else off (a single process is unchanged); ``False``: off (ranks that do not train on parts
    of one batch); or a group.
    """

    def __init__(self, params, algorithm, reduce=None, data_parallel=None, **options):
        strings = {k: v for k, v in options.items() if isinstance(v, str)}
        numbers = {k: v for k, v in options.items() if not isinstance(v, str)}
        if "betas" in numbers and ("beta1" in numbers or "beta2" in numbers):
            raise Error("give betas=(beta1, beta2) or beta1= and beta2=, not both")
        self._building = True
        super().__init__(params, dict(numbers))
        self._building = False
        self.algorithm = algorithm
        # GI takes the loss and re-evaluates it after the move, on its own and under schedule-free
        # (docs/algorithms.md §3.3: there at y', the parameters the step leaves).
        self._runs_gi = algorithm == "gi" or (algorithm == "schedule-free" and strings.get("base") == "gi")
        tensors, groups = [], []
        for g, group in enumerate(self.param_groups):
            for p in group["params"]:
                _check_param(len(tensors), p)
                tensors.append(p)
                groups.append(g)
        if not tensors:
            raise Error("the optimizer got no parameters")
        self._device = tensors[0].device
        for i, p in enumerate(tensors):
            if p.device != self._device:
                raise Error(f"{_describe(i, p)} is on {p.device}, parameter 0 on {self._device}: put every parameter on one device")
        self._tensors = tensors
        # Parameters that have not had a gradient at any step yet: schedule-free's eval() and
        # train() leave them as they are (`_set_mode`).
        self._never_stepped = list(tensors)
        self._step_unmoved = []  # the current step's parameters without a gradient
        self._pointers = [p.data_ptr() for p in tensors]
        self._pointer_key = tuple(self._pointers)
        self._numels = tuple(p.numel() for p in tensors)
        self._arrays = {}  # cache slot -> (pointers, C array)
        self._zeros = {}
        self._grad_copies = None  # the step's gradients when its closure runs again during it
        self._helpers = {}
        self._data_parallel = _data_parallel_group(data_parallel)
        if self._device.type == "cuda":
            on_device = None if reduce is None else getattr(reduce, "on_device", None)
            if reduce is not None and on_device is None:
                raise Error("reduce= on a CUDA optimizer takes a callback with a device form (`alt.all_reduce()`, "
                            "whose `on_device(pointer, n, op, stream)` reduces the library's device values)", "ALR_UNSUPPORTED")
            self._views = None
            self._stream = torch.cuda.current_stream(self._device).cuda_stream
            self._core = _CudaCore(algorithm, [p.numel() for p in tensors], groups=groups,
                                   device=self._device.index, stream=self._stream, reduce=on_device, **strings)
        else:
            self._views = [p.detach().numpy() for p in tensors]  # share the tensors' storage
            # The C array of the parameters' storage, valid while _check_storage passes.
            self._param_array = ctypes.cast((ctypes.c_void_p * len(tensors))(*self._pointers), _PtrArray)
            self._core = _Core(algorithm, self._views, groups=groups, reduce=reduce, **strings)
        numbers = dict(_option_items(numbers))
        for name, value in numbers.items():
            self._core.set_option(name, value)
        self._synced = [{} for _ in self.param_groups]
        self._foreign = set(_SCHEDULER_KEYS)
        self._global = set()  # options the library holds once for every group
        self._sync_options(initial=numbers)
        # Fixed-rate algorithms (and TLR, GI) have an `lr` option: show it in every group, so that
        # torch's LR schedulers, which read and write param_groups[g]["lr"], work.
        for g, group in enumerate(self.param_groups):
            if "lr" not in group:
                try:
                    group["lr"] = self._core.get_option("lr", group=g)
                except Error:
                    break  # this algorithm has no lr option (auto-*, vsgd-*)
                self._synced[g]["lr"] = group["lr"]
        self._show_momentum()

    def _show_momentum(self):
        """torch's schedulers that cycle momentum (OneCycleLR, CyclicLR) read and write
        ``param_groups[g]["betas"]`` (Adam-style) or ``["momentum"]``, and refuse an optimizer
        whose defaults have neither: every group shows the library's values, as torch's Adam
        and SGD do."""
        given = ("betas", "beta1", "beta2", "momentum")  # a group's own (its user's, or a scheduler's)
        self._shown = {"betas": {}, "momentum": {}}  # key -> {id(group or defaults): the value shown}
        if self._is_option("beta1") and self._is_option("beta2"):
            for g, grp in enumerate(self.param_groups):
                if not any(k in grp for k in given):
                    grp["betas"] = (self._core.get_option("beta1", group=g), self._core.get_option("beta2", group=g))
                    self._synced[g]["beta1"], self._synced[g]["beta2"] = grp["betas"]
                    self._shown["betas"][id(grp)] = grp["betas"]
            if not any(k in self.defaults for k in given):
                self.defaults["betas"] = self._shown["betas"][id(self.defaults)] = (self._core.get_option("beta1"), self._core.get_option("beta2"))
        elif self._is_option("momentum"):
            for g, grp in enumerate(self.param_groups):
                if "momentum" not in grp:
                    grp["momentum"] = self._synced[g]["momentum"] = self._core.get_option("momentum", group=g)
                    self._shown["momentum"][id(grp)] = grp["momentum"]
            if "momentum" not in self.defaults:
                self.defaults["momentum"] = self._shown["momentum"][id(self.defaults)] = self._core.get_option("momentum")

    def add_param_group(self, param_group):
        if not getattr(self, "_building", False):
            raise Error("autolr.torch: param groups cannot be added after the optimizer is created "
                        "(the library registers its tensors once); create a new optimizer")
        super().add_param_group(param_group)

    # options --------------------------------------------------------------------------------------
    def _sync_options(self, initial=None):
        """Sends param-group values that differ from what the library holds, and returns what it
        sent (for `_unsync`). At construction an unknown name is an error (the library lists the
        accepted ones); later, keys that are not options of this algorithm (e.g. an LR
        scheduler's "initial_lr") are left alone. An option the library holds once for the
        whole optimizer (Prodigy's betas, say) is sent once, when every group holds the same
        value. All or nothing: a value the library refuses puts back the ones already sent."""
        sent = []  # (group or None for every group, name, value, the library's value before)
        try:
            for g, group in enumerate(self.param_groups):
                synced = self._synced[g]
                for name, value in _option_items(group):
                    if name in self._foreign:
                        continue
                    if type(value) in (float, int) and name in synced and synced[name] == value:
                        continue  # the common case, unchanged
                    if isinstance(value, torch.Tensor):
                        value = value.detach()
                    if not _is_number(value):
                        # Not a number: another library's key (a name, a scheduler's list) is left
                        # alone; one of this algorithm's options is an error, not a silent skip.
                        if not self._is_option(name):
                            self._foreign.add(name)
                            continue
                        raise Error(f"param_groups[{g}][{name!r}] is {value!r}; autolr's option {name!r} takes a number")
                    value = _number(name, value)
                    if name in synced and _same(synced[name], value):
                        continue
                    if initial is not None and name in initial and _same(_number(name, initial[name]), value):
                        synced[name] = value  # already set for every group
                        continue
                    if initial is None and name not in synced and not self._is_option(name):
                        self._foreign.add(name)
                        continue
                    # What the library holds: the value last sent, else (not sent yet) read once.
                    before = synced[name] if name in synced else self._core.get_option(name, group=g)
                    target = None if name in self._global else g
                    if target is not None:
                        try:
                            self._core.set_option(name, value, group=g)
                        except Error as e:
                            if "one value for the whole optimizer" not in str(e):
                                raise
                            self._global.add(name)
                            target = None
                    if target is None:
                        values = [_number(name, v) for grp in self.param_groups for n, v in _option_items(grp) if n == name]
                        if not all(_same(v, value) for v in values):
                            raise Error(f"'{name}' is one value for the whole '{self.algorithm}' optimizer, but the param "
                                        f"groups hold {values}: give every group the same value") from None
                        self._core.set_option(name, value)
                    sent.append((target, name, value, before))
                    for h in self._groups_of(target):
                        self._synced[h][name] = value
        except Exception:
            self._unsync(sent)
            raise
        return sent

    def _unsync(self, sent):
        """Puts back the options `_sync_options` sent (`_options_sent`)."""
        for target, name, _, before in reversed(sent):
            try:
                self._core.set_option(name, before, group=target)
            except Error:
                # Not put back (a structural option once the step began): read afresh next time.
                for h in self._groups_of(target):
                    self._synced[h].pop(name, None)
                continue
            for h in self._groups_of(target):
                self._synced[h][name] = before

    def _groups_of(self, target):
        """The groups an option sent to `target` (a group, or None: every group) reaches."""
        return range(len(self.param_groups)) if target is None else (target,)

    def _is_option(self, name):
        try:
            self._core.get_option(name, group=0)
            return True
        except Error:
            return False

    def set_option(self, name, value, group=None):
        """Sets an autolr option directly (every group, or one); mirrors ``autolr.Optimizer``."""
        if group is not None:
            group = _index(group, "group", 2**64)
        self._core.set_option(name, value, group=group)
        if isinstance(value, str):
            # A base resets every option to its default and has options of its own: the param
            # groups' values are sent again, and which keys are options is learnt again.
            self._synced = [{} for _ in self.param_groups]
            self._foreign, self._global = set(_SCHEDULER_KEYS), set()
            if name == "base":
                self._runs_gi = self.algorithm == "gi" or (self.algorithm == "schedule-free" and value == "gi")
            # What the groups showed of the old base's (betas or momentum) goes; the new one's shows.
            for params in [*self.param_groups, self.defaults]:
                for key, shown in self._shown.items():
                    if params.get(key) == shown.get(id(params)):
                        params.pop(key, None)
            self._show_momentum()
            return
        value = _number(name, value)
        for g in range(len(self.param_groups)) if group is None else [group]:
            params = self.param_groups[g]
            if name in _SCHEDULER_KEYS:
                pass  # the scheduler's key of that name is its own
            elif name in params:
                params[name] = value
            elif name in ("beta1", "beta2") and "betas" in params:
                betas = list(params["betas"])
                betas[name == "beta2"] = value
                params["betas"] = tuple(betas)
            self._synced[g][name] = value

    # the step -------------------------------------------------------------------------------------
    def _check_storage(self):
        # The same address, size and contiguity: the library updates the elements it was created
        # over (a `p.data = p.data[:2]` or `.t()` keeps the address; dtype and device come with it).
        if (tuple(map(_data_ptr, self._tensors)) == self._pointer_key and tuple(map(_numel, self._tensors)) == self._numels
                and all(map(_is_contiguous, self._tensors))):
            return
        for i, (p, ptr, n) in enumerate(zip(self._tensors, self._pointers, self._numels)):
            if p.data_ptr() != ptr or p.numel() != n or not p.is_contiguous() or p.device != self._device or p.dtype != torch.float32:
                raise Error(f"{_describe(i, p)} was re-allocated or re-viewed after the optimizer was created "
                            "(model.to(), .half(), p.data = ...); autolr.torch keeps views of the "
                            "original storage: create the optimizer after moving the model", "ALR_WRONG_STATE")

    def _input(self, x, what, copy=False):
        """One input buffer as a float32 contiguous tensor on this optimizer's device."""
        if self._views is None:
            return _to_device(x, what, self._device)
        return _to_cpu_tensor(x, what, copy=copy)

    def _grads(self, copy, unmoved=None):
        """Each parameter's gradient as the library takes it; a missing one (``.grad`` None) is
        zeros, and its parameter goes into `unmoved` (see `_Held`)."""
        out = []
        on_cpu = self._views is not None
        for i, p in enumerate(self._tensors):
            g = p.grad
            if g is None:
                if unmoved is not None:
                    unmoved.append(p)
                z = self._zeros.get(i)
                if z is None:
                    z = self._zeros[i] = self._input(torch.zeros_like(p), "zeros")
                out.append(z)
            # `is_cpu` rather than a device comparison on CPU: this loop runs per tensor per step,
            # and building a torch.device is most of its cost.
            elif (not copy and g.dtype is _F32 and g.layout is _STRIDED and (g.is_cpu if on_cpu else g.device == self._device)
                  and g.is_contiguous()):
                out.append(g)  # the common case, taken as it is
            else:
                out.append(self._input(g, f"grad of {_describe(i, p)}", copy=copy))
        return out

    def _kept_copies(self, grads):
        """Copies of the step's gradients when a closure runs during the step (it may overwrite
        .grad in place), in buffers kept from step to step (and so is their C pointer array)."""
        if self._grad_copies is None:
            self._grad_copies = [torch.empty_like(g) for g in grads]
        for copy, g in zip(self._grad_copies, grads):
            copy.copy_(g)
        return self._grad_copies

    def _pointer_array(self, tensors, what, leading=1, cache=None):
        """A C array of float pointers to `tensors` (CPU float32 contiguous, one per parameter of
        `leading` × its size). `cache` names a slot that keeps the array while the pointers stay
        the same (gradients usually live in the same storage from step to step)."""
        ptrs = tuple(map(_data_ptr, tensors))
        if cache is not None:
            key, array = self._arrays.get(cache, (None, None))
            if key == ptrs:
                return array
        for i, (t, p) in enumerate(zip(tensors, self._tensors)):
            if t.numel() != leading * p.numel():
                raise Error(f"{what}[{i}] has {t.numel()} elements, {_describe(i, p)} needs {leading * p.numel()}", "ALR_SHAPE_MISMATCH")
        array = ctypes.cast((ctypes.c_void_p * len(ptrs))(*ptrs), _PtrArray)
        if cache is not None:
            self._arrays[cache] = (ptrs, array)
        return array

    def _per_tensor(self, values, what):
        if values is None:
            return None
        if isinstance(values, SumGradSquared):
            values = values.sum_sq_tensors(self._tensors)
        values = list(values)
        if len(values) != len(self._tensors):
            raise Error(f"{what} has {len(values)} tensors, the optimizer has {len(self._tensors)}", "ALR_SHAPE_MISMATCH")
        return [self._input(v, f"{what}[{i}]") for i, v in enumerate(values)]

    def _step_cuda(self, grads, kwargs):
        """Enqueues the step on the optimizer's stream. Temporaries (converted gradients, Σg²)
        may be freed when this returns: torch reuses their memory only in the order of the
        current stream, which is the one the step runs on."""
        current = torch.cuda.current_stream(self._device).cuda_stream
        if current != self._stream:
            raise Error(f"step() runs under CUDA stream {current:#x}, the optimizer was created under {self._stream:#x}: "
                        "step under the stream the optimizer was created under", "ALR_WRONG_STATE")
        for name in ("curvature", "loss", "closure", "grad_closure"):
            if kwargs.get(name) is not None:
                raise Error(f"'{self.algorithm}' on CUDA takes no {name}", "ALR_UNSUPPORTED")
        pointers = lambda tensors: None if tensors is None else [t.data_ptr() for t in tensors]
        per_sample = kwargs["per_sample"]
        batch_size = kwargs.get("batch_size")
        if batch_size is None and per_sample:
            batch_size = per_sample[0].shape[0] if per_sample[0].dim() else 0
        if batch_size is not None:
            batch_size = _batch_size(batch_size)
        self._check_shapes(kwargs, batch_size)
        self._core.step(pointers(self._tensors), pointers(grads), sum_sq=pointers(kwargs["sum_sq"]),
                        per_sample=pointers(per_sample), per_sample_scale=kwargs["per_sample_scale"],
                        batch_size=batch_size)

    def step(self, closure=None, *, loss=None, sum_sq=None, per_sample=None, per_sample_scale=None,
             batch_size=None, curvature=None):
        """One step over every parameter; returns the closure's loss (or None).

        Observed as torch's optimizers are: step pre/post hooks (this optimizer's and the global
        ones) and, while a profiler runs, the ``Optimizer.step#<class>.step`` range. torch's own
        wrapper for that enters a profiler range on every step, profiler or not (a dispatcher
        call, most of a small model's step), so it is taken only when something observes.

        ``closure``: as in torch, re-evaluates the model on the batch and returns the loss; it is
        run (under ``torch.enable_grad``) before the step and its backward pass gives the
        gradients. Algorithms that re-evaluate call it again during the step:

        * GI (also as schedule-free's base, where the new parameters are y'): after the move,
          for the loss at the new parameters. If the closure takes a
          ``backward`` keyword, that call is ``closure(backward=False)`` under ``torch.no_grad``
          (cheap: forward only); otherwise it is ``closure()`` with gradients enabled, so a plain
          closure works at the cost of one more backward pass (``.grad`` then holds the gradient
          at the new parameters). Without a closure, GI takes ``loss=`` and then
          ``report_loss(loss_after)``.
        * vSGD without ``curvature``: the finite-difference curvature needs the gradient at
          shifted parameters; the adapter writes them into the parameters, runs the closure with
          gradients enabled, and restores the parameters bit-exactly.

        Per-sample data: ``sum_sq`` is a ``SumGradSquared`` (scale and N are taken from it) or a
        list of Σ_i g_i² per parameter; ``per_sample`` a list of (N, *shape) tensors;
        ``per_sample_scale`` "sample" or "mean" (default: the helper's, else "sample");
        ``batch_size`` N. ``curvature``: list of diagonal curvature tensors (vSGD).
        """
        if _observed(self):
            return _torch_observed_step(self, closure, loss=loss, sum_sq=sum_sq, per_sample=per_sample,
                                        per_sample_scale=per_sample_scale, batch_size=batch_size, curvature=curvature)
        return self._unobserved_step(closure, loss, sum_sq, per_sample, per_sample_scale, batch_size, curvature)

    step.hooked = True  # torch.optim.Optimizer wraps a step without this mark in its own observer

    def _unobserved_step(self, closure=None, loss=None, sum_sq=None, per_sample=None, per_sample_scale=None,
                         batch_size=None, curvature=None):
        if (closure is None and self._views is not None and loss is None and sum_sq is None and per_sample is None
                and per_sample_scale is None and batch_size is None and curvature is None):
            # The plain loop's step (CPU, the gradients alone) hands the library pointers and runs
            # no torch operation autograd could record, so it needs no torch.no_grad (entering
            # it is a tenth of such a step's cost on a small model).
            self._check_storage()
            with self._options_sent():
                # Held here until the library returns: a gradient that is not float32 and
                # contiguous is a converted copy, which only this list keeps alive (the array
                # holds bare pointers).
                unmoved = []
                grads = self._grads(copy=False, unmoved=unmoved)
                with _Held(unmoved):
                    self._core._step_raw(self._param_array, self._pointer_array(grads, "grads", cache="grads"))
            self._note_gradients(unmoved)
            return None
        with torch.no_grad():
            self._check_storage()
            with self._options_sent():
                return self._step(closure, loss, sum_sq, per_sample, per_sample_scale, batch_size, curvature)

    @contextlib.contextmanager
    def _options_sent(self):
        """The param groups' options sent to the library for the call in the block, and put back
        when it raises (a refused call changes no option either), except after a step the
        library took in part, which used them (and whose gradients `_step` noted)."""
        sent = self._sync_options()
        try:
            yield
        except BaseException as e:
            if _taken_in_part(e):
                self._note_gradients(self._step_unmoved)
            else:
                self._unsync(sent)
            raise

    def _note_gradients(self, unmoved):
        """After a step: forgets, among the parameters no step had a gradient for, those this
        one had (`unmoved`: the step's parameters without one)."""
        if self._never_stepped:
            without = {id(p) for p in unmoved}
            self._never_stepped = [p for p in self._never_stepped if id(p) in without]

    def _step(self, closure, loss, sum_sq, per_sample, per_sample_scale, batch_size, curvature):
        gi = self._runs_gi
        vsgd = self.algorithm.startswith("vsgd-")
        result = None
        if closure is not None:
            with torch.enable_grad():
                result = closure()
            if result is None and gi:
                raise Error("the closure returned None; GI needs the loss it computes")
        reruns = closure is not None and (gi or (vsgd and curvature is None))
        unmoved = self._step_unmoved = []
        grads = self._grads(copy=False, unmoved=unmoved)
        held = _Held(unmoved)
        if reruns:
            grads = self._kept_copies(grads)
        kwargs = {}
        helper = sum_sq if isinstance(sum_sq, SumGradSquared) else None
        if helper is not None and self._data_parallel is not None:
            # Replicas on their own batches: the batch of the step is every rank's (README "More
            # than one process"); a batch_size given here is this rank's.
            local = batch_size if batch_size is not None else helper.batch_size
            sum_sq, batch_size = sum_sq_over_ranks(helper, self._tensors, self._data_parallel, local, per_sample_scale)
            per_sample_scale = "sample"
        if isinstance(sum_sq, SumGradSquared):
            kwargs["per_sample_scale"] = per_sample_scale or sum_sq.per_sample_scale
            kwargs["batch_size"] = batch_size if batch_size is not None else sum_sq.batch_size
        else:
            kwargs["per_sample_scale"] = per_sample_scale or "sample"
            if batch_size is not None:
                kwargs["batch_size"] = batch_size
        kwargs["sum_sq"] = self._per_tensor(sum_sq, "sum_sq")
        kwargs["per_sample"] = self._per_tensor(per_sample, "per_sample")
        kwargs["curvature"] = self._per_tensor(curvature, "curvature")
        if loss is not None:
            kwargs["loss"] = self._mean_loss(_as_float(loss))
        elif gi and result is not None:
            kwargs["loss"] = self._mean_loss(_as_float(result))
        if closure is not None and gi:
            # The loss after the move is taken where the step leaves the parameters: those held
            # still are put back first.
            if _accepts_backward_kwarg(closure):
                def after():
                    held.restore()
                    with torch.no_grad():
                        return self._mean_loss(_as_float(closure(backward=False)))
            else:
                def after():
                    held.restore()
                    with torch.enable_grad():
                        return self._mean_loss(_as_float(closure()))
            kwargs["closure"] = after
        if closure is not None and vsgd and curvature is None:
            kwargs["grad_closure"] = lambda points: self._grad_at(closure, points)
        with held:
            if self._views is None:
                self._step_cuda(grads, kwargs)
            else:
                self._step_cpu(grads, kwargs)
        if helper is not None:
            self._helpers[id(helper)] = helper
            helper.zero_()  # consumed, as the next zero_grad() would: a new batch starts
        self._note_gradients(unmoved)
        return result

    def zero_grad(self, set_to_none=True):
        """torch's zero_grad, and ``zero_()`` of every SumGradSquared this optimizer stepped with
        (S and N accumulate over backward passes like ``.grad``)."""
        if set_to_none:
            # torch's loop for this case, without its per-call wrappers (dynamo guard, profiler
            # record): GI's closure calls zero_grad twice a step
            for p in self._tensors:
                p.grad = None
        else:
            super().zero_grad(set_to_none=False)
        for helper in self._helpers.values():
            helper.zero_()

    def _step_cpu(self, grads, kwargs):
        """The library's step on pointers to the tensors' own storage (no numpy conversion); the
        tensors in `grads` and `kwargs` stay referenced here until it returns."""
        if kwargs["sum_sq"] is not None and kwargs["per_sample"] is not None:
            raise Error("give either sum_sq or per_sample, not both")
        batch_size = kwargs.get("batch_size")
        per_sample = kwargs["per_sample"]
        if per_sample is not None and batch_size is None:
            batch_size = per_sample[0].shape[0] if per_sample and per_sample[0].dim() else 0
        if kwargs["sum_sq"] is not None and batch_size is None:
            raise Error("sum_sq needs batch_size (the number of samples N)")
        if batch_size is not None:
            batch_size = _batch_size(batch_size)
        self._check_shapes(kwargs, batch_size)
        arrays = {name: None if kwargs[name] is None else self._pointer_array(kwargs[name], name, leading)
                  for name, leading in (("sum_sq", 1), ("curvature", 1), ("per_sample", int(batch_size or 0)))}
        self._core._step_raw(
            self._param_array, self._pointer_array(grads, "grads", cache="grads"),
            per_sample_scale=kwargs["per_sample_scale"], batch_size=batch_size,
            loss=kwargs.get("loss"), closure=kwargs.get("closure"), grad_closure=kwargs.get("grad_closure"), **arrays)

    def _check_shapes(self, kwargs, batch_size):
        """Σg² and curvature have each parameter's shape, per-sample gradients (N, *shape)."""
        for name, leading in (("sum_sq", ()), ("curvature", ()), ("per_sample", None)):
            if kwargs[name] is None:
                continue
            if leading is None:
                leading = (_batch_size(batch_size),)
            for i, (t, p) in enumerate(zip(kwargs[name], self._tensors)):
                if tuple(t.shape) != (*leading, *p.shape):
                    raise Error(f"{name}[{i}] has shape {tuple(t.shape)}, expected {(*leading, *p.shape)}", "ALR_SHAPE_MISMATCH")

    def _grad_at(self, closure, points):
        """The gradient at `points` (the library's shifted copies) through the closure."""
        saved = [v.copy() for v in self._views]
        try:
            for view, point in zip(self._views, points):
                view[...] = point
            with torch.enable_grad():
                closure()
            return self._grads(copy=True)
        finally:
            for view, value in zip(self._views, saved):
                view[...] = value

    def report_loss(self, loss_after):
        """GI's second phase when step() had no closure: the loss on the same batch after the move."""
        self._core.report_loss(self._mean_loss(_as_float(loss_after)))

    def _mean_loss(self, loss):
        """GI's loss on the step's batch: with data-parallel replicas, the mean of the ranks' (each
        rank's loss is the mean over its part of the batch, as DDP's gradient is the mean of theirs)."""
        if self._data_parallel is None:
            return loss
        import torch.distributed as dist
        total = torch.tensor([loss], dtype=torch.float64)
        dist.all_reduce(total, group=self._data_parallel)
        return float(total[0]) / dist.get_world_size(self._data_parallel)

    # the two parameter views (schedule-free) ------------------------------------------------------
    def eval(self):
        """As schedulefree's ``optimizer.eval()``: the parameters become x, the average to
        evaluate (and to save); step() is refused until train(). A repeated call does nothing (as
        the reference's), and so does the call for every algorithm but schedule-free's."""
        self._set_mode(False)

    def train(self):
        """As schedulefree's ``optimizer.train()``: the parameters become y again, where the
        gradients are taken. A repeated call does nothing."""
        self._set_mode(True)

    def _set_mode(self, train):
        # The library knows which algorithms have two views ("auto" may stand for one); for the
        # others the mode stays "train" and alr_set_mode is a no-op.
        if self._core.training == train or "train_mode" not in self._core.telemetry():
            return  # already in that view, or an algorithm with one view
        self._check_storage()
        mode = 0 if train else 1  # ALR_MODE_TRAIN, ALR_MODE_EVAL
        # The swap uses the interpolation β the groups hold now (the reference reads it there).
        # A parameter no step has had a gradient for has not moved (as the reference, which never
        # made its z): its views stay what it is, though the library's z took weight decay.
        with self._options_sent(), _Held(self._never_stepped):
            self._core._set_mode(self._param_array, len(self._tensors), mode)

    # read-back ------------------------------------------------------------------------------------
    @property
    def lr(self):
        """Effective learning rate per group after the last step (the library's, not param_groups')."""
        return self._core.lr

    @property
    def momentum(self):
        """Momentum per group (AutoOpt's adapted value; the fixed value for momentum bases)."""
        return self._core.momentum

    def telemetry(self):
        """{name: [value per group]} of the algorithm's internal scalars (docs/algorithms.md §5)."""
        return self._core.telemetry()

    # checkpoints ----------------------------------------------------------------------------------
    def state_dict(self):
        state = super().state_dict()
        # A uint8 tensor, not bytes: torch.load(weights_only=True) (torch >= 2.6's default) accepts it.
        state["autolr"] = torch.frombuffer(bytearray(self._core.state_dict()), dtype=torch.uint8)
        state["autolr_algorithm"] = self.algorithm
        # Which parameters no step has had a gradient for (schedule-free's views keep them).
        held = {id(p) for p in self._never_stepped}
        state["autolr_never_stepped"] = [i for i, p in enumerate(self._tensors) if id(p) in held]
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        blob = state.pop("autolr", None)
        algorithm = state.pop("autolr_algorithm", self.algorithm)
        # A state dict from before this entry existed: every parameter is taken to have had one.
        never_stepped = state.pop("autolr_never_stepped", [])
        if blob is None:
            raise Error("this state_dict has no 'autolr' entry: it was not saved by an autolr.torch optimizer", "ALR_BAD_CHECKPOINT")
        if algorithm != self.algorithm:
            raise Error(f"this state_dict is of '{algorithm}', the optimizer is '{self.algorithm}'", "ALR_BAD_CHECKPOINT")
        if isinstance(blob, torch.Tensor):
            if blob.dtype != torch.uint8 or blob.dim() != 1:
                raise Error(f"the state_dict's 'autolr' entry is a {blob.dtype} tensor of shape {tuple(blob.shape)}, "
                            "not the 1-D uint8 checkpoint autolr.torch saves", "ALR_BAD_CHECKPOINT")
            blob = blob.cpu().numpy().tobytes()
        for key in ("state", "param_groups"):
            if key not in state:
                raise Error(f"this state_dict has no {key!r} entry: give the whole dict state_dict() returned", "ALR_BAD_CHECKPOINT")
        groups = state["param_groups"]
        # torch's own checks, before anything changes (its load_state_dict makes them too)
        if len(groups) != len(self.param_groups) or any(len(a.get("params", ())) != len(b["params"]) for a, b in zip(groups, self.param_groups)):
            raise ValueError("loaded state dict has a different number of parameter groups, or a group of another size, "
                             "than this optimizer")
        for group in groups:
            list(_option_items(group))  # its betas readable, before anything changes
        n = len(self._tensors)
        if not isinstance(never_stepped, (list, tuple)) or not all(type(i) is int and 0 <= i < n for i in never_stepped):
            raise Error(f"the state_dict's 'autolr_never_stepped' entry is {never_stepped!r}, not the list of parameter "
                        f"indices (0 to {n - 1}) autolr.torch saves", "ALR_BAD_CHECKPOINT")
        try:
            before = self._core.state_dict()
        except Error:
            before = None  # nothing to put back can be saved (GI waiting for its loss): replaced
        self._core.load_state_dict(bytes(blob))  # checked here: on failure nothing has changed
        try:
            super().load_state_dict(state)
        except BaseException:
            if before is not None:
                self._core.load_state_dict(before)
            raise
        self._never_stepped = [self._tensors[i] for i in never_stepped]
        # The library holds the options its checkpoint saved, which are the values it was last
        # sent: a param-group value changed since (an LR scheduler's step after the last step, or
        # an edited dict) is sent at the next step, as it would have been without the save.
        self._synced = [{} for _ in self.param_groups]
        for g, group in enumerate(self.param_groups):
            for name, _ in _option_items(group):
                if name not in self._foreign and self._is_option(name):
                    self._synced[g][name] = self._core.get_option(name, group=g)
        self._show_momentum()  # a state dict whose groups have no betas (saved before they were shown)

    def __getstate__(self):
        # torch's would keep param_groups and state alone: a copy without the library's handle
        # that fails at its first step.
        raise Error(f"an autolr.torch optimizer cannot be copied or pickled (its state is the library's): "
                    "save opt.state_dict() and load it into a new optimizer over the copied parameters")


# Thin named classes ------------------------------------------------------------------------------

class Auto(AutoLR):
    """The recommended tuning-free default, algorithm ``"auto"`` (README "The default"): the
    one-line replacement for ``torch.optim.Adam(model.parameters(), lr=...)``, with no learning
    rate. ``auto`` is an alias, decided by the benchmark suite (``bash scripts/suite.sh``), of an
    algorithm that needs nothing but the gradients (today ``prodigy`` with ``use_bias_correction=1``: docs/algorithms.md §8), so
    the loop stays Adam's (``zero_grad``, ``backward``, ``step()``) and nothing extra is computed;
    ``eval()``/``train()`` around evaluation are no-ops for it, and would be needed were it ever
    to stand for schedule-free."""

    def __init__(self, params, **options):
        super().__init__(params, "auto", **options)


class SGD(AutoLR):
    """Plain SGD (fixed rate): ``lr``, ``weight_decay``."""

    def __init__(self, params, lr=1e-3, **options):
        super().__init__(params, "sgd", lr=lr, **options)


class Momentum(AutoLR):
    """Heavy-ball / Nesterov momentum (fixed rate): ``lr``, ``momentum``, ``dampening``, ``nesterov``."""

    def __init__(self, params, lr=1e-3, momentum=0.9, **options):
        super().__init__(params, "momentum", lr=lr, momentum=momentum, **options)


class Adam(AutoLR):
    """Adam (fixed rate; weight_decay is L2 added to the gradient, as torch.optim.Adam)."""

    def __init__(self, params, lr=1e-3, **options):
        super().__init__(params, "adam", lr=lr, **options)


class AdamW(AutoLR):
    """AdamW (fixed rate; decoupled weight decay)."""

    def __init__(self, params, lr=1e-3, **options):
        super().__init__(params, "adamw", lr=lr, **options)


class Adagrad(AutoLR):
    """Adagrad (fixed rate)."""

    def __init__(self, params, lr=1e-2, **options):
        super().__init__(params, "adagrad", lr=lr, **options)


class RMSprop(AutoLR):
    """RMSprop (fixed rate): ``lr``, ``alpha``, ``eps``."""

    def __init__(self, params, lr=1e-2, **options):
        super().__init__(params, "rmsprop", lr=lr, **options)


class AutoSGD(AutoLR):
    """AutoOpt over SGD: learning rate and momentum from per-sample statistics; every step needs
    ``sum_sq=`` (a ``SumGradSquared``) or ``per_sample=`` with N >= 2."""

    def __init__(self, params, **options):
        super().__init__(params, "auto-sgd", **options)


class AutoAdam(AutoLR):
    """AutoOpt over Adam's preconditioner; needs per-sample data like ``AutoSGD``."""

    def __init__(self, params, **options):
        super().__init__(params, "auto-adam", **options)


class AutoAdagrad(AutoLR):
    """AutoOpt over Adagrad's preconditioner; needs per-sample data like ``AutoSGD``."""

    def __init__(self, params, **options):
        super().__init__(params, "auto-adagrad", **options)


class GI(AutoLR):
    """GI wrapping ``base`` ("sgd", "momentum", "adam", "adagrad", "rmsprop", …): η adapts from
    the loss before and after each move; ``step(closure)`` (see ``AutoLR.step``)."""

    def __init__(self, params, base="sgd", **options):
        super().__init__(params, "gi", base=base, **options)


class TLR(AutoLR):
    """TLR: ``lr`` is the initial rate; ``per_group=True`` adapts one rate per group."""

    def __init__(self, params, **options):
        super().__init__(params, "tlr", **options)


class VSGD(AutoLR):
    """vSGD, ``variant`` "l" (per element), "g" (global) or "b" (per group). Give ``curvature=``
    to ``step``, or a closure for the finite-difference estimate."""

    def __init__(self, params, variant="l", **options):
        if variant not in ("l", "g", "b"):
            raise Error(f"variant is {variant!r}; accepted: 'l', 'g', 'b'")
        super().__init__(params, f"vsgd-{variant}", **options)


class Prodigy(AutoLR):
    """``prodigyopt.Prodigy`` (docs/algorithms.md §6.1): ``lr`` 1.0, ``beta1``/``beta2`` (the
    reference's ``betas``), ``beta3``, ``eps``, ``weight_decay``, ``decouple``,
    ``use_bias_correction``, ``safeguard_warmup``, ``d0``, ``d_coef``, ``growth_rate``."""

    def __init__(self, params, lr=1.0, **options):
        super().__init__(params, "prodigy", lr=lr, **options)


class DAdaptAdam(AutoLR):
    """``dadaptation.DAdaptAdam`` (docs/algorithms.md §6.1): ``lr`` 1.0, ``beta1``/``beta2`` (the
    reference's ``betas``), ``eps``, ``weight_decay``, ``decouple``, ``use_bias_correction``,
    ``d0``, ``growth_rate``."""

    def __init__(self, params, lr=1.0, **options):
        super().__init__(params, "dadapt-adam", lr=lr, **options)


class DoG(AutoLR):
    """``dog.DoG`` (docs/algorithms.md §6.1): ``lr`` 1.0, ``reps_rel``, ``weight_decay``, ``eps``,
    ``init_eta``."""

    def __init__(self, params, lr=1.0, **options):
        super().__init__(params, "dog", lr=lr, **options)


class LDoG(AutoLR):
    """``dog.LDoG`` (docs/algorithms.md §6.1): DoG's step size per tensor, DoG's options."""

    def __init__(self, params, lr=1.0, **options):
        super().__init__(params, "ldog", lr=lr, **options)


# Σ_i g_i² without per-sample gradients where the layer allows it ------------------------------

_CONVS = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
_CONV_WEIGHT_GRAD = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight, 3: torch.nn.grad.conv3d_weight}
_BATCHNORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
_CLOSED_FORM = (torch.nn.Linear, torch.nn.Embedding, torch.nn.LayerNorm, torch.nn.GroupNorm) + _CONVS + _BATCHNORMS


class ScheduleFree(AutoLR):
    """Schedule-free over any other algorithm (``base``, default ``"adamw"``): call ``train()``
    before training and ``eval()`` before evaluating or saving, as with ``schedulefree``.
    Over ``base="gi"`` (docs/algorithms.md §3.3) GI's base is ``base_base`` and its initial η
    ``base_lr``, and ``step(closure)`` takes the loss as ``autolr.torch.GI`` does (or ``loss=``
    then ``report_loss``, before the next step, a save or ``eval()``)."""

    def __init__(self, params, base="adamw", **options):
        super().__init__(params, "schedule-free", base=base, **options)


class AdamWScheduleFree(AutoLR):
    """``schedulefree.AdamWScheduleFree``: ``lr`` 0.0025, ``beta1`` 0.9 (the interpolation),
    ``beta2`` 0.999, ``eps``, ``weight_decay`` (at y), ``warmup_steps``, ``r``, ``weight_lr_power``."""

    def __init__(self, params, lr=0.0025, **options):
        super().__init__(params, "sf-adamw", lr=lr, **options)


class SGDScheduleFree(AutoLR):
    """``schedulefree.SGDScheduleFree``: ``lr`` 1.0, ``momentum`` 0.9 (the interpolation),
    ``weight_decay`` (at y), ``warmup_steps``, ``r``, ``weight_lr_power``."""

    def __init__(self, params, lr=1.0, **options):
        super().__init__(params, "sf-sgd", lr=lr, **options)


class SumGradSquared:
    """Collects S = Σ_i g_i² (i over the samples) for every trainable parameter of ``model``
    during the backward pass.

    A forward hook saves each layer's inputs (only while gradients are enabled) and puts a
    gradient hook on its output, which receives ``δ = ∂L/∂output``. Let ℓ_i be sample i's own
    loss and L the loss that is backpropagated:

    * ``reduction="mean"`` (L = (1/N) Σ ℓ_i, e.g. ``F.cross_entropy`` by default): S holds
      Σ_i (g_i/N)² — BackPACK's SumGradSquared convention, ``per_sample_scale="mean"``.
    * ``reduction="sum"`` (L = Σ ℓ_i): S holds Σ_i g_i², ``per_sample_scale="sample"``. (Then
      ``.grad`` is the sum, not the mean gradient autolr expects: prefer mean-reduced losses.)

    The values are kept as computed (no N² rescaling); ``AutoLR.step(sum_sq=helper)`` passes
    ``per_sample_scale`` and ``batch_size`` along. ``sum_sq(params, scale="sample")`` converts.

    **Accumulation**: like ``.grad``, S and N add up over backward passes (micro-batches: N is
    the sum of their sizes; divide each micro-batch's mean loss by their number, as usual, so
    that ``.grad`` is the mean and S is Σ (g_i/N)² in the "mean" convention), until
    ``zero_()``, or ``zero_grad()`` / ``step(sum_sq=helper)`` of an autolr.torch optimizer
    (which zero the helper they were given). ``torch.nn.utils.clip_grad_norm_`` scales
    ``.grad`` only: S stays that of the unclipped per-sample gradients. With an AMP
    ``GradScaler`` pass ``scaler=``: S is then divided by ``scaler.get_scale()²`` when read.

    Sample i is index i of dim 0 of each layer's input (dim 1 for modules with
    ``batch_first=False``, such as ``nn.MultiheadAttention`` by default). Forms and cost per step:

    * ``Linear``, 2-D input (N, in): S_W = (δ⊙δ)ᵀ(a⊙a), S_b = Σ_n δ⊙δ — one extra matmul.
    * ``Linear``, input (N, …, in): g_i = Σ_t δ_{i,t} a_{i,t}ᵀ is a sum over positions, so its
      square is no product of squares: per-sample gradients are formed in chunks of samples,
      memory ``chunk·out·in`` floats with ``chunk·out·in ≤ max_chunk_elements``.
    * ``Conv1d/2d/3d``: per-sample weight gradients from torch's own weight-gradient kernel
      (``torch.nn.grad.conv*d_weight``), a chunk of samples at a time as the groups of one
      convolution over their channels side by side (sample i is group i, or groups i·G … for
      a grouped conv): memory ``chunk·(C·K·L + O·(C/groups)·K)`` floats at most (K = kernel
      elements, L = output positions; the kernel's own workspace, which may be less). With one
      input channel (C = 1) instead the input's windows (a strided view, copied a chunk at a
      time) times δ in one batched matmul, which is faster there: the same memory bound.
    * ``Embedding``: per sample, the rows of the indices it uses get the sum of their δ
      (index_add over (sample, index) pairs): memory of one δ-sized tensor; never a (V, D) per
      sample. ``padding_idx`` rows get no gradient; ``scale_grad_by_freq`` couples the samples
      and is refused.
    * ``LayerNorm``, ``GroupNorm``, ``BatchNorm*`` in eval mode: g_i(weight) = Σ_positions δ⊙x̂,
      g_i(bias) = Σ_positions δ, with x̂ the normalised input recomputed from the saved input:
      memory of one input-sized tensor and N × the parameters. ``BatchNorm`` in training mode
      (or without running statistics) normalises with the batch's statistics, which couples
      the samples: its forward raises ``autolr.Error``.
    * ``MultiheadAttention`` (in_proj_weight/bias or q/k/v_proj_weight, bias_k/v, out_proj):
      the projections act on sequences, so per-sample gradients must be formed (as for a
      Linear over positions); they come from ``torch.func`` (vmap over samples of the gradient
      of ⟨attention(x_i), δ_i⟩) in chunks: memory ``chunk·(parameters + the layer's
      activations of one sample)``. Attention dropout in training mode is refused (the mask of
      the forward pass cannot be reproduced per sample); the attention weights output must not
      enter the loss.
    * Any other module with trainable parameters of its own: the same ``torch.func`` fallback
      over that module and its first tensor output (same memory bound; the module must treat
      samples independently and work under ``torch.func.vmap``, else its error is raised with
      the module named).

    ``max_chunk_elements`` (default 2^20 floats, 4 MiB) bounds every chunk. The default keeps a
    chunk's per-sample gradients in cache while they are squared and summed; a larger bound
    sends them to memory and is slower, not faster (benches/torch_adapter.py --sum-sq-only).

    **FSDP2** (``fully_shard``; README "More than one process"): created after ``fully_shard``,
    the helper holds the DTensor parameters; its hooks see the unsharded parameters FSDP2 swaps
    in for the forward and backward passes, so S is formed per whole parameter, and read back
    (``sum_sq_tensors`` of a DTensor parameter or of its local tensor, as an optimizer over the
    shards holds) as this rank's dim-0 shard of it. ``sum_sq_over_ranks`` (and
    ``step(sum_sq=helper)`` with data-parallel ranks) reduce-scatters the whole S over the ranks.

    Limitations: a module called more than once per forward pass (shared weights) gets the sum
    of each call's S, not the S of the summed gradient. ``remove()`` takes the hooks off.
    """

    def __init__(self, model, reduction="mean", max_chunk_elements=1 << 20, scaler=None):
        if reduction not in ("mean", "sum"):
            raise Error(f"reduction is {reduction!r}; accepted: 'mean' (L = (1/N) Σ ℓ_i) or 'sum' (L = Σ ℓ_i)")
        if int(max_chunk_elements) < 1:
            raise Error(f"max_chunk_elements is {max_chunk_elements}; it must be >= 1")
        self.reduction = reduction
        self.max_chunk_elements = int(max_chunk_elements)
        self.scaler = scaler
        self._sums = {}    # id(param) -> tensor
        self._counts = {}  # id(param) -> samples seen since the last zero_()
        self._covered = set()
        # FSDP2: the parameters each hooked module held at creation (DTensors), by the name its
        # hooks find the parameters under that FSDP2 swaps in; id(swapped in) -> id(registered)
        self._registered = {}
        self._alias = {}
        self._handles = []
        self._replaying = False
        for module in model.modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if isinstance(module, torch.nn.MultiheadAttention):
                own += [p for p in module.out_proj.parameters() if p.requires_grad]
                hook = self._functional_hook
            elif isinstance(module, _CLOSED_FORM):
                hook = self._forward_hook
            elif any(isinstance(m, torch.nn.MultiheadAttention) and module is m.out_proj for m in model.modules()):
                continue  # MultiheadAttention's out_proj: never called as a module, covered above
            elif own:
                hook = self._functional_hook
            else:
                continue
            if isinstance(module, _BATCHNORMS) and not own:
                continue
            self._handles.append(module.register_forward_hook(hook, with_kwargs=True))
            self._covered.update(id(p) for p in own)
            if any(_is_dtensor(p) for p in own):
                self._registered[module] = [(name, p) for name, p in _own_named(module) if id(p) in self._covered]
        if not self._covered:
            raise Error("SumGradSquared found no trainable parameters in the model")
        # The DTensor parameters, to find the one an optimizer's local shard belongs to.
        self._dtensors = [p for named in self._registered.values() for _, p in named]
        self._by_storage = {}  # (data_ptr, shape) of a DTensor's local tensor -> the DTensor

    @property
    def per_sample_scale(self):
        """"mean" for a mean-reduced loss (S = Σ (g_i/N)²), "sample" for a sum (S = Σ g_i²)."""
        return "mean" if self.reduction == "mean" else "sample"

    @property
    def batch_size(self):
        """N: the samples seen since the last ``zero_()`` (None before the first backward)."""
        counts = set(self._counts.values())
        if not counts:
            return None
        if len(counts) > 1:
            raise Error(f"the parameters saw different numbers of samples since the last zero_() ({sorted(counts)}): "
                        "a layer was not used in every forward pass, or a backward pass was cut short", "ALR_WRONG_STATE")
        return counts.pop()

    def zero_(self):
        """Forgets S and N (the next backward pass starts a new batch)."""
        self._sums = {}
        self._counts = {}

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    # hooks ---------------------------------------------------------------------------------------
    def _swapped_in(self, module):
        """FSDP2: maps the parameters `module` holds now (the unsharded ones it swaps in, new
        when it re-creates them) to the DTensors the helper registered."""
        for name, registered in self._registered.get(module, ()):
            current = module.get_parameter(name)
            if current is not registered:
                self._alias[id(current)] = id(registered)

    def _forward_hook(self, module, args, kwargs, output):
        if self._replaying or not torch.is_grad_enabled() or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        if isinstance(module, _BATCHNORMS) and (module.training or not module.track_running_stats):
            raise Error(f"SumGradSquared: {type(module).__name__} normalises with the batch's statistics in training mode, "
                        "which couples the samples, so per-sample gradients do not exist: use GroupNorm/LayerNorm, or "
                        "put the BatchNorm in eval() mode (running statistics)")
        if isinstance(module, torch.nn.Embedding) and module.scale_grad_by_freq:
            raise Error("SumGradSquared: Embedding(scale_grad_by_freq=True) scales by the batch's index counts, "
                        "which couples the samples: per-sample gradients do not exist")
        inputs = args[0] if args else next(iter(kwargs.values()))
        inputs = inputs.detach()
        output.register_hook(lambda grad: self._collect(module, inputs, grad.detach()))

    def _functional_hook(self, module, args, kwargs, output):
        if self._replaying or not torch.is_grad_enabled():
            return
        outputs = [output] if isinstance(output, torch.Tensor) else [o for o in output if isinstance(o, torch.Tensor)] \
            if isinstance(output, (tuple, list)) else []
        outputs = [o for o in outputs if o.requires_grad]
        if not outputs:
            return
        if isinstance(module, torch.nn.MultiheadAttention) and module.training and module.dropout > 0:
            raise Error("SumGradSquared: MultiheadAttention with dropout > 0 in training mode: the dropout mask "
                        "of the forward pass cannot be reproduced per sample; use dropout=0 (or eval())")
        self._swapped_in(module)
        call = _FunctionalCall(module, args, kwargs)
        # The output that gets the gradient (for attention: the first; its weights must not enter the loss).
        outputs[0].register_hook(lambda grad: self._with_no_grad(self._functional, module, call, grad.detach()))

    def _with_no_grad(self, fn, *args):
        with torch.no_grad():
            fn(*args)

    def _add(self, param, value, n):
        if param is None or not param.requires_grad:
            return
        key = self._alias.get(id(param), id(param))
        s = self._sums.get(key)
        self._sums[key] = value if s is None else s + value
        self._counts[key] = self._counts.get(key, 0) + int(n)

    def _chunks(self, n, per_sample_elements):
        step = max(1, self.max_chunk_elements // max(1, per_sample_elements))
        return [(s, min(n, s + step)) for s in range(0, n, step)]

    def _collect(self, module, a, d):
        self._swapped_in(module)  # at the backward pass: FSDP2 may have swapped after the forward hook
        with torch.no_grad():
            if isinstance(module, torch.nn.Linear):
                self._linear(module, a, d)
            elif isinstance(module, _CONVS):
                self._conv(module, a, d)
            elif isinstance(module, torch.nn.Embedding):
                self._embedding(module, a, d)
            else:
                self._norm(module, a, d)

    # closed forms ----------------------------------------------------------------------------------
    def _linear(self, module, a, d):
        if a.dim() == 1:  # torch accepts one sample without the batch dimension
            a, d = a.unsqueeze(0), d.unsqueeze(0)
        n = a.shape[0]
        if a.dim() == 2:
            d2 = d * d
            self._add(module.weight, d2.t() @ (a * a), n)
            self._add(module.bias, d2.sum(0), n)
            return
        a3 = a.reshape(n, -1, a.shape[-1])
        d3 = d.reshape(n, -1, d.shape[-1])
        sw = torch.zeros(module.weight.shape, dtype=d.dtype, device=d.device)  # the whole parameter's, under FSDP2 too
        for s, e in self._chunks(n, module.weight.numel()):
            g = torch.einsum("nto,nti->noi", d3[s:e], a3[s:e])  # per-sample weight gradients
            sw += (g * g).sum(0)
        gb = d3.sum(1)
        self._add(module.weight, sw, n)
        self._add(module.bias, (gb * gb).sum(0), n)

    def _conv(self, module, a, d):
        nd = len(module.kernel_size)
        if a.dim() == nd + 1:  # unbatched
            a, d = a.unsqueeze(0), d.unsqueeze(0)
        n, groups, out_ch, in_ch = a.shape[0], module.groups, module.out_channels, a.shape[1]
        if module.padding_mode == "zeros" and not isinstance(module.padding, str):
            padding = module.padding  # symmetric: the weight-gradient kernel pads, no padded copy
        else:
            padding = 0  # "same" (possibly asymmetric) or reflect/replicate/circular: pad as the forward did
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            if any(module._reversed_padding_repeated_twice):
                a = F.pad(a, module._reversed_padding_repeated_twice, mode=mode)
        positions = math.prod(d.shape[2:])
        if in_ch == 1:
            # One input channel (a grayscale image's first layer): torch's weight-gradient kernel
            # is slow there, for the model's own backward too; the input's windows (a strided
            # view, copied once) times δ in one batched matmul are faster.
            if padding != 0 and any(padding):
                a = F.pad(a, tuple(q for q in reversed(padding) for _ in range(2)))
            windows = a
            for i, (k, stride, dilation) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
                windows = windows.unfold(2 + i, dilation * (k - 1) + 1, stride)
            windows = windows[(Ellipsis, *(slice(None, None, dil) for dil in module.dilation))]
            windows = windows.permute(0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))  # n × 1 × K × positions

            def per_sample_weight_grads(s, e):
                m = e - s
                return torch.bmm(d[s:e].reshape(m, out_ch, positions), windows[s:e].reshape(m, -1, positions).transpose(1, 2)).reshape(m, -1)
        else:
            weight_grad = _CONV_WEIGHT_GRAD[nd]
            per_sample_weight = module.weight.shape[1:]

            def per_sample_weight_grads(s, e):
                # Sample i of the batch is group i of one convolution over the samples' channels
                # side by side, so its weight gradient (torch's own kernel) is sample i's:
                # chunk·O × C/G × K.
                m = e - s
                return weight_grad(a[s:e].reshape(1, m * in_ch, *a.shape[2:]), (m * out_ch, *per_sample_weight),
                                   d[s:e].reshape(1, m * out_ch, *d.shape[2:]), stride=module.stride, padding=padding,
                                   dilation=module.dilation, groups=m * groups).reshape(m, -1)
        sw = torch.zeros(module.weight.numel(), dtype=d.dtype, device=d.device)
        for s, e in self._chunks(n, module.weight.numel() + in_ch * math.prod(module.kernel_size) * positions):
            g = per_sample_weight_grads(s, e)
            sw += (g * g).sum(0)
        gb = d.reshape(n, out_ch, positions).sum(-1)
        self._add(module.weight, sw.reshape(module.weight.shape), n)
        self._add(module.bias, (gb * gb).sum(0), n)

    def _embedding(self, module, idx, d):
        if idx.dim() == 0:
            idx, d = idx.reshape(1), d.reshape(1, -1)
        n, vocab = idx.shape[0], module.num_embeddings
        rows = idx.reshape(n, -1).long()
        keys = (torch.arange(n, device=idx.device).unsqueeze(1) * vocab + rows).reshape(-1)
        d = d.reshape(keys.shape[0], -1)
        if module.padding_idx is not None:
            keep = rows.reshape(-1) != module.padding_idx
            keys, d = keys[keep], d[keep]
        unique, inverse = torch.unique(keys, return_inverse=True)
        per_sample_rows = torch.zeros((unique.shape[0], d.shape[1]), dtype=d.dtype, device=d.device).index_add_(0, inverse, d)
        s = torch.zeros(module.weight.shape, dtype=d.dtype, device=d.device).index_add_(0, unique % vocab, per_sample_rows * per_sample_rows)
        self._add(module.weight, s, n)

    def _norm(self, module, x, d):
        """LayerNorm / GroupNorm / BatchNorm (eval): per-sample Σ_positions δ⊙x̂ and Σ_positions δ."""
        if isinstance(module, torch.nn.LayerNorm):
            dims = tuple(range(x.dim() - len(module.normalized_shape), x.dim()))
            if x.dim() == len(module.normalized_shape):  # unbatched
                x, d, dims = x.unsqueeze(0), d.unsqueeze(0), tuple(i + 1 for i in dims)
            mean = x.mean(dims, keepdim=True)
            xhat = (x - mean) * torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + module.eps)
            n = x.shape[0]
            per_sample = lambda t: t.reshape(n, -1, *module.normalized_shape).sum(1)  # noqa: E731
        else:
            n, c = x.shape[0], x.shape[1]
            if isinstance(module, torch.nn.GroupNorm):
                xg = x.reshape(n, module.num_groups, -1)
                xhat = ((xg - xg.mean(-1, keepdim=True)) * torch.rsqrt(xg.var(-1, unbiased=False, keepdim=True) + module.eps)).reshape(x.shape)
            else:
                shape = (1, c) + (1,) * (x.dim() - 2)
                xhat = (x - module.running_mean.reshape(shape)) * torch.rsqrt(module.running_var.reshape(shape) + module.eps)
            per_sample = lambda t: t.reshape(n, c, -1).sum(-1)  # noqa: E731
        if module.weight is not None:
            gw = per_sample(d * xhat)
            self._add(module.weight, (gw * gw).sum(0), n)
        if module.bias is not None:
            gb = per_sample(d)
            self._add(module.bias, (gb * gb).sum(0), n)

    # torch.func: attention and the fallback --------------------------------------------------------
    def _functional(self, module, call, delta):
        try:
            from torch.func import grad, vmap
        except ImportError as e:  # torch < 2.0
            raise Error(f"SumGradSquared: {type(module).__name__} needs torch.func (torch >= 2.0)") from e
        self._swapped_in(module)
        names, tensors = call.parameters(lambda p: self._alias.get(id(p), id(p)) in self._covered)
        if not names:
            return
        n = call.n
        per_sample_elements = sum(t.numel() for t in tensors) + call.sample_elements()

        def inner(params, batched, delta_i):
            out = call.run(dict(zip(names, params)), batched)
            return (out * delta_i.unsqueeze(call.batch_dim)).sum()
        per_sample_grad = vmap(grad(inner), in_dims=(None, call.in_dims(), call.batch_dim), randomness="error")
        sums = [torch.zeros_like(t) for t in tensors]
        for s, e in self._chunks(n, per_sample_elements):
            self._replaying = True  # the replay runs the module's (and its children's) hooks: they stay out
            try:
                with torch.enable_grad(), warnings.catch_warnings():
                    # vmap has no batching rule for CPU flash attention and says so on every call
                    warnings.filterwarnings("ignore", message=".*have not yet implemented the batching rule")
                    grads = per_sample_grad(tensors, call.batched(s, e), delta.narrow(call.batch_dim, s, e - s))
            except Exception as err:
                raise Error(f"SumGradSquared: per-sample gradients of {type(module).__name__} through torch.func failed "
                            f"({type(err).__name__}: {err}); the module must treat samples independently") from err
            finally:
                self._replaying = False
            for acc, g in zip(sums, grads):
                acc += (g * g).sum(0)
        params = call.parameter_objects(names)
        for p, s in zip(params, sums):
            self._add(p, s, n)

    # read-back ---------------------------------------------------------------------------------------
    def sum_sq(self, params, scale=None):
        """S per parameter as float32 numpy arrays, in the order of ``params``; ``scale`` converts
        to "sample" (× N² from "mean") or "mean"; default: as collected (``per_sample_scale``)."""
        return [_to_array(s, f"sum_sq of {_describe(i, p)}") for i, (p, s) in enumerate(zip(params, self.sum_sq_tensors(params, scale)))]

    def sum_sq_tensors(self, params, scale=None):
        """As ``sum_sq``, as tensors on the parameters' device (what a CUDA optimizer takes). For
        an FSDP2 parameter (its DTensor or its local tensor): this rank's dim-0 shard of the whole
        parameter's S, over this rank's samples."""
        sums, sharded = self._whole(params, scale)
        return [s if d is None else _dim0_shard(s, d) for s, d in zip(sums, sharded)]

    def _sharded_of(self, p):
        """The registered DTensor `p` is, or whose local tensor `p` views (the storage FSDP2
        keeps from step to step), else None."""
        if _is_dtensor(p):
            return p if id(p) in self._covered else None
        if not isinstance(p, torch.Tensor):
            return None
        key = (p.data_ptr(), tuple(p.shape))
        if key not in self._by_storage:  # first use, or FSDP2 re-allocated its shards
            self._by_storage = {(t.data_ptr(), tuple(t.shape)): d for d in self._dtensors for t in (d.to_local(),)}
        return self._by_storage.get(key)

    def _whole(self, params, scale=None):
        """S of each whole parameter (scaled as `scale` says) and, per parameter, the DTensor
        it is a shard of (None for a parameter that is not sharded)."""
        out, sharded = [], []
        factor = 1.0
        if scale is not None and scale != self.per_sample_scale:
            if scale not in ("sample", "mean"):
                raise Error(f"scale is {scale!r}; accepted: 'sample', 'mean'")
            n2 = float(self.batch_size or 0) ** 2
            factor = n2 if scale == "sample" else 1.0 / n2
        if self.scaler is not None:
            factor /= float(self.scaler.get_scale()) ** 2
        for i, p in enumerate(params):
            d = self._sharded_of(p) if self._dtensors else None
            key = id(p) if d is None else id(d)
            if key not in self._covered:
                raise Error(f"{_describe(i, p)} is not a trainable parameter of the model given to SumGradSquared "
                            "(nor, under FSDP2, the local tensor of one; create the helper after fully_shard): it has no Σg²")
            s = self._sums.get(key)
            if s is None:
                raise Error(f"no Σg² for {_describe(i, p)} yet: run forward and backward (with gradients enabled) first", "ALR_WRONG_STATE")
            out.append(s * factor if factor != 1.0 else s)
            sharded.append(d)
        return out, sharded


class _FunctionalCall:
    """One forward call of a module, replayable per sample under torch.func: which tensor
    arguments are batched (and along which dim), and how to give one sample back its batch dim."""

    def __init__(self, module, args, kwargs):
        self.module = module
        self.args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        self.kwargs = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        attention = isinstance(module, torch.nn.MultiheadAttention)
        self.batch_dim = 1 if getattr(module, "batch_first", True) is False else 0
        first = next(a for a in self.args + list(self.kwargs.values()) if isinstance(a, torch.Tensor))
        if attention and first.dim() == 2:
            raise Error("SumGradSquared: unbatched MultiheadAttention input: add the batch dimension")
        self.n = first.shape[self.batch_dim]
        self.slots = []  # (container, key, dim the sample axis is at, restore)
        for key, value in list(enumerate(self.args)) + list(self.kwargs.items()):
            if not isinstance(value, torch.Tensor):
                continue
            dim, restore = self.batch_dim, lambda t, dim=self.batch_dim: t.unsqueeze(dim)
            if attention and key == "key_padding_mask":
                dim, restore = 0, lambda t: t.unsqueeze(0)
            elif attention and key == "attn_mask":
                if value.dim() == 2:
                    continue  # one mask for every sample
                value = value.reshape(self.n, -1, *value.shape[1:])  # (N·heads, L, S) -> N, heads, L, S
                dim, restore = 0, lambda t: t
            elif value.dim() <= dim or value.shape[dim] != self.n:
                continue
            self.slots.append((key, value, dim, restore))
        if attention:
            self.kwargs["need_weights"] = False

    def parameters(self, covered):
        """The names and values of the module's trainable parameters for which `covered(p)`."""
        own = [(k, v) for k, v in _own_named(self.module) if v.requires_grad and covered(v)]
        return [k for k, _ in own], [v.detach() for _, v in own]

    def parameter_objects(self, names):
        return [self.module.get_parameter(name) for name in names]

    def sample_elements(self):
        return sum(v[0].numel() if d == 0 else v.select(d, 0).numel() for _, v, d, _ in self.slots)

    def in_dims(self):
        return [d for _, _, d, _ in self.slots]

    def batched(self, s, e):
        return [v.narrow(d, s, e - s) for _, v, d, _ in self.slots]

    def run(self, params, batched):
        args, kwargs = list(self.args), dict(self.kwargs)
        for (key, _, _, restore), value in zip(self.slots, batched):
            if isinstance(key, int):
                args[key] = restore(value)
            else:
                kwargs[key] = restore(value)
        out = torch.func.functional_call(self.module, params, tuple(args), kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


# More than one process (README "More than one process", docs/algorithms.md §7) -------------------

def _is_dtensor(p):
    """Whether `p` is a DTensor (FSDP2's sharded parameters); False on a torch without them."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.4, or no distributed support
        return False
    return isinstance(p, DTensor)


def _own_named(module):
    """The parameters SumGradSquared's hook on `module` covers, by name: the module's own, and
    MultiheadAttention's out_proj's (never called as a module)."""
    own = list(module.named_parameters(recurse=False))
    if isinstance(module, torch.nn.MultiheadAttention):
        own += [(f"out_proj.{k}", v) for k, v in module.out_proj.named_parameters()]
    return own


def _dim0_rows(d):
    """This rank's rows [start, end) of dim 0 of FSDP2's DTensor `d`, and the rows of a full
    chunk: DTensor's Shard(0) splits n rows as torch.chunk does, ⌈n/K⌉ rows per rank over K
    ranks, the last ones shorter or empty (7 rows over 3 ranks: 3, 3, 1)."""
    placements, mesh = tuple(d.placements), d.device_mesh
    if mesh.ndim != 1 or len(placements) != 1 or not placements[0].is_shard(0):
        raise Error(f"a DTensor parameter (shape {tuple(d.shape)}) is placed {placements} over a {mesh.ndim}-D mesh; "
                    "autolr.torch takes FSDP2's default sharding, Shard(0) over a 1-D mesh (fully_shard without "
                    "HSDP or shard_placement_fn)", "ALR_UNSUPPORTED")
    n, world, rank = d.shape[0], mesh.size(), mesh.get_local_rank()
    chunk = -(-n // world)
    start = min(rank * chunk, n)
    end = min(start + chunk, n)
    if end - start != d.to_local().shape[0]:
        raise Error(f"a DTensor parameter (shape {tuple(d.shape)}) holds {d.to_local().shape[0]} rows on rank {rank} of "
                    f"{world}, not the {end - start} of torch.chunk's split", "ALR_UNSUPPORTED")
    return start, end, chunk


def _dim0_shard(whole, d):
    """This rank's dim-0 shard of `whole`, a tensor of the shape of FSDP2's DTensor `d`."""
    start, end, _ = _dim0_rows(d)
    return whole[start:end]


def _reduce_scatter_dim0(sums, sharded, group):
    """Every rank's `sums` (whole parameters) summed over the ranks of `group`, and this rank's
    dim-0 shard of each kept, in one reduce_scatter_tensor laid out as FSDP2 lays out its
    gradients': each parameter padded to K·⌈n/K⌉ rows, rank r's ⌈n/K⌉ rows of every parameter
    next to each other. Each rank sends and receives (K-1)/K of the padded float32 sums, what
    FSDP2's float32 gradient reduction costs (an all-reduce would cost twice that)."""
    import torch.distributed as dist
    world = dist.get_world_size(group)
    rows = [_dim0_rows(d) for d in sharded]
    send = torch.cat([F.pad(s.reshape(s.shape[0], -1), (0, 0, 0, world * chunk - s.shape[0])).reshape(world, -1)
                      for s, (_, _, chunk) in zip(sums, rows)], dim=1).reshape(-1)
    mine = torch.empty(send.numel() // world, dtype=send.dtype, device=send.device)
    dist.reduce_scatter_tensor(mine, send, group=group)
    out, at = [], 0
    for s, (start, end, chunk) in zip(sums, rows):
        width = chunk * (s.numel() // s.shape[0])
        out.append(mine[at:at + width].reshape(chunk, *s.shape[1:])[:end - start])
        at += width
    return out


def _distributed():
    """torch.distributed when it is initialised, else None."""
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def _data_parallel_group(setting):
    """The process group of data-parallel replicas for AutoLR's ``data_parallel``, or None."""
    if setting is False:
        return None
    dist = _distributed()
    if dist is None:
        if setting is None:
            return None
        raise Error(f"data_parallel is {setting!r} but torch.distributed is not initialised (init_process_group first)")
    if setting is True:
        setting = None
    elif setting is not None and not isinstance(setting, dist.ProcessGroup):
        raise Error(f"data_parallel is a {type(setting).__name__}; accepted: None (automatic), True, False or a ProcessGroup")
    group = setting or dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


class _DeviceDoubles:
    """n float64 values at a CUDA address, as ``__cuda_array_interface__`` describes them to
    ``torch.as_tensor`` (a view, no copy; no stream: the caller orders the use)."""

    def __init__(self, pointer, n):
        self.__cuda_array_interface__ = {"shape": (n,), "typestr": "<f8", "data": (pointer, False),
                                         "version": 3, "stream": None}


def all_reduce(group=None, timeout=None):
    """A ``reduce`` callback over ``torch.distributed``: the library's float64 values are
    combined in place over ``group`` (default: every rank) by ``all_reduce`` with SUM or MAX.
    ``timeout`` (a ``datetime.timedelta``): a rank that does not join the collective within it
    fails the step on the ranks that did (ALR_CALLBACK_FAILED, nothing changed there) instead
    of leaving them waiting for the process group's timeout. A CPU optimizer's values are a
    CPU tensor (gloo); a CUDA optimizer's are reduced by the device form ``on_device``: a CUDA
    tensor viewing the library's device memory, all-reduced (NCCL) in order on the optimizer's
    stream, with no host synchronisation (NCCL's ``wait`` orders the stream, not the host).
    Never run: no GPU has been lent (tests/gpu/parity_capi.py has the check)."""
    import torch.distributed as dist
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}

    def combine(values, op):
        work = dist.all_reduce(values, op=ops[op], group=group, async_op=True)
        if timeout is None:
            work.wait()
        else:
            work.wait(timeout)

    def reduce(values, op):
        combine(torch.from_numpy(values), op)

    def on_device(pointer, n, op, stream):
        values = torch.as_tensor(_DeviceDoubles(pointer, n))
        # step() runs under the optimizer's stream (it checks): then the collective is ordered there already
        same = torch.cuda.current_stream(values.device).cuda_stream == stream
        with contextlib.nullcontext() if same else torch.cuda.stream(torch.cuda.ExternalStream(stream, device=values.device)):
            combine(values, op)
    reduce.on_device = on_device
    return reduce


def sum_sq_over_ranks(helper, params, group=None, batch_size=None, scale=None):
    """Σ_i g_i² and N of the whole batch when every rank of ``group`` (default: every rank)
    collected its own part of it in ``helper`` (a ``SumGradSquared``): returns (the sums per
    parameter in the "sample" convention, N). The ranks' values are converted to "sample" with
    their own N (``batch_size``, default the helper's; ``scale``, default the helper's, says
    how they were collected) and added, in one all-reduce of Σg² and one of N. DDP averages the
    ranks' mean gradients, which is the mean over the whole batch when the ranks' batches have
    the same size.

    FSDP2: a parameter given as its DTensor or its local tensor gets this rank's dim-0 shard of
    the whole batch's Σg² (aligned with the local tensor the optimizer steps), the ranks'
    whole-parameter Σg² reduce-scattered over the DTensors' mesh (one more gradient-sized
    reduction per step, as FSDP2 reduces the gradients), which must be ``group``'s ranks."""
    dist = _distributed()
    if dist is None:
        raise Error("sum_sq_over_ranks needs torch.distributed initialised (init_process_group)")
    local = batch_size if batch_size is not None else helper.batch_size
    if local is None:
        raise Error("no batch size: run forward and backward with the SumGradSquared first, or pass batch_size", "ALR_WRONG_STATE")
    scale = scale or helper.per_sample_scale
    if scale not in ("sample", "mean"):
        raise Error(f"scale is {scale!r}; accepted: 'sample', 'mean'")
    sums, sharded = helper._whole(params)
    factor = float(local) ** 2 if scale == "mean" else 1.0
    sums = [s.detach().float() * factor for s in sums]
    out = [None] * len(sums)
    replicated = [i for i, d in enumerate(sharded) if d is None]
    if replicated:
        flat = torch.cat([sums[i].reshape(-1) for i in replicated])
        dist.all_reduce(flat, group=group)
        start = 0
        for i in replicated:
            out[i] = flat[start:start + sums[i].numel()].reshape(sums[i].shape)
            start += sums[i].numel()
    shards = [i for i, d in enumerate(sharded) if d is not None]
    if shards:
        mesh = sharded[shards[0]].device_mesh
        ranks = dist.get_process_group_ranks(group or dist.group.WORLD)
        if any(sharded[i].device_mesh != mesh for i in shards) or dist.get_process_group_ranks(mesh.get_group()) != ranks:
            raise Error(f"the FSDP2 parameters' mesh is not the data-parallel ranks {ranks}: Σg² is reduced over the "
                        "ranks that split the batch, which must be the ranks the parameters are sharded over", "ALR_UNSUPPORTED")
        for i, shard in zip(shards, _reduce_scatter_dim0([sums[i] for i in shards], [sharded[i] for i in shards], mesh.get_group())):
            out[i] = shard
    n = torch.tensor([int(local)], dtype=torch.int64)
    dist.all_reduce(n, group=group)
    return out, int(n[0])


class ZeroShards:
    """ZeRO-1 over ``torch.distributed``: this rank's contiguous slice of every parameter
    (flattened), as views of the parameters' own storage, for an autolr.torch optimizer created
    with ``reduce=all_reduce(group)`` over ``params`` (or param groups of them). Rank r of K holds
    elements [⌊n·r/K⌋, ⌊n·(r+1)/K⌋) of a parameter of n elements (uneven when K does not divide
    n; every slice must have an element). Per step, after the backward pass (DDP has averaged
    the gradients): ``shard_grads()`` gives the views their slices of the gradients, the
    optimizer steps them (``slice(...)`` cuts per-parameter inputs such as
    ``sum_sq_over_ranks``' sums), and ``gather()`` gives every rank the parameters the others
    stepped. The optimizer's state is 1/K of the unsharded one; the library reduces its
    per-step sums through the callback (README "More than one process")."""

    def __init__(self, params, group=None):
        dist = _distributed()
        if dist is None:
            raise Error("ZeroShards needs torch.distributed initialised (init_process_group)")
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.tensors = list(params)
        self._cuts = []
        for i, p in enumerate(self.tensors):
            _check_param(i, p)
            n = p.numel()
            if n < self.world:
                raise Error(f"{_describe(i, p)} has {n} elements, fewer than the {self.world} ranks: every rank needs a slice")
            self._cuts.append([(n * r // self.world, n * (r + 1) // self.world) for r in range(self.world)])
        self.params = self.slice(p.detach() for p in self.tensors)

    def slice(self, tensors):
        """This rank's slice of each full-size tensor (one per parameter, in order), flattened."""
        tensors = list(tensors)
        if len(tensors) != len(self.tensors):
            raise Error(f"got {len(tensors)} tensors, the shards have {len(self.tensors)} parameters", "ALR_SHAPE_MISMATCH")
        out = []
        for i, (t, cut) in enumerate(zip(tensors, self._cuts)):
            if t.numel() != self.tensors[i].numel():
                raise Error(f"tensor {i} has {t.numel()} elements, {_describe(i, self.tensors[i])} has {self.tensors[i].numel()}",
                            "ALR_SHAPE_MISMATCH")
            a, b = cut[self.rank]
            out.append(t.reshape(-1)[a:b])
        return out

    def shard_grads(self):
        """Sets each view's ``.grad`` to its slice of the parameter's (None stays None)."""
        for view, p, cut in zip(self.params, self.tensors, self._cuts):
            a, b = cut[self.rank]
            view.grad = None if p.grad is None else p.grad.detach().contiguous().reshape(-1)[a:b]

    @torch.no_grad()
    def gather(self):
        """Every rank's slices into every rank's parameters: one all-gather of each rank's slices
        (concatenated, padded to the longest rank's), copied into place."""
        import torch.distributed as dist
        mine = torch.cat([p.detach().reshape(-1)[cut[self.rank][0]:cut[self.rank][1]] for p, cut in zip(self.tensors, self._cuts)])
        longest = max(sum(cut[r][1] - cut[r][0] for cut in self._cuts) for r in range(self.world))
        buffers = [torch.empty(longest, dtype=torch.float32) for _ in range(self.world)]
        dist.all_gather(buffers, torch.nn.functional.pad(mine, (0, longest - mine.numel())), group=self.group)
        for r, buffer in enumerate(buffers):
            start = 0
            for p, cut in zip(self.tensors, self._cuts):
                a, b = cut[r]
                p.detach().view(-1)[a:b].copy_(buffer[start:start + b - a])
                start += b - a
