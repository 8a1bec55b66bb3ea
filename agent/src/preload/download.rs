//! Resumable, checksummed downloads of files and data sets.
//!
//! A file is fetched into a hidden partial file next to its destination
//! (`.NAME.persona-part`, same directory so the final rename is atomic). A dropped
//! connection keeps what arrived, and the next attempt (in the same command, or a later
//! command for the same file) asks for the rest with an HTTP `Range` request. Only when
//! the size is exactly the expected one and the SHA-256 matches is the file synced and
//! renamed into place; a mismatch deletes the partial file, so a failed download leaves
//! nothing behind. A destination that already holds the expected bytes is left alone and
//! reported as present.
//!
//! The partial file and the destination are reached only through a descriptor of their
//! directory (`openat`, `renameat`), never through a symlink (`O_NOFOLLOW`): a fresh
//! start creates the partial file with `O_EXCL`, and every open is followed by `fstat`,
//! which must show a regular file owned by the agent's uid, so a link or file planted
//! at `.NAME.persona-part` or at the destination is refused, never written through. A
//! cancelled download removes its partial file.
//!
//! Redirects are not followed (the policy checks the URL as given, and a redirect could
//! lead anywhere); more bytes than announced are refused. HTTPS goes through the
//! workspace rustls with ring and the system's CA bundle. What it is not: URL or path
//! validation (`validate`) or policy (`policy`); the caller passes checked values.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::Mode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Attempts per download (the first and the resumes after a dropped connection).
pub const MAX_ATTEMPTS: u32 = 5;
const CHUNK: usize = 64 * 1024;
/// System CA bundles, Debian's first.
const CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error(
        "{url}: redirected to {location:?}; redirects are not followed (allow the final URL in the policy and use it)"
    )]
    Redirect { url: String, location: String },
    #[error("{url}: {size} bytes expected, but the server sends {got}")]
    Size { url: String, size: u64, got: u64 },
    #[error("{url}: checksum mismatch: expected sha256 {expected}, got {got}; nothing was kept")]
    Checksum {
        url: String,
        expected: String,
        got: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{url}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("{path} is refused: {reason}; nothing was written through it")]
    Unsafe { path: PathBuf, reason: String },
    #[error("cancelled")]
    Cancelled,
}

/// The directory of a destination, opened once: every file operation of a download goes
/// through it.
struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    fn open(dest: &Path) -> Result<Dir, DownloadError> {
        let path = dest.parent().unwrap_or(Path::new("/")).to_owned();
        let fd = nix::fcntl::open(
            &path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| DownloadError::Io {
            path: path.clone(),
            source: e.into(),
        })?;
        Ok(Dir { fd, path })
    }

    fn io(&self, name: &str) -> impl FnOnce(nix::Error) -> DownloadError + '_ {
        let path = self.path.join(name);
        move |e| DownloadError::Io {
            path,
            source: e.into(),
        }
    }

    /// Opens `name` with `flags` (plus O_NOFOLLOW, O_CLOEXEC) and checks with fstat that
    /// it is a regular file owned by this process's uid. `None`: it does not exist.
    fn open_file(&self, name: &str, flags: OFlag) -> Result<Option<File>, DownloadError> {
        let fd = match openat(
            &self.fd,
            name,
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => fd,
            Err(nix::Error::ENOENT) if !flags.contains(OFlag::O_CREAT) => return Ok(None),
            Err(nix::Error::ELOOP) => {
                return Err(DownloadError::Unsafe {
                    path: self.path.join(name),
                    reason: "it is a symlink".into(),
                });
            }
            Err(nix::Error::EEXIST) => {
                return Err(DownloadError::Unsafe {
                    path: self.path.join(name),
                    reason: "it appeared while the download started afresh".into(),
                });
            }
            Err(e) => return Err(self.io(name)(e)),
        };
        let f = File::from(fd);
        let m = f.metadata().map_err(|source| DownloadError::Io {
            path: self.path.join(name),
            source,
        })?;
        let me = euid();
        if !m.file_type().is_file() || Some(m.uid()) != me {
            return Err(DownloadError::Unsafe {
                path: self.path.join(name),
                reason: format!(
                    "not a regular file owned by uid {} (type {:?}, owner {})",
                    me.map_or_else(|| "?".into(), |u| u.to_string()),
                    m.file_type(),
                    m.uid()
                ),
            });
        }
        Ok(Some(f))
    }

    /// Removes `name` (a file or a link; a link's target is untouched).
    fn remove(&self, name: &str) {
        let _ = nix::unistd::unlinkat(&self.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
}

/// The effective uid, from /proc/self/status.
fn euid() -> Option<u32> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Removes the partial file of `dest` (after a cancel).
pub fn discard_partial(dest: &Path) {
    if let Ok(dir) = Dir::open(dest) {
        dir.remove(&file_name(&partial_path(dest)));
    }
}

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    /// Downloaded (`resumed` if an earlier partial file was continued).
    Downloaded { bytes: u64, resumed: bool },
    /// The destination already held the expected bytes.
    AlreadyPresent,
}

