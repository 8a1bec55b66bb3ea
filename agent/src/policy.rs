//! The agent's local policy: what coordinator commands this VM lets the agent carry out.
//! It is a TOML file owned by the VM's administrator (`policy_file` in the agent config,
//! `/etc/persona/policy.toml` by default), and it denies by default: a missing file, an
//! empty file, or a key left out all mean "no". Unknown keys are errors, so a typo never
//! silently opens or closes anything.
//!
//! A signed command from the coordinator is necessary but not sufficient: the policy is
//! the VM owner's word on which actuators and package managers are on, which URL
//! prefixes, registries and destination directories are allowed, and how large a
//! download may be. This module only reads and answers questions; the checks of names
//! against their grammar are in `persona_shared::preload::validate`, and execution in
//! `preload`. The documentation of its keys is `persona_shared::confdoc::POLICY_KEYS`.

use std::path::{Path, PathBuf};

use persona_shared::preload::validate;
use serde::Deserialize;

/// Why a policy file could not be used (the agent then refuses every command).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid policy file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid policy file {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// `[actions]`: which non-preload actions are on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Actions {
    /// Resize in the guest through the `guest` actuator.
    pub resize: bool,
    /// Live changes of the sampling settings.
    pub config_update: bool,
    /// Accept pushed models announced by a signed command.
    pub model_update: bool,
}

/// `[packages]`: system and Python package managers.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Packages {
    pub apt: bool,
    pub dnf: bool,
    /// pip installs only into this virtual environment (its `bin/pip`); unset = pip off.
    pub pip_venv: Option<PathBuf>,
    /// The unprivileged user pip runs as when the installer is root (a name from
    /// /etc/passwd or a uid); unset = pip is refused as root.
    pub pip_user: Option<String>,
    /// Package names apt may install (exact, or a prefix ending in `*`); unset = any
    /// name that passes the grammar.
    pub apt_allow: Option<Vec<String>>,
    /// The same for dnf.
    pub dnf_allow: Option<Vec<String>>,
    /// The same for pip (compared in PEP 503 normal form: `Foo_Bar` is `foo-bar`).
    pub pip_allow: Option<Vec<String>>,
}

/// PEP 503 normal form of a Python name: lower case, runs of `-_.` as one `-`.
fn pep503(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.chars() {
        if "-_.".contains(c) {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

impl Packages {
    /// Whether the allow-list of `manager` (`apt`, `dnf`, `pip`) lets `name` through;
    /// `Err` says which key refused it.
    pub fn allowed(&self, manager: &str, name: &str) -> Result<(), String> {
        let (list, key) = match manager {
            "apt" => (&self.apt_allow, "packages.apt_allow"),
            "dnf" => (&self.dnf_allow, "packages.dnf_allow"),
            _ => (&self.pip_allow, "packages.pip_allow"),
        };
        let Some(list) = list else { return Ok(()) };
        let norm = |s: &str| {
            if manager == "pip" {
                pep503(s)
            } else {
                s.to_owned()
            }
        };
        let n = norm(name);
        let hit = list.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => n.starts_with(&norm(prefix)),
            None => norm(a) == n,
        });
        if hit {
            Ok(())
        } else {
            Err(format!(
                "{manager} package {name:?} is not in the policy's {key}"
            ))
        }
    }
}

/// `[images]`: container images.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Images {
    /// Engines allowed, in order of preference: "docker", "podman".
    pub engines: Vec<String>,
    /// Reference prefixes allowed, e.g. "docker.io/library/" (an image is checked in its
    /// fully qualified form).
    pub registries: Vec<String>,
    /// Only images pinned by digest (`...@sha256:HEX`) are pulled.
    pub require_digest: bool,
}

/// `[files]`: downloads.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Files {
    /// URL prefixes allowed, e.g. "https://data.example.com/datasets/".
    pub url_prefixes: Vec<String>,
    /// Directories a file may be written into (or below).
    pub destinations: Vec<PathBuf>,
    /// Largest single download, in bytes (0 = downloads off).
    pub max_bytes: u64,
    /// Only `https://` prefixes may be listed and only https URLs are fetched.
    pub require_https: bool,
}

/// The whole policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub actions: Actions,
    pub packages: Packages,
    pub images: Images,
    pub files: Files,
}

/// Engines the agent knows how to drive.
pub const ENGINES: [&str; 2] = ["docker", "podman"];

impl Policy {
    /// Denies everything.
    pub fn deny_all() -> Policy {
        Policy::default()
    }

