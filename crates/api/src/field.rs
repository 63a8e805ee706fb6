//! Request fields that are checked on their own: [`Checked`] lets a body
//! parse even when one such field is wrong, so the refusal is a
//! [`FieldError`] naming the exact field (`tools[2].function.name`)
//! rather than serde's message about the whole body. The types that read
//! themselves this way implement [`FromField`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Why a request field was refused, and which field: `param` is its path
/// from the request's root (OpenAI's `error.param`), or from the value
/// being read where a caller adds the rest ([`FieldError::within`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub message: String,
    pub param: String,
}

impl FieldError {
    pub fn new(message: impl Into<String>, param: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            param: param.into(),
        }
    }

    /// The same error with `outer` in front of its path: `tools[0]` and
    /// `type` make `tools[0].type`.
    pub fn within(mut self, outer: &str) -> Self {
        self.param = if self.param.is_empty() {
            outer.to_owned()
        } else {
            format!("{outer}.{}", self.param)
        };
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FieldError {}

/// A type read from a request field's raw JSON, every mistake a
/// [`FieldError`] naming the field.
pub trait FromField: Sized {
    fn from_field(v: &Value) -> Result<Self, FieldError>;
}

/// A request field read with [`FromField`]: valid, or the refusal to
/// report when the field is used (with the raw value, so the request
/// still serializes as it came). JSON `null` is an absent field, as with
/// any `Option<Checked<T>>`.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked<T> {
    Valid(T),
    Invalid { raw: Value, error: FieldError },
}

impl<T> Checked<T> {
    /// The value, or why the field was refused.
    pub fn get(&self) -> Result<&T, FieldError> {
        match self {
            Self::Valid(v) => Ok(v),
            Self::Invalid { error, .. } => Err(error.clone()),
        }
    }

    pub fn into_result(self) -> Result<T, FieldError> {
        match self {
            Self::Valid(v) => Ok(v),
            Self::Invalid { error, .. } => Err(error),
        }
    }
}

impl<T: FromField> Checked<T> {
    /// Reads `v` (a field of a request built in code, or a test's).
    pub fn from_value(v: Value) -> Self {
        match T::from_field(&v) {
            Ok(t) => Self::Valid(t),
            Err(error) => Self::Invalid { raw: v, error },
        }
    }
}

impl<T> From<T> for Checked<T> {
    fn from(v: T) -> Self {
        Self::Valid(v)
    }
}

impl<'de, T: FromField> Deserialize<'de> for Checked<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(Self::from_value)
    }
}

impl<T: Serialize> Serialize for Checked<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Valid(v) => v.serialize(s),
            Self::Invalid { raw, .. } => raw.serialize(s),
        }
    }
}
