"""alr_step_dlpack: the same step as alr_step with tensors given as DLPack DLTensors, built here
with ctypes from numpy arrays (as a binding for any DLPack producer would); errors for dtype,
strides, element count and device."""
import ctypes

import numpy as np
import pytest

import autolr
from autolr import _ffi
from autolr._lib import lib

KDL_CPU, KDL_CUDA, KDL_FLOAT = 1, 2, 2


def dl_tensor(array, keep, device_type=KDL_CPU, strides=None):
    shape = (ctypes.c_int64 * array.ndim)(*array.shape)
    keep.append(shape)
    t = _ffi.AlrDLTensor()
    t.data = array.ctypes.data
    t.device = _ffi.AlrDLDevice(device_type, 0)
    t.ndim = array.ndim
    t.dtype = _ffi.AlrDLDataType(KDL_FLOAT, array.dtype.itemsize * 8, 1)
    t.shape = shape
    if strides is not None:
        st = (ctypes.c_int64 * array.ndim)(*strides)
        keep.append(st)
        t.strides = st
    keep.append(t)
    return t


def dl_list(tensors, keep):
    arr = (ctypes.POINTER(_ffi.AlrDLTensor) * len(tensors))(*[ctypes.pointer(t) for t in tensors])
    keep.append(arr)
    return ctypes.cast(arr, ctypes.POINTER(ctypes.POINTER(_ffi.AlrDLTensor)))


def step_dlpack(opt, params, grads, **kw):
    keep = []
    args = _ffi.AlrDLStepArgs()
    args.struct_size = ctypes.sizeof(_ffi.AlrDLStepArgs)
    args.n_tensors = len(params)
    args.params = dl_list([dl_tensor(p, keep) for p in params], keep)
    args.grads = dl_list([kw.get("grad_tensor", dl_tensor)(g, keep) for g in grads], keep)
    if "sum_sq" in kw:
        args.sum_sq = dl_list([dl_tensor(s, keep) for s in kw["sum_sq"]], keep)
        args.batch_size = kw["batch_size"]
    if "per_sample" in kw:
        args.per_sample = dl_list([dl_tensor(s, keep) for s in kw["per_sample"]], keep)
    rc = lib.alr_step_dlpack(opt._handle, ctypes.byref(args))
    return rc, lib.alr_last_error().decode()


def test_same_steps_as_alr_step():
    rng = np.random.default_rng(0)
    shapes = [(4, 3), (3,)]
    a = [np.ones(s, np.float32) for s in shapes]
    b = [np.ones(s, np.float32) for s in shapes]
    opt_a = autolr.Optimizer("auto-adam", a)
    opt_b = autolr.Optimizer("auto-adam", b)
    for _ in range(10):
        rows = [rng.standard_normal((8,) + s).astype(np.float32) for s in shapes]
        grads = [r.mean(axis=0) for r in rows]
        opt_a.step(grads, per_sample=rows)
        rc, msg = step_dlpack(opt_b, b, grads, per_sample=rows)
        assert rc == _ffi.ALR_OK, msg
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("case,status,words", [
    ("float64", "ALR_INVALID_ARGUMENT", "float32"),
    ("strided", "ALR_INVALID_ARGUMENT", "contiguous"),
    ("numel", "ALR_SHAPE_MISMATCH", "registered 12"),
    ("cuda", "ALR_UNSUPPORTED", "device type 2"),
])
def test_bad_tensors_are_refused_and_change_nothing(case, status, words):
    p = [np.ones((4, 3), np.float32)]
    opt = autolr.Optimizer("sgd", p, lr=0.1)
    g = np.ones((4, 3), np.float32)
    make = {
        "float64": lambda arr, keep: dl_tensor(np.ones((4, 3)), keep),
        "strided": lambda arr, keep: dl_tensor(arr, keep, strides=(1, 4)),
        "numel": lambda arr, keep: dl_tensor(np.ones((4, 4), np.float32), keep),
        "cuda": lambda arr, keep: dl_tensor(arr, keep, device_type=KDL_CUDA),
    }[case]
    before = p[0].copy(), opt.state_dict()
    rc, msg = step_dlpack(opt, p, [g], grad_tensor=make)
    assert _ffi.AlrStatus_NAMES[rc] == status and words in msg, msg
    assert np.array_equal(p[0], before[0]) and opt.state_dict() == before[1]
