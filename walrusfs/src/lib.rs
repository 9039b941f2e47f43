//! walrusfs: a POSIX filesystem over the walrusfs storage network.
//!
//! - [`archive`]: the archive key, publishing the index on the network, leases, snapshots;
//! - [`control`]: the mount's control socket (`walrusfs sync`, snapshots, status);
//! - [`fuse`]: the thin FUSE adapter over the core;
//! - [`fs`]: the filesystem core (POSIX semantics, write buffering, reads, caching, GC);
//! - [`data`]: chunk encryption and the blob store the core writes chunks to;
//! - [`journal`]: the write-back journal of sealed chunks waiting to be stored;
//! - [`index`]: the local metadata index (sled): inodes, directory entries, chunk maps,
//!   symlinks, xattrs, the garbage-collection queue.

pub mod archive;
pub mod control;
pub mod data;
pub mod faults;
pub mod fs;
pub mod fuse;
pub mod index;
pub mod journal;
