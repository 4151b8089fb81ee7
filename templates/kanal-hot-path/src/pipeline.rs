//! The topology: one producer task per source of the workload
//! ([`Workload::producers`]; `--producers` for the demo's numbers) feeds one
//! bounded `kanal` async channel, and a single consumer task drains it.
//!
//! ```text
//! Source::next ─▶ producer 0 ─┐
//! Source::next ─▶ producer 1 ─┼─▶ [ kanal::bounded_async, capacity N ] ─▶ consumer ─▶ Workload::handle
//! Source::next ─▶ producer … ─┘                                                       (or handle_batch)
//! ```
//!
//! With `--batch-max` above 1 the channel carries batches: each producer
//! fills one from its source and sends it when it is full or has lingered
//! `--linger-ms` ([`crate::delivery`]), so one hand-over through the channel
//! moves a whole batch.
//!
//! Two facts about kanal 0.1 shape everything below:
//!
//! - Its futures are not cancel safe. A `recv` future dropped while an item is
//!   being handed to it drops that item, and a `send` future dropped while it
//!   waits for room drops the item it carries. So no kanal future is ever raced
//!   in `select!` or put under a timeout here: each one is awaited to the end.
//! - `close()` empties the queue. So shutdown never closes the channel:
//!   producers stop and drop their senders, and the consumer drains until
//!   `recv` reports that every sender is gone and the queue is empty.
//!
//! The run ends when every producer has finished and the consumer has drained
//! the channel, or, after cancellation, when the producers have stopped and the
//! consumer has drained what was already queued (within `--drain-timeout`).
//! Starting the tasks, joining them, the progress line, the stall warning and
//! the report are the chassis's job ([`crate::supervisor`]); this module holds
//! only the channel, the tasks and their loops.
//!
//! A third fact is about kanal and tokio together: kanal's futures never
//! spend tokio's coop budget, so a producer whose channel has room, or a
//! consumer whose channel is not empty, would never give its runtime thread
//! back. Both loops count their items with the chassis's
//! [`crate::coop::Pacer`] and spend the budget where no item is in hand and
//! no kanal future exists: the producers between two items, the consumer
//! before each `recv`.
//!
//! What one item costs beyond the channel itself, item by item: a producer
//! loads a flag that only changes once, polls its source, hands the item over
//! with a plain call while the channel has room, and stores a running total
//! into a counter slot that no other task writes; the consumer calls the
//! handler and does the same with its totals after every item. Nothing on
//! this path allocates (unless the workload does), and the task spans are off
//! at the default log level. In batches, the channel, the flag and the
//! producer's counter are paid once per batch, and each batch is one
//! allocation.

use std::pin::pin;
use std::sync::Arc;

use kanal::{AsyncReceiver, AsyncSender};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::coop::{self, Pacer};
use crate::counters::Counters;
use crate::delivery::{Batcher, DeliveryArgs, FailurePolicy, Outlet, Settler};
use crate::report::Report;
use crate::supervisor::{StopFlag, Supervisor};
use crate::workload_api::{
    self, Source, Workload, input_rejected, open_unless_cancelled, unless_cancelled,
};

/// The name this topology reports itself under.
pub const TOPOLOGY: &str = "kanal-hot-path";

/// `--batch-max` when it is not given: how this project was generated.
pub const DEFAULT_BATCH_MAX: &str = {% if batching %}"256"{% else %}"1"{% endif %};

/// The consumer samples the queue depth once per this many receives (reading
/// it takes the channel's lock).
const DEPTH_SAMPLE_EVERY: u64 = 64;

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

/// The most items that exist at once: a message (an item, or a batch of up
/// to `batch_max`) in each of the channel's `capacity` slots, in each
/// producer's hands (filling it, or waiting in `send`), and in the
/// consumer's. A slow consumer slows the producers down; memory never grows
/// past this. `producers` is the workload's [`Workload::producers`].
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
        let (tx, rx) = kanal::bounded_async::<Vec<W::Item>>(config.capacity);
        for producer in Producer::all(&supervisor, &workload, tx) {
            let batcher = Batcher::new(delivery.batch_max, delivery.linger());
            spawn_producer(&mut supervisor, producer.id, producer.run_batches(batcher));
        }
        spawn_consumer(&mut supervisor, consume_batches(rx, settler));
    } else {
        let (tx, rx) = kanal::bounded_async::<W::Item>(config.capacity);
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

// The task spans are at debug level: an enabled span is entered and left on
// every poll of its task, which this pipeline does up to once per item. At
// the default `info` level they cost nothing; `RUST_LOG=debug` shows them.

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
    tx: AsyncSender<M>,
    workload: Arc<W>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    stopping: Arc<StopFlag>,
}

