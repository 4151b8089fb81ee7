//! Direction `sync-to-async`: blocking source threads feed async workers.
//!
//! ```text
//! source thread 0 ─┐  send (blocks     ┌─▶ worker task 0 ─▶ Workload::process
//! source thread 1 ─┼─▶ the thread) ────┼─▶ worker task 1 ─▶ Workload::process
//! source thread … ─┘  [ flume, N ]     └─▶ worker task … ─▶ Workload::process
//!                                 recv_async
//! ```

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::DEPTH_SAMPLE_EVERY;
use super::source::{self, BlockingSource, InputPath};
use crate::config::{Config, task_count};
use crate::coop::{self, Pacer};
use crate::counters::Counters;
use crate::metrics::HandleTimer;
use crate::report::Report;
use crate::supervisor::Supervisor;

/// Flags of this direction.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TopologyArgs {
    /// Async worker tasks that take items off the channel.
    #[arg(long, value_name = "N", default_value = "1", value_parser = task_count, allow_negative_numbers = true)]
    pub workers: usize,

    /// Read items from this file, one per line, or from stdin with `-`.
    /// Without it, the source generates `--items` numbered items.
    #[arg(long, value_name = "PATH", value_parser = InputPath::parse)]
    pub input: Option<InputPath>,
}

/// The code the bridge carries: a blocking source and an async stage.
/// Implemented by [`crate::workload::DemoWorkload`]; tests implement it to
/// observe the pipeline.
pub trait Workload: BlockingSource {
    /// Handles one item on an async worker. An error is counted and logged,
    /// and the worker goes on with the next item. Never block in here: await.
    fn process(&self, item: Self::Item) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The most items that can be produced but not yet finished at once: the
/// channel, plus one in the hands of each source thread and each worker.
pub fn max_in_flight(config: &Config) -> usize {
    config.capacity + config.producers + config.topology.workers
}

/// Runs the bridge until the source side is done and every queued item is
/// handled, or until `shutdown` is cancelled and the queue is drained
/// (within `--drain-timeout`).
pub async fn run<W: Workload>(config: &Config, workload: W, shutdown: CancellationToken) -> Report {
    let workers = config.topology.workers;
    let mut supervisor =
        Supervisor::new(super::TOPOLOGY, config, shutdown, config.producers, workers);
    let workload = Arc::new(workload);
    let (tx, rx) = flume::bounded::<W::Item>(config.capacity);
    tracing::info!(
        direction = super::DIRECTION,
        producers = config.producers,
        workers,
        capacity = config.capacity,
        items = config.items,
        "pipeline started"
    );

    for id in 0..workers {
        let worker = work(
            id,
            rx.clone(),
            Arc::clone(&workload),
            Arc::clone(supervisor.counters()),
        );
        let span = tracing::debug_span!("worker", id);
        supervisor.spawn_task(format!("worker {id}"), span, worker);
    }
    // Only the workers may hold receivers: if they all die, the source
    // threads' `send` fails instead of blocking forever.
    drop(rx);
    // `tx` moves into `spawn`, which hands a clone to each thread.
    source::spawn(&mut supervisor, config, &workload, tx);
    supervisor.finish().await
}

/// One async worker: takes items with `recv_async` until every source thread
/// is gone and the channel is empty. It never looks at cancellation; the
/// sources stop, their senders drop, and that is what ends the drain.
async fn work<W: Workload>(
    id: usize,
    rx: flume::Receiver<W::Item>,
    workload: Arc<W>,
    counters: Arc<Counters>,
) {
    let slot = counters.worker(id);
    let mut pacer = Pacer::default();
    let (mut handled, mut failed) = (0u64, 0u64);
    let mut receives = 0u64;
    let mut timer = HandleTimer::new();
    while let Ok(item) = rx.recv_async().await {
        if receives.is_multiple_of(DEPTH_SAMPLE_EVERY) {
            counters.observe_queue_depth(rx.len() + 1);
        }
        receives += 1;
        let timing = timer.start();
        let outcome = workload.process(item).await;
        timer.stop(timing);
        match outcome {
            Ok(()) => handled += 1,
            Err(error) => {
                failed += 1;
                tracing::warn!(error = format!("{error:#}"), "item failed");
            }
        }
        // After every item: if a later item panics, the report still knows
        // exactly what this worker finished.
        slot.publish(handled, failed);
        // flume takes no part in tokio's cooperative budget: while the source
        // threads keep the channel from running empty, `recv_async` is ready
        // every time, and with a handler that finishes without waiting this
        // loop would never yield its runtime thread, starving the signal
        // listener and the timers. The pacer makes it yield now and then.
        let due = pacer.count(1);
        if due > 0 {
            coop::spend(due).await;
        }
    }
}
