//! autolr: learning rates (and momentum) that set themselves.
//!
//! The Rust API below is what the C ABI (`ffi`) wraps one to one. See `docs/algorithms.md` for the
//! update rules and `include/autolr.h` for the C view.

pub mod adapt;
pub mod algorithm;
pub mod backend;
pub mod base;
pub mod checkpoint;
pub mod error;
pub mod ffi;
pub mod limits;
pub mod optimizer;
pub mod options;
pub mod registry;

pub use backend::{AnyDevice, Memory, Tensor, TensorMut};
pub use error::{AlrStatus, Error, Result};
pub use optimizer::{Callbacks, Layout, Optimizer, SampleData, SampleScale, Samples, StepInputs};

/// The library version; equals Cargo.toml's (a test checks it).
pub const ALR_VERSION: &str = "0.1.0";
/// Bumped whenever the C ABI changes incompatibly.
pub const ALR_ABI_VERSION: u32 = 1;
