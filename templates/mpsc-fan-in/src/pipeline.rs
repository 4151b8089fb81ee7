//! The topology: `--producers` tasks feed one bounded `tokio::sync::mpsc`
//! channel, and a single consumer task drains it.
//!
//! ```text
//! producer 0 ─┐
//! producer 1 ─┼─▶ [ mpsc, capacity N ] ─▶ consumer ─▶ Workload::handle
//! producer … ─┘                                       (or handle_batch)
//! ```
//!
//! With `--batch-max` above 1 the channel carries batches: each producer
//! fills one from its source and sends it when it is full or has lingered
//! `--linger-ms` ([`crate::delivery`]), so the channel's cost per message is
//! shared by a whole batch.
//!
//! The run ends when every producer has finished and the consumer has drained
//! the channel, or, after cancellation, when the producers have stopped and the
//! consumer has drained what was already queued.

use std::pin::pin;
use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::coop::{self, Pacer};
use crate::counters::Counters;
use crate::delivery::{Batcher, DeliveryArgs, FailurePolicy, Outlet, Settler};
use crate::report::Report;
use crate::supervisor::Supervisor;
use crate::workload_api::{
    self, Source, Workload, input_rejected, open_unless_cancelled, unless_cancelled,
};

/// The name this topology reports itself under.
pub const TOPOLOGY: &str = "mpsc-fan-in";

/// `--batch-max` when it is not given: how this project was generated.
pub const DEFAULT_BATCH_MAX: &str = {% if batching %}"256"{% else %}"1"{% endif %};

/// The consumer samples the queue depth once per this many receives.
const DEPTH_SAMPLE_EVERY: u64 = 64;

/// Producers look at the cancellation token at least once per this many items,
/// even when neither their source nor the channel makes them wait.
const CANCEL_CHECK_EVERY: u64 = 64;

/// Flags of this topology: a fan-in has one consumer, so only the
/// workload's own and those of delivery.
#[derive(Debug, Clone, clap::Args)]
pub struct TopologyArgs {
    /// Flags of the workload (`src/workload.rs`).
    #[command(flatten)]
    pub workload: crate::workload::WorkloadArgs,

    /// Batches, retries and the dead-letter file (`src/delivery.rs`).
    #[command(flatten)]
    pub delivery: DeliveryArgs,
}

/// The most items that can be produced but not yet finished at any moment:
/// a batch (of one item, without batching) in each of the channel's
/// `capacity` slots, in each producer's hands (filling it, or waiting for a
/// free slot), and in the consumer's.
pub const fn max_in_flight(capacity: usize, producers: usize, batch_max: usize) -> usize {
    (capacity + producers + 1) * batch_max
}

/// Runs the pipeline until every source has ended and its items are handled,
/// or `shutdown` is cancelled and the queued items are drained (within
/// `--drain-timeout`). Fails before it starts if the dead-letter file cannot
/// be created.
pub async fn run<W: Workload>(
    config: &Config,
    workload: W,
    shutdown: CancellationToken,
) -> anyhow::Result<Report> {
    let producers = workload.producers();
    let delivery = &config.topology.delivery;
    let mut supervisor = Supervisor::new(TOPOLOGY, config, shutdown, producers, 1);
    let policy = Arc::new(FailurePolicy::new(
        delivery,
        supervisor.stop_token().clone(),
    )?);
    let workload = Arc::new(workload);
    let counters = Arc::clone(supervisor.counters());
    let settler = Settler::new(Arc::clone(&workload), Arc::clone(&policy), counters, 0);
    tracing::info!(
        producers,
        capacity = config.capacity,
        batch_max = delivery.batch_max,
        "pipeline started"
    );
    if delivery.batches() {
        let (tx, rx) = mpsc::channel::<Vec<W::Item>>(config.capacity);
        for producer in Producer::all(&supervisor, &workload, tx) {
            let batcher = Batcher::new(delivery.batch_max, delivery.linger());
            spawn_producer(&mut supervisor, producer.id, producer.run_batches(batcher));
        }
        spawn_consumer(&mut supervisor, consume_batches(rx, settler));
    } else {
        let (tx, rx) = mpsc::channel::<W::Item>(config.capacity);
        for producer in Producer::all(&supervisor, &workload, tx) {
            spawn_producer(&mut supervisor, producer.id, producer.run_items());
        }
        spawn_consumer(&mut supervisor, consume_items(rx, settler));
    }
    let mut report = supervisor.finish().await;
    workload_api::close(&*workload, &mut report).await;
    policy.close(&mut report).await;
    Ok(report)
}

fn spawn_producer<F>(supervisor: &mut Supervisor, id: usize, producer: F)
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let span = tracing::debug_span!("producer", id);
    supervisor.spawn_task(format!("producer {id}"), span, producer);
}

fn spawn_consumer<F>(supervisor: &mut Supervisor, consumer: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let span = tracing::debug_span!("consumer");
    supervisor.spawn_task("consumer".to_owned(), span, consumer);
}

/// One producer task and everything it needs; `M` is what it sends, an item
/// or a batch of them.
struct Producer<W: Workload, M> {
    id: usize,
    tx: mpsc::Sender<M>,
    workload: Arc<W>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl<W: Workload, M: Send + 'static> Producer<W, M> {
    /// One producer per source of the workload, each with a clone of `tx`.
    /// The consumer sees the end of input only when every `Sender` is gone,
    /// so `tx` itself is dropped here: the producers own the only ones.
    fn all(supervisor: &Supervisor, workload: &Arc<W>, tx: mpsc::Sender<M>) -> Vec<Self> {
        (0..workload.producers())
            .map(|id| Producer {
                id,
                tx: tx.clone(),
                workload: Arc::clone(workload),
                counters: Arc::clone(supervisor.counters()),
                stop: supervisor.stop_token().clone(),
            })
            .collect()
    }
}

