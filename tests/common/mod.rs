//! Shared harness for end-to-end tests: a real testnet of node processes in a temp directory,
//! stopped (and, failing that, killed) when the test ends, pass or fail.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
#![allow(dead_code)]

pub mod archive;
pub mod mount;
pub mod quic;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `walrusfs` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_walrusfs")
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// A running local testnet.
pub struct Testnet {
    /// The testnet directory.
    pub dir: tempfile::TempDir,
    /// Number of nodes.
    pub n: u16,
}

impl Testnet {
    /// Creates and starts an `n`-node testnet.
    pub fn up(n: u16) -> Self {
        Self::up_on(n, "127.0.0.1")
    }

    /// Creates and starts an `n`-node testnet whose nodes listen on local address `ip`.
    pub fn up_on(n: u16, ip: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let net = Testnet { dir, n };
        net.cli_ok(&[
            "testnet",
            "up",
            "--dir",
            net.dir_str(),
            "--nodes",
            &n.to_string(),
            "--listen-ip",
            ip,
        ]);
        net
    }

    /// The testnet directory as a string argument.
    pub fn dir_str(&self) -> &str {
        self.dir.path().to_str().expect("utf-8 temp path")
    }

    /// Runs `walrusfs ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .output()
            .expect("cannot run walrusfs")
    }

    /// Runs `walrusfs ARGS`, asserting success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "walrusfs {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// `testnet up` on the existing directory: restarts stopped nodes.
    pub fn up_again(&self) {
        self.cli_ok(&["testnet", "up", "--dir", self.dir_str()]);
    }

    /// Stores `data` with `blob put`; returns the blob id.
    pub fn put_bytes(&self, work: &Path, data: &[u8]) -> String {
        let file = work.join(format!("put-{}", rand::random::<u64>()));
        std::fs::write(&file, data).expect("write input");
        let out = self.cli_ok(&[
            "blob",
            "put",
            "--testnet",
            self.dir_str(),
            file.to_str().unwrap(),
        ]);
        out.trim().to_owned()
    }

    /// Fetches a blob with `blob get`, asserting success.
    pub fn get_bytes(&self, work: &Path, id: &str) -> Vec<u8> {
        let file = work.join(format!("get-{}", rand::random::<u64>()));
        self.cli_ok(&[
            "blob",
            "get",
            "--testnet",
            self.dir_str(),
            id,
            "-o",
            file.to_str().unwrap(),
        ]);
        std::fs::read(&file).expect("read output")
    }

    /// Node `i`'s directory.
    pub fn node_dir(&self, i: u16) -> PathBuf {
        self.dir.path().join(format!("node-{i}"))
    }

    /// Path of node `i`'s stored sliver of blob `id`.
    pub fn sliver_path(&self, i: u16, id: &str) -> PathBuf {
        self.node_dir(i)
            .join("store/blobs")
            .join(&id[..2])
            .join(id)
            .join(format!("sliver-{i}"))
    }

    /// Waits until every node holds its sliver of `id` (puts return at n - f confirmations).
    pub fn wait_all_slivers(&self, id: &str) {
        let start = Instant::now();
        while (0..self.n).any(|i| !self.sliver_path(i, id).exists()) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "slivers never all stored"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every node reports at least `blobs` blobs.
    pub fn wait_all_nodes_hold(&self, blobs: u64) {
        let start = Instant::now();
        loop {
            let status = self.cli_ok(&["testnet", "status", "--dir", self.dir_str()]);
            let holding = status
                .lines()
                .filter(|l| l.contains(" up "))
                .filter(|l| {
                    l.split_whitespace()
                        .nth(4)
                        .and_then(|b| b.parse::<u64>().ok())
                        >= Some(blobs)
                })
                .count();
            if holding == usize::from(self.n) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nodes never caught up: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `testnet status` until its output satisfies `pred` (a loaded machine can make
    /// one health probe time out); panics with the last output after 30 s.
    pub fn wait_status(&self, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let status = self.cli_ok(&["testnet", "status", "--dir", self.dir_str()]);
            if pred(&status) {
                return status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "testnet status never as expected:\n{status}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sets `key = value` lines of node `i`'s `node.toml` and restarts the node.
    pub fn reconfigure(&self, i: u16, settings: &[(&str, &str)]) {
        let path = self.node_dir(i).join("node.toml");
        let mut text = std::fs::read_to_string(&path).expect("node.toml");
        for (key, value) in settings {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{key} =")))
                .unwrap_or_else(|| panic!("no {key} in {text}"))
                .to_owned();
            text = text.replace(&line, &format!("{key} = {value}"));
        }
        std::fs::write(&path, text).expect("write node.toml");
        self.kill(i);
        self.up_again();
    }

    /// Adds a `[faults]` table to node `i`'s `node.toml` (test builds of the node) and
    /// restarts it.
    pub fn misbehave(&self, i: u16, faults: &str) {
        let path = self.node_dir(i).join("node.toml");
        let mut text = std::fs::read_to_string(&path).expect("node.toml");
        text.push_str(&format!("\n[faults]\n{faults}\n"));
        std::fs::write(&path, text).expect("write node.toml");
        self.kill(i);
        self.up_again();
    }

    /// The pid of node `i` from its pid file.
    pub fn pid(&self, i: u16) -> Option<i32> {
        std::fs::read_to_string(self.node_dir(i).join("node.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// `kill -9` node `i` (a crash: no clean shutdown) and waits until it is gone.
    pub fn kill(&self, i: u16) {
        let pid = self.pid(i).expect("node has a pid file");
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        let start = Instant::now();
        while alive(pid) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "node {i} survived kill -9"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next()),
            Some("Z" | "X")
        ),
        Err(_) => false,
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = Command::new(bin())
            .args(["testnet", "down", "--dir", self.dir_str()])
            .output();
        // Belt and braces: never leave a node running after a test.
        for i in 0..self.n {
            if let Some(pid) = self.pid(i) {
                if alive(pid) {
                    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                }
            }
        }
    }
}
