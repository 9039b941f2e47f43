//! Outboards of recently read slivers (see [`Outboard`]): a sliver's first ranged read hashes
//! it whole, later ones read just their range. Byte-bounded LRU; an outboard is kept only once
//! its root matched the committed sliver hash, and a blob's slivers never change, so entries
//! need no invalidation (a deleted sliver's entry ages out; reading its range finds no file).

use std::sync::{Arc, Mutex};

use crate::codec::{BlobId, Outboard, SliverIndex};

/// Memory the cache may hold: 32 bytes per 16 KiB granule, so about 8 GiB of slivers' worth.
pub(super) const OUTBOARD_CACHE_BYTES: usize = 16 << 20;

type Key = (BlobId, SliverIndex);

pub(super) struct Outboards {
    inner: Mutex<Inner>,
}

struct Inner {
    lru: lru::LruCache<Key, Arc<Outboard>>,
    bytes: usize,
}

impl Outboards {
    pub(super) fn new() -> Self {
        Outboards {
            inner: Mutex::new(Inner {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Holding no invariant beyond the byte count, a poisoned cache is simply taken over.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn get(&self, key: &Key) -> Option<Arc<Outboard>> {
        self.lock().lru.get(key).cloned()
    }

    pub(super) fn insert(&self, key: Key, outboard: Arc<Outboard>) {
        let weight = outboard.weight();
        if weight > OUTBOARD_CACHE_BYTES {
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.lru.put(key, outboard) {
            inner.bytes -= old.weight();
        }
        inner.bytes += weight;
        while inner.bytes > OUTBOARD_CACHE_BYTES {
            match inner.lru.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.weight(),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_bytes() {
        let cache = Outboards::new();
        let sliver = vec![7u8; 1 << 20];
        let ob = Arc::new(Outboard::build(&sliver));
        let fits = OUTBOARD_CACHE_BYTES / ob.weight();
        for i in 0..fits + 10 {
            cache.insert((BlobId([0; 32]), i as u16), ob.clone());
        }
        let inner = cache.lock();
        assert!(inner.bytes <= OUTBOARD_CACHE_BYTES);
        assert_eq!(inner.lru.len(), fits);
        assert_eq!(inner.bytes, fits * ob.weight());
        drop(inner);
        assert!(cache.get(&(BlobId([0; 32]), 0)).is_none(), "oldest evicted");
        assert!(cache.get(&(BlobId([0; 32]), (fits + 9) as u16)).is_some());
    }
}
