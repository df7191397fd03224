//! What the three fuzz targets share: reading the fuzzer's bytes, driving the C ABI (`alr_*`,
//! the stable surface while the algorithms are refactored), and the properties every target
//! checks — no call returns ALR_PANIC (a caught library bug), and a failed call leaves the
//! parameters and the saved state bit-identical.

use autolr::ffi::*;
use autolr::AlrStatus;
use std::ffi::{c_void, CStr, CString};

/// Every algorithm of this version, as the library lists them (`alr_algorithms`).
pub static ALGORITHMS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    // SAFETY: alr_algorithms returns a static NUL-terminated string for ALR_DEVICE_CPU.
    let listed = unsafe { CStr::from_ptr(alr_algorithms(AlrDevice::AlrDeviceCpu as i32)) };
    listed.to_str().expect("algorithm names are ASCII").split(',').collect()
});

/// The fuzzer's bytes, read front to back; past the end everything reads as zero.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }
    pub fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }
    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        let got = self.take(8);
        b[..got.len()].copy_from_slice(got);
        u64::from_le_bytes(b)
    }
    pub fn i64(&mut self) -> i64 {
        self.u64() as i64
    }
    /// A value that is often interesting (0, ±1, NaN, ±Inf, tiny, huge, bounds) and sometimes raw bits.
    pub fn f64(&mut self) -> f64 {
        const SPECIAL: [f64; 16] = [
            0.0, -0.0, 1.0, -1.0, 0.5, 0.9, 0.999, 2.0, 1e-8, 1e300, -1e300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MIN_POSITIVE, 10.0,
        ];
        let k = self.u8();
        if k < 200 {
            SPECIAL[k as usize % SPECIAL.len()]
        } else {
            f64::from_bits(self.u64())
        }
    }
    pub fn f32(&mut self) -> f32 {
        let k = self.u8();
        match k {
            0..=239 => (k as f32 - 120.0) / 16.0,
            240 => f32::NAN,
            241 => f32::INFINITY,
            242 => f32::NEG_INFINITY,
            243 => f32::MAX,
            _ => f32::from_bits(self.u64() as u32),
        }
    }
}

pub fn last_error() -> String {
    // SAFETY: alr_last_error returns a NUL-terminated string valid until the next call.
    unsafe { CStr::from_ptr(alr_last_error()) }.to_string_lossy().into_owned()
}

/// The property every call must have: a library bug is never what a call returns.
pub fn no_panic(rc: AlrStatus, what: &str) -> AlrStatus {
    assert!(rc != AlrStatus::AlrPanic, "{what} returned ALR_PANIC: {}", last_error());
    rc
}

pub fn create(algorithm: &str, lens: &[usize], groups: Option<&[u32]>) -> Option<*mut AlrOptimizer> {
    let name = CString::new(algorithm).ok()?;
    let args = AlrCreateArgs {
        struct_size: std::mem::size_of::<AlrCreateArgs>(),
        algorithm: name.as_ptr(),
        n_tensors: lens.len(),
        lens: lens.as_ptr(),
        groups: groups.map_or(std::ptr::null(), |g| g.as_ptr()),
        device: AlrDevice::AlrDeviceCpu as i32,
        device_ordinal: 0,
        stream: std::ptr::null_mut(),
        sharded: 0,
        reduce: None,
        reduce_user_data: std::ptr::null_mut(),
    };
    let mut opt = std::ptr::null_mut();
    let rc = no_panic(alr_create(&args, &mut opt), "alr_create");
    if rc == AlrStatus::AlrOk {
        assert!(!opt.is_null());
        Some(opt)
    } else {
        assert!(opt.is_null(), "alr_create failed ({rc:?}) but set *out");
        None
    }
}

pub fn destroy(opt: *mut AlrOptimizer) {
    assert_eq!(no_panic(alr_destroy(opt), "alr_destroy"), AlrStatus::AlrOk, "{}", last_error());
}

/// The saved state, or None when saving is refused (GI waiting for its loss report).
pub fn save(opt: *mut AlrOptimizer) -> Option<Vec<u8>> {
    let mut size = 0usize;
    if no_panic(alr_save_size(opt, &mut size), "alr_save_size") != AlrStatus::AlrOk {
        return None;
    }
    let mut buf = vec![0u8; size];
    let mut written = 0usize;
    let rc = no_panic(alr_save(opt, buf.as_mut_ptr(), size, &mut written), "alr_save");
    assert_eq!(rc, AlrStatus::AlrOk, "alr_save after alr_save_size: {}", last_error());
    assert_eq!(written, size, "alr_save wrote {written} bytes, alr_save_size said {size}");
    Some(buf)
}

/// FNV-1a 64 over everything but the last 8 bytes, stored there (src/checkpoint.rs): after a
/// mutation, the checksum is right again, so the parser's own checks are what gets fuzzed.
pub fn reseal(buf: &mut [u8]) {
    if buf.len() < 8 {
        return;
    }
    let n = buf.len() - 8;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &buf[..n] {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    buf[n..].copy_from_slice(&h.to_le_bytes());
}

/// What an algorithm needs besides the gradient.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Needs {
    Nothing,
    PerSample,
    Curvature,
    Loss,
}

