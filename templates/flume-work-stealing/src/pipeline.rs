//! The topology: `--producers` async tasks, each reading a source of its
//! own, feed one bounded `flume` channel, and `--workers` workers each hold a
//! clone of its receiver. Whichever worker is free takes the next item, so
//! one slow item never holds up the others.
//!
//! ```text
//! producer 0 (Source) ─┐                          ┌─▶ worker 0 ─▶ Workload::handle
//! producer 1 (Source) ─┼─▶ [ flume, capacity N ] ─┼─▶ worker 1 ─▶ Workload::handle
//! producer … (Source) ─┘                          └─▶ worker … ─▶ Workload::handle
//! ```
//!
//! How a worker runs (async task or OS thread) lives in [`crate::workers`];
//! everything here is the same for both kinds, and so is the workload: both
//! kinds run the same [`Workload`] from `src/workload.rs`.
//!
//! The run ends when every source has ended and the workers have drained the
//! channel. Cancellation only stops the producers: once the last `Sender` is
//! gone the channel disconnects, and each worker's receive returns an error
//! after the queue is empty. Workers never watch the token themselves. A
//! stage that fails stops the producers the same way (the supervisor cancels
//! their stop token), and the remaining workers drain what is queued.
//!
//! Starting, joining and watching the stages, the drain deadline and the
//! report belong to [`crate::supervisor`]; this module holds only the
//! channel, the stages and their loops.

use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use flume::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::counters::Counters;
use crate::metrics::HandleTimer;
use crate::report::Report;
use crate::supervisor::Supervisor;
use crate::workers;
use crate::workload_api::{self, Source, Workload, unless_cancelled};

/// The name this topology reports itself under.
pub const TOPOLOGY: &str = "flume-work-stealing";

/// Producers look at the cancellation token at least once per this many
/// items, even when neither their source nor the channel makes them wait,
/// and after every send that had to wait for a free slot.
const CANCEL_CHECK_EVERY: u64 = 64;

/// Each worker samples the queue depth once per this many items.
const DEPTH_SAMPLE_EVERY: u64 = 64;

/// Flags of this topology, and those of the workload.
#[derive(Debug, Clone, clap::Args)]
pub struct TopologyArgs {
    /// Workers taking items off the channel, each one {% if worker_kind == "tasks" %}an async task{% else %}an OS thread{% endif %}.
    #[arg(long, value_name = "N", default_value = "4", value_parser = crate::config::task_count, allow_negative_numbers = true)]
    pub workers: usize,

    /// Flags of the workload (`src/workload.rs`).
    #[command(flatten)]
    pub workload: crate::workload::WorkloadArgs,
}

/// The most items that can be produced but not yet finished at any moment:
/// the channel's capacity, one item per producer waiting in `send_async` for
/// a free slot (its source already made it, and flume keeps a waiting
/// sender's item outside the queue), and one item in the hands of each
/// worker.
pub const fn max_in_flight(capacity: usize, producers: usize, workers: usize) -> usize {
    capacity + producers + workers
}

/// Runs the pipeline until every source has ended and its items are handled,
/// or `shutdown` is cancelled and the queued items are drained (within
/// `--drain-timeout`).
pub async fn run<W: Workload>(config: &Config, workload: W, shutdown: CancellationToken) -> Report {
    let producers = workload.producers();
    let worker_count = config.topology.workers;
    let mut supervisor = Supervisor::new(TOPOLOGY, config, shutdown, producers, worker_count);
    let workload = Arc::new(workload);
    let (tx, rx) = flume::bounded::<W::Item>(config.capacity);
    tracing::info!(
        producers,
        workers = worker_count,
        worker_kind = workers::KIND,
        capacity = config.capacity,
        "pipeline started"
    );

    // Workers start first: if one cannot start, the supervisor has already
    // cancelled the stop token when the producers look at it, and they make
    // nothing.
    for id in 0..worker_count {
        let counters = Arc::clone(supervisor.counters());
        let worker = Worker::new(id, rx.clone(), Arc::clone(&workload), counters);
        workers::spawn(worker, &mut supervisor);
    }
    // Producers notice that every worker is gone (all panicked) only when the
    // last `Receiver` is dropped: a producer waiting in `send_async` for a
    // slot cannot see the stop token. The workers own clones; this original
    // must go now, or producers would wait forever for a slot nobody frees.
    drop(rx);

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
    // Workers see the end of input only when every `Sender` is gone. The
    // producers own clones; this original must go now, or the workers would
    // wait forever for items that never come.
    drop(tx);

    let mut report = supervisor.finish().await;
    workload_api::close(&*workload, &mut report).await;
    report
}

