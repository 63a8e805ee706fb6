//! The canonical binary encoding every signed sharenet object uses: a
//! domain tag, the protocol version as a big-endian u16, then fixed
//! big-endian fields and u32-length-prefixed strings. Readers never panic
//! and bound every count before allocating. Public so other crates'
//! signed objects (settlement statements) encode the same way and fail to
//! decode with the same reasons.

use crate::{PROTOCOL_VERSION, ProtoError};

pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(tag: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(512);
        buf.extend_from_slice(tag);
        buf.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        Self { buf }
    }
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// Callers bound string lengths (and list counts) before encoding, so
    /// the length fits a u32.
    pub fn str(&mut self, v: &str) {
        self.len(v.len());
        self.raw(v.as_bytes());
    }
    /// A length or a count, validated by the caller to fit a u32.
    pub fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the domain tag and the protocol version.
    pub fn new(buf: &'a [u8], tag: &'static [u8], what: &'static str) -> Result<Self, ProtoError> {
        let mut r = Self { buf };
        if r.take(tag.len(), what)? != tag {
            return Err(ProtoError::WrongTag { expected: what });
        }
        let version = u16::from_be_bytes(r.array::<2>(what)?);
        if version != PROTOCOL_VERSION {
            return Err(ProtoError::UnsupportedVersion(version));
        }
        Ok(r)
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated(what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ProtoError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        Ok(u32::from_be_bytes(self.array::<4>(what)?))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        Ok(u64::from_be_bytes(self.array::<8>(what)?))
    }
    pub fn str(&mut self, what: &'static str, max: usize) -> Result<String, ProtoError> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(ProtoError::TooLong {
                field: what,
                len,
                max,
            });
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| ProtoError::InvalidUtf8(what))
    }
    /// A list count, refused when even items of `min_item_bytes` each could
    /// not fit in what is left: bytes from a peer never size an allocation.
    pub fn count(
        &mut self,
        what: &'static str,
        min_item_bytes: usize,
    ) -> Result<usize, ProtoError> {
        let n = self.u32(what)? as usize;
        let max = self.buf.len() / min_item_bytes.max(1);
        if n > max {
            return Err(ProtoError::TooLong {
                field: what,
                len: n,
                max,
            });
        }
        Ok(n)
    }
    /// How many bytes have been consumed so far, relative to `start`.
    pub fn consumed_from(&self, start: &[u8]) -> usize {
        start.len() - self.buf.len()
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
}
