//! The automatic algorithms, one file per paper (docs/algorithms.md §1–§4).

pub mod autoopt;
pub mod gi;
pub mod tlr;
pub mod vsgd;
