//! Grammar checks for everything a pre-load step names before it reaches a program's
//! argument list or the file system: Debian and RPM package names and versions, PEP 508
//! Python names and PEP 440-style versions, OCI image references, http(s) URLs and
//! destination paths inside the policy's directories.
//!
//! Nothing the agent runs goes through a shell, so a `;` is harmless there; these checks
//! exist so that a name can never be read as an option (`--option-injection`), escape a
//! directory (`../../etc/passwd`), or reach a scheme the agent does not fetch
//! (`file:///`). Each refusal says what was refused and which grammar it broke. This
//! module decides nothing about policy beyond paths; `policy` answers the rest.

use std::path::{Component, Path, PathBuf};

/// A refused name, with the grammar it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidateError {
    #[error("{what} {value:?} is not valid: {rule}")]
    Grammar {
        what: &'static str,
        value: String,
        rule: &'static str,
    },
    #[error("URL {url:?} is refused: {reason}")]
    Url { url: String, reason: String },
    #[error("destination {path:?} is refused: {reason}")]
    Path { path: String, reason: String },
}

fn grammar(what: &'static str, value: &str, rule: &'static str) -> ValidateError {
    ValidateError::Grammar {
        what,
        value: value.chars().take(200).collect(),
        rule,
    }
}

/// Debian policy 5.6.1: lower-case letters, digits, `+ - .`, at least two characters,
/// starting with a letter or digit.
pub fn debian_package(name: &str) -> Result<(), ValidateError> {
    const RULE: &str = "a Debian package name is 2-100 characters of a-z 0-9 + - ., starting with a letter or digit";
    let ok = (2..=100).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(grammar("Debian package name", name, RULE))
    }
}

/// A Debian package name as apt-get is given it: [`debian_package`], plus the rules
/// that keep apt from reading the argument as anything but that one name.
///
/// apt-get strips a trailing `-` (remove) or `+` (install) from a name that is not a
/// package, and it reads a name it cannot find as a task (`^`), a glob (`* ? [ ]`) or a
/// POSIX regular expression (any of `. ? + * | [ ] ^ $ ( )`). The Debian character set
/// already excludes everything but `.` and `+`, so the grammar is:
///
/// - 2-100 characters of `a-z 0-9 + - .`, starting with a letter or digit;
/// - ending with a letter or a digit, or with `++` (`g++`, `c++`): never one `+`, a `-`
///   or a `.`;
/// - no `.` directly followed by `+` or `.` (`x.+`, `a..b`: "any character, repeated"),
///   and no `+++`;
///
/// and, when installing, the name must exist exactly in apt's cache (the agent checks
/// with `apt-cache show` that every record it gets is `Package: NAME`), which leaves
/// apt's regular-expression fallback nothing to do.
pub fn apt_package(name: &str) -> Result<(), ValidateError> {
    const RULE: &str = "an apt package name is a Debian name (2-100 of a-z 0-9 + - ., starting with a letter or digit) that ends with a letter, a digit or \"++\" and has no \".+\", \"..\" or \"+++\" (apt-get would read it as a removal or a regular expression)";
    debian_package(name)?;
    let b = name.as_bytes();
    let last = b[b.len() - 1];
    let ends_ok = last.is_ascii_alphanumeric() || name.ends_with("++");
    let pairs_ok = b
        .windows(2)
        .all(|w| !matches!((w[0], w[1]), (b'.', b'+') | (b'.', b'.')));
    if ends_ok && pairs_ok && !name.contains("+++") {
        Ok(())
    } else {
        Err(grammar("apt package name", name, RULE))
    }
}

/// An RPM package name: letters, digits and `_ + - .`, starting with a letter or digit.
pub fn rpm_package(name: &str) -> Result<(), ValidateError> {
    const RULE: &str = "an RPM package name is 1-100 characters of A-Z a-z 0-9 _ + - ., starting with a letter or digit";
    let ok = (1..=100).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(grammar("RPM package name", name, RULE))
    }
}

