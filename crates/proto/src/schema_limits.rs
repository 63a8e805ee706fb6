//! The JSON-schema limits of a node's constraint compiler, shared: the
//! coordinator refuses a request over them with a 400 before any node is
//! dialled (`Tools::validate` and `ResponseFormat::validate` apply them,
//! which both sides run), so a node's refusal for them never happens and
//! any other refusal is the node's own; the engine applies the same
//! numbers before compiling.

use serde_json::Value;

use crate::ProtoError;

/// Largest grammar compiled: bytes of a JSON schema (serialized compactly)
/// or of a Lark grammar's source. OpenAI's structured outputs cap a schema
/// at 5,000 properties and 120,000 characters of names and values, which
/// fits with room; compile work grows with the grammar, and a job frame
/// (1 MiB) would otherwise let four times as much through.
pub const MAX_GRAMMAR_BYTES: usize = 256 * 1024;

/// Most properties one object of a schema may declare. llguidance's
/// compile time grows with the square of an object's optional properties:
/// unoptimized, 1,000 took 1 s, 4,000 took 17 s and 8,000 (a 76 KB schema)
/// 56 s; required ones cost a tenth of that.
pub const MAX_OBJECT_PROPERTIES: usize = 1000;

/// Most properties a job's schemas may declare in all: OpenAI's own cap
/// for structured outputs.
pub const MAX_SCHEMA_PROPERTIES: usize = 5000;

fn invalid(field: &'static str, reason: String) -> ProtoError {
    ProtoError::Invalid { field, reason }
}

/// Counts bytes written, failing past a limit.
struct Counter {
    written: usize,
    limit: usize,
}

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.written = self.written.saturating_add(buf.len());
        if self.written > self.limit {
            return Err(std::io::Error::other("over the limit"));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether `schemas`, serialized compactly, take at most `limit` bytes in
/// all (cheap: serialization stops at the limit).
pub fn schemas_fit<'a>(schemas: impl IntoIterator<Item = &'a Value>, limit: usize) -> bool {
    let mut counter = Counter { written: 0, limit };
    schemas
        .into_iter()
        .all(|s| serde_json::to_writer(&mut counter, s).is_ok())
}

/// Refuses schemas declaring more than [`MAX_OBJECT_PROPERTIES`] in one
/// object or [`MAX_SCHEMA_PROPERTIES`] in all (every `properties` map
/// anywhere in them counts). `field` names them in the error. Walks
/// without recursion.
pub fn check_schema_properties<'a>(
    schemas: impl IntoIterator<Item = &'a Value>,
    field: &'static str,
) -> Result<(), ProtoError> {
    let mut total = 0usize;
    let mut todo: Vec<&Value> = schemas.into_iter().collect();
    while let Some(v) = todo.pop() {
        match v {
            Value::Object(map) => {
                if let Some(Value::Object(props)) = map.get("properties") {
                    if props.len() > MAX_OBJECT_PROPERTIES {
                        return Err(invalid(
                            field,
                            format!(
                                "an object of the schema has {} properties; at most {MAX_OBJECT_PROPERTIES} are compiled",
                                props.len()
                            ),
                        ));
                    }
                    total += props.len();
                    if total > MAX_SCHEMA_PROPERTIES {
                        return Err(invalid(
                            field,
                            format!(
                                "the schema has over {MAX_SCHEMA_PROPERTIES} properties in all"
                            ),
                        ));
                    }
                }
                todo.extend(map.values());
            }
            Value::Array(items) => todo.extend(items),
            _ => {}
        }
    }
    Ok(())
}

/// The limits of a node's constraint compiler on schemas: at most `limit`
/// bytes in all, then the property counts.
pub fn check_schemas<'a>(
    schemas: impl IntoIterator<Item = &'a Value> + Clone,
    limit: usize,
    field: &'static str,
) -> Result<(), ProtoError> {
    if !schemas_fit(schemas.clone(), limit) {
        return Err(invalid(
            field,
            format!("the schema is over {limit} bytes (compact JSON)"),
        ));
    }
    check_schema_properties(schemas, field)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn schema_limits_count_bytes_and_properties() {
        let object = |n: usize| {
            let props: serde_json::Map<String, Value> =
                (0..n).map(|i| (format!("{i:x}"), json!({}))).collect();
            json!({"type": "object", "properties": props})
        };
        assert!(check_schemas([&object(10)], MAX_GRAMMAR_BYTES, "response_format").is_ok());
        assert!(check_schemas([&object(1001)], MAX_GRAMMAR_BYTES, "response_format").is_err());
        let six: Vec<Value> = (0..6).map(|_| object(1000)).collect();
        assert!(check_schemas(&six, MAX_GRAMMAR_BYTES, "tools").is_err());
        let big = json!({"enum": ["a".repeat(MAX_GRAMMAR_BYTES)]});
        assert!(check_schemas([&big], MAX_GRAMMAR_BYTES, "response_format").is_err());
    }
}
