//! `walrusfs mount`, `unmount` and `up`: serving the filesystem at a mountpoint.
//!
//! `mount` starts itself again in the background (`--foreground`) with its log in the state
//! directory, and returns once the kernel shows the mount live. The serving process writes
//! `STATE/mount.pid`; SIGTERM, `walrusfs unmount` and `fusermount3 -u` all end it the same
//! way: the kernel ends the FUSE session, the filesystem stores every buffered byte and makes
//! its index durable, then the process exits.

use std::ffi::OsStr;
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use walrusfs::archive::key::ArchiveKey;
use walrusfs::archive::replica::{Changed, Replica};
use walrusfs::archive::restore::Progress;
use walrusfs::archive::writer::{Writer, WriterConfig};
use walrusfs::archive::{ArchiveError, LEASE_DURATION};
use walrusfs::control::{self, Op, Response};
use walrusfs::data::store::NetworkStore;
use walrusfs::fs::{Fs, FsConfig, FsParts};
use walrusfs::fuse::{DevicePoll, FuseAdapter};
use walrusfs::index::IndexOptions;

use crate::keys::{archive_key, KeyArgs};
use crate::mountinfo::{is_mounted, mounts};
use crate::network::NetworkArgs;

/// Default chunk size: big enough that per-blob costs (n slivers, n fsyncs) stay small next to
/// the transfer, small enough that a partial overwrite rewrites little.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;
/// How long `mount` waits for the background process to show the mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(120);
/// Most FUSE worker threads. A request that may wait for the network (a read of data not held
/// locally, a write needing such data, an fsync, a close or write waiting for journal room) is
/// handed to a thread of its own, so FUSE's threads only do local work: one per core (at least
/// two) keeps them busy, and more only add context switches (with eight on two cores, `tar -x`
/// and `rsync -a` of small files ran 10-18% slower).
const FUSE_THREADS_MAX: usize = 8;
/// Name of the pid file in the state directory.
pub const PID_FILE: &str = "mount.pid";
/// Name of the log file in the state directory.
pub const LOG_FILE: &str = "mount.log";
/// Name of the local index in the state directory.
pub(crate) const INDEX_DIR: &str = "index";
/// Name of the write-back journal in the state directory.
pub(crate) const JOURNAL_DIR: &str = "journal";
/// What the state directory of walrusfs versions before archives held; their index (format 1)
/// is not converted.
const LEGACY_KEY_FILE: &str = "master.key";
/// How long after an fsync the writer waits for more before publishing (fsyncs come in bursts).
const PUBLISH_DEBOUNCE: Duration = Duration::from_millis(500);

/// Arguments of `walrusfs mount`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  walrusfs mount --testnet .walrusfs/testnet mnt\n  walrusfs mount --committee committee.toml --client-key client.key --key archive.key ~/archive\n  walrusfs mount --committee committee.toml --client-key client.key --key archive.key --read-only ~/archive-ro"
)]
pub struct MountArgs {
    #[command(flatten)]
    net: NetworkArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// State directory: local index, caches, log (a cache of the archive; default with
    /// --testnet: DIR/fs, else ~/.local/state/walrusfs/ARCHIVE).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Refuse all changes and follow the archive's writer.
    #[arg(long)]
    read_only: bool,
    /// Mount snapshot NAME (read-only).
    #[arg(long, value_name = "NAME")]
    snapshot: Option<String>,
    /// Claim the writer lease of a writer that stopped without unmounting (its unpublished
    /// changes are lost).
    #[arg(long)]
    take_over: bool,
    /// Serve in this process instead of in the background.
    #[arg(long)]
    foreground: bool,
    /// Chunk size in bytes for a testnet archive made by this mount.
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
    /// `close` waits until the file's data is stored on the network, as fsync does (default:
    /// close returns once the data is in the state directory's crash-safe journal).
    #[arg(long)]
    sync_close: bool,
    /// Memory for written data not yet sealed into the journal, in MiB; uploads in flight
    /// take at most as much again (one per 16 MiB of it, from 1 to 8).
    #[arg(long, default_value_t = 256)]
    dirty_mib: u64,
    /// Disk in the state directory for written data not yet stored on the network, in MiB;
    /// when it is full, writers wait (nothing else does).
    #[arg(long, default_value_t = 2048)]
    journal_mib: u64,
    /// Seconds a writer waits for journal room while the network stores nothing, before its
    /// write fails with EIO.
    #[arg(long, default_value_t = 300)]
    journal_wait_secs: u64,
    /// Memory for cached plaintext chunks, in MiB.
    #[arg(long, default_value_t = 256)]
    cache_mib: usize,
    /// Local disk for cached sealed chunks (ciphertext), in MiB; 0 disables it.
    #[arg(long, default_value_t = 1024)]
    disk_cache_mib: u64,
    /// Seconds between background publishes of the index (a writer also publishes soon after
    /// each fsync, and at `walrusfs sync` and unmount).
    #[arg(long, default_value_t = 10)]
    publish_interval: u64,
    /// Seconds between checks for a newly published version (read-only mounts).
    #[arg(long, default_value_t = 10)]
    follow_interval: u64,
    /// Seconds a writer lease lasts without renewal.
    #[arg(long, default_value_t = LEASE_DURATION.as_secs(), hide = true)]
    lease_secs: u64,
    /// Seconds an unreferenced blob waits, once its drop is published, before it is deleted.
    #[arg(long, default_value_t = 60, hide = true)]
    gc_grace_secs: u64,
    /// Seconds between background repairs of blobs whose reads met a missing or damaged
    /// sliver on some node.
    #[arg(long, default_value_t = 60, hide = true)]
    repair_interval_secs: u64,
    /// Microseconds a FUSE thread keeps watching for the next request after answering one,
    /// before it sleeps (one thread at a time; it yields the CPU to anything else that wants
    /// it). A program making one call after another (tar, rsync, git) then finds a running
    /// thread instead of waiting for one to be woken, which on a virtual machine can cost as
    /// much as the call itself. 0 turns it off; it is off on a single CPU.
    #[arg(long, default_value_t = 50)]
    fuse_poll_us: u64,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464), at /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Read the unlocked archive secret from stdin (the background mount process).
    #[arg(long, hide = true)]
    secret_stdin: bool,
    /// Where to mount.
    mountpoint: PathBuf,
}

