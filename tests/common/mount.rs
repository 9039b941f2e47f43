//! A real walrusfs FUSE mount for end-to-end tests: a 7-node [`Testnet`] plus a
//! `walrusfs mount` process, both in temp directories, torn down when the [`Mount`] is dropped —
//! also when the test panics, because a stale mount breaks the next run.
//!
//! ```text
//! BASE/            a temp dir, mode 0755 so other users (setpriv tests) can reach the mount
//! BASE/mnt/        the mountpoint
//! BASE/state/      --state: sled index, master key, staging, caches, mount.pid
//! BASE/log-<k>     stdout + stderr of the k-th `walrusfs mount|unmount` command
//! ```
//!
//! One mount per test file is usually enough: [`shared`] gives a process-wide mount that is torn
//! down by an `atexit` hook (statics are never dropped), so tests running in parallel threads
//! share one testnet and each work in their own [`Mount::fresh_dir`].
//!
//! A watchdog thread turns a hung filesystem into failing tests: a thread of the test (or of a
//! tool it runs) blocked on one FUSE request for `WALRUSFS_TEST_HANG_SECS` (default 120) gets
//! its kernel stack printed, the mount processes' backtraces saved (gdb), and the mount
//! processes killed. On a failing test the mount's log tail is printed
//! (`WALRUSFS_TEST_LOG_LINES`, default 40; `RUST_LOG=walrusfs=debug` reaches the mount process).
//!
//! Besides the mount itself this module holds the small system helpers the filesystem tests share:
//! errno assertions, running a command as another user, evicting a file's page cache, tree
//! snapshots and comparisons.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
#![allow(unsafe_code)] // libc calls (atexit, kill, close, posix_fadvise) with no safe wrapper in std.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use super::{alive, bin, Testnet};

/// Nodes in every test testnet: n = 7 tolerates f = 2 failures, k = 3.
pub const NODES: u16 = 7;
/// The uid and gid of `nobody`, the "other user" in permission tests.
pub const NOBODY: u32 = 65534;
/// `walrusfs mount` must return within this (it returns once the mount is live).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// `walrusfs unmount` flushes pending data to the network first, which can take a while on a
/// loaded 2-core machine.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a killed or signalled mount process may take to disappear.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// Temp dirs holding mounts start with this, so stale mounts of crashed runs can be found.
const TEMP_PREFIX: &str = "walrusfs-test-";

/// A live walrusfs mount over its own testnet. Dropping it unmounts (falling back to a lazy
/// `fusermount3 -u -z` and `kill -9`), then stops the nodes, then removes the temp dirs.
pub struct Mount {
    // Field order is drop order: `Drop::drop` unmounts first, then the nodes stop, then the
    // temp dir (which contains the by-then empty mountpoint) is removed.
    net: Testnet,
    base: tempfile::TempDir,
    mnt: PathBuf,
    state: PathBuf,
    /// Commands run so far, to name log files.
    commands: AtomicUsize,
    /// Fresh directories handed out so far, to name them uniquely.
    dirs: AtomicUsize,
    /// Whether [`Mount::teardown`] already ran (for the shared mount at exit).
    torn_down: AtomicBool,
}

/// Mount options the tests vary.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Mount with `--read-only`.
    pub read_only: bool,
    /// More `walrusfs mount` arguments.
    pub extra: &'static [&'static str],
}

impl Mount {
    /// Starts a 7-node testnet and mounts it read-write.
    pub fn new() -> Self {
        Self::with_options(Options::default())
    }

