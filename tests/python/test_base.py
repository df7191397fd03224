"""Fixed-rate optimizers (docs/algorithms.md §0) against the independent float64 reference:
several tensors and groups, per-group options, >= 50 steps, relative error <= 1e-5."""
import numpy as np
import pytest

from conftest import SideBySide, f32

SHAPES = [(17, 5), (5,), (3, 4, 2), (1,)]
GROUPS = [0, 0, 1, 2]

CASES = [
    ("sgd", {"lr": 0.05}),
    ("sgd", {"lr": 0.05, "weight_decay": 0.1}),
    ("momentum", {"lr": 0.02, "momentum": 0.9}),
    ("momentum", {"lr": 0.02, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.01}),
    ("momentum", {"lr": 0.02, "momentum": 0.9, "nesterov": True}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "beta1": 0.8, "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.05}),
    ("adamw", {"lr": 0.01, "weight_decay": 0.1}),
    ("adagrad", {"lr": 0.1}),
    ("adagrad", {"lr": 0.1, "weight_decay": 0.01, "eps": 1e-8}),
    ("rmsprop", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.01, "alpha": 0.9, "weight_decay": 0.02}),
]


@pytest.mark.parametrize("algorithm,options", CASES, ids=[f"{a}-{i}" for i, (a, _) in enumerate(CASES)])
def test_matches_reference(algorithm, options, rng):
    group_options = {1: {"lr": options["lr"] * 3.0}, 2: {"weight_decay": 0.2}}
    sbs = SideBySide(algorithm, SHAPES, groups=GROUPS, group_options=group_options, **options)
    for t in range(60):
        # gradients that depend on the parameters (a quadratic) plus noise, so errors would compound
        grads = [f32(0.5 * p + rng.standard_normal(p.shape)) for p in sbs.p64]
        sbs.step(grads=grads)
        sbs.assert_close(1e-5, f"{algorithm} step {t}")
    sbs.assert_rates_close(1e-12, algorithm)


def test_group_lr_really_differs(rng):
    """The per-group option changes only its group: guards against the test above passing vacuously."""
    p = [np.ones(4, np.float32), np.ones(4, np.float32)]
    import autolr
    opt = autolr.Optimizer("sgd", p, lr=0.1)
    opt.set_option("lr", 0.5, group=1)
    opt.step([np.ones(4, np.float32), np.ones(4, np.float32)])
    assert np.allclose(p[0], 0.9) and np.allclose(p[1], 0.5)
    assert opt.lr == [0.1, 0.5]


def test_deterministic(rng):
    """Same inputs, same bits."""
    import autolr
    grads = [[rng.standard_normal(1000).astype(np.float32)] for _ in range(20)]
    outs = []
    for _ in range(2):
        p = [np.linspace(-1, 1, 1000, dtype=np.float32)]
        opt = autolr.Optimizer("adam", p, lr=0.01)
        for g in grads:
            opt.step(g)
        outs.append(p[0].tobytes())
    assert outs[0] == outs[1]
