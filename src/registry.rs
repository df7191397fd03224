//! Algorithm names → option specs and constructors. The one place that knows every algorithm.

use crate::adapt::autoopt::{self, AdagradDiag, AdamDiag, AutoOpt, Identity};
use crate::adapt::dadapt::{self, DAdaptAdam};
use crate::adapt::dog::{self, Dog};
use crate::adapt::gi::{self, Gi};
use crate::adapt::prodigy::{self, Prodigy};
use crate::adapt::schedule_free::{self, FusedBase, OverGi, ScheduleFree};
use crate::adapt::tlr::{self, Tlr};
use crate::adapt::vsgd::{self, Variant, Vsgd};
use crate::algorithm::{Algorithm, Shards};
use crate::backend::{AnyDevice, Device, DeviceKind};
use crate::base::{adagrad::Adagrad, adam::Adam, momentum::Momentum, rmsprop::RmsProp, sgd::Sgd, FixedRate, Rule};
use crate::error::{Error, Result};
use crate::optimizer::Layout;
use crate::options::OptionSpec;

/// Every algorithm name `alr_create` accepts.
#[rustfmt::skip]
pub const ALGORITHMS: &[&str] = &[
    "sgd", "momentum", "adam", "adamw", "adagrad", "rmsprop", "auto-sgd", "auto-adam", "auto-adagrad", "gi", "tlr", "vsgd-l", "vsgd-g", "vsgd-b",
    // The tuning-free peers (docs/algorithms.md §6).
    "prodigy", "dadapt-adam", "dog", "ldog", "schedule-free", "sf-adamw", "sf-sgd",
];

/// What an alias stands for: one algorithm over one base (`""`: the algorithm wraps nothing),
/// with the options (global values) in which it differs from that algorithm's defaults.
pub struct Alias {
    pub algorithm: &'static str,
    pub base: &'static str,
    pub options: &'static [(&'static str, f64)],
}

impl Alias {
    /// Its entrant's label in the benchmark suite (benches/suite.py): `algorithm(base) name=value`.
    pub fn label(&self) -> String {
        let mut label = if self.base.is_empty() { self.algorithm.to_string() } else { format!("{}({})", self.algorithm, self.base) };
        for (name, value) in self.options {
            label.push_str(&format!(" {name}={value}"));
        }
        label
    }
}

/// `auto`, the recommended tuning-free default: an alias, decided by the benchmark suite
/// (`bash scripts/suite.sh`, docs/results/suite.md), the same on every model. Its options and
/// inputs are those of what it stands for, its `options` set when it is created: Prodigy with
/// Adam's bias correction (the suite's research pick, docs/algorithms.md §8).
pub const AUTO: Alias = Alias { algorithm: "prodigy", base: "", options: &[("use_bias_correction", 1.0)] };

/// The names `alr_create` accepts besides `ALGORITHMS`: aliases resolved when an optimizer is
/// created (`resolve`).
pub const ALIASES: &[&str] = &["auto"];

/// The algorithm, base (`None`: the algorithm's default base) and options an alias stands for;
/// any other name as it is, with its defaults.
pub fn resolve(name: &str) -> (&str, Option<&'static str>, &'static [(&'static str, f64)]) {
    match name {
        "auto" => (AUTO.algorithm, Some(AUTO.base).filter(|b| !b.is_empty()), AUTO.options),
        _ => (name, None, &[]),
    }
}

/// What `alr_algorithms` lists for a kind of device: its algorithms, then the aliases whose
/// algorithm it runs.
pub fn names_on(kind: DeviceKind) -> Vec<&'static str> {
    let on = algorithms_on(kind);
    on.iter().copied().chain(ALIASES.iter().copied().filter(|&a| on.contains(&resolve(a).0))).collect()
}

fn unknown(name: &str) -> Error {
    Error::invalid(format!("unknown algorithm '{name}'; accepted: {}, {}", ALGORITHMS.join(", "), ALIASES.join(", ")))
}

/// Options every algorithm takes.
fn common_specs() -> Vec<OptionSpec> {
    // Checking every input for NaN/Inf costs one extra read of it; a caller that checks
    // elsewhere (e.g. a GradScaler) may turn it off and accept that NaN then propagates.
    vec![OptionSpec::flag("check_finite", true).global()]
}

/// The rules of docs/algorithms.md §0, whose learning rate is a fixed option.
pub fn is_fixed_rate(name: &str) -> bool {
    matches!(name, "sgd" | "momentum" | "adam" | "adamw" | "adagrad" | "rmsprop")
}

/// The wrapped algorithm when none is set (GI, schedule-free and its aliases); "" for
/// algorithms that wrap nothing.
pub fn default_base(name: &str) -> &'static str {
    match name {
        "gi" => "sgd",
        "schedule-free" => schedule_free::DEFAULT_BASE,
        _ => schedule_free::fixed_base(name).unwrap_or(""),
    }
}

