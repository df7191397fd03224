"""Independent float64 NumPy reference of Prodigy and of schedule-free over any base.

Written from docs/algorithms.md (cited "§n"; §1 AutoOpt, §3 GI, §6 the peers), the README's
list of what schedule-free "over any base" means and where autolr differs from the reference
(cited "README sf"), and the reference packages' own Python source, which §6 makes the
specification of the peers: prodigyopt 1.1.2 `Prodigy.step` (cited "Prodigy") and
schedulefree 1.4.1 `AdamWScheduleFree.step/eval/train` (cited "AdamWSF"). No code of the
library under test was read. AutoOpt and GI are reference.py's (checked against the current
§1 and §3: the preconditioner after absorbing g, the fallback and clamp rules, AutoAdam's
ν = 0.99999, GI's skip rule with decision 18a, lr = η·factor × the base's lr); this module
registers `prodigy` there, so that GI can wrap it, and gives GI under schedule-free the
prediction of §3.3 (S8). Pure numpy, float64 throughout.

Interface: that of reference.py (`make(algorithm, shapes, groups, group_options, **options)`,
`step`, `propose`, `lr`, `momentum`, `telemetry()`), and for schedule-free `eval(params)` /
`train(params)`, which rewrite `params` between y and x as the optimizer's do.

Decisions taken where the specs are silent
------------------------------------------

Prodigy (§6.1, Prodigy)

P1. Prodigy.step operation for operation, in float64. The scalars d, d_max, d_numerator and the
    step count k are one global record (the reference reads them from param group 0 and
    writes the same values into every group). Global options, as the reference reads them from
    group 0 (§6.1 table): beta1, beta2, beta3 (None = √β2), decouple, use_bias_correction, d0,
    d_coef, growth_rate (None = ∞); per group: lr, eps, weight_decay, safeguard_warmup. Only
    slice_p = 1; no FSDP path.
P2. Every group's lr must be the largest lr or 0 (the reference's RuntimeError; a ValueError
    here, at construction). All groups at lr 0 is refused (the reference would then read an
    undefined global_d_numerator).
P3. p0 is the tensor's value at its first step (the reference's state initialisation; its
    scalar-zero p0 for an all-zero tensor has the same values).
P4. Coupled decay (decouple = 0): g ← g + λθ first (the reference adds into p.grad); the
    numerator's ⟨g, p0 − θ⟩, the moments and s all use that g.
P5. Σ|s| = 0 (the reference's early return): no displacement, the moments and s have absorbed
    g, and k, d, d_max, d_numerator, d_denom, d_hat stay as they were; counted in `skips`
    (§6.1: "moves nothing and does not count").
P6. A group with lr 0 absorbs nothing into its moments and s, yet the reference's update loop
    still runs over it with the global dlr (decoupled decay λ·dlr·θ, and with β1 = 0 the raw
    step dlr·d·g/(√v + d·ε)); followed as written.
P7. The displacement (what GI scales, §3): s = λ·dlr·θ (decoupled, λ ≠ 0) + dlr·m/(√v + d·ε)
    (β1 > 0) or dlr·d·g/(√v + d·ε) (β1 = 0), dlr = d·lr·bias with the d before this step's
    update and the updated d in the denominator: the reference's two in-place updates
    θ ← θ − λ·dlr·θ, θ ← θ − dlr·m/denom as one move.
P8. Telemetry (§6.1): d, d_hat (0 before the first step), d_max, d_numerator, d_denom, dlr (the
    last step's), steps (k), skips; the same value in every group. `lr` per group: the last
    step's dlr for a group with lr > 0, else 0, and 0 before the first step (§6.1); `momentum`:
    β1.

Schedule-free (§6, README sf, AdamWSF)

S1. Per group, with its own step count k (from 0), the scalars as AdamWSF.step computes them:
    sched = (k+1)/warmup_steps if k < warmup_steps else 1; lr = lr_opt·sched;
    lr_max = max(lr, lr_max) (from −1); weight = (k+1)^r · lr_max^weight_lr_power;
    weight_sum += weight; c = weight/weight_sum, or 0 when weight_sum is 0 (the reference's
    ZeroDivisionError).
S2. The step (README sf): the base is given z as its parameters and the caller's gradient
    (taken at y), and returns its displacement s — a fixed-rate base run at its group's
    scheduled lr (its own lr option is set to it each step), an automatic base at its own rate
    scaled by lr (then a factor) times the warmup: s = lr·s_base. With λ schedule-free's
    weight_decay (at y): S = lr·λ·y + s; z' = z − S; y' = y + c(z − y) + (β(1−c) − 1)(z − z').
    The README writes y ← lerp(y, z, c) + (β(1−c) − 1)(z − z') as "the reference's update with
    lr·g' = lr·λ·y + s"; AdamWSF lerps y towards the z of before the step and adds
    lr(β(1−c) − 1)·g', so z there is the old z and z − z' = S.
S3. β is the option `beta1` over adam/adamw (AdamWSF's betas[0]) and `momentum` over every
    other base (README sf); over adam/adamw the base runs with β1 = 0 (AdamWSF has no first
    moment). The base's own options keep their names except lr (an automatic base's own lr is
    `base_lr`), weight_decay (`base_weight_decay`, at z) and momentum (`base_momentum`); a GI
    base's own `base` is `base_base` (decision: the README names no rule for it; this follows
    its pattern of prefixing the base's colliding names). A fixed-rate base takes no lr of
    its own (schedule-free's is its lr).
S4. z starts as a copy of y at the tensor's first step (AdamWSF's state initialisation).
S5. eval: x = y + (1 − 1/β)(z − y); train: y = x + (1 − β)(z − x), each group with its β
    (AdamWSF's lerps); identities before the first step (no z). Modes (README sf): the
    optimizer starts in train mode; a step in eval mode, eval in eval mode, and train in train
    mode after the first step are refused (ValueError).
S6. Defaults (README sf): lr 0.0025 over adam/adamw (AdamWSF), 1 over every other base
    (SGDScheduleFree's, and the automatic base's factor); β 0.9; weight_decay 0; r 0;
    weight_lr_power 2; warmup_steps 0, one value for all groups. Per group: lr, β, weight_decay,
    r, weight_lr_power, and the base's per-group options.
S7. Telemetry: sf_lr (the scheduled lr), lr_max, weight, weight_sum, ckp1 (README sf's scalars),
    then the base's entries. `lr` per group (the specs are silent; GI's rule of §3.1 for an
    automatic base, "multiplied by the base's own lr"): the scheduled lr times the base's lr
    of the group for an automatic base, the scheduled lr for a fixed-rate one; before the first
    step lr_opt (× the base's lr). `momentum`: β.
S8. Over gi: docs/algorithms.md §3.3 (decision 19d). GI is an automatic base (S2, S3): its
    initial η is `base_lr`, its base `base_base`, its other options keep their names. GI runs on
    a copy of z at the caller's gradient g (taken at y) and its `loss` f (at y): its base's
    displacement s, φ = η·g·s (z's frame), the move scale k = η·2Δf/(φ + R) or η, and every rule
    of §3.1 about φ (the plain-step rule, decision 18a) are §3's, unchanged; GI's displacement
    k·s is S2's s_base (z' = z − lr·λ·y − lr·k·s). On an adapting step ((t − 1) % adapt_every
    == 0) the prediction is that of the caller's move y → y' (y' from S2): φ_y = Σ g·(y − y'),
    one sum over all tensors, each with its own group's c, β, lr, λ, over the caller's g (not
    g + λθ); f+ is the closure's loss, called once with the caller's params holding y' (then
    restored: step() writes y' itself, propose() leaves params as given); ρ = (f − f+)/(φ_y/2)
    and η adapts from it by §3's rules (f+ non-finite: η ← down·η, ρ reads NaN). φ_y ≤ 0 or
    non-finite: η is not adapted, counted in `skipped`. Telemetry: S7's, then GI's (phi = GI's
    φ, rho, eta, skipped), then `phi_y`, then GI's base's. `lr` per group as S7 (GI's lr, §3.1,
    times the scheduled lr). Where §3.3 is silent:
    (a) A step that takes the plain-step rule (φ ≤ 0 or non-finite, Δf or the factor
        non-finite) or decision 18a's reversed move adapts nothing as in §3.1: no f+ (the
        closure is not called), ρ = 0, η unchanged, one count in `skipped`. φ_y is still formed
        from that step's move and recorded, because telemetry phi_y is "the last adapting
        step's φ_y" and such a step is an adapting one in §3.2's sense (it would wait for a
        report).
    (b) φ_y ≤ 0 or non-finite where φ allowed adaptation: the closure is not called either
        (as §3.1 does for φ: no usable prediction, no re-evaluation; §3.3's "the report is taken
        and ignored" is the two-phase protocol, which this reference does not have); ρ = 0.
    (c) `skipped` counts a step at most once: a step skipped for φ never consults φ_y.
    (d) phi_y keeps its value over non-adapting steps (adapt_every > 1), and is the same in
        every group (one global sum).
    (e) GI's own `base_lr` (the lr of a base with its own, e.g. tlr's α) has no name under
        schedule-free, whose `base_lr` is GI's η (S3): such a base keeps its default.
    This replaces the earlier reading (ρ against GI's own φ/2 with f+ at the new y), under which
    η only falls (README: y's decrease is about (1 − β) of φ).
"""

