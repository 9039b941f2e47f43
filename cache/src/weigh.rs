//! How a cached value reports the memory it holds.

use std::sync::Arc;

/// The number of bytes a value keeps alive, charged against a
/// [`MemoryCache`](crate::MemoryCache)'s capacity.
///
/// Report heap bytes owned by the value; the cache adds a fixed
/// [`ENTRY_OVERHEAD`](crate::MemoryCache::ENTRY_OVERHEAD) per entry for the key, the list node and
/// the hash slot. For shared values (`Arc`) the full pointee is charged even if other owners
/// exist: the cache cannot know whether it holds the last reference, and over-charging keeps
/// the memory bound honest.
pub trait Weigh {
    /// Bytes this value holds, excluding the per-entry overhead.
    fn weight(&self) -> usize;
}

impl Weigh for [u8] {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weigh for Vec<u8> {
    /// The allocated capacity, not the length: that is the memory the vector keeps alive.
    fn weight(&self) -> usize {
        self.capacity()
    }
}

impl<T: Weigh + ?Sized> Weigh for Box<T> {
    fn weight(&self) -> usize {
        (**self).weight()
    }
}

impl<T: Weigh + ?Sized> Weigh for Arc<T> {
    fn weight(&self) -> usize {
        (**self).weight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_containers_report_their_heap_size() {
        let mut v = Vec::with_capacity(100);
        v.extend_from_slice(&[1u8; 10]);
        assert_eq!(v.weight(), 100);
        assert_eq!(Arc::new(vec![0u8; 7]).weight(), 7);
        let shared: Arc<[u8]> = Arc::from(&[0u8; 9][..]);
        assert_eq!(shared.weight(), 9);
        let boxed: Box<[u8]> = vec![0u8; 5].into_boxed_slice();
        assert_eq!(boxed.weight(), 5);
    }
}
