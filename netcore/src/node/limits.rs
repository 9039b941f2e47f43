//! Admission limits of the node: counts of things held per key (an IP address, a client key),
//! each released when its guard is dropped.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// At most `max` holders per key at once.
#[derive(Debug)]
pub(crate) struct Limiter<K: Hash + Eq + Clone> {
    max: u32,
    counts: Mutex<HashMap<K, u32>>,
}

/// One holder's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct LimitGuard<K: Hash + Eq + Clone> {
    limiter: Arc<Limiter<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub(crate) fn new(max: u32) -> Arc<Self> {
        Arc::new(Limiter {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A place for `key`, or `None` when `key` holds `max` already.
    pub(crate) fn try_acquire(self: &Arc<Self>, key: K) -> Option<LimitGuard<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(LimitGuard {
            limiter: self.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn held(&self, key: &K) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone> Drop for LimitGuard<K> {
    fn drop(&mut self) {
        let mut counts = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                // INV: the map holds only keys with places taken, so it cannot grow without
                // bound under a flood from ever-new addresses or keys.
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_key_and_freed_on_drop() {
        let l = Limiter::new(2);
        let a1 = l.try_acquire("a").unwrap();
        let _a2 = l.try_acquire("a").unwrap();
        assert!(l.try_acquire("a").is_none(), "a is at its limit");
        let _b = l.try_acquire("b").expect("other keys are not affected");
        drop(a1);
        assert_eq!(l.held(&"a"), 1);
        assert!(
            l.try_acquire("a").is_some(),
            "a freed place is usable again"
        );
        drop(_b);
        assert_eq!(
            l.counts.lock().unwrap().len(),
            1,
            "keys with nothing held are forgotten"
        );
    }
}
