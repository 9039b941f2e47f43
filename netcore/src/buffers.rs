//! Reused large buffers.
//!
//! A node receives every sliver into one buffer of the sliver's length (1-2 MiB for a 4 MiB
//! chunk) and reads every sliver it serves into another. Allocated anew each time, every such
//! buffer is a fresh mapping (the node pins glibc's mmap threshold low, so that freed bodies
//! go back to the system at once), and its pages are faulted in and zeroed by the kernel as
//! the bytes are copied in: a fifth of a node's CPU while it stores (perf, 768 MiB written to
//! a 7-node testnet). The mount's sealed chunks, blobs and slivers cost it the same way. A
//! [`BufferPool`] keeps a bounded number of bytes of freed buffers and hands them out again;
//! a buffer is filled by appending, so nothing zeroes it either. An idle pool lets its
//! buffers go ([`BufferPool::release_when_idle`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Buffers kept at most, whatever their size.
const MAX_BUFFERS: usize = 64;

/// How long a pool of a long-running process keeps its buffers unused before it frees them
/// (see [`BufferPool::release_when_idle`]).
pub const IDLE_RELEASE: Duration = Duration::from_secs(10);

/// Freed buffers, ready to be handed out again. Bounded in bytes (their capacity), so a pool
/// adds at most that much to the process's resident memory beyond what is in flight.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Free>,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct Free {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
    /// When a buffer was last taken or given back.
    used: Option<Instant>,
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
        let mut data = self.pick(len).unwrap_or_default();
        data.clear();
        data.reserve_exact(len);
        self.adopt(data)
    }

    /// An empty buffer with room for `len` bytes whose contents start at an address that is a
    /// multiple of `align` (a power of two), so that an `O_DIRECT` write can go straight from
    /// it (see `cache::direct`) instead of through a copy. Fill it by appending to
    /// [`Pooled::vec_mut`]: the zeros before that start (fewer than `align`) are in the vector
    /// but not in the buffer's contents.
    pub fn take_aligned(self: &Arc<Self>, len: usize, align: usize) -> Pooled {
        let mut pooled = self.take(len + align);
        let pad = pooled.data.as_ptr().align_offset(align).min(align - 1);
        pooled.data.resize(pad, 0);
        pooled.start = pad;
        pooled
    }

    /// A buffer of exactly `len` bytes to be overwritten: a kept one holds what it held
    /// before (only bytes it never held are zeroed), a new one zeros.
    pub fn take_filled(self: &Arc<Self>, len: usize) -> Pooled {
        let mut data = self.pick(len).unwrap_or_default();
        if data.len() >= len {
            data.truncate(len);
        } else {
            data.reserve_exact(len - data.len());
            data.resize(len, 0);
        }
        self.adopt(data)
    }

    /// The smallest kept buffer that holds `len` bytes, if it is at most twice that.
    fn pick(&self, len: usize) -> Option<Vec<u8>> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        free.used = Some(Instant::now());
        let best = free
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len && b.capacity() / 2 <= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)?;
        let b = free.buffers.swap_remove(best);
        free.bytes -= b.capacity();
        Some(b)
    }

    /// `data` as this pool's: it comes back to the pool when dropped.
    pub fn adopt(self: &Arc<Self>, data: Vec<u8>) -> Pooled {
        Pooled {
            data,
            start: 0,
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
        free.used = Some(Instant::now());
        if free.bytes + cap <= self.max_bytes && free.buffers.len() < MAX_BUFFERS {
            free.bytes += cap;
            free.buffers.push(buffer);
        }
    }

    /// Frees every kept buffer if none was taken or given back for `idle`; returns the bytes
    /// freed. A process that stopped storing and reading does not keep the pool's memory.
    pub fn release_idle(&self, idle: Duration) -> usize {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.used.is_some_and(|t| t.elapsed() < idle) {
            return 0;
        }
        free.buffers = Vec::new();
        std::mem::take(&mut free.bytes)
    }

    /// Calls [`BufferPool::release_idle`] every `idle / 2` on `rt`, for as long as the pool
    /// exists.
    pub fn release_when_idle(self: &Arc<Self>, rt: &tokio::runtime::Handle, idle: Duration) {
        let pool = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(idle / 2);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { break };
                pool.release_idle(idle);
            }
        });
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
    /// Where the contents start in `data` (see [`BufferPool::take_aligned`]).
    start: usize,
    pool: std::sync::Weak<BufferPool>,
}

