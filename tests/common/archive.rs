//! Archives for end-to-end tests: a testnet, an archive key made by `walrusfs init` (sealed
//! under a passphrase), and any number of mounts of the archive, each with its own mountpoint
//! and state directory, unmounted (or killed) when dropped — also when the test panics.
//!
//! ```text
//! BASE/                 temp dir, mode 0755
//! BASE/archive.key      the archive key;  BASE/passphrase   its passphrase
//! BASE/<name>/mnt       a mount's mountpoint;  BASE/<name>/state   its --state
//! BASE/<name>/log-<k>   output of the k-th command run for that mount
//! ```
//!
//! A "second machine" is a network namespace with its own veth link to the nodes and its own
//! empty state directory ([`Machine`]); mounts made there run with `nsenter --net`, so their
//! FUSE mount is visible here while all their traffic crosses the namespace boundary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::mount::{is_mountpoint, lazy_unmount, run_with_timeout, signal, wait_until, watchdog};
use super::{alive, bin, Testnet};

/// Passphrase of test archives.
pub const PASSPHRASE: &str = "correct horse battery staple";
const MOUNT_TIMEOUT: Duration = Duration::from_secs(120);
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(120);

/// A testnet with one archive on it.
pub struct Archive {
    // Drop order: mounts are dropped by their owners first; then the nodes stop; then the dir.
    pub net: Testnet,
    pub base: tempfile::TempDir,
    counter: AtomicUsize,
}

impl Archive {
    /// A 7-node testnet on 127.0.0.1 with a fresh archive.
    pub fn new() -> Self {
        Self::on(Testnet::up(7))
    }

    /// A fresh archive on `net`.
    pub fn on(net: Testnet) -> Self {
        super::mount::require_fuse();
        super::mount::reap_dead_mounts();
        let base = tempfile::Builder::new()
            .prefix("walrusfs-test-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let a = Archive {
            net,
            base,
            counter: AtomicUsize::new(0),
        };
        std::fs::write(a.passphrase(), format!("{PASSPHRASE}\n")).unwrap();
        let out = a.cli(&[
            "init",
            "--committee",
            &a.committee(),
            "--client-key",
            &a.client_key(),
            "--key",
            a.key().to_str().unwrap(),
            "--passphrase-file",
            a.passphrase().to_str().unwrap(),
            "--kdf-mib",
            "8",
        ]);
        assert!(
            out.status.success(),
            "walrusfs init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        a
    }

    /// The archive key file.
    pub fn key(&self) -> PathBuf {
        self.base.path().join("archive.key")
    }

    /// The passphrase file.
    pub fn passphrase(&self) -> PathBuf {
        self.base.path().join("passphrase")
    }

    /// The committee file.
    pub fn committee(&self) -> String {
        self.net
            .dir
            .path()
            .join("committee.toml")
            .display()
            .to_string()
    }

    /// The client key every node trusts.
    pub fn client_key(&self) -> String {
        self.net.dir.path().join("client.key").display().to_string()
    }

    /// Runs `walrusfs ARGS` to completion (not for `mount`: see [`Archive::mount`]).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .args(args)
            .output()
            .expect("run walrusfs")
    }

    /// The network and key arguments every archive command takes.
    pub fn access(&self) -> Vec<String> {
        vec![
            "--committee".into(),
            self.committee(),
            "--client-key".into(),
            self.client_key(),
            "--key".into(),
            self.key().display().to_string(),
            "--passphrase-file".into(),
            self.passphrase().display().to_string(),
        ]
    }

    /// A new mount slot named `name` (a fresh mountpoint and an empty state directory).
    pub fn slot(&self, name: &str) -> Slot {
        let k = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = self.base.path().join(format!("{name}-{k}"));
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        Slot {
            dir,
            machine: None,
            commands: AtomicUsize::new(0),
        }
    }

    /// Mounts the archive in a new slot with `extra` arguments (e.g. `--read-only`); panics
    /// with the command's output if it fails.
    pub fn mount(&self, name: &str, extra: &[&str]) -> Slot {
        let slot = self.slot(name);
        slot.mount(self, extra).unwrap_or_else(|e| panic!("{e}"));
        slot
    }
}

impl Default for Archive {
    fn default() -> Self {
        Self::new()
    }
}

/// A mountpoint and state directory, mounted or not, on this machine or a [`Machine`].
pub struct Slot {
    dir: PathBuf,
    machine: Option<String>,
    commands: AtomicUsize,
}

impl Slot {
    /// The mountpoint.
    pub fn path(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    /// `path()` joined with `rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path().join(rel)
    }

    /// The state directory.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Mounts here from `machine`'s network namespace from now on.
    pub fn on_machine(mut self, machine: &Machine) -> Self {
        self.machine = Some(machine.netns_path());
        self
    }

