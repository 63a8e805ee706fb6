//! Canonical binary encoding: big-endian integers, length-prefixed strings,
//! a domain tag and the protocol version first. Readers never panic.

use crate::{PROTOCOL_VERSION, ProtoError};

pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(tag: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(tag);
        buf.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        Self { buf }
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// Callers bound string lengths before encoding, so the cast is lossless.
    pub(crate) fn str(&mut self, v: &str) {
        self.u32(v.len() as u32);
        self.raw(v.as_bytes());
    }
    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the domain tag and the protocol version.
    pub(crate) fn new(
        buf: &'a [u8],
        tag: &'static [u8],
        what: &'static str,
    ) -> Result<Self, ProtoError> {
        let mut r = Self { buf };
        let got = r.take(tag.len(), what)?;
        if got != tag {
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
    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], ProtoError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtoError> {
        Ok(u32::from_be_bytes(self.array::<4>(what)?))
    }
    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, ProtoError> {
        Ok(u64::from_be_bytes(self.array::<8>(what)?))
    }
    pub(crate) fn str(&mut self, what: &'static str, max: usize) -> Result<String, ProtoError> {
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
    /// How many bytes have been consumed so far, relative to `start`.
    pub(crate) fn consumed_from(&self, start: &[u8]) -> usize {
        start.len() - self.buf.len()
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
}
