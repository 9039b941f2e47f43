//! `walrusfs testnet`: a local storage network of node processes on 127.0.0.1 (or another local
//! address, e.g. a veth link's, so a network namespace standing for a second machine reaches
//! it).
//!
//! ```text
//! DIR/committee.toml   the committee (n, k, node addresses and keys)
//! DIR/client.key       a client key every node trusts
//! DIR/node-<i>/        node i's directory (node.toml, node.key, node.pid, node.log, store/)
//! ```

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use netcore::committee::{Committee, NodeInfo};
use netcore::identity::Identity;
use netcore::node::config::CommitteeSlot;
use netcore::node::{config, NodeConfig};

use crate::network::{connect, runtime, CLIENT_KEY_FILE, COMMITTEE_FILE};

/// How long `up` waits for every node to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `down` waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Default testnet size: n = 7 tolerates f = 2 faulty nodes with k = 3.
const DEFAULT_NODES: u16 = 7;

/// `walrusfs testnet` subcommands.
#[derive(clap::Subcommand)]
pub enum TestnetCommand {
    /// Create (if needed) and start the testnet; restarts stopped nodes with their data.
    #[command(
        after_help = "Examples:\n  walrusfs testnet up --dir .walrusfs/testnet\n  walrusfs testnet up --dir /tmp/tn --nodes 10"
    )]
    Up {
        /// Testnet directory.
        #[arg(long)]
        dir: PathBuf,
        /// Number of nodes (only when creating; default 7).
        #[arg(long)]
        nodes: Option<u16>,
        /// Local IP address the nodes listen on (only when creating).
        #[arg(long, default_value = "127.0.0.1")]
        listen_ip: std::net::IpAddr,
    },
    /// Stop every node (SIGTERM, then SIGKILL after a timeout).
    #[command(after_help = "Example:\n  walrusfs testnet down --dir .walrusfs/testnet")]
    Down {
        /// Testnet directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Show each node up/down with blobs and bytes stored.
    #[command(after_help = "Example:\n  walrusfs testnet status --dir .walrusfs/testnet")]
    Status {
        /// Testnet directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Runs the command.
pub fn run(cmd: TestnetCommand) -> anyhow::Result<()> {
    match cmd {
        TestnetCommand::Up {
            dir,
            nodes,
            listen_ip,
        } => up(&dir, nodes, listen_ip),
        TestnetCommand::Down { dir } => down(&dir),
        TestnetCommand::Status { dir } => status(&dir),
    }
}

fn node_dir(dir: &Path, index: u16) -> PathBuf {
    dir.join(format!("node-{index}"))
}

/// Creates the testnet in `dir` if it has no committee yet, then starts every stopped node and
/// waits until all answer.
pub fn up(dir: &Path, nodes: Option<u16>, listen_ip: std::net::IpAddr) -> anyhow::Result<()> {
    let committee_path = dir.join(COMMITTEE_FILE);
    let committee = if committee_path.exists() {
        let c = Committee::load(&committee_path)?;
        if let Some(n) = nodes.filter(|&n| n != c.n) {
            bail!(
                "testnet in {} has {} nodes, not {n}; use another --dir",
                dir.display(),
                c.n
            );
        }
        c
    } else {
        create(dir, nodes.unwrap_or(DEFAULT_NODES), listen_ip)?
    };
    let exe = std::env::current_exe().context("cannot find the walrusfs executable")?;
    let mut started = Vec::new();
    // The nodes share this machine's cores: each gets its share as threads (at least one).
    // More threads than that only pass each request between threads (on 2 cores, 7 nodes of
    // one thread each answered random 4 KiB reads ~10% sooner than with 2 each, and stored
    // and served 768 MiB as fast).
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = (cores / committee.nodes.len().max(1)).max(1);
    for node in &committee.nodes {
        let ndir = node_dir(dir, node.index);
        if running_pid(&ndir).is_some() {
            continue;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ndir.join("node.log"))
            .with_context(|| format!("cannot open log in {}", ndir.display()))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("node")
            .arg("--dir")
            .arg(&ndir)
            .arg("--threads")
            .arg(threads.to_string());
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Own process group: the node outlives this command and ignores its terminal's ^C.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().context("cannot start a node process")?;
        tracing::info!(node = node.index, pid = child.id(), "started node");
        started.push((node.index, child));
    }
    wait_healthy(dir, &mut started)?;
    println!(
        "testnet up: {} nodes (k = {}), committee {}",
        committee.n,
        committee.k,
        committee_path.display()
    );
    Ok(())
}

fn create(dir: &Path, n: u16, ip: std::net::IpAddr) -> anyhow::Result<Committee> {
    if n == 0 {
        bail!("a testnet needs at least one node");
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let client = Identity::load_or_generate(&dir.join(CLIENT_KEY_FILE))?;
    let mut infos = Vec::new();
    // Every port stays bound until all are picked, so no two nodes get the same one.
    let mut held = Vec::new();
    for index in 0..n {
        let ndir = node_dir(dir, index);
        std::fs::create_dir_all(&ndir)?;
        let id = Identity::load_or_generate(&ndir.join(config::KEY_FILE))?;
        let (address, socket) = free_udp_port(ip)?;
        held.push(socket);
        let mut config = NodeConfig::new(address, vec![client.public_key()]);
        config.committee = Some(CommitteeSlot {
            index,
            n,
            k: Committee::default_k(n),
        });
        config.save(&ndir)?;
        infos.push(NodeInfo {
            index,
            address,
            public_key: id.public_key(),
        });
    }
    let committee = Committee::new(Committee::default_k(n), infos)?;
    committee.save(&dir.join(COMMITTEE_FILE))?;
    drop(held);
    Ok(committee)
}

/// A free UDP address on `ip` for a node. The port is checked free now, and the node binds it
/// later, so it is taken from below the kernel's ephemeral range: a port the OS hands out for
/// port 0 (every QUIC client endpoint binds one) could be given to someone else in between,
/// and the node would then fail to start ("address in use"; seen once in a test run). Returns
/// the socket that holds the port, for the caller to keep until it has picked all it needs.
fn free_udp_port(
    ip: std::net::IpAddr,
) -> anyhow::Result<(std::net::SocketAddr, std::net::UdpSocket)> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.saturating_sub(1));
    if high > low {
        for _ in 0..200 {
            let port = rand::random_range(low..=high);
            if let Ok(sock) = std::net::UdpSocket::bind((ip, port)) {
                return Ok((sock.local_addr()?, sock));
            }
        }
    }
    let sock = std::net::UdpSocket::bind((ip, 0))
        .with_context(|| format!("cannot pick a free UDP port on {ip}"))?;
    Ok((sock.local_addr()?, sock))
}

/// Waits until every node answers. A node started here that exits meanwhile ends the wait at
/// once; either failure says which nodes and shows the end of their logs.
fn wait_healthy(dir: &Path, started: &mut [(u16, std::process::Child)]) -> anyhow::Result<()> {
    let rt = runtime()?;
    let client_dir = dir.to_owned();
    rt.block_on(async move {
        let client = connect(
            &client_dir.join(COMMITTEE_FILE),
            &client_dir.join(CLIENT_KEY_FILE),
        )?;
        let start = Instant::now();
        loop {
            let health = client.health().await;
            let down: Vec<_> = health
                .iter()
                .filter(|(_, r)| r.is_err())
                .map(|(i, _)| *i)
                .collect();
            if down.is_empty() {
                client.close(Duration::from_secs(1)).await;
                return Ok(());
            }
            let exited: Vec<_> = started
                .iter_mut()
                .filter_map(|(i, child)| Some((*i, child.try_wait().ok()??)))
                .collect();
            if !exited.is_empty() {
                let mut msg = String::new();
                for (i, status) in &exited {
                    msg.push_str(&format!(
                        "\nnode {i} exited ({status}); the end of its log:\n{}",
                        log_tail(&client_dir, *i)
                    ));
                }
                let which: Vec<_> = exited.iter().map(|(i, _)| *i).collect();
                bail!("nodes {which:?} exited while starting{msg}");
            }
            if start.elapsed() > START_TIMEOUT {
                let mut msg = String::new();
                for i in &down {
                    msg.push_str(&format!(
                        "\nthe end of node {i}'s log:\n{}",
                        log_tail(&client_dir, *i)
                    ));
                }
                bail!("nodes {down:?} did not come up within {START_TIMEOUT:?}{msg}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The last lines of node `index`'s log (or why there are none), each indented.
fn log_tail(dir: &Path, index: u16) -> String {
    const LINES: usize = 8;
    let path = node_dir(dir, index).join("node.log");
    match std::fs::read(&path) {
        Ok(log) => {
            let text = String::from_utf8_lossy(&log);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LINES)..];
            format!(
                "  {}: {} lines; last:\n    {}",
                path.display(),
                lines.len(),
                tail.join("\n    ")
            )
        }
        Err(e) => format!("  cannot read {}: {e}", path.display()),
    }
}

/// The pid in `ndir/node.pid` if that process is alive and is a walrusfs node (not a zombie,
/// not a recycled pid).
fn running_pid(ndir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(ndir.join(config::PID_FILE)).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    if !process_alive(pid) {
        return None;
    }
    // The pid file may be stale and its pid reused by another program: only a walrusfs
    // node, or any process started as `... node --dir NDIR` (the binary may be renamed), is
    // this node.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let named = String::from_utf8_lossy(&cmdline).contains("walrusfs");
    // The same directory however either side spelled it (relative to its working directory).
    let here = std::fs::canonicalize(ndir).ok();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let this_node = args.windows(2).any(|w| {
        let dir = Path::new(std::ffi::OsStr::from_bytes(w[1]));
        w[0] == b"--dir"
            && (dir == ndir
                || here.is_some()
                    && cwd
                        .as_ref()
                        .and_then(|cwd| std::fs::canonicalize(cwd.join(dir)).ok())
                        == here)
    });
    if named || this_node {
        Some(pid)
    } else {
        eprintln!(
            "{}: pid {pid} is running but is not a walrusfs node; leaving it alone",
            ndir.join(config::PID_FILE).display()
        );
        None
    }
}

/// Whether `pid` exists and is not a zombie.
fn process_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Field 3 (after the parenthesised command name) is the state; Z and X are dead.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Sends `sig` to `pid`; an error (the process exited meanwhile) is ignored.
fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// Stops every running node of the testnet in `dir`.
pub fn down(dir: &Path) -> anyhow::Result<()> {
    let committee = Committee::load(&dir.join(COMMITTEE_FILE))?;
    let mut pids = Vec::new();
    for node in &committee.nodes {
        if let Some(pid) = running_pid(&node_dir(dir, node.index)) {
            signal(pid, nix::sys::signal::Signal::SIGTERM);
            pids.push((node.index, pid));
        }
    }
    let start = Instant::now();
    while pids.iter().any(|(_, p)| process_alive(*p)) && start.elapsed() < STOP_TIMEOUT {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (index, pid) in &pids {
        if running_pid(&node_dir(dir, *index)) == Some(*pid) {
            eprintln!("node {index} (pid {pid}) ignored SIGTERM; killing it");
            signal(*pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(node_dir(dir, *index).join(config::PID_FILE));
    }
    println!("testnet down: stopped {} node(s)", pids.len());
    Ok(())
}

/// Prints each node's state, blobs and bytes.
pub fn status(dir: &Path) -> anyhow::Result<()> {
    let committee = Committee::load(&dir.join(COMMITTEE_FILE))?;
    let rt = runtime()?;
    let health = rt.block_on(async {
        let client = connect(&dir.join(COMMITTEE_FILE), &dir.join(CLIENT_KEY_FILE))?;
        // As long as a quorum read waits: a stopped node would cost the connect timeout.
        let health = client.health_quorum().await;
        client.close(Duration::from_secs(1)).await;
        anyhow::Ok(health)
    })?;
    println!(
        "{:<5} {:<22} {:<5} {:>8} {:>8} {:>14}",
        "node", "address", "state", "pid", "blobs", "bytes"
    );
    let mut up = 0;
    for ((index, h), node) in health.into_iter().zip(&committee.nodes) {
        let running = running_pid(&node_dir(dir, index));
        let pid = running.map_or("-".to_string(), |p| p.to_string());
        match h {
            Ok(h) => {
                up += 1;
                println!(
                    "{index:<5} {:<22} {:<5} {pid:>8} {:>8} {:>14}",
                    node.address, "up", h.blobs, h.sliver_bytes
                );
            }
            // Running but not answering within a quorum read's wait: slow, not known down.
            Err(netcore::client::NodeError::Timeout) if running.is_some() => println!(
                "{index:<5} {:<22} {:<5} {pid:>8} {:>8} {:>14}",
                node.address, "slow", "-", "-"
            ),
            Err(_) => println!(
                "{index:<5} {:<22} {:<5} {pid:>8} {:>8} {:>14}",
                node.address, "down", "-", "-"
            ),
        }
    }
    println!(
        "{up} of {} nodes up; reads need {}, writes need {}",
        committee.n,
        committee.k,
        committee.write_quorum()
    );
    Ok(())
}
