//! The automatic algorithms, one file per paper (docs/algorithms.md §1–§4), and the tuning-free
//! peers of §6.

pub mod autoopt;
pub mod dadapt;
pub mod dog;
pub mod gi;
pub mod prodigy;
pub mod schedule_free;
pub mod tlr;
pub mod vsgd;