impl<W: Workload, M: Send + 'static> Outlet<M> for Producer<W, M> {
    /// Sends `message`, waiting while the channel is full. `Err` when the
    /// consumer is gone (it failed): the message goes down with it.
    ///
    /// The message is ours to deliver, so the send is never raced against
    /// cancellation: that would drop it whenever cancellation won. It waits
    /// only while the channel is full, and the consumer keeps draining until
    /// every producer is gone, so the wait ends. `try_reserve` is the fast
    /// path while there is room.
    async fn deliver(&self, message: M) -> Result<(), ()> {
        let permit = match self.tx.try_reserve() {
            Ok(permit) => permit,
            Err(TrySendError::Full(())) => self.tx.reserve().await.map_err(drop)?,
            Err(TrySendError::Closed(())) => return Err(()),
        };
        permit.send(message);
        Ok(())
    }
}

impl<W: Workload> Producer<W, W::Item> {
    /// Sends what the source makes, item by item, until it ends, the run is
    /// cancelled or the consumer is gone. Fails when the source cannot be
    /// opened.
    async fn run_items(self) -> anyhow::Result<()> {
        let mut cancelled = pin!(self.stop.cancelled());
        let opened = open_unless_cancelled(&*self.workload, self.id, cancelled.as_mut()).await?;
        let Some(mut source) = opened else {
            return Ok(());
        };
        let slot = self.counters.producer(self.id);
        let mut pacer = Pacer::default();
        let (mut produced, mut rejected) = (0u64, 0u64);
        loop {
            let taken = produced + rejected;
            if taken.is_multiple_of(CANCEL_CHECK_EVERY) && self.stop.is_cancelled() {
                break;
            }
            // The source may wait for input (a quiet client, an empty pipe),
            // so it is raced against cancellation: a source that waits must
            // not hold up shutdown, and the `Source` contract makes dropping
            // its future safe.
            let Some(next) = unless_cancelled(pin!(source.next()), cancelled.as_mut()).await else {
                break;
            };
            match next {
                Ok(Some(item)) => {
                    if self.deliver(item).await.is_err() {
                        // Counted as produced, the item the failed consumer
                        // took down shows up in the report as lost.
                        slot.publish(produced + 1);
                        break;
                    }
                    produced += 1;
                    slot.publish(produced);
                }
                Ok(None) => break,
                Err(error) => input_rejected(slot, &mut rejected, &error),
            }
            // A source that is always ready and a channel with room never
            // yield, which with a large capacity may be for the whole run; a
            // source that rejects input after input must not keep its
            // runtime thread either.
            let due = pacer.count(1);
            if due > 0 {
                coop::spend(due).await;
            }
        }
        tracing::debug!(produced, rejected, "producer finished");
        Ok(())
    }
}

impl<W: Workload> Producer<W, Vec<W::Item>> {
    /// Sends what the source makes in batches until it ends, the run is
    /// stopped or no consumer is left (see [`Batcher::produce`]). Fails when
    /// the source cannot be opened.
    async fn run_batches(self, batcher: Batcher) -> anyhow::Result<()> {
        let mut cancelled = pin!(self.stop.cancelled());
        let opened = open_unless_cancelled(&*self.workload, self.id, cancelled.as_mut()).await?;
        let Some(mut source) = opened else {
            return Ok(());
        };
        let slot = self.counters.producer(self.id);
        let (produced, rejected) = batcher
            .produce(&mut source, &self, slot, &self.stop, cancelled)
            .await;
        tracing::debug!(produced, rejected, "producer finished");
        Ok(())
    }
}

/// Drains the channel item by item until every producer is gone and it is
/// empty.
///
/// The consumer never looks at cancellation to stop (only a retry's backoff
/// wait ends early on it, see [`crate::delivery`]): producers stop, their
/// senders drop, and `recv` returns `None` once the queued items are handled.
/// That is what makes shutdown a drain rather than a loss.
async fn consume_items<W: Workload>(mut rx: mpsc::Receiver<W::Item>, mut settler: Settler<W>) {
    let mut receives = 0u64;
    while let Some(item) = rx.recv().await {
        // Reading the depth touches the cache line the producers write, so it
        // is sampled rather than read on every receive.
        if receives.is_multiple_of(DEPTH_SAMPLE_EVERY) {
            settler.observe_queue_depth(rx.len() + 1);
        }
        receives += 1;
        // The handler is called right here, not through a helper `async
        // fn`: a nested future per item costs more than the channel does.
        let timing = settler.timer().start();
        let outcome = settler.workload().handle(&item).await;
        settler.timer().stop(timing);
        match outcome {
            Ok(()) => settler.handled_one(),
            Err(error) => settler.item_failed(item, error).await,
        }
    }
}

/// Drains the channel batch by batch, like [`consume_items`].
async fn consume_batches<W: Workload>(
    mut rx: mpsc::Receiver<Vec<W::Item>>,
    mut settler: Settler<W>,
) {
    let mut receives = 0u64;
    while let Some(batch) = rx.recv().await {
        if receives.is_multiple_of(DEPTH_SAMPLE_EVERY) {
            settler.observe_queue_depth(rx.len() + 1);
        }
        receives += 1;
        settler.batch(batch).await;
    }
}
