//! `walrusfs`: the command-line entry point. Parses arguments (clap) and hands each command to
//! its module; the libraries below know nothing of the CLI.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod audit;
mod blob;
mod ctl;
mod fsck;
mod keys;
mod logfile;
mod mount;
mod mount_helper;
mod mountinfo;
mod network;
mod node;
mod progress;
mod repair;
mod status;
mod telemetry;
mod testnet;

/// walrusfs: files on a decentralized, erasure-coded, encrypted storage network.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a storage node serving the directory D (or initialise one with --init).
    Node(node::NodeArgs),
    /// Start, stop or inspect a local testnet of storage nodes on 127.0.0.1.
    #[command(subcommand)]
    Testnet(testnet::TestnetCommand),
    /// Store, fetch, inspect or delete raw blobs.
    #[command(subcommand)]
    Blob(blob::BlobCommand),
    /// Create an archive: a new key (sealed under a passphrase) and its root on the network.
    Init(keys::InitArgs),
    /// Export or import an archive key (to recover the archive on another machine).
    #[command(subcommand)]
    Key(keys::KeyCommand),
    /// Mount an archive as a folder.
    Mount(mount::MountArgs),
    /// Unmount a walrusfs folder, storing all buffered data and publishing the index first.
    #[command(after_help = "Example:\n  walrusfs unmount ~/archive")]
    Unmount {
        /// The mountpoint.
        mountpoint: std::path::PathBuf,
    },
    /// Store everything written to a mount so far on the network and publish its index.
    #[command(after_help = "Example:\n  walrusfs sync ~/archive")]
    Sync {
        /// The mountpoint.
        mountpoint: std::path::PathBuf,
    },
    /// Show what a mount is doing: data waiting to upload, nodes' health, caches, errors.
    Status(status::StatusArgs),
    /// Create, list or delete snapshots of an archive.
    #[command(subcommand)]
    Snapshot(ctl::SnapshotCommand),
    /// Check every sliver of every blob the archive references and restore missing or bad ones.
    Repair(repair::RepairArgs),
    /// Check an unmounted state directory: the index, the journal, the root record, and that
    /// every blob the index refers to is retrievable.
    Fsck(fsck::FsckArgs),
    /// Challenge every node for its slivers of random blobs of the archive and score them.
    Audit(audit::AuditArgs),
    /// Start a local 7-node testnet and mount it (the one-command demo).
    Up(mount::UpArgs),
    /// Create a client key file and print its public key (to add to nodes' trusted clients).
    #[command(after_help = "Example:\n  walrusfs keygen --out ~/.config/walrusfs/client.key")]
    Keygen {
        /// Where to write the key (PEM, mode 0600); must not exist.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let helper = argv
        .first()
        .is_some_and(|a| mount_helper::invoked_as_helper(a));
    if helper {
        // Started by mount(8) for an fstab line of type fuse.walrusfs.
        match mount_helper::mount_args(&argv[1..]) {
            Ok(Some(args)) => argv = args,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mount.fuse.walrusfs: {}", describe(&e));
                return ExitCode::from(MOUNT_FAILURE);
            }
        }
    }
    let cli = Cli::parse_from(argv);
    if !matches!(
        cli.command,
        Command::Node(_) | Command::Mount(_) | Command::Up(_)
    ) {
        die_quietly_on_closed_pipes();
    }
    let default_level = match cli.command {
        Command::Node(_) => "info",
        Command::Mount(_) => "info,fuser::mnt=error",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    if matches!(cli.command, Command::Node(_) | Command::Mount(_)) {
        // A long-running process whose log is a file: keep that file bounded.
        logfile::cap_stderr_if_file();
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| logfile::Stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let result = match cli.command {
        Command::Node(args) => node::run(args),
        Command::Testnet(cmd) => testnet::run(cmd),
        Command::Blob(cmd) => blob::run(cmd),
        Command::Keygen { out } => keygen(&out),
        Command::Init(args) => keys::init(args),
        Command::Key(cmd) => keys::key(cmd),
        Command::Mount(args) => {
            limit_mount_arenas();
            mount::mount(args)
        }
        Command::Unmount { mountpoint } => mount::unmount(&mountpoint),
        Command::Sync { mountpoint } => ctl::sync(&mountpoint),
        Command::Status(args) => status::status(args),
        Command::Snapshot(cmd) => ctl::snapshot(cmd),
        Command::Up(args) => mount::up(args),
        Command::Repair(args) => repair::repair(args),
        Command::Fsck(args) => fsck::fsck(args),
        Command::Audit(args) => audit::audit(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("walrusfs: error: {}", describe(&e));
            if helper {
                ExitCode::from(MOUNT_FAILURE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Makes glibc return freed multi-MiB sliver buffers to the system at once (the node). By
/// default its mmap threshold grows to the largest block freed (up to 32 MiB), after which such
/// buffers come from per-thread arenas that keep their pages: a node's resident memory then
/// drifts to several times its byte budget (measured: 147 MiB against a 32 MiB budget, 60 MiB
/// with this; `tests/node_limits.rs`).
pub(crate) fn limit_malloc_caching() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt(3) takes two integers, touches only the allocator's own settings, and is
    // called before any other thread exists. No safe wrapper exists (nix has none).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

/// Caps glibc's arenas at two (the mount). Its 4 MiB chunk buffers then come from two heaps
/// that reuse freed memory, instead of one arena per thread each keeping its own. The node's
/// fixed mmap threshold (above) would bound memory too, but at a price the mount cannot pay:
/// every chunk buffer becomes a fresh mapping, faulted in and zeroed. Measured on a 1 GiB
/// write and a cold read (release build, same run):
/// - default: write 125 MB/s, 7.4 s CPU, peak RSS 514 MiB; read 349 MB/s, 3.7 s CPU, 610 MiB
/// - fixed mmap threshold: 98 MB/s, 11.2 s CPU, 191 MiB; read 291 MB/s, 4.8 s, 395 MiB
/// - two arenas: 122 MB/s, 7.4 s CPU, 286 MiB; read 347 MB/s, 3.5 s CPU, 410 MiB
pub(crate) fn limit_mount_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: as in `limit_malloc_caching`: two integers, the allocator's own settings, called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Lets a short command end the way other tools do when what reads its output goes away
/// (`walrusfs blob get ... -o - | head`): killed by SIGPIPE, instead of a panic in `println!`
/// or an error message. Long-running processes (mount, node) keep Rust's default, where a
/// write to a closed socket or pipe is an `EPIPE` error to handle, not death.
fn die_quietly_on_closed_pipes() {
    #[cfg(unix)]
    #[allow(unsafe_code)]
    // SAFETY: signal(2) with SIG_DFL installs no handler code, only restores the default
    // disposition, and is called before any other thread exists. nix's wrapper is unsafe too.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// An error and its causes on one line, `outer: cause: cause`, like `{:#}`, except that a cause
/// the message before it already ends with is not repeated. Many of our error types (and
/// some of our dependencies') put their cause in their message and also return it as
/// `source()`, since they are logged by their message alone; `{:#}` printed such a cause
/// twice ("...: Address already in use (os error 98): Address already in use (os error 98)").
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// mount(8)'s exit status for a failed mount, which its helpers return too.
const MOUNT_FAILURE: u8 = 32;

fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    if out.exists() {
        anyhow::bail!("{} already exists; not overwriting a key", out.display());
    }
    let id = netcore::identity::Identity::generate()?;
    id.save(out)?;
    println!("{}", id.public_key());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on 127.0.0.1:9: {source}")]
    struct Listen {
        source: std::io::Error,
    }

    #[test]
    fn an_error_reads_as_its_chain_with_no_cause_said_twice() {
        let io = || std::io::Error::from_raw_os_error(98);
        let e = anyhow::Error::new(Listen { source: io() }).context("node 3");
        assert_eq!(
            describe(&e),
            format!("node 3: cannot listen on 127.0.0.1:9: {}", io())
        );
        // A cause not in the message is shown, as `{:#}` does.
        let e = anyhow::Error::new(io()).context("cannot open the journal");
        assert_eq!(describe(&e), format!("{e:#}"));
        assert_eq!(describe(&anyhow::anyhow!("plain")), "plain");
    }
}