impl<W: Workload, M: Send + 'static> Producer<W, M> {
    /// One producer per source of the workload, each with a clone of `tx`.
    /// The consumer sees the end of input only when every sender is gone,
    /// so `tx` itself is dropped here: the producers own the only ones.
    fn all(supervisor: &Supervisor, workload: &Arc<W>, tx: AsyncSender<M>) -> Vec<Self> {
        // Producers look at the stop flag before every message; asking the
        // token itself would take its lock each time.
        let stopping = supervisor.stop_flag();
        (0..workload.producers())
            .map(|id| Producer {
                id,
                tx: tx.clone(),
                workload: Arc::clone(workload),
                counters: Arc::clone(supervisor.counters()),
                stop: supervisor.stop_token().clone(),
                stopping: Arc::clone(&stopping),
            })
            .collect()
    }
}

impl<W: Workload, M: Send + 'static> Outlet<M> for Producer<W, M> {
    /// Hands `message` to the channel, waiting while it is full. `Err` when
    /// the consumer is gone (it failed): the message goes down with it.
    ///
    /// While the channel has room, `try_send_option` hands the message over
    /// with a plain call: no send future to build and drop for every item
    /// (about 10% more one-word items per second; with three-word items the
    /// `Option` around them costs more than it saves, see the README). When
    /// the channel is full it leaves the message in hand, and `send` waits
    /// for room, awaited to the end, never raced against cancellation: a
    /// kanal send future dropped while it waits drops the message it
    /// carries. The wait is bounded all the same, because the consumer keeps
    /// draining until every producer is gone, and the stop flag is read
    /// again before the next message. So after a shutdown request each
    /// producer finishes at most the one send it is in.
    #[inline]
    async fn deliver(&self, message: M) -> Result<(), ()> {
        let mut in_hand = Some(message);
        match self.tx.try_send_option(&mut in_hand) {
            Ok(_) => match in_hand.take() {
                None => Ok(()),
                Some(message) => self.tx.send(message).await.map_err(drop),
            },
            Err(_) => Err(()),
        }
    }
}

impl<W: Workload> Producer<W, W::Item> {
    /// Sends what the source makes, item by item, until it ends, the run is
    /// stopped or the consumer is gone. Fails when the source cannot be
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
        while !self.stopping.is_set() {
            // The source may wait for input (a quiet client, an empty pipe),
            // so it is raced against cancellation: the `Source` contract makes
            // dropping its future safe, and this is the source's future, not
            // kanal's. The source is polled first, so a source with an item
            // ready never polls the token (a lock); the stop flag above is
            // what stops such a source.
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
            // kanal's send never spends the coop budget, so a producer whose
            // channel has room would never yield; nor would a source that
            // rejects input after input. Between two items nothing is in
            // hand, and the stop flag is read right after a yield.
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
/// wait ends early on it, see [`crate::delivery`]), and never races `recv`
/// against anything: producers stop, their senders drop, and `recv` fails
/// only once the queued items are all taken. That is what makes shutdown a
/// drain rather than a loss.
async fn consume_items<W: Workload>(rx: AsyncReceiver<W::Item>, mut settler: Settler<W>) {
    let mut receives = 0u64;
    let mut pacer = Pacer::default();
    loop {
        // kanal's recv never spends the coop budget either, so a consumer
        // whose channel never runs empty would never yield. The budget is
        // spent here, before `recv`, with no item in hand.
        let due = pacer.count(1);
        if due > 0 {
            coop::spend(due).await;
        }
        let Ok(item) = rx.recv().await else {
            break; // Every producer is gone and the queue is empty.
        };
        if receives.is_multiple_of(DEPTH_SAMPLE_EVERY) {
            settler.observe_queue_depth(1 + rx.len());
        }
        receives += 1;
        // Handled right here rather than in a helper `async fn`: a nested
        // future per item cost measurably more than the channel itself.
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
async fn consume_batches<W: Workload>(rx: AsyncReceiver<Vec<W::Item>>, mut settler: Settler<W>) {
    let mut receives = 0u64;
    let mut pacer = Pacer::default();
    // Budget units due for the batch taken last.
    let mut due = 0;
    loop {
        if due > 0 {
            coop::spend(due).await;
        }
        let Ok(batch) = rx.recv().await else {
            break;
        };
        if receives.is_multiple_of(DEPTH_SAMPLE_EVERY) {
            settler.observe_queue_depth(1 + rx.len());
        }
        receives += 1;
        due = pacer.count(u32::try_from(batch.len()).unwrap_or(u32::MAX));
        settler.batch(batch).await;
    }
}
