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
//! With `--batch-max` above 1 the channel carries batches: each producer
//! fills one from its source and sends it when it is full or has lingered
//! `--linger-ms` ([`crate::delivery`]), and whichever worker is free takes
//! the next batch and hands it to `Workload::handle_batch`.
//!
//! How a worker runs (async task or OS thread) lives in [`crate::workers`];
//! everything here is the same for both kinds, and so is the workload: both
//! kinds run the same [`Workload`] from `src/workload.rs`.
//!
//! The run ends when every source has ended and the workers have drained the
//! channel. Cancellation only stops the producers: once the last `Sender` is
//! gone the channel disconnects, and each worker's receive returns an error
//! after the queue is empty. Workers never watch the token to stop (only a
//! retry's backoff wait ends early on it, see [`crate::delivery`]). A
//! stage that fails stops the producers the same way (the supervisor cancels
//! their stop token), and the remaining workers drain what is queued.
//!
//! Starting, joining and watching the stages, the drain deadline and the
//! report belong to [`crate::supervisor`]; this module holds only the
//! channel, the stages and their loops.

use std::pin::pin;
use std::sync::Arc;

use flume::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::coop::{self, Pacer};
use crate::counters::Counters;
use crate::delivery::{Batcher, DeliveryArgs, FailurePolicy, Outlet, Settler};
use crate::report::Report;
use crate::supervisor::Supervisor;
use crate::workers;
use crate::workload_api::{
    self, Source, Workload, input_rejected, open_unless_cancelled, unless_cancelled,
};

/// The name this topology reports itself under.
pub const TOPOLOGY: &str = "flume-work-stealing";

/// `--batch-max` when it is not given: how this project was generated.
pub const DEFAULT_BATCH_MAX: &str = {% if batching %}"256"{% else %}"1"{% endif %};

/// Producers look at the cancellation token at least once per this many
/// items, even when neither their source nor the channel makes them wait,
/// and after every send that had to wait for a free slot.
const CANCEL_CHECK_EVERY: u64 = 64;

/// Each worker samples the queue depth once per this many messages.
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

    /// Batches, retries and the dead-letter file (`src/delivery.rs`).
    #[command(flatten)]
    pub delivery: DeliveryArgs,
{% if transport == "nats" %}
    /// The JetStream work queue between producers and workers (`src/nats.rs`).
    #[command(flatten)]
    pub nats: crate::nats::NatsArgs,

    /// What this process does with the work queue; without one, the whole
    /// pipeline runs in this process, with a channel in between.
    #[command(subcommand)]
    pub role: Option<crate::nats::Role>,
{% endif %}}

/// The most items that can be produced but not yet finished at any moment:
/// a message (an item, or a batch of up to `batch_max`) in each of the
/// channel's `capacity` slots, in each producer's hands (filling it, or
/// waiting in `send_async` for a free slot: flume keeps a waiting sender's
/// message outside the queue), and in the hands of each worker.
pub const fn max_in_flight(
    capacity: usize,
    producers: usize,
    workers: usize,
    batch_max: usize,
) -> usize {
    (capacity + producers + workers) * batch_max
}

/// Runs the pipeline until every source has ended and its items are handled,
/// or `shutdown` is cancelled and the queued items are drained (within
/// `--drain-timeout`). Fails before it starts if the dead-letter file cannot
/// be created{% if transport == "nats" %}, or, with a role, if the work queue cannot be reached.
///
/// Given a role (`produce`, `work`, `run`), the process plays it with a NATS
/// JetStream work queue as the stage boundary ([`crate::nats`]); without
/// one, the whole pipeline runs in this process with a channel in between.{% else %}.{% endif %}
pub async fn run<W: Workload>(
    config: &Config,
    workload: W,
    shutdown: CancellationToken,
) -> anyhow::Result<Report> {
{% if transport == "nats" %}    if let Some(role) = config.topology.role {
        return crate::nats::run(role, config, workload, shutdown).await;
    }
    run_in_process(config, workload, shutdown).await
}

