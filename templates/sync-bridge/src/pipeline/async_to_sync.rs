//! Direction `async-to-sync`: async producer tasks feed one blocking sink
//! thread.
//!
//! ```text
//! producer task 0 ─┐ send_async
//! producer task 1 ─┼─▶ [ flume, N ] ─▶ sink thread ─▶ BlockingSink::write
//! producer task … ─┘                recv (blocks the thread)
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::sink::{self, BlockingSink, Outcome, OutputPath};
use super::{StopOnPanic, join_thread, joined_with_panic};
use crate::config::Config;
use crate::report::{self, Counters, Report};

/// Flags of this direction.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TopologyArgs {
    /// Write results to this file (created or truncated). Without it, the
    /// sink discards them.
    #[arg(long, value_name = "PATH", value_parser = OutputPath::parse)]
    pub output: Option<OutputPath>,
}

/// The code the bridge carries: an async producer and a blocking sink.
/// Implemented by [`crate::workload::DemoWorkload`]; tests implement it to
/// observe the pipeline.
pub trait Workload: BlockingSink {
    /// Makes item number `seq` on an async producer task. Each `seq` below
    /// `--items` is produced exactly once. An error is counted as a failed
    /// item and logged, and the producer goes on. Never block in here: await.
    fn produce(&self, seq: u64) -> impl Future<Output = anyhow::Result<Self::Output>> + Send;
}

/// The most items that can be produced but not yet finished at once: the
/// channel, plus one in the hands of each producer and of the sink.
pub fn max_in_flight(config: &Config) -> usize {
    config.capacity + config.producers + 1
}

/// Runs the bridge until the producers are done and the sink has written
/// every item, or until `shutdown` is cancelled and the queue is drained.
pub async fn run<W: Workload>(config: &Config, workload: W, shutdown: CancellationToken) -> Report {
    let started = Instant::now();
    let workload = Arc::new(workload);
    let counters = Arc::new(Counters::new(config.producers, 1));
    let stop = shutdown.child_token();
    let (tx, rx) = flume::bounded::<Outcome<W::Output>>(config.capacity);
    tracing::info!(
        direction = super::DIRECTION,
        producers = config.producers,
        capacity = config.capacity,
        items = config.items,
        "pipeline started"
    );

    // The sink opens first: if it cannot, nothing is produced at all.
    let (sink_thread, is_open) = sink::spawn(&workload, rx, &counters, &stop);
    let sink_opened = sink_thread.is_some() && is_open.await.is_ok();

    let tracker = TaskTracker::new();
    let producers: Vec<JoinHandle<()>> = if sink_opened {
        (0..config.producers)
            .map(|id| {
                let producer = Producer {
                    id,
                    stride: config.producers as u64,
                    items: config.items,
                    tx: tx.clone(),
                    workload: Arc::clone(&workload),
                    counters: Arc::clone(&counters),
                    stop: stop.clone(),
                };
                tracker.spawn(
                    producer
                        .run()
                        .instrument(tracing::info_span!("producer", id)),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    // The sink sees the end of input only when every `Sender` is gone; the
    // producers own clones, so this original must go now.
    drop(tx);

    let done = CancellationToken::new();
    if let Some(every) = config.progress_interval() {
        tracker.spawn(report::log_progress(
            Arc::clone(&counters),
            every,
            done.clone(),
        ));
    }
    tracker.close();

    let mut failed_stages = 0;
    for producer in producers {
        failed_stages += usize::from(joined_with_panic(producer.await, "producer"));
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

/// One async producer task and everything it needs.
struct Producer<W: Workload> {
    id: usize,
    stride: u64,
    items: u64,
    tx: flume::Sender<Outcome<W::Output>>,
    workload: Arc<W>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl<W: Workload> Producer<W> {
    /// Produces items `id`, `id + stride`, … until the quota is reached, the
    /// run is cancelled or the sink is gone.
    ///
    /// `send_async` is awaited on its own, never raced against cancellation
    /// in `select!`: a dropped send future drops its item. It always
    /// completes, because the sink drains the channel until every sender is
    /// gone.
    async fn run(self) {
        let _stop_others_if_panicking = StopOnPanic(self.stop.clone());
        let slot = self.counters.producer(self.id);
        let mut produced = 0u64;
        let mut seq = self.id as u64;
        while self.items == 0 || seq < self.items {
            if self.stop.is_cancelled() {
                break;
            }
            let outcome = match self.workload.produce(seq).await {
                Ok(item) => Some(item),
                Err(error) => {
                    tracing::warn!(error = format!("{error:#}"), seq, "item failed");
                    None
                }
            };
            if self.tx.send_async(outcome).await.is_err() {
                self.stop.cancel(); // the sink is gone
                break;
            }
            produced += 1;
            slot.publish(produced);
            seq += self.stride;
        }
        tracing::debug!(produced, "producer finished");
    }
}
