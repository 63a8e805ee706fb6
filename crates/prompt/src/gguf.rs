//! A GGUF metadata reader: the header, the key/value pairs and the tensor
//! infos (names, shapes, types), stopping before the tensor data. No
//! candle: the coordinator reads an operator's `.gguf` with this.
//!
//! Values are read as candle's reader reads them (so the engine and the
//! coordinator see the same tokenizer): little-endian, GGUF versions 1 to
//! 3 (v1's lengths are u32), strings decoded as lossy UTF-8 with trailing
//! NUL bytes dropped.
//!
//! The reader is strict and bounded: a count or length that exceeds the
//! limits below or the bytes left in the file, an unknown value or tensor
//! type, a bool other than 0/1, arrays nested deeper than
//! [`MAX_DEPTH`]: each is an error naming the offset, never a panic or an
//! allocation the file cannot back.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::{PromptError, parse_err, read_err};

/// Longest string: chat templates are tens of KiB; 16 MiB leaves room
/// while refusing lengths that are no string at all.
pub const MAX_STRING: u64 = 16 << 20;
/// Most key/value pairs: real files have a few dozen.
pub const MAX_KEYS: u64 = 1 << 16;
/// Most tensors: an 8B model has ~300, the biggest MoE files ~10k.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Most values in all arrays together (each costs ~32 bytes in memory):
/// a 256k vocabulary with its merges, types and scores is ~1M.
pub const MAX_VALUES: u64 = 16 << 20;
/// Deepest nesting of arrays (real files nest none).
pub const MAX_DEPTH: usize = 4;
/// Most dimensions of a tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Self::Array(v) => Some(v),
            _ => None,
        }
    }

    /// The value of a `U32` only (as candle's `to_u32`).
    pub fn as_u32(&self) -> Option<u32> {
        match self {
            Self::U32(v) => Some(*v),
            _ => None,
        }
    }

    /// The value of an `I32` only (as candle's `to_i32`).
    pub fn as_i32(&self) -> Option<i32> {
        match self {
            Self::I32(v) => Some(*v),
            _ => None,
        }
    }

    /// An unsigned integer or bool widened to u64 (as candle's `to_u64`).
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Self::U64(v) => Some(*v),
            Self::U32(v) => Some(u64::from(*v)),
            Self::U16(v) => Some(u64::from(*v)),
            Self::U8(v) => Some(u64::from(*v)),
            Self::Bool(v) => Some(u64::from(*v)),
            _ => None,
        }
    }

    /// The value of a `Bool` only.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(v) => Some(*v),
            _ => None,
        }
    }
}

/// One tensor's description (its data is not read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as stored (innermost first).
    pub dims: Vec<u64>,
    /// The ggml type number (0 F32, 1 F16, 8 Q8_0, 30 BF16, ...).
    pub ggml_type: u32,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

/// The name candle gives a ggml tensor type (its `GgmlDType` debug name),
/// which is what a node advertises as its quantization; `None` for types
/// candle does not load.
pub fn ggml_type_name(t: u32) -> Option<&'static str> {
    Some(match t {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2K",
        11 => "Q3K",
        12 => "Q4K",
        13 => "Q5K",
        14 => "Q6K",
        15 => "Q8K",
        30 => "BF16",
        _ => return None,
    })
}

/// A GGUF file's metadata and tensor infos.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// The GGUF version (1, 2 or 3).
    pub version: u32,
    pub values: HashMap<String, Value>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
}

impl Metadata {
    /// Reads the metadata of the GGUF file at `path`.
    pub fn read(path: &Path) -> Result<Self, PromptError> {
        let file = std::fs::File::open(path).map_err(|e| read_err(path, e))?;
        let len = file.metadata().map_err(|e| read_err(path, e))?.len();
        Self::parse(BufReader::with_capacity(1 << 20, file), len)
            .map_err(|e| parse_err(path, format!("gguf: {e}")))
    }

