"""Independent float64 NumPy reference of the autolr optimizers.

Written from /work/shared/ALGORITHMS.md (cited below as "A.md:<line>") and the
"Python API" section of /work/shared/DESIGN.md (cited as "D.md"), with the papers
in /work/shared/papers/ (001 AutoOpt, 002 vSGD, 003 GI, 004 TLR) consulted where
the spec is silent.  No code of the library under test was read.  Pure numpy,
float64 throughout; reductions are ``np.sum`` in float64 (pairwise summation).

Interface (mirrors D.md "The Python API", but on float64 numpy arrays)::

    import reference as ref
    opt = ref.make(algorithm, shapes, groups=None, group_options=None, **options)
    opt.step(params, grads, sum_sq=None, per_sample=None, per_sample_scale="sample",
             batch_size=None, curvature=None, loss=None, closure=None, grad_closure=None)
    s = opt.propose(params, grads, ...)   # displacement; step() == propose() then params -= s
    opt.lr, opt.momentum                  # per-group lists of floats
    opt.telemetry()                       # dict name -> per-group list of floats

Decisions taken where the spec is ambiguous or silent
-----------------------------------------------------

General

1.  Unknown option names, options that do not apply to the algorithm, and
    out-of-range values raise ValueError (D.md: "an unknown name or an
    out-of-range value is an error").  In particular ``weight_decay`` (other
    than 0) and ``lr`` are rejected for auto-* and vsgd-* (A.md §1/§2 define no
    weight decay and no learning-rate option for them).
2.  ``groups`` must use every id 0..G-1 (brief: "ids are 0..G-1").
    ``group_options`` may override, per group, only options that are per-group
    by nature: every option of the fixed-rate bases (like torch param_groups);
    nu, gamma_max, eps, beta2 for auto-*; nothing for vsgd-* (n0 and C are
    global, A.md:115-123); momentum and weight_decay for tlr, plus lr, c,
    alpha_min when per_group=True; for gi, anything the base accepts except
    ``lr`` (η is one global scale, A.md:156).
3.  Passing both ``sum_sq`` and ``per_sample`` is a ValueError.  ``batch_size``
    is required with ``sum_sq`` (D.md: "N, required with per-sample data"); with
    ``per_sample`` N is the leading dimension and a differing ``batch_size`` is a
    ValueError.  per_sample_scale="mean" means entries are g_i/N (A.md:15-18), so
    S = N^2 * sum_sq, resp. S = N^2 * sum_i p_i^2.  Algorithms that do not use
    per-sample data (fixed-rate bases, tlr) ignore it (but it is still validated).
4.  Fixed-rate bases follow PyTorch (A.md:25-36): defaults lr = 1e-3 (sgd,
    momentum, adam, adamw), 1e-2 (adagrad, rmsprop) as in torch 2.x; λ = 0 for
    every base including adamw (A.md:36 says λ=0, overriding torch's adamw
    1e-2).  ``momentum`` default for the standalone 'momentum' algorithm is 0.9
    (A.md:35 "μ=0.9 only where a paper says so"; paper 003 §B calls 0.9 the
    default for Momentum), ``dampening`` 0, ``nesterov`` False; nesterov needs
    μ > 0 and dampening 0 (torch's rule).  Buffer on the first step is m = g
    (torch).  Weight decay is coupled (g <- g + λθ) except adamw, where the
    displacement is η(λθ + m̂/(√v̂+ε)), i.e. θ(1-ηλ) - η m̂/(√v̂+ε) (A.md:31).
    Fixed-rate bases expose an empty telemetry dict.

AutoOpt (A.md §1)

5.  D is formed first (the preconditioner bullet A.md:43-47 precedes steps
    1-7), from the base state updated with the current g (eqs. 11/12 include
    g_t).  Adam's t is the optimizer's step count.  ``eps`` default: 1e-8
    (auto-adam, A.md:50-51), 1e-10 (auto-adagrad, the adagrad default A.md:36);
    ``beta2`` 0.999.  auto-sgd takes no eps/beta2.
6.  Skip when a = 0 (A.md:70): the skip is decided in step 3, after D was
    formed, so the base preconditioner state (adam v and t, adagrad s) HAS
    advanced with the zero gradient; everything of steps 4-7 is left untouched:
    γ_E, d and the parameters (displacement 0).  'skips' += 1; 'fallbacks' and
    'clamps' unchanged; telemetry gamma1_oracle = gamma2_oracle = 0.0, gamma1/2
    = the unchanged γ_E; V, a, c, e, det as computed.
7.  Fallback (A.md:65-69): the 2-D solution is tried only if V, a, c, e, det are
    finite and det > 1e-12·a·e; it is accepted if γ1, γ2 are finite and
    0 <= γ1 <= γ_max, γ2 >= 0, γ1 + γ2 < 1.  Otherwise γ_O = (min(V/a, γ_max),
    0) and 'fallbacks' += 1 (NaN from garbage inputs propagates; no further
    guard).  Telemetry 'gamma1_oracle'/'gamma2_oracle' are the γ_O actually fed
    to the smoothing (after fallback).
8.  'clamps' (A.md:72) counts steps where (1-ν)γ_O + νγ_E > γ_max strictly for
    at least one component (at equality the min changes nothing).
9.  lr = α = 1 - γ_E[0], momentum = β = γ_E[1]/α (A.md:77); before the first
    step these are 1-γ_max and 0.

vSGD (A.md §2)

10. Slow start (A.md:115-118): steps 1..n0 accumulate arithmetic means of g,
    x and max(h, ε) (the ε floor of A.md:105 is applied to h in slow start too,
    so hbar >= ε always); they need curvature (or grad_closure) like regular
    steps.  At the end of step n0: gbar = mean g, hbar = mean max(h,ε),
    vbar = C·mean x (vsgd-l), l = C·Σ mean x over the unit (vsgd-g: all
    tensors; vsgd-b: the group), τ = 2.  n0 = 0 disables slow start: the state
    then starts at zero with τ = 1, so the first regular step's averages equal
    that step's sample (the spec gives no initial values without slow start).
11. C (``slow_start_c``) has no fixed default in A.md:119-123 ("decided by
    measurement"); the string 'd/10' gives the paper's rule C = d/10, d = total
    number of parameters.  AMENDED by the lead after the benchmark: the default is
    'd/10' (C = 2, Schaul's code, diverged on Fashion-MNIST), as in the library.
12. ``eps`` (default 1e-9, A.md:123) floors every denominator: ρ = num /
    max(den, ε); η = ρ / max(hbar, ε) (vsgd-l) or ρ / max(h⁺, ε) (g/b);
    finite-difference h = |Δ∇| / max(|δ|, ε).  τ <- max((1-ρ)τ + 1, 1); ρ
    itself is not clipped.  The averages use the τ from before the update
    (Algorithm 1 order, A.md:99-110).
13. vsgd-g/-b keep per-element gbar and hbar (needed for Σ gbar² and
    h⁺ = max hbar), updated with the unit's scalar τ; no per-element vbar.
14. Finite differences (A.md:93-97, Schaul & LeCun 2013 vSGD-fd): δ = gbar + ε
    with gbar the running average BEFORE this step's update (during slow start:
    the arithmetic mean of g over the previous slow-start steps, 0 at step 1);
    h = |grad_closure([θ + δ]) - g| / max(|δ|, ε), g = the step's mean gradient.
    Given curvature takes precedence over grad_closure.
15. n = N with per-sample data, else n = 1 and x = g² (A.md:90-91,99-100);
    batch_size alone (without per-sample data) is ignored.
16. lr: vsgd-l = np.median of η over the group's elements (mean of the two
    middle values for an even count); vsgd-g: the global η; vsgd-b: the
    group's η; 0.0 during slow start.  Telemetry: tau_*/eta_* over the group's
    elements (l) or the unit's scalar (g/b); h_plus = max hbar over the group
    (l, b) or over all tensors (g); during slow start eta_* = 0, slow_start =
    1.0, tau_* = 0.0 until τ is initialised at the end of step n0 (then 2.0),
    h_plus from the running mean of max(h, ε).

GI (A.md §3)

17. The move is θ <- θ - v·2Δf/(φ+R) on EVERY non-skipped step; ``adapt_every``
    only suppresses the re-evaluation f+ and the η update (A.md:153-155 "skips
    the re-evaluation"; paper 003 §4/App. B.1: the remedy saves the extra
    forward pass).  Hence ``loss`` is required on adapting steps (for ρ) and on
    every step when f_star is set (for Δf); otherwise it is ignored (with f_star
    unset and R = 0 the factor is 2(φ/2)/φ = 1 exactly).  ``closure`` is
    required on adapting steps only.  Both are checked before any state moves.
18a. AMENDED by the project lead after review, not from the spec alone: A.md:150
    takes the plain base step whenever φ <= 0, but with f_star set the paper's move
    θ − v·2Δf/(φ+R) is defined for φ < 0 (it reverses a step that points uphill on this
    batch) and does not depend on η — the property of paper 003 Fig. 4 ("agnostic to the
    learning rate … the same iterates"), which the φ <= 0 rule breaks at the first negative
    φ (iteration 2-4 on Rosenbrock from every start tried). So with f_star set and φ < 0
    the move is taken, η is not adapted, and the step counts in 'skipped'.
18. Skip (A.md:150-151): if φ <= 0, or φ, the needed f, Δf or the factor is
    non-finite, the plain base step v is taken, η is not adapted, closure is not
    called, 'skipped' += 1 — also on a non-adapting step.  A non-finite f+
    gives η <- down·η and is not counted as skipped.  (So an automatic base
    whose step is zero, e.g. vsgd-* during slow start, gives φ = 0: a counted
    skip with a zero move.)
19. φ = Σ g·v uses the caller's mean gradient g (A.md:10,142), not g + λθ.
    v for a fixed-rate base is η × the base's unit step (its lr factored out:
    η(g+λθ), η m, η m̂/(√v̂+ε), η(λθ + ...) for adamw, ...), i.e. the base at
    lr η (A.md:141).  For an automatic base v = η · s, s = base.propose(...).
20. Defaults: base = 'sgd' (none given in A.md/D.md); lr (η) = 1e-3 for a
    fixed-rate base, 1.0 for an automatic one (A.md:134-136); the wrapped
    'momentum' μ and adam/adamw β1 default to 0.5 (A.md:152-153).  A tlr base's
    own initial α is the gi option ``base_lr`` (default 0.01), because ``lr`` is
    η.  gi cannot wrap gi.
21. lr per group = η_used · factor (· base.lr[k] for an automatic base), η_used
    = η before this step's adaptation, factor = 2Δf/(φ+R), or 1 on a skipped
    step (the multiplier actually applied to the base's unit step).  Telemetry
    'eta' = η AFTER this step's adaptation (what the next step uses); 'rho' =
    this step's ρ, 0.0 on a step that did not re-evaluate; 'phi' = φ.
22. GI propose(): on an adapting step the closure must see the moved
    parameters, so propose() writes θ - disp into params, calls closure, and
    restores the saved copies bit-exactly; params are unchanged on return.

TLR (A.md §4)

23. The momentum buffer follows torch SGD (m = G on the first step, m <- μm + G
    afterwards, no dampening, no nesterov) and holds gradient units; α
    multiplies it when the step is applied: θ <- θ - α m.  So a change of α
    rescales the whole buffered contribution (the paper ran torch SGD with a
    changing lr, 004 §5).
24. window = 1: G_t = g + λθ (before momentum); at t = 1 no α update.
    window = K > 1: θ_snapshot = the parameters at the start of step 1; after
    the K-th, 2K-th, ... step G = (θ_snapshot - θ_new)/α with α the rate used
    during the window and θ_new = params - s (computed the same way in
    propose()); the α update happens from the second window on; then
    G_prev = G, θ_snapshot = θ_new.
25. α update (A.md:174-177,192-193): ip, nn, den = max(4(nn-ip), ip/c); if ip,
    nn, den are finite and den > 0 then α_new = α(1 + ip/den) and, if finite,
    α = max(α_new, alpha_min); otherwise α unchanged.  'cap_hits' counts applied
    updates with ip/c >= 4(nn-ip) (the growth bound is the max, ties included).
    'ip' and 'den' hold the values of the most recent update attempt (0.0
    before the first); with per_group False every group reports the global
    values.
"""

