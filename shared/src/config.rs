//! Reading a TOML configuration file into a strict struct: the part every Persona config
//! file has in common.
//!
//! The struct decides the keys (`#[serde(deny_unknown_fields)]`, so a typo is an error,
//! not a silently ignored line on a fleet of VMs) and its defaults; this module reads the
//! file and turns each failure into an error naming the file (and, through toml's
//! message, the key and line). What this is not: range checks and relations between
//! keys, which each config module does after parsing and reports in its own error.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a config file could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// toml's message names the key, the line and the offending text.
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

impl LoadError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            LoadError::Read { path, .. } | LoadError::Parse { path, .. } => path,
        }
    }
}

/// Reads `path` and parses it as `T`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses `text` as `T`; `path` is only used in errors.
pub fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, LoadError> {
    toml::from_str(text).map_err(|source| LoadError::Parse {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        interval_ms: u64,
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let p = Path::new("/etc/persona/x.toml");
        assert_eq!(
            parse::<Sample>("interval_ms = 5", p).unwrap(),
            Sample { interval_ms: 5 }
        );
        let e = parse::<Sample>("interval_mss = 5", p).unwrap_err();
        assert!(matches!(e, LoadError::Parse { .. }));
        let text = e.to_string();
        assert!(
            text.contains("interval_mss") && text.contains("x.toml"),
            "{text}"
        );
        let e = load::<Sample>(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert!(matches!(e, LoadError::Read { .. }));
        assert_eq!(e.path(), Path::new("/nonexistent/x.toml"));
        assert!(e.to_string().contains("/nonexistent/x.toml"));
    }
}
