//! The topology: one producer task per source of the workload
//! ([`Workload::producers`]; `--producers` for the demo's numbers) feeds one
//! bounded `kanal` async channel, and a single consumer task drains it.
//!
//! ```text
//! Source::next ─▶ producer 0 ─┐
//! Source::next ─▶ producer 1 ─┼─▶ [ kanal::bounded_async, capacity N ] ─▶ consumer ─▶ Workload::handle
//! Source::next ─▶ producer … ─┘
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
//! A third fact is about kanal and tokio together: kanal's futures never
//! spend tokio's coop budget, so a producer whose channel has room, or a
//! consumer whose channel is not empty, would never give its runtime thread
//! back. Both loops count their items with the chassis's
//! [`crate::coop::Pacer`] and spend the budget where no item is in hand and
//! no kanal future exists: the producers between two items, the consumer
//! before each `recv`.
//!
//! What one item costs beyond the channel itself: a producer loads a flag that
//! only changes once, polls its source, hands the item over with a plain call
//! while the channel has room, and stores a running total into a counter slot
//! that no other task writes; the consumer calls the handler and does the
//! same with its totals after every item. With batching the consumer
//! takes the channel's lock once per wake-up rather than once per item.
//! Nothing on this path allocates (unless the workload does), and the task
//! spans are off at the default log level.

use std::pin::pin;
use std::sync::Arc;

use anyhow::Context as _;
use kanal::{AsyncReceiver, AsyncSender};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::coop::{self, Pacer};
use crate::counters::Counters;
use crate::metrics::HandleTimer;
use crate::report::Report;
use crate::supervisor::{StopFlag, Supervisor};
use crate::workload_api::{self, Source, Workload, unless_cancelled};

/// The name this topology reports itself under.
pub const TOPOLOGY: &str = "kanal-hot-path";

/// Whether the consumer, each time `recv` hands it an item, also takes
/// everything else already waiting with one `drain_into` (one lock for the
/// lot) instead of going back to `recv` for each item.
pub const BATCHING: bool = {% if batching %}true{% else %}false{% endif %};

/// Without batching, the consumer samples the queue depth once per this many
/// receives (reading it takes the channel's lock). With batching it comes free
/// with every `drain_into`.
const DEPTH_SAMPLE_EVERY: u64 = 64;

/// Flags of this topology: a fan-in has one consumer, so only the
/// workload's own.
#[derive(Debug, Clone, clap::Args)]
pub struct TopologyArgs {
    /// Flags of the workload (`src/workload.rs`).
    #[command(flatten)]
    pub workload: crate::workload::WorkloadArgs,
}

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
/// `producers` is the workload's [`Workload::producers`].
pub const fn max_in_flight(capacity: usize, producers: usize) -> usize {
    capacity + producers + max_held_by_consumer(capacity, producers)
}

/// Runs the pipeline until every source has ended and its items are handled,
/// or `shutdown` is cancelled and the queued items are drained (within
/// `--drain-timeout`).
pub async fn run<W: Workload>(config: &Config, workload: W, shutdown: CancellationToken) -> Report {
    let producers = workload.producers();
    let mut supervisor = Supervisor::new(TOPOLOGY, config, shutdown, producers, 1);
    let workload = Arc::new(workload);
    // Producers look at the stop flag before every item; asking the token
    // itself would take its lock each time.
    let stopping = supervisor.stop_flag();
    let (tx, rx) = kanal::bounded_async::<W::Item>(config.capacity);
    tracing::info!(
        producers,
        capacity = config.capacity,
        batching = BATCHING,
        "pipeline started"
    );

    // The task spans are at debug level: an enabled span is entered and left
    // on every poll of its task, which this pipeline does up to once per item.
    // At the default `info` level they cost nothing; `RUST_LOG=debug` shows them.
    for id in 0..producers {
        let producer = Producer {
            id,
            tx: tx.clone(),
            workload: Arc::clone(&workload),
            counters: Arc::clone(supervisor.counters()),
            stop: supervisor.stop_token().clone(),
            stopping: Arc::clone(&stopping),
        };
        let span = tracing::debug_span!("producer", id);
        supervisor.spawn_task(format!("producer {id}"), span, producer.run());
    }
    // The consumer sees the end of input only when every sender is gone. The
    // producers own clones; this original must go now, or the consumer would
    // wait forever for items that never come.
    drop(tx);

    let held = max_held_by_consumer(config.capacity, producers);
    let counters = Arc::clone(supervisor.counters());
    let span = tracing::debug_span!("consumer");
    let consumer = consume(rx, Arc::clone(&workload), counters, held);
    supervisor.spawn_task("consumer".to_owned(), span, consumer);
    let mut report = supervisor.finish().await;
    workload_api::close(&*workload, &mut report).await;
    report
}

