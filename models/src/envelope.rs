//! The file format every model file shares: a MessagePack envelope naming the kind of
//! model, its format version and the SHA-256 of the payload it wraps.
//!
//! A damaged file (checksum), another kind of model file (kind), a newer format
//! (version) or an oversized one is refused here with a clear error, before the payload
//! is decoded and before burn sees any of it. What this is not: the payload's contents
//! (each model's `Body`) or their checks, which stay with each model.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ModelError;

/// What a model's files must say about themselves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileKind {
    /// The envelope's `kind`, e.g. `persona-mirror`.
    pub kind: &'static str,
    pub format_version: u32,
    /// Largest file accepted.
    pub max_bytes: usize,
    /// The file as errors name it.
    pub what: &'static str,
}

#[derive(serde::Deserialize, Serialize)]
struct Envelope {
    kind: String,
    format_version: u32,
    #[serde(with = "serde_bytes")]
    sha256: Vec<u8>,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a model file's size, kind, format version and checksum, in that order, then
/// decodes its payload. Returns the body and the payload's SHA-256 (a model's version is
/// derived from it).
pub(crate) fn open<B: DeserializeOwned>(
    bytes: &[u8],
    file: FileKind,
) -> Result<(B, [u8; 32]), ModelError> {
    if bytes.len() > file.max_bytes {
        return Err(ModelError::InputTooLarge {
            what: file.what,
            size: bytes.len(),
            max: file.max_bytes,
        });
    }
    let env: Envelope = rmp_serde::from_slice(bytes).map_err(|e| ModelError::Corrupt {
        reason: format!("envelope: {e}"),
    })?;
    if env.kind != file.kind {
        return Err(ModelError::Foreign {
            found: env.kind,
            expected: file.kind,
        });
    }
    if env.format_version != file.format_version {
        return Err(ModelError::UnsupportedVersion {
            found: env.format_version,
            supported: file.format_version,
        });
    }
    let actual = sha256(&env.payload);
    if env.sha256.as_slice() != actual.as_slice() {
        return Err(ModelError::ChecksumMismatch {
            expected: hex(&env.sha256),
            actual: hex(&actual),
        });
    }
    let body = rmp_serde::from_slice(&env.payload).map_err(|e| ModelError::Corrupt {
        reason: format!("payload: {e}"),
    })?;
    Ok((body, actual))
}

/// Encodes `body` as the payload of a model file of this kind (training writes model
/// files; an inference-only build, the agent's, has no use for it).
#[cfg(any(feature = "train", test))]
pub(crate) fn seal<B: Serialize>(body: &B, file: FileKind) -> Result<Vec<u8>, ModelError> {
    let payload = rmp_serde::to_vec_named(body).map_err(|e| ModelError::Encode {
        reason: format!("payload: {e}"),
    })?;
    let env = Envelope {
        kind: file.kind.to_string(),
        format_version: file.format_version,
        sha256: sha256(&payload).to_vec(),
        payload,
    };
    rmp_serde::to_vec_named(&env).map_err(|e| ModelError::Encode {
        reason: format!("envelope: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: FileKind = FileKind {
        kind: "persona-test",
        format_version: 1,
        max_bytes: 1024,
        what: "test model file",
    };

    #[test]
    fn a_sealed_body_opens_and_each_check_refuses_its_case() {
        let bytes = seal(&vec![1u32, 2, 3], TEST).unwrap();
        let (body, sum): (Vec<u32>, _) = open(&bytes, TEST).unwrap();
        assert_eq!(body, [1, 2, 3]);
        assert_eq!(hex(&sum).len(), 64);

        let other = FileKind {
            kind: "persona-other",
            ..TEST
        };
        assert!(matches!(
            open::<Vec<u32>>(&bytes, other),
            Err(ModelError::Foreign { .. })
        ));
        let newer = FileKind {
            format_version: 2,
            ..TEST
        };
        assert!(matches!(
            open::<Vec<u32>>(&bytes, newer),
            Err(ModelError::UnsupportedVersion { .. })
        ));
        let small = FileKind {
            max_bytes: 4,
            ..TEST
        };
        assert!(matches!(
            open::<Vec<u32>>(&bytes, small),
            Err(ModelError::InputTooLarge { .. })
        ));
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(matches!(
            open::<Vec<u32>>(&damaged, TEST),
            Err(ModelError::ChecksumMismatch { .. })
        ));
        assert!(matches!(
            open::<Vec<u32>>(b"\xc1", TEST),
            Err(ModelError::Corrupt { .. })
        ));
    }
}
