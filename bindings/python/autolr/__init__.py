"""autolr: learning rates (and momentum) that set themselves — Python binding.

Pure ctypes over the C ABI; needs only numpy. Parameters are C-contiguous float32 numpy arrays
updated in place (zero-copy). See DESIGN.md's "Python API" for the contract.
"""
import ctypes
import inspect
import math
import numbers
import operator

import numpy as np

from . import _ffi
from ._lib import lib

__all__ = ["Optimizer", "CudaOptimizer", "Error", "__version__", "ABI_VERSION", "ALGORITHMS", "CUDA_ALGORITHMS"]

__version__ = lib.alr_version().decode()
ABI_VERSION = lib.alr_abi_version()

# The names the library accepts (alr_algorithms), and those with CUDA kernels (creating one on a
# GPU needs a library built with the `cuda` feature); the others run on the CPU only.
ALGORITHMS = tuple(lib.alr_algorithms(_ffi.ALR_DEVICE_CPU).decode().split(","))
CUDA_ALGORITHMS = tuple(lib.alr_algorithms(_ffi.ALR_DEVICE_CUDA).decode().split(","))


def _takes_two_arguments(fn):
    """Whether `fn` can be called as fn(values, op); a callable without a signature (a builtin)
    is taken to have the documented form."""
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        return False
    except ValueError:
        return True
    return True


class Error(ValueError):
    """A failure reported by the library (or by this binding's checks on its arguments).

    `status` is the C status name ("ALR_SHAPE_MISMATCH", ...); str(e) is the message."""

    def __init__(self, message, status="ALR_INVALID_ARGUMENT"):
        super().__init__(message)
        self.status = status


def _is_number(value):
    """Whether `value` is an option's value: a real number (a bool is 0 or 1) or a 0-d array or
    tensor of one (torch.optim takes a tensor lr)."""
    if isinstance(value, (str, bytes)):
        return False
    if isinstance(value, (np.generic, np.ndarray)):
        return value.ndim == 0 and value.dtype.kind in "biuf"
    if isinstance(value, numbers.Real):
        return True
    # A one-element tensor of a real dtype (torch's, which takes lr=tensor(0.01) and
    # tensor([0.01]); this module does not import torch).
    numel = getattr(value, "numel", None)
    return callable(numel) and hasattr(value, "is_complex") and numel() == 1 and not value.is_complex()


def _number(name, value):
    """An option's value as the C double it is passed as (a bool is 0 or 1)."""
    if _is_number(value):
        # A tensor that requires grad is read without autograd (float() of it warns).
        value = value.detach() if hasattr(value, "detach") else value
        try:
            return float(value)
        except (OverflowError, RuntimeError, ValueError) as e:
            raise Error(f"option '{name}' = {value!r} is not a number a C double holds ({e})") from None
    if name == "betas":
        raise Error("autolr takes Adam's betas as two options: beta1=..., beta2=... (docs/algorithms.md)")
    raise Error(f"option '{name}' takes a number, got {value!r}")


def _index(value, what, bound):
    """A non-negative integer below `bound` (what a C unsigned field holds), or an error; a whole
    number given as a float (16.0, a 0-d float array or tensor) counts as one."""
    index = None
    if not isinstance(value, (bool, np.bool_)) and str(getattr(value, "dtype", "")) not in ("bool", "torch.bool"):
        try:
            index = operator.index(value)
        except TypeError:
            if _is_number(value):
                try:
                    whole = float(value.detach() if hasattr(value, "detach") else value)
                except (OverflowError, RuntimeError, ValueError):
                    whole = math.nan
                index = int(whole) if whole.is_integer() else None
    if index is None or not 0 <= index < bound:
        raise Error(f"{what} is {value!r}; it takes an integer from 0 to {bound - 1}")
    return index


def _batch_size(value):
    """N as the C size_t it is passed as."""
    return _index(value, "batch_size (the number of samples N)", 2**64)


def _check(rc):
    if rc != _ffi.ALR_OK:
        raise Error(lib.alr_last_error().decode(), _ffi.AlrStatus_NAMES.get(rc, str(rc)))


_FloatPtr = ctypes.POINTER(ctypes.c_float)
_PtrArray = ctypes.POINTER(_FloatPtr)