/// Whether and how a mount writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Writer,
    Follower,
    Snapshot(String),
}

impl MountArgs {
    fn mode(&self) -> Mode {
        match (&self.snapshot, self.read_only) {
            (Some(name), _) => Mode::Snapshot(name.clone()),
            (None, true) => Mode::Follower,
            (None, false) => Mode::Writer,
        }
    }

    fn state_dir(&self, key: &ArchiveKey) -> anyhow::Result<PathBuf> {
        let suffix = match self.mode() {
            Mode::Writer => String::new(),
            Mode::Follower => "-ro".into(),
            Mode::Snapshot(name) => format!("-snapshot-{}", sanitize(&name)),
        };
        state_dir(
            self.state.as_deref(),
            self.net.testnet.as_deref(),
            key,
            &suffix,
        )
    }
}

/// The state directory: `state` if given, else `TESTNET/fs<suffix>`, else
/// `$XDG_STATE_HOME/walrusfs/<archive id prefix><suffix>` (`~/.local/state` by default).
pub(crate) fn state_dir(
    state: Option<&Path>,
    testnet: Option<&Path>,
    key: &ArchiveKey,
    suffix: &str,
) -> anyhow::Result<PathBuf> {
    match (state, testnet) {
        (Some(s), _) => Ok(s.to_owned()),
        (None, Some(t)) => Ok(t.join(format!("fs{suffix}"))),
        (None, None) => {
            let base = std::env::var_os("XDG_STATE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
                .context("no --state given and neither XDG_STATE_HOME nor HOME is set")?;
            let id = key.archive_id().to_string();
            Ok(base.join("walrusfs").join(format!("{}{suffix}", &id[..16])))
        }
    }
}

/// A snapshot name as a file name part.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
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
    let (key, testnet_key) = if args.secret_stdin {
        (read_secret()?, false)
    } else {
        let (key, _) = archive_key(&args.key, &args.net)?;
        (key, args.key.key.is_none())
    };
    let state = args.state_dir(&key)?;
    make_private_dir(&state)?;
    let state = std::fs::canonicalize(&state)?;
    refuse_legacy_state(&state)?;
    if args.foreground {
        serve(&args, &state, &mountpoint, key, testnet_key)
    } else {
        prefetch(&args, &state, &key, testnet_key)?;
        spawn_background(&args, &state, &mountpoint, &key)
    }
}

/// Creates `dir` (and parents) readable by its owner only: it holds the index (names, sizes).
fn make_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    Ok(())
}

fn refuse_legacy_state(state: &Path) -> anyhow::Result<()> {
    if state.join(LEGACY_KEY_FILE).exists() {
        bail!(
            "{} was made by a walrusfs version before archives (it holds {LEGACY_KEY_FILE}, and an index this version does not read). \
             Its data is encrypted under that per-machine key, not an archive key, so it cannot be converted: \
             copy its files out with the version that made it and into a new archive, or mount with another --state",
            state.display()
        );
    }
    Ok(())
}

