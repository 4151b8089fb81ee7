//! Workers as OS threads (generated with `worker_kind=threads`). Pick this
//! kind when handling an item is CPU-bound work, or calls a blocking library,
//! that must stay off the tokio runtime.
//!
//! Each worker is a `std::thread` of its own. It loops on the blocking
//! `recv` over its receiver clone and runs [`Workload::handle`], the same
//! async handler the task workers await, to completion on that thread with
//! [`tokio::runtime::Handle::block_on`]. The thread belongs to the worker
//! alone, so a handler may block or compute for as long as it likes: it holds
//! up only its own worker, never the runtime. It may still await tokio I/O
//! and timers, which the runtime's own threads drive. (The same handler in
//! mpsc-fan-in or kanal-hot-path, or in a project generated with
//! `worker_kind=tasks`, runs on the runtime and must not block.)
//!
//! Inside the handler the runtime's context is entered, as in any async code:
//! calling `block_on` again, or starting and dropping a tokio runtime of its
//! own (as some blocking clients do), panics there. Use the async API of
//! such a library instead, or hand the call to a thread of your own.
//!
//! The producers stay async tasks and use `send_async`: the same flume
//! channel has a blocking end and an async end, and nothing blocking ever
//! runs on the runtime (`tests/pipeline.rs::nothing_blocks_the_runtime`
//! proves it, with a handler that blocks its thread). The supervisor never
//! joins a thread: each reports its end through a channel, so waiting for
//! the workers never blocks the runtime either.

use crate::pipeline::{BatchMessage, Worker};
use crate::supervisor::Supervisor;
use crate::workload_api::Workload;

/// The worker kind, as it appears in the logs.
pub const KIND: &str = "threads";

/// How many items a producer's [`crate::coop::Pacer`] counts for each item
/// it sends one by one: just that item, so a producer that never waits
/// yields about every 33,000 items. With worker threads there is no worker
/// on the runtime to hand the thread to, and each yield also polls the I/O
/// driver: a unit of budget per item cost 4 producers a quarter of their
/// throughput with 4 worker threads and a third with 1
/// (docs/measured-results.md in the Conveyor repository).
pub const PRODUCER_ITEM_WEIGHT: u32 = 1;

/// Starts one worker thread, named `worker-<id>`, that takes items one by
/// one under the supervisor. If the operating system refuses the thread, the
/// supervisor counts a failed stage and stops the producers.
pub(crate) fn spawn_items<W: Workload>(worker: Worker<W, W::Item>, supervisor: &mut Supervisor) {
    spawn(worker.id, work_items(worker), supervisor);
}

/// Starts one worker thread that takes batches, like [`spawn_items`].
pub(crate) fn spawn_batches<W: Workload, M: BatchMessage<W>>(
    worker: Worker<W, M>,
    supervisor: &mut Supervisor,
) {
    spawn(worker.id, work_batches(worker), supervisor);
}

fn spawn<F>(id: usize, work: F, supervisor: &mut Supervisor)
where
    F: Future<Output = ()> + Send + 'static,
{
    let span = tracing::info_span!("worker", id);
    // The handle of the runtime `run` is on: the handler's timers and I/O
    // are registered with it, and its threads drive them.
    let runtime = tokio::runtime::Handle::current();
    supervisor.spawn_thread(format!("worker-{id}"), move || {
        // One `block_on` for the whole loop rather than one per item:
        // entering the runtime takes a lock shared by every worker.
        span.in_scope(|| runtime.block_on(work));
        Ok(())
    });
}

// Both loops take messages until the channel is empty and every sender is
// gone. A thread cannot be cancelled; it ends because shutdown closes the
// channel: the producers stop and drop their senders, and `recv` returns
// `Err` once the queue is drained.
//
// Each loop runs only on its own thread, under `block_on`, so the blocking
// `recv` parks this thread and nothing else, and the loop needs no
// cooperative yields: there are no other tasks on this thread to starve.

/// Takes items one by one and hands each to the handler, called right here
/// rather than in a helper `async fn`, as the task workers do.
async fn work_items<W: Workload>(mut worker: Worker<W, W::Item>) {
    while let Ok(item) = worker.rx.recv() {
        worker.took_message();
        let settler = &mut worker.settler;
        let timing = settler.timer().start();
        let outcome = settler.workload().handle(&item).await;
        settler.timer().stop(timing);
        match outcome {
            Ok(()) => settler.handled_one(),
            Err(error) => settler.item_failed(item, error).await,
        }
    }
}

/// Takes batches and settles each: hands it to the batch handler.
async fn work_batches<W: Workload, M: BatchMessage<W>>(mut worker: Worker<W, M>) {
    while let Ok(batch) = worker.rx.recv() {
        worker.took_message();
        batch.settle(&mut worker.settler).await;
    }
}