    /// Reads metadata from `reader`, which holds `len` bytes in all.
    pub fn parse(reader: impl Read, len: u64) -> Result<Self, String> {
        let mut r = Cursor {
            r: reader,
            pos: 0,
            len,
            wide: true,
            values_left: MAX_VALUES,
        };
        let magic = r.bytes(4)?;
        if magic != b"GGUF" {
            return Err(format!("not a GGUF file (magic {magic:02x?})"));
        }
        let version = r.u32()?;
        if !(1..=3).contains(&version) {
            return Err(format!("unsupported GGUF version {version}"));
        }
        r.wide = version >= 2;
        let tensor_count = r.length()?;
        let kv_count = r.length()?;
        if tensor_count > MAX_TENSORS {
            return Err(format!("{tensor_count} tensors (at most {MAX_TENSORS})"));
        }
        if kv_count > MAX_KEYS {
            return Err(format!("{kv_count} metadata keys (at most {MAX_KEYS})"));
        }
        let mut values = HashMap::new();
        for _ in 0..kv_count {
            let key = r.string()?;
            let kind = r.u32()?;
            let value = r.value(kind, 0)?;
            values.insert(key, value);
        }
        let mut tensors = Vec::new();
        for _ in 0..tensor_count {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims > MAX_DIMS {
                return Err(format!("tensor {name:?} has {n_dims} dimensions"));
            }
            let dims = (0..n_dims)
                .map(|_| r.length())
                .collect::<Result<Vec<_>, _>>()?;
            let ggml_type = r.u32()?;
            let offset = r.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        Ok(Self {
            version,
            values,
            tensors,
        })
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    /// The string under `key`.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// A reader that knows its position and the bytes left.
struct Cursor<R> {
    r: R,
    pos: u64,
    len: u64,
    /// v2/v3: lengths and counts are u64 (v1: u32).
    wide: bool,
    values_left: u64,
}

impl<R: Read> Cursor<R> {
    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), String> {
        let n = buf.len() as u64;
        if n > self.left() {
            return Err(format!(
                "{n} bytes needed at offset {}, only {} left",
                self.pos,
                self.left()
            ));
        }
        self.r
            .read_exact(buf)
            .map_err(|e| format!("offset {}: {e}", self.pos))?;
        self.pos += n;
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>, String> {
        if n > self.left() {
            return Err(format!(
                "{n} bytes needed at offset {}, only {} left",
                self.pos,
                self.left()
            ));
        }
        let mut v = vec![0u8; usize::try_from(n).map_err(|e| e.to_string())?];
        self.fill(&mut v)?;
        Ok(v)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    fn length(&mut self) -> Result<u64, String> {
        if self.wide {
            self.u64()
        } else {
            self.u32().map(u64::from)
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let at = self.pos;
        let n = self.length()?;
        if n > MAX_STRING {
            return Err(format!("string of {n} bytes at offset {at}"));
        }
        let mut v = self.bytes(n)?;
        while v.last() == Some(&0) {
            v.pop();
        }
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    fn value(&mut self, kind: u32, depth: usize) -> Result<Value, String> {
        let at = self.pos;
        Ok(match kind {
            0 => Value::U8(u8::from_le_bytes(self.array()?)),
            1 => Value::I8(i8::from_le_bytes(self.array()?)),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(u32::from_le_bytes(self.array()?)),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("bool {b} at offset {at}")),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("arrays nested deeper than {MAX_DEPTH} at {at}"));
                }
                let inner = self.u32()?;
                let n = self.length()?;
                // Every element takes at least one byte of the file.
                if n > self.left() || n > self.values_left {
                    return Err(format!("array of {n} elements at offset {at}"));
                }
                self.values_left -= n;
                let mut v = Vec::with_capacity(usize::try_from(n).map_err(|e| e.to_string())?);
                for _ in 0..n {
                    v.push(self.value(inner, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(u64::from_le_bytes(self.array()?)),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            k => return Err(format!("unknown value type {k} at offset {at}")),
        })
    }
}

#[cfg(test)]
mod tests;