from __future__ import annotations

import math
import numpy as np

__all__ = ["make", "ALGORITHMS"]

FIXED_RATE = ("sgd", "momentum", "adam", "adamw", "adagrad", "rmsprop")
AUTOMATIC = ("auto-sgd", "auto-adam", "auto-adagrad", "vsgd-l", "vsgd-g", "vsgd-b", "tlr")
ALGORITHMS = FIXED_RATE + AUTOMATIC + ("gi",)

# Automatic algorithms that other reference modules define (reference_peers.py registers the
# peers of docs/algorithms.md §6 here), so that make() builds them and GI can wrap them:
# name -> class taking (name, shapes, groups, group_options, options), as the classes below.
# A class whose attribute OWN_LR is True has an `lr` of its own, which GI takes as `base_lr`
# (docs/algorithms.md §3.1: "A base with its own meaning of lr ... takes it as base_lr").
REGISTERED = {}


def register(name, cls):
    REGISTERED[name] = cls

_F = np.float64


def _isfinite(*xs):
    return all(math.isfinite(float(x)) for x in xs)


def _dot(a, b):
    """Inner product accumulated in float64."""
    return float(np.sum(np.asarray(a, _F) * np.asarray(b, _F)))


# --------------------------------------------------------------------------
# per-step inputs
# --------------------------------------------------------------------------
class _Ctx:
    """Validated per-step inputs (float64)."""

    def __init__(self, opt, params, grads, sum_sq, per_sample, per_sample_scale,
                 batch_size, curvature, loss, closure, grad_closure):
        n = len(opt.shapes)
        if len(params) != n or len(grads) != n:
            raise ValueError(f"expected {n} params and grads, got {len(params)} and {len(grads)}")
        for i, (p, g) in enumerate(zip(params, grads)):
            if tuple(np.shape(p)) != opt.shapes[i] or tuple(np.shape(g)) != opt.shapes[i]:
                raise ValueError(f"tensor {i}: shape mismatch (expected {opt.shapes[i]})")
        self.params = params
        self.grads = [np.asarray(g, dtype=_F) for g in grads]
        if per_sample_scale not in ("sample", "mean"):
            raise ValueError("per_sample_scale must be 'sample' or 'mean'")
        self.S = None
        self.N = None
        if sum_sq is not None and per_sample is not None:
            raise ValueError("give either sum_sq or per_sample, not both")
        if per_sample is not None:
            if len(per_sample) != n:
                raise ValueError("per_sample: one array per tensor")
            ps = [np.asarray(x, dtype=_F) for x in per_sample]
            Ns = {x.shape[0] if x.ndim > 0 else -1 for x in ps}
            if len(Ns) != 1:
                raise ValueError("per_sample arrays disagree on N")
            N = Ns.pop()
            for i, x in enumerate(ps):
                if x.shape[1:] != opt.shapes[i]:
                    raise ValueError(f"per_sample[{i}] must have shape (N, *{opt.shapes[i]})")
            if batch_size is not None and int(batch_size) != N:
                raise ValueError("batch_size disagrees with per_sample leading dimension")
            S = [np.sum(x * x, axis=0) for x in ps]
            if per_sample_scale == "mean":          # entries are g_i / N
                S = [(float(N) * N) * s for s in S]
            self.S, self.N = S, int(N)
        elif sum_sq is not None:
            if batch_size is None:
                raise ValueError("batch_size is required with sum_sq")
            if len(sum_sq) != n:
                raise ValueError("sum_sq: one array per tensor")
            N = int(batch_size)
            S = []
            for i, s in enumerate(sum_sq):
                s = np.asarray(s, dtype=_F)
                if s.shape != opt.shapes[i]:
                    raise ValueError(f"sum_sq[{i}] shape mismatch")
                S.append((float(N) * N) * s if per_sample_scale == "mean" else s)
            self.S, self.N = S, N
        self.curvature = None
        if curvature is not None:
            if len(curvature) != n:
                raise ValueError("curvature: one array per tensor")
            self.curvature = [np.asarray(h, dtype=_F) for h in curvature]
            for i, h in enumerate(self.curvature):
                if h.shape != opt.shapes[i]:
                    raise ValueError(f"curvature[{i}] shape mismatch")
        self.loss = loss
        self.closure = closure
        self.grad_closure = grad_closure


