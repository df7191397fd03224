//! The byte format of a saved optimizer: little-endian fields, a magic, a format version and an
//! FNV-1a 64 checksum over everything before it, so a truncated or corrupted buffer is detected
//! before any state is touched.

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"AUTOLR\0\x01";
/// Bumped whenever the layout of a saved state changes.
pub const FORMAT_VERSION: u32 = 1;

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
enum Mode {
    /// Into a growing vector, returned by `finish` (the Rust API's `Optimizer::save`).
    Vec(Vec<u8>),
    /// Nowhere: only counted (`measure`, behind `alr_save_size`).
    Count,
    /// Straight into a caller's buffer of `capacity` bytes (`write_into`, behind `alr_save`).
    Slice { ptr: *mut u8, capacity: usize },
}

/// The bytes of a checkpoint being written, with their count and running checksum. Behaves as
/// the `Vec<u8>` it replaces for code that appends with `extend_from_slice`.
pub struct Sink {
    mode: Mode,
    len: usize,
    hash: u64,
    /// A `Slice` write that would have passed the caller's capacity (and was not made).
    overflowed: bool,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Sink {
    fn new(mode: Mode) -> Self {
        Sink { mode, len: 0, hash: FNV_OFFSET, overflowed: false }
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(FNV_PRIME);
        }
        match &mut self.mode {
            Mode::Vec(v) => v.extend_from_slice(bytes),
            Mode::Count => {}
            Mode::Slice { ptr, capacity } => {
                if self.overflowed || self.len.checked_add(bytes.len()).map_or(true, |end| end > *capacity) {
                    self.overflowed = true;
                } else {
                    // SAFETY: `write_into`'s caller guarantees `capacity` writable bytes at `ptr`,
                    // and len + bytes.len() <= capacity was checked just above.
                    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.add(self.len), bytes.len()) };
                }
            }
        }
        self.len = self.len.saturating_add(bytes.len());
    }

    /// Bytes appended so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What a counting or in-place `Writer` reports when it finishes: bytes, and whether they fit.
#[derive(Clone, Copy)]
struct Finished {
    len: usize,
    overflowed: bool,
}

thread_local! {
    /// The mode the next `Writer::default()` on this thread takes (set by `measure` / `write_into`).
    static NEXT_MODE: std::cell::RefCell<Option<Mode>> = const { std::cell::RefCell::new(None) };
    static FINISHED: std::cell::Cell<Option<Finished>> = const { std::cell::Cell::new(None) };
}

/// Clears the thread's pending mode and outcome, also when the save returns early or unwinds.
struct ModeScope;

impl ModeScope {
    fn set(mode: Mode) -> Self {
        NEXT_MODE.with(|m| *m.borrow_mut() = Some(mode));
        FINISHED.with(|f| f.set(None));
        ModeScope
    }
    /// The outcome of the writer that took the mode, or why there is none.
    fn outcome(&self) -> Result<Finished> {
        FINISHED.with(|f| f.take()).ok_or_else(|| {
            Error::new(crate::error::AlrStatus::AlrPanic, "internal error (a bug in autolr, please report it): the state was not written through a checkpoint Writer")
        })
    }
}

impl Drop for ModeScope {
    fn drop(&mut self) {
        NEXT_MODE.with(|m| m.borrow_mut().take());
        FINISHED.with(|f| f.set(None));
    }
}

/// The size in bytes of the checkpoint `save` writes, without storing it: `save` runs with its
/// first `Writer::default()` in counting mode (what it returns is then empty and ignored). No
/// memory is sized by the state here; `alr_save_size` runs on this.
pub fn measure(save: impl FnOnce() -> Result<Vec<u8>>) -> Result<usize> {
    let scope = ModeScope::set(Mode::Count);
    save()?;
    Ok(scope.outcome()?.len)
}

/// Writes the checkpoint `save` produces straight into `buf` (`capacity` bytes) and returns its
/// length; fails, having written at most `capacity` bytes, when it does not fit (call `measure`
/// first so that nothing is written then). No copy of the state is made; `alr_save` runs on this.
///
/// # Safety
/// `buf` must address `capacity` writable bytes for the duration of the call.
pub unsafe fn write_into(buf: *mut u8, capacity: usize, save: impl FnOnce() -> Result<Vec<u8>>) -> Result<usize> {
    let scope = ModeScope::set(Mode::Slice { ptr: buf, capacity });
    save()?;
    let done = scope.outcome()?;
    if done.overflowed {
        return Err(Error::invalid(format!("buffer holds {capacity} bytes, the state needs {}: ask alr_save_size first", done.len)));
    }
    Ok(done.len)
}