fn read_secret() -> anyhow::Result<ArchiveKey> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the archive secret from the parent process")?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(line.trim(), &mut secret)
        .context("malformed archive secret from the parent process")?;
    Ok(ArchiveKey::from_secret(secret))
}

/// Before the mount process starts: a testnet archive is created if missing, and an empty
/// state directory is filled from the network here, with a progress bar on the terminal.
fn prefetch(
    args: &MountArgs,
    state: &Path,
    key: &ArchiveKey,
    testnet_key: bool,
) -> anyhow::Result<()> {
    let rt = crate::network::runtime()?;
    rt.block_on(async {
        let client = args.net.client()?;
        let store = Arc::new(NetworkStore::new(client.clone()));
        let r = async {
            let read_only = args.mode() != Mode::Writer;
            // One quorum read of the root (with nodes gone, each waits a hedge delay).
            let (latest, degraded) = walrusfs::archive::latest_root_for(&*store, key, read_only)
                .await
                .map_err(|e| writer_hint(e, read_only))?;
            // Said here, on the terminal (restoring a fresh index below says it itself).
            if let (Some((version, _)), true) = (&latest, degraded) {
                if state.join(INDEX_DIR).exists() {
                    walrusfs::archive::warn_degraded_root(*version);
                }
            }
            if latest.is_none() {
                if !testnet_key {
                    return Err(ArchiveError::NoArchive {
                        archive: key.archive_id(),
                    }
                    .into());
                }
                create_testnet_archive(&store, key, args.chunk_size).await?;
            }
            if !state.join(INDEX_DIR).exists() {
                let snapshot = match args.mode() {
                    Mode::Snapshot(name) => Some(name),
                    _ => None,
                };
                let bar = Bar::new("restoring the index");
                let replica = Replica::open(
                    store.clone(),
                    key.clone(),
                    &state.join(INDEX_DIR),
                    snapshot.as_deref(),
                    read_only,
                    root_options(args.chunk_size),
                    &bar,
                )
                .await?;
                bar.finish();
                drop(replica);
            }
            anyhow::Ok(())
        }
        .await;
        client.close(Duration::from_secs(5)).await;
        r
    })
}

/// `e`, and for a writer whose root read lacked a quorum, what a reader can still do.
fn writer_hint(e: ArchiveError, read_only: bool) -> anyhow::Error {
    if matches!(e, ArchiveError::TooFewAnswered(_)) && !read_only {
        anyhow::anyhow!(
            "{e}\n(a writer needs n - f nodes; `--read-only` mounts the archive as the nodes \
             that answer hold it, with k of them)"
        )
    } else {
        e.into()
    }
}

/// Creates a testnet's archive on first use.
async fn ensure_archive(
    store: &NetworkStore,
    key: &ArchiveKey,
    testnet_key: bool,
    chunk_size: u32,
) -> anyhow::Result<()> {
    if testnet_key && walrusfs::archive::latest_root(store, key).await?.is_none() {
        create_testnet_archive(store, key, chunk_size).await?;
    }
    Ok(())
}

async fn create_testnet_archive(
    store: &NetworkStore,
    key: &ArchiveKey,
    chunk_size: u32,
) -> anyhow::Result<()> {
    walrusfs::archive::init(store, key, chunk_size).await?;
    tracing::info!(archive = %key.archive_id(), "created the testnet's archive");
    Ok(())
}

fn root_options(chunk_size: u32) -> IndexOptions {
    IndexOptions {
        root_uid: current_uid(),
        root_gid: current_gid(),
        root_perm: 0o755,
        chunk_size,
    }
}

/// A progress bar on stderr, shown only on a terminal and only once the work has taken more
/// than a moment.
pub struct Bar {
    bar: indicatif::ProgressBar,
    started: Instant,
    shown: std::sync::atomic::AtomicBool,
}

