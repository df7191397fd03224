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
    let mut hash: u64 = FNV_OFFSET;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// Where a `Writer`'s bytes go.
enum Sink<'a> {
    /// Into a growing vector (`Optimizer::save`).
    Vec(Vec<u8>),
    /// Nowhere: only counted (`Optimizer::save_size`, behind `alr_save_size`: no memory is sized
    /// by the state).
    Count,
    /// Straight into a caller's buffer (`Optimizer::save_into`, behind `alr_save`: no copy of the
    /// state is made).
    Slice(&'a mut [u8]),
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Appends the fields of a checkpoint, with their count and running checksum.
pub struct Writer<'a> {
    sink: Sink<'a>,
    len: usize,
    hash: u64,
    /// A slice write that would have passed the buffer's end (and was not made).
    overflowed: bool,
}

impl<'a> Writer<'a> {
    fn with(sink: Sink<'a>) -> Self {
        Writer { sink, len: 0, hash: FNV_OFFSET, overflowed: false }
    }

    /// A writer that collects the bytes in a vector.
    pub fn to_vec() -> Self {
        Self::with(Sink::Vec(Vec::new()))
    }

    /// A writer that only counts the bytes.
    pub fn counting() -> Self {
        Self::with(Sink::Count)
    }

    /// A writer into `buf`; `finish_in_place` fails if the checkpoint does not fit.
    pub fn into_slice(buf: &'a mut [u8]) -> Self {
        Self::with(Sink::Slice(buf))
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
        match &mut self.sink {
            Sink::Vec(v) => v.extend_from_slice(bytes),
            Sink::Count => {}
            Sink::Slice(buf) => match self.len.checked_add(bytes.len()).filter(|&end| !self.overflowed && end <= buf.len()) {
                Some(end) => buf[self.len..end].copy_from_slice(bytes),
                None => self.overflowed = true,
            },
        }
        self.len = self.len.saturating_add(bytes.len());
    }

    /// Appends the checksum; the checkpoint is complete after this. Returns the vector (empty for
    /// a counting or in-place writer) and the checkpoint's length, or an error when an in-place
    /// checkpoint did not fit its buffer.
    pub fn finish(mut self) -> Result<(Vec<u8>, usize)> {
        let sum = self.hash;
        self.u64(sum);
        if self.overflowed {
            let capacity = if let Sink::Slice(buf) = &self.sink { buf.len() } else { 0 };
            return Err(Error::invalid(format!("buffer holds {capacity} bytes, the state needs {}: ask alr_save_size first", self.len)));
        }
        let len = self.len;
        Ok((if let Sink::Vec(v) = self.sink { v } else { Vec::new() }, len))
    }

