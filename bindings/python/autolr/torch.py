"""autolr.torch: every autolr algorithm as a ``torch.optim.Optimizer``, and ``SumGradSquared``.

    import torch, autolr.torch as alt

    opt = alt.Adam(model.parameters(), lr=1e-3)            # or alt.AutoLR(params, "adam", lr=1e-3)
    loss = F.cross_entropy(model(x), y); opt.zero_grad(); loss.backward(); opt.step()

    sgs = alt.SumGradSquared(model)                        # Σ_i g_i² for Linear / Conv2d layers
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
``.half()``, ``p.data = ...``): ``step`` detects a moved storage and raises ``autolr.Error``.
Create the optimizer after moving the model. ``model.load_state_dict`` copies in place and is fine.

Param groups: each torch param group is one autolr group. Options given to the constructor
are set for every group; a key of a param group whose value differs from them is set for that
group only (``set_option(name, value, group=g)``), so ``[{"params": a}, {"params": b, "lr": 0.1}]``
works as in torch. A changed ``param_groups[g][name]`` (an LR scheduler's ``lr``) is sent to the
library at the next ``step``. ``param_groups[g]["lr"]`` stays the setting; the learning rate the
algorithm actually used is ``opt.lr[g]`` (and ``opt.momentum[g]``, ``opt.telemetry()``).

``state_dict()`` is torch's dict plus ``"autolr"``: the library's checkpoint bytes (versioned,
checksummed; ``torch.save`` stores them as they are). ``load_state_dict`` restores both.
"""
import inspect

import numpy as np
import torch
import torch.nn.functional as F

from . import CudaOptimizer as _CudaCore
from . import Error
from . import Optimizer as _Core