/// The algorithms whose base is a string option (`base`).
pub fn takes_base(name: &str) -> bool {
    matches!(name, "gi" | "schedule-free")
}

/// Whether `name` over `base` takes GI's base as the string option `base_base` (schedule-free
/// over gi, docs/algorithms.md §3.3).
pub fn takes_base_base(name: &str, base: &str) -> bool {
    name == "schedule-free" && base == "gi"
}

/// The options of algorithm `name` (wrapping `base`, for GI and schedule-free; schedule-free
/// over gi wraps GI over `base_base`).
pub fn specs(name: &str, base: &str, base_base: &str) -> Result<Vec<OptionSpec>> {
    let mut specs = match name {
        "sgd" => Sgd::specs(),
        "momentum" => Momentum::specs(),
        "adam" => Adam::<false>::specs(),
        "adamw" => Adam::<true>::specs(),
        "adagrad" => Adagrad::specs(),
        "rmsprop" => RmsProp::specs(),
        "auto-sgd" => autoopt::specs::<Identity>(),
        "auto-adam" => autoopt::specs::<AdamDiag>(),
        "auto-adagrad" => autoopt::specs::<AdagradDiag>(),
        "tlr" => tlr::specs(),
        "vsgd-l" | "vsgd-g" | "vsgd-b" => vsgd::specs(),
        "prodigy" => prodigy::specs(),
        "dadapt-adam" => dadapt::specs(),
        // LDoG takes DoG's options (the reference's `LDoG` subclasses `DoG`).
        "dog" | "ldog" => dog::specs(),
        // GI's table already holds its base's options, check_finite included.
        "gi" => return gi::specs(base),
        // So does schedule-free's.
        name if schedule_free::is_schedule_free(name) => return schedule_free::specs(name, base, base_base),
        _ => return Err(unknown(name)),
    };
    specs.extend(common_specs());
    Ok(specs)
}

/// The algorithms with CUDA kernels (cuda/): those written over `Device` whose rules all have
/// a kernel. Giving another such algorithm GPU support is its kernels plus its name here.
/// Schedule-free runs there over a base that does (its base is built on the same device).
#[rustfmt::skip]
pub const ON_CUDA: &[&str] = &[
    "sgd", "momentum", "adam", "adamw", "adagrad", "rmsprop", "auto-sgd", "auto-adam", "auto-adagrad", "tlr",
    "vsgd-l", "vsgd-g", "vsgd-b", "prodigy", "dadapt-adam", "dog", "ldog", "schedule-free", "sf-adamw", "sf-sgd",
];

/// The algorithms a kind of device runs.
pub fn algorithms_on(kind: DeviceKind) -> &'static [&'static str] {
    match kind {
        DeviceKind::Cpu => ALGORITHMS,
        DeviceKind::Cuda => ON_CUDA,
    }
}

/// ALR_UNSUPPORTED for an algorithm a kind of device does not run.
pub fn check_runs_on(kind: DeviceKind, name: &str) -> Result<()> {
    if algorithms_on(kind).contains(&name) {
        return Ok(());
    }
    Err(Error::unsupported(format!("algorithm '{name}' has no CUDA kernels yet (on CUDA: {}): create it on ALR_DEVICE_CPU", ON_CUDA.join(", "))))
}

