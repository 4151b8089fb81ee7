//! The topology: `--producers` tasks feed one bounded `kanal` async channel,
//! and a single consumer task drains it.
//!
//! ```text
//! producer 0 ─┐
//! producer 1 ─┼─▶ [ kanal::bounded_async, capacity N ] ─▶ consumer ─▶ Workload::handle
//! producer … ─┘
//! ```
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
//! A third fact is about kanal and tokio together: kanal's futures do not take
//! part in tokio's cooperative scheduling. A `send` that finds room, or a
//! `recv` that finds an item, is ready at once and never spends the task's
//! coop budget, so a producer whose channel does not fill, or a consumer whose
//! channel does not run empty, never gives its runtime thread back. The
//! signal listener, the timers and the task behind the stop flag then wait
//! until the channel fills or empties, which with a large capacity takes
//! seconds and millions of items. So both loops spend the budget themselves,
//! one unit per [`ITEMS_PER_BUDGET_UNIT`] items, and yield when it is gone.
//! Both do it where no item is in hand and no kanal future exists: the
//! producers between two items, the consumer before each `recv`. Neither
//! yield can lose an item.
//!
//! This is what the chassis's [`crate::coop::Pacer`] does, written out with
//! the loops' own counters: in this pipeline, awaiting `Pacer::step` (an
//! `async fn`) for every item cost about a third of the throughput in the
//! benchmark, and a plain check with `consume_budget` awaited only when it is
//! due costs next to nothing.
//!
//! What one item costs beyond the channel itself: a producer loads a flag that
//! only changes once, and stores a running total into a counter slot that no
//! other task writes; the consumer does the same with its totals after every
//! item. Both test that count against [`ITEMS_PER_BUDGET_UNIT`]. With
//! batching the consumer takes the channel's lock once per wake-up rather
//! than once per item. Nothing on this path allocates, and the task spans are
//! off at the default log level.

use std::future::Future;
use std::sync::Arc;

use kanal::{AsyncReceiver, AsyncSender};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::counters::Counters;
use crate::report::Report;
use crate::supervisor::{StopFlag, Supervisor};

/// The name this topology reports itself under.
pub const TOPOLOGY: &str = "kanal-hot-path";

/// Whether the consumer, each time `recv` hands it an item, also takes
/// everything else already waiting with one `drain_into` (one lock for the
/// lot) instead of going back to `recv` for each item.
pub const BATCHING: bool = {% if batching %}true{% else %}false{% endif %};

/// The producers and the consumer spend one unit of their task's coop budget
/// (`tokio::task::consume_budget`) per this many items, the same rate as the
/// chassis's [`crate::coop::Pacer`]. With tokio's budget of 128 units, a loop
/// that never has to wait yields about every 33,000 items.
pub const ITEMS_PER_BUDGET_UNIT: u64 = 256;

/// Without batching, the consumer samples the queue depth once per this many
/// receives (reading it takes the channel's lock). With batching it comes free
/// with every `drain_into`.
const DEPTH_SAMPLE_EVERY: u64 = 64;

/// Flags of this topology. A fan-in has one consumer, so it adds none.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TopologyArgs {}

/// The most items the consumer holds outside the channel at any moment: the
/// one `recv` returned, plus, with batching, everything `drain_into` took (a
/// full queue and the item of every producer waiting for room).
pub const fn max_held_by_consumer(capacity: usize, producers: usize) -> usize {
    if BATCHING {
        1 + capacity + producers
    } else {
        1
    }
}

/// The most items that exist at once: queued in the channel, waiting in a
/// producer's `send` (one per producer) and held by the consumer. A slow
/// consumer slows the producers down; memory never grows past this.
pub const fn max_in_flight(capacity: usize, producers: usize) -> usize {
    capacity + producers + max_held_by_consumer(capacity, producers)
}

/// What the pipeline needs from the code it carries. Implemented by
/// [`crate::workload::DemoWorkload`]; tests implement it to observe the pipeline.
pub trait Workload: Send + Sync + 'static {
    /// One unit of work travelling through the channel.
    type Item: Send + 'static;

    /// Creates item number `seq`. Each `seq` below `--items` is produced
    /// exactly once, by one of the producers, right before it is sent. It is
    /// on the hot path, so keep it cheap and free of allocations.
    fn produce(&self, seq: u64) -> Self::Item;

    /// Handles one item. An error is counted and logged, and the pipeline
    /// goes on with the next item.
    fn handle(&self, item: Self::Item) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Runs the pipeline until all `config.items` are handled or `shutdown` is
/// cancelled and the queued items are drained (within `--drain-timeout`).
pub async fn run<W: Workload>(config: &Config, workload: W, shutdown: CancellationToken) -> Report {
    let mut supervisor = Supervisor::new(TOPOLOGY, config, shutdown, config.producers, 1);
    let workload = Arc::new(workload);
    // Producers look at the stop flag before every item; asking the token
    // itself would take its lock each time.
    let stopping = supervisor.stop_flag();
    let (tx, rx) = kanal::bounded_async::<W::Item>(config.capacity);
    tracing::info!(
        producers = config.producers,
        capacity = config.capacity,
        items = config.items,
        batching = BATCHING,
        "pipeline started"
    );

    // The task spans are at debug level: an enabled span is entered and left
    // on every poll of its task, which this pipeline does up to once per item.
    // At the default `info` level they cost nothing; `RUST_LOG=debug` shows them.
    for id in 0..config.producers {
        let producer = Producer {
            id,
            stride: config.producers as u64,
            items: config.items,
            tx: tx.clone(),
            workload: Arc::clone(&workload),
            counters: Arc::clone(supervisor.counters()),
            stopping: Arc::clone(&stopping),
        };
        let span = tracing::debug_span!("producer", id);
        supervisor.spawn_task(format!("producer {id}"), span, producer.run());
    }
    // The consumer sees the end of input only when every sender is gone. The
    // producers own clones; this original must go now, or the consumer would
    // wait forever for items that never come.
    drop(tx);

    let held = max_held_by_consumer(config.capacity, config.producers);
    let counters = Arc::clone(supervisor.counters());
    let span = tracing::debug_span!("consumer");
    supervisor.spawn_task(
        "consumer".to_owned(),
        span,
        consume(rx, workload, counters, held),
    );
    supervisor.finish().await
}

