//! Reused large buffers.
//!
//! A node receives every sliver into one buffer of the sliver's length (1-2 MiB for a 4 MiB
//! chunk) and reads every sliver it serves into another. Allocated anew each time, every such
//! buffer is a fresh mapping (the node pins glibc's mmap threshold low, so that freed bodies
//! go back to the system at once), and its pages are faulted in and zeroed by the kernel as
//! the bytes are copied in: a fifth of a node's CPU while it stores (perf, 768 MiB written to
//! a 7-node testnet). A [`BufferPool`] keeps a bounded number of bytes of freed buffers and
//! hands them out again; a buffer is filled by appending, so nothing zeroes it either.

use std::sync::{Arc, Mutex};

/// Buffers kept at most, whatever their size.
const MAX_BUFFERS: usize = 64;

/// Freed buffers, ready to be handed out again. Bounded in bytes (their capacity), so a pool
/// adds at most that much to the node's resident memory beyond what bodies in flight hold.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Free>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Free {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufferPool {
    /// A pool keeping at most `max_bytes` of freed buffers.
    pub fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(BufferPool {
            free: Mutex::new(Free::default()),
            max_bytes,
        })
    }

    /// An empty buffer with room for `len` bytes: a kept one that fits without wasting more
    /// than its own size, else a new one.
    pub fn take(self: &Arc<Self>, len: usize) -> Pooled {
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
            // Best fit: the smallest kept buffer that holds `len`, if it is at most twice that.
            let best = free
                .buffers
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len && b.capacity() / 2 <= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| {
                let b = free.buffers.swap_remove(i);
                free.bytes -= b.capacity();
                b
            })
        };
        let mut data = reused.unwrap_or_default();
        data.clear();
        data.reserve_exact(len);
        Pooled {
            data,
            pool: Arc::downgrade(self),
        }
    }

    /// Keeps `buffer` for reuse if the pool has room for it; drops it otherwise.
    fn give(&self, buffer: Vec<u8>) {
        let cap = buffer.capacity();
        if cap == 0 {
            return;
        }
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.bytes + cap <= self.max_bytes && free.buffers.len() < MAX_BUFFERS {
            free.bytes += cap;
            free.buffers.push(buffer);
        }
    }

    /// Bytes held by kept buffers.
    #[cfg(test)]
    fn kept_bytes(&self) -> usize {
        self.free.lock().unwrap().bytes
    }
}

/// A buffer from a [`BufferPool`], returned to it when dropped (if the pool still exists).
#[derive(Debug)]
pub struct Pooled {
    data: Vec<u8>,
    pool: std::sync::Weak<BufferPool>,
}

impl Pooled {
    /// A buffer of no pool, freed when dropped.
    pub fn unpooled(data: Vec<u8>) -> Self {
        Pooled {
            data,
            pool: std::sync::Weak::new(),
        }
    }

    /// The buffer itself, to fill.
    pub fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.data
    }

    /// Moves the buffer out, leaving an empty one of no pool.
    pub fn take(&mut self) -> Pooled {
        std::mem::replace(self, Pooled::unpooled(Vec::new()))
    }
}

impl std::ops::Deref for Pooled {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.give(std::mem::take(&mut self.data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_buffer_is_handed_out_again_without_a_new_allocation() {
        let pool = BufferPool::new(8 << 20);
        let mut a = pool.take(1 << 20);
        a.vec_mut().extend_from_slice(&[7; 1000]);
        let ptr = a.as_ptr();
        drop(a);
        assert_eq!(pool.kept_bytes(), 1 << 20);
        let b = pool.take((1 << 20) - 5);
        assert_eq!(b.as_ptr(), ptr, "the kept buffer is reused");
        assert!(b.is_empty(), "a reused buffer comes back empty");
        assert_eq!(pool.kept_bytes(), 0);
    }

    #[test]
    fn a_buffer_much_larger_than_asked_is_not_handed_out() {
        let pool = BufferPool::new(8 << 20);
        drop(pool.take(4 << 20));
        let small = pool.take(4096);
        assert!(small.capacity_for_test() < 4 << 20);
        assert_eq!(pool.kept_bytes(), 4 << 20, "the large buffer stays kept");
        // Too small a kept buffer is not handed out for a larger body either.
        drop(small);
        let large = pool.take(6 << 20);
        assert!(large.capacity_for_test() >= 6 << 20);
    }

    #[test]
    fn the_pool_keeps_at_most_its_bytes() {
        let pool = BufferPool::new(3 << 20);
        let held: Vec<Pooled> = (0..5).map(|_| pool.take(1 << 20)).collect();
        drop(held);
        assert_eq!(pool.kept_bytes(), 3 << 20, "two of five buffers were freed");
        let many: Vec<Pooled> = (0..200).map(|_| pool.take(16)).collect();
        drop(many);
        let free = pool.free.lock().unwrap();
        assert!(free.buffers.len() <= MAX_BUFFERS);
        assert!(free.bytes <= 3 << 20);
    }

    #[test]
    fn a_buffer_outliving_its_pool_is_simply_freed() {
        let pool = BufferPool::new(8 << 20);
        let a = pool.take(1024);
        drop(pool);
        drop(a);
    }

    impl Pooled {
        fn capacity_for_test(&self) -> usize {
            self.data.capacity()
        }
    }
}