def _as_f32(arr, what, shape=None, writable=False):
    if not isinstance(arr, np.ndarray):
        raise Error(f"{what} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype != np.float32:
        raise Error(f"{what} has dtype {arr.dtype}; autolr takes float32 (use .astype(np.float32))")
    if not arr.flags.c_contiguous:
        raise Error(f"{what} is not C-contiguous; pass np.ascontiguousarray(...)")
    if writable and not arr.flags.writeable:
        raise Error(f"{what} is read-only; parameters are updated in place")
    if shape is not None and arr.shape != shape:
        raise Error(f"{what} has shape {arr.shape}, expected {shape}", "ALR_SHAPE_MISMATCH")
    return arr


def _ptr_array(arrays):
    ptrs = (_FloatPtr * len(arrays))()
    for i, a in enumerate(arrays):
        ptrs[i] = a.ctypes.data_as(_FloatPtr)
    return ptrs


class _Handle:
    """An optimizer handle: creation, options, read-back and checkpoints, whatever the device."""

    def _create(self, algorithm, lens, groups, options, device=_ffi.ALR_DEVICE_CPU, ordinal=0, stream=0, reduce=None):
        n = len(lens)
        lens = (ctypes.c_size_t * n)(*lens)
        args = _ffi.AlrCreateArgs()
        args.struct_size = ctypes.sizeof(_ffi.AlrCreateArgs)
        args.algorithm = str(algorithm).encode()
        args.n_tensors = n
        args.lens = lens
        if groups is not None:
            if len(groups) != n:
                raise Error(f"groups has {len(groups)} ids for {n} tensors", "ALR_SHAPE_MISMATCH")
            args.groups = (ctypes.c_uint32 * n)(*[_index(g, f"groups[{i}]", 2**32) for i, g in enumerate(groups)])
        args.device = device
        args.device_ordinal = int(ordinal)
        args.stream = ctypes.c_void_p(int(stream) or None)
        if reduce is not None:
            args.sharded = 1
            args.reduce = self._reduce_callback(reduce, on_device=device == _ffi.ALR_DEVICE_CUDA)
        handle = ctypes.c_void_p()
        _check(lib.alr_create(ctypes.byref(args), ctypes.byref(handle)))
        self._handle = handle
        self.algorithm = algorithm
        # The bases first, outermost first: setting one resets every option (and base_base,
        # GI's base under schedule-free over gi, follows base).
        for name in ("base", "base_base"):
            value = options.pop(name, None)
            if value is not None:
                self.set_option(name, value)
        for name, value in options.items():
            self.set_option(name, value)

    def _reduce_callback(self, reduce, on_device=False):
        """The C callback around `reduce(values, op)` (values: a float64 array to combine in place
        over the processes, op: "sum" or "max"; a `reduce(values)` that takes the array alone
        sums, DESIGN.md's form, and an algorithm that also needs a maximum says so), or on a CUDA
        optimizer `reduce(pointer, n, op, stream)` (n float64 values at device address `pointer`,
        combined in place in order on `stream`, an int cudaStream_t, 0 the default one); an
        exception it raises fails the step, and the step re-raises it."""
        self._reduce_raised = []
        takes_op = on_device or _takes_two_arguments(reduce)

        def call(_user, values, n, op, stream):
            try:
                name = "sum" if op == _ffi.ALR_REDUCE_SUM else "max"
                if on_device:
                    reduce(ctypes.cast(values, ctypes.c_void_p).value, int(n), name, int(stream or 0))
                elif takes_op:
                    reduce(np.ctypeslib.as_array(values, shape=(n,)), name)
                elif name == "sum":
                    reduce(np.ctypeslib.as_array(values, shape=(n,)))
                else:
                    raise Error(f"'{self.algorithm}' also combines a maximum over the processes: give reduce(values, op), "
                                "which takes op \"sum\" or \"max\", instead of reduce(values), which only sums")
                return 0
            except BaseException as e:  # re-raised by the step, after the library returns
                self._reduce_raised.append(e)
                return 1

        self._reduce_fn = _ffi.AlrReduceFn(call)  # alive as long as the optimizer
        return self._reduce_fn

    def __del__(self):
        handle = getattr(self, "_handle", None)
        if handle:
            lib.alr_destroy(handle)
            self._handle = None

    # options -------------------------------------------------------------------------------
    def set_option(self, name, value, group=None):
        """Sets an option for every group, or for one `group`."""
        if isinstance(value, str):
            if group is not None:
                raise Error(f"string option '{name}' cannot be set per group")
            _check(lib.alr_set_option_str(self._handle, name.encode(), value.encode()))
        elif group is None:
            _check(lib.alr_set_option(self._handle, name.encode(), _number(name, value)))
        else:
            _check(lib.alr_set_group_option(self._handle, _index(group, "group", 2**64), name.encode(), _number(name, value)))

    def get_option(self, name, group=0):
        out = ctypes.c_double()
        _check(lib.alr_get_option(self._handle, _index(group, "group", 2**64), name.encode(), ctypes.byref(out)))
        return out.value

    # read-back --------------------------------------------------------------------------------
    @property
    def n_groups(self):
        out = ctypes.c_size_t()
        _check(lib.alr_n_groups(self._handle, ctypes.byref(out)))
        return out.value

    def _per_group(self, fn):
        out = ctypes.c_double()
        values = []
        for g in range(self.n_groups):
            _check(fn(self._handle, g, ctypes.byref(out)))
            values.append(out.value)
        return values

    @property
    def lr(self):
        """Effective learning rate per group after the last step."""
        return self._per_group(lib.alr_get_lr)

    @property
    def momentum(self):
        """Momentum per group (AutoOpt's adapted value; the fixed value for momentum bases)."""
        return self._per_group(lib.alr_get_momentum)

    def telemetry(self):
        """{name: [value per group]} of the algorithm's internal scalars (docs/algorithms.md §5)."""
        result = {}
        count = ctypes.c_size_t()
        name = ctypes.c_char_p()
        value = ctypes.c_double()
        for g in range(self.n_groups):
            _check(lib.alr_telemetry_count(self._handle, g, ctypes.byref(count)))
            for i in range(count.value):
                _check(lib.alr_telemetry_entry(self._handle, g, i, ctypes.byref(name), ctypes.byref(value)))
                result.setdefault(name.value.decode(), []).append(value.value)
        return result

    # the two parameter views ---------------------------------------------------------------------
    def _set_mode(self, params, n_tensors, mode):
        """alr_set_mode on a C array of `n_tensors` parameter pointers (kept alive by the caller)."""
        args = _ffi.AlrModeArgs()
        args.struct_size = ctypes.sizeof(_ffi.AlrModeArgs)
        args.mode = mode
        args.n_tensors = n_tensors
        args.params = params
        _check(lib.alr_set_mode(self._handle, ctypes.byref(args)))

    @property
    def training(self):
        """False while the parameters hold the evaluation view (schedule-free's x, after eval())."""
        return self.telemetry().get("train_mode", [1.0])[0] != 0.0

    # checkpoints ------------------------------------------------------------------------------
    def state_dict(self):
        """The whole optimizer state as bytes (versioned, checksummed)."""
        size = ctypes.c_size_t()
        _check(lib.alr_save_size(self._handle, ctypes.byref(size)))
        buf = (ctypes.c_uint8 * size.value)()
        written = ctypes.c_size_t()
        _check(lib.alr_save(self._handle, buf, size.value, ctypes.byref(written)))
        # string_at copies the bytes once (slicing a ctypes array builds a list of ints first).
        return ctypes.string_at(buf, written.value)

    def load_state_dict(self, state):
        """Restores bytes from state_dict(); on error the optimizer is unchanged."""
        data = bytes(state)
        # A bytes object's buffer is passed as it is (the library only reads it).
        _check(lib.alr_load(self._handle, ctypes.cast(ctypes.c_char_p(data), ctypes.POINTER(ctypes.c_uint8)), len(data)))


class Optimizer(_Handle):
    """An optimizer over a list of float32 numpy arrays (updated in place by step()).

    Options are given by name (docs/algorithms.md); `groups` gives a group id per tensor (default:
    every tensor its own group). For `gi`, pass `base="adam"` etc."""

    def __init__(self, algorithm, params, groups=None, reduce=None, **options):
        """`reduce`: the arrays are this process's shards of tensors split over processes, and
        `reduce(values, op)` combines a float64 array in place over them (op "sum" or "max"; e.g.
        `torch.distributed.all_reduce`), or `reduce(values)` sums it (for every algorithm but
        vsgd-g and vsgd-b, which also take a maximum); see README "More than one process"."""
        self._params = [_as_f32(p, f"params[{i}]", writable=True) for i, p in enumerate(params)]
        self._shapes = [p.shape for p in self._params]
        self._create(algorithm, [p.size for p in self._params], groups, options, reduce=reduce)

    # the step --------------------------------------------------------------------------------
    def step(self, grads, sum_sq=None, per_sample=None, per_sample_scale="sample", batch_size=None,
             curvature=None, loss=None, closure=None, grad_closure=None):
        """One step; parameters are updated in place. See DESIGN.md for each argument."""
        n = len(self._params)
        if len(grads) != n:
            raise Error(f"step got {len(grads)} gradients, the optimizer has {n} tensors", "ALR_SHAPE_MISMATCH")
        keep = []  # keeps every array and ctypes object alive for the call

        def pointers(what, arrays, leading=()):
            """A C array of pointers to validated float32 arrays, kept alive for the call."""
            if len(arrays) != n:
                raise Error(f"{what} has {len(arrays)} tensors, the optimizer has {n}", "ALR_SHAPE_MISMATCH")
            checked = [_as_f32(a, f"{what}[{i}]", leading + self._shapes[i]) for i, a in enumerate(arrays)]
            ptrs = _ptr_array(checked)
            keep.extend([checked, ptrs])
            return ctypes.cast(ptrs, _PtrArray)

        if sum_sq is not None and per_sample is not None:
            raise Error("give either sum_sq or per_sample, not both")
        if sum_sq is not None and batch_size is None:
            raise Error("sum_sq needs batch_size (the number of samples N)")
        if per_sample is not None and batch_size is None and len(per_sample):
            batch_size = per_sample[0].shape[0] if np.ndim(per_sample[0]) else 0
        self._step_raw(
            pointers("params", self._params), pointers("grads", grads),
            sum_sq=None if sum_sq is None else pointers("sum_sq", sum_sq),
            per_sample=None if per_sample is None else pointers("per_sample", per_sample, (batch_size,)),
            per_sample_scale=per_sample_scale, batch_size=batch_size,
            curvature=None if curvature is None else pointers("curvature", curvature),
            loss=loss, closure=closure, grad_closure=grad_closure)

    def _step_raw(self, params, grads, sum_sq=None, per_sample=None, per_sample_scale="sample", batch_size=None,
                  curvature=None, loss=None, closure=None, grad_closure=None):
        """The step from C arrays of float pointers (validated by the caller: one per tensor, each
        to as many floats as the tensor has, N times that for per_sample), which the caller keeps
        alive for the call; the scalars and callbacks as in step()."""
        args = _ffi.AlrStepArgs()
        args.struct_size = ctypes.sizeof(_ffi.AlrStepArgs)
        args.n_tensors = len(self._params)
        args.params = params
        args.grads = grads
        if per_sample_scale not in ("sample", "mean"):
            raise Error(f"per_sample_scale is {per_sample_scale!r}; accepted: 'sample' (g_i of each sample's own loss) or 'mean' (g_i/N, BackPACK under a mean loss)")
        args.per_sample_scale = _ffi.ALR_SCALE_SAMPLE if per_sample_scale == "sample" else _ffi.ALR_SCALE_MEAN
        if sum_sq is not None:
            args.sum_sq = sum_sq
        if per_sample is not None:
            args.per_sample = per_sample
        if batch_size is not None:
            args.batch_size = _batch_size(batch_size)
        if curvature is not None:
            args.curvature = curvature
        if loss is not None:
            args.has_loss = 1
            args.loss = _number("loss", loss)
        raised = []
        keep = []
        if closure is not None:
            def loss_fn(_user, _params, _n, out):
                try:
                    out[0] = float(closure())
                    return 0
                except BaseException as e:  # re-raised below, after the library returns
                    raised.append(e)
                    return 1
            args.loss_fn = _ffi.AlrLossFn(loss_fn)
            keep.append(args.loss_fn)
        if grad_closure is not None:
            shapes = self._shapes

            def grad_fn(_user, params, grads_out, n_tensors):
                try:
                    views = [np.ctypeslib.as_array(params[i], shape=shapes[i]) for i in range(n_tensors)]
                    result = grad_closure(views)
                    if len(result) != n_tensors:
                        raise Error(f"grad_closure returned {len(result)} gradients for {n_tensors} tensors", "ALR_SHAPE_MISMATCH")
                    for i in range(n_tensors):
                        out = np.ctypeslib.as_array(grads_out[i], shape=shapes[i])
                        out[...] = np.asarray(result[i], dtype=np.float32).reshape(shapes[i])
                    return 0
                except BaseException as e:
                    raised.append(e)
                    return 1
            args.grad_fn = _ffi.AlrGradFn(grad_fn)
            keep.append(args.grad_fn)
        rc = lib.alr_step(self._handle, ctypes.byref(args))
        raised += getattr(self, "_reduce_raised", [])
        self._reduce_raised = []
        if raised:
            # An interrupt (Ctrl-C) or an exit stays what it is, once the library has returned:
            # a loop that catches autolr.Error must not swallow it.
            if not isinstance(raised[0], Exception):
                raise raised[0]
            err = Error(f"{lib.alr_last_error().decode()} ({type(raised[0]).__name__}: {raised[0]})", "ALR_CALLBACK_FAILED")
            raise err from raised[0]
        _check(rc)

    def report_loss(self, loss_after):
        """GI's second phase: the loss on the same batch after the last step moved the parameters."""
        _check(lib.alr_report_loss(self._handle, _number("loss_after", loss_after)))

    def eval(self):
        """Rewrites the parameters (the arrays this optimizer was created with) in place to the
        evaluation view: schedule-free's average x. A no-op for the other algorithms. Raises
        (ALR_WRONG_STATE) when already in eval mode; step() is refused until train()."""
        self._set_mode(ctypes.cast(_ptr_array(self._params), _PtrArray), len(self._params), _ffi.ALR_MODE_EVAL)

    def train(self):
        """Rewrites the parameters back to the training view (schedule-free's y, where gradients
        are taken). A no-op for the other algorithms; before the first step, always accepted."""
        self._set_mode(ctypes.cast(_ptr_array(self._params), _PtrArray), len(self._params), _ffi.ALR_MODE_TRAIN)


class CudaOptimizer(_Handle):
    """An optimizer whose state lives on CUDA device `device` (a library built with the `cuda`
    feature; algorithms: CUDA_ALGORITHMS). Tensors are given as device pointers (ints, e.g. a
    torch tensor's data_ptr()) of `sizes[i]` float32 elements; steps are enqueued on `stream`
    (a cudaStream_t as an int; 0: the default stream) and return without waiting.

    A NaN/Inf in the inputs (or a negative sum_sq) is found on the device: that step and every
    later one change nothing until the next read of lr, momentum, telemetry() or state_dict(),
    which raises the error (ALR_NON_FINITE / ALR_INVALID_ARGUMENT) and lets steps run again."""

    def __init__(self, algorithm, sizes, groups=None, device=0, stream=0, reduce=None, **options):
        """`reduce`: the tensors are this process's shards, and `reduce(pointer, n, op, stream)`
        combines n float64 values at a device address in place over the processes, ordered on
        `stream` (README "More than one process")."""
        self._sizes = [_index(n, f"sizes[{i}]", 2**64) for i, n in enumerate(sizes)]
        self._create(algorithm, self._sizes, groups, options, _ffi.ALR_DEVICE_CUDA, device, stream, reduce=reduce)

    def step(self, params, grads, sum_sq=None, per_sample=None, per_sample_scale="sample", batch_size=None, curvature=None):
        """Enqueues one step: `params` updated in place; every argument a list of device pointers
        (per_sample: row-major N × size matrices; curvature: vSGD's non-negative diagonal)."""
        n = len(self._sizes)
        args = _ffi.AlrStepArgs()
        args.struct_size = ctypes.sizeof(_ffi.AlrStepArgs)
        args.n_tensors = n
        keep = []

        def pointers(what, values):
            ptrs = self._pointer_array(what, values)
            keep.append(ptrs)
            return ctypes.cast(ptrs, _PtrArray)

        args.params = pointers("params", params)
        args.grads = pointers("grads", grads)
        if per_sample_scale not in ("sample", "mean"):
            raise Error(f"per_sample_scale is {per_sample_scale!r}; accepted: 'sample' or 'mean'")
        args.per_sample_scale = _ffi.ALR_SCALE_SAMPLE if per_sample_scale == "sample" else _ffi.ALR_SCALE_MEAN
        if sum_sq is not None:
            args.sum_sq = pointers("sum_sq", sum_sq)
        if per_sample is not None:
            args.per_sample = pointers("per_sample", per_sample)
        if batch_size is not None:
            args.batch_size = _batch_size(batch_size)
        if curvature is not None:
            args.curvature = pointers("curvature", curvature)
        _check(lib.alr_step(self._handle, ctypes.byref(args)))

    def _pointer_array(self, what, values):
        """A C array of the device pointers `values`, one per tensor."""
        n = len(self._sizes)
        if len(values) != n:
            raise Error(f"{what} has {len(values)} tensors, the optimizer has {n}", "ALR_SHAPE_MISMATCH")
        return (_FloatPtr * n)(*[ctypes.cast(ctypes.c_void_p(int(v)), _FloatPtr) for v in values])

    def eval(self, params):
        """Enqueues the rewrite of `params` (device pointers, the buffers step() updates) to the
        evaluation view: schedule-free's average x; a no-op for the other algorithms. Raises
        (ALR_WRONG_STATE) when already in eval mode; step() is refused until train()."""
        self._set_mode(ctypes.cast(self._pointer_array("params", params), _PtrArray), len(self._sizes), _ffi.ALR_MODE_EVAL)

    def train(self, params):
        """Enqueues the rewrite of `params` back to the training view (schedule-free's y)."""
        self._set_mode(ctypes.cast(self._pointer_array("params", params), _PtrArray), len(self._sizes), _ffi.ALR_MODE_TRAIN)
