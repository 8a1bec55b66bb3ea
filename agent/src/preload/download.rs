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
//! Redirects are not followed (the policy checks the URL as given, and a redirect could
//! lead anywhere); more bytes than announced are refused. HTTPS goes through the
//! workspace rustls with ring and the system's CA bundle. What it is not: URL or path
//! validation (`validate`) or policy (`policy`); the caller passes checked values.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
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
    #[error("cancelled")]
    Cancelled,
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

fn sha256_of(path: &Path) -> Result<(u64, [u8; 32]), DownloadError> {
    let mut f = File::open(path).map_err(io(path))?;
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

/// Whether `dest` already holds exactly the expected bytes.
pub fn present(job: &FileJob) -> bool {
    match std::fs::metadata(&job.dest) {
        Ok(m) if m.is_file() && m.len() == job.size => {
            sha256_of(&job.dest).is_ok_and(|(_, h)| h == job.sha256)
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
    let mut resumed = false;
    let mut last = String::new();
    for attempt in 1..=MAX_ATTEMPTS {
        if cancel.load(Ordering::Relaxed) {
            return Err(DownloadError::Cancelled);
        }
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if have > job.size {
            // Not ours to continue: start over.
            std::fs::remove_file(&part).map_err(io(&part))?;
            continue;
        }
        if have < job.size {
            if have > 0 {
                resumed = true;
            }
            match transfer(agent, job, &part, have, progress, cancel) {
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
                        let _ = std::fs::remove_file(&part);
                    }
                    return Err(e);
                }
            }
        }
        return finish(job, &part, resumed);
    }
    Err(DownloadError::GaveUp {
        url: job.url.clone(),
        attempts: MAX_ATTEMPTS,
        last,
    })
}

/// Checks the complete partial file and renames it into place, or deletes it.
fn finish(job: &FileJob, part: &Path, resumed: bool) -> Result<Fetched, DownloadError> {
    let (n, hash) = sha256_of(part)?;
    if n != job.size || hash != job.sha256 {
        let _ = std::fs::remove_file(part);
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
    File::open(part)
        .and_then(|f| f.sync_all())
        .map_err(io(part))?;
    std::fs::rename(part, &job.dest).map_err(io(&job.dest))?;
    if let Some(dir) = job.dest.parent() {
        // The rename itself must survive a crash.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
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
    part: &Path,
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
            let f = OpenOptions::new()
                .append(true)
                .open(part)
                .map_err(|e| Transfer::Fatal(io(part)(e)))?;
            (have, f)
        }
        200 => {
            // No range support (or a fresh start): from the beginning.
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(part)
                .map_err(|e| Transfer::Fatal(io(part)(e)))?;
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
            .map_err(|e| Transfer::Fatal(io(part)(e)))?;
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