/// `check_runs_on` for `name` over `base` (the base itself is checked when it is built):
/// schedule-free runs over every base its device runs, and over gi on the CPU only (GI's φ and
/// loss callback are on the host, docs/algorithms.md §3.3), also over a base with CUDA kernels.
pub fn check_composition_runs_on(kind: DeviceKind, name: &str, base: &str) -> Result<()> {
    check_runs_on(kind, name)?;
    if kind != DeviceKind::Cpu && takes_base_base(name, base) {
        return Err(Error::unsupported(format!("'{name}' over gi runs on the CPU only, as gi does (docs/algorithms.md §3.3): create it on ALR_DEVICE_CPU")));
    }
    Ok(())
}

/// A fresh algorithm (zero state) for `layout` on `device`, over shards when `shards` holds a
/// communicator (over `base`, and schedule-free over gi over `base_base`). `unit_lr`: a
/// fixed-rate rule runs at lr 1 because a wrapper (GI) owns the scale.
pub fn build(name: &str, base: &str, base_base: &str, layout: &Layout, device: &AnyDevice, unit_lr: bool, shards: &Shards) -> Result<Box<dyn Algorithm>> {
    if !ALGORITHMS.contains(&name) {
        return Err(unknown(name));
    }
    check_runs_on(device.kind(), name)?;
    let built = match device {
        AnyDevice::Cpu(cpu) => match name {
            "gi" => Some(Box::new(gi(base, layout, device, shards)?) as Box<dyn Algorithm>),
            _ => build_on(name, base, base_base, layout, device, cpu, unit_lr, shards)?,
        },
        #[cfg(feature = "cuda")]
        AnyDevice::Cuda(cuda) => build_on(name, base, base_base, layout, device, cuda, unit_lr, shards)?,
    };
    built.ok_or_else(|| unknown(name))
}

/// GI over `base` (a fixed-rate base at lr 1: η is its rate).
fn gi(base: &str, layout: &Layout, device: &AnyDevice, shards: &Shards) -> Result<Gi> {
    Ok(Gi::new(base, build(base, "", "", layout, device, is_fixed_rate(base), shards)?, shards.clone()))
}

/// The algorithms written over `Device`, on `device` (`any`, the same device, builds a
/// schedule-free base).
#[allow(clippy::too_many_arguments)] // `build`'s arguments and the device twice (typed and any)
fn build_on<D: Device>(
    name: &str,
    base: &str,
    base_base: &str,
    layout: &Layout,
    any: &AnyDevice,
    device: &D,
    unit_lr: bool,
    shards: &Shards,
) -> Result<Option<Box<dyn Algorithm>>> {
    let (lens, n_groups) = (&layout.lens[..], layout.members.len());
    Ok(Some(match name {
        name if schedule_free::is_schedule_free(name) => {
            let base = schedule_free::fixed_base(name).unwrap_or(base);
            check_composition_runs_on(any.kind(), name, base)?;
            let built = match fixed_rate(base, device, lens, n_groups, false)? {
                Some(fused) => schedule_free::Base::Fused(fused),
                None if base == "gi" => schedule_free::Base::Gi(Box::new(OverGi::new(gi(base_base, layout, any, shards)?))),
                None => schedule_free::Base::Own(build(base, "", "", layout, any, false, shards)?),
            };
            Box::new(ScheduleFree::new(name, base, base_base, built, device, layout)?)
        }
        name if is_fixed_rate(name) => return Ok(fixed_rate(name, device, lens, n_groups, unit_lr)?.map(|rule| rule.into_algorithm())),
        "auto-sgd" => Box::new(AutoOpt::<Identity, D>::new(device, layout, shards.clone())?),
        "auto-adam" => Box::new(AutoOpt::<AdamDiag, D>::new(device, layout, shards.clone())?),
        "auto-adagrad" => Box::new(AutoOpt::<AdagradDiag, D>::new(device, layout, shards.clone())?),
        "tlr" => Box::new(Tlr::<D>::new(device, shards.clone())?),
        "prodigy" => Box::new(Prodigy::<D>::new(device, shards.clone())?),
        "dadapt-adam" => Box::new(DAdaptAdam::<D>::new(device, shards.clone())?),
        "dog" => Box::new(Dog::<D>::new(device, layout, shards.clone())?),
        "ldog" => Box::new(Dog::<D>::layer_wise(device, layout, shards.clone())?),
        "vsgd-l" => Box::new(Vsgd::<D>::new(Variant::Local, layout, device, shards.clone())?),
        "vsgd-g" => Box::new(Vsgd::<D>::new(Variant::Global, layout, device, shards.clone())?),
        "vsgd-b" => Box::new(Vsgd::<D>::new(Variant::Block, layout, device, shards.clone())?),
        _ => return Ok(None),
    }))
}

