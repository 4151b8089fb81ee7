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

use tokio_util::sync::CancellationToken;

use super::DEPTH_SAMPLE_EVERY;
use super::sink::{self, BlockingSink, Outcome, OutputPath};
use super::source::{self, BlockingSource, InputPath};
use crate::config::{Config, task_count};
use crate::coop::{self, Pacer};
use crate::counters::Counters;
use crate::report::Report;
use crate::supervisor::Supervisor;

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
/// sink, or until `shutdown` is cancelled and both queues are drained (within
/// `--drain-timeout`).
pub async fn run<W: Workload>(config: &Config, workload: W, shutdown: CancellationToken) -> Report {
    let workers = config.topology.workers;
    // The sink is the one place where items finish, so it owns the only
    // worker slot; failures in the async stage travel to it as `None`.
    let mut supervisor = Supervisor::new(super::TOPOLOGY, config, shutdown, config.producers, 1);
    let workload = Arc::new(workload);
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

    // The sink opens first: if it cannot, nothing is read at all.
    let is_open = sink::spawn(&mut supervisor, &workload, results_rx);
    if sink::opened(is_open, supervisor.stop_token()).await {
        for id in 0..workers {
            let worker = work(
                items_rx.clone(),
                results_tx.clone(),
                Arc::clone(&workload),
                Arc::clone(supervisor.counters()),
            );
            let span = tracing::debug_span!("worker", id);
            supervisor.spawn_task(format!("worker {id}"), span, worker);
        }
        // `items_tx` moves into `spawn`, which hands a clone to each thread.
        source::spawn(&mut supervisor, config, &workload, items_tx);
    } else {
        drop(items_tx);
    }
    // Only the stages may hold channel ends, so each stage sees the end of
    // its input once the stage before it is gone.
    drop(items_rx);
    drop(results_tx);
    supervisor.finish().await
}

/// One async worker: `recv_async` from the sources, `process`, `send_async`
/// to the sink, until every source thread is gone and the channel is empty,
/// or the sink is gone.
async fn work<W: Workload>(
    rx: flume::Receiver<W::Item>,
    tx: flume::Sender<Outcome<W::Output>>,
    workload: Arc<W>,
    counters: Arc<Counters>,
) {
    let mut pacer = Pacer::default();
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
        // Never raced against anything: a dropped send future drops its item.
        if tx.send_async(outcome).await.is_err() {
            // The sink is gone (it failed or panicked, which also stops the
            // sources): stop reading, so the sources see their channel close.
            break;
        }
        // flume takes no part in tokio's cooperative budget: while the
        // sources keep one channel from running empty and the sink keeps the
        // other from filling, both futures are ready every time, and with a
        // `process` that finishes without waiting this loop would never
        // yield its runtime thread, starving the signal listener and the
        // timers. The pacer makes it yield now and then.
        let due = pacer.count(1);
        if due > 0 {
            coop::spend(due).await;
        }
    }
}
