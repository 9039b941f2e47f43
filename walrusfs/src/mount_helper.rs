//! `mount.fuse.walrusfs` (and `mount.walrusfs`): the helper mount(8) runs for an fstab line of
//! type `fuse.walrusfs`, so an archive mounts with `mount -a`, at boot, or on first access
//! (`x-systemd.automount`), and unmounts with `umount`.
//!
//! mount(8) calls `mount.fuse.walrusfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`. SOURCE is
//! `walrusfs:STATE`, the mount's state directory: the same string the running mount shows as
//! its source in /proc/self/mountinfo, so mount(8) recognises an archive that is already
//! mounted. Each option `name=value` becomes `walrusfs mount --name value` (`_` and `-` alike),
//! a bare `name` becomes `--name` (`ro` is `--read-only`), and the options that belong to
//! mount(8) and systemd (`_netdev`, `x-systemd.*`, `noauto`, `nofail`, `defaults`, ...) are
//! left to them. The helper returns once the archive is mounted, as `walrusfs mount` does.
//!
//! ```text
//! walrusfs:/var/lib/walrusfs/photos /srv/photos fuse.walrusfs _netdev,x-systemd.automount,committee=/etc/walrusfs/committee.toml,client_key=/etc/walrusfs/client.key,key=/etc/walrusfs/photos.key,passphrase_file=/etc/walrusfs/photos.pass 0 0
//! ```

use std::ffi::OsString;

use anyhow::{bail, Context};

use crate::mountinfo::SOURCE_PREFIX;

/// Options mount(8), the kernel's generic flags and systemd act on; not passed on.
const LEFT_TO_MOUNT: &[&str] = &[
    "_netdev",
    "auto",
    "noauto",
    "nofail",
    "defaults",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "lazytime",
    "nolazytime",
    "sync",
    "async",
    "loud",
    "silent",
];

/// Whether this process was started under a helper's name (argv[0]).
pub fn invoked_as_helper(argv0: &std::ffi::OsStr) -> bool {
    let name = std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    name == "mount.walrusfs" || name == "mount.fuse.walrusfs"
}

/// Turns the helper's command line (after argv[0]) into `walrusfs mount` arguments; `None`
/// for a fake mount (`-f`: mount(8) only records it).
pub fn mount_args(args: &[OsString]) -> anyhow::Result<Option<Vec<OsString>>> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let s = arg.to_str().unwrap_or("");
        match s {
            "-o" => options.push(
                it.next()
                    .context("-o needs a list of options")?
                    .to_str()
                    .context("mount options must be UTF-8")?
                    .to_owned(),
            ),
            "-f" => fake = true,
            // Sloppy, no mtab, verbose: nothing for this helper to do.
            "-s" | "-n" | "-v" => {}
            // A namespace to mount in: not supported.
            "-N" => bail!("mount.walrusfs does not support -N"),
            _ if s.starts_with("-o") => options.push(s[2..].to_owned()),
            _ if s.starts_with('-') => bail!("unknown mount flag {s}"),
            _ => positional.push(arg.clone()),
        }
    }
    let [source, mountpoint] = &positional[..] else {
        bail!("usage: mount.fuse.walrusfs walrusfs:STATE_DIR MOUNTPOINT [-o OPTIONS]");
    };
    let source = source.to_str().context("source must be UTF-8")?;
    let Some(state) = source.strip_prefix(SOURCE_PREFIX) else {
        bail!(
            "the fstab source must be {SOURCE_PREFIX}STATE_DIR (the archive's state directory), not {source:?}"
        );
    };
    if fake {
        return Ok(None);
    }
    let mut out: Vec<OsString> = vec!["walrusfs".into(), "mount".into()];
    out.push("--state".into());
    out.push(state.into());
    for opt in options.iter().flat_map(|o| o.split(',')) {
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        if name.is_empty()
            || LEFT_TO_MOUNT.contains(&name)
            || name.starts_with("x-")
            || name.starts_with("comment=")
            || name == "comment"
        {
            continue;
        }
        match (name, value) {
            ("ro", None) => out.push("--read-only".into()),
            (_, Some(v)) => {
                out.push(format!("--{}", name.replace('_', "-")).into());
                out.push(v.into());
            }
            (_, None) => out.push(format!("--{}", name.replace('_', "-")).into()),
        }
    }
    out.push(mountpoint.clone());
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn fstab_options_become_mount_flags_and_mount_options_are_left_alone() {
        let out = mount_args(&args(&[
            "walrusfs:/var/lib/walrusfs/a",
            "/srv/a",
            "-n",
            "-o",
            "rw,_netdev,x-systemd.automount,nofail,committee=/etc/c.toml,client_key=/etc/k,ro,cache_mib=64",
        ]))
        .unwrap()
        .unwrap();
        let out: Vec<&str> = out.iter().map(|s| s.to_str().unwrap()).collect();
        assert_eq!(
            out,
            [
                "walrusfs",
                "mount",
                "--state",
                "/var/lib/walrusfs/a",
                "--committee",
                "/etc/c.toml",
                "--client-key",
                "/etc/k",
                "--read-only",
                "--cache-mib",
                "64",
                "/srv/a"
            ]
        );
    }

    #[test]
    fn bad_helper_calls_say_what_is_expected() {
        let e = mount_args(&args(&["/var/lib/x", "/srv/a"])).unwrap_err();
        assert!(e.to_string().contains("walrusfs:STATE_DIR"), "{e}");
        let e = mount_args(&args(&["walrusfs:/x"])).unwrap_err();
        assert!(e.to_string().contains("usage"), "{e}");
        let e = mount_args(&args(&["walrusfs:/x", "/m", "-q"])).unwrap_err();
        assert!(e.to_string().contains("-q"), "{e}");
        assert!(mount_args(&args(&["walrusfs:/x", "/m", "-f"]))
            .unwrap()
            .is_none());
    }
}