/// A Debian or RPM version: `[epoch:]upstream[-revision]`, starting with a digit.
pub fn package_version(v: &str) -> Result<(), ValidateError> {
    const RULE: &str =
        "a package version is 1-100 characters of A-Z a-z 0-9 . + ~ : - _, starting with a digit";
    let ok = (1..=100).contains(&v.len())
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~:-_".contains(c));
    if ok {
        Ok(())
    } else {
        Err(grammar("package version", v, RULE))
    }
}

/// PEP 508 distribution name: `^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$`, case-insensitive.
pub fn python_name(name: &str) -> Result<(), ValidateError> {
    const RULE: &str = "a PEP 508 name is letters and digits, with . _ - only between them";
    let b = name.as_bytes();
    let ok = (1..=100).contains(&b.len())
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(grammar("Python package name", name, RULE))
    }
}

/// A PEP 440 version (public and local parts), starting with a digit: `2.5`, `1.0rc1`,
/// `2.1.0+cu121`.
pub fn python_version(v: &str) -> Result<(), ValidateError> {
    const RULE: &str =
        "a PEP 440 version is 1-64 characters of 0-9 a-z A-Z . ! + _ -, starting with a digit";
    let ok = (1..=64).contains(&v.len())
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".!+_-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(grammar("Python package version", v, RULE))
    }
}

