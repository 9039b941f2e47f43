//! `walrusfs mount`, `unmount` and `up`: serving the filesystem at a mountpoint.
//!
//! `mount` starts itself again in the background (`--foreground`) with its log in the state
//! directory, and returns once the kernel shows the mount live. The serving process writes
//! `STATE/mount.pid`; SIGTERM, `walrusfs unmount` and `fusermount3 -u` all end it the same
//! way: the kernel ends the FUSE session, the filesystem stores every buffered byte and makes
//! its index durable, then the process exits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use walrusfs::data::crypto::MasterKey;
use walrusfs::data::store::NetworkStore;
use walrusfs::fs::{Fs, FsConfig};
use walrusfs::fuse::FuseAdapter;
use walrusfs::index::{Index, IndexOptions};

use crate::network::NetworkArgs;

/// Default chunk size: big enough that per-blob costs (n slivers, n fsyncs) stay small next to
/// the transfer, small enough that a partial overwrite rewrites little.
const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;
/// How long `mount` waits for the background process to show the mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// FUSE worker threads: requests block on the network, so more threads than cores.
const FUSE_THREADS: usize = 8;
/// Name of the pid file in the state directory.
pub const PID_FILE: &str = "mount.pid";
/// Name of the log file in the state directory.
pub const LOG_FILE: &str = "mount.log";

/// Arguments of `walrusfs mount`.
#[derive(clap::Args, Debug, Clone)]
pub struct MountArgs {
    #[command(flatten)]
    net: NetworkArgs,
    /// State directory: index, master key, log (default with --testnet: DIR/fs).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Refuse all changes.
    #[arg(long)]
    read_only: bool,
    /// Serve in this process instead of in the background.
    #[arg(long)]
    foreground: bool,
    /// Chunk size in bytes for a new filesystem (fixed once created).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
    /// Memory for buffered writes, in MiB.
    #[arg(long, default_value_t = 256)]
    dirty_mib: u64,
    /// Memory for cached plaintext chunks, in MiB.
    #[arg(long, default_value_t = 256)]
    cache_mib: usize,
    /// Local disk for cached sealed chunks (ciphertext), in MiB; 0 disables it.
    #[arg(long, default_value_t = 1024)]
    disk_cache_mib: u64,
    /// Where to mount.
    mountpoint: PathBuf,
}

impl MountArgs {
    fn state_dir(&self) -> anyhow::Result<PathBuf> {
        match (&self.state, &self.net.testnet) {
            (Some(s), _) => Ok(s.clone()),
            (None, Some(t)) => Ok(t.join("fs")),
            (None, None) => bail!("--state DIR is required with --committee"),
        }
    }
}