from __future__ import annotations

import math

import numpy as np

import reference as ref

__all__ = ["make", "Prodigy", "ScheduleFree"]

_F = np.float64
_need = ref._need


# --------------------------------------------------------------------------
# Prodigy (prodigyopt 1.1.2)
# --------------------------------------------------------------------------
class Prodigy(ref._Optimizer):
    OWN_LR = True
    GROUP_KEYS = frozenset(("lr", "eps", "weight_decay", "safeguard_warmup"))

    def _defaults(self, options):
        return {"lr": 1.0, "beta1": 0.9, "beta2": 0.999, "beta3": None, "eps": 1e-8, "weight_decay": 0.0,
                "decouple": True, "use_bias_correction": False, "safeguard_warmup": False,
                "d0": 1e-6, "d_coef": 1.0, "growth_rate": None}

    def _check(self, o):
        _need(o["lr"] >= 0 and math.isfinite(o["lr"]), "lr must be >= 0")
        _need(0 <= o["beta1"] < 1 and 0 <= o["beta2"] < 1, "betas must be in [0, 1)")
        _need(o["beta3"] is None or 0 <= o["beta3"] <= 1, "beta3 must be in [0, 1]")
        _need(o["eps"] > 0, "eps must be > 0")
        _need(o["weight_decay"] >= 0, "weight_decay must be >= 0")
        _need(o["d0"] > 0 and o["d_coef"] > 0, "d0 and d_coef must be > 0")
        _need(o["growth_rate"] is None or o["growth_rate"] > 0, "growth_rate must be > 0")

    def _init_state(self):
        lrs = [go["lr"] for go in self.gopts]
        top = max(lrs)
        _need(top > 0, "prodigy: every group has lr 0")                              # P2
        _need(all(x in (top, 0.0) for x in lrs), "prodigy: each group's lr must be the largest or 0")
        o = self.opts
        self.d = self.d_max = float(o["d0"])
        self.d_numerator = self.d_denom = self.d_hat = self.dlr = 0.0
        self.k = 0
        self.skips = 0
        self.m = [np.zeros(s, _F) for s in self.shapes] if o["beta1"] > 0 else None
        self.v = [np.zeros(s, _F) for s in self.shapes]
        self.s = [np.zeros(s, _F) for s in self.shapes]
        self.p0 = None
        self._refresh_tele()

    def _refresh_tele(self):
        vals = {"d": self.d, "d_hat": self.d_hat, "d_max": self.d_max, "d_numerator": self.d_numerator,
                "d_denom": self.d_denom, "dlr": self.dlr, "steps": self.k, "skips": self.skips}
        self._tele = {k: [v] * self.G for k, v in vals.items()}

    def _lr(self):
        return [self.dlr if go["lr"] > 0 else 0.0 for go in self.gopts]                # P8

    def _momentum(self):
        return [self.opts["beta1"]] * self.G

    def _propose(self, params, ctx):
        o = self.opts
        b1, b2 = o["beta1"], o["beta2"]
        b3 = math.sqrt(b2) if o["beta3"] is None else o["beta3"]
        d, d0 = self.d, o["d0"]
        lr = max(go["lr"] for go in self.gopts)
        k = self.k
        bias = math.sqrt(1 - b2 ** (k + 1)) / (1 - b1 ** (k + 1)) if o["use_bias_correction"] else 1.0
        dlr = d * lr * bias
        if self.p0 is None:
            self.p0 = [np.array(p, dtype=_F, copy=True) for p in params]                # P3
        nt = len(self.shapes)
        grads = []
        for i in range(nt):
            go = self.gopts[self.groups[i]]
            g = ctx.grads[i]
            if go["weight_decay"] != 0 and not o["decouple"]:
                g = g + go["weight_decay"] * np.asarray(params[i], _F)                   # P4
            grads.append(g)
        d_numerator = self.d_numerator * b3
        delta, d_denom = 0.0, 0.0
        for i in range(nt):
            go = self.gopts[self.groups[i]]
            if go["lr"] == 0:
                continue                                                                 # P6
            g = grads[i]
            delta += (d / d0) * dlr * ref._dot(g, self.p0[i] - np.asarray(params[i], _F))
            if b1 > 0:
                self.m[i] = b1 * self.m[i] + d * (1 - b1) * g
            self.v[i] = b2 * self.v[i] + d * d * (1 - b2) * g * g
            self.s[i] = b3 * self.s[i] + (d / d0) * (d if go["safeguard_warmup"] else dlr) * g
            d_denom += float(np.sum(np.abs(self.s[i])))
        if d_denom == 0:                                                                 # P5
            self.skips += 1
            self._refresh_tele()
            return [np.zeros(s, _F) for s in self.shapes]
        num = d_numerator + delta
        d_hat = o["d_coef"] * num / d_denom
        if d == d0:
            d = max(d, d_hat)
        self.d_max = max(self.d_max, d_hat)
        growth = math.inf if o["growth_rate"] is None else o["growth_rate"]
        d = min(self.d_max, d * growth)
        self.d, self.d_hat, self.d_numerator, self.d_denom, self.dlr = d, d_hat, num, d_denom, dlr
        out = []
        for i in range(nt):                                                              # P7
            go = self.gopts[self.groups[i]]
            denom = np.sqrt(self.v[i]) + d * go["eps"]
            move = dlr * self.m[i] / denom if b1 > 0 else dlr * d * grads[i] / denom
            if go["weight_decay"] != 0 and o["decouple"]:
                move = go["weight_decay"] * dlr * np.asarray(params[i], _F) + move
            out.append(move)
        self.k += 1
        self._refresh_tele()
        return out


