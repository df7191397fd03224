//! Step arguments through alr_step and alr_step_dlpack: tensor counts and lengths, gradient
//! values (NaN, ±Inf), per-sample data in both forms with any batch size N — including the N
//! for which N·len fits in size_t but N·len·4 bytes does not fit in isize (issue 17) —, any
//! per_sample_scale integer, curvature, losses, callbacks, struct sizes, and DLPack tensors with
//! any dtype, device, ndim, shape (dimensions up to i64::MAX, products that wrap around 2^64),
//! strides and byte offset.
//!
//! Buffers are always real for what the harness passes as valid: a size no buffer can have gets
//! an 8-float buffer, and the library must refuse it (a read of it crashes under ASan); a size
//! that could exist but is too large to allocate here is replaced by a small one. Checked: no
//! ALR_PANIC, no crash; every refused step leaves parameters and saved state bit-identical
//! (except ALR_CALLBACK_FAILED, GI's documented exception); an accepted DLPack step had
//! shapes whose true element counts are the registered ones.
#![no_main]

use autolr::ffi::*;
use autolr::AlrStatus;
use autolr_fuzz::*;
use libfuzzer_sys::fuzz_target;
use std::ffi::c_void;

/// The largest buffer the harness allocates, in floats.
const CAP: u128 = 4096;
/// The most floats any buffer can hold (isize::MAX bytes).
const MAX_FLOATS: u128 = (isize::MAX as u128) / 4;

unsafe extern "C" fn grad_ok(_: *mut c_void, _: *const *const f32, out: *const *mut f32, n: usize) -> i32 {
    // The harness's lengths are at most 12: write the first element of each only.
    for t in 0..n {
        **out.add(t) = 0.125;
    }
    0
}

unsafe extern "C" fn grad_fails(_: *mut c_void, _: *const *const f32, _: *const *mut f32, _: usize) -> i32 {
    1
}

fn batch_size(b: &mut Bytes) -> usize {
    match b.u8() % 8 {
        0 => 1 << 61,
        1 => 1 << 40,
        2 => usize::MAX / 5,
        3 => b.u64() as usize,
        4 => 0,
        _ => b.u8() as usize % 9,
    }
}

fn floats(b: &mut Bytes, n: usize) -> Vec<f32> {
    (0..n).map(|_| b.f32()).collect()
}

/// A DLPack tensor description: shape, strides, dtype, device, offset; `data` is filled in later.
struct Desc {
    shape: Vec<i64>,
    strides: Option<Vec<i64>>,
    dtype: AlrDLDataType,
    device: AlrDLDevice,
    offset: u64,
}

/// The true element count of a shape (u128, no wrapping), None for a negative dimension.
fn true_count(shape: &[i64]) -> Option<u128> {
    shape.iter().try_fold(1u128, |acc, &d| if d < 0 { None } else { Some(acc.saturating_mul(d as u128)) })
}

fn describe(b: &mut Bytes, len: usize, rows: Option<usize>) -> Desc {
    let mut shape: Vec<i64> = match rows {
        Some(n) => vec![n as i64, len as i64],
        None => vec![len as i64],
    };
    let mut d = Desc {
        shape: Vec::new(),
        strides: None,
        dtype: AlrDLDataType { code: 2, bits: 32, lanes: 1 },
        device: AlrDLDevice { device_type: 1, device_id: 0 },
        offset: 0,
    };
    let k = b.u8();
    if k >= 192 {
        // A fuzzed shape: 0 to 4 dimensions, often huge.
        let ndim = b.u8() as usize % 5;
        shape = (0..ndim)
            .map(|_| match b.u8() % 6 {
                0 => b.i64(),
                1 => 1 << 61,
                2 => 6_148_914_691_236_517_207, // × 3 = 2^64 + 5
                3 => 1 << 32,
                _ => b.u8() as i64 % 13,
            })
            .collect();
    }
    if k % 16 == 1 {
        d.strides = Some((0..shape.len()).map(|_| b.i64() % 64).collect());
    } else if k % 16 == 2 {
        // Contiguous strides, spelled out.
        let mut s = vec![1i64; shape.len()];
        for i in (0..shape.len().saturating_sub(1)).rev() {
            s[i] = s[i + 1].saturating_mul(shape[i + 1]);
        }
        d.strides = Some(s);
    }
    if k % 32 == 3 {
        d.dtype = AlrDLDataType { code: b.u8(), bits: b.u8(), lanes: b.u8() as u16 };
    }
    if k % 32 == 4 {
        d.device = AlrDLDevice { device_type: b.u8() as i32 % 4, device_id: b.u8() as i32 % 3 - 1 };
    }
    if k % 32 == 5 {
        d.offset = 4 * (b.u8() as u64 % 2) + (b.u8() as u64 % 4 == 0) as u64;
    }
    d.shape = shape;
    d
}

