//! Where the arithmetic runs. Algorithms describe per-element math and per-group reductions;
//! a backend decides how to iterate, fuse and accumulate. `cpu` is the only backend so far; a
//! CUDA backend (feature `cuda`) is to run the same math on the device.

pub mod cpu;