/// One producer task and everything it needs.
struct Producer<W: Workload> {
    id: usize,
    tx: flume::Sender<W::Item>,
    workload: Arc<W>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl<W: Workload> Producer<W> {
    /// Opens this producer's source and sends what it makes until it ends,
    /// the run is cancelled or every worker is gone. Fails when the source
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
        let (mut produced, mut rejected) = (0u64, 0u64);
        loop {
            let taken = produced + rejected;
            if taken.is_multiple_of(CANCEL_CHECK_EVERY) && self.stop.is_cancelled() {
                break;
            }
            // The source may wait for input (a quiet client, an empty pipe),
            // so it is raced against cancellation: a source that waits must
            // not hold up shutdown, and the `Source` contract makes dropping
            // its future safe. The source is polled first, so a source with
            // an item ready never pays for polling the token (a lock).
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
                    tokio::task::consume_budget().await;
                    continue;
                }
            };
            // From here the item is ours to deliver. `try_send` is the fast
            // path while the channel has room. When it is full, `send_async`
            // waits for a slot, and that wait is never raced against
            // cancellation in `select!`: flume keeps a waiting sender's item
            // inside the send future, so dropping the future either drops the
            // item or, if a worker took it a moment before, delivers it
            // without telling us. Both break the accounting. The wait ends as
            // soon as a worker frees a slot, which workers keep doing until
            // the channel is empty, so it cannot hang a shutdown.
            let sent = match self.tx.try_send(item) {
                Ok(()) => Ok(false),
                Err(TrySendError::Full(item)) => self.tx.send_async(item).await.map(|()| true),
                Err(TrySendError::Disconnected(item)) => Err(flume::SendError(item)),
            };
            let Ok(waited) = sent else {
                // Only workers that all failed drop every receiver. The item
                // in hand goes down with them: counted as produced, it shows
                // up in the report as lost.
                slot.publish(produced + 1);
                break;
            };
            produced += 1;
            slot.publish(produced);
            // Having waited anyway, look at cancellation right away, so a
            // cancelled producer sends at most the one item it held.
            if waited && self.stop.is_cancelled() {
                break;
            }
            // flume takes no part in tokio's cooperative budget: `try_send`
            // succeeds without ever yielding while the channel has room, and
            // `send_async` need not wait either when a worker frees a slot
            // just in time. With a source that is always ready, a producer
            // would then keep its runtime thread for the whole run, starving
            // the signal listener, the timers and every other task there.
            // So every item spends a unit of the task's budget, as a send on
            // a tokio channel would, and the producer yields about every 128
            // items. That is far more often than the workers' pacer, and on
            // purpose: a producer that yields this often lets the workers
            // take what it queued in runs, and the demo moved 1.5 times as
            // many items per second as with the pacer here (criterion, 1
            // producer, 4 task workers, capacity 64).
            tokio::task::consume_budget().await;
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

/// What every worker carries, whatever its kind: its receiver clone, the
/// workload, and its own counter slot.
pub(crate) struct Worker<W: Workload> {
    pub(crate) id: usize,
    pub(crate) rx: flume::Receiver<W::Item>,
    pub(crate) workload: Arc<W>,
    counters: Arc<Counters>,
    handled: u64,
    failed: u64,
    timer: HandleTimer,
    timing: Option<Instant>,
}

impl<W: Workload> Worker<W> {
    fn new(
        id: usize,
        rx: flume::Receiver<W::Item>,
        workload: Arc<W>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            id,
            rx,
            workload,
            counters,
            handled: 0,
            failed: 0,
            timer: HandleTimer::new(),
            timing: None,
        }
    }

    /// Call right after taking an item. Samples the queue depth now and then
    /// (reading it locks the channel, and the recorded peak is a shared
    /// line), and starts the handling-time sample when one is due.
    pub(crate) fn took_item(&mut self) {
        if (self.handled + self.failed).is_multiple_of(DEPTH_SAMPLE_EVERY) {
            self.counters.observe_queue_depth(self.rx.len() + 1);
        }
        self.timing = self.timer.start();
    }

    /// Counts the outcome of one item and publishes it to this worker's slot.
    /// After every item, never in batches: at any moment only the item in
    /// hand is unaccounted for, so if the worker panics on its next item, the
    /// report still knows exactly what it finished and loses only that one.
    pub(crate) fn finished(&mut self, outcome: anyhow::Result<()>) {
        self.timer.stop(self.timing.take());
        match outcome {
            Ok(()) => self.handled += 1,
            Err(error) => {
                self.failed += 1;
                tracing::warn!(error = format!("{error:#}"), "item failed");
            }
        }
        self.counters
            .worker(self.id)
            .publish(self.handled, self.failed);
    }
}
