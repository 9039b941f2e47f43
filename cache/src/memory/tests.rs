//! Unit tests and a model-based property test for [`MemoryCache`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread;

use proptest::prelude::*;

use super::*;

type Cache = MemoryCache<u32, Arc<Vec<u8>>>;
const OVERHEAD: usize = Cache::ENTRY_OVERHEAD;

fn val(len: usize) -> Arc<Vec<u8>> {
    Arc::new(vec![0u8; len])
}

/// Capacity that fits exactly `n` entries whose values weigh `len` bytes.
fn room_for(n: usize, len: usize) -> usize {
    n * (len + OVERHEAD)
}

#[test]
fn evicts_least_recently_used_first() {
    let cache = Cache::new(room_for(3, 100));
    for key in 1..=3 {
        assert!(cache.insert(key, val(100)));
    }
    // Touch 1 so that 2 becomes the least recently used.
    assert!(cache.get(&1).is_some());
    cache.insert(4, val(100));
    assert!(!cache.contains(&2), "2 was least recently used");
    assert!(cache.contains(&1) && cache.contains(&3) && cache.contains(&4));
    cache.insert(5, val(100));
    assert!(!cache.contains(&3), "3 is next in recency order");
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.stats().evictions, 2);
}

#[test]
fn a_large_insert_evicts_as_many_entries_as_needed() {
    let cache = Cache::new(room_for(4, 100));
    for key in 1..=4 {
        cache.insert(key, val(100));
    }
    // Needs the room of two small entries plus a bit more: three must go, oldest first.
    assert!(cache.insert(9, val(2 * 100 + OVERHEAD + 1)));
    assert_eq!(cache.len(), 2);
    assert!(cache.contains(&4) && cache.contains(&9));
    assert!(cache.bytes() <= cache.capacity());
}

#[test]
fn replacing_a_key_recharges_its_bytes() {
    let cache = Cache::new(10_000);
    cache.insert(1, val(1_000));
    assert_eq!(cache.bytes(), 1_000 + OVERHEAD);
    cache.insert(1, val(300));
    assert_eq!(cache.bytes(), 300 + OVERHEAD);
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.get(&1).map(|v| v.len()), Some(300));
    cache.insert(2, val(50));
    assert_eq!(cache.bytes(), 350 + 2 * OVERHEAD);
    assert_eq!(cache.remove(&1).map(|v| v.len()), Some(300));
    assert_eq!(cache.bytes(), 50 + OVERHEAD);
    assert_eq!(cache.remove(&1), None);
}

#[test]
fn replacing_a_key_does_not_evict_itself_needlessly() {
    // Full cache; growing an entry must only evict others, and the new value must land.
    let cache = Cache::new(room_for(2, 100));
    cache.insert(1, val(100));
    cache.insert(2, val(100));
    assert!(cache.insert(1, val(150)));
    assert!(cache.contains(&1));
    assert!(!cache.contains(&2));
}

#[test]
fn oversize_values_are_not_cached_and_drop_the_stale_value() {
    let cache = Cache::new(1_000);
    assert!(cache.insert(1, val(100)));
    assert!(cache.insert(2, val(100)));
    assert!(
        !cache.insert(1, val(1_000)),
        "value plus overhead exceeds capacity"
    );
    assert!(cache.get(&1).is_none(), "the old value must not be served");
    assert!(cache.contains(&2), "other entries are untouched");
    assert_eq!(cache.bytes(), 100 + OVERHEAD);
    assert!(cache.insert(3, val(1_000 - OVERHEAD - (100 + OVERHEAD))));
    assert_eq!(cache.bytes(), 1_000, "an exact fit is accepted");
    assert_eq!(cache.stats().inserts, 3);
}

#[test]
fn zero_capacity_caches_nothing() {
    let cache = Cache::new(0);
    assert!(!cache.insert(1, val(0)));
    assert!(cache.is_empty());
    assert_eq!(cache.get(&1), None);
}

#[test]
fn tiny_entries_are_bounded_by_the_overhead() {
    let cache = MemoryCache::<u64, Arc<[u8]>>::new(1 << 20);
    let empty: Arc<[u8]> = Arc::from(&[][..]);
    for key in 0..1_000_000u64 {
        cache.insert(key, empty.clone());
    }
    let per_entry = MemoryCache::<u64, Arc<[u8]>>::ENTRY_OVERHEAD;
    assert_eq!(cache.len(), (1 << 20) / per_entry);
    assert!(cache.bytes() <= 1 << 20);
}

#[test]
fn remove_if_drops_matching_keys_only() {
    // Keys as (inode, chunk index), the plaintext chunk cache's shape.
    let cache = MemoryCache::<(u64, u32), Arc<Vec<u8>>>::new(1 << 20);
    for inode in 1..=3u64 {
        for chunk in 0..4u32 {
            cache.insert((inode, chunk), val(10));
        }
    }
    let per_entry = 10 + MemoryCache::<(u64, u32), Arc<Vec<u8>>>::ENTRY_OVERHEAD;
    assert_eq!(cache.remove_if(|&(inode, _)| inode == 2), 4);
    assert_eq!(cache.len(), 8);
    assert_eq!(cache.bytes(), 8 * per_entry);
    assert!(cache.get(&(2, 0)).is_none());
    assert!(cache.get(&(1, 3)).is_some() && cache.get(&(3, 0)).is_some());
    assert_eq!(cache.remove_if(|_| false), 0);
    assert_eq!(cache.stats().evictions, 0, "removals are not evictions");
}

