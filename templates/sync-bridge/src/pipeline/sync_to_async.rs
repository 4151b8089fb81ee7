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
use std::time::Instant;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::source::{self, BlockingSource, InputPath};
use super::{DEPTH_SAMPLE_EVERY, StopOnPanic, join_thread, joined_with_panic};
use crate::config::{Config, task_count};
use crate::report::{self, Counters, Report};

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
/// handled, or until `shutdown` is cancelled and the queue is drained.
pub async fn run<W: Workload>(config: &Config, workload: W, shutdown: CancellationToken) -> Report {
    let started = Instant::now();
    let workers = config.topology.workers;
    let workload = Arc::new(workload);
    let counters = Arc::new(Counters::new(config.producers, workers));
    // A failing stage stops the sources through this child token without
    // cancelling the caller's token.
    let stop = shutdown.child_token();
    let (tx, rx) = flume::bounded::<W::Item>(config.capacity);
    tracing::info!(
        direction = super::DIRECTION,
        producers = config.producers,
        workers,
        capacity = config.capacity,
        items = config.items,
        "pipeline started"
    );

    let tracker = TaskTracker::new();
    // Cancelled once the stages are finished: ends the helper tasks.
    let done = CancellationToken::new();
    let worker_tasks: Vec<JoinHandle<()>> = (0..workers)
        .map(|id| {
            let worker = work(
                id,
                rx.clone(),
                Arc::clone(&workload),
                Arc::clone(&counters),
                stop.clone(),
            );
            tracker.spawn(worker.instrument(tracing::info_span!("worker", id)))
        })
        .collect();
    // Only the workers may hold receivers: if they all die, the source
    // threads' `send` fails instead of blocking forever.
    drop(rx);
    // `tx` moves into `spawn`, which hands a clone to each thread.
    let control = source::Control {
        stop: &stop,
        done: &done,
        tracker: &tracker,
    };
    let sources = source::spawn(config, &workload, tx, &counters, &control);

    if let Some(every) = config.progress_interval() {
        tracker.spawn(report::log_progress(
            Arc::clone(&counters),
            every,
            done.clone(),
        ));
    }
    tracker.close();

    let mut failed_stages = 0;
    for thread in sources {
        failed_stages += usize::from(match thread {
            Some(thread) => join_thread(thread).await,
            None => true,
        });
    }
    for task in worker_tasks {
        failed_stages += usize::from(joined_with_panic(task.await, "worker"));
    }
    done.cancel();
    tracker.wait().await;

    let report = Report::new(
        super::TOPOLOGY,
        counters.totals(),
        counters.peak_queue_depth(),
        started,
        failed_stages,
        shutdown.is_cancelled(),
    );
    tracing::info!(
        produced = report.produced,
        handled = report.handled,
        failed = report.failed,
        "pipeline finished"
    );
    report
}

/// One async worker: takes items with `recv_async` until every source thread
/// is gone and the channel is empty. It never looks at cancellation; the
/// sources stop, their senders drop, and that is what ends the drain.
async fn work<W: Workload>(
    id: usize,
    rx: flume::Receiver<W::Item>,
    workload: Arc<W>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let _stop_sources_if_panicking = StopOnPanic(stop);
    let slot = counters.worker(id);
    let (mut handled, mut failed) = (0u64, 0u64);
    let mut receives = 0u64;
    while let Ok(item) = rx.recv_async().await {
        if receives.is_multiple_of(DEPTH_SAMPLE_EVERY) {
            counters.observe_queue_depth(rx.len() + 1);
        }
        receives += 1;
        match workload.process(item).await {
            Ok(()) => handled += 1,
            Err(error) => {
                failed += 1;
                tracing::warn!(error = format!("{error:#}"), "item failed");
            }
        }
        slot.publish(handled, failed);
    }
}