pub fn needs(algorithm: &str) -> Needs {
    match algorithm {
        a if a.starts_with("auto-") => Needs::PerSample,
        a if a.starts_with("vsgd") => Needs::Curvature,
        "gi" => Needs::Loss,
        _ => Needs::Nothing,
    }
}

/// The loss callback of the targets: Σ θ²/4 over every tensor; `user_data` is the `&[usize]` of lengths.
pub unsafe extern "C" fn quadratic_loss(user_data: *mut c_void, params: *const *const f32, n: usize, loss_out: *mut f64) -> i32 {
    let lens = &*(user_data as *const Vec<usize>);
    let mut f = 0.0f64;
    for t in 0..n.min(lens.len()) {
        let p = std::slice::from_raw_parts(*params.add(t), lens[t]);
        f += p.iter().map(|&x| 0.25 * f64::from(x) * f64::from(x)).sum::<f64>();
    }
    *loss_out = f;
    0
}

/// A well-formed step of `algorithm` with the inputs it needs (Σg² = 4g² with N = 4, unit
/// curvature, GI's loss and loss callback). Returns the status, never ALR_PANIC.
pub fn plain_step(opt: *mut AlrOptimizer, algorithm: &str, params: &mut [Vec<f32>], grads: &[Vec<f32>]) -> AlrStatus {
    no_panic(plain_step_status(opt, algorithm, params, grads), "alr_step")
}

/// As `plain_step`, returning whatever status the step gives, ALR_PANIC included.
pub fn plain_step_status(opt: *mut AlrOptimizer, algorithm: &str, params: &mut [Vec<f32>], grads: &[Vec<f32>]) -> AlrStatus {
    let mut lens: Vec<usize> = params.iter().map(|p| p.len()).collect();
    let sq: Vec<Vec<f32>> = grads.iter().map(|g| g.iter().map(|&x| 4.0 * x * x).collect()).collect();
    let ones: Vec<Vec<f32>> = grads.iter().map(|g| vec![1.0; g.len()]).collect();
    let mut pp: Vec<*mut f32> = params.iter_mut().map(|p| p.as_mut_ptr()).collect();
    let gp: Vec<*const f32> = grads.iter().map(|g| g.as_ptr()).collect();
    let sp: Vec<*const f32> = sq.iter().map(|g| g.as_ptr()).collect();
    let hp: Vec<*const f32> = ones.iter().map(|g| g.as_ptr()).collect();
    let mut args = step_args(pp.len(), pp.as_mut_ptr(), gp.as_ptr());
    match needs(algorithm) {
        Needs::Nothing => {}
        Needs::PerSample => {
            args.sum_sq = sp.as_ptr();
            args.batch_size = 4;
        }
        Needs::Curvature => args.curvature = hp.as_ptr(),
        Needs::Loss => {
            let mut f = 0.0;
            // SAFETY: the pointers address the parameters, lens their lengths.
            unsafe { quadratic_loss(&mut lens as *mut Vec<usize> as *mut c_void, pp.as_ptr() as *const *const f32, pp.len(), &mut f) };
            args.has_loss = 1;
            args.loss = f;
            args.loss_fn = Some(quadratic_loss);
            args.user_data = &mut lens as *mut Vec<usize> as *mut c_void;
        }
    }
    alr_step(opt, &args)
}

pub fn step_args(n: usize, params: *mut *mut f32, grads: *const *const f32) -> AlrStepArgs {
    AlrStepArgs {
        struct_size: std::mem::size_of::<AlrStepArgs>(),
        n_tensors: n,
        params: params as *const *mut f32,
        grads,
        sum_sq: std::ptr::null(),
        per_sample: std::ptr::null(),
        per_sample_scale: 0,
        batch_size: 0,
        curvature: std::ptr::null(),
        has_loss: 0,
        loss: 0.0,
        loss_fn: None,
        grad_fn: None,
        user_data: std::ptr::null_mut(),
    }
}

/// Parameters and saved state bit-identical: what every failed call must leave.
pub fn assert_unchanged(opt: *mut AlrOptimizer, params: &[Vec<f32>], before: &(Vec<Vec<u32>>, Option<Vec<u8>>), what: &str) {
    let now: Vec<Vec<u32>> = params.iter().map(|p| p.iter().map(|x| x.to_bits()).collect()).collect();
    assert!(now == before.0, "{what}: a failed call changed the parameters");
    assert!(save(opt) == before.1, "{what}: a failed call changed the saved state");
}

pub fn snapshot(opt: *mut AlrOptimizer, params: &[Vec<f32>]) -> (Vec<Vec<u32>>, Option<Vec<u8>>) {
    (params.iter().map(|p| p.iter().map(|x| x.to_bits()).collect()).collect(), save(opt))
}