    /// Reads a policy file; a missing file is the deny-all policy (logged by the caller).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Policy::deny_all()),
            Err(source) => Err(PolicyError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses and checks policy text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Policy, PolicyError> {
        let p: Policy = toml::from_str(text).map_err(|source| PolicyError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |key, message: String| PolicyError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        for e in &p.images.engines {
            if !ENGINES.contains(&e.as_str()) {
                return Err(invalid(
                    "images.engines",
                    format!("{e:?} is not one of docker, podman"),
                ));
            }
        }
        for r in &p.images.registries {
            if r.is_empty() || r.contains(char::is_whitespace) {
                return Err(invalid(
                    "images.registries",
                    format!("{r:?} is not a registry prefix such as \"docker.io/library/\""),
                ));
            }
        }
        for u in &p.files.url_prefixes {
            // Parsed like the URLs it is compared with: a prefix includes the host and
            // a path (so "https://example.com" never also allows "example.com.evil.net").
            let parsed = validate::http_url(u).map_err(|e| {
                invalid(
                    "files.url_prefixes",
                    format!("{u:?} is not an http(s) URL prefix: {e}"),
                )
            })?;
            let has_path = ["https://", "http://"].iter().any(|s| {
                u.get(..s.len()).is_some_and(|h| h.eq_ignore_ascii_case(s))
                    && u[s.len()..].contains('/')
            });
            if !has_path || parsed.query.is_some() {
                return Err(invalid(
                    "files.url_prefixes",
                    format!(
                        "{u:?} must be http(s)://HOST/ and a path prefix (the host ends with a slash, no query)"
                    ),
                ));
            }
            if p.files.require_https && !parsed.https {
                return Err(invalid(
                    "files.url_prefixes",
                    format!("{u:?} is plain http, and files.require_https is on"),
                ));
            }
        }
        for (key, list) in [
            ("packages.apt_allow", &p.packages.apt_allow),
            ("packages.dnf_allow", &p.packages.dnf_allow),
            ("packages.pip_allow", &p.packages.pip_allow),
        ] {
            for n in list.iter().flatten() {
                let bare = n.strip_suffix('*').unwrap_or(n);
                if bare.is_empty()
                    || !bare
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-._".contains(c))
                {
                    return Err(invalid(
                        key,
                        format!("{n:?} is not a package name (or a prefix ending in *)"),
                    ));
                }
            }
        }
        if let Some(u) = &p.packages.pip_user
            && (u.is_empty() || u == "root" || u == "0" || u.contains([':', '/', '\n']))
        {
            return Err(invalid(
                "packages.pip_user",
                format!("{u:?} must be an unprivileged user name or uid (not root)"),
            ));
        }
        for d in &p.files.destinations {
            if !d.is_absolute() || d.components().any(|c| c.as_os_str() == "..") {
                return Err(invalid(
                    "files.destinations",
                    format!("{} must be an absolute path without ..", d.display()),
                ));
            }
        }
        if let Some(v) = &p.packages.pip_venv
            && !v.is_absolute()
        {
            return Err(invalid(
                "packages.pip_venv",
                format!("{} must be an absolute path", v.display()),
            ));
        }
        Ok(p)
    }

    /// Whether `url`, parsed and normalised ([`validate::http_url`]: no dot segments or
    /// encoded separators), is at or below an allowed prefix by origin and whole path
    /// segments, and is https when `files.require_https` is on.
    pub fn url_allowed(&self, url: &str) -> bool {
        let Ok(u) = validate::http_url(url) else {
            return false;
        };
        if self.files.require_https && !u.https {
            return false;
        }
        self.files
            .url_prefixes
            .iter()
            .filter_map(|p| validate::http_url(p).ok())
            .any(|p| u.is_under(&p))
    }

    /// Whether a fully qualified image reference is under an allowed registry prefix.
    pub fn image_allowed(&self, qualified: &str) -> bool {
        self.images
            .registries
            .iter()
            .any(|p| qualified.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use persona_shared::confdoc::{POLICY_KEYS, toml_setting};

    fn p() -> &'static Path {
        Path::new("/etc/persona/policy.toml")
    }

    #[test]
    fn empty_and_missing_deny_everything() {
        let e = Policy::parse("", p()).unwrap();
        assert_eq!(e, Policy::deny_all());
        assert!(!e.actions.resize && !e.packages.apt && e.packages.pip_venv.is_none());
        assert!(!e.url_allowed("https://x/y"));
        let m = Policy::load(Path::new("/nonexistent/policy.toml")).unwrap();
        assert_eq!(m, Policy::deny_all());
    }

    #[test]
    fn the_shipped_policy_denies_everything() {
        let text = include_str!("../../packaging/policy.toml");
        assert_eq!(
            Policy::parse(text, Path::new("packaging/policy.toml")).unwrap(),
            Policy::deny_all()
        );
    }

    /// Every documented default is the real one, and the shipped file mentions every key.
    #[test]
    fn documented_keys_and_defaults() {
        let shipped = include_str!("../../packaging/policy.toml");
        for k in POLICY_KEYS {
            let leaf = k.key.rsplit('.').next().unwrap_or(k.key);
            assert!(
                shipped.contains(leaf),
                "packaging/policy.toml lacks {}",
                k.key
            );
            let Some(d) = k.default else { continue };
            let text = toml_setting(k.key, d);
            assert_eq!(
                Policy::parse(&text, p()).unwrap(),
                Policy::deny_all(),
                "{}",
                k.key
            );
        }
    }

    #[test]
    fn a_full_policy_parses() {
        let text = r#"
            [actions]
            resize = true
            [packages]
            apt = true
            pip_venv = "/opt/venv"
            [images]
            engines = ["podman"]
            registries = ["docker.io/library/"]
            [files]
            url_prefixes = ["https://data.example.com/sets/"]
            destinations = ["/srv/data"]
            max_bytes = 1000
        "#;
        let pol = Policy::parse(text, p()).unwrap();
        assert!(pol.actions.resize && pol.packages.apt && !pol.packages.dnf);
        assert!(pol.url_allowed("https://data.example.com/sets/a.bin"));
        assert!(!pol.url_allowed("https://data.example.com.evil.net/sets/a.bin"));
        assert!(pol.image_allowed("docker.io/library/redis:7"));
        assert!(!pol.image_allowed("quay.io/x/y"));
    }

    /// Issue 18 item 6: a raw prefix match let `..` and `%2e%2e` out of the prefix.
    #[test]
    fn dot_segments_do_not_escape_url_prefixes() {
        let pol =
            Policy::parse("[files]\nurl_prefixes = [\"http://host/datasets/\"]\n", p()).unwrap();
        assert!(pol.url_allowed("http://host/datasets/a.bin"));
        assert!(pol.url_allowed("http://HOST:80/datasets/sub/a.bin"));
        for bad in [
            "http://host/datasets/../private/secret.bin",
            "http://host/datasets/%2e%2e/private/secret.bin",
            "http://host/datasets/%2E%2E/private/secret.bin",
            "http://host/datasets/..%2fprivate/secret.bin",
            "http://host/datasets/..%5cprivate/secret.bin",
            "http://host/datasets/./../private/secret.bin",
            "http://host/datasetsfoo/a.bin",
        ] {
            assert!(!pol.url_allowed(bad), "{bad}");
        }
        // A prefix with a dot segment is refused when the policy is read.
        let e = Policy::parse("[files]\nurl_prefixes = [\"http://host/a/../\"]", p())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("files.url_prefixes") && e.contains("dot segment"),
            "{e}"
        );
    }

    /// Issue 18 item 16: https and digests can be required.
    #[test]
    fn https_and_digests_can_be_required() {
        let e = Policy::parse(
            "[files]\nrequire_https = true\nurl_prefixes = [\"http://host/d/\"]",
            p(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("require_https"), "{e}");
        let pol = Policy::parse(
            "[files]\nrequire_https = true\nurl_prefixes = [\"https://host/d/\"]\n[images]\nrequire_digest = true",
            p(),
        )
        .unwrap();
        assert!(pol.url_allowed("https://host/d/x"));
        assert!(!pol.url_allowed("http://host/d/x"));
        assert!(pol.images.require_digest);
        // Defaults: neither is required (documented in docs/configuration.md).
        let d = Policy::deny_all();
        assert!(!d.files.require_https && !d.images.require_digest);
    }

    #[test]
    fn package_allow_lists() {
        let pol = Policy::parse(
            "[packages]\napt = true\napt_allow = [\"curl\", \"python3-*\"]\npip_allow = [\"Scikit_Learn\"]",
            p(),
        )
        .unwrap();
        assert!(pol.packages.allowed("apt", "curl").is_ok());
        assert!(pol.packages.allowed("apt", "python3-torch").is_ok());
        let e = pol.packages.allowed("apt", "nmap").unwrap_err();
        assert!(e.contains("packages.apt_allow"), "{e}");
        assert!(pol.packages.allowed("pip", "scikit-learn").is_ok());
        assert!(pol.packages.allowed("pip", "torch").is_err());
        // No list: any name that passes the grammar.
        assert!(pol.packages.allowed("dnf", "anything").is_ok());
        for bad in [
            "[packages]\npip_user = \"root\"",
            "[packages]\napt_allow = [\"a b\"]",
        ] {
            assert!(Policy::parse(bad, p()).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        for (text, needle) in [
            ("[actions]\nresise = true", "resise"),
            ("[images]\nengines = [\"lxc\"]", "images.engines"),
            (
                "[files]\nurl_prefixes = [\"https://example.com\"]",
                "files.url_prefixes",
            ),
            (
                "[files]\nurl_prefixes = [\"file:///\"]",
                "files.url_prefixes",
            ),
            ("[files]\ndestinations = [\"data\"]", "files.destinations"),
            (
                "[files]\ndestinations = [\"/srv/../etc\"]",
                "files.destinations",
            ),
            ("[packages]\npip_venv = \"venv\"", "packages.pip_venv"),
        ] {
            let e = Policy::parse(text, p()).unwrap_err().to_string();
            assert!(
                e.contains(needle) && e.contains("policy.toml"),
                "{text}: {e}"
            );
        }
    }
}
