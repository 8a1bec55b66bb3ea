//! The one error type of this crate. Each variant says what was being done and why it failed,
//! so a caller can print it as is (`personactl` does).

use thiserror::Error;

/// Errors from loading, running or training a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The bytes are not a MessagePack model envelope at all (truncated, random, another format).
    #[error("model file is corrupt or not a Persona model file: {reason}")]
    Corrupt {
        /// What failed to decode.
        reason: String,
    },
    /// A Persona model envelope, but for another model kind.
    #[error("model file is a {found:?} model, expected {expected:?}")]
    Foreign {
        /// The kind the file says it holds.
        found: String,
        /// The kind that was asked for.
        expected: &'static str,
    },
    /// Written by a newer or older, incompatible version of this crate.
    #[error(
        "model file format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// Version in the file.
        found: u32,
        /// Version this build reads.
        supported: u32,
    },
    /// The payload does not match its checksum: the file was damaged or edited.
    #[error("model file checksum mismatch: header says {expected}, payload hashes to {actual}")]
    ChecksumMismatch {
        /// Hex SHA-256 stored in the file.
        expected: String,
        /// Hex SHA-256 of the payload as read.
        actual: String,
    },
    /// The envelope decodes but its contents are unusable (bad settings, no slugs, ...).
    #[error("model file is invalid: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
    /// burn refused the weights (shape mismatch, bad burnpack data).
    #[error("model weights could not be loaded: {source}")]
    Weights {
        /// burn's error.
        #[source]
        source: burn::store::RecordError,
    },
    /// The model file could not be written.
    #[error("model could not be encoded: {reason}")]
    Encode {
        /// What failed.
        reason: String,
    },
    /// The input has nothing to go on.
    #[error("nothing to profile: the description is empty and no software is listed")]
    EmptyInput,
    /// The input is larger than the profiler looks at.
    #[error("{what} is too large: {size} (at most {max})")]
    InputTooLarge {
        /// Which part of the input.
        what: &'static str,
        /// Its size (bytes or entries).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Reading the model's output failed (a burn backend error).
    #[error("inference failed: {reason}")]
    Inference {
        /// burn's message.
        reason: String,
    },
    /// A training corpus line could not be parsed.
    #[error("corpus {source_name} line {line}: {reason}")]
    CorpusLine {
        /// File or source name.
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Training was asked to do something impossible (no examples, unknown slug, ...).
    #[error("cannot train: {reason}")]
    Training {
        /// Why.
        reason: String,
    },
}