impl Bar {
    /// A hidden bar for `what`.
    pub fn new(what: &str) -> Self {
        let bar = indicatif::ProgressBar::hidden();
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg}: {bytes} {binary_bytes_per_sec} {elapsed}",
        ) {
            bar.set_style(style);
        }
        bar.set_message(what.to_owned());
        Bar {
            bar,
            started: Instant::now(),
            shown: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn advance(&self, bytes: u64) {
        use std::sync::atomic::Ordering;
        if !self.shown.load(Ordering::Relaxed)
            && self.started.elapsed() > Duration::from_secs(1)
            && std::io::IsTerminal::is_terminal(&std::io::stderr())
        {
            self.shown.store(true, Ordering::Relaxed);
            self.bar
                .set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        self.bar.inc(bytes);
    }
}

fn spawn_background(
    args: &MountArgs,
    state: &Path,
    mountpoint: &Path,
    key: &ArchiveKey,
) -> anyhow::Result<()> {
    let log_path = state.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg("--foreground")
        .arg("--secret-stdin")
        .arg("--state")
        .arg(state);
    if let Some(t) = &args.net.testnet {
        cmd.arg("--testnet").arg(t);
    }
    if let (Some(c), Some(k)) = (&args.net.committee, &args.net.client_key) {
        cmd.arg("--committee").arg(c).arg("--client-key").arg(k);
    }
    if args.read_only {
        cmd.arg("--read-only");
    }
    if let Some(s) = &args.snapshot {
        cmd.arg("--snapshot").arg(s);
    }
    if args.take_over {
        cmd.arg("--take-over");
    }
    if args.sync_close {
        cmd.arg("--sync-close");
    }
    if let Some(addr) = args.metrics {
        cmd.arg("--metrics").arg(addr.to_string());
    }
    for (flag, value) in [
        ("--chunk-size", args.chunk_size.to_string()),
        ("--dirty-mib", args.dirty_mib.to_string()),
        ("--journal-mib", args.journal_mib.to_string()),
        ("--journal-wait-secs", args.journal_wait_secs.to_string()),
        ("--cache-mib", args.cache_mib.to_string()),
        ("--disk-cache-mib", args.disk_cache_mib.to_string()),
        ("--fuse-poll-us", args.fuse_poll_us.to_string()),
        ("--publish-interval", args.publish_interval.to_string()),
        ("--follow-interval", args.follow_interval.to_string()),
        ("--lease-secs", args.lease_secs.to_string()),
        (
            "--connect-timeout-secs",
            args.net.connect_timeout_secs.to_string(),
        ),
        ("--gc-grace-secs", args.gc_grace_secs.to_string()),
        (
            "--repair-interval-secs",
            args.repair_interval_secs.to_string(),
        ),
    ] {
        cmd.arg(flag).arg(value);
    }
    cmd.arg(mountpoint);
    // The secret goes over the pipe below; a passphrase in the environment has done its job
    // and must not live on in a long-running process's /proc/PID/environ.
    cmd.env_remove(crate::keys::PASSPHRASE_ENV);
    cmd.stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().context("cannot start the mount process")?;
    // The unlocked secret goes over a pipe, never the command line or the environment.
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(format!("{}\n", hex::encode(key.secret())).as_bytes())?;
    }
    let start = Instant::now();
    let pid_path = state.join(PID_FILE);
    let child_pid = child.id().to_string();
    let ready = || {
        // The mount process writes its pid once it is serving, with its stop signals handled
        // (a pid file left by an earlier, killed mount names another process).
        std::fs::read_to_string(&pid_path).is_ok_and(|p| p.trim() == child_pid)
    };
    loop {
        if is_mounted(mountpoint) && ready() {
            println!(
                "mounted {} (log: {})",
                mountpoint.display(),
                log_path.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read(&log_path).unwrap_or_default();
            let log = String::from_utf8_lossy(log.get(log_start as usize..).unwrap_or_default());
            // The mount process prints its fatal error last; show that, not the whole log.
            let error = log
                .lines()
                .rev()
                .find(|l| l.starts_with("walrusfs: error:"))
                .map(|l| l.trim_start_matches("walrusfs: error: ").to_owned());
            match error {
                Some(e) => bail!("{e}"),
                None => {
                    let tail: Vec<_> = log.lines().rev().take(15).collect();
                    let tail: Vec<_> = tail.into_iter().rev().collect();
                    bail!("mount process exited ({status}):\n{}", tail.join("\n"));
                }
            }
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

/// The archive side of a mount: the writer, or a replica (following, or a snapshot).
enum Side {
    Writer(Arc<Writer<NetworkStore>>),
    Replica(Arc<Replica<NetworkStore>>, bool),
}

fn serve(
    args: &MountArgs,
    state: &Path,
    mountpoint: &Path,
    key: ArchiveKey,
    testnet_key: bool,
) -> anyhow::Result<()> {
    let (committee, client_key) = args.net.paths()?;
    walrusfs::faults::arm_from(state);
    // The runtime's threads run QUIC (the connections to the nodes); sealing, coding and
    // hashing run on its blocking threads, and FUSE's requests on FUSE's. Half the cores:
    // on 2 cores one runtime thread answered random 4 KiB reads 10-13% sooner than two (a
    // request then wakes no second runtime thread) and wrote and read 768 MiB as fast.
    let workers = (std::thread::available_parallelism().map_or(2, usize::from) / 2).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start async runtime")?;
    let client = {
        let _guard = rt.enter();
        if let Some(addr) = args.metrics {
            crate::telemetry::serve_metrics(addr)?;
        }
        // Slivers in flight follow the dirty budget (uploads in flight hold at most as much
        // again, coded n / k times over); freed ones kept for the next blobs, a quarter of it.
        let config = netcore::client::ClientConfig {
            sliver_pool_bytes: usize::try_from((args.dirty_mib << 20) / 4).unwrap_or(usize::MAX),
            ..args.net.client_config()
        };
        crate::network::connect_with(&committee, &client_key, config)?
    };
    let store = Arc::new(NetworkStore::new(client.clone()));
    let index_dir = state.join(INDEX_DIR);
    let mode = args.mode();
    let side = rt.block_on(async {
        ensure_archive(&store, &key, testnet_key, args.chunk_size).await?;
        let side = match &mode {
            Mode::Writer => {
                let cfg = WriterConfig {
                    take_over: args.take_over,
                    lease: Duration::from_secs(args.lease_secs.max(3)),
                };
                let writer = Writer::open(
                    store.clone(),
                    key.clone(),
                    &index_dir,
                    root_options(args.chunk_size),
                    cfg,
                )
                .await
                .map_err(|e| writer_hint(e, false))?;
                Side::Writer(Arc::new(writer))
            }
            Mode::Follower | Mode::Snapshot(_) => {
                let snapshot = match &mode {
                    Mode::Snapshot(name) => Some(name.as_str()),
                    _ => None,
                };
                let replica = Replica::open(
                    store.clone(),
                    key.clone(),
                    &index_dir,
                    snapshot,
                    true,
                    root_options(args.chunk_size),
                    &walrusfs::archive::restore::Quiet,
                )
                .await?;
                Side::Replica(Arc::new(replica), snapshot.is_none())
            }
        };
        anyhow::Ok(side)
    })?;
    let index = match &side {
        Side::Writer(w) => w.index().clone(),
        Side::Replica(r, _) => r.index().clone(),
    };
    let read_only = mode != Mode::Writer;
    let cfg = FsConfig {
        read_only,
        local_only: false,
        sync_close: args.sync_close,
        dirty_budget: args.dirty_mib << 20,
        journal_bytes: args.journal_mib << 20,
        journal_wait: Duration::from_secs(args.journal_wait_secs),
        chunk_cache_bytes: args.cache_mib << 20,
        gc_grace: Duration::from_secs(args.gc_grace_secs),
        upload_concurrency: upload_concurrency(args.dirty_mib),
        ..FsConfig::default()
    };
    let disk_cache = match args.disk_cache_mib {
        0 => None,
        mib => Some(
            cache::DiskCache::open_unsummed(state.join("cache"), mib << 20)
                .context("cannot open the chunk cache")?,
        ),
    };
    let fs = Fs::start(
        FsParts {
            index,
            store,
            key: key.data_key(),
            rt: rt.handle().clone(),
            cfg,
            disk_cache,
        },
        &state.join(JOURNAL_DIR),
    )?;

    // What the network can take, for statfs: asked before the first statfs can come.
    let space = Arc::new(crate::telemetry::NetSpace::default());
    fs.set_network_free(rt.block_on(space.poll(&client)));
    let clock = Arc::new(crate::telemetry::Clock::new());

    let mut options = vec![
        fuser::MountOption::FSName(format!("walrusfs:{}", state.display())),
        fuser::MountOption::Subtype("walrusfs".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoAtime,
    ];
    if read_only {
        options.push(fuser::MountOption::RO);
    }
    if nix::unistd::Uid::effective().is_root() {
        // fuser mounts directly as root and passes the subtype only to fusermount3 (used
        // otherwise): hand it to the kernel too, so the mount's type is fuse.walrusfs as an
        // fstab line of that type expects.
        options.push(fuser::MountOption::CUSTOM("subtype=walrusfs".into()));
    }
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.acl = fuser::SessionACL::All;
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    config.n_threads = Some(cores.clamp(2, FUSE_THREADS_MAX));
    config.clone_fd = true;
    // Watching the device only pays where another CPU can take the next request; on one,
    // the watcher would stand in the requester's way.
    let poll_window = if cores > 1 {
        Duration::from_micros(args.fuse_poll_us)
    } else {
        Duration::ZERO
    };
    let poll = Arc::new(DevicePoll::new(poll_window));
    let session = fuser::Session::new(
        FuseAdapter::new(fs.clone(), poll.clone()),
        mountpoint,
        &config,
    )
    .with_context(|| format!("cannot mount at {}", mountpoint.display()))?;
    poll.attach(
        std::os::fd::AsFd::as_fd(&session)
            .try_clone_to_owned()
            .context("cannot duplicate the FUSE device's descriptor")?,
    );
    let session = session
        .spawn()
        .context("cannot start the FUSE session's threads")?;
    let notifier = session.notifier();
    let pid_path = state.join(PID_FILE);
    tracing::info!(mountpoint = %mountpoint.display(), archive = %key.archive_id(), ?mode, "serving");

    // Background work of the archive side, stopped when the session ends.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let background = match &side {
        Side::Writer(w) => rt.spawn(publisher(
            w.clone(),
            fs.clone(),
            Duration::from_secs(args.publish_interval.max(1)),
            stop_rx.clone(),
        )),
        Side::Replica(r, true) => rt.spawn(follower(
            r.clone(),
            notifier,
            Duration::from_secs(args.follow_interval.max(1)),
            stop_rx.clone(),
        )),
        Side::Replica(_, false) => rt.spawn(async {}),
    };
    let listener = {
        let _guard = rt.enter();
        control::bind(state).context("cannot create the control socket")?
    };
    let view = View {
        client: client.clone(),
        space: space.clone(),
        clock: clock.clone(),
    };
    let control_task = rt.spawn(control::serve(listener, handler(&side, &fs, &key, view)));
    let gauges_task = rt.spawn(crate::telemetry::mount_gauges(
        fs.clone(),
        client.clone(),
        space,
        clock,
        stop_rx.clone(),
    ));

    let healer_task = rt.spawn(healer(
        client.clone(),
        fs.clone(),
        Duration::from_secs(args.repair_interval_secs.max(1)),
        stop_rx.clone(),
    ));

    // SIGTERM/SIGINT unmount through the kernel, which ends the session like `fusermount3 -u`.
    // The handlers are installed here, before readiness is announced, so a stop request that
    // follows at once is not lost.
    let mp = mountpoint.to_owned();
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _guard = rt.enter();
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    rt.spawn(async move {
        if let (Ok(mut term), Ok(mut int)) = signals {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received: unmounting");
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            let _ = tokio::task::spawn_blocking(move || kernel_unmount(&mp)).await;
        }
    });
    // Ready: the pid file is what `walrusfs mount` (in the background) waits for, besides the
    // mount itself, so by the time it returns the stop signals above are handled.
    std::fs::write(&pid_path, format!("{}\n", std::process::id()))?;
    // Readiness for systemd (`Type=notify` units run `mount --foreground`); a no-op elsewhere.
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let result = session.join();
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    // The session ended: the kernel has unmounted and `destroy` stored all buffered data.
    control_task.abort();
    gauges_task.abort();
    let _ = std::fs::remove_file(state.join(control::SOCKET_FILE));
    let _ = stop_tx.send(true);
    let _ = rt.block_on(background);
    let _ = rt.block_on(healer_task);
    if let Side::Writer(w) = &side {
        // INV (DESIGN 3): unmount returns after the index is published and the lease released.
        match rt.block_on(w.release()) {
            Ok(()) => tracing::info!("index published; lease released"),
            Err(e) => tracing::error!("publishing at unmount failed: {e}; the next mount of this state directory publishes it"),
        }
    }
    rt.block_on(client.close(Duration::from_secs(10)));
    let _ = std::fs::remove_file(&pid_path);
    tracing::info!("mount process exiting");
    result.context("FUSE session failed")
}

/// Heals, one blob at a time, what reads found: a blob whose read met a node without a valid
/// sliver (missing, damaged, forged) has every node's sliver checked and the bad ones rebuilt
/// and stored again (`Client::repair`), so an archive that is read mends without a command.
async fn healer(
    client: netcore::client::Client,
    fs: Fs<NetworkStore>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        for id in client.take_damaged() {
            if *stop.borrow() {
                return;
            }
            let known = fs
                .index()
                .blob(&id)
                .ok()
                .flatten()
                .map(|info| info.metadata);
            let metadata = match known {
                Some(m) => m,
                None => match client.get_metadata(&id).await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(blob = %id, "cannot repair: {e}");
                        continue;
                    }
                },
            };
            match client.repair(&id, &metadata).await {
                Ok(r) if !r.restored.is_empty() => {
                    let nodes: Vec<u16> = r.restored.iter().map(|c| c.index).collect();
                    tracing::info!(blob = %id, ?nodes, "repaired slivers a read found missing or damaged");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(blob = %id, "background repair failed: {e}"),
            }
        }
    }
}

/// The writer's background loop: publishes at the interval, soon after an fsync, and renews
/// the lease; turns the filesystem read-only if the lease is lost.
async fn publisher(
    writer: Arc<Writer<NetworkStore>>,
    fs: Fs<NetworkStore>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let durable = fs.durable_notify();
    let interval = interval.min(LEASE_DURATION / 3);
    loop {
        let kicked = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = durable.notified() => true,
            _ = stop.changed() => return,
        };
        // Unmounting makes everything durable (a kick) and then stops this: the release
        // publishes, so the debounce does not hold the unmount up.
        if kicked {
            tokio::select! {
                _ = tokio::time::sleep(PUBLISH_DEBOUNCE) => {}
                _ = stop.changed() => return,
            }
        }
        let maintained = writer.maintain().await;
        metrics::gauge!(netcore::metrics::ARCHIVE_VERSION).set(writer.version().await as f64);
        match maintained {
            Ok(_) => fs.set_read_only(false),
            Err(e @ ArchiveError::LeaseLost { .. }) => {
                tracing::error!("{e}");
                fs.set_read_only(true);
            }
            Err(e) => {
                tracing::warn!("publishing the index failed (retrying): {e}");
                walrusfs::fs::note_error(format!("publishing the index failed: {e}"));
            }
        }
        if writer.lost() {
            fs.set_read_only(true);
        }
    }
}

/// A read-only mount's loop: applies each newly published version and tells the kernel to
/// drop what it cached of what changed.
async fn follower(
    replica: Arc<Replica<NetworkStore>>,
    notifier: fuser::Notifier,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        match replica.follow(&walrusfs::archive::restore::Quiet).await {
            Ok(Some(changed)) => {
                metrics::gauge!(netcore::metrics::ARCHIVE_VERSION).set(changed.version as f64);
                invalidate(&notifier, &changed)
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("following the archive failed (retrying): {e}"),
        }
    }
}

fn invalidate(notifier: &fuser::Notifier, changed: &Changed) {
    tracing::info!(
        version = changed.version,
        inodes = changed.inodes.len(),
        "applied a new version"
    );
    for (parent, name) in &changed.entries {
        let _ = notifier.inval_entry(fuser::INodeNo(*parent), OsStr::from_bytes(name));
    }
    for ino in &changed.inodes {
        let _ = notifier.inval_inode(fuser::INodeNo(*ino), 0, 0);
    }
}

/// What `walrusfs status` reads besides the filesystem.
#[derive(Clone)]
struct View {
    client: netcore::client::Client,
    space: Arc<crate::telemetry::NetSpace>,
    clock: Arc<crate::telemetry::Clock>,
}

/// The control socket's handler for this mount.
fn handler(
    side: &Side,
    fs: &Fs<NetworkStore>,
    key: &ArchiveKey,
    view: View,
) -> impl Fn(Op) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>
       + Send
       + Sync
       + Clone
       + 'static {
    let writer = match side {
        Side::Writer(w) => Some(w.clone()),
        Side::Replica(..) => None,
    };
    let role = match side {
        Side::Writer(_) => "writer",
        Side::Replica(_, true) => "replica",
        Side::Replica(_, false) => "snapshot",
    };
    let replica = match side {
        Side::Writer(_) => None,
        Side::Replica(r, _) => Some(r.clone()),
    };
    let fs = fs.clone();
    let archive = key.archive_id().to_string();
    move |op| {
        let writer = writer.clone();
        let replica = replica.clone();
        let fs = fs.clone();
        let archive = archive.clone();
        let view = view.clone();
        Box::pin(async move {
            let result: Result<String, String> = match op {
                Op::Sync => sync_mount(&fs, writer.as_deref()).await,
                Op::Status => {
                    let (version, lease_left_ms) = match (&writer, &replica) {
                        (Some(w), _) => (w.version().await, w.lease_left_ms().await),
                        (None, Some(r)) => (r.version().await, None),
                        (None, None) => (0, None),
                    };
                    let f = fs.clone();
                    let clock = view.clock.clone();
                    let pending = tokio::task::spawn_blocking(move || {
                        crate::telemetry::pending(&f, &clock, crate::telemetry::MAX_WALK)
                    })
                    .await
                    .unwrap_or_default();
                    return Response::Status(Box::new(control::Status {
                        archive,
                        role: role.into(),
                        version,
                        unpublished_changes: fs.index().unpublished_changes() as u64,
                        dirty_bytes: fs.dirty_bytes(),
                        gc_backlog: fs.gc_backlog(),
                        read_only: writer.as_ref().is_none_or(|w| w.lost()),
                        lease_left_ms,
                        pending,
                        caches: crate::telemetry::caches(&fs),
                        nodes: crate::telemetry::nodes(&view.client, &view.space),
                        network_free_bytes: fs.network_free(),
                        recent_errors: crate::telemetry::recent_errors(),
                    }));
                }
                Op::SnapshotCreate { name } => match &writer {
                    None => Err(
                        "this mount is read-only; create snapshots through the writer's mount"
                            .into(),
                    ),
                    Some(w) => match sync_mount(&fs, Some(w)).await {
                        Err(e) => Err(e),
                        Ok(_) => w
                            .create_snapshot(&name)
                            .await
                            .map(|s| format!("snapshot {} created (version {})", s.name, s.version))
                            .map_err(|e| e.to_string()),
                    },
                },
                Op::SnapshotDelete { name } => match &writer {
                    None => Err(
                        "this mount is read-only; delete snapshots through the writer's mount"
                            .into(),
                    ),
                    Some(w) => w
                        .delete_snapshot(&name)
                        .await
                        .map(|()| format!("snapshot {name} deleted"))
                        .map_err(|e| e.to_string()),
                },
            };
            match result {
                Ok(message) => Response::Ok { message },
                Err(message) => Response::Error { message },
            }
        })
    }
}

