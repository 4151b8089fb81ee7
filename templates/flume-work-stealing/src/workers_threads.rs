//! Workers as OS threads (generated with `worker_kind=threads`). Pick this
//! kind when handling an item is CPU-bound work, or calls a blocking library,
//! that must stay off the tokio runtime.
//!
//! Each worker is a `std::thread` that loops on the blocking `recv` over its
//! receiver clone and calls [`Workload::handle`]. The producers stay async
//! tasks and use `send_async`: the same flume channel has a blocking end and
//! an async end, and nothing blocking ever runs on the runtime
//! (`tests/pipeline.rs::nothing_blocks_the_runtime` proves it). Joining a
//! thread blocks too, so it happens on tokio's blocking pool.

use std::any::Any;
use std::thread::JoinHandle;

use tokio_util::task::TaskTracker;

use crate::pipeline::Worker;

/// The worker kind, as it appears in the logs.
pub const KIND: &str = "threads";

/// What the pipeline needs from the code it carries. Implemented by
/// [`crate::workload::DemoWorkload`]; tests implement it to observe the pipeline.
pub trait Workload: Send + Sync + 'static {
    /// One unit of work travelling through the channel.
    type Item: Send + 'static;

    /// Creates item number `seq`. Each `seq` below `--items` is produced
    /// exactly once, by one of the producer tasks. It runs on the tokio
    /// runtime, so keep it cheap and never block in it.
    fn produce(&self, seq: u64) -> Self::Item;

    /// Handles one item, on whichever worker thread took it. It runs outside
    /// the runtime, so it may block and compute as long as it needs (there is
    /// no `.await` here). An error is counted and logged, and the worker goes
    /// on with the next item.
    fn handle(&self, item: Self::Item) -> anyhow::Result<()>;
}

/// A running worker.
pub(crate) type Handle = JoinHandle<()>;

/// Starts one worker thread, named `worker-<id>`. Fails when the operating
/// system refuses another thread.
pub(crate) fn spawn<W: Workload>(
    worker: Worker<W>,
    _tracker: &TaskTracker,
) -> std::io::Result<Handle> {
    let span = tracing::info_span!("worker", id = worker.id);
    std::thread::Builder::new()
        .name(format!("worker-{}", worker.id))
        .spawn(move || span.in_scope(|| work(worker)))
}

/// Waits for a worker thread to end, without blocking the runtime; `Err`
/// describes its panic.
pub(crate) async fn join(handle: Handle) -> Result<(), String> {
    match tokio::task::spawn_blocking(move || handle.join()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(panic)) => Err(panic_message(panic.as_ref())),
        Err(join_error) => Err(join_error.to_string()),
    }
}

/// Takes items until the channel is empty and every sender is gone. A thread
/// cannot be cancelled; it ends because shutdown closes the channel: the
/// producers stop and drop their senders, and `recv` returns `Err` once the
/// queue is drained.
fn work<W: Workload>(mut worker: Worker<W>) {
    while let Ok(item) = worker.rx.recv() {
        worker.took_item();
        let outcome = worker.workload.handle(item);
        worker.finished(outcome);
    }
}

/// The text a panic was raised with, if it was text.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
