//! Options by name: every algorithm declares its options once (name, default, accepted range,
//! whether it may differ per group), and every value set by a caller is validated against that.

use crate::error::{Error, Result};

/// What values an option takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// A real number in `[lo, hi]` (or open at an end).
    Real,
    /// A whole number in `[lo, hi]`.
    Integer,
    /// 0 (false) or 1 (true).
    Flag,
    /// A real number, or NaN meaning "not set" (GI's `f_star`).
    RealOrUnset,
}

#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    pub name: &'static str,
    pub default: f64,
    pub kind: Kind,
    pub lo: f64,
    pub lo_open: bool,
    pub hi: f64,
    pub hi_open: bool,
    /// May differ between groups (like torch's param_groups); otherwise one value for all.
    pub per_group: bool,
    /// Whether a value shapes the state, and so may only be set before the first step.
    pub structure: Structure,
}

/// Whether an option's value shapes the algorithm's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    /// It does not: set at any time.
    Free,
    /// It does: set before the first step only.
    Fixed,
    /// Only whether it is 0 does (Prodigy's β1 = 0 keeps no exp_avg): a change that keeps it 0,
    /// or keeps it other than 0, may come at any time (an LR scheduler's momentum cycling).
    ZeroOrNot,
}

impl Structure {
    /// Whether changing the value from `old` to `new` changes the state's shape.
    pub fn reshapes(self, old: f64, new: f64) -> bool {
        match self {
            Structure::Free => false,
            Structure::Fixed => true,
            Structure::ZeroOrNot => (old == 0.0) != (new == 0.0),
        }
    }
}

impl OptionSpec {
    pub const fn real(name: &'static str, default: f64, lo: f64, hi: f64) -> Self {
        OptionSpec { name, default, kind: Kind::Real, lo, lo_open: false, hi, hi_open: false, per_group: true, structure: Structure::Free }
    }
    /// A positive real (`lo` excluded).
    pub const fn positive(name: &'static str, default: f64) -> Self {
        OptionSpec { lo_open: true, ..Self::real(name, default, 0.0, f64::INFINITY) }
    }
    pub const fn non_negative(name: &'static str, default: f64) -> Self {
        Self::real(name, default, 0.0, f64::INFINITY)
    }
    /// A real in [0, 1).
    pub const fn fraction(name: &'static str, default: f64) -> Self {
        OptionSpec { hi_open: true, ..Self::real(name, default, 0.0, 1.0) }
    }
    pub const fn integer(name: &'static str, default: f64, lo: f64, hi: f64) -> Self {
        OptionSpec { kind: Kind::Integer, ..Self::real(name, default, lo, hi) }
    }
    pub const fn flag(name: &'static str, default: bool) -> Self {
        OptionSpec { kind: Kind::Flag, ..Self::real(name, if default { 1.0 } else { 0.0 }, 0.0, 1.0) }
    }
    pub const fn global(self) -> Self {
        OptionSpec { per_group: false, ..self }
    }
    pub const fn structural(self) -> Self {
        OptionSpec { structure: Structure::Fixed, per_group: false, ..self }
    }
    /// Structural only in whether it is 0 (`Structure::ZeroOrNot`).
    pub const fn structural_at_zero(self) -> Self {
        OptionSpec { structure: Structure::ZeroOrNot, per_group: false, ..self }
    }
    pub const fn unset_by_default(self) -> Self {
        OptionSpec { kind: Kind::RealOrUnset, default: f64::NAN, ..self }
    }

    fn accepted(&self) -> String {
        match self.kind {
            Kind::Flag => "0 or 1".to_string(),
            _ => {
                let what = if self.kind == Kind::Integer { "a whole number" } else { "a number" };
                let lo = if self.lo_open { "(" } else { "[" };
                let hi = if self.hi_open || self.hi.is_infinite() { ")" } else { "]" };
                let unset = if self.kind == Kind::RealOrUnset { ", or NaN to unset it" } else { "" };
                format!("{what} in {lo}{}, {}{hi}{unset}", self.lo, self.hi)
            }
        }
    }

    pub fn validate(&self, value: f64) -> Result<()> {
        if self.kind == Kind::RealOrUnset && value.is_nan() {
            return Ok(());
        }
        let ok = value.is_finite()
            && (if self.lo_open { value > self.lo } else { value >= self.lo })
            && (if self.hi_open { value < self.hi } else { value <= self.hi })
            && (!matches!(self.kind, Kind::Integer | Kind::Flag) || value.fract() == 0.0);
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(format!("option '{}' = {value} is out of range: it takes {}", self.name, self.accepted())))
        }
    }
}

