//! The byte format of a saved optimizer: little-endian fields, a magic, a format version and an
//! FNV-1a 64 checksum over everything before it, so a truncated or corrupted buffer is detected
//! before any state is touched.

use crate::error::{Error, Result};

pub const MAGIC: &[u8; 8] = b"AUTOLR\0\x01";
/// Bumped whenever the layout of a saved state changes.
pub const FORMAT_VERSION: u32 = 1;

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
