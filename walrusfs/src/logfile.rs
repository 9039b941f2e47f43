//! Size-capped logs. A background mount (and a testnet node) logs to stderr, which its
//! starter points at a file (`STATE/mount.log`). Left alone, that file grows for as long as
//! the process runs; here, once it passes [`LOG_CAP`] bytes it is renamed to `NAME.1`
//! (replacing the previous one) and stderr is pointed at a fresh file, so a log never holds
//! more than twice the cap on disk and panics still land in the current file. Written by
//! hand: tracing-appender rotates by time only, and the crates that rotate by size bring a
//! date library and compression along.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Bytes a log file grows to before it is rotated.
pub const LOG_CAP: u64 = 16 << 20;
/// Environment variable that sets another cap, in bytes (tests use a small one).
pub const LOG_CAP_ENV: &str = "WALRUSFS_LOG_CAP_BYTES";

/// The cap in force.
static CAP: AtomicU64 = AtomicU64::new(LOG_CAP);

/// Bytes written to the current file (its size when capping began, plus what was written).
static WRITTEN: AtomicU64 = AtomicU64::new(0);
/// The log file stderr points at, if it is one being capped.
static PATH: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Starts capping stderr if it is a regular file (not a terminal, pipe or journald socket).
pub fn cap_stderr_if_file() {
    let Ok(path) = std::fs::read_link("/proc/self/fd/2") else {
        return;
    };
    let Ok(meta) = std::fs::metadata(&path) else {
        return;
    };
    if !meta.is_file() {
        return;
    }
    if let Some(cap) = std::env::var(LOG_CAP_ENV).ok().and_then(|v| v.parse().ok()) {
        CAP.store(cap, Ordering::Relaxed);
    }
    WRITTEN.store(meta.len(), Ordering::Relaxed);
    *PATH.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
}

/// Stderr, counting what is written and rotating a capped file past [`LOG_CAP`]. Use as the
/// tracing writer: `.with_writer(|| logfile::Stderr)`.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = std::io::stderr().write(buf)?;
        if WRITTEN.fetch_add(n as u64, Ordering::Relaxed) + n as u64 > CAP.load(Ordering::Relaxed) {
            rotate();
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

fn rotate() {
    let guard = PATH.lock().unwrap_or_else(|p| p.into_inner());
    let Some(path) = guard.as_ref() else {
        return;
    };
    if WRITTEN.load(Ordering::Relaxed) <= CAP.load(Ordering::Relaxed) {
        return; // another thread rotated first
    }
    let mut old = path.clone().into_os_string();
    old.push(".1");
    let fresh = std::fs::rename(path, &old).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    });
    // On failure stderr stays where it was; the next try comes after another cap's worth.
    let _ = fresh.map(|f| nix::unistd::dup2_stderr(&f));
    WRITTEN.store(0, Ordering::Relaxed);
}