ref.register("prodigy", Prodigy)


# --------------------------------------------------------------------------
# schedule-free over any base (schedulefree 1.4.1, README sf)
# --------------------------------------------------------------------------
_ALIASES = {"schedule-free": None, "sf-adamw": "adamw", "sf-sgd": "sgd"}
_RENAMED = {"base_lr": "lr", "base_weight_decay": "weight_decay", "base_momentum": "momentum", "base_base": "base"}


class ScheduleFree(ref._Optimizer):
    def __init__(self, name, shapes, groups, group_options, options):
        options = dict(options)
        base = _ALIASES[name] or options.pop("base", "adamw")
        if name != "schedule-free" and "base" in options:
            raise ValueError(f"{name}: the base is {base}")
        self.base_name = base
        self.fixed = base in ref.FIXED_RATE
        self.beta_key = "beta1" if base in ("adam", "adamw") else "momentum"
        own = {"lr", self.beta_key, "weight_decay", "warmup_steps", "r", "weight_lr_power"}

        def split(opts):
            mine = {k: v for k, v in opts.items() if k in own}
            theirs = {_RENAMED.get(k, k): v for k, v in opts.items() if k not in own}
            return mine, theirs

        sf_opts, base_opts = split(options)
        sf_groups, base_groups = {}, {}
        for k, go in (group_options or {}).items():
            sf_groups[k], base_groups[k] = split(go)
        if self.fixed:
            _need(all("lr" not in o for o in [base_opts, *base_groups.values()]),
                  f"schedule-free over {base}: the base runs at schedule-free's lr")     # S3
            base_opts["lr"] = 0.0                       # replaced by the scheduled lr every step
        if base in ("adam", "adamw"):
            base_opts["beta1"] = 0.0
        self.base = make(base, shapes, groups, base_groups, **base_opts)
        super().__init__(name, shapes, groups, sf_groups, sf_opts)

    def _defaults(self, options):
        return {"lr": 0.0025 if self.base_name in ("adam", "adamw") else 1.0, self.beta_key: 0.9,
                "weight_decay": 0.0, "warmup_steps": 0, "r": 0.0, "weight_lr_power": 2.0}

    def _group_keys(self):
        return frozenset(("lr", self.beta_key, "weight_decay", "r", "weight_lr_power"))

    def _check(self, o):
        _need(o["lr"] >= 0 and math.isfinite(o["lr"]), "lr must be >= 0")
        _need(0 < o[self.beta_key] < 1, f"{self.beta_key} must be in (0, 1)")
        _need(o["weight_decay"] >= 0, "weight_decay must be >= 0")
        w = o["warmup_steps"]
        _need(int(w) == w and w >= 0, "warmup_steps must be a whole number >= 0")

    def _init_state(self):
        self.k = [0] * self.G
        self.lr_max = [-1.0] * self.G
        self.weight_sum = [0.0] * self.G
        self.sched_lr = [0.0] * self.G
        self.weight = [0.0] * self.G
        self.ckp1 = [0.0] * self.G
        self.z = None
        self.training = True
        self.phi_y = 0.0                 # S8: the last adapting step's φ_y over gi, 0 before one

    def _lr(self):                                                                       # S7
        lr = [go["lr"] if k == 0 else s for go, k, s in zip(self.gopts, self.k, self.sched_lr)]
        return lr if self.fixed else [a * b for a, b in zip(lr, self.base.lr)]

    def _momentum(self):
        return [go[self.beta_key] for go in self.gopts]

    def telemetry(self):
        own = {"sf_lr": self.sched_lr, "lr_max": self.lr_max, "weight": self.weight,
               "weight_sum": self.weight_sum, "ckp1": self.ckp1}
        out = {k: [float(x) for x in v] for k, v in own.items()}
        out.update(self.base.telemetry())
        if self.base_name == "gi":                                                       # S8
            out["phi_y"] = [float(self.phi_y)] * self.G
            out.update(self.base.base.telemetry())
        return out

    def _scalars(self):
        """S1: this step's scheduled lr and averaging coefficient c, per group."""
        warmup = int(self.opts["warmup_steps"])
        for g, go in enumerate(self.gopts):
            k = self.k[g]
            sched = (k + 1) / warmup if k < warmup else 1.0
            lr = go["lr"] * sched
            self.sched_lr[g] = lr
            self.lr_max[g] = max(lr, self.lr_max[g])
            self.weight[g] = ((k + 1) ** go["r"]) * (self.lr_max[g] ** go["weight_lr_power"])
            self.weight_sum[g] += self.weight[g]
            self.ckp1[g] = self.weight[g] / self.weight_sum[g] if self.weight_sum[g] != 0 else 0.0
            self.k[g] = k + 1

    def _moved(self, params, s_base):
        """S2: (z', y') from the base's displacement s_base (unscaled for an automatic base)."""
        z_new, y_new = [], []
        for i, (y, z, s) in enumerate(zip(params, self.z, s_base)):
            g = self.groups[i]
            go = self.gopts[g]
            lr, c, beta = self.sched_lr[g], self.ckp1[g], go[self.beta_key]
            y = np.asarray(y, _F)
            move = lr * go["weight_decay"] * y + (s if self.fixed else lr * s)
            z_new.append(z - move)
            y_new.append(y + c * (z - y) + (beta * (1 - c) - 1) * move)
        return z_new, y_new

    def _base_displacement(self, params, grads, kw):
        if self.fixed:
            for g in range(self.G):
                self.base.gopts[g]["lr"] = self.sched_lr[g]
        frame = [z.copy() for z in self.z]
        if self.base_name != "gi":
            return self.base.propose(frame, grads, **kw)
        return self.base.propose(frame, grads, prediction=self._prediction_at_y(params, grads), **kw)

    def _prediction_at_y(self, params, grads):
        """S8 (§3.3): GI's prediction for the caller's move y → y' (S2, from GI's displacement
        of z): (φ_y/2, a thunk giving f+ with the caller's params holding y'), φ_y = Σ g·(y − y')
        over all tensors with the caller's g; φ_y is recorded for the telemetry. Params are
        restored after the closure: step() writes y' itself, propose() leaves them as given."""
        def predict(frame, ctx, disp, phi, moved):
            _, y_new = self._moved(params, disp)
            phi_y = sum(ref._dot(g, np.asarray(y, _F) - y1) for g, y, y1 in zip(grads, params, y_new))
            self.phi_y = phi_y
            return phi_y / 2.0, lambda: ref._loss_at(params, y_new, ctx.closure)

        return predict

    def _advance(self, params, grads, kw):
        """One step's new y; z, the scalars and the base's state advance."""
        _need(self.training, "schedule-free: step in eval mode (call train() first)")   # S5
        self.t += 1
        if self.z is None:
            self.z = [np.array(p, dtype=_F, copy=True) for p in params]                 # S4
        self._scalars()
        s_base = self._base_displacement(params, grads, kw)
        self.z, y_new = self._moved(params, s_base)
        return y_new

    def propose(self, params, grads, **kw):
        return [np.asarray(p, _F) - y for p, y in zip(params, self._advance(params, grads, kw))]

    def step(self, params, grads, **kw):
        """Writes the new y into params (rather than subtracting propose()'s y − y', which would
        round y' once more)."""
        for p, y in zip(params, self._advance(params, grads, kw)):
            p[...] = y

    def _lerp_to_z(self, params, weight_of_beta):
        if self.z is None:
            return
        for i, (p, z) in enumerate(zip(params, self.z)):
            w = weight_of_beta(self.gopts[self.groups[i]][self.beta_key])
            p[...] = p + w * (z - p)

    def eval(self, params):
        """x = y + (1 − 1/β)(z − y) (S5)."""
        _need(self.training, "schedule-free: already in eval mode")
        self._lerp_to_z(params, lambda b: 1 - 1 / b)
        self.training = False

    def train(self, params):
        """y = x + (1 − β)(z − x) (S5); accepted in train mode only before the first step."""
        _need(not self.training or self.t == 0, "schedule-free: already in train mode")
        self._lerp_to_z(params, lambda b: 1 - b)
        self.training = True


def make(algorithm, shapes, groups=None, group_options=None, **options):
    """A reference optimizer: schedule-free (and its aliases) here, every other name reference.py's
    (prodigy included, registered above)."""
    if algorithm in _ALIASES:
        return ScheduleFree(algorithm, shapes, groups, group_options, options)
    return ref.make(algorithm, shapes, groups, group_options, **options)