/// A fixed-rate rule on `device` (None: `name` is no such rule), as schedule-free steps it in its
/// fused pass and as an algorithm of its own.
fn fixed_rate<D: Device>(name: &str, device: &D, lens: &[usize], n_groups: usize, unit_lr: bool) -> Result<Option<Box<dyn FusedBase<D>>>> {
    Ok(Some(match name {
        "sgd" => Box::new(FixedRate::<Sgd, D>::new(device, lens, n_groups, unit_lr)?),
        "momentum" => Box::new(FixedRate::<Momentum, D>::new(device, lens, n_groups, unit_lr)?),
        "adam" => Box::new(FixedRate::<Adam<false>, D>::new(device, lens, n_groups, unit_lr)?),
        "adamw" => Box::new(FixedRate::<Adam<true>, D>::new(device, lens, n_groups, unit_lr)?),
        "adagrad" => Box::new(FixedRate::<Adagrad, D>::new(device, lens, n_groups, unit_lr)?),
        "rmsprop" => Box::new(FixedRate::<RmsProp, D>::new(device, lens, n_groups, unit_lr)?),
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use super::{resolve, ALGORITHMS, AUTO};
    use crate::adapt::{autoopt, dadapt, dog, prodigy, schedule_free, tlr, vsgd};
    use crate::base::{adagrad, adam, momentum, rmsprop, sgd};
    use crate::{Callbacks, Optimizer, StepInputs};
    use std::mem::{offset_of, size_of};

    /// `auto` is what it stands for, step for step and in its checkpoint, and takes gradients
    /// only: the contract of `autolr.torch.Auto(model.parameters())`, a drop-in for Adam whose
    /// loop has no closure and no per-sample hooks.
    #[test]
    fn auto_is_its_target_on_gradients_alone() {
        assert!(ALGORITHMS.contains(&AUTO.algorithm) && (AUTO.base.is_empty() || ALGORITHMS.contains(&AUTO.base)));
        assert_eq!(resolve("adam"), ("adam", None, &[][..]));
        let lens = [5, 3];
        let mut auto = Optimizer::new("auto", &lens, None).unwrap();
        let mut target = Optimizer::new(AUTO.algorithm, &lens, None).unwrap();
        if !AUTO.base.is_empty() {
            target.set_option_str("base", AUTO.base).unwrap();
        }
        for &(name, value) in AUTO.options {
            assert_ne!(target.get_option(name, 0).unwrap(), value, "{name}: an alias lists only what differs from the defaults");
            target.set_option(name, None, value).unwrap();
            assert_eq!(auto.get_option(name, 1).unwrap(), value, "{name}: auto was created without it");
        }
        assert_eq!((auto.algorithm(), auto.base()), (target.algorithm(), target.base()));
        let (mut a, mut b) = (vec![vec![0.5f32; 5], vec![-1.0f32; 3]], vec![vec![0.5f32; 5], vec![-1.0f32; 3]]);
        for t in 0..10 {
            let grads: Vec<Vec<f32>> = a.iter().map(|p| p.iter().enumerate().map(|(i, &v)| v - 0.1 * (i + t) as f32).collect()).collect();
            for (opt, params) in [(&mut auto, &mut a), (&mut target, &mut b)] {
                let mut views: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
                let inputs = StepInputs::new(grads.iter().map(|g| &g[..]).collect());
                opt.step(&mut views, &inputs, &mut Callbacks::default()).unwrap();
            }
        }
        assert_eq!(a, b);
        assert_ne!(a[0], vec![0.5f32; 5], "auto did not move the parameters");
        assert_eq!(auto.save().unwrap(), target.save().unwrap());
    }

    /// `auto` stands for what the committed run of the benchmark suite picked by its protocol
    /// (benches/suite.py): changing either without the other fails here.
    #[test]
    fn auto_is_the_suites_pick() {
        let results = include_str!("../docs/results/suite.json");
        let label = AUTO.label();
        assert!(results.contains(&format!("\"pick\": \"{label}\"")), "docs/results/suite.json does not pick {label} (the alias `auto`)");
        assert!(results.contains("\"mode\": \"full\""), "docs/results/suite.json is not a full run of the suite");
    }

    #[test]
    fn aliases_are_listed_where_their_algorithm_runs() {
        let cpu = super::names_on(crate::backend::DeviceKind::Cpu);
        assert_eq!(cpu.last(), Some(&"auto"));
        let cuda = super::names_on(crate::backend::DeviceKind::Cuda);
        assert_eq!(cuda.contains(&"auto"), super::ON_CUDA.contains(&AUTO.algorithm));
        assert!(Optimizer::new("autox", &[2], None).unwrap_err().to_string().contains("auto"));
    }

    /// Every `ALR_SIZE`/`ALR_FIELD` line of the kernels (which nvcc checks against the C++
    /// structs) holds the Rust struct's size or offset: the records and coefficients the
    /// kernels share with base/ and adapt/ are laid out alike, field by field.
    #[test]
    fn kernel_structs_are_laid_out_as_in_rust() {
        let rust: &[(&str, &str, usize)] = &[
            ("SgdCoeffs", "", size_of::<sgd::SgdCoeffs>()),
            ("SgdCoeffs", "weight_decay", offset_of!(sgd::SgdCoeffs, weight_decay)),
            ("MomentumCoeffs", "", size_of::<momentum::MomentumCoeffs>()),
            ("MomentumCoeffs", "keep", offset_of!(momentum::MomentumCoeffs, keep)),
            ("MomentumCoeffs", "nesterov", offset_of!(momentum::MomentumCoeffs, nesterov)),
            ("AdagradCoeffs", "", size_of::<adagrad::AdagradCoeffs>()),
            ("AdagradCoeffs", "eps", offset_of!(adagrad::AdagradCoeffs, eps)),
            ("RmsPropCoeffs", "", size_of::<rmsprop::RmsPropCoeffs>()),
            ("RmsPropCoeffs", "eps", offset_of!(rmsprop::RmsPropCoeffs, eps)),
            ("AdamCoeffs", "", size_of::<adam::AdamCoeffs>()),
            ("AdamCoeffs", "step_size", offset_of!(adam::AdamCoeffs, step_size)),
            ("AdamCoeffs", "decoupled_decay", offset_of!(adam::AdamCoeffs, decoupled_decay)),
            ("AutoOptOptions", "", size_of::<autoopt::GroupOptions>()),
            ("AutoOptOptions", "eps", offset_of!(autoopt::GroupOptions, eps)),
            ("AutoOptOptions", "beta2", offset_of!(autoopt::GroupOptions, beta2)),
            ("AutoOptGroup", "", size_of::<autoopt::GroupRecord>()),
            ("AutoOptGroup", "noise", offset_of!(autoopt::GroupRecord, noise)),
            ("AutoOptGroup", "gamma_oracle", offset_of!(autoopt::GroupRecord, gamma_oracle)),
            ("AutoOptGroup", "coef_g", offset_of!(autoopt::GroupRecord, coef_g)),
            ("AutoOptGroup", "moved", offset_of!(autoopt::GroupRecord, moved)),
            ("AutoOptGroup", "steps", offset_of!(autoopt::GroupRecord, steps)),
            ("AutoOptGroup", "skips", offset_of!(autoopt::GroupRecord, skips)),
            ("SolveParams", "", size_of::<autoopt::SolveParams>()),
            ("Rate", "", size_of::<tlr::Rate>()),
            ("Rate", "den", offset_of!(tlr::Rate, den)),
            ("Rate", "cap_hits", offset_of!(tlr::Rate, cap_hits)),
            ("RateOptions", "", size_of::<tlr::RateOptions>()),
            ("RateOptions", "alpha_min", offset_of!(tlr::RateOptions, alpha_min)),
            ("StepCoeffs", "", size_of::<tlr::StepCoeffs>()),
            ("StepCoeffs", "keep", offset_of!(tlr::StepCoeffs, keep)),
            ("ProdigyGlobal", "", size_of::<prodigy::Global>()),
            ("ProdigyGlobal", "beta3", offset_of!(prodigy::Global, beta3)),
            ("ProdigyGlobal", "growth_rate", offset_of!(prodigy::Global, growth_rate)),
            ("ProdigyGlobal", "bias_correction", offset_of!(prodigy::Global, bias_correction)),
            ("ProdigyEstimate", "", size_of::<prodigy::Estimate>()),
            ("ProdigyEstimate", "d_numerator", offset_of!(prodigy::Estimate, d_numerator)),
            ("ProdigyEstimate", "dlr", offset_of!(prodigy::Estimate, dlr)),
            ("ProdigyEstimate", "begun", offset_of!(prodigy::Estimate, begun)),
            ("ProdigyEstimate", "skips", offset_of!(prodigy::Estimate, skips)),
            ("ProdigyEstimate", "moved", offset_of!(prodigy::Estimate, moved)),
            ("ProdigyEstimate", "d_before", offset_of!(prodigy::Estimate, d_before)),
            ("ProdigyEstimator", "", size_of::<prodigy::Estimator>()),
            ("ProdigyEstimator", "p0", offset_of!(prodigy::Estimator, p0)),
            ("ProdigyWithM", "", size_of::<prodigy::WithM>()),
            ("ProdigyWithM", "v", offset_of!(prodigy::WithM, v)),
            ("ProdigyNoM", "", size_of::<prodigy::NoM>()),
            ("ProdigyAbsorbCoeffs", "", size_of::<prodigy::AbsorbCoeffs>()),
            ("ProdigyAbsorbCoeffs", "coupled_decay", offset_of!(prodigy::AbsorbCoeffs, coupled_decay)),
            ("ProdigyAbsorbCoeffs", "safeguard_warmup", offset_of!(prodigy::AbsorbCoeffs, safeguard_warmup)),
            ("ProdigyAbsorbCoeffs", "active", offset_of!(prodigy::AbsorbCoeffs, active)),
            ("ProdigyStepCoeffs", "", size_of::<prodigy::StepCoeffs>()),
            ("ProdigyStepCoeffs", "decoupled_decay", offset_of!(prodigy::StepCoeffs, decoupled_decay)),
            ("ProdigyStepCoeffs", "beta2", offset_of!(prodigy::StepCoeffs, beta2)),
            ("ProdigyStepCoeffs", "active", offset_of!(prodigy::StepCoeffs, active)),
            ("DAdaptGlobal", "", size_of::<dadapt::Global>()),
            ("DAdaptGlobal", "sqrt_beta2", offset_of!(dadapt::Global, sqrt_beta2)),
            ("DAdaptGlobal", "bias_correction", offset_of!(dadapt::Global, bias_correction)),
            ("DAdaptEstimate", "", size_of::<dadapt::Estimate>()),
            ("DAdaptEstimate", "dlr", offset_of!(dadapt::Estimate, dlr)),
            ("DAdaptEstimate", "begun", offset_of!(dadapt::Estimate, begun)),
            ("DAdaptEstimate", "skips", offset_of!(dadapt::Estimate, skips)),
            ("DAdaptEstimate", "moved", offset_of!(dadapt::Estimate, moved)),
            ("DAdaptElem", "", size_of::<dadapt::Elem>()),
            ("DAdaptElem", "m", offset_of!(dadapt::Elem, m)),
            ("DAdaptElem", "v", offset_of!(dadapt::Elem, v)),
            ("DAdaptAbsorbCoeffs", "", size_of::<dadapt::AbsorbCoeffs>()),
            ("DAdaptAbsorbCoeffs", "eps", offset_of!(dadapt::AbsorbCoeffs, eps)),
            ("DAdaptAbsorbCoeffs", "coupled_decay", offset_of!(dadapt::AbsorbCoeffs, coupled_decay)),
            ("DAdaptAbsorbCoeffs", "active", offset_of!(dadapt::AbsorbCoeffs, active)),
            ("DAdaptStepCoeffs", "", size_of::<dadapt::StepCoeffs>()),
            ("DAdaptStepCoeffs", "decoupled_decay", offset_of!(dadapt::StepCoeffs, decoupled_decay)),
            ("DogGroup", "", size_of::<dog::GroupRecord>()),
            ("DogGroup", "eta", offset_of!(dog::GroupRecord, eta)),
            ("DogGroup", "steps", offset_of!(dog::GroupRecord, steps)),
            ("DogOptions", "", size_of::<dog::GroupOptions>()),
            ("DogOptions", "eps", offset_of!(dog::GroupOptions, eps)),
            ("DogOptions", "init_eta", offset_of!(dog::GroupOptions, init_eta)),
            ("SfAverage", "", size_of::<schedule_free::Average>()),
            ("SfAverage", "lr", offset_of!(schedule_free::Average, lr)),
            ("SfAverage", "weight_sum", offset_of!(schedule_free::Average, weight_sum)),
            ("SfAverage", "ckp1", offset_of!(schedule_free::Average, ckp1)),
            ("SfAverageOptions", "", size_of::<schedule_free::AverageOptions>()),
            ("SfAverageOptions", "r", offset_of!(schedule_free::AverageOptions, r)),
            ("SfAverageOptions", "weight_lr_power", offset_of!(schedule_free::AverageOptions, weight_lr_power)),
            ("SfStepCoeffs", "", size_of::<schedule_free::StepCoeffs>()),
            ("SfStepCoeffs", "beta", offset_of!(schedule_free::StepCoeffs, beta)),
            ("LocalElem", "", size_of::<vsgd::LocalElem>()),
            ("LocalElem", "tau", offset_of!(vsgd::LocalElem, tau)),
            ("SharedElem", "", size_of::<vsgd::SharedElem>()),
            ("SharedElem", "hbar", offset_of!(vsgd::SharedElem, hbar)),
            ("VsgdUnit", "", size_of::<vsgd::Unit>()),
            ("VsgdUnit", "eta", offset_of!(vsgd::Unit, eta)),
            ("VsgdRates", "", size_of::<vsgd::Rates<f32>>()),
            ("VsgdRates", "eps", offset_of!(vsgd::Rates<f32>, eps)),
            ("SlowStartCoeffs", "", size_of::<vsgd::SlowStartCoeffs>()),
            ("SlowStartCoeffs", "c", offset_of!(vsgd::SlowStartCoeffs, c)),
            ("SlowStartCoeffs", "finishing", offset_of!(vsgd::SlowStartCoeffs, finishing)),
            ("AverageCoeffs", "", size_of::<vsgd::AverageCoeffs>()),
            ("AverageCoeffs", "eps", offset_of!(vsgd::AverageCoeffs, eps)),
            ("UnitParams", "", size_of::<vsgd::UnitParams>()),
            ("UnitParams", "slow_inv_t", offset_of!(vsgd::UnitParams, slow_inv_t)),
            ("UnitParams", "c", offset_of!(vsgd::UnitParams, c)),
            ("UnitParams", "finishing", offset_of!(vsgd::UnitParams, finishing)),
        ];
        let sources = [
            include_str!("../cuda/fixed_rate.cu"),
            include_str!("../cuda/autoopt.cu"),
            include_str!("../cuda/tlr.cu"),
            include_str!("../cuda/prodigy.cu"),
            include_str!("../cuda/dadapt.cu"),
            include_str!("../cuda/dog.cu"),
            include_str!("../cuda/schedule_free.cu"),
            include_str!("../cuda/vsgd.cu"),
        ];
        let mut seen = 0;
        for line in sources.iter().flat_map(|s| s.lines()) {
            let (args, is_size) = if let Some(rest) = line.strip_prefix("ALR_SIZE(") {
                (rest, true)
            } else if let Some(rest) = line.strip_prefix("ALR_FIELD(") {
                (rest, false)
            } else {
                continue;
            };
            let parts: Vec<&str> = args.trim_end_matches(");").split(',').map(str::trim).collect();
            let (ty, field, value) = if is_size { (parts[0], "", parts[1]) } else { (parts[0], parts[1], parts[2]) };
            let value: usize = value.parse().unwrap_or_else(|_| panic!("{line}: not a number"));
            let known = rust.iter().find(|(t, f, _)| *t == ty && *f == field).unwrap_or_else(|| panic!("{line}: no Rust twin in this test"));
            assert_eq!(known.2, value, "{line}: Rust has {}", known.2);
            seen += 1;
        }
        assert_eq!(seen, rust.len(), "every Rust entry has its line in cuda/");
    }

    /// The kernel every rule of an algorithm on `ON_CUDA` names is in the cubins built from
    /// cuda/ (checked at the optimizer's creation on a GPU too, through `Device::require`).
    #[cfg(feature = "cuda")]
    #[test]
    fn every_kernel_named_is_built() {
        use crate::backend::{KernelRule, SolveRule};
        use crate::base::Fixed;
        let names = [
            <Fixed<sgd::Sgd> as KernelRule>::KERNEL,
            <Fixed<momentum::Momentum> as KernelRule>::KERNEL,
            <Fixed<adagrad::Adagrad> as KernelRule>::KERNEL,
            <Fixed<rmsprop::RmsProp> as KernelRule>::KERNEL,
            <Fixed<adam::Adam<false>> as KernelRule>::KERNEL,
            <Fixed<adam::Adam<true>> as KernelRule>::KERNEL,
            <autoopt::Moments<autoopt::Identity> as KernelRule>::KERNEL,
            <autoopt::Moments<autoopt::AdamDiag> as KernelRule>::KERNEL,
            <autoopt::Moments<autoopt::AdagradDiag> as KernelRule>::KERNEL,
            <autoopt::Update<autoopt::Identity> as KernelRule>::KERNEL,
            <autoopt::Update<autoopt::AdamDiag> as KernelRule>::KERNEL,
            <autoopt::Update<autoopt::AdagradDiag> as KernelRule>::KERNEL,
            <autoopt::Solve as SolveRule>::KERNEL,
            <tlr::SgdStep<()> as KernelRule>::KERNEL,
            <tlr::SgdStep<f32> as KernelRule>::KERNEL,
            <tlr::StepDots as KernelRule>::KERNEL,
            <tlr::WindowDots as KernelRule>::KERNEL,
            <tlr::OpenWindow as KernelRule>::KERNEL,
            <tlr::Train as SolveRule>::KERNEL,
            <vsgd::LocalSlowStart as KernelRule>::KERNEL,
            <vsgd::LocalStep as KernelRule>::KERNEL,
            <vsgd::LocalMove as KernelRule>::KERNEL,
            <vsgd::SharedAverages as KernelRule>::KERNEL,
            <vsgd::UnitSolve as SolveRule>::KERNEL,
            <vsgd::SharedMove as KernelRule>::KERNEL,
            <prodigy::Absorb as KernelRule>::KERNEL,
            <prodigy::Step<prodigy::WithM> as KernelRule>::KERNEL,
            <prodigy::Step<prodigy::NoM> as KernelRule>::KERNEL,
            <prodigy::Solve as SolveRule>::KERNEL,
            <dadapt::Absorb as KernelRule>::KERNEL,
            <dadapt::Step as KernelRule>::KERNEL,
            <dadapt::Solve as SolveRule>::KERNEL,
            <dog::Distance as KernelRule>::KERNEL,
            <dog::Step as KernelRule>::KERNEL,
            <dog::Solve as SolveRule>::KERNEL,
            <schedule_free::InitZ as KernelRule>::KERNEL,
            <schedule_free::DecayAtY as KernelRule>::KERNEL,
            <schedule_free::Interpolate as KernelRule>::KERNEL,
            <schedule_free::Swap as KernelRule>::KERNEL,
            <schedule_free::Advance as SolveRule>::KERNEL,
            <schedule_free::Step<sgd::Sgd> as KernelRule>::KERNEL,
            <schedule_free::Step<momentum::Momentum> as KernelRule>::KERNEL,
            <schedule_free::Step<adagrad::Adagrad> as KernelRule>::KERNEL,
            <schedule_free::Step<rmsprop::RmsProp> as KernelRule>::KERNEL,
            <schedule_free::Step<adam::Adam<true>> as KernelRule>::KERNEL,
        ];
        for cubin in crate::backend::cuda::CUBINS {
            for name in names.iter().chain(crate::backend::cuda::DEVICE_KERNELS) {
                let symbol = format!("{name}\0");
                assert!(cubin.windows(symbol.len()).any(|w| w == symbol.as_bytes()), "kernel {name} is not in a cubin");
            }
        }
    }
}
