//! The topology: `--producers` tasks feed one bounded `tokio::sync::mpsc`
//! channel, and a single consumer task drains it.
//!
//! ```text
//! producer 0 ─┐
//! producer 1 ─┼─▶ [ mpsc, capacity N ] ─▶ consumer ─▶ Workload::handle
//! producer … ─┘
//! ```
//!
//! The run ends when every producer has finished and the consumer has drained
//! the channel, or, after cancellation, when the producers have stopped and the
//! consumer has drained what was already queued.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::coop::Pacer;
use crate::counters::Counters;
use crate::report::Report;
use crate::supervisor::Supervisor;

/// The name this topology reports itself under.
pub const TOPOLOGY: &str = "mpsc-fan-in";

/// How many items the consumer takes out of the channel at once.
pub const RECV_BATCH: usize = {% if batching %}256{% else %}1{% endif %};

/// The most items the consumer holds outside the channel at any moment. Items
/// in flight never exceed `capacity + MAX_HELD_BY_CONSUMER`.
pub const MAX_HELD_BY_CONSUMER: usize = RECV_BATCH;

/// The consumer samples the queue depth once per this many receives.
const DEPTH_SAMPLE_EVERY: u64 = 64;

/// Producers look at the cancellation token at least once per this many items,
/// even when the channel never makes them wait.
const CANCEL_CHECK_EVERY: u64 = 64;

/// Flags of this topology. A fan-in has one consumer, so it adds none.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TopologyArgs {}

/// What the pipeline needs from the code it carries. Implemented by
/// [`crate::workload::DemoWorkload`]; tests implement it to observe the pipeline.
pub trait Workload: Send + Sync + 'static {
    /// One unit of work travelling through the channel.
    type Item: Send + 'static;

    /// Creates item number `seq`. Each `seq` below `--items` is produced
    /// exactly once, by one of the producers. It runs while holding a free
    /// channel slot, so keep it cheap.
    fn produce(&self, seq: u64) -> Self::Item;

    /// Handles one item. An error is counted and logged, and the pipeline
    /// goes on with the next item.
    fn handle(&self, item: Self::Item) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Runs the pipeline until all `config.items` are handled or `shutdown` is
/// cancelled and the queued items are drained (within `--drain-timeout`).
pub async fn run<W: Workload>(config: &Config, workload: W, shutdown: CancellationToken) -> Report {
    let mut supervisor = Supervisor::new(TOPOLOGY, config, shutdown, 1);
    let workload = Arc::new(workload);
    let (tx, rx) = mpsc::channel::<W::Item>(config.capacity);
    tracing::info!(
        producers = config.producers,
        capacity = config.capacity,
        items = config.items,
        "pipeline started"
    );

    for id in 0..config.producers {
        let producer = Producer {
            id,
            stride: config.producers as u64,
            items: config.items,
            tx: tx.clone(),
            workload: Arc::clone(&workload),
            counters: Arc::clone(supervisor.counters()),
            stop: supervisor.stop_token().clone(),
        };
        let span = tracing::info_span!("producer", id);
        supervisor.spawn_task(format!("producer {id}"), span, producer.run());
    }
    // The consumer sees the end of input only when every `Sender` is gone. The
    // producers own clones; this original must go now, or the consumer would
    // wait forever for items that never come.
    drop(tx);

    let counters = Arc::clone(supervisor.counters());
    let span = tracing::info_span!("consumer");
    supervisor.spawn_task("consumer".to_owned(), span, consume(rx, workload, counters));
    supervisor.finish().await
}

/// One source task and everything it needs.
struct Producer<W: Workload> {
    id: usize,
    stride: u64,
    items: u64,
    tx: mpsc::Sender<W::Item>,
    workload: Arc<W>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl<W: Workload> Producer<W> {
    /// Produces items `id`, `id + stride`, `id + 2 * stride`, … until the quota
    /// is reached, the run is cancelled or the consumer is gone.
    async fn run(self) {
        let slot = self.counters.producer(self.id);
        let mut cancelled = pin!(self.stop.cancelled());
        let mut pacer = Pacer::default();
        let mut produced = 0u64;
        let mut seq = self.id as u64;
        while self.items == 0 || seq < self.items {
            if produced.is_multiple_of(CANCEL_CHECK_EVERY) && self.stop.is_cancelled() {
                break;
            }
            // Take a free slot before the item exists. `try_reserve` is the fast
            // path while the channel has room. When it is full, wait for a slot
            // while watching for cancellation: racing `send(item)` here instead
            // would drop the item whenever cancellation won, but a permit holds
            // no item, so losing the race loses nothing. `biased` polls the
            // permit first; cancellation (a lock to poll) is only looked at
            // while the producer has to wait anyway.
            let permit = match self.tx.try_reserve() {
                Ok(permit) => permit,
                Err(TrySendError::Closed(())) => break,
                Err(TrySendError::Full(())) => tokio::select! {
                    biased;
                    permit = self.tx.reserve() => match permit {
                        Ok(permit) => permit,
                        Err(_consumer_gone) => break,
                    },
                    () = &mut cancelled => break,
                },
            };
            permit.send(self.workload.produce(seq));
            produced += 1;
            slot.publish(produced);
            seq += self.stride;
            // `try_reserve` succeeds without ever yielding while the channel
            // has room, which with a large capacity may be for the whole run.
            pacer.step().await;
        }
        tracing::debug!(produced, "producer finished");
    }
}

/// Drains the channel until every producer is gone and it is empty.
///
/// The consumer never looks at cancellation: producers stop, their senders
/// drop, and `recv` returns `None` once the queued items are handled. That is
/// what makes shutdown a drain rather than a loss.
async fn consume<W: Workload>(
    mut rx: mpsc::Receiver<W::Item>,
    workload: Arc<W>,
    counters: Arc<Counters>,
) {
    let slot = counters.worker(0);
    let (mut handled, mut failed) = (0u64, 0u64);
    let mut batch = Vec::with_capacity(RECV_BATCH);
    let mut receives = 0u64;
    while rx.recv_many(&mut batch, RECV_BATCH).await > 0 {
        // Reading the depth touches the cache line the producers write, so it
        // is sampled rather than read on every receive.
        if receives.is_multiple_of(DEPTH_SAMPLE_EVERY) {
            counters.observe_queue_depth(rx.len() + batch.len());
        }
        receives += 1;
        for item in batch.drain(..) {
            match workload.handle(item).await {
                Ok(()) => handled += 1,
                Err(error) => {
                    failed += 1;
                    tracing::warn!(error = format!("{error:#}"), "item failed");
                }
            }
            // After every item, not every batch: if a later item of this
            // batch panics, the report still knows exactly what finished.
            slot.publish(handled, failed);
        }
    }
}
