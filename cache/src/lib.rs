//! Byte-bounded LRU caches for walrusfs.
//!
//! Two caches sit on the read path, between the metadata index and the network:
//!
//! - [`MemoryCache`] keeps recently used values in RAM, bounded by the total bytes they hold
//!   (see [`Weigh`]). The filesystem uses it for decrypted plaintext chunks, keyed by
//!   (inode, chunk index, version), so repeated reads skip the gather, decode and decrypt steps.
//!   It is generic and thread-safe, for use from many FUSE threads at once.
//! - [`DiskCache`] keeps byte blobs in a local directory, bounded by total file bytes and
//!   surviving restarts. It holds *verified ciphertext* (sealed chunks or slivers keyed by a
//!   32-byte blob id and a `u16` index, see [`DiskKey`]), so a cache hit saves a network
//!   round trip but never bypasses encryption.
//!
//! Both report [`CacheStats`] (hits, misses, inserts, evictions, bytes, entries).
//!
//! [`direct`] writes new files around the page cache; the disk cache and the storage node's
//! sliver store use it.
//!
//! This crate depends on no other walrusfs crate and does no cryptography. Entries on disk carry
//! a length and, unless the cache is opened for a caller that authenticates what it reads
//! ([`DiskCache::open_unsummed`], as the mount does), a cheap checksum, so a torn write is
//! detected and dropped; callers must still verify content against the blob's commitments
//! before serving it (design invariant 2).

pub mod direct;
mod disk;
pub mod memory;
mod stats;
mod weigh;

pub use disk::{DiskCache, DiskCacheError, DiskKey};
pub use memory::MemoryCache;
pub use stats::CacheStats;
pub use weigh::Weigh;
