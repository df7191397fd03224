//! TLR, the trainable learning rate (paper 004): SGD with momentum μ and coupled weight decay λ
//! whose learning rate α — one for all tensors, or one per group with `per_group` (the paper's
//! per-layer rates, §3) — is itself trained (ALGORITHMS.md §4).
//!
//! α minimises the augmented loss `L_α(α) = L(θ − α G)` (eq. 2) by a bounded Newton step: its
//! slope is `−⟨G_t, G_{t−1}⟩` (eq. 7), its curvature `(‖G_t‖² − ⟨G_t, G_{t−1}⟩)/α` (eq. 8), and
//! with eq. 9's bound on the step one update is
//!
//! ```text
//! ip = G·G_prev,  nn = G·G,  den = max(4 (nn − ip), ip / c),  α ← α (1 + ip / den)
//! ```
//!
//! so α grows by at most (1 + c) and shrinks by at most a quarter per update.
//!
//! * `window = 1` — GD-TLR (Algorithm 2): `G_t = g + λθ`, the step's gradient before momentum;
//!   from step 2 on, α is updated before the parameter step that uses it (lines 5–7).
//! * `window = K > 1` — the SGD extension (§4, eq. 10): `G = (θ_snapshot − θ)/α`, the summed
//!   step of the last K steps; α is updated once per window, from the second window on. A
//!   window closes at the start of the step after its last one, the first moment θ after that
//!   step's displacement is seen — so a step a wrapper (GI) scaled is measured as applied, and
//!   `lr()` is always the α the last step used.
//!
//! The parameter step itself is torch's SGD: `m ← μ m + G` (`m ← G` on the first step),
//! `θ ← θ − α m` (decision 23 of the reference: m holds gradient units, so a new α rescales it).

use crate::algorithm::{Accepts, Algorithm, Context};
use crate::backend::cpu;
use crate::base::WEIGHT_DECAY;
use crate::checkpoint::{Reader, Writer};
use crate::error::{Error, Result};
use crate::optimizer::{Callbacks, StepInputs};
use crate::options::OptionSpec;

pub fn specs() -> Vec<OptionSpec> {
    vec![
        // The initial α seeds the trained state, so it is fixed once training starts; it may
        // still differ per group (with per_group).
        OptionSpec { structural: true, ..OptionSpec::positive("lr", 0.01) },
        OptionSpec::positive("c", 0.25),
        // Structural: the momentum buffer exists only when μ > 0.
        OptionSpec::fraction("momentum", 0.0).structural(),
        WEIGHT_DECAY,
        OptionSpec::integer("window", 1.0, 1.0, f64::INFINITY).structural(),
        OptionSpec::flag("per_group", false).structural(),
        OptionSpec::non_negative("alpha_min", 1e-12),
    ]
}

/// Options that belong to α itself: one value for all groups unless α is per group.
const RATE_OPTIONS: [&str; 3] = ["lr", "c", "alpha_min"];

/// The outcome of one α update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlphaUpdate {
    /// The new α; the old one when the update is degenerate.
    pub alpha: f64,
    /// Eq. 9's denominator `max(4 (nn − ip), ip / c)`.
    pub den: f64,
    /// The update was applied with the (1 + c) growth bound binding (`ip/c ≥ 4 (nn − ip)`).
    pub capped: bool,
}

/// One α update (Algorithm 2 line 5; eqs. 7–9) from `ip = G·G_prev` and `nn = G·G`.
///
/// For `ip > 0`, `den ≥ ip/c` bounds the growth by `1 + c`; for `ip < 0`, `den = 4 (nn + |ip|)`
/// bounds the shrink factor below by 3/4. `den ≤ 0` happens only when `G = 0` (then there is
/// nothing to learn from): that, or anything non-finite, leaves α unchanged. α never drops below
/// `alpha_min`.
pub fn update_alpha(alpha: f64, ip: f64, nn: f64, c: f64, alpha_min: f64) -> AlphaUpdate {
    let newton = 4.0 * (nn - ip);
    let cap = ip / c;
    let den = newton.max(cap);
    let unchanged = AlphaUpdate { alpha, den, capped: false };
    if !(ip.is_finite() && nn.is_finite() && den.is_finite()) || den <= 0.0 {
        return unchanged;
    }
    let next = alpha * (1.0 + ip / den);
    if !next.is_finite() {
        return unchanged;
    }
    AlphaUpdate { alpha: next.max(alpha_min), den, capped: cap >= newton }
}