/// One source task and everything it needs.
struct Producer<W: Workload> {
    id: usize,
    stride: u64,
    items: u64,
    tx: AsyncSender<W::Item>,
    workload: Arc<W>,
    counters: Arc<Counters>,
    stopping: Arc<StopFlag>,
}

impl<W: Workload> Producer<W> {
    /// Produces items `id`, `id + stride`, `id + 2 * stride`, … until the quota
    /// is reached, the run is stopped or the consumer is gone.
    async fn run(self) {
        let slot = self.counters.producer(self.id);
        let mut produced = 0u64;
        let mut seq = self.id as u64;
        while (self.items == 0 || seq < self.items) && !self.stopping.is_set() {
            let item = self.workload.produce(seq);
            produced += 1;
            // Awaited to the end, never raced against cancellation: a kanal
            // send future dropped while it waits for room drops the item it
            // carries. The wait is bounded all the same, because the consumer
            // keeps draining until every producer is gone, and the stop flag
            // is read again before the next item is made. So after a shutdown
            // request each producer finishes at most the one send it is in.
            let sent = self.tx.send(item).await;
            slot.publish(produced);
            if sent.is_err() {
                // Only a consumer that panicked drops the receiver. This item
                // was made and went down with the send, so it stays counted
                // as produced: the report then counts it as lost.
                break;
            }
            seq += self.stride;
            // kanal's send never spends the coop budget, so a producer whose
            // channel has room would never yield, starving the signal
            // listener, the timers and the stop flag. This spends it, and
            // yields once it is gone. Between two items nothing is in hand,
            // and the stop flag is read right after a yield.
            if produced.is_multiple_of(ITEMS_PER_BUDGET_UNIT) {
                tokio::task::consume_budget().await;
            }
        }
        tracing::debug!(produced, "producer finished");
    }
}

/// Drains the channel until every producer is gone and it is empty.
///
/// The consumer never looks at cancellation, and never races `recv` against
/// anything: producers stop, their senders drop, and `recv` fails only once
/// the queued items are all taken. That is what makes shutdown a drain rather
/// than a loss.
async fn consume<W: Workload>(
    rx: AsyncReceiver<W::Item>,
    workload: Arc<W>,
    counters: Arc<Counters>,
    held: usize,
) {
    let slot = counters.worker(0);
    let (mut handled, mut failed) = (0u64, 0u64);
    // Sized once for the most `drain_into` can take, then reused: filled by
    // `drain_into`, emptied by handling, never reallocated. Without batching
    // it stays empty and allocates nothing.
    let mut batch: Vec<W::Item> = Vec::with_capacity(held - 1);
    let mut wakeups = 0u64;
    // Items taken since the consumer last spent coop budget for them.
    let mut unbudgeted = 0u64;
    loop {
        // kanal's recv never spends the coop budget either, so a consumer
        // whose channel never runs empty would never yield. One unit per
        // ITEMS_PER_BUDGET_UNIT items taken, spent here, before `recv`, with
        // no item in hand. (Spending it inside the loop below, between the
        // items of a batch, cost up to a quarter of the throughput without
        // batching.) A batch is handled without a yield in between, as
        // before: it holds at most a full channel plus one item per producer.
        while unbudgeted >= ITEMS_PER_BUDGET_UNIT {
            unbudgeted -= ITEMS_PER_BUDGET_UNIT;
            tokio::task::consume_budget().await;
        }
        let Ok(first) = rx.recv().await else {
            break; // Every producer is gone and the queue is empty.
        };
        if BATCHING {
            // Everything queued plus the item of every producer waiting for
            // room, under one lock. It fails only when no receiver is left,
            // and this is one.
            let _ = rx.drain_into(&mut batch);
        }
        if BATCHING || wakeups.is_multiple_of(DEPTH_SAMPLE_EVERY) {
            let waiting = if BATCHING { batch.len() } else { rx.len() };
            counters.observe_queue_depth(1 + waiting);
        }
        wakeups += 1;
        unbudgeted += 1 + batch.len() as u64;
        // Handled right here rather than in a helper `async fn`: a nested
        // future per item cost measurably more than the channel itself.
        for item in std::iter::once(first).chain(batch.drain(..)) {
            match workload.handle(item).await {
                Ok(()) => handled += 1,
                Err(error) => {
                    failed += 1;
                    item_failed(&error);
                }
            }
            // After every item, not once per wake-up: if a later item of this
            // batch panics, the report still knows exactly what finished, and
            // only the rest of the batch is lost; and the progress line and
            // the stall watch see a long batch advance.
            slot.publish(handled, failed);
        }
    }
}

/// Logs a failed item; kept out of line, off the consumer's hot loop.
#[cold]
fn item_failed(error: &anyhow::Error) {
    tracing::warn!(error = format!("{error:#}"), "item failed");
}
