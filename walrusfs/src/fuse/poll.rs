//! Polling the FUSE device for a moment after each answer.
//!
//! A process that makes one call after another on the mount (`tar -x`, `rsync`, `git
//! checkout`, a shell loop writing files) sends its next request a few microseconds after our
//! answer wakes it. If every FUSE thread is asleep by then, the kernel must wake one, and on a
//! virtual machine whose idle CPUs halt (no guest halt-polling) a wake-up that crosses CPUs
//! costs a trip through the hypervisor: measured here, 4 KiB files created by a shell loop
//! took 588-619 us each as it came, 268-285 us with the mount and the shell held on one CPU
//! (`taskset`), where no wake-up crosses CPUs. So after answering, one thread at a time keeps
//! watching the device for a short window (yielding the CPU to anything else that wants it)
//! and goes back to reading as soon as a request waits; a thread finds its next request
//! running, and the other CPU is seldom halted when the next wake-up comes. Past the window
//! it sleeps in `read` as before, so an idle mount costs nothing.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};

/// The window after an answer during which one FUSE thread watches the device.
pub struct DevicePoll {
    /// A duplicate of the session's device descriptor; every clone of it shares the
    /// connection's queue of requests, so it shows a request any thread could read.
    fd: OnceLock<OwnedFd>,
    window: Duration,
    /// Whether a thread is watching already: one is enough, and a second would only burn a
    /// second CPU.
    watching: AtomicBool,
}

impl DevicePoll {
    /// Polling for `window` after each answer once [`DevicePoll::attach`] gives it the device;
    /// a zero window turns it off.
    pub fn new(window: Duration) -> Self {
        DevicePoll {
            fd: OnceLock::new(),
            window,
            watching: AtomicBool::new(false),
        }
    }

    /// The device to watch (a duplicate of the session's descriptor).
    pub fn attach(&self, fd: OwnedFd) {
        let _ = self.fd.set(fd);
    }

    /// Returns once a request waits on the device, or the window has passed since the call; at
    /// once when polling is off, no device is attached, or another thread is watching.
    /// Returns whether it saw a request.
    pub fn linger(&self) -> bool {
        if self.window.is_zero() {
            return false;
        }
        let Some(fd) = self.fd.get() else {
            return false;
        };
        if self.watching.swap(true, Ordering::Acquire) {
            return false;
        }
        let start = Instant::now();
        let mut seen = false;
        while start.elapsed() < self.window {
            let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut fds, PollTimeout::ZERO) {
                Ok(n) if n > 0 => {
                    // Readable, or an error the next read reports: either way, go read.
                    seen = true;
                    break;
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
            // Another task that wants this CPU gets it first.
            std::thread::yield_now();
        }
        self.watching.store(false, Ordering::Release);
        seen
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::*;

    fn pipe() -> (OwnedFd, std::fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        (r, std::fs::File::from(w))
    }

    #[test]
    fn a_waiting_request_ends_the_window_at_once() {
        let (r, mut w) = pipe();
        let poll = Arc::new(DevicePoll::new(Duration::from_secs(20)));
        poll.attach(r);
        let p = poll.clone();
        let t = std::thread::spawn(move || {
            let start = Instant::now();
            (p.linger(), start.elapsed())
        });
        std::thread::sleep(Duration::from_millis(100));
        w.write_all(b"x").unwrap();
        let (seen, took) = t.join().unwrap();
        assert!(seen, "the request was not seen");
        // Far below the 20 s window even on a loaded machine.
        assert!(took < Duration::from_secs(10), "lingered {took:?}");
        // A request already waiting: no window at all.
        let start = Instant::now();
        assert!(poll.linger());
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn with_nothing_to_read_the_window_runs_out() {
        let (r, _w) = pipe();
        let poll = DevicePoll::new(Duration::from_millis(50));
        poll.attach(r);
        let start = Instant::now();
        assert!(!poll.linger());
        assert!(start.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn one_thread_watches_at_a_time_and_off_means_off() {
        let (r, w) = pipe();
        let poll = Arc::new(DevicePoll::new(Duration::from_secs(20)));
        poll.attach(r);
        let p = poll.clone();
        let watcher = std::thread::spawn(move || p.linger());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !poll.watching.load(Ordering::Acquire) {
            assert!(Instant::now() < deadline, "the first thread never watched");
            std::thread::yield_now();
        }
        // A second thread does not wait out the first one's window.
        let start = Instant::now();
        assert!(!poll.linger());
        assert!(start.elapsed() < Duration::from_secs(10));
        // Nor does any thread with polling off, or with no device yet.
        let (r2, _w2) = pipe();
        let off = DevicePoll::new(Duration::ZERO);
        off.attach(r2);
        let unattached = DevicePoll::new(Duration::from_secs(20));
        let start = Instant::now();
        assert!(!off.linger() && !unattached.linger());
        assert!(start.elapsed() < Duration::from_secs(10));
        // The watcher is ended by the end of its window; make that quick.
        drop(w);
        assert!(watcher.join().unwrap(), "a closed pipe reads (EOF): seen");
    }
}
