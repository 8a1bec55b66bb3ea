//! Preparation shared by the tests that run a real `apt-get install` of GNU hello
//! (about 50 KB): they need root, apt, a reachable Debian registry with a candidate for
//! `hello`, and `hello` not installed yet. Included with
//! `#[path = "support/real_apt.rs"] mod real_apt;`.

use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use persona_agent::preload::packages;

/// Tests of one binary run in parallel; those that install and remove `hello` take turns.
static HELLO: Mutex<()> = Mutex::new(());

/// Makes `hello` installable and absent. Ok holds the turn until the test is done; Err
/// says why this machine cannot run the test (the caller prints it and skips).
pub fn hello_ready(never: &AtomicBool) -> Result<MutexGuard<'static, ()>, String> {
    if !packages::is_root() {
        return Err("apt-get install needs root".into());
    }
    let (Ok(apt), Ok(apt_cache)) = (
        packages::find_program("apt-get"),
        packages::find_program("apt-cache"),
    ) else {
        return Err("no apt-get on this machine".into());
    };
    let turn = HELLO.lock().unwrap_or_else(PoisonError::into_inner);
    let candidate = || {
        packages::run(
            &apt_cache,
            &["policy", "--", "hello"],
            &[],
            Duration::from_secs(60),
            never,
        )
        .is_ok_and(|s| s.contains("Candidate:") && !s.contains("Candidate: (none)"))
    };
    if !candidate() {
        if let Err(e) = packages::run(
            &apt,
            &["update", "-q", "-o", "DPkg::Lock::Timeout=600"],
            &[],
            Duration::from_secs(300),
            never,
        ) {
            return Err(format!(
                "the Debian registry is not reachable (apt-get update: {e})"
            ));
        }
        if !candidate() {
            return Err("no installable candidate for `hello` in the package lists".into());
        }
    }
    if packages::apt_present("hello", never) {
        packages::run(
            &apt,
            &[
                "remove",
                "-y",
                "-q",
                "-o",
                "DPkg::Lock::Timeout=600",
                "--",
                "hello",
            ],
            &[("DEBIAN_FRONTEND", "noninteractive")],
            Duration::from_secs(300),
            never,
        )
        .expect("remove hello first");
    }
    Ok(turn)
}