/// The whole pipeline in this process: what [`run`] does without a role,
/// and, with publishers for workers, the producing side of a role.
pub(crate) async fn run_in_process<W: Workload>(
    config: &Config,
    workload: W,
    shutdown: CancellationToken,
) -> anyhow::Result<Report> {
{% endif %}    let producers = workload.producers();
    let worker_count = config.topology.workers;
    let delivery = &config.topology.delivery;
    let mut supervisor = Supervisor::new(TOPOLOGY, config, shutdown, producers, worker_count);
    let policy = Arc::new(FailurePolicy::new(
        delivery,
        supervisor.stop_token().clone(),
    )?);
    let workload = Arc::new(workload);
    tracing::info!(
        producers,
        workers = worker_count,
        worker_kind = workers::KIND,
        capacity = config.capacity,
        batch_max = delivery.batch_max,
        "pipeline started"
    );

    // Workers start first: if one cannot start, the supervisor has already
    // cancelled the stop token when the producers look at it, and they make
    // nothing.
    //
    // Producers notice that every worker is gone (all panicked) only when the
    // last `Receiver` is dropped: a producer waiting in `send_async` for a
    // slot cannot see the stop token. The workers own clones; the original
    // goes with the `Workers` value, before any producer starts.
    //
    // Workers see the end of input only when every `Sender` is gone. The
    // producers own clones; the original goes with `Producer::all`.
    let settler = |id| {
        let counters = Arc::clone(supervisor.counters());
        Settler::new(Arc::clone(&workload), Arc::clone(&policy), counters, id)
    };
    if delivery.batches() {
        let (tx, rx) = flume::bounded::<Vec<W::Item>>(config.capacity);
        let workers: Vec<_> = (0..worker_count)
            .map(|id| Worker::new(id, rx.clone(), settler(id)))
            .collect();
        drop(rx);
        for worker in workers {
            workers::spawn_batches(worker, &mut supervisor);
        }
        for producer in Producer::all(&supervisor, &workload, tx) {
            let batcher = Batcher::new(delivery.batch_max, delivery.linger());
            spawn_producer(&mut supervisor, producer.id, producer.run_batches(batcher));
        }
    } else {
        let (tx, rx) = flume::bounded::<W::Item>(config.capacity);
        let workers: Vec<_> = (0..worker_count)
            .map(|id| Worker::new(id, rx.clone(), settler(id)))
            .collect();
        drop(rx);
        for worker in workers {
            workers::spawn_items(worker, &mut supervisor);
        }
        for producer in Producer::all(&supervisor, &workload, tx) {
            spawn_producer(&mut supervisor, producer.id, producer.run_items());
        }
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

/// One producer task and everything it needs; `M` is what it sends, an item
/// or a batch of them.
struct Producer<W: Workload, M> {
    id: usize,
    tx: flume::Sender<M>,
    workload: Arc<W>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl<W: Workload, M: Send + 'static> Producer<W, M> {
    /// One producer per source of the workload, each with a clone of `tx`,
    /// which is dropped here: the producers own the only senders.
    fn all(supervisor: &Supervisor, workload: &Arc<W>, tx: flume::Sender<M>) -> Vec<Self> {
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

    /// Sends `message`; `Ok(true)` when it had to wait for a free slot, `Err`
    /// when every worker is gone (they all failed): the message goes down
    /// with them.
    ///
    /// `try_send` is the fast path while the channel has room. When it is
    /// full, `send_async` waits for a slot, and that wait is never raced
    /// against cancellation in `select!`: flume keeps a waiting sender's
    /// message inside the send future, so dropping the future either drops
    /// the message or, if a worker took it a moment before, delivers it
    /// without telling us. Both break the accounting. The wait ends as soon
    /// as a worker frees a slot, which workers keep doing until the channel
    /// is empty, so it cannot hang a shutdown.
    async fn send(&self, message: M) -> Result<bool, ()> {
        match self.tx.try_send(message) {
            Ok(()) => Ok(false),
            Err(TrySendError::Full(message)) => {
                self.tx.send_async(message).await.map_err(drop)?;
                Ok(true)
            }
            Err(TrySendError::Disconnected(_)) => Err(()),
        }
    }
}

impl<W: Workload, M: Send + 'static> Outlet<M> for Producer<W, M> {
    async fn deliver(&self, message: M) -> Result<(), ()> {
        self.send(message).await.map(drop)
    }
}

impl<W: Workload> Producer<W, W::Item> {
    /// Sends what the source makes, item by item, until it ends, the run is
    /// cancelled or every worker is gone. Fails when the source cannot be
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
            // its future safe. The source is polled first, so a source with
            // an item ready never pays for polling the token (a lock).
            let Some(next) = unless_cancelled(pin!(source.next()), cancelled.as_mut()).await else {
                break;
            };
            match next {
                Ok(Some(item)) => {
                    let Ok(waited) = self.send(item).await else {
                        // Counted as produced, the item the failed workers
                        // took down shows up in the report as lost.
                        slot.publish(produced + 1);
                        break;
                    };
                    produced += 1;
                    slot.publish(produced);
                    // Having waited anyway, look at cancellation right away,
                    // so a cancelled producer sends at most the one item it
                    // held.
                    if waited && self.stop.is_cancelled() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => input_rejected(slot, &mut rejected, &error),
            }
            // flume takes no part in tokio's cooperative budget: `try_send`
            // succeeds without ever yielding while the channel has room, and
            // `send_async` need not wait either when a worker frees a slot
            // just in time. With a source that is always ready (or one that
            // rejects input after input), a producer would then keep its
            // runtime thread for the whole run, starving the signal
            // listener, the timers and every other task there. The pacer
            // makes it yield now and then: how often depends on the kind of
            // worker it feeds (see `PRODUCER_ITEM_WEIGHT` in `workers.rs`).
            let due = pacer.count(workers::PRODUCER_ITEM_WEIGHT);
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

/// What a worker that takes batches takes off the channel: a batch of items,
/// or, with the nats transport, a batch fetched from the work queue, which
/// is acknowledged once every item in it is settled.
pub(crate) trait BatchMessage<W: Workload>: Send + 'static {
    /// Hands the items to `settler`, which handles them and applies the
    /// failure policy, then does whatever else settling the message takes.
    /// Returns how many items it carried.
    fn settle(self, settler: &mut Settler<W>) -> impl Future<Output = usize> + Send;
}

impl<W: Workload> BatchMessage<W> for Vec<W::Item> {
    #[inline]
    async fn settle(self, settler: &mut Settler<W>) -> usize {
        let items = self.len();
        settler.batch(self).await;
        items
    }
}

/// What every worker carries, whatever its kind: its receiver clone of a
/// channel of `M` (items, or batches), and its [`Settler`], which runs the
/// handlers and keeps the worker's counter slot.
pub(crate) struct Worker<W: Workload, M> {
    pub(crate) id: usize,
    pub(crate) rx: flume::Receiver<M>,
    pub(crate) settler: Settler<W>,
    received: u64,
}

impl<W: Workload, M> Worker<W, M> {
    /// Worker `id` (its index in the counters), taking messages from `rx`.
    pub(crate) fn new(id: usize, rx: flume::Receiver<M>, settler: Settler<W>) -> Self {
        Self {
            id,
            rx,
            settler,
            received: 0,
        }
    }

    /// Call right after taking a message. Samples the queue depth now and
    /// then: reading it locks the channel, and the recorded peak is a shared
    /// line.
    #[inline]
    pub(crate) fn took_message(&mut self) {
        if self.received.is_multiple_of(DEPTH_SAMPLE_EVERY) {
            self.settler.observe_queue_depth(self.rx.len() + 1);
        }
        self.received += 1;
    }
}