# --------------------------------------------------------------------------
# common machinery
# --------------------------------------------------------------------------
class _Optimizer:
    name = "?"
    GROUP_KEYS = frozenset()

    def __init__(self, name, shapes, groups, group_options, options):
        self.name = name
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        n = len(self.shapes)
        if groups is None:
            groups = list(range(n))
        groups = [int(k) for k in groups]
        if len(groups) != n:
            raise ValueError("groups: one id per tensor")
        G = (max(groups) + 1) if groups else 0
        if sorted(set(groups)) != list(range(G)):
            raise ValueError("group ids must be exactly 0..G-1")
        self.groups = groups
        self.G = G
        self.members = [[i for i in range(n) if groups[i] == k] for k in range(G)]
        defaults = self._defaults(options)
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise ValueError(f"{name}: unknown option(s) {unknown}; accepted: {sorted(defaults)}")
        opts = dict(defaults)
        opts.update(options)
        self.opts = opts
        self.gopts = [dict(opts) for _ in range(G)]
        for k, o in (group_options or {}).items():
            k = int(k)
            if not 0 <= k < G:
                raise ValueError(f"group_options: no group {k}")
            bad = sorted(set(o) - set(self._group_keys()))
            if bad:
                raise ValueError(f"{name}: option(s) {bad} cannot be set per group; "
                                 f"per-group options: {sorted(self._group_keys())}")
            self.gopts[k].update(o)
        self._check(opts)
        for go in self.gopts:
            self._check(go)
        self.t = 0
        self._tele = {}
        self._init_state()

    # -- to override -------------------------------------------------------
    def _defaults(self, options):
        return {}

    def _group_keys(self):
        return self.GROUP_KEYS

    def _check(self, o):
        pass

    def _init_state(self):
        pass

    def _propose(self, params, ctx):
        raise NotImplementedError

    # -- public --------------------------------------------------------------
    def _ctx(self, params, grads, sum_sq=None, per_sample=None, per_sample_scale="sample",
             batch_size=None, curvature=None, loss=None, closure=None, grad_closure=None):
        return _Ctx(self, params, grads, sum_sq, per_sample, per_sample_scale, batch_size,
                    curvature, loss, closure, grad_closure)

    def propose(self, params, grads, **kw):
        """Displacements s (θ <- θ - s) advancing the state; params untouched."""
        ctx = self._ctx(params, grads, **kw)
        return self._propose(params, ctx)

    def step(self, params, grads, **kw):
        s = self.propose(params, grads, **kw)
        for p, si in zip(params, s):
            p -= si
        return None

    @property
    def lr(self):
        return [float(x) for x in self._lr()]

    @property
    def momentum(self):
        return [float(x) for x in self._momentum()]

    def telemetry(self):
        return {k: [float(x) for x in v] for k, v in self._tele.items()}

    def _momentum(self):
        return [0.0] * self.G


def _loss_at(params, values, closure):
    """The closure's loss with `params` holding `values`; params are restored bit-exactly
    afterwards (also when the closure raises)."""
    saved = [np.array(p, copy=True) for p in params]
    for p, v in zip(params, values):
        p[...] = v
    try:
        return float(closure())
    finally:
        for p, sv in zip(params, saved):
            p[...] = sv


def _need(cond, msg):
    if not cond:
        raise ValueError(msg)