/// One trained α and what its latest update saw.
#[derive(Debug, Clone, Copy)]
struct Rate {
    alpha: f64,
    /// `ip` and `den` of the latest update attempt (0 before the first).
    ip: f64,
    den: f64,
    /// Applied updates where the (1 + c) bound was binding.
    cap_hits: u64,
}

impl Rate {
    fn train(&mut self, ip: f64, nn: f64, c: f64, alpha_min: f64) {
        let update = update_alpha(self.alpha, ip, nn, c, alpha_min);
        self.alpha = update.alpha;
        self.ip = ip;
        self.den = update.den;
        self.cap_hits += u64::from(update.capped);
    }
}

/// What α is trained from, per tensor and element.
enum Memory {
    /// `window = 1`: `G_{t−1}` (Algorithm 2, line 7).
    Step { previous: Vec<Vec<f32>> },
    /// `window = K > 1` (eq. 10): θ at the start of the open window, and `G` of the last closed
    /// window (meaningful once a window has closed).
    Window { snapshot: Vec<Vec<f32>>, previous: Vec<Vec<f32>> },
}

/// The base's momentum buffer `m`, per tensor and element, allocated only when μ > 0.
enum Buffers {
    Plain(Vec<Vec<()>>),
    Momentum(Vec<Vec<f32>>),
}

/// One element's part in the parameter step: nothing, or the momentum buffer.
trait Direction: Copy {
    /// Takes `G = g + λθ` (and `keep`: μ, or 0 on the first step) and returns the direction
    /// the step moves along (`m`, or `G` itself).
    fn advance(&mut self, keep: f32, big_g: f32) -> f32;
    /// The direction of the step just advanced.
    fn direction(&self, big_g: f32) -> f32;
}

impl Direction for () {
    #[inline(always)]
    fn advance(&mut self, _keep: f32, big_g: f32) -> f32 {
        big_g
    }
    #[inline(always)]
    fn direction(&self, big_g: f32) -> f32 {
        big_g
    }
}

impl Direction for f32 {
    #[inline(always)]
    fn advance(&mut self, keep: f32, big_g: f32) -> f32 {
        *self = keep * *self + big_g;
        *self
    }
    #[inline(always)]
    fn direction(&self, _big_g: f32) -> f32 {
        *self
    }
}

/// One tensor's scalars for the parameter step.
#[derive(Clone, Copy)]
struct Coeffs {
    alpha: f32,
    weight_decay: f32,
    keep: f32,
}

fn step_pass<D: Direction>(coeffs: &[Coeffs], params: &mut [&mut [f32]], grads: &[&[f32]], buffers: &mut [Vec<D>]) {
    for (t, c) in coeffs.iter().enumerate() {
        cpu::update(params[t], grads[t], &mut buffers[t], |g, theta, d| c.alpha * d.advance(c.keep, g + c.weight_decay * theta));
    }
}

fn propose_pass<D: Direction>(coeffs: &[Coeffs], params: &[&mut [f32]], grads: &[&[f32]], buffers: &mut [Vec<D>]) -> f64 {
    let mut g_dot_s = 0.0;
    for (t, c) in coeffs.iter().enumerate() {
        g_dot_s +=
            cpu::advance_dot(params[t], grads[t], &mut buffers[t], |g, theta, d| c.alpha * d.advance(c.keep, g + c.weight_decay * theta));
    }
    g_dot_s
}

fn apply_pass<D: Direction>(coeffs: &[Coeffs], params: &mut [&mut [f32]], grads: &[&[f32]], buffers: &[Vec<D>], scale: f32) {
    for (t, c) in coeffs.iter().enumerate() {
        cpu::apply_scaled(params[t], grads[t], &buffers[t], scale, |g, theta, d| c.alpha * d.direction(g + c.weight_decay * theta));
    }
}

/// Everything TLR learns; built at the first step, once the structural options are fixed.
struct State {
    /// One α per group, or one for all. Unit u's options are those of group u (group 0 when
    /// global, where `check` keeps them equal across groups).
    per_group: bool,
    window: u64,
    /// Steps begun (t of Algorithm 2, counting from 1).
    steps: u64,
    rates: Vec<Rate>,
    memory: Memory,
    buffers: Buffers,
}

