//! Test-only crash points (the `faults` cargo feature): a process built with the feature kills
//! itself with SIGKILL when it reaches a named point that is armed, exactly as `kill -9` would
//! at that moment. A point is armed by `WALRUSFS_CRASH_AT=NAME` in the environment, or, so a
//! test can arm it at the moment it chooses, by a file `STATE/crash-at` holding NAME (the mount
//! registers its state directory with [`arm_from`]). Without the feature every point compiles
//! to nothing.
//!
//! A test can also hold back some background work with a file `STATE/NAME` ([`held`]):
//! - `hold-index-log`: nothing hands the index's log to the kernel in the background (sled's
//!   timer, the flusher's tick, the uploader, which makes the index durable before each
//!   upload), so a kill loses the index changes no close, fsync or sync made durable, except
//!   those sled wrote out when a later transaction began (sled's timer is read when the index
//!   is opened, the rest each time).
//!
//! Points (named `layer.step`):
//! - `publish.parts_stored`: an index record is stored, no root record names it yet;
//! - `publish.root_written`: the root record is on `n - f` nodes, the local index does not yet
//!   know it was published.

use std::path::Path;

/// Environment variable naming the crash point to die at.
pub const CRASH_ENV: &str = "WALRUSFS_CRASH_AT";
/// File in the state directory naming the crash point to die at.
pub const CRASH_FILE: &str = "crash-at";

#[cfg(feature = "faults")]
static STATE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// See the module doc.
pub const HOLD_INDEX_LOG: &str = "hold-index-log";

/// Whether a test holds back `what` (a file `STATE/what` exists). Always false without the
/// feature.
#[inline]
pub fn held(what: &str) -> bool {
    #[cfg(feature = "faults")]
    {
        STATE.get().is_some_and(|s| s.join(what).exists())
    }
    #[cfg(not(feature = "faults"))]
    {
        let _ = what;
        false
    }
}

/// Lets a `STATE/crash-at` file arm crash points in this process.
pub fn arm_from(state: &Path) {
    #[cfg(feature = "faults")]
    let _ = STATE.set(state.to_owned());
    #[cfg(not(feature = "faults"))]
    let _ = state;
}

/// Dies here (SIGKILL) if this crash point is armed.
#[inline]
pub fn crash_point(name: &str) {
    #[cfg(feature = "faults")]
    {
        let by_env = std::env::var(CRASH_ENV).is_ok_and(|p| p == name);
        let by_file = STATE.get().is_some_and(|s| {
            std::fs::read_to_string(s.join(CRASH_FILE)).is_ok_and(|p| p.trim() == name)
        });
        if by_env || by_file {
            eprintln!("fault injection: crashing at {name}");
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        }
    }
    #[cfg(not(feature = "faults"))]
    let _ = name;
}