fn oci_path_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
    {
        return false;
    }
    // Separators: one '.', one or two '_', or any run of '-'; never mixed.
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_alphanumeric() {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn oci_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && !(p.parse::<u16>().is_ok_and(|p| p != 0))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

/// Checks an OCI image reference (`[domain[:port]/]path[:tag][@algo:hex]`, the
/// distribution reference grammar) and returns it fully qualified (`redis` ->
/// `docker.io/library/redis`), which is what the policy's registry prefixes match.
pub fn image_reference(r: &str) -> Result<String, ValidateError> {
    const RULE: &str = "an image reference is [registry[:port]/]name[:tag][@sha256:hex] with lower-case path components";
    let bad = || grammar("image reference", r, RULE);
    if r.is_empty() || r.len() > 255 || r.starts_with('-') {
        return Err(bad());
    }
    let (rest, digest) = match r.split_once('@') {
        Some((a, d)) => (a, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest {
        let (algo, hex) = d.split_once(':').ok_or_else(bad)?;
        let ok = !algo.is_empty()
            && algo
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c))
            && hex.len() >= 32
            && hex.chars().all(|c| c.is_ascii_hexdigit());
        if !ok {
            return Err(bad());
        }
    }
    // A tag is after the last ':' that follows the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let b = t.as_bytes();
        let ok = (1..=128).contains(&b.len())
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
        if !ok {
            return Err(bad());
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let domain = match parts.first() {
        Some(first)
            if parts.len() > 1
                && (first.contains('.') || first.contains(':') || *first == "localhost") =>
        {
            if !oci_domain(first) {
                return Err(bad());
            }
            let d = (*first).to_owned();
            parts.remove(0);
            d
        }
        _ => "docker.io".to_owned(),
    };
    if parts.is_empty() || !parts.iter().all(|c| oci_path_component(c)) {
        return Err(bad());
    }
    if domain == "docker.io" && parts.len() == 1 {
        parts.insert(0, "library");
    }
    let mut q = format!("{domain}/{}", parts.join("/"));
    if let Some(t) = tag {
        q.push(':');
        q.push_str(t);
    }
    if let Some(d) = digest {
        q.push('@');
        q.push_str(d);
    }
    Ok(q)
}

/// An http(s) URL after parsing: what [`url`] accepts and what a URL prefix of the
/// policy is compared on. The scheme and host are lower-cased, the port is explicit
/// (80 or 443 when absent) and the path is a list of percent-decoded segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Decoded path segments (`/a/b%20c/` is `["a", "b c"]`).
    pub segments: Vec<String>,
    /// The path ends with `/` (or is `/`).
    pub dir: bool,
    /// The raw query, without `?`.
    pub query: Option<String>,
}

impl HttpUrl {
    /// Whether `self` is `prefix` or below it: same origin (scheme, host, port) and the
    /// prefix's segments are the first segments of `self`'s, compared whole (so
    /// `/data` allows `/data` and `/data/x` but not `/database`; `/data/` allows only
    /// what is below it). A prefix's query, if any, is ignored.
    pub fn is_under(&self, prefix: &HttpUrl) -> bool {
        if self.https != prefix.https || self.host != prefix.host || self.port != prefix.port {
            return false;
        }
        let n = prefix.segments.len();
        if self.segments.len() < n || self.segments[..n] != prefix.segments[..] {
            return false;
        }
        // "/data/" allows what is below "/data", not "/data" itself.
        !prefix.dir || self.segments.len() > n || self.dir
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes one path segment; `None` when an escape is malformed.
fn percent_decode(seg: &str) -> Option<Vec<u8>> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex_val(*b.get(i + 1)?)?;
            let lo = hex_val(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Parses an http(s) URL strictly, for comparison with the policy's prefixes: no
/// spaces, control characters, user info or fragment; a host of letters, digits, `-`
/// and `.` (or a bracketed IPv6 address); and a path with no dot segments and no encoded
/// separators. Every segment is percent-decoded first, so `%2e%2e` is `..` and refused
/// like it, and a decoded `/`, `\` or NUL (`%2f`, `%5c`, `%00`) is refused: a server may
/// read them as separators where the prefix check did not.
pub fn http_url(u: &str) -> Result<HttpUrl, ValidateError> {
    let refuse = |reason: &str| ValidateError::Url {
        url: u.chars().take(300).collect(),
        reason: reason.to_owned(),
    };
    if u.len() > 2048 {
        return Err(refuse("longer than 2048 characters"));
    }
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse("contains whitespace or control characters"));
    }
    let lower = u.get(..8).unwrap_or(u).to_ascii_lowercase();
    let (https, rest) = if lower.starts_with("https://") {
        (true, &u[8..])
    } else if lower.starts_with("http://") {
        (false, &u[7..])
    } else {
        return Err(refuse("only http:// and https:// URLs are fetched"));
    };
    if rest.contains('#') {
        return Err(refuse("a fragment (#) is not accepted"));
    }
    if rest.contains('\\') {
        return Err(refuse("a backslash is not accepted"));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(end);
    if authority.is_empty() {
        return Err(refuse("no host"));
    }
    if authority.contains('@') {
        return Err(refuse("user info in URLs is not accepted"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| refuse("an unclosed [ in the host"))?;
        if h.is_empty()
            || !h
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        {
            return Err(refuse("not an IPv6 address in brackets"));
        }
        let port = match tail {
            "" => None,
            t => Some(
                t.strip_prefix(':')
                    .ok_or_else(|| refuse("junk after the host"))?,
            ),
        };
        (format!("[{}]", h.to_ascii_lowercase()), port)
    } else {
        let (h, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.');
        if !ok {
            return Err(refuse(
                "the host must be letters, digits, - and . (or [IPv6])",
            ));
        }
        (h.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0 && !p.to_string().is_empty())
            .ok_or_else(|| refuse("the port is not 1-65535"))?,
    };
    let (path, query) = match after.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (after, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    let dir = path.ends_with('/');
    let mut segments = Vec::new();
    let inner = path.trim_start_matches('/').len();
    let trimmed = &path[path.len() - inner..];
    if path.len() - inner > 1 {
        return Err(refuse("the path starts with //"));
    }
    let body = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if !body.is_empty() {
        for seg in body.split('/') {
            let decoded = percent_decode(seg).ok_or_else(|| refuse("a malformed % escape"))?;
            if decoded.iter().any(|c| matches!(c, b'/' | b'\\' | 0)) {
                return Err(refuse(
                    "an encoded separator (%2f, %5c or %00) in the path is not accepted",
                ));
            }
            let decoded = String::from_utf8(decoded)
                .map_err(|_| refuse("a path segment is not UTF-8 once decoded"))?;
            if decoded == "." || decoded == ".." {
                return Err(refuse(
                    "a dot segment (. or .., also as %2e) in the path is not accepted",
                ));
            }
            segments.push(decoded);
        }
    }
    Ok(HttpUrl {
        https,
        host,
        port,
        segments,
        dir,
        query,
    })
}

/// An http(s) URL that [`http_url`] accepts: no spaces, control characters, user info,
/// dot segments or encoded separators. Other schemes (`file:`, `ftp:`, `data:`) are
/// refused.
pub fn url(u: &str) -> Result<(), ValidateError> {
    http_url(u).map(|_| ())
}

/// Whether a checked image reference is pinned by digest (`...@sha256:HEX`, 64 digits).
pub fn image_has_digest(qualified: &str) -> bool {
    qualified
        .rsplit_once("@sha256:")
        .is_some_and(|(_, h)| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// Lexically normalises an absolute path, refusing `..` (never resolved: a path that
/// needs it is refused outright).
fn normalise(p: &str) -> Result<PathBuf, ValidateError> {
    let refuse = |reason: &str| ValidateError::Path {
        path: p.chars().take(300).collect(),
        reason: reason.to_owned(),
    };
    if p.contains('\0') {
        return Err(refuse("contains a NUL byte"));
    }
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(refuse("not an absolute path"));
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("contains `..`")),
            Component::Prefix(_) => return Err(refuse("not a Unix path")),
        }
    }
    if out.file_name().is_none() {
        return Err(refuse("names no file"));
    }
    Ok(out)
}

/// Whether the real (symlink-resolved) form of `dir` is inside a real allowed directory.
fn inside_allowed(real: &Path, allowed: &[PathBuf]) -> bool {
    allowed
        .iter()
        .any(|a| a.canonicalize().is_ok_and(|ra| real.starts_with(ra)))
}

/// The deepest existing ancestor of `p`, resolved (`p` itself when it exists).
fn real_existing_ancestor(p: &Path) -> Option<PathBuf> {
    p.ancestors().find_map(|a| a.canonicalize().ok())
}

/// Checks a destination file path against the allowed directories, with no side effect:
/// absolute, no `..`, lexically inside one of `allowed`, not the directory itself, and
/// what already exists of its parent, with symlinks resolved, still inside. Returns the
/// normalised path; [`prepare_destination`] creates the directories when the step runs.
pub fn destination(dest: &str, allowed: &[PathBuf]) -> Result<PathBuf, ValidateError> {
    let refuse = |reason: String| ValidateError::Path {
        path: dest.chars().take(300).collect(),
        reason,
    };
    let lexical = normalise(dest)?;
    let Some(root) = allowed.iter().find(|a| lexical.starts_with(a)) else {
        return Err(refuse(
            "not inside a directory the policy allows (files.destinations)".into(),
        ));
    };
    if lexical == *root {
        return Err(refuse(
            "is the allowed directory itself, not a file in it".into(),
        ));
    }
    let parent = lexical.parent().unwrap_or(root);
    match real_existing_ancestor(parent) {
        Some(real) if real.starts_with(root) || inside_allowed(&real, allowed) => Ok(lexical),
        Some(real) => Err(refuse(format!(
            "resolves to {} (through a symlink), outside the allowed directories",
            real.display()
        ))),
        None => Err(refuse("no part of the path exists".into())),
    }
}

/// Creates the missing parent directories of a checked destination and checks again,
/// now that they exist, that the resolved parent is inside an allowed directory (a
/// symlink may have appeared since the check). Returns the path to write.
pub fn prepare_destination(lexical: &Path, allowed: &[PathBuf]) -> Result<PathBuf, ValidateError> {
    let refuse = |reason: String| ValidateError::Path {
        path: lexical.display().to_string(),
        reason,
    };
    let (Some(parent), Some(name)) = (lexical.parent(), lexical.file_name()) else {
        return Err(refuse("names no file".into()));
    };
    std::fs::create_dir_all(parent)
        .map_err(|e| refuse(format!("cannot create {}: {e}", parent.display())))?;
    let real_parent = parent
        .canonicalize()
        .map_err(|e| refuse(format!("cannot resolve {}: {e}", parent.display())))?;
    if !inside_allowed(&real_parent, allowed) {
        return Err(refuse(format!(
            "resolves to {} (through a symlink), outside the allowed directories",
            real_parent.display()
        )));
    }
    Ok(real_parent.join(name))
}

/// A SHA-256 in hex (64 digits), returned as bytes.
pub fn sha256_hex(s: &str) -> Result<[u8; 32], ValidateError> {
    const RULE: &str = "a SHA-256 is 64 hex digits";
    let bad = || grammar("sha256", s, RULE);
    if s.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: [&str; 6] = [
        "foo; rm -rf /",
        "--option-injection",
        "-y",
        "../../etc/passwd",
        "file:///etc/passwd",
        "a b",
    ];

    #[test]
    fn hostile_names_are_refused_everywhere() {
        for h in HOSTILE {
            assert!(debian_package(h).is_err(), "{h}");
            assert!(rpm_package(h).is_err(), "{h}");
            assert!(python_name(h).is_err(), "{h}");
            assert!(image_reference(h).is_err(), "{h}");
            assert!(package_version(h).is_err(), "{h}");
            assert!(python_version(h).is_err(), "{h}");
        }
        let e = debian_package("foo; rm -rf /").unwrap_err().to_string();
        assert!(
            e.contains("Debian package name") && e.contains("foo; rm -rf /"),
            "{e}"
        );
    }

    #[test]
    fn real_names_pass() {
        for n in [
            "curl",
            "libc6",
            "g++",
            "python3.11",
            "lib32z1-dev",
            "nvidia-driver",
        ] {
            debian_package(n).unwrap();
        }
        for n in [
            "numactl",
            "tuned-profiles-realtime",
            "NetworkManager",
            "perl-Data_Dumper",
        ] {
            rpm_package(n).unwrap();
        }
        for n in ["torch", "scikit-learn", "zope.interface", "A1", "x"] {
            python_name(n).unwrap();
        }
        for v in ["2.5", "1:2.36-9+deb12u4", "550", "1.0~rc1"] {
            package_version(v).unwrap();
        }
        for v in ["2.5", "2.1.0+cu121", "1!2.0", "1.0rc1"] {
            python_version(v).unwrap();
        }
        assert!(python_name("_x").is_err() && python_name("x-").is_err());
        assert!(debian_package("Curl").is_err() && debian_package("c").is_err());
    }

    #[test]
    fn image_references_are_qualified() {
        assert_eq!(image_reference("redis").unwrap(), "docker.io/library/redis");
        assert_eq!(
            image_reference("redis:7.2-alpine").unwrap(),
            "docker.io/library/redis:7.2-alpine"
        );
        assert_eq!(
            image_reference("nvcr.io/nvidia/pytorch:24.10-py3").unwrap(),
            "nvcr.io/nvidia/pytorch:24.10-py3"
        );
        assert_eq!(
            image_reference("localhost:5000/team/app@sha256:0123456789abcdef0123456789abcdef")
                .unwrap(),
            "localhost:5000/team/app@sha256:0123456789abcdef0123456789abcdef"
        );
        for bad in [
            "Redis",
            "redis:",
            "redis:-x",
            "a//b",
            "docker.io/a__-b",
            "x@sha256:12",
            "registry.example.com:0/a",
        ] {
            assert!(image_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        url("https://data.example.com/x.bin").unwrap();
        url("http://127.0.0.1:8080/x").unwrap();
        for (bad, why) in [
            ("file:///etc/passwd", "only http"),
            ("ftp://x/y", "only http"),
            ("https://user:pw@x/y", "user info"),
            ("https:///x", "no host"),
            ("https://x/a b", "whitespace"),
        ] {
            let e = url(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn destinations_stay_inside_the_allowed_directories() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("data");
        std::fs::create_dir(&allowed).unwrap();
        let allowed = vec![allowed.canonicalize().unwrap()];
        let want = format!("{}/sets/a.bin", allowed[0].display());
        let checked = destination(&want, &allowed).unwrap();
        // The check creates nothing; preparing does.
        assert!(!allowed[0].join("sets").exists());
        let ok = prepare_destination(&checked, &allowed).unwrap();
        assert!(ok.starts_with(&allowed[0]) && ok.ends_with("sets/a.bin"));
        assert!(allowed[0].join("sets").is_dir());
        for bad in [
            "../../etc/passwd".to_owned(),
            format!("{}/../../etc/passwd", allowed[0].display()),
            "/etc/passwd".to_owned(),
            format!("{}", allowed[0].display()),
            "relative/x".to_owned(),
        ] {
            assert!(destination(&bad, &allowed).is_err(), "{bad}");
        }
        // A symlink inside the allowed directory that points outside is refused, by the
        // check and again when preparing (a link that appears after the check).
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, allowed[0].join("link")).unwrap();
        let e = destination(&format!("{}/link/x", allowed[0].display()), &allowed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("symlink"), "{e}");
        let late = destination(&format!("{}/late/x", allowed[0].display()), &allowed).unwrap();
        std::os::unix::fs::symlink(&outside, allowed[0].join("late")).unwrap();
        let e = prepare_destination(&late, &allowed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("symlink"), "{e}");
    }

    #[test]
    fn apt_names_are_read_by_apt_as_one_name() {
        for n in [
            "curl",
            "g++",
            "g++-12",
            "libstdc++6",
            "python3.11",
            "nvidia-driver",
            "lib32z1-dev",
        ] {
            apt_package(n).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        // A trailing - or + is an action to apt-get; .+ and .. are regular expressions.
        for n in [
            "curl-",
            "curl+",
            "x.+",
            "python3.+-",
            "libcurl.+-",
            "a..b",
            "x.",
            "g+++",
        ] {
            let e = apt_package(n).unwrap_err().to_string();
            assert!(
                e.contains("apt package name") || e.contains("Debian"),
                "{n}: {e}"
            );
        }
    }

    #[test]
    fn urls_are_normalised_before_prefix_checks() {
        let p = http_url("https://Data.Example.com/datasets/").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.dir),
            ("data.example.com", 443, true)
        );
        let under = |u: &str| http_url(u).unwrap().is_under(&p);
        assert!(under("https://data.example.com/datasets/a.bin"));
        assert!(under("HTTPS://DATA.example.com:443/datasets/sub/%61.bin"));
        assert!(!under("https://data.example.com/datasets"));
        assert!(!under("https://data.example.com/datasetsX/a.bin"));
        assert!(!under("http://data.example.com/datasets/a.bin"));
        assert!(!under("https://data.example.com:8443/datasets/a.bin"));
        assert!(!under("https://data.example.com.evil.net/datasets/a.bin"));
        let file = http_url("https://h/datasets/a.bin").unwrap();
        assert!(
            http_url("https://h/datasets/a.bin")
                .unwrap()
                .is_under(&file)
        );
        assert!(
            !http_url("https://h/datasets/a.bin2")
                .unwrap()
                .is_under(&file)
        );
        for (bad, why) in [
            ("http://host/datasets/../private/secret.bin", "dot segment"),
            (
                "http://host/datasets/%2e%2e/private/secret.bin",
                "dot segment",
            ),
            ("http://host/datasets/%2E%2e/x", "dot segment"),
            ("http://host/datasets/./x", "dot segment"),
            ("http://host/datasets/..", "dot segment"),
            ("http://host/datasets/..%2fprivate/x", "encoded separator"),
            ("http://host/datasets/%2F../x", "encoded separator"),
            ("http://host/datasets/..%5cprivate", "encoded separator"),
            ("http://host/datasets\\..\\private", "backslash"),
            ("http://host/datasets/%zz", "malformed"),
            ("http://host/a#frag", "fragment"),
            ("http://host:0/a", "port"),
            ("http://ho%73t/a", "host"),
            ("http://host//etc/passwd", "//"),
        ] {
            let e = url(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(image_has_digest(&format!(
            "docker.io/library/redis@sha256:{}",
            "a".repeat(64)
        )));
        assert!(!image_has_digest("docker.io/library/redis:7"));
    }

    #[test]
    fn sha256s() {
        assert_eq!(sha256_hex(&"ab".repeat(32)).unwrap()[0], 0xab);
        assert!(sha256_hex("abc").is_err());
        assert!(sha256_hex(&"zz".repeat(32)).is_err());
    }
}
