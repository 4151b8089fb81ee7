//! Workers as async tasks on the tokio runtime (generated with
//! `worker_kind=tasks`). Pick this kind when handling an item mostly waits on
//! I/O: a database, an HTTP call, a file.
//!
//! Each worker is a task that loops on `recv_async` over its receiver clone
//! and awaits [`Workload::handle`]. Everything here runs on the runtime, so
//! nothing may block, the handler included: a blocking `send`/`recv`, a
//! blocking client library or a long computation would stall every other
//! task on that runtime thread, and on a `current_thread` runtime it
//! deadlocks the whole pipeline
//! (`tests/pipeline.rs::nothing_blocks_the_runtime` proves the pipeline
//! itself does not). A handler that has to block or compute for long belongs
//! in a project generated with `-d worker_kind=threads`.

use crate::coop::{self, Pacer};
use crate::pipeline::{BatchMessage, Worker};
use crate::supervisor::Supervisor;
use crate::workload_api::Workload;

/// The worker kind, as it appears in the logs.
pub const KIND: &str = "tasks";

/// How many items a producer's [`Pacer`] counts for each item it sends one
/// by one: a whole unit of budget, as a send on one of tokio's own channels
/// costs, so a producer that never waits yields about every 128 items.
///
/// With worker tasks that is worth its price. A producer that kept its
/// runtime thread for ~33,000 items at a time (the pacer's default) met the
/// workers it woke in flume's lock, from the other thread: with 1 producer
/// and 4 workers at capacity 64 on 2 cores, that process spun on the lock,
/// used 2.2 times the CPU for the same items, and moved 0.64 to 0.87 as
/// many items per second as with a unit per item (three interleaved runs).
/// The price shows when the machine's other core is busy elsewhere: each
/// yield also polls the I/O driver, and there a unit per item measured 0.94
/// to 1.12 times the bare flume loop, the pacer's default 1.26 to 1.67
/// times (docs/measured-results.md in the Conveyor repository).
pub const PRODUCER_ITEM_WEIGHT: u32 = coop::ITEMS_PER_BUDGET_UNIT;

/// Starts one worker task that takes items one by one under the
/// supervisor, which joins it and reports a panic. Spawning a task cannot
/// fail.
pub(crate) fn spawn_items<W: Workload>(worker: Worker<W, W::Item>, supervisor: &mut Supervisor) {
    spawn(worker.id, work_items(worker), supervisor);
}

/// Starts one worker task that takes batches, like [`spawn_items`].
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
    let span = tracing::debug_span!("worker", id);
    supervisor.spawn_task(format!("worker {id}"), span, work);
}

// Both loops take messages until the channel is empty and every sender is
// gone. They never race `recv_async` against anything in `select!`, not even
// against cancellation: dropping a pending `recv_async` future can lose the
// wake-up meant for it, leaving a message queued while every worker sleeps.
// Shutdown closes the channel instead (the producers stop and drop their
// senders), and `recv_async` returns `Err` once the queue is drained.
//
// flume takes no part in tokio's cooperative budget either: with messages
// always waiting and a handler that finishes without waiting on anything,
// `recv_async` is ready every time and a loop would never yield its runtime
// thread, starving the signal listener and the timers. The pacer makes it
// yield now and then.

/// Takes items one by one and hands each to the handler. The handler is
/// called right here rather than in a helper `async fn`: a nested future
/// per item costs more than the channel does.
async fn work_items<W: Workload>(mut worker: Worker<W, W::Item>) {
    let mut pacer = Pacer::default();
    while let Ok(item) = worker.rx.recv_async().await {
        worker.took_message();
        let settler = &mut worker.settler;
        let timing = settler.timer().start();
        let outcome = settler.workload().handle(&item).await;
        settler.timer().stop(timing);
        match outcome {
            Ok(()) => settler.handled_one(),
            Err(error) => settler.item_failed(item, error).await,
        }
        let due = pacer.count(1);
        if due > 0 {
            coop::spend(due).await;
        }
    }
}

/// Takes batches and settles each: hands it to the batch handler.
async fn work_batches<W: Workload, M: BatchMessage<W>>(mut worker: Worker<W, M>) {
    let mut pacer = Pacer::default();
    while let Ok(batch) = worker.rx.recv_async().await {
        worker.took_message();
        let items = batch.settle(&mut worker.settler).await;
        let due = pacer.count(u32::try_from(items).unwrap_or(u32::MAX));
        if due > 0 {
            coop::spend(due).await;
        }
    }
}