# --------------------------------------------------------------------------
# §0 fixed-rate bases (PyTorch conventions)
# --------------------------------------------------------------------------
class _FixedRate(_Optimizer):
    """Fixed-rate bases: displacement = lr_k * unit step (A.md §0)."""

    def _group_keys(self):
        return frozenset(self.opts)

    def _check(self, o):
        _need(o["lr"] >= 0 and math.isfinite(o["lr"]), "lr must be >= 0")
        _need(o["weight_decay"] >= 0, "weight_decay must be >= 0")
        if "eps" in o:
            _need(o["eps"] > 0, "eps must be > 0")

    def _lr(self):
        return [go["lr"] for go in self.gopts]

    def _unit(self, params, ctx):
        """Unit step (lr factored out), advancing the state."""
        raise NotImplementedError

    def _propose(self, params, ctx):
        u = self._unit(params, ctx)
        return [self.gopts[self.groups[i]]["lr"] * u[i] for i in range(len(u))]

    def _wd(self, params, ctx, i):
        """Coupled weight decay: g + λθ (torch)."""
        lam = self.gopts[self.groups[i]]["weight_decay"]
        g = ctx.grads[i]
        return g + lam * np.asarray(params[i], _F) if lam != 0 else g


class SGD(_FixedRate):
    def _defaults(self, options):
        return {"lr": 1e-3, "weight_decay": 0.0}

    def _unit(self, params, ctx):
        self.t += 1
        return [self._wd(params, ctx, i) for i in range(len(self.shapes))]


class Momentum(_FixedRate):
    """torch.optim.SGD with momentum: buf = g (first), buf = μ buf + (1-damp) g."""

    def _defaults(self, options):
        return {"lr": 1e-3, "momentum": 0.9, "dampening": 0.0,
                "nesterov": False, "weight_decay": 0.0}

    def _check(self, o):
        super()._check(o)
        _need(o["momentum"] >= 0, "momentum must be >= 0")
        _need(0 <= o["dampening"] <= 1, "dampening must be in [0, 1]")
        if o["nesterov"]:
            _need(o["momentum"] > 0 and o["dampening"] == 0,
                  "nesterov needs momentum > 0 and dampening 0")

    def _init_state(self):
        self.buf = [None] * len(self.shapes)

    def _momentum(self):
        return [go["momentum"] for go in self.gopts]

    def _unit(self, params, ctx):
        self.t += 1
        out = []
        for i in range(len(self.shapes)):
            go = self.gopts[self.groups[i]]
            g = self._wd(params, ctx, i)
            mu = go["momentum"]
            if self.buf[i] is None:
                self.buf[i] = g.copy()
            else:
                self.buf[i] = mu * self.buf[i] + (1.0 - go["dampening"]) * g
            out.append(g + mu * self.buf[i] if go["nesterov"] else self.buf[i].copy())
        return out


class Adam(_FixedRate):
    """Adam (coupled λ) / AdamW (decoupled λ): A.md:31."""

    def __init__(self, *a, decoupled=False, **k):
        self.decoupled = decoupled
        super().__init__(*a, **k)

    def _defaults(self, options):
        return {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                "weight_decay": 0.0}

    def _check(self, o):
        super()._check(o)
        _need(0 <= o["beta1"] < 1 and 0 <= o["beta2"] < 1, "betas must be in [0, 1)")

    def _init_state(self):
        self.m = [np.zeros(s, _F) for s in self.shapes]
        self.v = [np.zeros(s, _F) for s in self.shapes]

    def _momentum(self):
        return [go["beta1"] for go in self.gopts]

    def _unit(self, params, ctx):
        self.t += 1
        t = self.t
        out = []
        for i in range(len(self.shapes)):
            go = self.gopts[self.groups[i]]
            b1, b2, eps, lam = go["beta1"], go["beta2"], go["eps"], go["weight_decay"]
            g = ctx.grads[i] if self.decoupled else self._wd(params, ctx, i)
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            mhat = self.m[i] / (1 - b1 ** t)
            vhat = self.v[i] / (1 - b2 ** t)
            u = mhat / (np.sqrt(vhat) + eps)
            if self.decoupled and lam != 0:
                u = lam * np.asarray(params[i], _F) + u   # θ(1-ηλ) - η u  ==  θ - η(λθ + u)
            out.append(u)
        return out


class Adagrad(_FixedRate):
    def _defaults(self, options):
        return {"lr": 1e-2, "eps": 1e-10, "weight_decay": 0.0}

    def _init_state(self):
        self.s = [np.zeros(s, _F) for s in self.shapes]

    def _unit(self, params, ctx):
        self.t += 1
        out = []
        for i in range(len(self.shapes)):
            go = self.gopts[self.groups[i]]
            g = self._wd(params, ctx, i)
            self.s[i] = self.s[i] + g * g
            out.append(g / (np.sqrt(self.s[i]) + go["eps"]))
        return out


class RMSprop(_FixedRate):
    def _defaults(self, options):
        return {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0}

    def _check(self, o):
        super()._check(o)
        _need(0 <= o["alpha"] < 1, "alpha must be in [0, 1)")

    def _init_state(self):
        self.s = [np.zeros(s, _F) for s in self.shapes]

    def _unit(self, params, ctx):
        self.t += 1
        out = []
        for i in range(len(self.shapes)):
            go = self.gopts[self.groups[i]]
            g = self._wd(params, ctx, i)
            a = go["alpha"]
            self.s[i] = a * self.s[i] + (1 - a) * g * g
            out.append(g / (np.sqrt(self.s[i]) + go["eps"]))
        return out


# --------------------------------------------------------------------------
# §1 AutoOpt (paper 001)
# --------------------------------------------------------------------------
def _no_weight_decay(name, options):
    wd = options.get("weight_decay", 0.0)
    if wd != 0:
        raise ValueError(f"{name}: weight_decay is not an option of this algorithm")


