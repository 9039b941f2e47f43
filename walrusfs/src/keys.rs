//! `walrusfs init` and `walrusfs key`: making an archive, and moving its key between machines;
//! plus how every command finds the archive key and its passphrase.
//!
//! The passphrase comes from `--passphrase-file F` (its first line), else the
//! `WALRUSFS_PASSPHRASE` variable, else a prompt on the terminal. A testnet (`--testnet DIR`
//! without `--key`) uses the testnet's own unprotected key, `DIR/archive.key`, made on first use.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use walrusfs::archive::key::{ArchiveKey, KdfParams, KeyFile};

use crate::network::{runtime, NetworkArgs};

/// Name of a testnet's own archive key, in its directory.
pub const TESTNET_KEY_FILE: &str = "archive.key";
/// Environment variable holding the passphrase.
pub const PASSPHRASE_ENV: &str = "WALRUSFS_PASSPHRASE";

/// Where the archive key is and how to unlock it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// The archive key file (see `walrusfs init`); with --testnet, defaults to the testnet's own
    /// unprotected key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Read the key's passphrase from the first line of this file (else $WALRUSFS_PASSPHRASE,
    /// else a prompt).
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

/// Reads the passphrase; with `confirm` (a new key), asks twice at a prompt.
pub fn passphrase(args: &KeyArgs, confirm: bool) -> anyhow::Result<String> {
    if let Some(f) = &args.passphrase_file {
        let file = std::fs::File::open(f)
            .with_context(|| format!("cannot read the passphrase file {}", f.display()))?;
        let mut line = String::new();
        std::io::BufReader::new(file).read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\n', '\r']).to_owned());
    }
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(p);
    }
    if !std::io::stdin().is_terminal() {
        bail!("the archive key needs its passphrase: give --passphrase-file FILE or set {PASSPHRASE_ENV} (no terminal to ask on)");
    }
    let p = rpassword::prompt_password("archive key passphrase: ")?;
    if confirm {
        let again = rpassword::prompt_password("again: ")?;
        if again != p {
            bail!("the passphrases differ; nothing was written");
        }
    }
    Ok(p)
}

/// The archive key a command uses: `--key` (unlocked with its passphrase), or the testnet's own.
/// Returns the key and whether it is a testnet key made just now.
pub fn archive_key(args: &KeyArgs, net: &NetworkArgs) -> anyhow::Result<(ArchiveKey, bool)> {
    if let Some(path) = &args.key {
        let file = KeyFile::load(path)?;
        let pass = if file.needs_passphrase() {
            Some(passphrase(args, false)?)
        } else {
            None
        };
        return Ok((file.unlock(pass.as_deref())?, false));
    }
    let Some(dir) = &net.testnet else {
        bail!("--key KEYFILE is required with --committee (make one with `walrusfs init`)");
    };
    let path = dir.join(TESTNET_KEY_FILE);
    match KeyFile::load(&path) {
        Ok(file) => Ok((file.unlock(None)?, false)),
        Err(walrusfs::archive::key::KeyError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            if !dir.join(crate::network::COMMITTEE_FILE).exists() {
                bail!(
                    "{} is not a testnet directory (no {}); start one with `walrusfs testnet up --dir {}`",
                    dir.display(),
                    crate::network::COMMITTEE_FILE,
                    dir.display()
                );
            }
            let key = ArchiveKey::generate();
            KeyFile::testnet(&key).save(&path)?;
            Ok((key, true))
        }
        Err(e) => Err(e.into()),
    }
}

/// Arguments of `walrusfs init`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  walrusfs init --committee committee.toml --client-key client.key --key archive.key\n  walrusfs key export --key archive.key > archive-key.txt   # keep this copy safe"
)]
pub struct InitArgs {
    #[command(flatten)]
    net: NetworkArgs,
    /// Where to write the new archive key (must not exist).
    #[arg(long)]
    key: PathBuf,
    /// Read the new key's passphrase from the first line of this file.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Chunk size in bytes that files are cut into.
    #[arg(long, default_value_t = crate::mount::DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
    /// Argon2id memory in MiB for the passphrase (tests use less; the default resists guessing).
    #[arg(long, default_value_t = 64, hide = true)]
    kdf_mib: u32,
}

/// Runs `walrusfs init`.
pub fn init(args: InitArgs) -> anyhow::Result<()> {
    if args.key.exists() {
        bail!(
            "{} already exists; not overwriting a key (move it away first)",
            args.key.display()
        );
    }
    if args.chunk_size < 4096 || args.chunk_size > 64 << 20 {
        bail!("--chunk-size must be between 4096 and 67108864 bytes");
    }
    let key_args = KeyArgs {
        key: Some(args.key.clone()),
        passphrase_file: args.passphrase_file.clone(),
    };
    let pass = passphrase(&key_args, true)?;
    let key = ArchiveKey::generate();
    let kdf = KdfParams {
        m_kib: args.kdf_mib.max(1) * 1024,
        ..KdfParams::default()
    };
    let file = KeyFile::protect(&key, &pass, kdf)?;
    // The key is written next to its final name first and renamed once the archive exists, so
    // a failure leaves neither a key without an archive nor an archive without a key.
    let partial = partial_path(&args.key);
    let _ = std::fs::remove_file(&partial);
    file.save(&partial)?;
    let created = runtime()?.block_on(async {
        let client = args.net.client()?;
        let store = walrusfs::data::store::NetworkStore::new(client.clone());
        let r = walrusfs::archive::init(&store, &key, args.chunk_size).await;
        client.close(std::time::Duration::from_secs(5)).await;
        r.map_err(anyhow::Error::from)
    });
    if let Err(e) = created {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &args.key)
        .with_context(|| format!("cannot move the key into place at {}", args.key.display()))?;
    println!("created archive {}", key.archive_id());
    println!(
        "key: {} (keep a copy: `walrusfs key export --key {}`; without it and its passphrase the archive is lost)",
        args.key.display(),
        args.key.display()
    );
    Ok(())
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// `walrusfs key` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum KeyCommand {
    /// Print the (still passphrase-sealed) key as one line, to copy to another machine or paper.
    #[command(after_help = "Example:\n  walrusfs key export --key archive.key > archive-key.txt")]
    Export {
        /// The archive key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Read a line made by `key export` from stdin and write it as a key file (mode 0600).
    #[command(after_help = "Example:\n  walrusfs key import --out archive.key < archive-key.txt")]
    Import {
        /// Where to write the key file (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs `walrusfs key ...`.
pub fn key(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Export { key } => {
            let file = KeyFile::load(&key)?;
            if file.is_testnet() {
                eprintln!("note: this is an unprotected testnet key");
            }
            println!("{}", file.to_line());
            Ok(())
        }
        KeyCommand::Import { out } => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("cannot read the key line from stdin")?;
            let file = KeyFile::from_line(&line, "the key line on stdin")?;
            file.save(&out)?;
            println!(
                "imported the key of archive {} into {}",
                file.archive(),
                out.display()
            );
            Ok(())
        }
    }
}