/// Runs `walrusfs mount`.
pub fn mount(args: MountArgs) -> anyhow::Result<()> {
    let mountpoint = std::fs::canonicalize(&args.mountpoint)
        .with_context(|| format!("mountpoint {} is not usable", args.mountpoint.display()))?;
    if !mountpoint.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    if is_mounted(&mountpoint) {
        bail!(
            "{} is already a mountpoint (a stale one? try `fusermount3 -u {}`)",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    let state = args.state_dir()?;
    std::fs::create_dir_all(&state)
        .with_context(|| format!("cannot create {}", state.display()))?;
    let state = std::fs::canonicalize(&state)?;
    if args.foreground {
        serve(&args, &state, &mountpoint)
    } else {
        spawn_background(&args, &state, &mountpoint)
    }
}

fn spawn_background(args: &MountArgs, state: &Path, mountpoint: &Path) -> anyhow::Result<()> {
    let log_path = state.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg("--foreground")
        .arg("--state")
        .arg(state);
    if let Some(t) = &args.net.testnet {
        cmd.arg("--testnet").arg(t);
    }
    if let (Some(c), Some(k)) = (&args.net.committee, &args.net.key) {
        cmd.arg("--committee").arg(c).arg("--key").arg(k);
    }
    if args.read_only {
        cmd.arg("--read-only");
    }
    cmd.arg("--chunk-size").arg(args.chunk_size.to_string());
    cmd.arg("--dirty-mib").arg(args.dirty_mib.to_string());
    cmd.arg("--cache-mib").arg(args.cache_mib.to_string());
    cmd.arg("--disk-cache-mib")
        .arg(args.disk_cache_mib.to_string());
    cmd.arg(mountpoint);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("cannot start the mount process")?;
    let start = Instant::now();
    loop {
        if is_mounted(mountpoint) {
            println!(
                "mounted {} (log: {})",
                mountpoint.display(),
                log_path.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<_> = log.lines().rev().take(15).collect();
            let tail: Vec<_> = tail.into_iter().rev().collect();
            bail!("mount process exited ({status}):\n{}", tail.join("\n"));
        }
        if start.elapsed() > MOUNT_TIMEOUT {
            let _ = child.kill();
            bail!(
                "mount did not come up within {MOUNT_TIMEOUT:?}; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn serve(args: &MountArgs, state: &Path, mountpoint: &Path) -> anyhow::Result<()> {
    let (committee, key) = args.net.paths()?;
    // A new filesystem's root belongs to whoever mounts it.
    let (uid, gid) = (current_uid(), current_gid());
    let index = Index::open(
        &state.join("index"),
        IndexOptions {
            root_uid: uid,
            root_gid: gid,
            root_perm: 0o755,
            chunk_size: args.chunk_size,
        },
    )
    .with_context(|| format!("cannot open the index in {}", state.display()))?;
    let master = MasterKey::load_or_create(&state.join("master.key"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start async runtime")?;
    let client = {
        let _guard = rt.enter();
        crate::network::connect(&committee, &key)?
    };
    let store = Arc::new(NetworkStore::new(client.clone()));
    let cfg = FsConfig {
        read_only: args.read_only,
        dirty_budget: args.dirty_mib << 20,
        chunk_cache_bytes: args.cache_mib << 20,
        ..FsConfig::default()
    };
    let disk_cache = match args.disk_cache_mib {
        0 => None,
        mib => Some(
            cache::DiskCache::open(state.join("cache"), mib << 20)
                .context("cannot open the chunk cache")?,
        ),
    };
    let fs = Fs::with_disk_cache(index, store, master, rt.handle().clone(), cfg, disk_cache)?;

    let mut options = vec![
        fuser::MountOption::FSName(format!("walrusfs:{}", state.display())),
        fuser::MountOption::Subtype("walrusfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    if args.read_only {
        options.push(fuser::MountOption::RO);
    }
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
    let session = fuser::spawn_mount(FuseAdapter::new(fs), mountpoint, &config)
        .with_context(|| format!("cannot mount at {}", mountpoint.display()))?;
    let pid_path = state.join(PID_FILE);
    std::fs::write(&pid_path, format!("{}\n", std::process::id()))?;
    tracing::info!(mountpoint = %mountpoint.display(), "serving");

    // SIGTERM/SIGINT unmount through the kernel, which ends the session like `fusermount3 -u`.
    let mp = mountpoint.to_owned();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received: unmounting");
            let _ = tokio::task::spawn_blocking(move || kernel_unmount(&mp)).await;
        }
    });
    let result = session.join();
    // The session ended: the kernel has unmounted and `destroy` stored all buffered data.
    rt.block_on(client.close(Duration::from_secs(10)));
    let _ = std::fs::remove_file(&pid_path);
    tracing::info!("mount process exiting");
    result.context("FUSE session failed")
}

/// This process's uid: /proc/self belongs to it (no unsafe libc call needed).
fn current_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

/// This process's gid, like [`current_uid`].
fn current_gid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m))
        .unwrap_or(0)
}

/// Asks the kernel to unmount: `fusermount3 -u`, then lazily if the mount is busy.
fn kernel_unmount(mountpoint: &Path) -> anyhow::Result<()> {
    let ok = Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .status()
        .map(|s| s.success());
    if matches!(ok, Ok(true)) {
        return Ok(());
    }
    tracing::warn!("{} busy; unmounting lazily", mountpoint.display());
    let ok = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .status()?;
    if !ok.success() {
        bail!("fusermount3 -u {} failed", mountpoint.display());
    }
    Ok(())
}

/// One line of /proc/self/mountinfo that concerns us.
struct MountEntry {
    mountpoint: PathBuf,
    source: String,
}

fn mounts() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            let mountpoint = unescape(fields.get(4)?);
            let source = fields.get(sep + 2)?.to_string();
            Some(MountEntry {
                mountpoint: PathBuf::from(mountpoint),
                source: unescape(&source),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_mounted(mountpoint: &Path) -> bool {
    mounts().iter().any(|m| m.mountpoint == mountpoint)
}

/// Runs `walrusfs unmount MOUNTPOINT`: unmounts and waits until the mount process has stored
/// everything and exited.
pub fn unmount(mountpoint: &Path) -> anyhow::Result<()> {
    let mountpoint = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_owned());
    let Some(entry) = mounts().into_iter().find(|m| m.mountpoint == mountpoint) else {
        bail!("{} is not mounted", mountpoint.display());
    };
    let pid = entry
        .source
        .strip_prefix("walrusfs:")
        .map(|state| Path::new(state).join(PID_FILE))
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| s.trim().parse::<i32>().ok());
    kernel_unmount(&mountpoint)?;
    if let Some(pid) = pid {
        // The process exits once it has stored every buffered byte; that can take as long as
        // the uploads do.
        while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    println!("unmounted {}", mountpoint.display());
    Ok(())
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Arguments of `walrusfs up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Where to mount (created if missing).
    #[arg(default_value = "mnt")]
    mountpoint: PathBuf,
    /// State folder for the testnet and the filesystem.
    #[arg(long, default_value = ".walrusfs")]
    dir: PathBuf,
}

/// Runs `walrusfs up`: a local 7-node testnet, mounted.
pub fn up(args: UpArgs) -> anyhow::Result<()> {
    let testnet = args.dir.join("testnet");
    crate::testnet::up(&testnet, None)?;
    std::fs::create_dir_all(&args.mountpoint)
        .with_context(|| format!("cannot create {}", args.mountpoint.display()))?;
    let mp = std::fs::canonicalize(&args.mountpoint)?;
    if is_mounted(&mp) {
        println!("{} is already mounted", mp.display());
        return Ok(());
    }
    mount(MountArgs {
        net: NetworkArgs {
            testnet: Some(testnet.clone()),
            committee: None,
            key: None,
        },
        state: Some(args.dir.join("fs")),
        read_only: false,
        foreground: false,
        chunk_size: DEFAULT_CHUNK_SIZE,
        dirty_mib: 256,
        cache_mib: 256,
        disk_cache_mib: 1024,
        mountpoint: mp.clone(),
    })?;
    println!(
        "walrusfs is up: files in {} are encrypted, erasure-coded and stored on 7 local nodes.\n\
         stop with: walrusfs unmount {} && walrusfs testnet down --dir {}",
        mp.display(),
        mp.display(),
        testnet.display()
    );
    Ok(())
}