__all__ = [
    "AutoLR", "SGD", "Momentum", "Adam", "AdamW", "Adagrad", "RMSprop", "AutoSGD", "AutoAdam",
    "AutoAdagrad", "GI", "TLR", "VSGD", "SumGradSquared",
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


def _accepts_backward_kwarg(fn):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "backward" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class AutoLR(torch.optim.Optimizer):
    """Any autolr algorithm as a ``torch.optim.Optimizer``.

    ``params``: ``model.parameters()`` or a list of param-group dicts. ``algorithm``: one of
    ``autolr.ALGORITHMS``. ``options``: by name (ALGORITHMS.md), e.g. ``lr=1e-3``, ``nu=0.9``,
    ``base="adam"`` for GI. Unused parameters (``.grad is None``) step with a zero gradient.
    """

    def __init__(self, params, algorithm, **options):
        strings = {k: v for k, v in options.items() if isinstance(v, str)}
        numbers = {k: v for k, v in options.items() if not isinstance(v, str)}
        self._building = True
        super().__init__(params, dict(numbers))
        self._building = False
        self.algorithm = algorithm
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
        self._pointers = [p.data_ptr() for p in tensors]
        self._zeros = {}
        if self._device.type == "cuda":
            self._views = None
            self._stream = torch.cuda.current_stream(self._device).cuda_stream
            self._core = _CudaCore(algorithm, [p.numel() for p in tensors], groups=groups,
                                   device=self._device.index, stream=self._stream, **strings)
        else:
            self._views = [p.detach().numpy() for p in tensors]  # share the tensors' storage
            self._core = _Core(algorithm, self._views, groups=groups, **strings)
        for name, value in numbers.items():
            self._core.set_option(name, value)
        self._synced = [{} for _ in self.param_groups]
        self._foreign = set()
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

    def add_param_group(self, param_group):
        if not getattr(self, "_building", False):
            raise Error("autolr.torch: param groups cannot be added after the optimizer is created "
                        "(the library registers its tensors once); create a new optimizer")
        super().add_param_group(param_group)

    # options --------------------------------------------------------------------------------------
    def _sync_options(self, initial=None):
        """Sends param-group values that differ from what the library holds. At construction an
        unknown name is an error (the library lists the accepted ones); later, keys that are not
        options of this algorithm (e.g. an LR scheduler's "initial_lr") are left alone."""
        for g, group in enumerate(self.param_groups):
            synced = self._synced[g]
            for name, value in group.items():
                if name == "params" or name in self._foreign:
                    continue
                if isinstance(value, torch.Tensor) and value.numel() == 1:
                    value = float(value)
                if isinstance(value, str) or not isinstance(value, (bool, int, float, np.floating, np.integer)):
                    continue
                if name in synced and synced[name] == value:
                    continue
                if initial is not None and name in initial and initial[name] == value:
                    synced[name] = value  # already set for every group
                    continue
                if initial is None and not self._is_option(name):
                    self._foreign.add(name)
                    continue
                self._core.set_option(name, value, group=g)
                synced[name] = value

    def _is_option(self, name):
        try:
            self._core.get_option(name, group=0)
            return True
        except Error:
            return False

    def set_option(self, name, value, group=None):
        """Sets an autolr option directly (every group, or one); mirrors ``autolr.Optimizer``."""
        self._core.set_option(name, value, group=group)
        targets = range(len(self.param_groups)) if group is None else [group]
        if not isinstance(value, str):
            for g in targets:
                if name in self.param_groups[g]:
                    self.param_groups[g][name] = value
                    self._synced[g][name] = value

    # the step -------------------------------------------------------------------------------------
    def _check_storage(self):
        for i, (p, ptr) in enumerate(zip(self._tensors, self._pointers)):
            if p.data_ptr() != ptr or p.device != self._device or p.dtype != torch.float32:
                raise Error(f"{_describe(i, p)} was re-allocated after the optimizer was created "
                            "(model.to(), .half(), p.data = ...); autolr.torch keeps views of the "
                            "original storage: create the optimizer after moving the model", "ALR_WRONG_STATE")

    def _input(self, x, what, copy=False):
        """One input buffer as the library's binding takes it on this optimizer's device."""
        if self._views is None:
            return _to_device(x, what, self._device)
        return _to_array(x, what, copy=copy)

    def _grads(self, copy):
        out = []
        for i, p in enumerate(self._tensors):
            if p.grad is None:
                z = self._zeros.get(i)
                if z is None:
                    z = self._zeros[i] = self._input(torch.zeros_like(p), "zeros")
                out.append(z)
            else:
                out.append(self._input(p.grad, f"grad of {_describe(i, p)}", copy=copy))
        return out

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
        self._core.step(pointers(self._tensors), pointers(grads), sum_sq=pointers(kwargs["sum_sq"]),
                        per_sample=pointers(per_sample), per_sample_scale=kwargs["per_sample_scale"],
                        batch_size=batch_size)

    @torch.no_grad()
    def step(self, closure=None, *, loss=None, sum_sq=None, per_sample=None, per_sample_scale=None,
             batch_size=None, curvature=None):
        """One step over every parameter; returns the closure's loss (or None).

        ``closure``: as in torch, re-evaluates the model on the batch and returns the loss; it is
        run (under ``torch.enable_grad``) before the step and its backward pass gives the
        gradients. Algorithms that re-evaluate call it again during the step:

        * GI: after the move, for the loss at the new parameters. If the closure takes a
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
        self._check_storage()
        self._sync_options()
        gi = self.algorithm == "gi"
        vsgd = self.algorithm.startswith("vsgd-")
        result = None
        if closure is not None:
            with torch.enable_grad():
                result = closure()
            if result is None and gi:
                raise Error("the closure returned None; GI needs the loss it computes")
        reruns = closure is not None and (gi or (vsgd and curvature is None))
        # A closure run during the step may overwrite .grad in place: keep copies then.
        grads = self._grads(copy=reruns)
        kwargs = {}
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
            kwargs["loss"] = float(loss)
        elif gi and result is not None:
            kwargs["loss"] = float(result)
        if closure is not None and gi:
            if _accepts_backward_kwarg(closure):
                def after():
                    with torch.no_grad():
                        return float(closure(backward=False))
            else:
                def after():
                    with torch.enable_grad():
                        return float(closure())
            kwargs["closure"] = after
        if closure is not None and vsgd and curvature is None:
            kwargs["grad_closure"] = lambda points: self._grad_at(closure, points)
        if self._views is None:
            self._step_cuda(grads, kwargs)
        else:
            self._core.step(grads, **kwargs)
        return result

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
        self._core.report_loss(float(loss_after))

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
        """{name: [value per group]} of the algorithm's internal scalars (ALGORITHMS.md §5)."""
        return self._core.telemetry()

    # checkpoints ----------------------------------------------------------------------------------
    def state_dict(self):
        state = super().state_dict()
        state["autolr"] = self._core.state_dict()
        state["autolr_algorithm"] = self.algorithm
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        blob = state.pop("autolr", None)
        algorithm = state.pop("autolr_algorithm", self.algorithm)
        if blob is None:
            raise Error("this state_dict has no 'autolr' entry: it was not saved by an autolr.torch optimizer", "ALR_BAD_CHECKPOINT")
        if algorithm != self.algorithm:
            raise Error(f"this state_dict is of '{algorithm}', the optimizer is '{self.algorithm}'", "ALR_BAD_CHECKPOINT")
        self._core.load_state_dict(bytes(blob))  # checked first: on failure nothing changes
        super().load_state_dict(state)
        # The library's checkpoint holds its options; param_groups now hold the same values.
        self._synced = [{k: v for k, v in group.items() if k != "params"} for group in self.param_groups]


# Thin named classes ------------------------------------------------------------------------------

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


# Σ_i g_i² without per-sample gradients ---------------------------------------------------------

class SumGradSquared:
    """Collects S = Σ_i g_i² for the weights and biases of every ``nn.Linear`` and ``nn.Conv2d``
    in ``model`` during the backward pass, without forming per-sample gradients for dense inputs.

    A forward hook saves each layer's input activations ``a`` (only while gradients are enabled)
    and registers a gradient hook on the layer's output, which receives ``δ = ∂L/∂output``.
    Let ℓ_i be sample i's own loss and L the loss that is backpropagated:

    * ``reduction="mean"`` (L = (1/N) Σ ℓ_i, e.g. ``F.cross_entropy`` by default): the output
      gradient of sample i is ∂ℓ_i/∂out / N, and the helper's S holds Σ_i (g_i/N)² — BackPACK's
      SumGradSquared convention, ``per_sample_scale="mean"``.
    * ``reduction="sum"`` (L = Σ ℓ_i): S holds Σ_i g_i², ``per_sample_scale="sample"``. (Then
      ``.grad`` is the sum, not the mean gradient autolr expects: prefer mean-reduced losses.)

    The values are kept as computed (no N² rescaling); ``per_sample_scale`` says which they are
    and ``AutoLR.step(sum_sq=helper)`` passes it along with ``batch_size``. ``sum_sq(params,
    scale="sample")`` converts.

    Cost per layer and step:

    * Linear with 2-D input (N, in): S_W = (δ⊙δ)ᵀ (a⊙a), S_b = Σ_n δ⊙δ — one extra matmul,
      memory of one extra activation-sized and one output-gradient-sized tensor.
    * Linear with more dims (N, …, in): per-sample gradients are sums over positions, so they
      are formed, in chunks of samples: memory ``chunk·out·in`` (see ``max_chunk_elements``).
    * Conv2d: via ``torch.nn.functional.unfold``: the unfolded input costs memory
      N·C·k_h·k_w·L floats (L = output positions), plus the per-sample weight gradients of a chunk
      of samples, ``chunk·out·(C/groups)·k_h·k_w`` floats, and one batched matmul.

    Limitations: a module called more than once per forward pass (shared weights) gets S of its
    last call only; each backward pass overwrites S (no accumulation across micro-batches);
    parameters outside Linear/Conv2d layers have no S (``sum_sq`` raises for them).
    ``remove()`` takes the hooks off.
    """

    def __init__(self, model, reduction="mean", max_chunk_elements=1 << 24):
        if reduction not in ("mean", "sum"):
            raise Error(f"reduction is {reduction!r}; accepted: 'mean' (L = (1/N) Σ ℓ_i) or 'sum' (L = Σ ℓ_i)")
        self.reduction = reduction
        self.max_chunk_elements = int(max_chunk_elements)
        self.batch_size = None
        self._sums = {}  # id(param) -> tensor
        self._covered = set()
        self._handles = []
        for module in model.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                self._handles.append(module.register_forward_hook(self._forward_hook))
                for p in (module.weight, module.bias):
                    if p is not None:
                        self._covered.add(id(p))
        if not self._handles:
            raise Error("SumGradSquared found no nn.Linear or nn.Conv2d in the model")

    @property
    def per_sample_scale(self):
        """"mean" for a mean-reduced loss (S = Σ (g_i/N)²), "sample" for a sum (S = Σ g_i²)."""
        return "mean" if self.reduction == "mean" else "sample"

    def remove(self):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _forward_hook(self, module, inputs, output):
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        activations = inputs[0].detach()
        output.register_hook(lambda grad: self._collect(module, activations, grad.detach()))

    def _set(self, param, value):
        if param is not None and param.requires_grad:
            self._sums[id(param)] = value

    def _record_batch(self, n):
        self.batch_size = int(n)

    def _chunks(self, n, per_sample_elements):
        step = max(1, self.max_chunk_elements // max(1, per_sample_elements))
        return [(s, min(n, s + step)) for s in range(0, n, step)]

    def _collect(self, module, a, d):
        unbatched = a.dim() == (1 if isinstance(module, torch.nn.Linear) else 3)
        if unbatched:  # torch accepts one sample without the batch dimension
            a, d = a.unsqueeze(0), d.unsqueeze(0)
        with torch.no_grad():
            self._record_batch(a.shape[0])
            if isinstance(module, torch.nn.Linear):
                self._linear(module, a, d)
            else:
                self._conv2d(module, a, d)

    def _linear(self, module, a, d):
        n = a.shape[0]
        if a.dim() == 2:
            d2 = d * d
            self._set(module.weight, d2.t() @ (a * a))
            self._set(module.bias, d2.sum(0))
            return
        a3 = a.reshape(n, -1, a.shape[-1])
        d3 = d.reshape(n, -1, d.shape[-1])
        sw = torch.zeros_like(module.weight)
        for s, e in self._chunks(n, module.weight.numel()):
            g = torch.einsum("nto,nti->noi", d3[s:e], a3[s:e])  # per-sample weight gradients
            sw += (g * g).sum(0)
        gb = d3.sum(1)
        self._set(module.weight, sw)
        self._set(module.bias, (gb * gb).sum(0))

    def _conv2d(self, module, a, d):
        n = a.shape[0]
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            a = F.pad(a, module._reversed_padding_repeated_twice, mode=mode)
            padding = 0
        else:
            padding = module.padding
        unfolded = F.unfold(a, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
        groups, out_ch = module.groups, module.out_channels
        positions = unfolded.shape[-1]
        unfolded = unfolded.reshape(n, groups, -1, positions)        # N, G, (C/G)·kh·kw, L
        d = d.reshape(n, groups, out_ch // groups, positions)        # N, G, O/G, L
        sw = torch.zeros((groups, out_ch // groups, unfolded.shape[2]), dtype=d.dtype, device=d.device)
        for s, e in self._chunks(n, module.weight.numel()):
            g = torch.einsum("ngol,ngkl->ngok", d[s:e], unfolded[s:e])  # per-sample weight gradients
            sw += (g * g).sum(0)
        gb = d.sum(-1).reshape(n, out_ch)
        self._set(module.weight, sw.reshape(module.weight.shape))
        self._set(module.bias, (gb * gb).sum(0))

    def sum_sq(self, params, scale=None):
        """S per parameter as float32 numpy arrays, in the order of ``params``; ``scale`` converts
        to "sample" (× N² from "mean") or "mean"; default: as collected (``per_sample_scale``)."""
        return [_to_array(s, f"sum_sq of {_describe(i, p)}") for i, (p, s) in enumerate(zip(params, self.sum_sq_tensors(params, scale)))]

    def sum_sq_tensors(self, params, scale=None):
        """As ``sum_sq``, as tensors on the parameters' device (what a CUDA optimizer takes)."""
        out = []
        factor = 1.0
        if scale is not None and scale != self.per_sample_scale:
            if scale not in ("sample", "mean"):
                raise Error(f"scale is {scale!r}; accepted: 'sample', 'mean'")
            n2 = float(self.batch_size or 0) ** 2
            factor = n2 if scale == "sample" else 1.0 / n2
        for i, p in enumerate(params):
            if id(p) not in self._covered:
                raise Error(f"{_describe(i, p)} is not the weight or bias of an nn.Linear or nn.Conv2d: "
                            "SumGradSquared has no Σg² for it")
            s = self._sums.get(id(p))
            if s is None:
                raise Error(f"no Σg² for {_describe(i, p)} yet: run forward and backward (with gradients enabled) first", "ALR_WRONG_STATE")
            out.append(s * factor if factor != 1.0 else s)
        return out