impl State {
    fn new(ctx: &Context) -> Result<Self> {
        let o = ctx.options;
        let lens = &ctx.layout.lens;
        let zeros = || cpu::filled_per_tensor(lens, 0.0f32);
        let per_group = o.flag(0, "per_group");
        let n_units = if per_group { ctx.layout.n_groups() } else { 1 };
        let window = o.get(0, "window") as u64;
        Ok(State {
            per_group,
            window,
            steps: 0,
            rates: (0..n_units).map(|u| Rate { alpha: o.get(u, "lr"), ip: 0.0, den: 0.0, cap_hits: 0 }).collect(),
            memory: if window == 1 { Memory::Step { previous: zeros()? } } else { Memory::Window { snapshot: zeros()?, previous: zeros()? } },
            buffers: if o.get(0, "momentum") > 0.0 {
                Buffers::Momentum(zeros()?)
            } else {
                Buffers::Plain(cpu::filled_per_tensor(lens, ())?)
            },
        })
    }

    fn unit_of_group(&self, group: usize) -> usize {
        if self.per_group {
            group
        } else {
            0
        }
    }

    /// The parameter step's scalars per tensor, with the current α.
    fn coeffs(&self, ctx: &Context) -> Vec<Coeffs> {
        let o = ctx.options;
        let keep = if self.steps == 1 { 0.0 } else { o.get(0, "momentum") as f32 };
        ctx.layout
            .groups
            .iter()
            .map(|&g| Coeffs { alpha: self.rates[self.unit_of_group(g)].alpha as f32, weight_decay: o.get(g, "weight_decay") as f32, keep })
            .collect()
    }

    /// Everything of a step before the parameter step: counts it, trains α where this step
    /// does, and returns the step's scalars.
    fn begin_step(&mut self, ctx: &Context, params: &[&mut [f32]], grads: &[&[f32]]) -> Vec<Coeffs> {
        self.steps += 1;
        let t = self.steps;
        let layout = ctx.layout;
        let per_group = self.per_group;
        let unit_of_tensor = |tensor: usize| if per_group { layout.groups[tensor] } else { 0 };
        // Per unit: [ip, nn].
        let mut sums = vec![[0.0f64; 2]; self.rates.len()];
        let train = match &mut self.memory {
            Memory::Step { previous } => {
                // Algorithm 2: G_t·G_{t−1} trains α before the step (line 5); G_t is kept (line 7).
                for (tensor, prev) in previous.iter_mut().enumerate() {
                    let (theta, grad) = (&*params[tensor], grads[tensor]);
                    let lambda = ctx.options.get(layout.groups[tensor], "weight_decay") as f32;
                    let [ip, nn] = cpu::reduce::<2, _>(prev.len(), |i| {
                        // The same f32 expression as the parameter step's G.
                        let now = grad[i] + lambda * theta[i];
                        let before = std::mem::replace(&mut prev[i], now);
                        [f64::from(now) * f64::from(before), f64::from(now) * f64::from(now)]
                    });
                    let sum = &mut sums[unit_of_tensor(tensor)];
                    sum[0] += ip;
                    sum[1] += nn;
                }
                t > 1
            }
            Memory::Window { snapshot, .. } if t == 1 => {
                for (snap, theta) in snapshot.iter_mut().zip(params) {
                    snap.copy_from_slice(theta);
                }
                false
            }
            Memory::Window { snapshot, previous } if (t - 1) % self.window == 0 => {
                // The window that ended with the last step closes now, when θ after its last
                // displacement is first seen: eq. 10's G = (θ_snapshot − θ)/α is then the
                // displacement that really happened, also when a wrapper (GI) scaled it.
                for (tensor, (snap, prev)) in snapshot.iter_mut().zip(previous.iter_mut()).enumerate() {
                    let theta = &*params[tensor];
                    let unit = unit_of_tensor(tensor);
                    // α was constant over the window: it changes only when a window closes.
                    let alpha = self.rates[unit].alpha;
                    let [ip, nn] = cpu::reduce::<2, _>(snap.len(), |i| {
                        let now = (f64::from(snap[i]) - f64::from(theta[i])) / alpha;
                        let before = f64::from(prev[i]);
                        prev[i] = now as f32;
                        snap[i] = theta[i];
                        [now * before, now * now]
                    });
                    sums[unit][0] += ip;
                    sums[unit][1] += nn;
                }
                // From the second closed window on (window j closes at step jK + 1).
                t > 2 * self.window
            }
            Memory::Window { .. } => false,
        };
        if train {
            for (unit, (rate, [ip, nn])) in self.rates.iter_mut().zip(sums).enumerate() {
                rate.train(ip, nn, ctx.options.get(unit, "c"), ctx.options.get(unit, "alpha_min"));
            }
        }
        self.coeffs(ctx)
    }
}