impl Pooled {
    /// A buffer of no pool, freed when dropped.
    pub fn unpooled(data: Vec<u8>) -> Self {
        Pooled {
            data,
            start: 0,
            pool: std::sync::Weak::new(),
        }
    }

    /// The buffer itself, to fill (after an aligned buffer's leading zeros, which are not
    /// part of the contents).
    pub fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.data
    }

    /// Moves the buffer out, leaving an empty one of no pool.
    pub fn take(&mut self) -> Pooled {
        std::mem::replace(self, Pooled::unpooled(Vec::new()))
    }

    /// The buffer, no longer the pool's (see [`BufferPool::adopt`] to hand it back); an
    /// aligned one loses its leading zeros (a move of its contents).
    pub fn into_vec(mut self) -> Vec<u8> {
        let mut data = std::mem::take(&mut self.data);
        data.drain(..self.start.min(data.len()));
        data
    }

    fn contents(&self) -> &[u8] {
        self.data.get(self.start..).unwrap_or_default()
    }
}

impl std::ops::Deref for Pooled {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.contents()
    }
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        self.contents()
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
    fn a_filled_buffer_has_the_length_asked_and_reuses_the_bytes_it_held() {
        let pool = BufferPool::new(8 << 20);
        let fresh = pool.take_filled(3000);
        assert_eq!(fresh.len(), 3000);
        assert!(fresh.iter().all(|b| *b == 0), "a new buffer is zeroed");
        let mut a = pool.take(5000);
        a.vec_mut().extend_from_slice(&[9; 4000]);
        drop(a);
        let b = pool.take_filled(4500);
        assert_eq!(b.len(), 4500);
        assert!(
            b[..4000].iter().all(|x| *x == 9),
            "bytes held before are not zeroed"
        );
        assert!(
            b[4000..].iter().all(|x| *x == 0),
            "bytes never held are zeroed"
        );
        drop(b);
        let c = pool.take_filled(2600);
        assert_eq!(c.len(), 2600);
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
    fn an_idle_pool_frees_what_it_kept() {
        let pool = BufferPool::new(8 << 20);
        drop(pool.take(1 << 20));
        assert_eq!(
            pool.release_idle(Duration::from_secs(60)),
            0,
            "used just now"
        );
        assert_eq!(pool.kept_bytes(), 1 << 20);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(pool.release_idle(Duration::from_millis(10)), 1 << 20);
        assert_eq!(pool.kept_bytes(), 0);
    }

    #[test]
    fn the_idle_release_runs_on_its_own_and_ends_with_the_pool() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let pool = BufferPool::new(8 << 20);
        rt.block_on(async {
            pool.release_when_idle(&tokio::runtime::Handle::current(), Duration::from_secs(10));
            drop(pool.take(1 << 20));
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(pool.kept_bytes(), 1 << 20);
        });
        // The pool's clock is the real one: make the buffer old, then let the task tick.
        pool.free.lock().unwrap().used = Some(Instant::now() - Duration::from_secs(11));
        rt.block_on(async {
            tokio::time::sleep(Duration::from_secs(6)).await;
            assert_eq!(pool.kept_bytes(), 0, "released by the task");
        });
        drop(pool);
        rt.block_on(async { tokio::time::sleep(Duration::from_secs(6)).await });
    }

    #[test]
    fn a_buffer_outliving_its_pool_is_simply_freed() {
        let pool = BufferPool::new(8 << 20);
        let a = pool.take(1024);
        drop(pool);
        drop(a);
    }

    #[test]
    fn an_aligned_buffer_holds_its_contents_at_an_aligned_address_every_time() {
        let pool = BufferPool::new(8 << 20);
        for round in 0..3u8 {
            let mut a = pool.take_aligned(100_000, 4096);
            assert!(a.is_empty(), "round {round}: a new buffer has no contents");
            a.vec_mut().extend(std::iter::repeat_n(round, 100_000));
            assert_eq!(a.len(), 100_000);
            assert_eq!(a.as_ptr() as usize % 4096, 0, "round {round}: not aligned");
            assert!(a.iter().all(|b| *b == round));
            // Handed back and out again (the same allocation, its pad worked out anew).
            drop(a);
        }
        let mut a = pool.take_aligned(10, 4096);
        a.vec_mut().extend_from_slice(b"0123456789");
        assert_eq!(
            a.into_vec(),
            b"0123456789",
            "into_vec drops the leading zeros"
        );
    }

    impl Pooled {
        fn capacity_for_test(&self) -> usize {
            self.data.capacity()
        }
    }
}
