//! Where the arithmetic runs. Algorithms describe per-element math and per-group reductions;
//! a backend decides how to iterate, fuse and accumulate. `cpu` runs every algorithm; `cuda`
//! (feature `cuda`) opens the device and checks the kernels' build, and its steps are still to
//! be wired (issue 6).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
