//! `walrusfs status MOUNTPOINT`: what a running mount is doing, asked over its control socket.

use std::path::PathBuf;

use anyhow::{bail, Context};
use walrusfs::control::{self, Op, Response, Status};

use crate::mountinfo;
use crate::network::runtime;

/// Arguments of `walrusfs status`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  walrusfs status ~/archive\n  walrusfs status --json ~/archive | jq .pending"
)]
pub struct StatusArgs {
    /// Print the status as one JSON object (for scripts).
    #[arg(long)]
    json: bool,
    /// The mountpoint.
    mountpoint: PathBuf,
}

/// Runs the command.
pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let state = mountinfo::state_of(&args.mountpoint)?;
    let rt = runtime()?;
    let response = rt.block_on(control::call(&state, Op::Status)).with_context(|| {
        format!(
            "cannot reach the mount's control socket in {} (is the mount process running? see its mount.log there)",
            state.display()
        )
    })?;
    let status = match response {
        Response::Status(s) => *s,
        Response::Error { message } => bail!("{message}"),
        Response::Ok { message } => bail!("unexpected answer from the mount: {message}"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", render(&status));
    }
    Ok(())
}

/// The status as text, one fact per line.
fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "archive     {}", s.archive);
    let mode = if s.read_only && s.role == "writer" {
        "writer (lease lost: read-only)".to_string()
    } else {
        s.role.clone()
    };
    let _ = writeln!(o, "role        {mode}");
    let lease = match s.lease_left_ms {
        Some(ms) if ms >= 0 => format!(", lease {} s left", ms / 1000),
        Some(_) => ", lease expired".into(),
        None => String::new(),
    };
    let _ = writeln!(
        o,
        "version     {} ({} changes not yet published{lease})",
        s.version, s.unpublished_changes
    );
    let p = &s.pending;
    let files = if p.files_exact {
        p.files.to_string()
    } else {
        format!("at least {}", p.files)
    };
    let oldest = p
        .oldest_secs
        .map(|a| format!(", oldest waiting {}", duration(a)))
        .unwrap_or_default();
    let _ = writeln!(
        o,
        "to upload   {} in {} chunks of {files} files{oldest}; {} uploads running",
        bytes(p.journal_bytes),
        p.chunks,
        p.uploads_in_flight
    );
    let _ = writeln!(o, "to delete   {} blobs", s.gc_backlog);
    if let Some(free) = s.network_free_bytes {
        let _ = writeln!(
            o,
            "free        {} (what the network can still take)",
            bytes(free)
        );
    }
    for c in &s.caches {
        let total = c.hits + c.misses;
        let rate = if total == 0 {
            "no reads yet".to_string()
        } else {
            format!("{:.1}% hits", 100.0 * c.hits as f64 / total as f64)
        };
        let _ = writeln!(
            o,
            "cache       {:<6} {rate} ({} of {total} reads), {} held",
            c.name,
            c.hits,
            bytes(c.bytes)
        );
    }
    let _ = writeln!(o, "nodes");
    for n in &s.nodes {
        let latency = n
            .latency_ms
            .map(|l| format!("{l:.1} ms"))
            .unwrap_or_else(|| "-".into());
        let free = n.free_bytes.map(bytes).unwrap_or_else(|| "-".into());
        let _ = write!(
            o,
            "  {:>3}  {:<21} {:<11} latency {latency:>9}  free {free:>10}  {} answered, {} failed",
            n.index, n.address, n.state, n.answered, n.failed
        );
        if let Some((e, ago)) = &n.last_error {
            let _ = write!(o, "  (last error {} ago: {e})", duration(*ago));
        }
        o.push('\n');
    }
    if s.recent_errors.is_empty() {
        let _ = writeln!(o, "errors      none");
    } else {
        let _ = writeln!(o, "errors (latest last)");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for e in &s.recent_errors {
            let _ = writeln!(
                o,
                "  {} ago: {}",
                duration(now.saturating_sub(e.at)),
                e.message
            );
        }
    }
    o
}

fn bytes(b: u64) -> String {
    indicatif::HumanBytes(b).to_string()
}

fn duration(secs: u64) -> String {
    indicatif::HumanDuration(std::time::Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use walrusfs::control::{CacheStatus, NodeStatus, Pending, RecentError};

    #[test]
    fn status_text_names_every_part() {
        let s = Status {
            archive: "ab".repeat(32),
            role: "writer".into(),
            version: 7,
            unpublished_changes: 2,
            dirty_bytes: 0,
            gc_backlog: 1,
            read_only: false,
            lease_left_ms: Some(250_000),
            pending: Pending {
                journal_bytes: 3 << 20,
                chunks: 4,
                files: 2,
                files_exact: true,
                oldest_secs: Some(75),
                uploads_in_flight: 1,
            },
            caches: vec![CacheStatus {
                name: "memory".into(),
                hits: 3,
                misses: 1,
                bytes: 4096,
            }],
            nodes: vec![NodeStatus {
                index: 0,
                address: "127.0.0.1:7000".into(),
                state: "failing".into(),
                latency_ms: Some(1.5),
                answered: 10,
                failed: 2,
                free_bytes: Some(1 << 30),
                last_error: Some(("timed out".into(), 3)),
            }],
            network_free_bytes: Some(5 << 30),
            recent_errors: vec![RecentError {
                at: 0,
                message: "upload failed: boom".into(),
            }],
        };
        let t = render(&s);
        for want in [
            "version     7 (2 changes not yet published, lease 250 s left)",
            "3.00 MiB in 4 chunks of 2 files, oldest waiting 75 seconds",
            "75.0% hits",
            "failing",
            "last error 3 seconds ago: timed out",
            "upload failed: boom",
            "free        5.00 GiB",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }
}
