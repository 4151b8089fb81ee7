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

use std::pin::pin;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::coop::{self, Pacer};
use crate::counters::Counters;
use crate::metrics::HandleTimer;
use crate::report::Report;
use crate::supervisor::Supervisor;
use crate::workload_api::{self, Source, Workload, unless_cancelled};

/// The name this topology reports itself under.
pub const TOPOLOGY: &str = "mpsc-fan-in";

/// How many items the consumer takes out of the channel at once.
pub const RECV_BATCH: usize = {% if batching %}256{% else %}1{% endif %};

/// The consumer samples the queue depth once per this many receives.
const DEPTH_SAMPLE_EVERY: u64 = 64;

/// Producers look at the cancellation token at least once per this many items,
/// even when neither their source nor the channel makes them wait.
const CANCEL_CHECK_EVERY: u64 = 64;

/// Flags of this topology: a fan-in has one consumer, so only the
/// workload's own.
#[derive(Debug, Clone, clap::Args)]
pub struct TopologyArgs {
    /// Flags of the workload (`src/workload.rs`).
    #[command(flatten)]
    pub workload: crate::workload::WorkloadArgs,
}

/// The most items that can be produced but not yet finished at any moment:
/// the channel's capacity, one item per producer waiting for a free slot
/// (its source already made it), and what the consumer holds.
pub const fn max_in_flight(capacity: usize, producers: usize) -> usize {
    capacity + producers + RECV_BATCH
}

/// Runs the pipeline until every source has ended and its items are handled,
/// or `shutdown` is cancelled and the queued items are drained (within
/// `--drain-timeout`).
pub async fn run<W: Workload>(config: &Config, workload: W, shutdown: CancellationToken) -> Report {
    let producers = workload.producers();
    let mut supervisor = Supervisor::new(TOPOLOGY, config, shutdown, producers, 1);
    let workload = Arc::new(workload);
    let (tx, rx) = mpsc::channel::<W::Item>(config.capacity);
    tracing::info!(producers, capacity = config.capacity, "pipeline started");

    for id in 0..producers {
        let producer = Producer {
            id,
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
    let consumer = consume(rx, Arc::clone(&workload), counters);
    supervisor.spawn_task("consumer".to_owned(), span, consumer);
    let mut report = supervisor.finish().await;
    workload_api::close(&*workload, &mut report).await;
    report
}

/// One producer task and everything it needs.
struct Producer<W: Workload> {
    id: usize,
    tx: mpsc::Sender<W::Item>,
    workload: Arc<W>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl<W: Workload> Producer<W> {
    /// Opens this producer's source and sends what it makes until it ends,
    /// the run is cancelled or the consumer is gone. Fails when the source
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
            let item = match next {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(error) => {
                    rejected += 1;
                    slot.publish_rejected(rejected);
                    input_rejected(&error);
                    // A source that rejects input after input without
                    // waiting must not keep its runtime thread either.
                    let due = pacer.count(1);
                    if due > 0 {
                        coop::spend(due).await;
                    }
                    continue;
                }
            };
            // From here the item is ours to deliver, so the send is never
            // raced against cancellation: that would drop the item whenever
            // cancellation won. It waits only while the channel is full, and
            // the consumer keeps draining until every producer is gone, so
            // the wait ends. `try_reserve` is the fast path while there is room.
            let permit = match self.tx.try_reserve() {
                Ok(permit) => Ok(permit),
                Err(TrySendError::Full(())) => self.tx.reserve().await.map_err(drop),
                Err(TrySendError::Closed(())) => Err(()),
            };
            let Ok(permit) = permit else {
                // Only a consumer that failed drops the receiver. The item
                // in hand goes down with it: counted as produced, it shows
                // up in the report as lost.
                slot.publish(produced + 1);
                break;
            };
            permit.send(item);
            produced += 1;
            slot.publish(produced);
            // A source that is always ready and a channel with room never
            // yield, which with a large capacity may be for the whole run.
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
    let mut timer = HandleTimer::new();
    while rx.recv_many(&mut batch, RECV_BATCH).await > 0 {
        // Reading the depth touches the cache line the producers write, so it
        // is sampled rather than read on every receive.
        if receives.is_multiple_of(DEPTH_SAMPLE_EVERY) {
            counters.observe_queue_depth(rx.len() + batch.len());
        }
        receives += 1;
        for item in batch.drain(..) {
            let timing = timer.start();
            let outcome = workload.handle(item).await;
            timer.stop(timing);
            match outcome {
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
