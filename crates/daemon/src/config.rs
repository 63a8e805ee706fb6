//! Config files with every setting overridable from the environment, one
//! rule for both daemons (layered with figment): `{PREFIX}{KEY}` sets a
//! top-level key and `__` goes one table down, e.g. for the node
//! (`SHARENET_NODE_`) `SHARENET_NODE_ADVERT_TTL_SECS=60`, and for the
//! coordinator (`SHARENET_COORDINATOR_`)
//! `SHARENET_COORDINATOR_TIMEOUTS__IDLE_MS=60000`. Values are read as TOML
//! values (`[...]` arrays, `{...}` tables, numbers, booleans), else as
//! strings. The environment wins over the file.

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;

/// Why a config could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {reason}")]
    Read { path: String, reason: String },
    /// figment names the key and where its value came from (the file or
    /// the environment variable).
    #[error("{0}")]
    Invalid(String),
}

fn figment(path: &Path, prefix: &str) -> Result<Figment, ConfigError> {
    // figment skips a missing file silently; a missing config is an error.
    if let Err(e) = std::fs::metadata(path) {
        return Err(ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        });
    }
    Ok(Figment::new()
        .merge(Toml::file_exact(path))
        .merge(Env::prefixed(prefix).split("__")))
}

/// The file at `path` with the environment's `{prefix}…` overrides.
pub fn layered<T: DeserializeOwned>(path: &Path, prefix: &str) -> Result<T, ConfigError> {
    figment(path, prefix)?
        .extract()
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// The effective settings as TOML, the values of `secrets` (top-level
/// keys) replaced by `<redacted>`.
pub fn effective(path: &Path, prefix: &str, secrets: &[&str]) -> Result<String, ConfigError> {
    let mut v: toml::Table = figment(path, prefix)?
        .extract()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?;
    for key in secrets {
        if let Some(value) = v.get_mut(*key) {
            *value = match value {
                toml::Value::Array(a) => {
                    toml::Value::Array(a.iter().map(|_| "<redacted>".into()).collect())
                }
                _ => "<redacted>".into(),
            };
        }
    }
    toml::to_string_pretty(&v).map_err(|e| ConfigError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::result_large_err)]

    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        port: u16,
        name: String,
        secret: Option<String>,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        ms: u64,
    }

    #[test]
    fn the_environment_overrides_the_file_and_unknown_keys_are_named() {
        let dir = std::env::temp_dir().join(format!("sharenet-daemon-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "port = 1\nname = \"a\"\nsecret = \"s3\"\n[inner]\nms = 5\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("SHARENET_TEST_PORT", "8080");
            jail.set_env("SHARENET_TEST_INNER__MS", "7");
            let f: File = layered(&path, "SHARENET_TEST_").unwrap();
            assert_eq!((f.port, f.name.as_str(), f.inner.ms), (8080, "a", 7));
            assert_eq!(f.secret.as_deref(), Some("s3"));
            let shown = effective(&path, "SHARENET_TEST_", &["secret"]).unwrap();
            assert!(
                shown.contains("port = 8080") && !shown.contains("s3"),
                "{shown}"
            );
            jail.set_env("SHARENET_TEST_PROT", "1");
            let err = layered::<File>(&path, "SHARENET_TEST_")
                .unwrap_err()
                .to_string();
            assert!(err.contains("prot"), "{err}");
            Ok(())
        });
        assert!(layered::<File>(&dir.join("missing.toml"), "X_").is_err());
    }
}