class AutoOpt(_Optimizer):
    """AutoSGD / AutoAdam / AutoAdaGrad, one (α_k, β_k) per group (A.md §1)."""

    def __init__(self, name, *a, **k):
        self.base = name.split("-", 1)[1]   # 'sgd' | 'adam' | 'adagrad'
        super().__init__(name, *a, **k)

    def _defaults(self, options):
        _no_weight_decay(self.name, options)
        # ν: A.md:74-75 leaves Adam's to measurement; AMENDED by the lead after the
        # Fashion-MNIST benchmark: 0.99999 for auto-adam (0.9 diverged), 0.9 otherwise.
        d = {"nu": 0.99999 if self.base == "adam" else 0.9, "gamma_max": 0.999, "weight_decay": 0.0}
        if self.base == "adam":
            d.update(eps=1e-8, beta2=0.999)
        elif self.base == "adagrad":
            d.update(eps=1e-10)
        return d

    def _group_keys(self):
        return frozenset(k for k in ("nu", "gamma_max", "eps", "beta2") if k in self.opts)

    def _check(self, o):
        _need(0 <= o["nu"] < 1, "nu must be in [0, 1)")
        _need(0 < o["gamma_max"] < 1, "gamma_max must be in (0, 1)")
        if "eps" in o:
            _need(o["eps"] > 0, "eps must be > 0")
        if "beta2" in o:
            _need(0 <= o["beta2"] < 1, "beta2 must be in [0, 1)")

    def _init_state(self):
        self.d = [np.zeros(s, _F) for s in self.shapes]            # ĝ_{t-1}
        self.acc = [np.zeros(s, _F) for s in self.shapes]          # adam v / adagrad s
        self.gE = [[go["gamma_max"], 0.0] for go in self.gopts]    # A.md:73
        self.fallbacks = [0] * self.G
        self.clamps = [0] * self.G
        self.skips = [0] * self.G
        z = [0.0] * self.G
        self._tele = {k: list(z) for k in ("V", "a", "c", "e", "det", "gamma1_oracle",
                                           "gamma2_oracle", "gamma1", "gamma2",
                                           "fallbacks", "clamps", "skips")}
        for k in range(self.G):
            self._tele["gamma1"][k], self._tele["gamma2"][k] = self.gE[k]

    def _lr(self):
        return [1.0 - gE[0] for gE in self.gE]

    def _momentum(self):
        return [gE[1] / (1.0 - gE[0]) for gE in self.gE]

    def _precond(self, i, g, go):
        """D = Ĥ⁻¹ (A.md:45-47), after updating the base state with g."""
        if self.base == "sgd":
            return np.ones_like(g)
        if self.base == "adagrad":
            self.acc[i] = self.acc[i] + g * g
            return 1.0 / (np.sqrt(self.acc[i]) + go["eps"])
        b2 = go["beta2"]
        self.acc[i] = b2 * self.acc[i] + (1 - b2) * g * g
        return 1.0 / (np.sqrt(self.acc[i] / (1 - b2 ** self.t)) + go["eps"])

    def _propose(self, params, ctx):
        if ctx.S is None:
            raise ValueError(f"{self.name} needs per-sample data (sum_sq + batch_size, or per_sample)")
        N = ctx.N
        if N < 2:
            raise ValueError(f"{self.name}: batch size N = {N} < 2, the noise estimator is undefined")
        self.t += 1
        out = [None] * len(self.shapes)
        T = self._tele
        for k, mem in enumerate(self.members):
            go = self.gopts[k]
            gmax, nu = go["gamma_max"], go["nu"]
            D = {i: self._precond(i, ctx.grads[i], go) for i in mem}
            # 1. noise, eq. 22 via S (A.md:58)
            V = sum(float(np.sum(D[i] * (ctx.S[i] - N * ctx.grads[i] * ctx.grads[i]))) for i in mem)
            V = V / (N * (N - 1.0))
            V = max(V, 0.0) if not math.isnan(V) else V
            # 2. inner products (A.md:61)
            a = sum(float(np.sum(D[i] * ctx.grads[i] * ctx.grads[i])) for i in mem)
            c = sum(float(np.sum(D[i] * ctx.grads[i] * self.d[i])) for i in mem)
            e = sum(float(np.sum(D[i] * self.d[i] * self.d[i])) for i in mem)
            det = a * e - c * c
            T["V"][k], T["a"][k], T["c"][k], T["e"][k], T["det"][k] = V, a, c, e, det
            if a == 0.0:
                # skip (decision 6): γ_E, d, θ untouched
                self.skips[k] += 1
                T["gamma1_oracle"][k] = T["gamma2_oracle"][k] = 0.0
                for i in mem:
                    out[i] = np.zeros(self.shapes[i], _F)
            else:
                # 3. oracle (eq. 25) with fallback (A.md:63-69)
                ok = False
                if _isfinite(V, a, c, e, det) and det > 1e-12 * a * e:
                    g1 = V * (e - c) / det
                    g2 = V * c / det
                    ok = (_isfinite(g1, g2) and 0.0 <= g1 <= gmax and g2 >= 0.0
                          and g1 + g2 < 1.0)
                if not ok:
                    g1 = float(np.minimum(V / a, gmax))
                    g2 = 0.0
                    self.fallbacks[k] += 1
                T["gamma1_oracle"][k], T["gamma2_oracle"][k] = g1, g2
                # 4. smoothing (eq. 26, A.md:72)
                r1 = (1 - nu) * g1 + nu * self.gE[k][0]
                r2 = (1 - nu) * g2 + nu * self.gE[k][1]
                if r1 > gmax or r2 > gmax:
                    self.clamps[k] += 1
                self.gE[k] = [min(r1, gmax), min(r2, gmax)]
                G1, G2 = self.gE[k]
                # 6./7. direction (eq. 14) and update (eq. 9)
                for i in mem:
                    gh = (1.0 - G1 - G2) * ctx.grads[i] + G2 * self.d[i]
                    out[i] = D[i] * gh
                    self.d[i] = gh
            T["gamma1"][k], T["gamma2"][k] = self.gE[k]
            T["fallbacks"][k] = self.fallbacks[k]
            T["clamps"][k] = self.clamps[k]
            T["skips"][k] = self.skips[k]
        return out