    /// Starts a 7-node testnet and mounts it with `options`.
    pub fn with_options(options: Options) -> Self {
        require_fuse();
        reap_dead_mounts();
        let net = Testnet::up(NODES);
        let base = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir()
            .expect("create mount temp dir");
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod 0755 mount temp dir");
        let mnt = base.path().join("mnt");
        let state = base.path().join("state");
        std::fs::create_dir(&mnt).expect("create mountpoint");
        let m = Mount {
            net,
            base,
            mnt,
            state,
            commands: AtomicUsize::new(0),
            dirs: AtomicUsize::new(0),
            torn_down: AtomicBool::new(false),
        };
        watchdog::watch(&m.state);
        m.mount(options);
        m
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// `path()` joined with `rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The `--state` directory (index, master key, staging, caches, `mount.pid`).
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// The testnet under the mount.
    pub fn net(&self) -> &Testnet {
        &self.net
    }

    /// A new, empty directory on the mount named after `name`, unique within this mount (so
    /// tests sharing a mount don't collide, and proptest cases start clean).
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        let k = self.dirs.fetch_add(1, Ordering::Relaxed);
        let dir = self.mnt.join(format!("{name}-{k}"));
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("mkdir {} on the mount: {e}", dir.display()));
        dir
    }

    /// The mount process's pid from `STATE/mount.pid`.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state.join("mount.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the mountpoint is currently a mount in this mount namespace.
    pub fn is_mounted(&self) -> bool {
        is_mountpoint(&self.mnt)
    }

    /// Everything the mount and unmount commands printed so far, and the mount process's own
    /// log (`STATE/mount.log`), for assertion messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(text) = std::fs::read_to_string(self.state.join("mount.log")) {
            // WALRUSFS_TEST_LOG_LINES shows more (run with RUST_LOG=walrusfs=debug to get more).
            let keep = std::env::var("WALRUSFS_TEST_LOG_LINES")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(40);
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(keep)..].join("\n");
            out.push_str(&format!(
                "--- STATE/mount.log (last {keep} lines)\n{tail}\n"
            ));
        }
        for k in 0..self.commands.load(Ordering::Relaxed) {
            let path = self.base.path().join(format!("log-{k}"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                out.push_str(&format!("--- {}\n{text}", path.display()));
            }
        }
        out
    }

    /// Unmounts with `walrusfs unmount` (which flushes), asserting that it succeeds, that the
    /// mountpoint is no longer mounted and that the mount process has exited.
    pub fn unmount(&self) {
        let pid = self.pid();
        let mnt = self.mnt.to_str().expect("utf-8 mountpoint");
        let (status, log) = self.run_logged(&["unmount", mnt], UNMOUNT_TIMEOUT);
        assert!(
            status.is_some_and(|s| s.success()),
            "walrusfs unmount {mnt} failed ({status:?}):\n{log}"
        );
        assert!(
            !self.is_mounted(),
            "walrusfs unmount returned but {mnt} is still mounted:\n{log}"
        );
        if let Some(pid) = pid {
            assert!(
                !alive(pid),
                "walrusfs unmount returned before the mount process {pid} exited"
            );
        }
    }

    /// Unmounts (see [`Mount::unmount`]) and mounts again read-write with the same state dir.
    pub fn remount(&self) {
        self.remount_with(Options::default());
    }

    /// Unmounts and mounts again with the same state dir and `options`.
    pub fn remount_with(&self, options: Options) {
        if self.is_mounted() {
            self.unmount();
        }
        self.mount(options);
    }

    /// [`Mount::remount`] with the on-disk chunk cache emptied too (writes fill it), so
    /// that reads must go to the nodes.
    pub fn remount_cold(&self) {
        self.remount_cold_with(Options::default());
    }

    /// [`Mount::remount_with`] with the on-disk chunk cache emptied too.
    pub fn remount_cold_with(&self, options: Options) {
        if self.is_mounted() {
            self.unmount();
        }
        let cache = self.state.join("cache");
        if cache.exists() {
            std::fs::remove_dir_all(&cache).expect("empty the disk cache");
        }
        self.mount(options);
    }

    /// Segment files in the state directory's write-back journal (spare ones not counted):
    /// none once every record is stored and the index saying so is durable.
    pub fn journal_segments(&self) -> usize {
        self.journal_files("wj")
    }

    /// Spare journal files (dead segments kept to be written over again, `*.wjs`; journal
    /// format 2).
    pub fn journal_spares(&self) -> usize {
        self.journal_files("wjs")
    }

    fn journal_files(&self, extension: &str) -> usize {
        std::fs::read_dir(self.state.join("journal"))
            .expect("read the journal directory")
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == extension))
            .count()
    }

    /// Mounts again after the mount went away (after [`Mount::kill9`], a SIGTERM or a
    /// `fusermount3 -u`).
    pub fn mount_again(&self) {
        self.mount_again_with(Options::default());
    }

    /// [`Mount::mount_again`] with `options`.
    pub fn mount_again_with(&self, options: Options) {
        assert!(!self.is_mounted(), "mount_again: still mounted");
        self.mount(options);
    }

    /// Crashes the mount process (`kill -9` by `STATE/mount.pid`), waits until it is gone, then
    /// detaches the dead mountpoint with `fusermount3 -u -z`.
    pub fn kill9(&self) {
        let pid = self.pid().expect("kill9: no STATE/mount.pid");
        signal(pid, libc::SIGKILL);
        wait_until(EXIT_TIMEOUT, || !alive(pid))
            .unwrap_or_else(|| panic!("mount process {pid} survived kill -9"));
        lazy_unmount(&self.mnt);
        assert!(
            !self.is_mounted(),
            "fusermount3 -u -z left {} mounted",
            self.mnt.display()
        );
    }

    /// Waits for mount process `pid` to die on its own (an armed crash point killed it), then
    /// detaches the dead mountpoint as [`Mount::kill9`] does.
    pub fn await_crash(&self, pid: i32) {
        wait_until(EXIT_TIMEOUT, || !alive(pid))
            .unwrap_or_else(|| panic!("mount process {pid} never reached its crash point"));
        lazy_unmount(&self.mnt);
        assert!(!self.is_mounted(), "{} still mounted", self.mnt.display());
    }

    /// Sends `sig` to the mount process and waits (bounded) until it has exited; returns
    /// whether it exited in time. Does not touch the mountpoint.
    pub fn signal_and_wait(&self, sig: libc::c_int) -> bool {
        let pid = self.pid().expect("signal: no STATE/mount.pid");
        signal(pid, sig);
        wait_until(EXIT_TIMEOUT, || !alive(pid)).is_some()
    }

    /// Mounts with `options`, asserting the contract: exit 0 once the mount is live, pid file
    /// written, process alive.
    fn mount(&self, options: Options) {
        let mut args = vec![
            "mount",
            "--testnet",
            self.net.dir_str(),
            "--state",
            self.state.to_str().expect("utf-8 state path"),
            self.mnt.to_str().expect("utf-8 mountpoint"),
        ];
        if options.read_only {
            args.push("--read-only");
        }
        args.extend_from_slice(options.extra);
        let (status, log) = self.run_logged(&args, MOUNT_TIMEOUT);
        assert!(
            status.is_some_and(|s| s.success()),
            "walrusfs {args:?} failed ({status:?}):\n{log}"
        );
        assert!(
            self.is_mounted(),
            "walrusfs mount exited 0 but {} is not mounted:\n{log}",
            self.mnt.display()
        );
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("no pid in {}/mount.pid:\n{log}", self.state.display()));
        assert!(alive(pid), "mount process {pid} is not running:\n{log}");
    }

    /// Runs `walrusfs ARGS` with stdout and stderr in a fresh log file (a pipe could be held open
    /// by the daemonised mount process forever), killing it after `timeout`. Returns the exit
    /// status (`None` on timeout) and the log.
    fn run_logged(&self, args: &[&str], timeout: Duration) -> (Option<ExitStatus>, String) {
        let k = self.commands.fetch_add(1, Ordering::Relaxed);
        let path = self.base.path().join(format!("log-{k}"));
        let log = File::create(&path).expect("create command log");
        let mut cmd = Command::new(bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        let status = run_with_timeout(&mut cmd, timeout);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        (status, format!("$ walrusfs {}\n{text}", args.join(" ")))
    }

    /// Best-effort unmount that never panics: `walrusfs unmount`, else `fusermount3 -u -z`, and
    /// `kill -9` of a surviving mount process. Idempotent.
    pub fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let pid = self.pid();
        if self.is_mounted() {
            if let Some(mnt) = self.mnt.to_str() {
                let _ = self.run_logged(&["unmount", mnt], UNMOUNT_TIMEOUT);
            }
        }
        if self.is_mounted() {
            lazy_unmount(&self.mnt);
        }
        if let Some(pid) = pid.filter(|&p| alive(p)) {
            signal(pid, libc::SIGKILL);
            let _ = wait_until(EXIT_TIMEOUT, || !alive(pid));
        }
    }
}