    /// Runs `walrusfs mount` for this slot; `Err` holds the command's output.
    pub fn mount(&self, archive: &Archive, extra: &[&str]) -> Result<(), String> {
        let mut args: Vec<String> = vec!["mount".into()];
        args.extend(archive.access());
        args.extend(["--state".into(), self.state().display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(self.path().display().to_string());
        let (status, log) = self.run(&args, MOUNT_TIMEOUT);
        if !status.is_some_and(|s| s.success()) {
            return Err(format!("mount failed ({status:?}):\n{log}"));
        }
        if !is_mountpoint(&self.path()) {
            return Err(format!("mount exited 0 but nothing is mounted:\n{log}"));
        }
        watchdog::watch(&self.state());
        Ok(())
    }

    /// Runs `walrusfs ARGS` for this slot (in its machine's namespace), output in a log file.
    pub fn run(&self, args: &[String], timeout: Duration) -> (Option<ExitStatus>, String) {
        let k = self.commands.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("log-{k}"));
        let log = std::fs::File::create(&path).unwrap();
        let mut cmd = match &self.machine {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={ns}")).arg("--").arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let status = run_with_timeout(&mut cmd, timeout);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        (status, format!("$ walrusfs {}\n{text}", args.join(" ")))
    }

    /// The mount process's pid.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.state().join("mount.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `walrusfs unmount`, asserting success and that the process exited.
    pub fn unmount(&self) {
        let pid = self.pid();
        let (status, log) = self.run(
            &["unmount".into(), self.path().display().to_string()],
            UNMOUNT_TIMEOUT,
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "unmount failed:\n{log}\n{}",
            self.log()
        );
        if let Some(pid) = pid {
            assert!(
                wait_until(Duration::from_secs(30), || !alive(pid)).is_some(),
                "mount process {pid} still running after unmount"
            );
        }
        watchdog::unwatch(&self.state());
    }

    /// `walrusfs sync` on the mount.
    pub fn sync(&self) -> String {
        let (status, log) = self.run(
            &["sync".into(), self.path().display().to_string()],
            UNMOUNT_TIMEOUT,
        );
        assert!(status.is_some_and(|s| s.success()), "sync failed:\n{log}");
        log
    }

    /// `kill -9` of the mount process (a crash), then cleans up the dead FUSE mount.
    pub fn kill9(&self) {
        let pid = self.pid().expect("kill9: no pid file");
        signal(pid, libc::SIGKILL);
        assert!(wait_until(Duration::from_secs(30), || !alive(pid)).is_some());
        lazy_unmount(&self.path());
        watchdog::unwatch(&self.state());
    }

    /// Waits for the mount process to exit by itself (e.g. killed at a crash point).
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let Some(pid) = self.pid() else { return true };
        let gone = wait_until(timeout, || !alive(pid)).is_some();
        if gone {
            lazy_unmount(&self.path());
            watchdog::unwatch(&self.state());
        }
        gone
    }

    /// The mount process's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state().join("mount.log")).unwrap_or_default()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("--- {} mount.log\n{}", self.dir.display(), tail.join("\n"));
        }
        let pid = self.pid().filter(|&p| alive(p));
        if is_mountpoint(&self.path()) {
            let _ = self.run(
                &["unmount".into(), self.path().display().to_string()],
                UNMOUNT_TIMEOUT,
            );
        }
        if is_mountpoint(&self.path()) {
            lazy_unmount(&self.path());
        }
        if let Some(pid) = pid.filter(|&p| alive(p)) {
            signal(pid, libc::SIGKILL);
            let _ = wait_until(Duration::from_secs(30), || !alive(pid));
        }
        watchdog::unwatch(&self.state());
    }
}

/// A second machine: a network namespace linked to this one by a veth pair. Nodes of a
/// testnet made with [`Testnet::up_on`]`(n, &machine.host_ip())` are reachable from both.
pub struct Machine {
    name: String,
    host_if: String,
    subnet: u8,
}

impl Machine {
    /// Creates the namespace and its link (panics if network namespaces are unavailable:
    /// run as root).
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
        let subnet = ((std::process::id() * 7 + k) % 250) as u8 + 1;
        let name = format!("wfs-{}-{}", std::process::id(), rand::random::<u16>());
        let host_if = format!("wh{}", rand::random::<u16>());
        let ns_if = format!("wn{}", rand::random::<u16>());
        let m = Machine {
            name,
            host_if,
            subnet,
        };
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {} (network namespaces need root)",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ip(&["netns", "add", &m.name]);
        ip(&[
            "link", "add", &m.host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &m.name]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", m.host_ip()),
            "dev",
            &m.host_if,
        ]);
        ip(&["link", "set", &m.host_if, "up"]);
        let host_ip = format!("10.231.{}.2/24", m.subnet);
        ip(&["-n", &m.name, "addr", "add", &host_ip, "dev", &ns_if]);
        ip(&["-n", &m.name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &m.name, "link", "set", "lo", "up"]);
        m
    }

    /// The address on this machine's side of the link (nodes listen here).
    pub fn host_ip(&self) -> String {
        format!("10.231.{}.1", self.subnet)
    }

    /// The namespace's path, for `nsenter --net`.
    pub fn netns_path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// The network namespace inode of process `pid` (to check a mount really runs there).
    pub fn netns_of(pid: i32) -> String {
        std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}