#[test]
fn stats_count_every_event() {
    let cache = Cache::new(room_for(2, 10));
    assert_eq!(cache.stats(), CacheStats::default());
    cache.insert(1, val(10));
    cache.insert(2, val(10));
    cache.get(&1);
    cache.get(&1);
    cache.get(&7);
    cache.insert(3, val(10)); // evicts 2
    cache.get(&2);
    cache.insert(4, val(room_for(2, 10))); // refused: not an insert
    let stats = cache.stats();
    assert_eq!(
        stats,
        CacheStats {
            hits: 2,
            misses: 2,
            inserts: 3,
            evictions: 1,
            bytes: room_for(2, 10) as u64,
            entries: 2,
        }
    );
    assert!((stats.hit_ratio() - 0.5).abs() < f64::EPSILON);
    cache.clear();
    assert_eq!(cache.stats().entries, 0);
    assert_eq!(cache.stats().bytes, 0);
    assert_eq!(cache.stats().hits, 2, "clear keeps counters");
}

#[test]
fn recovers_from_a_panic_inside_the_lock() {
    let cache = MemoryCache::<u32, Arc<Vec<u8>>>::new(10_000);
    cache.insert(1, val(10));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cache.remove_if(|_| panic!("caller bug"));
    }));
    assert!(result.is_err());
    // The poisoned state is discarded rather than trusted.
    assert!(cache.is_empty());
    assert!(cache.insert(2, val(10)));
    assert_eq!(cache.bytes(), 10 + OVERHEAD);
}

#[test]
fn concurrent_inserts_and_gets_stay_consistent() {
    const THREADS: u32 = 8;
    const OPS: u32 = 5_000;
    let cache = Arc::new(Cache::new(room_for(64, 256)));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let cache = Arc::clone(&cache);
            thread::spawn(move || {
                for i in 0..OPS {
                    let key = (i * 7 + t * 13) % 200;
                    if i % 3 == 0 {
                        // The value's content names its key, so a mixed-up entry is detectable.
                        cache.insert(key, Arc::new(vec![key as u8; 64 + (key as usize % 192)]));
                    } else if let Some(v) = cache.get(&key) {
                        assert_eq!(v.len(), 64 + (key as usize % 192));
                        assert!(v.iter().all(|&b| b == key as u8));
                    }
                    if i % 1000 == 999 {
                        cache.remove_if(|k| k % 50 == t);
                    }
                    assert!(cache.bytes() <= cache.capacity());
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("worker thread panicked");
    }
    let stats = cache.stats();
    let gets = u64::from(THREADS) * u64::from(OPS - OPS.div_ceil(3));
    assert_eq!(stats.hits + stats.misses, gets);
    assert!(stats.hits > 0 && stats.evictions > 0);
    assert_eq!(stats.entries as usize, cache.len());
    assert!(stats.bytes as usize <= cache.capacity());
}

/// Reference model: a `VecDeque` in recency order (front = least recently used).
struct Model {
    capacity: usize,
    entries: VecDeque<(u32, usize)>,
}

impl Model {
    fn bytes(&self) -> usize {
        self.entries.iter().map(|&(_, len)| len + OVERHEAD).sum()
    }

    fn take(&mut self, key: u32) -> Option<usize> {
        let pos = self.entries.iter().position(|&(k, _)| k == key)?;
        self.entries.remove(pos).map(|(_, len)| len)
    }

    fn get(&mut self, key: u32) -> Option<usize> {
        let len = self.take(key)?;
        self.entries.push_back((key, len));
        Some(len)
    }

    fn insert(&mut self, key: u32, len: usize) {
        self.take(key);
        if len + OVERHEAD > self.capacity {
            return;
        }
        while self.bytes() + len + OVERHEAD > self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back((key, len));
    }
}

#[derive(Debug, Clone)]
enum Op {
    Get(u32),
    Insert(u32, usize),
    Remove(u32),
    RemoveIf(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..16u32).prop_map(Op::Get),
        4 => (0..16u32, 0..600usize).prop_map(|(k, len)| Op::Insert(k, len)),
        1 => (0..16u32).prop_map(Op::Remove),
        1 => (2..5u32).prop_map(Op::RemoveIf),
    ]
}

proptest! {
    #[test]
    fn behaves_like_a_simple_lru_model(
        capacity in 0..3_000usize,
        ops in proptest::collection::vec(op(), 1..200),
    ) {
        let cache = Cache::new(capacity);
        let mut model = Model { capacity, entries: VecDeque::new() };
        for op in ops {
            match op {
                Op::Get(k) => {
                    prop_assert_eq!(cache.get(&k).map(|v| v.len()), model.get(k));
                }
                Op::Insert(k, len) => {
                    cache.insert(k, val(len));
                    model.insert(k, len);
                }
                Op::Remove(k) => {
                    prop_assert_eq!(cache.remove(&k).map(|v| v.len()), model.take(k));
                }
                Op::RemoveIf(m) => {
                    let before = model.entries.len();
                    model.entries.retain(|&(k, _)| k % m != 0);
                    prop_assert_eq!(cache.remove_if(|k| k % m == 0), before - model.entries.len());
                }
            }
            prop_assert!(cache.bytes() <= capacity);
            prop_assert_eq!(cache.bytes(), model.bytes());
            prop_assert_eq!(cache.len(), model.entries.len());
        }
    }
}