impl Default for Mount {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The temp dirs go away with the mount: show what the mount process said first.
            eprintln!("mount logs of the failed test:\n{}", self.logs());
        }
        self.teardown();
        watchdog::unwatch(&self.state);
    }
}

static SHARED: OnceLock<Mount> = OnceLock::new();

/// A mount shared by every test of this test binary. Tests must not remount, kill or unmount it;
/// each works in its own [`Mount::fresh_dir`]. It is torn down at process exit (pass or fail).
pub fn shared() -> &'static Mount {
    SHARED.get_or_init(|| {
        let m = Mount::new();
        // SAFETY: `atexit` only stores a function pointer; the hook is an `extern "C" fn` that
        // never unwinds (`shutdown_shared` catches panics).
        let rc = unsafe { libc::atexit(shutdown_shared) };
        assert_eq!(rc, 0, "atexit failed: the shared mount would leak");
        m
    })
}

/// `atexit` hook: unmounts the shared mount, stops its nodes and removes its temp dirs.
extern "C" fn shutdown_shared() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(m) = SHARED.get() {
            m.teardown();
            // The static is never dropped, so do what `Testnet`'s and `TempDir`'s `Drop` do.
            let _ = Command::new(bin())
                .args(["testnet", "down", "--dir", m.net.dir_str()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            for i in 0..m.net.n {
                if let Some(pid) = m.net.pid(i).filter(|&p| alive(p)) {
                    signal(pid, libc::SIGKILL);
                }
            }
            if !m.is_mounted() {
                let _ = std::fs::remove_dir_all(m.base.path());
            }
            let _ = std::fs::remove_dir_all(m.net.dir.path());
        }
    });
}

