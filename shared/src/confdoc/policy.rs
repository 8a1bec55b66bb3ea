//! The documentation of every key of the agent's policy file (`/etc/persona/policy.toml`),
//! the source of that section of docs/configuration.md. The agent's `policy` module
//! parses the file and its tests check this table against the parser.

use super::key::KeyDoc;

/// Every key of the policy file, in the order docs/configuration.md lists them.
pub const POLICY_KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "actions.resize",
        ty: "boolean",
        default: Some("false"),
        allowed: "true or false",
        meaning: "Carry out resize commands with the guest actuator (`[guest_actuator]` in agent.toml).",
    },
    KeyDoc {
        key: "actions.config_update",
        ty: "boolean",
        default: Some("false"),
        allowed: "true or false",
        meaning: "Accept live changes of sample_interval_ms and batch_interval_s (same ranges as agent.toml; a later Welcome may set them again).",
    },
    KeyDoc {
        key: "actions.model_update",
        ty: "boolean",
        default: Some("false"),
        allowed: "true or false",
        meaning: "Accept signed announcements of a model version and checksum that the coordinator then pushes.",
    },
    KeyDoc {
        key: "packages.apt",
        ty: "boolean",
        default: Some("false"),
        allowed: "true or false",
        meaning: "Pre-load Debian packages with `apt-get install` (through persona-actuator when the agent is not root; the helper re-reads this file).",
    },
    KeyDoc {
        key: "packages.dnf",
        ty: "boolean",
        default: Some("false"),
        allowed: "true or false",
        meaning: "Pre-load RPM packages with `dnf install`.",
    },
    KeyDoc {
        key: "packages.pip_venv",
        ty: "path",
        default: None,
        allowed: "an absolute path of an existing virtual environment",
        meaning: "pip installs only into this venv (its bin/pip). Unset: pip off.",
    },
    KeyDoc {
        key: "images.engines",
        ty: "array of strings",
        default: Some("[]"),
        allowed: "\"docker\", \"podman\"",
        meaning: "Container engines allowed, in order of preference; the first installed one pulls.",
    },
    KeyDoc {
        key: "images.registries",
        ty: "array of strings",
        default: Some("[]"),
        allowed: "reference prefixes, e.g. \"docker.io/library/\"",
        meaning: "Images allowed, matched on the fully qualified reference (`redis` is `docker.io/library/redis`).",
    },
    KeyDoc {
        key: "files.url_prefixes",
        ty: "array of strings",
        default: Some("[]"),
        allowed: "http(s)://HOST/ followed by a path prefix",
        meaning: "Where files and data sets may be downloaded from. Redirects are not followed.",
    },
    KeyDoc {
        key: "files.destinations",
        ty: "array of paths",
        default: Some("[]"),
        allowed: "absolute directories without ..",
        meaning: "Directories files may be written into or below (checked after resolving symlinks).",
    },
    KeyDoc {
        key: "files.max_bytes",
        ty: "integer",
        default: Some("0"),
        allowed: "0 or more (0 = downloads off)",
        meaning: "Largest single download.",
    },
];
