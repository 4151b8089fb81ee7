//! The blocking sink: one OS thread takes items out of flume with the
//! blocking `recv` and hands each to [`BlockingSink::write`]. An empty channel
//! parks the thread, never a runtime worker.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{DEPTH_SAMPLE_EVERY, counted};
use crate::counters::Counters;
use crate::metrics::HandleTimer;
use crate::supervisor::Supervisor;

/// The blocking half that takes results: a file writer, a blocking database
/// driver. Every call runs on the pipeline's sink thread, never on the async
/// runtime, so it may block as long as it needs.
pub trait BlockingSink: Send + Sync + 'static {
    /// What the async stage hands to the sink.
    type Output: Send + 'static;

    /// The sink's open state (a file, a connection). It lives on the sink
    /// thread only, so it need not be `Send`.
    type Writer;

    /// Opens the sink, once, before any item is produced. An error ends the
    /// run before it starts, as a failure (exit code 1).
    fn open(&self) -> anyhow::Result<Self::Writer>;

    /// Writes one item. An error is counted as a failed item and logged, and
    /// the sink goes on with the next one.
    fn write(&self, writer: &mut Self::Writer, item: Self::Output) -> anyhow::Result<()>;

    /// Finishes the sink after the last item (flush, commit). An error makes
    /// the run a failure.
    fn finish(&self, writer: Self::Writer) -> anyhow::Result<()>;
}

/// `--output`: a file to create or truncate. Checked when the flags are
/// parsed (its folder must exist and it must not be a folder), so a mistyped
/// path is a configuration error (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPath(pub PathBuf);

impl OutputPath {
    /// The clap value parser for `--output`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let path = PathBuf::from(value);
        if value.is_empty() || path.is_dir() {
            return Err("expected a file path".to_owned());
        }
        let folder = match path.parent() {
            Some(folder) if !folder.as_os_str().is_empty() => folder,
            _ => std::path::Path::new("."),
        };
        if !folder.is_dir() {
            return Err(format!("folder {} does not exist", folder.display()));
        }
        Ok(Self(path))
    }
}

/// An item on its way to the sink: `None` stands for an item that failed in
/// the async stage, so the sink alone counts every item's outcome.
pub(super) type Outcome<T> = Option<T>;

/// Starts the sink thread. The returned receiver gets a message once the
/// sink has opened, and is closed without one if it cannot open (or its
/// thread cannot start); wait for it before starting the source side.
pub(super) fn spawn<S: BlockingSink>(
    supervisor: &mut Supervisor,
    sink: &Arc<S>,
    rx: flume::Receiver<Outcome<S::Output>>,
) -> oneshot::Receiver<()> {
    let (opened, is_open) = oneshot::channel();
    let sink = Arc::clone(sink);
    let counters = Arc::clone(supervisor.counters());
    let body = counted(move || {
        let _span = tracing::info_span!("sink").entered();
        drain(&*sink, &rx, &counters, opened)
    });
    supervisor.spawn_thread("sink".to_owned(), body);
    is_open
}

/// Waits for the sink thread to open the sink. Returns `false` if it cannot,
/// or if the run is stopped first (a shutdown request while a blocking
/// `open` hangs): either way nothing should be produced, and the supervisor
/// waits for the sink thread no longer than the drain deadline.
pub(super) async fn opened(is_open: oneshot::Receiver<()>, stop: &CancellationToken) -> bool {
    tokio::select! {
        biased;
        opened = is_open => opened.is_ok(),
        () = stop.cancelled() => false,
    }
}

/// Opens the sink, then writes items until every sender is gone and the
/// channel is empty. The sink never looks at cancellation: the async side
/// stops, its senders drop, and `recv` fails once the queue is drained.
fn drain<S: BlockingSink>(
    sink: &S,
    rx: &flume::Receiver<Outcome<S::Output>>,
    counters: &Counters,
    opened: oneshot::Sender<()>,
) -> anyhow::Result<()> {
    let mut writer = sink.open()?;
    let _ = opened.send(());
    let slot = counters.worker(0);
    let (mut handled, mut failed) = (0u64, 0u64);
    let mut receives = 0u64;
    let mut timer = HandleTimer::new();
    while let Ok(outcome) = rx.recv() {
        if receives.is_multiple_of(DEPTH_SAMPLE_EVERY) {
            counters.observe_queue_depth(rx.len() + 1);
        }
        receives += 1;
        let timing = timer.start();
        let written = outcome.map(|item| sink.write(&mut writer, item));
        timer.stop(timing);
        match written {
            Some(Ok(())) => handled += 1,
            Some(Err(error)) => {
                failed += 1;
                tracing::warn!(error = format!("{error:#}"), "item failed in the sink");
            }
            None => failed += 1, // already logged by the async stage
        }
        // After every item: if a later `write` panics, the report still
        // knows exactly which items were written before it.
        slot.publish(handled, failed);
    }
    sink.finish(writer)
}
