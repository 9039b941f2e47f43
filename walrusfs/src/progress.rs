//! Progress bars for long commands: drawn on stderr when it is a terminal, with rate and
//! ETA; nothing at all otherwise (scripts and logs stay clean).

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

/// Moves `bar` to `count() - count()-at-start` every 100 ms until dropped: for work whose
/// progress a lower layer counts (a client's sliver bytes, `Client::traffic`).
pub struct Follow {
    task: tokio::task::JoinHandle<()>,
}

impl Follow {
    /// Starts following; call within a tokio runtime.
    pub fn start(bar: indicatif::ProgressBar, count: impl Fn() -> u64 + Send + 'static) -> Self {
        let start = count();
        let task = tokio::spawn(async move {
            loop {
                bar.set_position(count().saturating_sub(start));
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