struct Built {
    /// The shapes and strides the tensors point into.
    _descs: Vec<Desc>,
    tensors: Vec<AlrDLTensor>,
    ptrs: Vec<*const AlrDLTensor>,
    _data: Vec<Vec<f32>>,
    /// Some tensor's true element count is one no buffer can have: the library must refuse.
    impossible: bool,
}

/// Tensors for the descriptions, each over a real buffer of its true size (plus its offset), or
/// of 8 floats when that size is impossible. A possible size above CAP is replaced by `fallback`.
fn build(descs: Vec<Desc>, fallback: &[(usize, Option<usize>)], b: &mut Bytes) -> Built {
    let mut data = Vec::new();
    let mut impossible = false;
    let mut descs = descs;
    for (t, d) in descs.iter_mut().enumerate() {
        let count = true_count(&d.shape);
        let floats_needed = match count {
            Some(c) if c <= CAP => c as usize,
            Some(c) if c <= MAX_FLOATS => {
                let (len, rows) = fallback[t];
                d.shape = rows.map_or(vec![len as i64], |n| vec![(n % 8) as i64, len as i64]);
                d.strides = None; // they described the old shape (ndim entries)
                true_count(&d.shape).unwrap() as usize
            }
            _ => {
                impossible = true;
                0
            }
        };
        let extra = (d.offset as usize).div_ceil(4) + 1;
        let mut buf = floats(b, floats_needed.min(64));
        buf.resize(floats_needed + extra, 0.5);
        buf.resize(buf.len().max(8), 0.5);
        data.push(buf);
    }
    let mut tensors: Vec<AlrDLTensor> = descs
        .iter()
        .zip(data.iter_mut())
        .map(|(d, buf)| AlrDLTensor {
            data: buf.as_mut_ptr() as *mut c_void,
            device: d.device,
            ndim: d.shape.len() as i32,
            dtype: d.dtype,
            shape: d.shape.as_ptr(),
            strides: d.strides.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            byte_offset: d.offset,
        })
        .collect();
    let ptrs = tensors.iter_mut().map(|t| t as *const AlrDLTensor).collect();
    // Moving the Vecs keeps their heap buffers where the tensors point.
    Built { _descs: descs, tensors, ptrs, _data: data, impossible }
}

