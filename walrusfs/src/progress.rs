//! Progress bars for long commands: drawn on stderr when it is a terminal, with rate and
//! ETA; nothing at all otherwise (scripts and logs stay clean).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A bar of `len` units, `what` naming the work and `unit` what is counted (`blobs`), or a
/// byte bar when `unit` is `None`. Hidden unless stderr is a terminal.
pub fn bar(what: &str, len: u64, unit: Option<&str>) -> indicatif::ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let template = match unit {
        Some(unit) => format!("{what} {{bar:30}} {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}"),
        None => format!(
            "{what} {{bar:30}} {{bytes}}/{{total_bytes}} {{binary_bytes_per_sec}} eta {{eta}}"
        ),
    };
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

/// Moves `bar` to `counter - start` every 100 ms until dropped: for work whose progress a
/// lower layer counts (a client's sliver bytes).
pub struct Follow {
    task: tokio::task::JoinHandle<()>,
}

impl Follow {
    /// Starts following; call within a tokio runtime.
    pub fn start(bar: indicatif::ProgressBar, counter: Arc<Counter>) -> Self {
        let start = counter.get();
        let task = tokio::spawn(async move {
            loop {
                bar.set_position(counter.get().saturating_sub(start));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Follow { task }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A counter a [`Follow`] reads: the client's traffic counters live inside it.
pub struct Counter {
    client: netcore::client::Client,
    sent: bool,
}

impl Counter {
    /// The sliver bytes `client` has sent.
    pub fn sent(client: &netcore::client::Client) -> Arc<Self> {
        Arc::new(Counter {
            client: client.clone(),
            sent: true,
        })
    }

    /// The sliver bytes `client` has received.
    pub fn received(client: &netcore::client::Client) -> Arc<Self> {
        Arc::new(Counter {
            client: client.clone(),
            sent: false,
        })
    }

    fn get(&self) -> u64 {
        let t = self.client.traffic();
        let c: &AtomicU64 = if self.sent { &t.sent } else { &t.received };
        c.load(Ordering::Relaxed)
    }
}