/// Turns a hung filesystem into failing tests instead of a hung test binary (which also blocks
/// `ps` and friends on the whole machine).
///
/// A thread of this process or of a child (a tool) that sits in the kernel waiting for a FUSE reply
/// (`wchan = request_wait_answer`) without a single context switch for `HANG_SECS` is stuck on
/// one request. The watchdog then prints that thread's name (the test's name) and kernel stack,
/// saves the mount processes' backtraces (gdb, when installed) to a file, and kills the mount
/// processes of this test binary: pending requests fail with ENOTCONN and the tests fail.
pub mod watchdog {
    use std::collections::HashMap;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, Once};
    use std::time::{Duration, Instant};

    /// Default seconds one FUSE request may take before it counts as hung; no single operation
    /// in these tests comes near it. Override with `WALRUSFS_TEST_HANG_SECS`.
    const HANG_SECS: u64 = 120;
    /// How often the watchdog samples the threads.
    const PERIOD: Duration = Duration::from_secs(1);

    /// State dirs of the live mounts of this process.
    static WATCHED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub fn watch(state: &Path) {
        WATCHED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(state.to_path_buf());
        static START: Once = Once::new();
        START.call_once(|| {
            let limit = std::env::var("WALRUSFS_TEST_HANG_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(HANG_SECS);
            std::thread::Builder::new()
                .name("fuse-watchdog".into())
                .spawn(move || run(Duration::from_secs(limit)))
                .expect("spawn watchdog");
        });
    }

    pub fn unwatch(state: &Path) {
        WATCHED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s != state);
    }

    /// (voluntary + involuntary context switches) of a thread, and whether it waits on FUSE.
    fn sample(task: &Path) -> Option<(u64, bool)> {
        let wchan = std::fs::read_to_string(task.join("wchan")).ok()?;
        let status = std::fs::read_to_string(task.join("status")).ok()?;
        let switches = status
            .lines()
            .filter(|l| l.contains("ctxt_switches"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        Some((switches, wchan.trim() == "request_wait_answer"))
    }

    /// The threads of this process and of its descendants (tools like sqlite3 or rsync block
    /// on the mount in their own process).
    fn tasks() -> Vec<PathBuf> {
        let me = std::process::id();
        let mut parent_of = HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.insert(pid, ppid);
            }
        }
        let descends = |mut pid: u32| {
            for _ in 0..64 {
                if pid == me {
                    return true;
                }
                match parent_of.get(&pid) {
                    Some(&p) if p != 0 && p != pid => pid = p,
                    _ => return false,
                }
            }
            false
        };
        let mut out = Vec::new();
        for (&pid, _) in parent_of.iter().filter(|(&pid, _)| descends(pid)) {
            let dir = PathBuf::from(format!("/proc/{pid}/task"));
            out.extend(
                std::fs::read_dir(dir)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|t| t.path()),
            );
        }
        out
    }

    fn run(limit: Duration) {
        // task path -> (context switches, since when unchanged while waiting on FUSE)
        let mut waiting: HashMap<PathBuf, (u64, Instant)> = HashMap::new();
        loop {
            std::thread::sleep(PERIOD);
            let mut seen = HashMap::new();
            for task in tasks() {
                let Some((switches, on_fuse)) = sample(&task) else {
                    continue;
                };
                if !on_fuse {
                    continue;
                }
                let since = match waiting.get(&task) {
                    Some(&(s, since)) if s == switches => since,
                    _ => Instant::now(),
                };
                if since.elapsed() > limit {
                    hung(&task, limit);
                    seen.clear();
                    break;
                }
                seen.insert(task, (switches, since));
            }
            waiting = seen;
        }
    }

    fn hung(task: &Path, limit: Duration) {
        let name = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        let stack = std::fs::read_to_string(task.join("stack")).unwrap_or_default();
        let states: Vec<PathBuf> = WATCHED.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let pids: Vec<i32> = states
            .iter()
            .filter_map(|s| std::fs::read_to_string(s.join("mount.pid")).ok())
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        let report = std::env::temp_dir().join(format!(
            "walrusfs-hang-{}-{}.txt",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ));
        let mut text = format!("thread {name:?} waited {limit:?} on one FUSE request:\n{stack}\n");
        for &pid in &pids {
            if let Ok(out) = std::process::Command::new("gdb")
                .args([
                    "-p",
                    &pid.to_string(),
                    "-batch",
                    "-ex",
                    "thread apply all bt 40",
                ])
                .output()
            {
                text.push_str(&format!("--- mount process {pid}\n"));
                text.push_str(&String::from_utf8_lossy(&out.stdout));
            }
        }
        let _ = std::fs::write(&report, &text);
        // Not eprintln!: the test harness would capture it into some test's output.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** FUSE HANG: test thread {:?} has waited over {limit:?} for one walrusfs reply.\n\
             *** kernel stack:\n{stack}*** mount backtraces (if gdb is installed): {}\n\
             *** killing mount processes {pids:?} so the tests fail instead of hanging\n",
            name.trim(),
            report.display()
        );
        for pid in pids {
            super::signal(pid, libc::SIGKILL);
        }
    }
}