# --------------------------------------------------------------------------
# §2 vSGD (paper 002)
# --------------------------------------------------------------------------
class VSGD(_Optimizer):
    """vSGD-l / -g / -b with slow start and optional finite-difference curvature."""

    def __init__(self, name, *a, **k):
        self.variant = name[-1]   # 'l' | 'g' | 'b'
        super().__init__(name, *a, **k)

    def _defaults(self, options):
        _no_weight_decay(self.name, options)
        return {"n0": 10, "slow_start_c": "d/10", "eps": 1e-9, "weight_decay": 0.0}

    def _check(self, o):
        n0 = o["n0"]
        _need(int(n0) == n0 and n0 >= 0, "n0 must be an integer >= 0")
        C = o["slow_start_c"]
        _need(C == "d/10" or (not isinstance(C, str) and C > 0), "slow_start_c must be > 0 or 'd/10'")
        _need(o["eps"] > 0, "eps must be > 0")

    def _init_state(self):
        self.n0 = int(self.opts["n0"])
        C = self.opts["slow_start_c"]
        d = sum(int(np.prod(s)) for s in self.shapes)
        self.C = d / 10.0 if C == "d/10" else float(C)
        self.eps = float(self.opts["eps"])
        n = len(self.shapes)
        # units for g/b: lists of tensor indices sharing one τ
        if self.variant == "g":
            self.units = [list(range(n))]
        elif self.variant == "b":
            self.units = [list(m) for m in self.members]
        else:
            self.units = None
        # slow-start accumulators
        self.sum_g = [np.zeros(s, _F) for s in self.shapes]
        self.sum_x = [np.zeros(s, _F) for s in self.shapes]
        self.sum_h = [np.zeros(s, _F) for s in self.shapes]
        self.gbar = [np.zeros(s, _F) for s in self.shapes]
        self.hbar = [np.zeros(s, _F) for s in self.shapes]
        if self.variant == "l":
            self.vbar = [np.zeros(s, _F) for s in self.shapes]
            self.tau = [np.ones(s, _F) for s in self.shapes]     # used only if n0 == 0
            self.eta = [np.zeros(s, _F) for s in self.shapes]
        else:
            self.l = [0.0] * len(self.units)
            self.tau_u = [1.0] * len(self.units)
            self.eta_u = [0.0] * len(self.units)
        self.initialised = self.n0 == 0
        z = [0.0] * self.G
        self._tele = {k: list(z) for k in ("tau_min", "tau_median", "tau_max", "eta_min",
                                           "eta_median", "eta_max", "h_plus", "slow_start")}
        self._lr_list = list(z)

    def _lr(self):
        return self._lr_list

    def _unit_of_group(self, k):
        if self.variant == "g":
            return 0
        return k

    def _curvature(self, params, ctx, gbar_prev):
        if ctx.curvature is not None:
            return ctx.curvature
        if ctx.grad_closure is None:
            raise ValueError(f"{self.name} needs curvature or grad_closure (finite differences)")
        eps = self.eps
        delta = [gb + eps for gb in gbar_prev]                                  # A.md:96
        shifted = [np.asarray(p, _F) + dl for p, dl in zip(params, delta)]
        g2 = ctx.grad_closure(shifted)
        if len(g2) != len(self.shapes):
            raise ValueError("grad_closure returned the wrong number of tensors")
        return [np.abs(np.asarray(gg, _F) - g) / np.maximum(np.abs(dl), eps)
                for gg, g, dl in zip(g2, ctx.grads, delta)]

    def _propose(self, params, ctx):
        eps = self.eps
        if ctx.curvature is None and ctx.grad_closure is None:
            raise ValueError(f"{self.name} needs curvature or grad_closure (finite differences)")
        if ctx.S is not None:
            n = ctx.N
            _need(n >= 1, "batch size must be >= 1")
            x = [S / n for S in ctx.S]                                          # x = S/N
        else:
            n = 1
            x = [g * g for g in ctx.grads]                                      # x = g²
        self.t += 1
        nt = len(self.shapes)
        T = self._tele
        if self.t <= self.n0:
            # ---- slow start (§4.4, A.md:115-118): no parameter moves
            prev = self.t - 1
            gbar_prev = [sg / prev if prev > 0 else np.zeros_like(sg) for sg in self.sum_g]
            h = self._curvature(params, ctx, gbar_prev)
            for i in range(nt):
                self.sum_g[i] += ctx.grads[i]
                self.sum_x[i] += x[i]
                self.sum_h[i] += np.maximum(h[i], eps)
            cnt = float(self.t)
            for i in range(nt):
                self.gbar[i] = self.sum_g[i] / cnt
                self.hbar[i] = self.sum_h[i] / cnt
            if self.t == self.n0:
                mean_x = [sx / cnt for sx in self.sum_x]
                if self.variant == "l":
                    self.vbar = [self.C * mx for mx in mean_x]
                    self.tau = [np.full(s, 2.0) for s in self.shapes]
                else:
                    self.l = [self.C * sum(float(np.sum(mean_x[i])) for i in u) for u in self.units]
                    self.tau_u = [2.0] * len(self.units)
                self.initialised = True
            for k, mem in enumerate(self.members):
                if self.initialised:
                    if self.variant == "l":
                        tk = np.concatenate([self.tau[i].ravel() for i in mem])
                        tmin, tmed, tmax = tk.min(), np.median(tk), tk.max()
                    else:
                        tmin = tmed = tmax = self.tau_u[self._unit_of_group(k)]
                else:
                    tmin = tmed = tmax = 0.0
                T["tau_min"][k], T["tau_median"][k], T["tau_max"][k] = tmin, tmed, tmax
                T["eta_min"][k] = T["eta_median"][k] = T["eta_max"][k] = 0.0
                T["h_plus"][k] = self._hplus_group(k)
                T["slow_start"][k] = 1.0
                self._lr_list[k] = 0.0
            return [np.zeros(s, _F) for s in self.shapes]

        # ---- regular step (Algorithm 1, A.md:102-113)
        h = self._curvature(params, ctx, self.gbar)
        out = [None] * nt
        if self.variant == "l":
            for i in range(nt):
                inv = 1.0 / self.tau[i]
                self.gbar[i] = (1 - inv) * self.gbar[i] + inv * ctx.grads[i]
                self.vbar[i] = (1 - inv) * self.vbar[i] + inv * x[i]
                self.hbar[i] = (1 - inv) * self.hbar[i] + inv * np.maximum(h[i], eps)
                gb2 = self.gbar[i] * self.gbar[i]
                den = self.vbar[i] / n + (n - 1.0) / n * gb2
                rho = gb2 / np.maximum(den, eps)
                self.eta[i] = rho / np.maximum(self.hbar[i], eps)
                self.tau[i] = np.maximum((1 - rho) * self.tau[i] + 1.0, 1.0)
                out[i] = self.eta[i] * ctx.grads[i]
            for k, mem in enumerate(self.members):
                tk = np.concatenate([self.tau[i].ravel() for i in mem])
                ek = np.concatenate([self.eta[i].ravel() for i in mem])
                T["tau_min"][k], T["tau_median"][k], T["tau_max"][k] = tk.min(), np.median(tk), tk.max()
                T["eta_min"][k], T["eta_median"][k], T["eta_max"][k] = ek.min(), np.median(ek), ek.max()
                self._lr_list[k] = float(np.median(ek))
        else:
            for u, mem in enumerate(self.units):
                inv = 1.0 / self.tau_u[u]
                sx = 0.0
                for i in mem:
                    self.gbar[i] = (1 - inv) * self.gbar[i] + inv * ctx.grads[i]
                    self.hbar[i] = (1 - inv) * self.hbar[i] + inv * np.maximum(h[i], eps)
                    sx += float(np.sum(x[i]))
                self.l[u] = (1 - inv) * self.l[u] + inv * sx
                sg = sum(float(np.sum(self.gbar[i] * self.gbar[i])) for i in mem)
                hplus = max(float(np.max(self.hbar[i])) if self.hbar[i].size else 0.0 for i in mem)
                rho = sg / max(self.l[u] / n + (n - 1.0) / n * sg, eps)
                self.eta_u[u] = rho / max(hplus, eps)
                self.tau_u[u] = max((1 - rho) * self.tau_u[u] + 1.0, 1.0)
                for i in mem:
                    out[i] = self.eta_u[u] * ctx.grads[i]
            for k in range(self.G):
                u = self._unit_of_group(k)
                T["tau_min"][k] = T["tau_median"][k] = T["tau_max"][k] = self.tau_u[u]
                T["eta_min"][k] = T["eta_median"][k] = T["eta_max"][k] = self.eta_u[u]
                self._lr_list[k] = self.eta_u[u]
        for k in range(self.G):
            T["h_plus"][k] = self._hplus_group(k)
            T["slow_start"][k] = 0.0
        return out

    def _hplus_group(self, k):
        mem = list(range(len(self.shapes))) if self.variant == "g" else self.members[k]
        vals = [float(np.max(self.hbar[i])) for i in mem if self.hbar[i].size]
        return max(vals) if vals else 0.0


