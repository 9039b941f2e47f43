//! Which walrusfs mounts exist: one place that parses `/proc/self/mountinfo`, and finds a
//! mount's state directory (from the mount's source, `walrusfs:STATE`).

use std::path::{Path, PathBuf};

use anyhow::bail;

/// Prefix of a walrusfs mount's source in mountinfo; the state directory follows.
pub const SOURCE_PREFIX: &str = "walrusfs:";

/// One line of /proc/self/mountinfo that concerns us.
pub struct MountEntry {
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// The mount's source (a walrusfs mount's: `walrusfs:STATE`).
    pub source: String,
}

/// Every mount of this mount namespace.
pub fn mounts() -> Vec<MountEntry> {
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

/// Whether `mountpoint` is a mountpoint now.
pub fn is_mounted(mountpoint: &Path) -> bool {
    mounts().iter().any(|m| m.mountpoint == mountpoint)
}

/// The state directory of the walrusfs mount at `mountpoint`.
pub fn state_of(mountpoint: &Path) -> anyhow::Result<PathBuf> {
    let mountpoint = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_owned());
    let Some(entry) = mounts().into_iter().find(|m| m.mountpoint == mountpoint) else {
        bail!(
            "{} is not mounted (mount it with `walrusfs mount`; `walrusfs mount --help` shows how)",
            mountpoint.display()
        );
    };
    match entry.source.strip_prefix(SOURCE_PREFIX) {
        Some(state) => Ok(PathBuf::from(state)),
        None => bail!("{} is not a walrusfs mount", mountpoint.display()),
    }
}

/// The state directory of a read-write mount of `archive` on this machine, if one answers.
pub fn writer_mount_of(archive: &str) -> Option<PathBuf> {
    let rt = crate::network::runtime().ok()?;
    mounts()
        .into_iter()
        .filter_map(|m| m.source.strip_prefix(SOURCE_PREFIX).map(PathBuf::from))
        .find(|state| {
            let status = rt.block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    walrusfs::control::call(state, walrusfs::control::Op::Status),
                )
                .await
            });
            matches!(status, Ok(Ok(walrusfs::control::Response::Status(s)))
                if s.archive == archive && s.role == "writer")
        })
}