/// One file to fetch (values already validated).
#[derive(Debug, Clone)]
pub struct FileJob {
    pub url: String,
    pub sha256: [u8; 32],
    pub size: u64,
    pub dest: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DownloadError + '_ {
    move |source| DownloadError::Io {
        path: path.to_owned(),
        source,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The HTTP client: bounded connect and response timeouts, no redirects, statuses
/// returned rather than raised, HTTPS through ring with the system CA bundle.
pub fn client() -> ureq::Agent {
    let mut roots = Vec::new();
    for path in CA_BUNDLES {
        if let Ok(pem) = std::fs::read(path) {
            for item in ureq::tls::parse_pem(&pem).flatten() {
                if let ureq::tls::PemItem::Certificate(c) = item {
                    roots.push(c);
                }
            }
            break;
        }
    }
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        // A stalled body is a dropped connection: resume instead of waiting forever.
        .timeout_recv_body(None)
        .tls_config(tls)
        .build()
        .into()
}

/// The partial file of a destination.
pub fn partial_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.persona-part"))
}

fn sha256_of(mut f: &File, path: &Path) -> Result<(u64, [u8; 32]), DownloadError> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io(path))?;
        if k == 0 {
            break;
        }
        n += k as u64;
        ctx.update(&buf[..k]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok((n, out))
}

/// Whether `dest` already holds exactly the expected bytes (a regular file of ours,
/// not a link to one).
pub fn present(job: &FileJob) -> bool {
    let Ok(dir) = Dir::open(&job.dest) else {
        return false;
    };
    match dir.open_file(&file_name(&job.dest), OFlag::O_RDONLY) {
        Ok(Some(f)) => {
            f.metadata().is_ok_and(|m| m.len() == job.size)
                && sha256_of(&f, &job.dest).is_ok_and(|(_, h)| h == job.sha256)
        }
        _ => false,
    }
}

/// Fetches `job`, calling `progress(bytes_so_far)` as data arrives, and checking
/// `cancel` between chunks (a cancelled download keeps its partial file for a resume).
pub fn fetch(
    agent: &ureq::Agent,
    job: &FileJob,
    progress: &mut dyn FnMut(u64),
    cancel: &AtomicBool,
) -> Result<Fetched, DownloadError> {
    if present(job) {
        return Ok(Fetched::AlreadyPresent);
    }
    let part = partial_path(&job.dest);
    let dir = Dir::open(&job.dest)?;
    let part_name = file_name(&part);
    let mut resumed = false;
    let mut last = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        if cancel.load(Ordering::Relaxed) {
            return Err(DownloadError::Cancelled);
        }
        // fstat of what is there, never following a link (a planted one is refused).
        let have = match dir.open_file(&part_name, OFlag::O_RDONLY)? {
            Some(f) => f.metadata().map_err(io(&part))?.len(),
            None => 0,
        };
        if have > job.size {
            // Not ours to continue: start over.
            dir.remove(&part_name);
            continue;
        }
        if have < job.size {
            if have > 0 {
                resumed = true;
            }
            match transfer(agent, job, &dir, &part_name, have, progress, cancel) {
                Ok(()) => {}
                Err(Transfer::Retry(why)) => {
                    tracing::info!(url = %job.url, attempt, "download interrupted: {why}; resuming");
                    last = why;
                    // Short, growing pause: the server may be restarting.
                    std::thread::sleep(Duration::from_millis(200 * u64::from(attempt)));
                    continue;
                }
                Err(Transfer::Fatal(e)) => {
                    if matches!(e, DownloadError::Size { .. }) {
                        dir.remove(&part_name);
                    }
                    return Err(e);
                }
            }
        }
        return finish(job, &dir, &part_name, resumed);
    }
    Err(DownloadError::GaveUp {
        url: job.url.clone(),
        attempts: MAX_ATTEMPTS,
        last,
    })
}