# --------------------------------------------------------------------------
# §4 TLR (paper 004)
# --------------------------------------------------------------------------
class TLR(_Optimizer):
    """GD-TLR (window 1, Algorithm 2) and its SGD extension (window K, eq. 10)."""

    def _defaults(self, options):
        return {"lr": 0.01, "c": 0.25, "momentum": 0.0, "weight_decay": 0.0, "window": 1,
                "per_group": False, "alpha_min": 1e-12}

    def _group_keys(self):
        keys = {"momentum", "weight_decay"}
        if self.opts["per_group"]:
            keys |= {"lr", "c", "alpha_min"}
        return frozenset(keys)

    def _check(self, o):
        _need(o["lr"] > 0 and math.isfinite(o["lr"]), "lr (initial alpha) must be > 0")
        _need(o["c"] > 0, "c must be > 0")
        _need(o["momentum"] >= 0, "momentum must be >= 0")
        _need(o["weight_decay"] >= 0, "weight_decay must be >= 0")
        w = o["window"]
        _need(int(w) == w and w >= 1, "window must be an integer >= 1")
        _need(o["alpha_min"] >= 0, "alpha_min must be >= 0")
        _need(isinstance(o["per_group"], (bool, np.bool_)), "per_group must be a bool")

    def _init_state(self):
        self.per_group = bool(self.opts["per_group"])
        self.window = int(self.opts["window"])
        if self.per_group:
            self.units = [list(m) for m in self.members]
            self.uopts = self.gopts
        else:
            self.units = [list(range(len(self.shapes)))]
            self.uopts = [self.opts]
        self.unit_of = [0] * len(self.shapes)
        for u, mem in enumerate(self.units):
            for i in mem:
                self.unit_of[i] = u
        self.alpha = [float(o["lr"]) for o in self.uopts]
        self.buf = [None] * len(self.shapes)
        self.Gprev = None                      # previous G (per tensor)
        self.snapshot = None                   # window > 1
        self.ip = [0.0] * len(self.units)
        self.den = [0.0] * len(self.units)
        self.cap_hits = [0] * len(self.units)
        self._refresh_tele()

    def _unit_of_group(self, k):
        return k if self.per_group else 0

    def _refresh_tele(self):
        u = [self._unit_of_group(k) for k in range(self.G)]
        self._tele = {"alpha": [self.alpha[x] for x in u], "ip": [self.ip[x] for x in u],
                      "den": [self.den[x] for x in u], "cap_hits": [self.cap_hits[x] for x in u]}

    def _lr(self):
        return [self.alpha[self._unit_of_group(k)] for k in range(self.G)]

    def _momentum(self):
        return [go["momentum"] for go in self.gopts]

    def _update_alpha(self, G, Gp):
        """α ← α(1 + ip/den), den = max(4(nn−ip), ip/c) (eq. 9, A.md:174-177)."""
        for u, mem in enumerate(self.units):
            o = self.uopts[u]
            ip = sum(_dot(G[i], Gp[i]) for i in mem)
            nn = sum(_dot(G[i], G[i]) for i in mem)
            c = o["c"]
            newton = 4.0 * (nn - ip)
            cap = ip / c
            den = max(newton, cap)
            self.ip[u], self.den[u] = ip, den
            if _isfinite(ip, nn, den) and den > 0:
                a_new = self.alpha[u] * (1.0 + ip / den)
                if math.isfinite(a_new):
                    self.alpha[u] = max(a_new, o["alpha_min"])
                    if cap >= newton:
                        self.cap_hits[u] += 1

    def _propose(self, params, ctx):
        self.t += 1
        nt = len(self.shapes)
        if self.window > 1 and self.t == 1:
            self.snapshot = [np.array(p, dtype=_F, copy=True) for p in params]
        # G_t = g + λθ (before momentum)
        G = []
        for i in range(nt):
            lam = self.gopts[self.groups[i]]["weight_decay"]
            G.append(ctx.grads[i] + lam * np.asarray(params[i], _F) if lam != 0 else ctx.grads[i].copy())
        if self.window == 1:
            if self.t > 1:
                self._update_alpha(G, self.Gprev)
            self.Gprev = G
        # SGD(+momentum) step with the current α (torch buffer convention, decision 23)
        out = []
        for i in range(nt):
            mu = self.gopts[self.groups[i]]["momentum"]
            if self.buf[i] is None or mu == 0:
                self.buf[i] = G[i].copy()
            else:
                self.buf[i] = mu * self.buf[i] + G[i]
            out.append(self.alpha[self.unit_of[i]] * self.buf[i])
        if self.window > 1 and self.t % self.window == 0:
            theta_new = [np.asarray(p, _F) - s for p, s in zip(params, out)]
            Gw = [(self.snapshot[i] - theta_new[i]) / self.alpha[self.unit_of[i]] for i in range(nt)]
            if self.Gprev is not None:
                self._update_alpha(Gw, self.Gprev)
            self.Gprev = Gw
            self.snapshot = theta_new
        self._refresh_tele()
        return out


# --------------------------------------------------------------------------
# §3 GI (paper 003)
# --------------------------------------------------------------------------
_GI_KEYS = ("base", "lr", "f_star", "R", "up", "down", "hi", "lo", "adapt_every", "base_lr")


