//! A thread-safe, byte-bounded LRU cache held in memory.
//!
//! Used for plaintext file chunks (a few MiB each) and for small hot metadata. Every entry is
//! charged its value's [`Weigh::weight`] plus a fixed per-entry overhead, so a flood of tiny
//! entries is bounded just like a few large ones (design invariant 6: memory is bounded by
//! configuration). Values are handed out by `Clone`; make them `Arc<...>` so a hit costs a
//! reference-count increment, not a copy.

use std::borrow::Borrow;
use std::hash::Hash;
use std::mem;
use std::sync::{Mutex, MutexGuard};

use lru::LruCache;

use crate::stats::{CacheStats, Counters};
use crate::weigh::Weigh;

/// Bookkeeping bytes charged per entry on top of the key and value sizes: the LRU list's two
/// node pointers, the hash table's slot and spare capacity, and allocator rounding. An estimate
/// on the high side, so that the configured bound holds for millions of tiny entries.
pub const NODE_OVERHEAD: usize = 64;

/// A byte-bounded least-recently-used cache, safe to share between threads.
///
/// All methods take `&self`; one internal mutex guards the LRU order and byte count, and is held
/// only for hash-table and list updates (values evicted or removed are dropped after it is
/// released, so freeing a large chunk never stalls other readers).
pub struct MemoryCache<K, V> {
    capacity: usize,
    inner: Mutex<Inner<K, V>>,
}

struct Entry<V> {
    value: V,
    /// What this entry was charged when inserted; remembered so accounting never depends on a
    /// value reporting the same weight twice.
    charge: usize,
}

struct Inner<K, V> {
    lru: LruCache<K, Entry<V>>,
    /// INV: `bytes` is the sum of the `charge` of every entry in `lru`, and `bytes <= capacity`.
    bytes: usize,
    counters: Counters,
}

impl<K: Hash + Eq, V: Clone + Weigh> MemoryCache<K, V> {
    /// Bytes charged per entry in addition to the value's [`Weigh::weight`]: the key and value
    /// stored inline plus [`NODE_OVERHEAD`]. Heap memory owned by the *key* is not counted, so
    /// keys should be small plain values (ids, tuples of integers).
    pub const ENTRY_OVERHEAD: usize = NODE_OVERHEAD + mem::size_of::<K>() + mem::size_of::<V>();

    /// Creates an empty cache that will hold at most `capacity_bytes` of charged bytes.
    ///
    /// A capacity of zero is allowed and caches nothing.
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity: capacity_bytes,
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                counters: Counters::default(),
            }),
        }
    }

    /// Returns a clone of the value for `key` and marks it most recently used.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = self.lock();
        let found = inner.lru.get(key).map(|entry| entry.value.clone());
        match found {
            Some(_) => inner.counters.hits += 1,
            None => inner.counters.misses += 1,
        }
        found
    }

    /// Returns whether `key` is cached, without touching its recency or the hit counters.
    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().lru.contains(key)
    }

    /// Stores `value` under `key` as the most recently used entry, replacing any previous value,
    /// and evicts least recently used entries until the total fits the capacity.
    ///
    /// Returns `false` if the value alone (plus [`Self::ENTRY_OVERHEAD`]) exceeds the capacity:
    /// it is then not cached, and any previous value for `key` is dropped too, so a stale value
    /// is never served after a refused replacement.
    pub fn insert(&self, key: K, value: V) -> bool {
        let charge = value.weight().saturating_add(Self::ENTRY_OVERHEAD);
        // Dropped after the lock is released (declared before the guard, so dropped after it).
        let mut released: Vec<V> = Vec::new();
        let mut inner = self.lock();
        if let Some(old) = inner.lru.pop(&key) {
            inner.bytes -= old.charge;
            released.push(old.value);
        }
        if charge > self.capacity {
            return false;
        }
        while inner.bytes + charge > self.capacity {
            let Some((_, evicted)) = inner.lru.pop_lru() else {
                break;
            };
            inner.bytes -= evicted.charge;
            inner.counters.evictions += 1;
            released.push(evicted.value);
        }
        // INV: bytes + charge <= capacity here: either the loop made room, or the cache is empty
        // and `charge <= capacity` was checked above.
        inner.lru.put(key, Entry { value, charge });
        inner.bytes += charge;
        inner.counters.inserts += 1;
        drop(inner);
        drop(released);
        true
    }

    /// Removes `key` and returns its value, if it was cached.
    pub fn remove<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut inner = self.lock();
        let entry = inner.lru.pop(key)?;
        inner.bytes -= entry.charge;
        drop(inner);
        Some(entry.value)
    }

    /// Removes every entry whose key satisfies `pred` (for example all chunks of one inode) and
    /// returns how many were removed. Scans the whole cache under the lock.
    pub fn remove_if(&self, mut pred: impl FnMut(&K) -> bool) -> usize
    where
        K: Clone,
    {
        let mut released: Vec<V> = Vec::new();
        let mut inner = self.lock();
        let doomed: Vec<K> = inner
            .lru
            .iter()
            .filter(|(key, _)| pred(key))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &doomed {
            if let Some(entry) = inner.lru.pop(key) {
                inner.bytes -= entry.charge;
                released.push(entry.value);
            }
        }
        drop(inner);
        let removed = released.len();
        drop(released);
        removed
    }

    /// Removes every entry. Counters are kept.
    pub fn clear(&self) {
        let mut inner = self.lock();
        let old = mem::replace(&mut inner.lru, LruCache::unbounded());
        inner.bytes = 0;
        drop(inner);
        drop(old);
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.lock().lru.len()
    }

    /// Whether the cache holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes currently charged: the sum over entries of weight plus [`Self::ENTRY_OVERHEAD`].
    /// Never above [`capacity`](Self::capacity).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The configured bound on [`bytes`](Self::bytes).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A consistent snapshot of the counters and current contents.
    pub fn stats(&self) -> CacheStats {
        let inner = self.lock();
        inner
            .counters
            .snapshot(inner.bytes as u64, inner.lru.len() as u64)
    }

    /// Locks the state. A panic while the lock was held (in a caller's `Hash`, `Eq`, `Clone` or
    /// `Weigh`) may have left the byte count out of step with the entries; since a cache may
    /// forget anything, recovery simply empties it and carries on.
    fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                let mut guard = poisoned.into_inner();
                guard.lru = LruCache::unbounded();
                guard.bytes = 0;
                self.inner.clear_poison();
                guard
            }
        }
    }
}

impl<K, V> std::fmt::Debug for MemoryCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