/// Checks the complete partial file and renames it into place, or deletes it. The
/// destination, if something is there, must be a regular file of ours too (a link or
/// another user's file there is refused rather than replaced).
fn finish(
    job: &FileJob,
    dir: &Dir,
    part_name: &str,
    resumed: bool,
) -> Result<Fetched, DownloadError> {
    let part = &dir.path.join(part_name);
    let Some(f) = dir.open_file(part_name, OFlag::O_RDONLY)? else {
        return Err(DownloadError::Io {
            path: part.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    };
    let (n, hash) = sha256_of(&f, part)?;
    if n != job.size || hash != job.sha256 {
        dir.remove(part_name);
        if n != job.size {
            return Err(DownloadError::Size {
                url: job.url.clone(),
                size: job.size,
                got: n,
            });
        }
        return Err(DownloadError::Checksum {
            url: job.url.clone(),
            expected: hex(&job.sha256),
            got: hex(&hash),
        });
    }
    f.sync_all().map_err(io(part))?;
    let dest_name = file_name(&job.dest);
    // Whatever is at the destination must be ours to replace (checked as the partial).
    dir.open_file(&dest_name, OFlag::O_RDONLY)?;
    renameat(&dir.fd, part_name, &dir.fd, dest_name.as_str()).map_err(dir.io(&dest_name))?;
    // The rename itself must survive a crash.
    nix::unistd::fsync(&dir.fd).map_err(dir.io("."))?;
    Ok(Fetched::Downloaded { bytes: n, resumed })
}

enum Transfer {
    /// The connection dropped or stalled: resume.
    Retry(String),
    Fatal(DownloadError),
}

fn transfer(
    agent: &ureq::Agent,
    job: &FileJob,
    dir: &Dir,
    part_name: &str,
    have: u64,
    progress: &mut dyn FnMut(u64),
    cancel: &AtomicBool,
) -> Result<(), Transfer> {
    let url = job.url.clone();
    let mut req = agent.get(&job.url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Io(e)) => return Err(Transfer::Retry(e.to_string())),
        Err(ureq::Error::Timeout(t)) => return Err(Transfer::Retry(format!("timeout {t}"))),
        Err(ureq::Error::ConnectionFailed) => {
            return Err(Transfer::Retry("connection failed".into()));
        }
        Err(e) => {
            return Err(Transfer::Fatal(DownloadError::Http {
                url,
                message: e.to_string(),
            }));
        }
    };
    let status = resp.status().as_u16();
    let (start, mut file) = match status {
        206 if have > 0 => {
            // The range must start where we are.
            let ok = resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|s| s.parse::<u64>().ok())
                == Some(have);
            if !ok {
                return Err(Transfer::Fatal(DownloadError::Http {
                    url,
                    message: "the server answered a different range than asked".into(),
                }));
            }
            let f = dir
                .open_file(part_name, OFlag::O_WRONLY | OFlag::O_APPEND)
                .map_err(Transfer::Fatal)?
                .ok_or_else(|| {
                    Transfer::Retry("the partial file went away; starting over".into())
                })?;
            (have, f)
        }
        200 => {
            // No range support (or a fresh start): from the beginning, in a file made
            // now (O_EXCL): whatever was at the name is removed first, never followed.
            dir.remove(part_name);
            let f = dir
                .open_file(part_name, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL)
                .map_err(Transfer::Fatal)?
                .ok_or_else(|| Transfer::Retry("cannot create the partial file".into()))?;
            (0, f)
        }
        301 | 302 | 303 | 307 | 308 => {
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .chars()
                .take(300)
                .collect();
            return Err(Transfer::Fatal(DownloadError::Redirect { url, location }));
        }
        s if (500..600).contains(&s) => return Err(Transfer::Retry(format!("HTTP {s}"))),
        s => return Err(Transfer::Fatal(DownloadError::Status { url, status: s })),
    };
    let remaining = job.size - start;
    if let Some(len) = resp
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > remaining
    {
        return Err(Transfer::Fatal(DownloadError::Size {
            url,
            size: job.size,
            got: start + len,
        }));
    }
    // One byte over the limit is enough to tell the server sends too much.
    let mut body = resp
        .into_body()
        .into_with_config()
        .limit(remaining + 1)
        .reader();
    let mut buf = vec![0u8; CHUNK];
    let mut got = start;
    loop {
        if cancel.load(Ordering::Relaxed) {
            let _ = file.sync_data();
            return Err(Transfer::Fatal(DownloadError::Cancelled));
        }
        let k = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) => {
                let _ = file.sync_data();
                if e.to_string().to_ascii_lowercase().contains("limit") {
                    return Err(Transfer::Fatal(DownloadError::Size {
                        url,
                        size: job.size,
                        got: got + 1,
                    }));
                }
                return Err(Transfer::Retry(e.to_string()));
            }
        };
        if got + k as u64 > job.size {
            return Err(Transfer::Fatal(DownloadError::Size {
                url,
                size: job.size,
                got: got + k as u64,
            }));
        }
        file.write_all(&buf[..k])
            .map_err(|e| Transfer::Fatal(io(&dir.path.join(part_name))(e)))?;
        got += k as u64;
        progress(got);
    }
    let _ = file.sync_data();
    if got < job.size {
        return Err(Transfer::Retry(format!(
            "connection closed after {got} of {} bytes",
            job.size
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `body` once per connection with HTTP 200, `n` times.
    fn serve(body: &'static [u8], n: usize) -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for _ in 0..n {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                let mut req = [0u8; 2048];
                let _ = s.read(&mut req);
                let _ = s.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
                );
                let _ = s.write_all(body);
            }
        });
        addr
    }

    fn sha(b: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, b).as_ref());
        out
    }

    /// Issue 18 item 7: a symlink planted at the partial path or at the destination is
    /// refused, and what it points to is never written.
    #[test]
    fn a_planted_symlink_is_never_written_through() {
        const BODY: &[u8] = b"0123456789";
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dest_dir = dir.path().join("data");
        std::fs::create_dir(&dest_dir).unwrap();
        let addr = serve(BODY, 4);
        let never = AtomicBool::new(false);
        let job = FileJob {
            url: format!("http://{addr}/x.bin"),
            sha256: sha(BODY),
            size: BODY.len() as u64,
            dest: dest_dir.join("x.bin"),
        };
        // At the partial path (with a length below the size, so a resume is tried).
        std::os::unix::fs::symlink(&victim, partial_path(&job.dest)).unwrap();
        let e = fetch(&client(), &job, &mut |_| {}, &never).unwrap_err();
        assert!(matches!(e, DownloadError::Unsafe { .. }), "{e}");
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        std::fs::remove_file(partial_path(&job.dest)).unwrap();
        // At the destination: the download completes, but the rename is refused.
        std::os::unix::fs::symlink(&victim, &job.dest).unwrap();
        let e = fetch(&client(), &job, &mut |_| {}, &never).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(
            std::fs::symlink_metadata(&job.dest)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // Without the links, the same job works and leaves no partial file.
        std::fs::remove_file(&job.dest).unwrap();
        std::fs::remove_file(partial_path(&job.dest)).ok();
        let got = fetch(&client(), &job, &mut |_| {}, &never).unwrap();
        assert!(
            matches!(got, Fetched::Downloaded { bytes: 10, .. }),
            "{got:?}"
        );
        assert_eq!(std::fs::read(&job.dest).unwrap(), BODY);
        assert!(!partial_path(&job.dest).exists());
    }

    /// HTTPS goes through the ring provider (no process-wide provider is needed) and a
    /// server that does not speak TLS is an error, not a panic or a hang.
    #[test]
    fn https_to_a_server_without_tls_fails_cleanly() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..MAX_ATTEMPTS {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let job = FileJob {
            url: format!("https://{addr}/x.bin"),
            sha256: [0; 32],
            size: 10,
            dest: dir.path().join("x.bin"),
        };
        let never = AtomicBool::new(false);
        let e = fetch(&client(), &job, &mut |_| {}, &never).unwrap_err();
        assert!(
            !job.dest.exists() && !partial_path(&job.dest).exists(),
            "{e}"
        );
        drop(server);
    }
}
