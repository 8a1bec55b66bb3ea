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
        meaning: "pip installs only into this venv (its bin/pip). Unset: pip off. The venv directory and its bin/pip must be owned by root and not writable by group or others (the helper refuses otherwise and names the file and its mode); pip runs with --only-binary :all: (no build scripts) and never as root (see packages.pip_user).",
    },
    KeyDoc {
        key: "packages.pip_user",
        ty: "string",
        default: None,
        allowed: "a user name from /etc/passwd or a numeric uid, not root",
        meaning: "The unprivileged user pip runs as when the installer (persona-actuator, or a root agent) is root; it needs write access to the venv's site-packages and bin/ but not to bin/pip. Unset: pip is refused when the installer is root.",
    },
    KeyDoc {
        key: "packages.apt_allow",
        ty: "array of strings",
        default: None,
        allowed: "package names, or prefixes ending in * (\"python3-*\")",
        meaning: "The only Debian packages apt may install (persona-actuator enforces it too). Unset: any name that passes the apt grammar and exists exactly in apt's cache.",
    },
    KeyDoc {
        key: "packages.dnf_allow",
        ty: "array of strings",
        default: None,
        allowed: "package names, or prefixes ending in *",
        meaning: "The only RPM packages dnf may install. Unset: any name that passes the RPM grammar.",
    },
    KeyDoc {
        key: "packages.pip_allow",
        ty: "array of strings",
        default: None,
        allowed: "Python distribution names, or prefixes ending in *",
        meaning: "The only Python packages pip may install, compared in PEP 503 normal form (Foo_Bar = foo-bar). Unset: any name that passes the PEP 508 grammar.",
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
        key: "images.require_digest",
        ty: "boolean",
        default: Some("false"),
        allowed: "true or false",
        meaning: "Pull only images pinned by digest (`name@sha256:<64 hex>`); a tag alone is refused. Off by default: a tag can move, so turn it on where images must be reproducible.",
    },
    KeyDoc {
        key: "files.url_prefixes",
        ty: "array of strings",
        default: Some("[]"),
        allowed: "http(s)://HOST/ followed by a path prefix",
        meaning: "Where files and data sets may be downloaded from. URLs and prefixes are parsed and compared by origin (scheme, host, port) and whole path segments; dot segments (`..`, `%2e%2e`) and encoded separators (`%2f`, `%5c`) are refused. Redirects are not followed.",
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
    KeyDoc {
        key: "files.require_https",
        ty: "boolean",
        default: Some("false"),
        allowed: "true or false",
        meaning: "Refuse plain http:// prefixes when the policy is read and fetch only https:// URLs. Off by default because every file is checked against the SHA-256 and size in the signed plan; turn it on where the content itself must not be seen on the network.",
    },
];