/// Built without options (see `registry::build`): the state takes its shape at the first step.
#[derive(Default)]
pub struct Tlr {
    state: Option<State>,
}

impl Tlr {
    pub fn new() -> Self {
        Self::default()
    }

    /// The group's rate, or what it will start from before the first step.
    fn rate(&self, ctx: &Context, group: usize) -> Rate {
        match &self.state {
            Some(s) => s.rates[s.unit_of_group(group)],
            None => Rate { alpha: ctx.options.get(group, "lr"), ip: 0.0, den: 0.0, cap_hits: 0 },
        }
    }
}

impl Algorithm for Tlr {
    fn name(&self) -> &'static str {
        "tlr"
    }

    fn accepts(&self, _ctx: &Context) -> Accepts {
        Accepts::default()
    }

    fn check(&self, ctx: &Context, _inputs: &StepInputs, _cb: &Callbacks) -> Result<()> {
        let o = ctx.options;
        if o.flag(0, "per_group") {
            return Ok(());
        }
        for name in RATE_OPTIONS {
            let first = o.get(0, name);
            if let Some(g) = (1..o.n_groups()).find(|&g| o.get(g, name) != first) {
                return Err(Error::invalid(format!(
                    "option '{name}' is {} for group {g} but {first} for group 0: with per_group = false one α serves every group, so set it without a group (or set per_group = true)",
                    o.get(g, name)
                )));
            }
        }
        Ok(())
    }

    fn propose(&mut self, ctx: &Context, params: &[&mut [f32]], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<f64> {
        let state = match &mut self.state {
            Some(state) => state,
            empty => empty.insert(State::new(ctx)?),
        };
        let coeffs = state.begin_step(ctx, params, &inputs.grads);
        Ok(match &mut state.buffers {
            Buffers::Plain(b) => propose_pass(&coeffs, params, &inputs.grads, b),
            Buffers::Momentum(b) => propose_pass(&coeffs, params, &inputs.grads, b),
        })
    }

    fn apply(&self, ctx: &Context, params: &mut [&mut [f32]], inputs: &StepInputs, scale: f32) {
        let state = self.state.as_ref().expect("apply follows propose, which builds the state");
        let coeffs = state.coeffs(ctx);
        match &state.buffers {
            Buffers::Plain(b) => apply_pass(&coeffs, params, &inputs.grads, b, scale),
            Buffers::Momentum(b) => apply_pass(&coeffs, params, &inputs.grads, b, scale),
        }
    }

    fn step(&mut self, ctx: &Context, params: &mut [&mut [f32]], inputs: &StepInputs, _cb: &mut Callbacks) -> Result<()> {
        let state = match &mut self.state {
            Some(state) => state,
            empty => empty.insert(State::new(ctx)?),
        };
        let coeffs = state.begin_step(ctx, params, &inputs.grads);
        match &mut state.buffers {
            Buffers::Plain(b) => step_pass(&coeffs, params, &inputs.grads, b),
            Buffers::Momentum(b) => step_pass(&coeffs, params, &inputs.grads, b),
        }
        Ok(())
    }

    fn lr(&self, ctx: &Context, group: usize) -> f64 {
        self.rate(ctx, group).alpha
    }

    fn momentum(&self, ctx: &Context, group: usize) -> f64 {
        ctx.options.get(group, "momentum")
    }

    fn telemetry(&self, ctx: &Context, group: usize) -> Vec<(&'static str, f64)> {
        let rate = self.rate(ctx, group);
        vec![("alpha", rate.alpha), ("ip", rate.ip), ("den", rate.den), ("cap_hits", rate.cap_hits as f64)]
    }

    fn started(&self) -> bool {
        self.state.is_some()
    }

    fn save(&self, w: &mut Writer) {
        let Some(s) = &self.state else {
            w.u64(0);
            return;
        };
        w.u64(s.steps);
        w.f64s(&s.rates.iter().map(|r| r.alpha).collect::<Vec<_>>());
        w.f64s(&s.rates.iter().map(|r| r.ip).collect::<Vec<_>>());
        w.f64s(&s.rates.iter().map(|r| r.den).collect::<Vec<_>>());
        w.counts(&s.rates.iter().map(|r| r.cap_hits).collect::<Vec<_>>());
        let buffers: Vec<&Vec<f32>> = match &s.memory {
            Memory::Step { previous } => previous.iter().collect(),
            Memory::Window { snapshot, previous } => snapshot.iter().chain(previous).collect(),
        };
        buffers.into_iter().for_each(|b| w.f32s(b));
        if let Buffers::Momentum(m) = &s.buffers {
            m.iter().for_each(|b| w.f32s(b));
        }
    }

    fn load(&mut self, ctx: &Context, r: &mut Reader) -> Result<()> {
        let steps = r.count("TLR step count")?;
        if steps == 0 {
            self.state = None;
            return Ok(());
        }
        let mut s = State::new(ctx)?;
        s.steps = steps;
        let n_units = s.rates.len();
        let alpha = r.f64s_exact(n_units, "TLR α per unit")?;
        let ip = r.f64s_exact(n_units, "TLR ip per unit")?;
        let den = r.f64s_exact(n_units, "TLR den per unit")?;
        let cap_hits = r.counts_exact(n_units, "TLR cap hits per unit")?;
        // α only ever takes values `α (1 + ip/den)` with a positive factor, floored at alpha_min.
        crate::checkpoint::check_values(&alpha, "TLR α", |a| a.is_finite() && a > 0.0, "α is finite and > 0")?;
        if let Some(u) = cap_hits.iter().position(|&c| c > steps) {
            return Err(Error::checkpoint(format!("checkpoint TLR unit {u} hit its cap {} times in {steps} steps (corrupted?)", cap_hits[u])));
        }
        for (u, rate) in s.rates.iter_mut().enumerate() {
            *rate = Rate { alpha: alpha[u], ip: ip[u], den: den[u], cap_hits: cap_hits[u] };
        }
        let mut read = |buffers: &mut Vec<Vec<f32>>, what: &str| -> Result<()> {
            for (t, b) in buffers.iter_mut().enumerate() {
                let what = format!("TLR {what} of tensor {t}");
                *b = r.f32s_exact(b.len(), &what)?;
                crate::checkpoint::check_values(b, &what, f32::is_finite, "it is finite")?;
            }
            Ok(())
        };
        match &mut s.memory {
            Memory::Step { previous } => read(previous, "previous G")?,
            Memory::Window { snapshot, previous } => {
                read(snapshot, "window snapshot")?;
                read(previous, "previous window G")?;
            }
        }
        if let Buffers::Momentum(m) = &mut s.buffers {
            read(m, "momentum buffer")?;
        }
        self.state = Some(s);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::Layout;
    use crate::options::Options;

    const C: f64 = 0.25;

    #[test]
    fn growth_is_bounded_by_one_plus_c() {
        for &(ip, nn) in &[(1.0, 1.0), (1.0, 1.1), (0.5, 100.0), (1e-9, 1.0), (3.0, 2.0), (1e6, 1e6)] {
            let u = update_alpha(1.0, ip, nn, C, 0.0);
            assert!(u.alpha > 1.0 && u.alpha <= 1.0 + C, "ip {ip} nn {nn}: {u:?}");
        }
        // Identical consecutive gradients: no curvature seen, the cap decides.
        let u = update_alpha(2.0, 4.0, 4.0, C, 0.0);
        assert_eq!(u, AlphaUpdate { alpha: 2.0 * (1.0 + C), den: 4.0 / C, capped: true });
        // Far from the cap: the Newton step α (1 + ip / (4 (nn − ip))).
        let u = update_alpha(1.0, 1.0, 101.0, C, 0.0);
        assert_eq!(u, AlphaUpdate { alpha: 1.0 + 1.0 / 400.0, den: 400.0, capped: false });
    }

    #[test]
    fn shrink_is_bounded_by_three_quarters() {
        for &(ip, nn) in &[(-1.0, 1.0), (-1.0, 0.0), (-1e6, 1.0), (-1e-9, 1.0), (-2.0, 1.0)] {
            let u = update_alpha(1.0, ip, nn, C, 0.0);
            assert!(u.alpha < 1.0 && u.alpha >= 0.75, "ip {ip} nn {nn}: {u:?}");
            assert!(!u.capped);
        }
        // The bound is reached only as nn / |ip| → 0.
        assert_eq!(update_alpha(1.0, -1.0, 0.0, C, 0.0).alpha, 0.75);
    }

    #[test]
    fn orthogonal_gradients_keep_alpha() {
        assert_eq!(update_alpha(0.3, 0.0, 2.0, C, 0.0).alpha, 0.3);
    }

    #[test]
    fn degenerate_inputs_keep_alpha() {
        // G = 0: den = 0.
        let u = update_alpha(0.3, 0.0, 0.0, C, 0.0);
        assert_eq!((u.alpha, u.den, u.capped), (0.3, 0.0, false));
        for &(ip, nn) in &[(f64::NAN, 1.0), (1.0, f64::NAN), (f64::INFINITY, 1.0), (1.0, f64::INFINITY), (-1.0, f64::INFINITY)] {
            let u = update_alpha(0.3, ip, nn, C, 0.0);
            assert_eq!(u.alpha, 0.3, "ip {ip} nn {nn}");
            assert!(!u.capped);
        }
        // A finite update that overflows α.
        assert_eq!(update_alpha(f64::MAX, 1.0, 1.0, C, 0.0).alpha, f64::MAX);
    }

    #[test]
    fn alpha_min_is_a_floor() {
        assert_eq!(update_alpha(1e-12, -1.0, 0.0, C, 1e-12).alpha, 1e-12);
        assert_eq!(update_alpha(1.0, -1.0, 0.0, C, 0.9).alpha, 0.9);
    }

    fn options(window: f64, momentum: f64) -> (Layout, Options) {
        let layout = Layout::new(&[5, 11], Some(&[0, 0])).unwrap();
        let mut options = Options::new(specs(), layout.n_groups());
        options.set("tlr", "window", None, window).unwrap();
        options.set("tlr", "momentum", None, momentum).unwrap();
        options.set("tlr", "weight_decay", None, 0.01).unwrap();
        (layout, options)
    }

    fn grads(step: usize) -> Vec<Vec<f32>> {
        [5, 11].iter().map(|&n| (0..n).map(|i| ((i * 7 + step * 3) as f32 * 0.61).sin() + 0.3).collect()).collect()
    }

    #[test]
    fn propose_then_apply_is_the_fused_step() {
        for (window, momentum) in [(1.0, 0.0), (1.0, 0.8), (3.0, 0.0), (3.0, 0.8)] {
            let (layout, options) = options(window, momentum);
            let ctx = Context { layout: &layout, options: &options };
            let (mut fused, mut split) = (Tlr::new(), Tlr::new());
            let mut p_fused: Vec<Vec<f32>> = vec![vec![0.5; 5], vec![-0.25; 11]];
            let mut p_split = p_fused.clone();
            for step in 0..20 {
                let g = grads(step);
                let inputs = StepInputs::new(g.iter().map(|x| &x[..]).collect());
                let mut views: Vec<&mut [f32]> = p_fused.iter_mut().map(|p| &mut p[..]).collect();
                fused.step(&ctx, &mut views, &inputs, &mut Callbacks::default()).unwrap();
                let mut views: Vec<&mut [f32]> = p_split.iter_mut().map(|p| &mut p[..]).collect();
                split.propose(&ctx, &views, &inputs, &mut Callbacks::default()).unwrap();
                split.apply(&ctx, &mut views, &inputs, 1.0);
            }
            assert_eq!(p_fused, p_split, "window {window} momentum {momentum}");
            assert_eq!(fused.lr(&ctx, 0), split.lr(&ctx, 0));
            assert!(fused.lr(&ctx, 0) != 0.01, "α never trained");
        }
    }

    #[test]
    fn a_window_measures_the_displacement_actually_applied() {
        // A wrapper applying half of every proposed step: the window's G must be what moved.
        let (layout, options) = options(3.0, 0.0);
        let ctx = Context { layout: &layout, options: &options };
        let mut tlr = Tlr::new();
        let mut params: Vec<Vec<f32>> = vec![vec![0.5; 5], vec![-0.25; 11]];
        let start = params.clone();
        for step in 0..4 {
            let g = grads(step);
            let inputs = StepInputs::new(g.iter().map(|x| &x[..]).collect());
            let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
            tlr.propose(&ctx, &views, &inputs, &mut Callbacks::default()).unwrap();
            if step < 3 {
                tlr.apply(&ctx, &mut views, &inputs, 0.5);
            }
        }
        // Step 4 closed the first window (steps 1–3) from the parameters it saw.
        let Some(State { memory: Memory::Window { previous, snapshot }, rates, .. }) = &tlr.state else { panic!("window state") };
        assert_eq!(snapshot, &params);
        for t in 0..2 {
            for i in 0..params[t].len() {
                let moved = ((f64::from(start[t][i]) - f64::from(params[t][i])) / rates[0].alpha) as f32;
                assert_eq!(previous[t][i], moved);
            }
        }
    }
}
