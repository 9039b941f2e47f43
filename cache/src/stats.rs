//! Counters shared by every cache in this crate.
//!
//! A snapshot is taken under the cache's lock, so the fields of one [`CacheStats`] are
//! consistent with each other (for example `bytes` and `entries` describe the same moment).

/// A point-in-time snapshot of a cache's counters.
///
/// `hits`, `misses`, `inserts` and `evictions` count events since the cache was created (or,
/// for a [`DiskCache`](crate::DiskCache), since it was opened); `bytes` and `entries` describe
/// its current contents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that returned a value.
    pub hits: u64,
    /// Lookups that found nothing, including entries dropped because they were corrupt.
    pub misses: u64,
    /// Values stored (a replacement of an existing key counts once; a refused oversize value
    /// does not count).
    pub inserts: u64,
    /// Entries dropped to make room for newer ones. Explicit removals do not count.
    pub evictions: u64,
    /// Bytes currently charged against the capacity (see each cache for what is charged).
    pub bytes: u64,
    /// Entries currently held.
    pub entries: u64,
}

impl CacheStats {
    /// Fraction of lookups that hit, in `0.0..=1.0`; `0.0` when there were no lookups.
    pub fn hit_ratio(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}

/// Event counters kept under a cache's lock; `bytes` and `entries` are added at snapshot time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) inserts: u64,
    pub(crate) evictions: u64,
}

impl Counters {
    /// Combines the event counters with the current contents into a public snapshot.
    pub(crate) fn snapshot(&self, bytes: u64, entries: u64) -> CacheStats {
        CacheStats {
            hits: self.hits,
            misses: self.misses,
            inserts: self.inserts,
            evictions: self.evictions,
            bytes,
            entries,
        }
    }
}
