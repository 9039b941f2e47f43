//! Waiting awake for a node's answer to a small read.
//!
//! A random read waits for one QUIC round trip to one node (a fraction of a millisecond on a
//! fast network). Awaited plainly, the runtime thread parks in `epoll_wait`, and the answer
//! must wake it; on a virtual machine whose idle CPUs halt, that wake-up is a trip through the
//! hypervisor, a good part of the round trip itself. So one such wait at a time keeps its
//! thread polling instead: it yields to the runtime, which then polls the network driver
//! without blocking, and to the OS scheduler (the node that must answer may want this very
//! CPU), until the answer is in or a bound has passed; past the bound it waits plainly.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

/// How long a read's wait stays awake: a round trip to a node with its disk read, on a
/// healthy local network, and no more (a slower answer waits asleep).
pub(crate) const ANSWER_SPIN: Duration = Duration::from_millis(1);

/// Whether a wait is awake now: one is enough to keep a runtime thread polling the network
/// for every answer, and more would only burn more CPUs.
#[derive(Debug, Default)]
pub(crate) struct Awake {
    polling: AtomicBool,
}

/// Clears the flag when the awake part ends, also when the wait is dropped mid-way.
struct Polling<'a>(&'a AtomicBool);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Awake {
    /// Awaits `fut`, for at most `max` awake (see the [module doc](self)) unless another wait
    /// is awake already.
    pub(crate) async fn wait<F: Future>(&self, fut: F, max: Duration) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        if max.is_zero() || self.polling.swap(true, Ordering::Acquire) {
            return fut.await;
        }
        let polling = Polling(&self.polling);
        let start = Instant::now();
        loop {
            if let Poll::Ready(v) = futures::poll!(fut.as_mut()) {
                return v;
            }
            if start.elapsed() >= max {
                break;
            }
            std::thread::yield_now();
            tokio::task::yield_now().await;
        }
        drop(polling);
        fut.await
    }

    #[cfg(test)]
    fn is_polling(&self) -> bool {
        self.polling.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn an_answer_from_another_thread_ends_the_wait_and_the_flag() {
        let rt = rt();
        let awake = Arc::new(Awake::default());
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send(7).unwrap();
        });
        let a = awake.clone();
        let start = Instant::now();
        let got = rt.block_on(async move { a.wait(rx, Duration::from_secs(20)).await });
        assert_eq!(got.unwrap(), 7);
        // Far below the 20 s bound even on a loaded machine.
        assert!(start.elapsed() < Duration::from_secs(10));
        assert!(!awake.is_polling());
    }

    #[test]
    fn a_slow_answer_is_awaited_asleep_past_the_bound() {
        let rt = rt();
        let awake = Arc::new(Awake::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let a = awake.clone();
        let wait = rt.spawn(async move { a.wait(rx, Duration::from_millis(20)).await });
        std::thread::sleep(Duration::from_millis(300));
        // The bound has passed: no longer polling, still waiting.
        assert!(!awake.is_polling());
        assert!(!wait.is_finished());
        tx.send(3).unwrap();
        assert_eq!(rt.block_on(wait).unwrap().unwrap(), 3);
    }

    #[test]
    fn one_wait_polls_at_a_time_and_a_dropped_one_lets_go() {
        let rt = rt();
        let awake = Arc::new(Awake::default());
        let (_tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let a = awake.clone();
        let first = rt.spawn(async move { a.wait(rx, Duration::from_secs(20)).await });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !awake.is_polling() {
            assert!(Instant::now() < deadline, "the first wait never polled");
            std::thread::yield_now();
        }
        // A second wait while the first polls: answered as a plain await would be.
        let a = awake.clone();
        let second = rt.block_on(async move { a.wait(async { 5 }, Duration::from_secs(20)).await });
        assert_eq!(second, 5);
        assert!(awake.is_polling(), "the first wait still polls");
        // Dropping the first mid-way (a cancelled read) clears the flag.
        first.abort();
        let _ = rt.block_on(first);
        assert!(!awake.is_polling());
        // Off: a zero bound never polls.
        let a = awake.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let off = rt.spawn(async move { a.wait(rx, Duration::ZERO).await });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!awake.is_polling());
        tx.send(1).unwrap();
        assert_eq!(rt.block_on(off).unwrap().unwrap(), 1);
    }
}