fn dlpack_step(b: &mut Bytes, opt: *mut AlrOptimizer, algorithm: &str, lens: &[usize], params: &mut [Vec<f32>], grads: &[Vec<f32>]) -> AlrStatus {
    let rows = match needs(algorithm) {
        Needs::PerSample => Some(batch_size(b)),
        _ => None,
    };
    let descs = |b: &mut Bytes, rows: Option<usize>| lens.iter().map(|&n| describe(b, n, rows)).collect::<Vec<_>>();
    let plain: Vec<(usize, Option<usize>)> = lens.iter().map(|&n| (n, None)).collect();
    let mut p = build(descs(b, None), &plain, b);
    // Parameters: the harness's own buffers, so their bytes can be compared after a failure.
    for (t, tensor) in p.tensors.iter_mut().enumerate() {
        if true_count(&p_shape(tensor)) == Some(lens[t] as u128) && tensor.byte_offset == 0 {
            tensor.data = params[t].as_mut_ptr() as *mut c_void;
        }
    }
    let g = build(descs(b, None), &plain, b);
    let _ = grads;
    let use_samples = b.u8() % 4;
    let per: Vec<(usize, Option<usize>)> = lens.iter().map(|&n| (n, rows.or(Some(4)))).collect();
    let s = (use_samples == 1).then(|| build(descs(b, None), &plain, b));
    let m = (use_samples >= 2).then(|| build(descs(b, rows.or(Some(4))), &per, b));
    let h = (needs(algorithm) == Needs::Curvature || b.u8() % 8 == 0).then(|| build(descs(b, None), &plain, b));
    let list = |x: &Option<Built>| x.as_ref().map_or(std::ptr::null(), |x| x.ptrs.as_ptr());
    let mut lens_v = lens.to_vec();
    let args = AlrDLStepArgs {
        struct_size: std::mem::size_of::<AlrDLStepArgs>(),
        n_tensors: lens.len(),
        params: p.ptrs.as_ptr(),
        grads: g.ptrs.as_ptr(),
        sum_sq: list(&s),
        per_sample: list(&m),
        per_sample_scale: (b.u8() % 3) as i32,
        batch_size: rows.unwrap_or(4),
        curvature: list(&h),
        has_loss: (algorithm == "gi") as i32,
        loss: 1.0,
        loss_fn: if algorithm == "gi" { Some(quadratic_loss) } else { None },
        grad_fn: None,
        user_data: &mut lens_v as *mut Vec<usize> as *mut c_void,
    };
    let rc = no_panic(alr_step_dlpack(opt, &args), "alr_step_dlpack");
    let impossible = [Some(&p), Some(&g), s.as_ref(), m.as_ref(), h.as_ref()].iter().flatten().any(|x| x.impossible);
    if impossible {
        assert!(rc != AlrStatus::AlrOk, "alr_step_dlpack accepted a tensor no buffer can hold");
    }
    if rc == AlrStatus::AlrOk {
        for (what, x, per_row) in [("params", Some(&p), false), ("grads", Some(&g), false), ("sum_sq", s.as_ref(), false), ("curvature", h.as_ref(), false), ("per_sample", m.as_ref(), true)] {
            let Some(x) = x else { continue };
            for (t, tensor) in x.tensors.iter().enumerate() {
                let shape = p_shape(tensor);
                let count = true_count(&shape).unwrap();
                let want = if per_row { lens[t] as u128 * shape[0] as u128 } else { lens[t] as u128 };
                assert_eq!(count, want, "alr_step_dlpack accepted {what}[{t}] of shape {shape:?} for {} registered elements", lens[t]);
            }
        }
    }
    rc
}

fn p_shape(t: &AlrDLTensor) -> Vec<i64> {
    if t.ndim <= 0 {
        return Vec::new();
    }
    // SAFETY: the harness made shape point to ndim dimensions.
    unsafe { std::slice::from_raw_parts(t.shape, t.ndim as usize) }.to_vec()
}