/// One producer task and everything it needs.
struct Producer<W: Workload> {
    id: usize,
    tx: AsyncSender<W::Item>,
    workload: Arc<W>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    stopping: Arc<StopFlag>,
}

impl<W: Workload> Producer<W> {
    /// Opens this producer's source and sends what it makes until it ends,
    /// the run is stopped or the consumer is gone. Fails when the source
    /// cannot be opened.
    async fn run(self) -> anyhow::Result<()> {
        let mut cancelled = pin!(self.stop.cancelled());
        // Opening may wait (for a connection, say), so it is raced against
        // cancellation; the workload's contract makes that safe.
        let opened = tokio::select! {
            opened = self.workload.open(self.id) => opened,
            () = &mut cancelled => return Ok(()),
        };
        let Some(mut source) = opened.context("opening the source")? else {
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
            let item = match next {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(error) => {
                    rejected += 1;
                    slot.publish_rejected(rejected);
                    input_rejected(&error);
                    // A source that rejects input after input must yield
                    // now and then too.
                    let due = pacer.count(1);
                    if due > 0 {
                        coop::spend(due).await;
                    }
                    continue;
                }
            };
            // From here the item is ours to deliver. While the channel has
            // room, `try_send_option` hands it over with a plain call: no
            // send future to build and drop for every item (about 10% more
            // one-word items per second; with three-word items the `Option`
            // around them costs more than it saves, see the README). When
            // the channel is full it leaves the item in hand, and `send`
            // waits for room, awaited to the end, never raced against
            // cancellation: a kanal send future dropped while it waits drops
            // the item it carries. The wait is bounded all the same, because
            // the consumer keeps draining until every producer is gone, and
            // the stop flag is read again before the next item. So after a
            // shutdown request each producer finishes at most the one send
            // it is in.
            let mut in_hand = Some(item);
            let sent = match self.tx.try_send_option(&mut in_hand) {
                Ok(_) => match in_hand.take() {
                    None => Ok(()),
                    Some(item) => self.tx.send(item).await,
                },
                Err(closed) => Err(closed),
            };
            if sent.is_err() {
                // Only a consumer that failed drops the receiver. The item in
                // hand goes down with it: counted as produced, it shows up in
                // the report as lost.
                slot.publish(produced + 1);
                break;
            }
            produced += 1;
            slot.publish(produced);
            // kanal's send never spends the coop budget, so a producer whose
            // channel has room would never yield. Between two items nothing
            // is in hand, and the stop flag is read right after a yield.
            let due = pacer.count(1);
            if due > 0 {
                coop::spend(due).await;
            }
        }
        tracing::debug!(produced, rejected, "producer finished");
        Ok(())
    }
}

/// Logs an input the source could not read; kept off the hot loop.
#[cold]
fn input_rejected(error: &anyhow::Error) {
    tracing::warn!(error = format!("{error:#}"), "input rejected");
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
    let mut pacer = Pacer::default();
    let mut timer = HandleTimer::new();
    // Budget units due for the items taken at the last wake-up.
    let mut due = 0;
    loop {
        // kanal's recv never spends the coop budget either, so a consumer
        // whose channel never runs empty would never yield. The budget for
        // what it took is spent here, before `recv`, with no item in hand.
        // (Spending it between the items of a batch cost up to a quarter of
        // the throughput without batching.) A batch is handled without a
        // yield in between: it holds at most a full channel plus one item per
        // producer.
        if due > 0 {
            coop::spend(due).await;
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
        // At most a full channel plus one item per producer: it fits.
        due = pacer.count(1 + batch.len() as u32);
        // Handled right here rather than in a helper `async fn`: a nested
        // future per item cost measurably more than the channel itself.
        for item in std::iter::once(first).chain(batch.drain(..)) {
            let timing = timer.start();
            let outcome = workload.handle(item).await;
            timer.stop(timing);
            match outcome {
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
