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
use crate::pipeline::Worker;
use crate::supervisor::Supervisor;
use crate::workload_api::Workload;

/// The worker kind, as it appears in the logs.
pub const KIND: &str = "tasks";

/// Starts one worker task under the supervisor, which joins it and reports a
/// panic. Spawning a task cannot fail.
pub(crate) fn spawn<W: Workload>(worker: Worker<W>, supervisor: &mut Supervisor) {
    let id = worker.id;
    let span = tracing::info_span!("worker", id);
    supervisor.spawn_task(format!("worker {id}"), span, work(worker));
}

/// Takes items until the channel is empty and every sender is gone.
///
/// The loop never races `recv_async` against anything in `select!`, not even
/// against cancellation: dropping a pending `recv_async` future can lose the
/// wake-up meant for it, leaving an item queued while every worker sleeps.
/// Shutdown closes the channel instead (the producers stop and drop their
/// senders), and `recv_async` returns `Err` once the queue is drained.
async fn work<W: Workload>(mut worker: Worker<W>) {
    let mut pacer = Pacer::default();
    while let Ok(item) = worker.rx.recv_async().await {
        worker.took_item();
        let outcome = worker.workload.handle(item).await;
        worker.finished(outcome);
        // flume takes no part in tokio's cooperative budget: with items
        // always waiting and a handler that finishes without waiting on
        // anything, `recv_async` is ready every time and this loop would
        // never yield its runtime thread, starving the signal listener and
        // the timers. The pacer makes it yield now and then.
        let due = pacer.count(1);
        if due > 0 {
            coop::spend(due).await;
        }
    }
}
