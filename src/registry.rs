//! Algorithm names → option specs and constructors. The one place that knows every algorithm.

use crate::adapt::autoopt::{self, AdagradDiag, AdamDiag, AutoOpt, Identity};
use crate::adapt::tlr::{self, Tlr};
use crate::adapt::gi::{self, Gi};
use crate::adapt::vsgd::{self, Variant, Vsgd};
use crate::algorithm::Algorithm;
use crate::base::{adagrad::Adagrad, adam::Adam, momentum::Momentum, rmsprop::RmsProp, sgd::Sgd, FixedRate, Rule};
use crate::error::{Error, Result};
use crate::optimizer::Layout;
use crate::options::OptionSpec;

/// Every algorithm name `alr_create` accepts.
pub const ALGORITHMS: &[&str] = &["sgd", "momentum", "adam", "adamw", "adagrad", "rmsprop", "auto-sgd", "auto-adam", "auto-adagrad", "gi", "tlr", "vsgd-l", "vsgd-g", "vsgd-b"];

fn unknown(name: &str) -> Error {
    Error::invalid(format!("unknown algorithm '{name}'; accepted: {}", ALGORITHMS.join(", ")))
}

/// Options every algorithm takes.
fn common_specs() -> Vec<OptionSpec> {
    // Checking every input for NaN/Inf costs one extra read of it; a caller that checks
    // elsewhere (e.g. a GradScaler) may turn it off and accept that NaN then propagates.
    vec![OptionSpec::flag("check_finite", true).global()]
}

/// The rules of ALGORITHMS.md §0, whose learning rate is a fixed option.
pub fn is_fixed_rate(name: &str) -> bool {
    matches!(name, "sgd" | "momentum" | "adam" | "adamw" | "adagrad" | "rmsprop")
}

/// GI's wrapped algorithm when none is set; "" for algorithms that wrap nothing.
pub fn default_base(name: &str) -> &'static str {
    if name == "gi" {
        "sgd"
    } else {
        ""
    }
}

/// The options of algorithm `name` (wrapping `base`, for GI).
pub fn specs(name: &str, base: &str) -> Result<Vec<OptionSpec>> {
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
        // GI's table already holds its base's options, check_finite included.
        "gi" => return gi::specs(base),
        _ => return Err(unknown(name)),
    };
    specs.extend(common_specs());
    Ok(specs)
}

/// A fresh algorithm (zero state) for `layout`. `unit_lr`: a fixed-rate rule runs at lr 1
/// because a wrapper (GI) owns the scale.
pub fn build(name: &str, base: &str, layout: &Layout, unit_lr: bool) -> Result<Box<dyn Algorithm>> {
    let (lens, n_groups) = (&layout.lens[..], layout.members.len());
    Ok(match name {
        "sgd" => Box::new(FixedRate::<Sgd>::new(lens, n_groups, unit_lr)?),
        "momentum" => Box::new(FixedRate::<Momentum>::new(lens, n_groups, unit_lr)?),
        "adam" => Box::new(FixedRate::<Adam<false>>::new(lens, n_groups, unit_lr)?),
        "adamw" => Box::new(FixedRate::<Adam<true>>::new(lens, n_groups, unit_lr)?),
        "adagrad" => Box::new(FixedRate::<Adagrad>::new(lens, n_groups, unit_lr)?),
        "rmsprop" => Box::new(FixedRate::<RmsProp>::new(lens, n_groups, unit_lr)?),
        "auto-sgd" => Box::new(AutoOpt::<Identity>::new(lens, n_groups)?),
        "auto-adam" => Box::new(AutoOpt::<AdamDiag>::new(lens, n_groups)?),
        "auto-adagrad" => Box::new(AutoOpt::<AdagradDiag>::new(lens, n_groups)?),
        "tlr" => Box::new(Tlr::new()),
        "gi" => Box::new(Gi::new(base, build(base, "", layout, is_fixed_rate(base))?)),
        "vsgd-l" => Box::new(Vsgd::new(Variant::Local, layout)?),
        "vsgd-g" => Box::new(Vsgd::new(Variant::Global, layout)?),
        "vsgd-b" => Box::new(Vsgd::new(Variant::Block, layout)?),
        _ => return Err(unknown(name)),
    })
}