/// Panics with a clear message unless FUSE mounts can work here.
pub fn require_fuse() {
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| dir.join("fusermount3").is_file())
    });
    assert!(
        on_path,
        "fusermount3 not found: the filesystem tests need FUSE 3 \
         (apt-get install -y fuse3, or source scripts/lib/deps.sh && install_test_deps)"
    );
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse does not exist: this machine cannot mount FUSE filesystems"
    );
}

/// Lazily unmounts mounts left behind by crashed earlier runs (their mount process is gone, so
/// any access fails with ENOTCONN). Only touches our own temp-dir mountpoints.
pub fn reap_dead_mounts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for mp in mountpoints() {
            let ours = mp
                .parent()
                .and_then(Path::file_name)
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(TEMP_PREFIX));
            let dead =
                std::fs::metadata(&mp).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN));
            if ours && dead {
                lazy_unmount(&mp);
            }
        }
    });
}

/// All mountpoints of this mount namespace, from `/proc/self/mountinfo`.
fn mountpoints() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for space, etc.).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(d)) = (bytes[i], octal) {
            out.push(d.iter().fold(0u8, |v, b| v.wrapping_mul(8) + (b - b'0')));
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mountpoint in this mount namespace.
pub fn is_mountpoint(path: &Path) -> bool {
    mountpoints().iter().any(|mp| mp == path)
}

/// `fusermount3 -u -z PATH`, ignoring failure.
pub fn lazy_unmount(path: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `cmd`, killing it after `timeout`; returns its status, or `None` if it timed out.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Option<ExitStatus> {
    let mut child = cmd.spawn().expect("spawn command");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for command") {
            return Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `done` every 20 ms until it returns true (`Some(())`) or `timeout` passes (`None`).
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Option<()> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `sig` to `pid`, ignoring errors (it may be gone already).
pub fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Closes `file` and returns what close(2) said (std's `Drop` ignores it; walrusfs reports
/// failed uploads there).
pub fn close_checked(file: File) -> io::Result<()> {
    let fd = file.into_raw_fd();
    // SAFETY: `fd` was just released by `into_raw_fd`, so it is open and owned by nobody else.
    let rc = unsafe { libc::close(fd) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Drops `file`'s clean pages from the kernel page cache, so the next read goes to the
/// filesystem instead of memory. (Dirty pages stay: fsync first.)
pub fn evict(file: &File) {
    // SAFETY: posix_fadvise only reads its integer arguments.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise(DONTNEED) failed: {rc}");
}

/// Evicts the page cache of the file at `path` (see [`evict`]).
pub fn evict_path(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    evict(&file);
}

/// The C library's message for `errno`, as tools print it ("Permission denied").
pub fn strerror(errno: i32) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Asserts that `result` failed with exactly `errno`.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(result: io::Result<T>, errno: i32, what: &str) {
    match result {
        Ok(v) => panic!(
            "{what}: expected {} (errno {errno}), got Ok({v:?})",
            strerror(errno)
        ),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(errno),
            "{what}: expected {} (errno {errno}), got {e}",
            strerror(errno)
        ),
    }
}

/// Runs `program ARGS` as `uid:gid` with no supplementary groups (`setpriv`).
pub fn as_user(uid: u32, gid: u32, program: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(program)
        .args(args)
        .output()
        .expect("run setpriv (util-linux)")
}

/// Runs `program ARGS` as `nobody` (65534:65534).
pub fn as_nobody(program: &str, args: &[&str]) -> Output {
    as_user(NOBODY, NOBODY, program, args)
}

/// Runs the shell `script` as `nobody`.
pub fn sh_as_nobody(script: &str) -> Output {
    as_nobody("sh", &["-c", script])
}

/// Asserts that a command run by a tool failed and that the tool reported `errno` (tools print
/// `strerror(errno)`, e.g. "cat: f: Permission denied").
#[track_caller]
pub fn assert_tool_errno(out: &Output, errno: i32, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{what}: expected failure with {}, but it succeeded (stdout {:?})",
        strerror(errno),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(&strerror(errno)),
        "{what}: expected {} (errno {errno}), stderr was: {stderr}",
        strerror(errno)
    );
}

/// Asserts that a command succeeded; returns its stdout.
#[track_caller]
pub fn assert_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `program ARGS` in `dir` and asserts success; returns stdout.
#[track_caller]
pub fn run_ok(dir: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert_ok(&out, &format!("{program} {}", args.join(" ")))
}

/// Asserts `actual == expected` for byte buffers, reporting lengths and the first difference
/// instead of dumping megabytes.
#[track_caller]
pub fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    let window = |b: &[u8]| b[first..b.len().min(first + 16)].to_vec();
    panic!(
        "{what}: contents differ: got {} bytes, expected {}; first difference at offset {first}: \
         got {:02x?}, expected {:02x?}",
        actual.len(),
        expected.len(),
        window(actual),
        window(expected)
    );
}

/// What a tree entry is, with what matters for comparing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file and its contents.
    File(Vec<u8>),
    /// A directory.
    Dir,
    /// A symbolic link and its target.
    Symlink(PathBuf),
    /// A named pipe.
    Fifo,
    /// Anything else (sockets, devices).
    Other,
}

/// One entry of a [`Tree`] (from `lstat`, never following symlinks).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Type and contents.
    pub kind: Kind,
    /// `st_size`.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// `st_nlink`.
    pub nlink: u64,
    /// `st_mtime` as (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// `st_ino`, to tell which names are hard links of each other (compared only as a
    /// partition, see [`diff_trees`]).
    pub ino: u64,
    /// Extended attributes (`user.*` and the like), sorted by name; empty for symlinks.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A snapshot of a directory tree: relative path -> entry (the root itself excluded).
pub type Tree = std::collections::BTreeMap<PathBuf, Entry>;

/// Which fields [`diff_trees`] compares besides names, kinds, contents and sizes.
#[derive(Clone, Copy, Debug)]
pub struct Compare {
    /// Permission bits.
    pub mode: bool,
    /// uid and gid.
    pub owner: bool,
    /// Link counts (of files; of directories too when `dir_nlink`).
    pub nlink: bool,
    /// Link counts of directories (2 + subdirectories on ext4 and tmpfs).
    pub dir_nlink: bool,
    /// Modification times.
    pub mtime: bool,
    /// Which names share an inode (hard links).
    pub hard_links: bool,
    /// Extended attributes.
    pub xattrs: bool,
}

impl Compare {
    /// Everything.
    pub const ALL: Compare = Compare {
        mode: true,
        owner: true,
        nlink: true,
        dir_nlink: true,
        mtime: true,
        hard_links: true,
        xattrs: true,
    };
}

/// Snapshots the tree under `root` (contents of every regular file included).
pub fn snapshot(root: &Path) -> Tree {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut tree = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)
                .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
            let ft = meta.file_type();
            let kind = if ft.is_file() {
                Kind::File(
                    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())),
                )
            } else if ft.is_dir() {
                stack.push(path.clone());
                Kind::Dir
            } else if ft.is_symlink() {
                Kind::Symlink(
                    std::fs::read_link(&path)
                        .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display())),
                )
            } else if ft.is_fifo() {
                Kind::Fifo
            } else {
                Kind::Other
            };
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            tree.insert(
                rel,
                Entry {
                    kind,
                    size: meta.len(),
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    nlink: meta.nlink(),
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    ino: meta.ino(),
                    xattrs: if ft.is_symlink() {
                        Vec::new()
                    } else {
                        xattrs_of(&path)
                    },
                },
            );
        }
    }
    tree
}