/// `walrusfs sync`: stores everything written before it, commits it and (writer) publishes.
async fn sync_mount(
    fs: &Fs<NetworkStore>,
    writer: Option<&Writer<NetworkStore>>,
) -> Result<String, String> {
    let f = fs.clone();
    let stored = tokio::task::spawn_blocking(move || f.sync_all())
        .await
        .map_err(|e| e.to_string())?;
    if let Err(failed) = stored {
        return Err(format!(
            "not everything could be stored on the network ({failed}); it stays in the state directory's journal and is retried"
        ));
    }
    match writer {
        None => Ok("nothing to publish (read-only mount)".into()),
        Some(w) => match w.publish(true).await {
            Ok(_) => Ok(format!("synced; archive at version {}", w.version().await)),
            Err(e) => Err(format!("data stored, but publishing the index failed: {e}")),
        },
    }
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
#[command(after_help = "Examples:\n  walrusfs up\n  walrusfs up --dir /tmp/demo ./mnt")]
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
    crate::testnet::up(&testnet, None, std::net::IpAddr::from([127, 0, 0, 1]))?;
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
            client_key: None,
            connect_timeout_secs: crate::network::DEFAULT_CONNECT_TIMEOUT_SECS,
        },
        key: KeyArgs::default(),
        state: Some(args.dir.join("fs")),
        read_only: false,
        snapshot: None,
        take_over: false,
        foreground: false,
        chunk_size: DEFAULT_CHUNK_SIZE,
        sync_close: false,
        dirty_mib: 256,
        journal_mib: 2048,
        journal_wait_secs: 300,
        cache_mib: 256,
        disk_cache_mib: 1024,
        fuse_poll_us: 50,
        publish_interval: 10,
        follow_interval: 10,
        lease_secs: LEASE_DURATION.as_secs(),
        gc_grace_secs: 60,
        repair_interval_secs: 60,
        metrics: None,
        secret_stdin: false,
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

/// Memory one blob upload holds: its 4 MiB pack, the slivers (n/k of it, 7/3 here), and the
/// encoder's work buffers.
const UPLOAD_MIB: u64 = 16;

/// Uploads in flight at once for a dirty budget of `dirty_mib`: as many as fit in it, at
/// least one, at most eight (more do not go faster on the network).
fn upload_concurrency(dirty_mib: u64) -> usize {
    usize::try_from(dirty_mib / UPLOAD_MIB)
        .unwrap_or(usize::MAX)
        .clamp(1, 8)
}

#[cfg(test)]
mod tests {
    use super::upload_concurrency;

    #[test]
    fn uploads_in_flight_fit_in_the_dirty_budget() {
        for (mib, uploads) in [(0, 1), (16, 1), (32, 2), (100, 6), (256, 8), (1 << 20, 8)] {
            assert_eq!(upload_concurrency(mib), uploads, "--dirty-mib {mib}");
        }
    }
}