class GI(_Optimizer):
    """Learning-rate adaptation by Gaussian inference, wrapping any other algorithm."""

    def __init__(self, name, shapes, groups, group_options, options):
        options = dict(options)
        base_name = options.get("base", "sgd")
        bases = FIXED_RATE + AUTOMATIC + tuple(REGISTERED)
        if base_name not in bases:
            raise ValueError(f"gi: base must be one of {bases}")
        self.base_name = base_name
        self.fixed = base_name in FIXED_RATE
        for go in (group_options or {}).values():
            if "lr" in go:
                raise ValueError("gi: lr (η) is one global scale and cannot be set per group")
        base_opts = {k: v for k, v in options.items() if k not in _GI_KEYS}
        if "base_lr" in options:
            if base_name != "tlr" and not getattr(REGISTERED.get(base_name), "OWN_LR", False):
                raise ValueError("gi: base_lr only applies to a base with its own lr (tlr, prodigy)")
            base_opts["lr"] = options["base_lr"]
        if base_name == "momentum":
            base_opts.setdefault("momentum", 0.5)        # A.md:152-153
        if base_name in ("adam", "adamw"):
            base_opts.setdefault("beta1", 0.5)
        self.base = make(base_name, shapes, groups, group_options, **base_opts)
        gi_opts = {k: v for k, v in options.items() if k in _GI_KEYS}
        super().__init__(name, shapes, groups, None, gi_opts)

    def _defaults(self, options):
        return {"base": "sgd", "lr": 1e-3 if self.fixed else 1.0, "f_star": None, "R": 0.0,
                "up": 1.2, "down": 0.5, "hi": 4.0 / 3.0, "lo": 0.75, "adapt_every": 1,
                "base_lr": 0.01}

    def _check(self, o):
        _need(o["lr"] > 0 and math.isfinite(o["lr"]), "lr (initial eta) must be > 0")
        _need(o["R"] >= 0, "R must be >= 0")
        _need(o["up"] > 0 and o["down"] > 0, "up and down must be > 0")
        _need(o["hi"] >= o["lo"], "hi must be >= lo")
        ae = o["adapt_every"]
        _need(int(ae) == ae and ae >= 1, "adapt_every must be an integer >= 1")

    def _init_state(self):
        self.eta = float(self.opts["lr"])
        self.skipped = 0
        self._lr_list = self._base_lrs(self.eta)
        z = [0.0] * self.G
        self._tele = {"phi": list(z), "rho": list(z), "eta": [self.eta] * self.G,
                      "skipped": list(z)}

    def _base_lrs(self, mult):
        if self.fixed:
            return [mult] * self.G
        return [mult * b for b in self.base.lr]

    def _lr(self):
        return self._lr_list

    def _momentum(self):
        return self.base.momentum

    def _prediction(self, params, ctx, disp, phi, moved):
        """§3: ρ = (f − f+)/(φ/2), f+ the loss at θ − disp. Returns (φ/2, a thunk giving f+);
        the thunk shows the closure θ − disp (decision 22: written into params and restored
        unless the step has `moved` them itself)."""
        if moved:
            return phi / 2.0, lambda: float(ctx.closure())
        return phi / 2.0, lambda: _loss_at(params, [np.asarray(p, _F) - d for p, d in zip(params, disp)], ctx.closure)

    def _run(self, params, ctx, apply, prediction=None):
        """One step of Algorithm 1 (§3); the displacement. `prediction`, with _prediction's
        signature, replaces ρ's denominator and f+ for a wrapper that moves the caller's
        parameters otherwise than by the displacement (schedule-free, §3.3). It is asked on every
        adapting step (so that a wrapper can record its prediction even where φ gave none); its f+
        is taken only where φ allowed adaptation and the prediction is > 0 and finite."""
        o = self.opts
        f_star, R = o["f_star"], float(o["R"])
        t = self.t + 1
        adapt = (t - 1) % int(o["adapt_every"]) == 0                          # A.md:154-155
        need_f = adapt or f_star is not None
        if need_f and ctx.loss is None:
            raise ValueError("gi: loss is required on this step")
        if adapt and ctx.closure is None:
            raise ValueError("gi: closure is required on this step (re-evaluation)")
        self.t = t
        # v = η W g (fixed-rate base at lr η) or η s (automatic base), advancing the base
        s = self.base._unit(params, ctx) if self.fixed else self.base._propose(params, ctx)
        eta_used = self.eta
        v = [eta_used * si for si in s]
        phi = sum(_dot(g, vi) for g, vi in zip(ctx.grads, v))                  # φ = g·v, global
        f = float(ctx.loss) if need_f else None
        # Decision 18a: with f_star set, a negative φ still gets the paper's move (it is
        # η-agnostic, paper 003 Fig. 4); only the adaptation is skipped (and counted).
        reversed_move = f_star is not None and math.isfinite(phi) and phi < 0
        ok = math.isfinite(phi) and (phi > 0 or reversed_move) and (f is None or math.isfinite(f))
        factor = 1.0
        if ok:
            dF = max(f - f_star, 0.0) if f_star is not None else phi / 2.0    # A.md:143
            factor = 2.0 * dF / (phi + R)
            ok = math.isfinite(dF) and math.isfinite(factor)
        if not ok:
            factor = 1.0                                                       # plain base step
            self.skipped += 1
            disp = v
        else:
            disp = [factor * vi for vi in v]
            if reversed_move:
                self.skipped += 1
        if apply:
            for p, dsp in zip(params, disp):
                p -= dsp
        rho = 0.0
        if adapt:
            # ρ's denominator and f+: §3's by default, a wrapper's (schedule-free, §3.3) if given.
            half, f_plus = (prediction or self._prediction)(params, ctx, disp, phi, apply)
            if ok and not reversed_move:
                if math.isfinite(half) and half > 0:
                    fplus = f_plus()
                    rho = (f - fplus) / half                                   # A.md:146
                    if not math.isfinite(fplus):
                        self.eta *= o["down"]                                  # A.md:151
                    elif rho > o["hi"]:
                        self.eta *= o["up"]
                    elif rho < o["lo"]:
                        self.eta *= o["down"]
                else:
                    self.skipped += 1          # §3.3: no usable prediction of the caller's move
        self._lr_list = self._base_lrs(eta_used * factor)
        T = self._tele
        for k in range(self.G):
            T["phi"][k], T["rho"][k], T["eta"][k], T["skipped"][k] = phi, rho, self.eta, self.skipped
        return disp

    def propose(self, params, grads, prediction=None, **kw):
        """The displacement, params unchanged; `prediction` as in _run."""
        ctx = self._ctx(params, grads, **kw)
        return self._run(params, ctx, apply=False, prediction=prediction)

    def step(self, params, grads, **kw):
        ctx = self._ctx(params, grads, **kw)
        self._run(params, ctx, apply=True)
        return None


# --------------------------------------------------------------------------
# factory
# --------------------------------------------------------------------------
def make(algorithm, shapes, groups=None, group_options=None, **options):
    """Create a reference optimizer (see module docstring)."""
    a = algorithm
    if a == "sgd":
        return SGD(a, shapes, groups, group_options, options)
    if a == "momentum":
        return Momentum(a, shapes, groups, group_options, options)
    if a in ("adam", "adamw"):
        return Adam(a, shapes, groups, group_options, options, decoupled=(a == "adamw"))
    if a == "adagrad":
        return Adagrad(a, shapes, groups, group_options, options)
    if a == "rmsprop":
        return RMSprop(a, shapes, groups, group_options, options)
    if a in ("auto-sgd", "auto-adam", "auto-adagrad"):
        return AutoOpt(a, shapes, groups, group_options, options)
    if a in ("vsgd-l", "vsgd-g", "vsgd-b"):
        return VSGD(a, shapes, groups, group_options, options)
    if a == "tlr":
        return TLR(a, shapes, groups, group_options, options)
    if a == "gi":
        return GI(a, shapes, groups, group_options, options)
    if a in REGISTERED:
        return REGISTERED[a](a, shapes, groups, group_options, options)
    raise ValueError(f"unknown algorithm {algorithm!r}; accepted: {list(ALGORITHMS)}")
