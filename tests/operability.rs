//! What an operator sees, end to end: `walrusfs status` on a mount during an outage and after,
//! Prometheus metrics scraped from a mount and from a node while traffic moves, `statfs`
//! reporting what the network can really take, and systemd readiness.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::{assert_same_bytes, wait_until, Mount, Options};
use common::{bin, random_bytes};

/// `walrusfs status --json` of the mount, parsed.
fn status(m: &Mount) -> serde_json::Value {
    let out = Command::new(bin())
        .args(["status", "--json"])
        .arg(m.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `walrusfs sync` on the mount; asserts it succeeds.
fn sync(m: &Mount) {
    let out = m.net().cli(&["sync", m.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP port on 127.0.0.1 nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET /metrics` from `port`.
fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of the sample `series` (name and labels exactly as exported), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of every sample of metric `name` whose labels contain each of `labels`.
fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A mount serving Prometheus metrics, and the port they are on.
fn mount_with_metrics() -> (Mount, u16) {
    let port = free_port();
    (Mount::with_options(metrics_on(port)), port)
}

/// Mount options serving Prometheus metrics on `port`.
fn metrics_on(port: u16) -> Options {
    let extra: &'static [&'static str] = Box::leak(Box::new([
        "--metrics",
        Box::leak(format!("127.0.0.1:{port}").into_boxed_str()) as &str,
    ]));
    Options {
        extra,
        ..Options::default()
    }
}

/// A node process started by a test (not by `testnet up`), killed when dropped.
struct NodeProcess(Child);

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn status_shows_data_waiting_through_an_outage_and_nodes_that_fail() {
    let m = Mount::with_options(Options {
        extra: &["--journal-wait-secs", "600"],
        ..Options::default()
    });
    let s = status(&m);
    assert_eq!(s["role"], "writer");
    assert!(s["lease_left_ms"].as_i64().unwrap() > 0, "{s}");
    assert_eq!(s["nodes"].as_array().unwrap().len(), 7);

    // Three of seven nodes down: nothing reaches n - f, so written data waits.
    for i in [0, 1, 2] {
        m.net().kill(i);
    }
    let data = random_bytes(300_000, 7);
    std::fs::write(m.join("waiting"), &data).unwrap();
    std::fs::write(m.join("waiting-too"), &data).unwrap();
    let mut last = serde_json::Value::Null;
    let seen = wait_until(Duration::from_secs(60), || {
        last = status(&m);
        let p = &last["pending"];
        let failing = last["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["state"] != "ok")
            .count();
        p["files"].as_u64() == Some(2)
            && p["chunks"].as_u64() >= Some(2)
            && p["journal_bytes"].as_u64() >= Some(600_000)
            && failing >= 3
            && !last["recent_errors"].as_array().unwrap().is_empty()
    });
    assert!(
        seen.is_some(),
        "status never showed the outage:\n{last:#}\n{}",
        m.logs()
    );
    // The human form names the same things.
    let text = Command::new(bin())
        .arg("status")
        .arg(m.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("2 files"), "{text}");
    assert!(text.contains("upload failed"), "{text}");

    // The nodes come back: everything is stored and nothing waits.
    m.net().up_again();
    sync(&m);
    let s = status(&m);
    assert_eq!(s["pending"]["chunks"], 0, "{s:#}");
    assert_eq!(s["pending"]["files"], 0, "{s:#}");
    assert_eq!(std::fs::read(m.join("waiting")).unwrap(), data);
}

#[test]
fn metrics_of_a_mount_and_a_node_move_with_traffic() {
    let (m, mount_port) = mount_with_metrics();
    // Node 0 serves again with metrics, started by hand.
    m.net().kill(0);
    let node_port = free_port();
    let node = NodeProcess(
        Command::new(bin())
            .args(["node", "--dir"])
            .arg(m.net().node_dir(0))
            .args(["--metrics", &format!("127.0.0.1:{node_port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(20), || TcpStream::connect((
            "127.0.0.1",
            node_port
        ))
        .is_ok())
        .is_some(),
        "the node's metrics endpoint never came up"
    );
    let before_mount = scrape(mount_port);
    let before_node = scrape(node_port);

    // Stores that wait for every node (the mount's own return at n - f, and it may still be
    // backing off from node 0's old process): a blob put and read with the CLI.
    let work = tempfile::tempdir().unwrap();
    let id = m.net().put_bytes(work.path(), &random_bytes(100_000, 3));
    assert_eq!(m.net().get_bytes(work.path(), &id).len(), 100_000);

    let data = random_bytes(2 << 20, 11);
    std::fs::write(m.join("f"), &data).unwrap();
    sync(&m);
    common::mount::evict_path(&m.join("f"));
    assert_eq!(std::fs::read(m.join("f")).unwrap(), data);

    let started = Instant::now();
    let mut after_mount = String::new();
    let mut after_node = String::new();
    let moved = wait_until(Duration::from_secs(20), || {
        after_mount = scrape(mount_port);
        after_node = scrape(node_port);
        sum(
            &after_node,
            "walrusfs_node_requests_total",
            &["op=\"store_sliver\"", "result=\"ok\""],
        ) >= 1.0
            && sample(&after_node, "walrusfs_node_blobs").unwrap_or(0.0) >= 1.0
    });
    assert!(moved.is_some(), "node metrics never moved:\n{after_node}");
    eprintln!("metrics settled in {:?}", started.elapsed());

    let grew = |before: &str, after: &str, name: &str, labels: &[&str]| {
        let (b, a) = (sum(before, name, labels), sum(after, name, labels));
        assert!(
            a > b,
            "{name}{labels:?} did not grow ({b} -> {a}):\n{after}"
        );
    };
    // Mount: FUSE operations, bytes, uploads and fetches, per-node requests.
    grew(
        &before_mount,
        &after_mount,
        "walrusfs_fuse_ops_total",
        &["op=\"write\""],
    );
    grew(
        &before_mount,
        &after_mount,
        "walrusfs_fuse_ops_total",
        &["op=\"read\""],
    );
    assert!(sum(&after_mount, "walrusfs_written_bytes_total", &[]) >= data.len() as f64);
    assert!(sum(&after_mount, "walrusfs_read_bytes_total", &[]) >= data.len() as f64);
    grew(
        &before_mount,
        &after_mount,
        "walrusfs_client_put_seconds_count",
        &[],
    );
    grew(
        &before_mount,
        &after_mount,
        "walrusfs_client_node_requests_total",
        &["node=\"1\"", "result=\"ok\""],
    );
    assert!(
        after_mount.contains("walrusfs_upload_pending_bytes"),
        "{after_mount}"
    );
    assert!(
        after_mount.contains("# HELP walrusfs_fuse_ops_total"),
        "{after_mount}"
    );
    // Node: requests by type and result, bytes in, what it holds, its free disk.
    grew(
        &before_node,
        &after_node,
        "walrusfs_node_received_bytes_total",
        &[],
    );
    assert!(sample(&after_node, "walrusfs_node_sliver_bytes").unwrap() > 0.0);
    assert!(sample(&after_node, "walrusfs_node_free_bytes").unwrap() > 0.0);
    drop(node);
}

#[test]
fn statfs_reports_what_the_network_can_take() {
    let m = Mount::new();
    let s = status(&m);
    let nodes: Vec<u64> = s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            n["free_bytes"]
                .as_u64()
                .expect("every node reported its room")
        })
        .collect();
    // Each node's room is its disk's free space less its 64 MiB reserve.
    let disk = nix::sys::statvfs::statvfs(&m.net().node_dir(0)).unwrap();
    #[allow(clippy::useless_conversion)]
    let disk_free = u64::from(disk.blocks_available()) * u64::from(disk.fragment_size());
    let reserve = 64u64 << 20;
    for room in &nodes {
        let expected = disk_free - reserve;
        assert!(
            room.abs_diff(expected) < expected / 50,
            "node room {room}, disk says {expected}"
        );
    }
    // What the mount reports: the 5 roomiest of 7, times k/n = 3/7, less what waits.
    let net = s["network_free_bytes"].as_u64().unwrap();
    let mut sorted = nodes.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let expected = (u128::from(sorted[4]) * 5 * 3 / 7) as u64;
    assert_eq!(net, expected, "{s:#}");
    let fs = nix::sys::statvfs::statvfs(m.path()).unwrap();
    #[allow(clippy::useless_conversion)]
    let avail = u64::from(fs.blocks_available()) * u64::from(fs.fragment_size());
    assert!(
        avail.abs_diff(net) < net / 50 + (1 << 20),
        "statfs says {avail} available, the network {net}"
    );
    assert_ne!(avail, 1 << 40, "still the fixed 1 TiB");
}

#[test]
fn a_foreground_mount_tells_systemd_when_it_is_ready_and_when_it_stops() {
    use std::os::unix::net::UnixDatagram;
    let m = Mount::new();
    m.unmount();
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = Command::new(bin())
        .args([
            "mount",
            "--foreground",
            "--testnet",
            m.net().dir_str(),
            "--state",
        ])
        .arg(m.state())
        .arg(m.path())
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 60 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    assert!(m.is_mounted(), "ready before the mount is live");
    // SIGTERM: the mount says it is stopping, unmounts and exits cleanly.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!m.is_mounted());
}

/// Removes the mount helper link a test installed, and unmounts what it left mounted.
struct HelperInstall {
    link: std::path::PathBuf,
    mountpoint: std::path::PathBuf,
}

impl Drop for HelperInstall {
    fn drop(&mut self) {
        if common::mount::is_mountpoint(&self.mountpoint) {
            common::mount::lazy_unmount(&self.mountpoint);
        }
        let _ = std::fs::remove_file(&self.link);
    }
}

#[test]
fn an_fstab_line_mounts_with_mount_a_and_unmounts_with_umount() {
    common::mount::require_fuse();
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: mount(8) runs helpers for root only");
        return;
    }
    // mount(8) looks for `mount.fuse.walrusfs` in /sbin; a link there to the binary under
    // test stands for `contrib/install`.
    let link = std::path::PathBuf::from("/sbin/mount.fuse.walrusfs");
    if let Ok(target) = std::fs::read_link(&link) {
        assert!(
            target.to_string_lossy().contains("walrusfs"),
            "{} exists and is not a walrusfs link",
            link.display()
        );
    }
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(bin(), &link).unwrap();
    let net = common::Testnet::up(7);
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let state = dir.path().join("state");
    std::fs::create_dir(&mnt).unwrap();
    let _cleanup = HelperInstall {
        link,
        mountpoint: mnt.clone(),
    };
    let fstab = dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a comment\nwalrusfs:{} {} fuse.walrusfs _netdev,nofail,x-systemd.automount,noatime,testnet={},cache_mib=32 0 0\n",
            state.display(),
            mnt.display(),
            net.dir_str()
        ),
    )
    .unwrap();
    let mount_all = || {
        let out = Command::new("mount")
            .args(["-a", "-T"])
            .arg(&fstab)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -a: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    mount_all();
    assert!(common::mount::is_mountpoint(&mnt), "mount -a did not mount");
    let data = random_bytes(500_000, 5);
    std::fs::write(mnt.join("f"), &data).unwrap();
    // mount -a again: mount(8) sees the archive mounted (same source, target and type).
    mount_all();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let count = mounts
        .lines()
        .filter(|l| l.contains(&*mnt.to_string_lossy()))
        .count();
    assert_eq!(count, 1, "mounted twice:\n{mounts}");
    assert!(
        mounts.contains("fuse.walrusfs"),
        "not of type fuse.walrusfs:\n{mounts}"
    );

    // umount: the mount process stores what waits, publishes and exits.
    let pid: i32 = std::fs::read_to_string(state.join("mount.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(60), || !common::alive(pid)).is_some(),
        "the mount process did not exit after umount"
    );
    let log = std::fs::read_to_string(state.join("mount.log")).unwrap();
    assert!(log.contains("lease released"), "{log}");

    // Mounted again by mountpoint alone, as `mount /srv/photos` would: the data is there.
    let out = Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), data);
    let out = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(
        out.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = std::fs::read_to_string(state.join("mount.pid"))
        .map(|p| p.trim().parse().unwrap_or(0))
        .unwrap_or(0);
    if pid > 0 {
        wait_until(Duration::from_secs(60), || !common::alive(pid));
    }
}

#[test]
fn a_node_log_that_is_a_file_stays_within_its_cap() {
    let net = common::Testnet::up(7);
    // Node 0 again, logging every request to a file capped at 20 kB.
    net.kill(0);
    let log = net.dir.path().join("node-0.log");
    let file = std::fs::File::create(&log).unwrap();
    let node = NodeProcess(
        Command::new(bin())
            .args(["node", "--dir"])
            .arg(net.node_dir(0))
            .env("RUST_LOG", "debug")
            .env("WALRUSFS_LOG_CAP_BYTES", "20000")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap(),
    );
    let work = tempfile::tempdir().unwrap();
    for i in 0..30 {
        let id = net.put_bytes(work.path(), &random_bytes(10_000, i));
        assert_eq!(net.get_bytes(work.path(), &id).len(), 10_000);
    }
    let rotated = log.with_extension("log.1");
    assert!(rotated.exists(), "never rotated");
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size <= 20_000 + 4096, "log grew to {size} bytes");
    assert!(std::fs::metadata(&rotated).unwrap().len() <= 20_000 + 4096);
    // And the node still logs to the fresh file.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("DEBUG") || text.contains("INFO"), "{text}");
    drop(node);
}

/// The subcommands a `--help` text lists (its "Commands:" section), `help` aside.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn every_command_has_an_example_in_its_help() {
    let mut todo = vec![Vec::<String>::new()];
    let mut checked = 0;
    while let Some(path) = todo.pop() {
        let out = Command::new(bin())
            .args(&path)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout).to_string();
        let subs = subcommands(&help);
        if subs.is_empty() {
            assert!(
                help.contains("Example"),
                "`walrusfs {} --help` has no example:\n{help}",
                path.join(" ")
            );
            checked += 1;
        }
        for s in subs {
            let mut p = path.clone();
            p.push(s);
            todo.push(p);
        }
    }
    assert!(checked >= 20, "only {checked} commands found");
}

#[test]
fn long_commands_show_progress_on_a_terminal_and_stay_quiet_otherwise() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no script(1) to give the command a terminal");
        return;
    }
    let net = common::Testnet::up(7);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("big");
    std::fs::write(&file, random_bytes(40 << 20, 8)).unwrap();
    // On a terminal (script(1) gives it one): a bar with rate and ETA.
    let cmd = format!(
        "{} blob put --testnet {} {}",
        bin(),
        net.dir_str(),
        file.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("storing") && shown.contains("eta"),
        "{shown:?}"
    );
    // Not on a terminal: the blob id on stdout, one summary line on stderr, no bar.
    let out = Command::new(bin())
        .args(["blob", "put", "--testnet", net.dir_str()])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("eta"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().len(), 64);
}

#[test]
fn the_background_mount_does_not_inherit_the_passphrase() {
    let m = Mount::new();
    m.unmount();
    let out = Command::new(bin())
        .args(["mount", "--testnet", m.net().dir_str(), "--state"])
        .arg(m.state())
        .arg(m.path())
        .env("WALRUSFS_PASSPHRASE", "correct horse battery staple")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = m.pid().expect("mount pid");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("WALRUSFS_PASSPHRASE"), "{environ}");
    assert!(!environ.contains("battery staple"));
}

#[test]
fn a_command_whose_reader_goes_away_ends_quietly() {
    let net = common::Testnet::up(4);
    let work = tempfile::tempdir().unwrap();
    let id = net.put_bytes(work.path(), &random_bytes(4 << 20, 12));
    // `head` reads a little and leaves; walrusfs's next write meets a closed pipe.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} blob get --testnet {} {id} -o - | head -c 10 > /dev/null; {} testnet status --dir {} | head -c 1 > /dev/null",
            bin(),
            net.dir_str(),
            bin(),
            net.dir_str()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

/// `ls -l`, `du` and `find -size` list a directory, then stat every entry.
/// The listing carries the attributes (READDIRPLUS), so those stats cost no round trip each:
/// before the mount asked for it, each was a lookup (`du` of 100,000 files: 4.4 s, now 0.8 s).
#[test]
fn a_listing_answers_the_stats_that_follow_it_without_a_request_per_entry() {
    const N: usize = 300;
    let (m, port) = mount_with_metrics();
    let dir = m.join("many");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..N {
        std::fs::write(dir.join(format!("f{i:03}")), vec![b'x'; i]).unwrap();
    }
    // Past the kernel's 1 s entry and attribute timeouts: every stat below would ask again.
    std::thread::sleep(Duration::from_millis(1_500));
    let per_entry_ops = |text: &str| {
        sum(text, "walrusfs_fuse_ops_total", &["op=\"lookup\""])
            + sum(text, "walrusfs_fuse_ops_total", &["op=\"getattr\""])
    };
    let before = scrape(port);
    let mut sizes = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        sizes += std::fs::symlink_metadata(entry.unwrap().path())
            .unwrap()
            .len();
    }
    let after = scrape(port);
    assert_eq!(
        sizes,
        (0..N as u64).sum::<u64>(),
        "sizes of the listed files"
    );
    let asked = per_entry_ops(&after) - per_entry_ops(&before);
    assert!(
        sum(&after, "walrusfs_fuse_ops_total", &["op=\"readdirplus\""]) > 0.0,
        "the kernel never asked for a listing with attributes:\n{after}"
    );
    assert!(
        asked < (N / 10) as f64,
        "{asked} lookups and getattrs for {N} stats after a listing"
    );
}

/// A symlink's target is kept by the kernel (`FUSE_CACHE_SYMLINKS`): paths resolved through it
/// again and again cost no readlink each, and the target read is the right one, also after the
/// link is replaced by another under the same name.
#[test]
fn symlink_targets_are_read_once_and_a_replaced_link_shows_its_new_target() {
    let (m, port) = mount_with_metrics();
    std::fs::write(m.join("target-a"), b"aaa").unwrap();
    std::fs::write(m.join("target-b"), b"bbbb").unwrap();
    std::os::unix::fs::symlink("target-a", m.join("link")).unwrap();
    let readlinks = |text: &str| sum(text, "walrusfs_fuse_ops_total", &["op=\"readlink\""]);
    let before = scrape(port);
    for _ in 0..50 {
        assert_eq!(std::fs::read(m.join("link")).unwrap(), b"aaa");
        assert_eq!(
            std::fs::read_link(m.join("link")).unwrap(),
            std::path::Path::new("target-a")
        );
    }
    let after = scrape(port);
    let asked = readlinks(&after) - readlinks(&before);
    assert!(
        asked <= 2.0,
        "{asked} readlinks for 100 uses of one symlink"
    );
    // Replaced: a new inode, whose target the kernel has not seen.
    std::os::unix::fs::symlink("target-b", m.join("link.new")).unwrap();
    std::fs::rename(m.join("link.new"), m.join("link")).unwrap();
    assert_eq!(std::fs::read(m.join("link")).unwrap(), b"bbbb");
    assert_eq!(
        std::fs::read_link(m.join("link")).unwrap(),
        std::path::Path::new("target-b")
    );
}

/// A read that seeks moves the 4 KiB sealed segment it needs (one or two 16 KiB granules of
/// one sliver, with their proof), not its chunk, nor the 64 KiB segments of indexes made
/// before format 4 (80-96 KiB per read): what the mount receives from the nodes over 64
/// random 4 KiB reads of a cold 16 MiB file stays under 40 KiB a read.
#[test]
fn a_seeking_read_moves_its_segment_not_its_chunk() {
    use std::os::unix::fs::FileExt;
    let (m, port) = mount_with_metrics();
    let data = random_bytes(16 << 20, 21);
    std::fs::write(m.join("f"), &data).unwrap();
    sync(&m);
    // Cold: a new mount process has nothing cached (the kernel's cache goes with the mount),
    // and its disk cache, which the write filled, is emptied.
    m.remount_cold_with(metrics_on(port));
    let before = scrape(port);
    let f = File::open(m.join("f")).unwrap();
    // As fio and databases do: no readahead, so each read reaches the mount as it was made.
    nix::fcntl::posix_fadvise(&f, 0, 0, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM).unwrap();
    const READS: u64 = 64;
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    let mut buf = vec![0u8; 4096];
    for _ in 0..READS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = (x % ((16 << 20) / 4096)) * 4096;
        f.read_exact_at(&mut buf, at).unwrap();
        assert!(buf == data[at as usize..][..4096], "read at {at}");
    }
    let after = scrape(port);
    let name = "walrusfs_client_received_bytes_total";
    let received = sum(&after, name, &[]) - sum(&before, name, &[]);
    let ranges = |t: &str| sum(t, "walrusfs_client_get_range_seconds_count", &[]);
    eprintln!(
        "{received} bytes received for {READS} reads ({} ranged)",
        ranges(&after) - ranges(&before)
    );
    assert!(
        ranges(&after) - ranges(&before) >= READS as f64 / 2.0,
        "the reads were not ranged:\n{after}"
    );
    assert!(
        received >= (READS * 4096) as f64 && received <= (READS * 40 * 1024) as f64,
        "{received} bytes received for {READS} reads of 4 KiB"
    );
}

/// Chunks a write stored are kept in the mount's disk cache: read back in a new mount process
/// (the kernel's cache gone with the old one), a 16 MiB file comes from the local disk, and
/// almost nothing from the nodes.
#[test]
fn a_file_read_back_after_a_remount_comes_from_the_disk_cache_its_write_filled() {
    let (m, port) = mount_with_metrics();
    let data = random_bytes(16 << 20, 23);
    std::fs::write(m.join("f"), &data).unwrap();
    sync(&m);
    // Until the journal lets go of the records (once the index saying they are stored is
    // durable), reads find them there: wait for that, so the read below has only the disk
    // cache and the nodes to go to.
    assert!(
        wait_until(Duration::from_secs(60), || m.journal_segments() == 0).is_some(),
        "the journal was never reclaimed"
    );
    m.remount_with(metrics_on(port));
    let before = scrape(port);
    assert_same_bytes(
        &std::fs::read(m.join("f")).unwrap(),
        &data,
        "f after a remount",
    );
    let hits = |t: &str| sum(t, "walrusfs_cache_hits_total", &["cache=\"disk\""]);
    // Each of the 4 chunks is kept unless the cache's writes were backed up when it was
    // stored (then it is skipped): at least most of them come from the disk. (The cache
    // counters are exported every 2 s.)
    let mut after = String::new();
    let counted = wait_until(Duration::from_secs(20), || {
        after = scrape(port);
        hits(&after) - hits(&before) >= 3.0
    });
    let name = "walrusfs_client_received_bytes_total";
    let received = sum(&after, name, &[]) - sum(&before, name, &[]);
    eprintln!(
        "{received} bytes received, {} disk cache hits",
        hits(&after) - hits(&before)
    );
    assert!(
        counted.is_some(),
        "the written chunks were not in the disk cache:\n{after}"
    );
    assert!(
        received <= (6 << 20) as f64,
        "{received} bytes fetched for a 16 MiB file written through this state directory"
    );
}

/// Small files written together share a pack; read back in a cold mount, in an order other
/// than the one they were written in (as `diff -r` or a sorted `find` reads), the first of each
/// pack costs a ranged read of its own bytes and the pack comes in behind it, and the others
/// are cut from it: the mount receives about the pack once, not once per file (each file used
/// to fetch the whole pack, so 300 files would have moved about 300 times their bytes).
#[test]
fn small_files_read_back_cold_move_their_pack_about_once() {
    let (m, port) = mount_with_metrics();
    const FILES: usize = 300;
    let files: Vec<Vec<u8>> = (0..FILES)
        .map(|i| random_bytes(3000 + i, 500 + i as u64))
        .collect();
    std::fs::create_dir(m.join("d")).unwrap();
    for (i, data) in files.iter().enumerate() {
        std::fs::write(m.join(format!("d/f{i:03}")), data).unwrap();
    }
    sync(&m);
    m.remount_with(metrics_on(port));
    let before = scrape(port);
    // Odd ones first, then even ones, each half backwards.
    let order = (0..FILES)
        .filter(|i| i % 2 == 1)
        .rev()
        .chain((0..FILES).filter(|i| i % 2 == 0).rev());
    for i in order {
        let got = std::fs::read(m.join(format!("d/f{i:03}"))).unwrap();
        assert!(got == files[i], "file {i}");
    }
    let hits = |t: &str| sum(t, "walrusfs_cache_hits_total", &["cache=\"pack\""]);
    // Cache counters reach the metrics every gauge tick (2 s).
    let mut after = scrape(port);
    wait_until(Duration::from_secs(20), || {
        after = scrape(port);
        hits(&after) - hits(&before) >= (FILES / 2) as f64
    })
    .unwrap_or_else(|| panic!("the files were not cut from their pack:\n{after}"));
    let name = "walrusfs_client_received_bytes_total";
    let received = sum(&after, name, &[]) - sum(&before, name, &[]);
    let written: usize = files.iter().map(Vec::len).sum();
    eprintln!(
        "{received} bytes received for {FILES} files of {written} bytes; {} pack cache hits",
        hits(&after) - hits(&before)
    );
    // The pack once (its k systematic slivers: its own size, with proofs and framing), and
    // the ranges of the files read while it was on its way; each file fetching the pack would
    // be some 300 times that.
    assert!(
        received <= 3.0 * written as f64,
        "{received} bytes received for {written} bytes of files"
    );
}
