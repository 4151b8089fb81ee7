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

use tokio_util::sync::CancellationToken;

use super::sink::{self, BlockingSink, Outcome, OutputPath};
use crate::config::Config;
use crate::coop::{self, Pacer};
use crate::counters::Counters;
use crate::report::Report;
use crate::supervisor::{StopFlag, Supervisor};

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
/// every item, or until `shutdown` is cancelled and the queue is drained
/// (within `--drain-timeout`).
pub async fn run<W: Workload>(config: &Config, workload: W, shutdown: CancellationToken) -> Report {
    let mut supervisor = Supervisor::new(super::TOPOLOGY, config, shutdown, config.producers, 1);
    let workload = Arc::new(workload);
    let (tx, rx) = flume::bounded::<Outcome<W::Output>>(config.capacity);
    tracing::info!(
        direction = super::DIRECTION,
        producers = config.producers,
        capacity = config.capacity,
        items = config.items,
        "pipeline started"
    );

    // The sink opens first: if it cannot, nothing is produced at all.
    let is_open = sink::spawn(&mut supervisor, &workload, rx);
    if sink::opened(is_open, supervisor.stop_token()).await {
        let stop = supervisor.stop_flag();
        for id in 0..config.producers {
            let producer = Producer {
                id,
                stride: config.producers as u64,
                items: config.items,
                tx: tx.clone(),
                workload: Arc::clone(&workload),
                counters: Arc::clone(supervisor.counters()),
                stop: Arc::clone(&stop),
            };
            let span = tracing::debug_span!("producer", id);
            supervisor.spawn_task(format!("producer {id}"), span, producer.run());
        }
    }
    // The sink sees the end of input only when every `Sender` is gone; the
    // producers own clones, so this original must go now.
    drop(tx);
    supervisor.finish().await
}

/// One async producer task and everything it needs.
struct Producer<W: Workload> {
    id: usize,
    stride: u64,
    items: u64,
    tx: flume::Sender<Outcome<W::Output>>,
    workload: Arc<W>,
    counters: Arc<Counters>,
    stop: Arc<StopFlag>,
}

impl<W: Workload> Producer<W> {
    /// Produces items `id`, `id + stride`, … until the quota is reached, the
    /// run is cancelled or the sink is gone.
    ///
    /// `send_async` is awaited on its own, never raced against cancellation
    /// in `select!`: a dropped send future drops its item. It always
    /// completes: the sink drains the channel until every sender is gone,
    /// and if the sink fails, the channel disconnects.
    async fn run(self) {
        let slot = self.counters.producer(self.id);
        let mut pacer = Pacer::default();
        let mut produced = 0u64;
        let mut seq = self.id as u64;
        while self.items == 0 || seq < self.items {
            if self.stop.is_set() {
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
                break; // the sink is gone: it failed, and the run stops
            }
            produced += 1;
            slot.publish(produced);
            seq += self.stride;
            // flume takes no part in tokio's cooperative budget: while the
            // sink keeps the channel from filling, `send_async` is ready
            // every time, and with a `produce` that finishes without waiting
            // this loop would never yield its runtime thread, starving the
            // signal listener and the timers. The pacer makes it yield now
            // and then, after the item is sent, so a yield never holds one.
            let due = pacer.count(1);
            if due > 0 {
                coop::spend(due).await;
            }
        }
        tracing::debug!(produced, "producer finished");
    }
}
