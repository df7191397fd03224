//! The automatic algorithms, one file per paper (docs/algorithms.md §1–§4).

pub mod autoopt;
pub mod dadapt;
pub mod dog;
pub mod gi;
pub mod prodigy;
pub mod tlr;
pub mod vsgd;
