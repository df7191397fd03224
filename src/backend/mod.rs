//! Where the arithmetic runs. Algorithms describe per-element math and per-group reductions;
//! a backend decides how to iterate, fuse and accumulate. `cpu` is always built; the CUDA
//! backend (feature `cuda`) runs the same math on the device.

pub mod cpu;

/// The device an optimizer's buffers live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// A CUDA device ordinal and the caller's stream (a `CUstream`, possibly null for the default stream).
    Cuda { ordinal: i32, stream: usize },
}