/// The option values of one optimizer: one row per group.
#[derive(Debug, Clone)]
pub struct Options {
    specs: Vec<OptionSpec>,
    values: Vec<Vec<f64>>,
}

impl Options {
    /// Every option at its default for `n_groups` groups (allocated fallibly: the group count is
    /// the caller's).
    pub fn new(specs: Vec<OptionSpec>, n_groups: usize) -> Result<Self> {
        let defaults: Vec<f64> = specs.iter().map(|s| s.default).collect();
        Ok(Options { values: crate::backend::filled(n_groups, defaults)?, specs })
    }

    pub fn specs(&self) -> &[OptionSpec] {
        &self.specs
    }

    fn index(&self, name: &str, algorithm: &str) -> Result<usize> {
        self.specs.iter().position(|s| s.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.specs.iter().map(|s| s.name).collect();
            Error::invalid(format!("unknown option '{name}' for algorithm '{algorithm}'; accepted: {}", names.join(", ")))
        })
    }

    pub fn spec(&self, name: &str, algorithm: &str) -> Result<&OptionSpec> {
        Ok(&self.specs[self.index(name, algorithm)?])
    }

    /// Sets `name` for one group, or for all groups when `group` is None.
    pub fn set(&mut self, algorithm: &str, name: &str, group: Option<usize>, value: f64) -> Result<()> {
        let i = self.index(name, algorithm)?;
        let spec = self.specs[i];
        spec.validate(value)?;
        match group {
            None => self.values.iter_mut().for_each(|row| row[i] = value),
            Some(g) => {
                if !spec.per_group {
                    return Err(Error::invalid(format!("option '{name}' is one value for the whole optimizer: set it without a group")));
                }
                let n = self.values.len();
                let row = self.values.get_mut(g).ok_or_else(|| Error::invalid(format!("group {g} does not exist (this optimizer has {n} groups)")))?;
                row[i] = value;
            }
        }
        Ok(())
    }

    /// A wrapped algorithm's option table (`specs`, of `algorithm`), each value read from this
    /// table under the name `source` gives for it (`None`: it keeps its default, for the wrapper
    /// to set). What GI and schedule-free hand to their base.
    pub fn view(&self, algorithm: &str, specs: Vec<OptionSpec>, source: impl Fn(&'static str) -> Option<&'static str>) -> Result<Options> {
        let mut view = Options::new(specs, self.n_groups())?;
        for spec in view.specs().to_vec() {
            let Some(from) = source(spec.name) else { continue };
            if spec.per_group {
                for group in 0..self.n_groups() {
                    view.set(algorithm, spec.name, Some(group), self.get(group, from))?;
                }
            } else {
                view.set(algorithm, spec.name, None, self.get(0, from))?;
            }
        }
        Ok(view)
    }

    /// The value of a declared option; asking for an undeclared one is a bug in the library.
    pub fn get(&self, group: usize, name: &str) -> f64 {
        let i = self.specs.iter().position(|s| s.name == name).unwrap_or_else(|| panic!("option '{name}' is not declared"));
        self.values[group][i]
    }

    pub fn flag(&self, group: usize, name: &str) -> bool {
        self.get(group, name) != 0.0
    }

    pub fn n_groups(&self) -> usize {
        self.values.len()
    }

    pub fn rows(&self) -> &[Vec<f64>] {
        &self.values
    }

    /// Replaces every value (loading a checkpoint); each is validated first, and an option that
    /// is one value for the whole optimizer must have that one value in every row.
    pub fn replace_rows(&mut self, rows: Vec<Vec<f64>>) -> Result<()> {
        for row in &rows {
            for (spec, v) in self.specs.iter().zip(row) {
                spec.validate(*v).map_err(|e| Error::checkpoint(format!("checkpoint option value rejected: {}", e.message)))?;
            }
        }
        for (i, spec) in self.specs.iter().enumerate().filter(|(_, s)| !s.per_group) {
            // Bitwise, so that an unset (NaN) value equals itself.
            if let Some(g) = rows.iter().position(|row| row[i].to_bits() != rows[0][i].to_bits()) {
                return Err(Error::checkpoint(format!(
                    "checkpoint option '{}' is {} for group {g} but {} for group 0; it is one value for the whole optimizer (corrupted?)",
                    spec.name, rows[g][i], rows[0][i]
                )));
            }
        }
        self.values = rows;
        Ok(())
    }
}
