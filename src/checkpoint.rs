//! The byte format of a saved optimizer: little-endian fields, a magic, a format version and an
//! FNV-1a 64 checksum over everything before it, so a truncated or corrupted buffer is detected
//! before any state is touched.

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"AUTOLR\0\x01";
/// Bumped whenever the layout of a saved state changes. Version 2: counts are u64 (they were
/// f64), and every algorithm's state section starts with the algorithm's name.
pub const FORMAT_VERSION: u32 = 2;

/// The largest count (steps, fallbacks, …) a checkpoint may hold: 2^53, far beyond any training
/// run, and where an f64 still counts by ones (rates read back as f64 stay exact).
pub const MAX_COUNT: u64 = 1 << 53;

/// FNV-1a, 64 bit: tiny, dependency-free, and enough to catch accidental corruption.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[derive(Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    pub fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes.extend_from_slice(s.as_bytes());
    }
    pub fn f32s(&mut self, v: &[f32]) {
        self.u64(v.len() as u64);
        for x in v {
            self.bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    pub fn f64s(&mut self, v: &[f64]) {
        self.u64(v.len() as u64);
        for x in v {
            self.f64(*x);
        }
    }
    pub fn counts(&mut self, v: &[u64]) {
        self.u64(v.len() as u64);
        for x in v {
            self.u64(*x);
        }
    }
    /// Appends the checksum; the buffer is complete after this.
    pub fn finish(mut self) -> Vec<u8> {
        let sum = fnv1a64(&self.bytes);
        self.u64(sum);
        self.bytes
    }
}

pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Checks the magic, the format version and the checksum; the reader then starts after the header.
    pub fn open(bytes: &'a [u8]) -> Result<Self> {
        if bytes.len() < MAGIC.len() + 4 + 8 {
            return Err(Error::checkpoint(format!("checkpoint is {} bytes, too short to be an autolr state (truncated?)", bytes.len())));
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(Error::checkpoint("buffer does not start with the autolr checkpoint magic: not a state saved by alr_save"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        let stored = u64::from_le_bytes(sum.try_into().expect("8 bytes"));
        if fnv1a64(body) != stored {
            return Err(Error::checkpoint("checkpoint checksum does not match: the buffer is truncated or corrupted"));
        }
        let mut reader = Reader { bytes: body, pos: MAGIC.len() };
        let version = reader.u32()?;
        if version != FORMAT_VERSION {
            return Err(Error::checkpoint(format!("checkpoint format version {version}, this library reads version {FORMAT_VERSION}")));
        }
        Ok(reader)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(Error::checkpoint("checkpoint ends in the middle of a field (truncated or corrupted)")),
        }
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    pub fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn len(&mut self, elem_size: usize) -> Result<usize> {
        let n = self.u64()?;
        let remaining = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(elem_size as u64) > remaining {
            return Err(Error::checkpoint("checkpoint field length exceeds the buffer (corrupted)"));
        }
        Ok(n as usize)
    }
    pub fn str(&mut self) -> Result<String> {
        let n = self.len(1)?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Error::checkpoint("checkpoint holds a malformed name"))
    }
    /// Reads a float vector that must have exactly `expected` elements.
    pub fn f32s_exact(&mut self, expected: usize, what: &str) -> Result<Vec<f32>> {
        let n = self.len(4)?;
        if n != expected {
            return Err(Error::checkpoint(format!("checkpoint {what} has {n} elements, this optimizer has {expected}")));
        }
        let raw = self.take(4 * n)?;
        Ok(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
    }
    pub fn f64s_exact(&mut self, expected: usize, what: &str) -> Result<Vec<f64>> {
        let n = self.len(8)?;
        if n != expected {
            return Err(Error::checkpoint(format!("checkpoint {what} has {n} values, this optimizer has {expected}")));
        }
        (0..n).map(|_| self.f64()).collect()
    }
    /// A count that must lie in `0..=MAX_COUNT`.
    pub fn count(&mut self, what: &str) -> Result<u64> {
        let v = self.u64()?;
        if v > MAX_COUNT {
            return Err(Error::checkpoint(format!("checkpoint {what} is {v}, beyond any count a training run reaches (corrupted)")));
        }
        Ok(v)
    }
    /// Exactly `expected` counts, each in `0..=MAX_COUNT`.
    pub fn counts_exact(&mut self, expected: usize, what: &str) -> Result<Vec<u64>> {
        let n = self.len(8)?;
        if n != expected {
            return Err(Error::checkpoint(format!("checkpoint {what} has {n} values, this optimizer has {expected}")));
        }
        (0..n).map(|i| self.count(&format!("{what}[{i}]"))).collect()
    }
    /// The name an algorithm's state section starts with, which must be `algorithm`: the
    /// section's meaning is the algorithm's, not only its layout (auto-adam's v and
    /// auto-adagrad's s are laid out alike).
    pub fn expect_name(&mut self, algorithm: &str) -> Result<()> {
        let stored = self.str()?;
        if stored != algorithm {
            return Err(Error::checkpoint(format!("checkpoint holds the state of '{stored}' where this optimizer's '{algorithm}' belongs")));
        }
        Ok(())
    }
    pub fn finish(self) -> Result<()> {
        if self.pos != self.bytes.len() {
            return Err(Error::checkpoint("checkpoint has trailing bytes after the state (corrupted)"));
        }
        Ok(())
    }
}

/// A learned state marked "not started" would let a structural option change rebuild the
/// algorithm and silently drop what it learned: such a checkpoint is refused.
pub fn check_started(flag: bool, trained: bool) -> Result<()> {
    if trained && !flag {
        return Err(Error::checkpoint("checkpoint says no step was taken, but its state has been trained (corrupted?)"));
    }
    Ok(())
}

/// Checks that every loaded value of a state is one the algorithm can produce; the error names
/// the first that is not, and the rule it breaks.
pub fn check_values<T: Copy + std::fmt::Debug>(values: &[T], what: &str, possible: impl Fn(T) -> bool, rule: &str) -> Result<()> {
    match values.iter().position(|&v| !possible(v)) {
        None => Ok(()),
        Some(i) => Err(Error::checkpoint(format!("checkpoint {what}[{i}] = {:?} is impossible: {rule} (corrupted?)", values[i]))),
    }
}

/// Every tensor's element states (`lens[t]` elements of `S::FLOATS` floats each), each checked
/// by `possible`; the error names the tensor, the element, its values and `rule`.
pub fn read_elem_states<S: crate::backend::cpu::ElemState>(
    r: &mut Reader,
    lens: &[usize],
    algorithm: &str,
    possible: impl Fn(&S) -> bool,
    rule: &str,
) -> Result<Vec<Vec<S>>> {
    let mut states = Vec::with_capacity(lens.len());
    for (t, &len) in lens.iter().enumerate() {
        let floats = r.f32s_exact(len * S::FLOATS, &format!("state of tensor {t}"))?;
        let elems: Vec<S> = crate::backend::cpu::states_from_floats(&floats, len);
        if let Some(i) = elems.iter().position(|s| !possible(s)) {
            let values = &floats[i * S::FLOATS..(i + 1) * S::FLOATS];
            return Err(Error::checkpoint(format!(
                "checkpoint state of tensor {t}, element {i} = {values:?} is impossible for '{algorithm}': {rule} (corrupted?)"
            )));
        }
        states.push(elems);
    }
    Ok(states)
}

/// A per-element first moment or direction: any finite value.
pub fn finite(x: f32) -> bool {
    x.is_finite()
}

/// A per-element second moment (Σg², an average of g²): ≥ 0. +Inf is possible (a finite g
/// whose square overflows); NaN is not.
pub fn second_moment(x: f32) -> bool {
    x >= 0.0
}