/// Appends the fields of a checkpoint. `Writer::default()` collects them in a vector, unless it
/// is made inside `measure` or `write_into`, which count them or write them in place.
pub struct Writer {
    pub bytes: Sink,
}

impl Default for Writer {
    fn default() -> Self {
        let mode = NEXT_MODE.with(|m| m.borrow_mut().take()).unwrap_or(Mode::Vec(Vec::new()));
        Writer { bytes: Sink::new(mode) }
    }
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
    /// Appends the checksum; the buffer is complete after this. A counting or in-place writer
    /// returns an empty vector and reports its length to `measure` / `write_into`.
    pub fn finish(mut self) -> Vec<u8> {
        let sum = self.bytes.hash;
        self.u64(sum);
        match self.bytes.mode {
            Mode::Vec(v) => v,
            Mode::Count | Mode::Slice { .. } => {
                FINISHED.with(|f| f.set(Some(Finished { len: self.bytes.len, overflowed: self.bytes.overflowed })));
                Vec::new()
            }
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
            return Err(Error::checkpoint(format!(
                "checkpoint is {} bytes, too short to be an autolr state (truncated?)",
                bytes.len()
            )));
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
            return Err(Error::checkpoint(format!(
                "checkpoint format version {version}, this library reads version {FORMAT_VERSION}"
            )));
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
    pub fn finish(self) -> Result<()> {
        if self.pos != self.bytes.len() {
            return Err(Error::checkpoint("checkpoint has trailing bytes after the state (corrupted)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small checkpoint-shaped save, as `Optimizer::save` writes one.
    fn save(fail: bool) -> Result<Vec<u8>> {
        if fail {
            return Err(Error::wrong_state("refused before any writer exists"));
        }
        let mut w = Writer::default();
        w.bytes.extend_from_slice(MAGIC);
        w.u32(FORMAT_VERSION);
        w.str("adam");
        w.f32s(&[1.0, -2.5, f32::MIN_POSITIVE]);
        w.f64s(&[0.125, 3.0]);
        Ok(w.finish())
    }

    #[test]
    fn counting_and_in_place_writers_agree_with_the_vector() {
        let bytes = save(false).unwrap();
        assert_eq!(fnv1a64(&bytes[..bytes.len() - 8]).to_le_bytes(), bytes[bytes.len() - 8..]);
        assert_eq!(measure(|| save(false)).unwrap(), bytes.len());
        let mut buf = vec![0xABu8; bytes.len() + 3];
        let n = unsafe { write_into(buf.as_mut_ptr(), buf.len(), || save(false)) }.unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(&buf[..n], &bytes[..]);
        assert_eq!(&buf[n..], &[0xAB; 3]);
        Reader::open(&buf[..n]).unwrap();
        // The mode was the first writer's only: a writer made afterwards collects a vector again.
        assert_eq!(save(false).unwrap(), bytes);
    }

    #[test]
    fn in_place_writes_never_pass_the_capacity() {
        let len = save(false).unwrap().len();
        let mut buf = vec![0u8; len];
        let err = unsafe { write_into(buf.as_mut_ptr(), len - 1, || save(false)) }.unwrap_err();
        assert!(err.message.contains("needs"), "{}", err.message);
        // Nothing was written at or after the capacity.
        assert_eq!(buf[len - 1], 0);
        let n = unsafe { write_into(buf.as_mut_ptr(), 0, || save(false)) };
        assert!(n.is_err());
    }

    #[test]
    fn an_early_error_leaves_no_mode_behind() {
        assert_eq!(measure(|| save(true)).unwrap_err().message, "refused before any writer exists");
        let bytes = save(false).unwrap();
        assert!(bytes.len() > 20, "a later writer must not inherit the counting mode");
        // A save that makes no writer at all is reported, not taken for a size of 0.
        assert!(measure(|| Ok(Vec::new())).is_err());
    }
}
