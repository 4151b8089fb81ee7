//! Workers as OS threads (generated with `worker_kind=threads`). Pick this
//! kind when handling an item is CPU-bound work, or calls a blocking library,
//! that must stay off the tokio runtime.
//!
//! Each worker is a `std::thread` that loops on the blocking `recv` over its
//! receiver clone and calls [`Workload::handle`]. The producers stay async
//! tasks and use `send_async`: the same flume channel has a blocking end and
//! an async end, and nothing blocking ever runs on the runtime
//! (`tests/pipeline.rs::nothing_blocks_the_runtime` proves it). The
//! supervisor never joins a thread: each reports its end through a channel,
//! so waiting for the workers never blocks the runtime either.

use crate::pipeline::Worker;
use crate::supervisor::Supervisor;

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

/// Starts one worker thread, named `worker-<id>`, under the supervisor. If
/// the operating system refuses the thread, the supervisor counts a failed
/// stage and stops the producers.
pub(crate) fn spawn<W: Workload>(worker: Worker<W>, supervisor: &mut Supervisor) {
    let id = worker.id;
    let span = tracing::info_span!("worker", id);
    supervisor.spawn_thread(format!("worker-{id}"), move || {
        span.in_scope(|| work(worker));
        Ok(())
    });
}

/// Takes items until the channel is empty and every sender is gone. A thread
/// cannot be cancelled; it ends because shutdown closes the channel: the
/// producers stop and drop their senders, and `recv` returns `Err` once the
/// queue is drained. The blocking `recv` parks this thread only, never the
/// runtime, so it needs no cooperative yields.
fn work<W: Workload>(mut worker: Worker<W>) {
    while let Ok(item) = worker.rx.recv() {
        worker.took_item();
        let outcome = worker.workload.handle(item);
        worker.finished(outcome);
    }
}
