//! Direction `both`: blocking source threads feed async workers, which feed
//! one blocking sink thread. Two bounded flume channels, each `--capacity`.
//!
//! ```text
//! source thread 0 ─┐  send       ┌─▶ worker task 0 ─┐ send_async
//! source thread 1 ─┼─▶ [ flume ] ┼─▶ worker task 1 ─┼─▶ [ flume ] ─▶ sink thread ─▶ BlockingSink::write
//! source thread … ─┘ recv_async  └─▶ worker task … ─┘        recv
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::sink::{self, BlockingSink, Outcome, OutputPath};
use super::source::{self, BlockingSource, InputPath};
use super::{DEPTH_SAMPLE_EVERY, StopOnPanic, join_thread, joined_with_panic};
use crate::config::{Config, task_count};
use crate::report::{self, Counters, Report};

/// Flags of this direction.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TopologyArgs {
    /// Async worker tasks between the source and the sink.
    #[arg(long, value_name = "N", default_value = "1", value_parser = task_count, allow_negative_numbers = true)]
    pub workers: usize,

    /// Read items from this file, one per line, or from stdin with `-`.
    /// Without it, the source generates `--items` numbered items.
    #[arg(long, value_name = "PATH", value_parser = InputPath::parse)]
    pub input: Option<InputPath>,

    /// Write results to this file (created or truncated). Without it, the
    /// sink discards them.
    #[arg(long, value_name = "PATH", value_parser = OutputPath::parse)]
    pub output: Option<OutputPath>,
}

/// The code the bridge carries: a blocking source, an async stage and a
/// blocking sink. Implemented by [`crate::workload::DemoWorkload`]; tests
/// implement it to observe the pipeline.
pub trait Workload: BlockingSource + BlockingSink {
    /// Turns one item into a result for the sink, on an async worker. An
    /// error is counted and logged, and the worker goes on with the next
    /// item. Never block in here: await.
    fn process(
        &self,
        item: Self::Item,
    ) -> impl Future<Output = anyhow::Result<Self::Output>> + Send;
}

/// The most items that can be produced but not yet finished at once: both
/// channels, plus one in the hands of each source thread, each worker and
/// the sink.
pub fn max_in_flight(config: &Config) -> usize {
    2 * config.capacity + config.producers + config.topology.workers + 1
}

/// Runs the bridge until the sources are done and every item has reached the
/// sink, or until `shutdown` is cancelled and both queues are drained.
pub async fn run<W: Workload>(config: &Config, workload: W, shutdown: CancellationToken) -> Report {
    let started = Instant::now();
    let workers = config.topology.workers;
    let workload = Arc::new(workload);
    // The sink is the one place where items finish, so it owns the only
    // worker slot; failures in the async stage travel to it as `None`.
    let counters = Arc::new(Counters::new(config.producers, 1));
    let stop = shutdown.child_token();
    let (items_tx, items_rx) = flume::bounded::<W::Item>(config.capacity);
    let (results_tx, results_rx) = flume::bounded::<Outcome<W::Output>>(config.capacity);
    tracing::info!(
        direction = super::DIRECTION,
        producers = config.producers,
        workers,
        capacity = config.capacity,
        items = config.items,
        "pipeline started"
    );
    let mut failed_stages = 0;

    // The sink opens first: if it cannot, nothing is read at all.
    let (sink_thread, is_open) = sink::spawn(&workload, results_rx, &counters, &stop);
    let sink_opened = sink_thread.is_some() && is_open.await.is_ok();

    let tracker = TaskTracker::new();
    // Cancelled once the stages are finished: ends the helper tasks.
    let done = CancellationToken::new();
    let mut worker_tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut sources = Vec::new();
    if sink_opened {
        worker_tasks = (0..workers)
            .map(|id| {
                let worker = work(
                    items_rx.clone(),
                    results_tx.clone(),
                    Arc::clone(&workload),
                    Arc::clone(&counters),
                    stop.clone(),
                );
                tracker.spawn(worker.instrument(tracing::info_span!("worker", id)))
            })
            .collect();
        let control = source::Control {
            stop: &stop,
            done: &done,
            tracker: &tracker,
        };
        sources = source::spawn(config, &workload, items_tx, &counters, &control);
    } else {
        drop(items_tx);
    }
    // Only the stages may hold channel ends, so each stage sees the end of
    // its input once the stage before it is gone.
    drop(items_rx);
    drop(results_tx);

    if let Some(every) = config.progress_interval() {
        tracker.spawn(report::log_progress(
            Arc::clone(&counters),
            every,
            done.clone(),
        ));
    }
    tracker.close();

    for thread in sources {
        failed_stages += usize::from(match thread {
            Some(thread) => join_thread(thread).await,
            None => true,
        });
    }
    for task in worker_tasks {
        failed_stages += usize::from(joined_with_panic(task.await, "worker"));
    }
    failed_stages += usize::from(match sink_thread {
        Some(thread) => join_thread(thread).await,
        None => true,
    });
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

/// One async worker: `recv_async` from the sources, `process`, `send_async`
/// to the sink, until every source thread is gone and the channel is empty,
/// or the sink is gone.
async fn work<W: Workload>(
    rx: flume::Receiver<W::Item>,
    tx: flume::Sender<Outcome<W::Output>>,
    workload: Arc<W>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let _stop_sources_if_panicking = StopOnPanic(stop.clone());
    let mut receives = 0u64;
    while let Ok(item) = rx.recv_async().await {
        if receives.is_multiple_of(DEPTH_SAMPLE_EVERY) {
            counters.observe_queue_depth(rx.len() + 1);
        }
        receives += 1;
        let outcome = match workload.process(item).await {
            Ok(output) => Some(output),
            Err(error) => {
                tracing::warn!(error = format!("{error:#}"), "item failed");
                None
            }
        };
        if tx.send_async(outcome).await.is_err() {
            // The sink is gone (it failed or panicked): stop reading, so the
            // sources see their channel close too.
            stop.cancel();
            break;
        }
    }
}