    pub fn u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    pub fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.extend_from_slice(s.as_bytes());
    }
    pub fn f32s(&mut self, v: &[f32]) {
        self.u64(v.len() as u64);
        for x in v {
            self.extend_from_slice(&x.to_le_bytes());
        }
    }
    pub fn f64s(&mut self, v: &[f64]) {
        self.u64(v.len() as u64);
        for x in v {
            self.f64(*x);
        }
    }
    /// Element states as their floats, interleaved (the layout `read_elem_states` reads), without
    /// an intermediate copy.
    pub fn elem_states<S: crate::backend::ElemState>(&mut self, states: &[S]) {
        self.u64((states.len() * S::FLOATS) as u64);
        let mut floats = Vec::with_capacity(S::FLOATS);
        for st in states {
            floats.clear();
            st.write(&mut floats);
            floats.iter().for_each(|x| self.extend_from_slice(&x.to_le_bytes()));
        }
    }
    /// One float of each element state (`slot` of its `FLOATS`): a de-interleaved column.
    pub fn elem_column<S: crate::backend::ElemState>(&mut self, states: &[S], slot: usize) {
        self.u64(states.len() as u64);
        let mut floats = Vec::with_capacity(S::FLOATS);
        for st in states {
            floats.clear();
            st.write(&mut floats);
            self.extend_from_slice(&floats[slot].to_le_bytes());
        }
    }
    pub fn counts(&mut self, v: &[u64]) {
        self.u64(v.len() as u64);
        for x in v {
            self.u64(*x);
        }
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
    /// A reader of fields written by a `Writer` of this process (an algorithm's own snapshot of
    /// its state, never a caller's buffer): no header.
    pub fn fields(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
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

/// How a refused checkpoint's message ends. A value that is NaN or Inf is also what a run that
/// diverged leaves (an overflow of finite inputs — a learning rate or weight decay far too large
/// — or NaN gradients with check_finite = 0): `alr_save` writes such a state, for inspection,
/// but no step could go on from it, so it is not loaded.
pub fn doubt(non_finite: bool) -> &'static str {
    if non_finite {
        "(NaN or Inf: the state of a run that diverged, which cannot be resumed — resume from an earlier checkpoint with a smaller learning rate or weight decay — or a corrupted checkpoint)"
    } else {
        "(corrupted?)"
    }
}

/// Checks that every loaded value of a state is one the algorithm can produce; the error names
/// the first that is not, and the rule it breaks.
pub fn check_values<T: Copy + std::fmt::Debug + Into<f64>>(values: &[T], what: &str, possible: impl Fn(T) -> bool, rule: &str) -> Result<()> {
    match values.iter().position(|&v| !possible(v)) {
        None => Ok(()),
        Some(i) => {
            let doubt = doubt(!values[i].into().is_finite());
            Err(Error::checkpoint(format!("checkpoint {what}[{i}] = {:?} is impossible: {rule} {doubt}", values[i])))
        }
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
            let doubt = doubt(values.iter().any(|v| !v.is_finite()));
            return Err(Error::checkpoint(format!("checkpoint state of tensor {t}, element {i} = {values:?} is impossible for '{algorithm}': {rule} {doubt}")));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A small checkpoint-shaped save, as `Optimizer::save` writes one.
    fn fields(w: &mut Writer) {
        w.extend_from_slice(MAGIC);
        w.u32(FORMAT_VERSION);
        w.str("adam");
        w.f32s(&[1.0, -2.5, f32::MIN_POSITIVE]);
        w.f64s(&[0.125, 3.0]);
    }

    #[test]
    fn counting_and_in_place_writers_agree_with_the_vector() {
        let mut w = Writer::to_vec();
        fields(&mut w);
        let (bytes, len) = w.finish().unwrap();
        assert_eq!(len, bytes.len());
        assert_eq!(fnv1a64(&bytes[..bytes.len() - 8]).to_le_bytes(), bytes[bytes.len() - 8..]);
        let mut w = Writer::counting();
        fields(&mut w);
        assert_eq!(w.finish().unwrap(), (Vec::new(), bytes.len()));
        let mut buf = vec![0xABu8; bytes.len() + 3];
        let mut w = Writer::into_slice(&mut buf);
        fields(&mut w);
        assert_eq!(w.finish().unwrap().1, bytes.len());
        assert_eq!(&buf[..bytes.len()], &bytes[..]);
        assert_eq!(&buf[bytes.len()..], &[0xAB; 3]);
        Reader::open(&buf[..bytes.len()]).unwrap();
    }

    #[test]
    fn in_place_writes_never_pass_the_buffer() {
        let mut w = Writer::counting();
        fields(&mut w);
        let len = w.finish().unwrap().1;
        let mut buf = vec![0u8; len];
        let mut w = Writer::into_slice(&mut buf[..len - 1]);
        fields(&mut w);
        let err = w.finish().unwrap_err();
        assert!(err.message.contains("needs"), "{}", err.message);
        // Nothing was written at or after the end of the buffer.
        assert_eq!(buf[len - 1], 0);
    }
}