/// The extended attributes of `path` (not following symlinks), sorted by name.
pub fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: the buffer is valid for its length; the path is NUL-terminated.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let cname = std::ffi::CString::new(name).expect("xattr names have no NUL");
            let mut value = vec![0u8; 64 * 1024];
            // SAFETY: as above; the name is NUL-terminated.
            let len = unsafe {
                libc::lgetxattr(
                    c.as_ptr(),
                    cname.as_ptr(),
                    value.as_mut_ptr().cast(),
                    value.len(),
                )
            };
            value.truncate(len.max(0) as usize);
            (name.to_vec(), value)
        })
        .collect();
    out.sort();
    out
}

/// The differences between trees `a` and `b` (named `a_name`, `b_name` in messages), one line
/// each; empty when they match on the fields `cmp` selects.
pub fn diff_trees(a: &Tree, b: &Tree, cmp: Compare, a_name: &str, b_name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (path, ea) in a {
        let p = path.display();
        let Some(eb) = b.get(path) else {
            out.push(format!("{p}: only in {a_name} ({:?})", kind_name(&ea.kind)));
            continue;
        };
        match (&ea.kind, &eb.kind) {
            (Kind::File(ca), Kind::File(cb)) if ca != cb => {
                let first = ca.iter().zip(cb).position(|(x, y)| x != y);
                out.push(format!(
                    "{p}: contents differ ({a_name} {} bytes, {b_name} {} bytes, first \
                     difference at {first:?})",
                    ca.len(),
                    cb.len()
                ));
            }
            (ka, kb) if std::mem::discriminant(ka) != std::mem::discriminant(kb) => {
                out.push(format!(
                    "{p}: {a_name} has a {}, {b_name} a {}",
                    kind_name(ka),
                    kind_name(kb)
                ));
                continue;
            }
            (Kind::Symlink(ta), Kind::Symlink(tb)) if ta != tb => out.push(format!(
                "{p}: symlink target {a_name} {ta:?}, {b_name} {tb:?}"
            )),
            _ => {}
        }
        let mut field = |name: &str, x: String, y: String| {
            if x != y {
                out.push(format!("{p}: {name} {a_name} {x}, {b_name} {y}"));
            }
        };
        let is_dir = ea.kind == Kind::Dir;
        // Directory sizes are filesystem-specific (4096 on ext4, entry counts elsewhere).
        if !is_dir {
            field("size", ea.size.to_string(), eb.size.to_string());
        }
        if cmp.mode {
            field("mode", format!("{:o}", ea.mode), format!("{:o}", eb.mode));
        }
        if cmp.owner {
            field(
                "uid:gid",
                format!("{}:{}", ea.uid, ea.gid),
                format!("{}:{}", eb.uid, eb.gid),
            );
        }
        if cmp.nlink && (!is_dir || cmp.dir_nlink) {
            field("nlink", ea.nlink.to_string(), eb.nlink.to_string());
        }
        if cmp.xattrs {
            field(
                "xattrs",
                format!("{:?}", ea.xattrs),
                format!("{:?}", eb.xattrs),
            );
        }
        if cmp.mtime && !matches!(ea.kind, Kind::Symlink(_)) {
            field(
                "mtime",
                format!("{:?}", ea.mtime),
                format!("{:?}", eb.mtime),
            );
        }
    }
    for (path, eb) in b {
        if !a.contains_key(path) {
            out.push(format!(
                "{}: only in {b_name} ({})",
                path.display(),
                kind_name(&eb.kind)
            ));
        }
    }
    if cmp.hard_links {
        // Names sharing an inode must be the same groups in both trees.
        let groups = |t: &Tree| {
            let mut by_ino: std::collections::BTreeMap<u64, Vec<PathBuf>> = Default::default();
            for (path, e) in t {
                if !matches!(e.kind, Kind::Dir) {
                    by_ino.entry(e.ino).or_default().push(path.clone());
                }
            }
            let mut g: Vec<Vec<PathBuf>> = by_ino.into_values().filter(|v| v.len() > 1).collect();
            g.sort();
            g
        };
        let (ga, gb) = (groups(a), groups(b));
        if ga != gb {
            out.push(format!(
                "hard-link groups differ: {a_name} {ga:?}, {b_name} {gb:?}"
            ));
        }
    }
    out
}

/// Asserts that the trees match on the fields `cmp` selects, listing every difference.
#[track_caller]
pub fn assert_same_tree(actual: &Tree, expected: &Tree, cmp: Compare, what: &str) {
    let diffs = diff_trees(actual, expected, cmp, "actual", "expected");
    assert!(
        diffs.is_empty(),
        "{what}: {} difference(s):\n  {}",
        diffs.len(),
        diffs.join("\n  ")
    );
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::File(_) => "file",
        Kind::Dir => "directory",
        Kind::Symlink(_) => "symlink",
        Kind::Fifo => "fifo",
        Kind::Other => "special file",
    }
}