fn raw_step(b: &mut Bytes, opt: *mut AlrOptimizer, algorithm: &str, lens: &[usize], params: &mut [Vec<f32>], grads: &[Vec<f32>]) -> AlrStatus {
    let mut pp: Vec<*mut f32> = params.iter_mut().map(|p| p.as_mut_ptr()).collect();
    let gp: Vec<*const f32> = grads.iter().map(|g| g.as_ptr()).collect();
    let mut args = step_args(lens.len(), pp.as_mut_ptr(), gp.as_ptr());
    let sq: Vec<Vec<f32>> = lens.iter().map(|&n| floats(b, n)).collect();
    let sqp: Vec<*const f32> = sq.iter().map(|v| v.as_ptr()).collect();
    let hv: Vec<Vec<f32>> = lens.iter().map(|&n| floats(b, n)).collect();
    let hp: Vec<*const f32> = hv.iter().map(|v| v.as_ptr()).collect();
    let mut n = batch_size(b);
    let min_len = *lens.iter().min().unwrap() as u128;
    let max_len = *lens.iter().max().unwrap() as u128;
    let impossible = (n as u128) * min_len > MAX_FLOATS;
    if !impossible && (n as u128) * max_len > CAP {
        n %= 8;
    }
    let rows: Vec<Vec<f32>> = lens.iter().map(|&len| if impossible { vec![0.5; 8] } else { floats(b, n * len) }).collect();
    let rp: Vec<*const f32> = rows.iter().map(|v| v.as_ptr()).collect();
    let mut lens_v = lens.to_vec();
    match b.u8() % 4 {
        0 => {}
        1 => args.sum_sq = sqp.as_ptr(),
        2 => args.per_sample = rp.as_ptr(),
        _ => {
            args.sum_sq = sqp.as_ptr();
            args.per_sample = rp.as_ptr();
        }
    }
    args.batch_size = n;
    args.per_sample_scale = match b.u8() % 4 {
        0 | 1 => 0,
        2 => 1,
        _ => b.u64() as i32,
    };
    let k = b.u8();
    if k % 2 == 0 || needs(algorithm) == Needs::Curvature && k % 4 != 1 {
        args.curvature = hp.as_ptr();
    }
    if k % 8 < 3 {
        args.has_loss = 1;
        args.loss = b.f64();
    }
    if k % 16 < 6 {
        args.loss_fn = Some(quadratic_loss);
        args.user_data = &mut lens_v as *mut Vec<usize> as *mut c_void;
    }
    match k / 64 {
        1 => args.grad_fn = Some(grad_ok),
        2 => args.grad_fn = Some(grad_fails),
        _ => {}
    }
    if b.u8() == 255 {
        args.struct_size = b.u64() as usize % (2 * std::mem::size_of::<AlrStepArgs>());
    }
    let rc = no_panic(alr_step(opt, &args), "alr_step");
    if impossible && args.per_sample == rp.as_ptr() && args.sum_sq.is_null() && args.struct_size >= std::mem::size_of::<AlrStepArgs>() {
        assert!(rc != AlrStatus::AlrOk, "alr_step accepted per-sample data of N = {n} × len {min_len}, which no buffer can hold");
    }
    rc
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let algorithm = ALGORITHMS[b.u8() as usize % ALGORITHMS.len()];
    let nt = 1 + b.u8() as usize % 3;
    let lens: Vec<usize> = (0..nt).map(|_| 1 + b.u8() as usize % 12).collect();
    let Some(opt) = create(algorithm, &lens, None) else { panic!("alr_create {algorithm}: {}", last_error()) };
    let mut params: Vec<Vec<f32>> = lens.iter().map(|&n| (0..n).map(|i| 0.1 * i as f32 - 0.3).collect()).collect();
    for _ in 0..1 + b.u8() % 4 {
        let grads: Vec<Vec<f32>> = lens.iter().map(|&n| floats(&mut b, n)).collect();
        let before = snapshot(opt, &params);
        let rc = if b.u8() % 2 == 0 {
            raw_step(&mut b, opt, algorithm, &lens, &mut params, &grads)
        } else {
            dlpack_step(&mut b, opt, algorithm, &lens, &mut params, &grads)
        };
        if rc != AlrStatus::AlrOk && rc != AlrStatus::AlrCallbackFailed {
            assert_unchanged(opt, &params, &before, &format!("a refused step ({rc:?}: {})", last_error()));
        }
        if rc == AlrStatus::AlrOk && algorithm == "gi" {
            // Two-phase GI (a step without loss_fn) waits for its report.
            no_panic(alr_report_loss(opt, 0.5), "alr_report_loss");
        }
    }
    destroy(opt);
});
