//! Where the arithmetic runs. Algorithms describe per-element math and per-group reductions;
//! a backend decides how to iterate, fuse and accumulate. `cpu` runs every algorithm; `cuda`
//! (feature `cuda`) runs the fixed-rate rules and AutoOpt on a CUDA device through the kernels in
//! cuda/ (never yet run on a GPU: issue 6).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
