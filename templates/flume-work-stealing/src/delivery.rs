//! How items travel from the sources to the handlers, and what happens to an
//! item whose handler fails.
//!
//! - **One by one or in batches.** With `--batch-max 1` every item is a
//!   message of its own. Above 1, each producer fills a batch from its source
//!   ([`Batcher`]) and sends it when it is full, when `--linger-ms` have
//!   passed since its first item, or when the source ends or a shutdown
//!   comes; the workers hand each batch to [`Workload::handle_batch`]. The
//!   channel's capacity then counts batches.
//! - **Failures** ([`FailurePolicy`]). A failed item is handed to its handler
//!   again up to `--retries` times, after an exponential backoff with jitter
//!   (`--retry-backoff-ms` doubling per attempt). What still fails goes to
//!   the `--dead-letter` file as one NDJSON line (the item, the last error
//!   and the attempts), or, without one, is logged and counted as dropped.
//!
//! [`Settler`] is one worker's side of both: it runs the handler, applies
//! the policy, and keeps the worker's counter slot current.

use std::future::{Future, poll_fn};
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::coop::{self, Pacer};
use crate::counters::{Counters, ProducerSlot};
use crate::io::ndjson::NdjsonFile;
use crate::metrics::HandleTimer;
use crate::report::Report;
use crate::workload_api::{Source, Workload, input_rejected};

/// The most items one batch may hold.
pub const MAX_BATCH: usize = 65_536;

/// The longest backoff between two attempts, however many came before.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Flags of delivery and of the failure policy.
#[derive(Debug, Clone, clap::Args)]
pub struct DeliveryArgs {
    /// Items per batch: 1 sends every item on its own; above 1, producers
    /// fill batches of up to N items, `--capacity` counts batches, and the
    /// workers hand each batch to the workload's batch handler.
    #[arg(long, value_name = "N", default_value = crate::pipeline::DEFAULT_BATCH_MAX,
          value_parser = batch_size, allow_negative_numbers = true)]
    pub batch_max: usize,

    /// With batches: send a partial batch once this many milliseconds have
    /// passed since its first item, so a trickling source still sees its
    /// items handled soon.
    #[arg(long, value_name = "MS", default_value = "5",
          value_parser = clap::value_parser!(u64).range(..=60_000))]
    pub linger_ms: u64,

    /// Times a failed item is handed to its handler again before it counts
    /// as failed.
    #[arg(long, value_name = "N", default_value = "0",
          value_parser = clap::value_parser!(u32).range(..=100))]
    pub retries: u32,

    /// Wait before the first retry, in milliseconds; it doubles with each
    /// further retry (up to a minute), and a random jitter of up to the same
    /// again spreads retries out.
    #[arg(long, value_name = "MS", default_value = "100",
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub retry_backoff_ms: u64,

    /// Append items that still fail after their retries to this file (created
    /// if missing), one NDJSON line each: `{"item":…,"error":"…","attempts":N}`.
    /// Without it, they are logged and counted as dropped.
    #[arg(long, value_name = "PATH")]
    pub dead_letter: Option<PathBuf>,
}

impl DeliveryArgs {
    /// Whether items travel in batches.
    pub fn batches(&self) -> bool {
        self.batch_max > 1
    }

    /// How long a partial batch may wait for more items.
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }
}

fn batch_size(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=MAX_BATCH).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {MAX_BATCH}")),
    }
}

/// Where a producer's messages go: the sending end of a pipeline's channel.
pub trait Outlet<M>: Sync {
    /// Sends `message`, waiting while the channel is full. `Err` when no
    /// consumer is left (they failed): the message goes down with them.
    ///
    /// Never raced against cancellation: the message is the pipeline's to
    /// deliver, and the consumers keep draining until every producer is
    /// gone, so the wait ends.
    fn deliver(&self, message: M) -> impl Future<Output = Result<(), ()>> + Send;
}

/// Why [`Batcher::fill`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filled {
    /// The batch is full, or its linger has passed, or the source has been
    /// asked for as many items as a batch holds: send what is there (if
    /// anything) and fill the next.
    Ready,
    /// The source has ended: send what is there, and stop.
    Ended,
    /// A shutdown request came while the source waited: send what is there,
    /// and stop.
    Cancelled,
}

/// One producer's batcher: fills batches from its source and sends each
/// when it should go.
pub struct Batcher {
    max: usize,
    linger: Duration,
    /// Fires at the linger deadline of the batch being filled. Armed only
    /// when the source would wait with items in the batch, so a source that
    /// is always ready never touches the timer.
    timer: Pin<Box<Sleep>>,
}

impl Batcher {
    /// A filler for batches of up to `max` items, sent `linger` after their
    /// first item at the latest.
    pub fn new(max: usize, linger: Duration) -> Self {
        Self {
            max,
            linger,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// Runs one producer in batches: fills a batch from `source`, hands it
    /// to `outlet`, and so on until the source ends, `stop` is cancelled (a
    /// shutdown request, a failed stage; `cancelled` is its pinned future)
    /// or no consumer is left. A partial batch goes out when its linger
    /// passes, when the source ends, and on a stop: nothing the source
    /// returned is left behind. Counts into `slot` as it goes, and returns
    /// the items sent and the inputs rejected, for the log.
    pub async fn produce<S: Source>(
        mut self,
        source: &mut S,
        outlet: &impl Outlet<Vec<S::Item>>,
        slot: &ProducerSlot,
        stop: &CancellationToken,
        mut cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
    ) -> (u64, u64) {
        let mut pacer = Pacer::default();
        let (mut produced, mut rejected) = (0u64, 0u64);
        let mut batch = self.empty_batch();
        loop {
            let rejected_before = rejected;
            let filled = self
                .fill(source, &mut batch, cancelled.as_mut(), |error| {
                    input_rejected(slot, &mut rejected, &error);
                })
                .await;
            let size = batch.len() as u64;
            if size > 0 {
                let full = std::mem::replace(&mut batch, self.empty_batch());
                if outlet.deliver(full).await.is_err() {
                    // Counted as produced, the batch the failed consumers
                    // took down shows up in the report as lost.
                    slot.publish(produced + size);
                    break;
                }
                produced += size;
                slot.publish(produced);
            }
            if filled != Filled::Ready || stop.is_cancelled() {
                break;
            }
            // Neither an always-ready source (or one that rejects input
            // after input) nor a channel with room would ever make this task
            // yield; between two batches nothing is in hand.
            let pulled = (size + rejected - rejected_before).max(1);
            let due = pacer.count(u32::try_from(pulled).unwrap_or(u32::MAX));
            if due > 0 {
                coop::spend(due).await;
            }
        }
        (produced, rejected)
    }

    /// A new, empty batch with room for a full one.
    fn empty_batch<I>(&self) -> Vec<I> {
        Vec::with_capacity(self.max)
    }

    /// Adds items from `source` to `batch` until the batch should be sent.
    /// An input the source rejects is passed to `rejected` and does not
    /// join the batch.
    ///
    /// The source is asked for at most a batch's worth of items per call, so
    /// the caller gets a turn (to send, to yield, to look at the stop flag)
    /// even when the source rejects input after input. Waiting sources are
    /// raced against `cancelled` and the linger deadline, which the
    /// [`Source`] contract makes safe: nothing the source has returned is
    /// ever dropped, it is in `batch`.
    async fn fill<S: Source>(
        &mut self,
        source: &mut S,
        batch: &mut Vec<S::Item>,
        mut cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
        mut rejected: impl FnMut(anyhow::Error),
    ) -> Filled {
        let mut deadline = None;
        for _ in 0..self.max {
            if batch.len() >= self.max {
                break;
            }
            let mut next = pin!(source.next());
            let mut armed = false;
            let step = poll_fn(|cx| {
                if let Poll::Ready(next) = next.as_mut().poll(cx) {
                    return Poll::Ready(Step::Next(next));
                }
                if let Some(deadline) = deadline {
                    if !armed {
                        self.timer.as_mut().reset(deadline);
                        armed = true;
                    }
                    if self.timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Step::Linger);
                    }
                }
                cancelled.as_mut().poll(cx).map(|()| Step::Cancelled)
            })
            .await;
            match step {
                Step::Next(Ok(Some(item))) => {
                    if batch.is_empty() {
                        deadline = Some(Instant::now() + self.linger);
                    }
                    batch.push(item);
                }
                Step::Next(Ok(None)) => return Filled::Ended,
                Step::Next(Err(error)) => rejected(error),
                Step::Linger => break,
                Step::Cancelled => return Filled::Cancelled,
            }
        }
        Filled::Ready
    }
}

/// What a source's wait ended with.
enum Step<T> {
    Next(anyhow::Result<Option<T>>),
    Linger,
    Cancelled,
}

/// A batch as the workload's batch handler sees it: the items, and a place
/// to say how each one went.
///
/// An item the handler neither marks [`done`](Self::done) nor
/// [`fail`](Self::fail)s is handled if `handle_batch` returns `Ok`, and
/// fails with its error if it returns `Err`. Marking items done as they
/// finish is optional: it makes the report exact should a later item panic.
pub struct Batch<'a, I> {
    items: &'a [I],
    /// One outcome per item once the handler marks its first item; empty
    /// until then, so a handler that marks nothing costs nothing per item.
    outcomes: &'a mut Vec<Outcome>,
    progress: Progress<'a>,
}

/// How one item of a batch went.
#[derive(Debug, Clone, Default)]
enum Outcome {
    #[default]
    Open,
    Done,
    Failed(Arc<str>),
}

/// Publishes a worker's handled count while a batch is being handled.
struct Progress<'a> {
    counters: &'a Counters,
    worker: usize,
    handled: &'a mut u64,
    failed: u64,
}

impl<'a, I> Batch<'a, I> {
    /// The items of the batch, in the order their producer sent them.
    pub fn items(&self) -> &'a [I] {
        self.items
    }

    /// How many items the batch holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch holds no items (never the case for a batch the
    /// pipeline hands over).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Marks item `index` handled, at once.
    pub fn done(&mut self, index: usize) {
        if let Some(outcome @ Outcome::Open) = self.outcome(index) {
            *outcome = Outcome::Done;
            *self.progress.handled += 1;
            self.progress
                .counters
                .worker(self.progress.worker)
                .publish(*self.progress.handled, self.progress.failed);
        }
    }

    /// Marks item `index` failed with `error`: it is retried, or
    /// dead-lettered, on its own; the others are not affected.
    pub fn fail(&mut self, index: usize, error: anyhow::Error) {
        if let Some(outcome @ Outcome::Open) = self.outcome(index) {
            *outcome = Outcome::Failed(format!("{error:#}").into());
        }
    }

    fn outcome(&mut self, index: usize) -> Option<&mut Outcome> {
        if self.outcomes.is_empty() {
            self.outcomes.resize(self.items.len(), Outcome::Open);
        }
        self.outcomes.get_mut(index)
    }
}

/// What happens to items whose handler fails: retries, then the dead-letter
/// file. One per run, shared by every worker.
pub struct FailurePolicy {
    backoff: ExponentialBuilder,
    dead_letter: Option<DeadLetter>,
    /// No retry starts once this is cancelled (a shutdown request, a failed
    /// stage), and a wait for one ends.
    stop: CancellationToken,
}

/// The dead-letter file and where it is.
struct DeadLetter {
    file: NdjsonFile,
    path: PathBuf,
}

impl FailurePolicy {
    /// The policy the flags ask for. Opens the dead-letter file to append to
    /// it (dead letters of earlier runs stay), so a path that cannot be
    /// written fails before the run starts.
    pub fn new(args: &DeliveryArgs, stop: CancellationToken) -> anyhow::Result<Self> {
        let dead_letter = match &args.dead_letter {
            Some(path) => Some(DeadLetter {
                file: NdjsonFile::append(path)?,
                path: path.clone(),
            }),
            None => None,
        };
        let backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(args.retry_backoff_ms))
            .with_max_delay(MAX_BACKOFF)
            .with_max_times(args.retries as usize)
            .with_jitter();
        Ok(Self {
            backoff,
            dead_letter,
            stop,
        })
    }

    /// Flushes the dead-letter file at the end of a run; a failure to do so
    /// fails the run, as the items in it would be gone.
    pub async fn close(&self, report: &mut Report) {
        if let Some(dead_letter) = &self.dead_letter
            && let Err(error) = dead_letter.file.flush().await
        {
            tracing::error!(
                error = format!("{error:#}"),
                "flushing the dead-letter file failed"
            );
            report.failed_stages += 1;
        }
    }

    /// Waits out the backoff before the next attempt. `false` when no retry
    /// should follow: none is left, or a shutdown request came (before or
    /// during the wait).
    async fn wait_to_retry(&self, delays: &mut impl Iterator<Item = Duration>) -> bool {
        let Some(delay) = delays.next() else {
            return false;
        };
        if self.stop.is_cancelled() {
            return false;
        }
        // Both branches are cancel safe; the item being retried is the
        // caller's, and is dead-lettered if the stop comes first.
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.stop.cancelled() => false,
        }
    }

    /// Keeps failed items in the dead-letter file, in one write; returns how
    /// many it kept (none when there is no file or the write failed).
    async fn dead_letter<'i, I: serde::Serialize + 'i>(
        &self,
        failed: impl Iterator<Item = (&'i I, &'i str)>,
        attempts: u32,
    ) -> u64 {
        let Some(dead_letter) = &self.dead_letter else {
            let count = failed.count();
            tracing::warn!(
                count,
                attempts,
                "items failed and are dropped: run with --dead-letter PATH to keep them"
            );
            return 0;
        };
        let mut lines = String::new();
        let mut count = 0;
        for (item, error) in failed {
            let record = serde_json::json!({ "item": item, "error": error, "attempts": attempts });
            lines.push_str(&record.to_string());
            lines.push('\n');
            count += 1;
        }
        match dead_letter.file.write_lines(&lines).await {
            Ok(()) => {
                tracing::warn!(
                    count,
                    attempts,
                    path = %dead_letter.path.display(),
                    "items failed and are kept in the dead-letter file"
                );
                count
            }
            Err(error) => {
                tracing::error!(
                    count,
                    error = format!("{error:#}"),
                    path = %dead_letter.path.display(),
                    "writing to the dead-letter file failed: items dropped"
                );
                0
            }
        }
    }
}

/// One worker's side of delivery: hands items and batches to the workload,
/// applies the failure policy, and publishes to the worker's counter slot
/// after every item, so the report stays exact if a handler panics.
pub struct Settler<W: Workload> {
    workload: Arc<W>,
    policy: Arc<FailurePolicy>,
    counters: Arc<Counters>,
    worker: usize,
    handled: u64,
    failed: u64,
    retried: u64,
    dead_lettered: u64,
    /// Reused for every batch.
    outcomes: Vec<Outcome>,
    timer: HandleTimer,
}

impl<W: Workload> Settler<W> {
    /// The settler of worker `worker` (its index in `counters`).
    pub fn new(
        workload: Arc<W>,
        policy: Arc<FailurePolicy>,
        counters: Arc<Counters>,
        worker: usize,
    ) -> Self {
        Self {
            workload,
            policy,
            counters,
            worker,
            handled: 0,
            failed: 0,
            retried: 0,
            dead_lettered: 0,
            outcomes: Vec::new(),
            timer: HandleTimer::new(),
        }
    }

    /// The workload, for the item-by-item loops, which call
    /// [`Workload::handle`] themselves: a helper `async fn` around it would
    /// be a nested future per item, which costs more than the channel does.
    #[inline]
    pub fn workload(&self) -> &W {
        &self.workload
    }

    /// The handling-time sampler, for the same loops.
    #[inline]
    pub fn timer(&mut self) -> &mut HandleTimer {
        &mut self.timer
    }

    /// Records a sampled queue depth (see [`Counters::observe_queue_depth`]).
    pub fn observe_queue_depth(&self, depth: usize) {
        self.counters.observe_queue_depth(depth);
    }

    /// Counts one item handled.
    #[inline]
    pub fn handled_one(&mut self) {
        self.handled += 1;
        self.publish();
    }

    /// Settles an item whose handler returned `error`: retries it as the
    /// policy says, then counts it handled, or failed (and dead-lettered).
    /// Boxed, so the loops that call it on their cold path keep a small
    /// future.
    pub fn item_failed(
        &mut self,
        item: W::Item,
        error: anyhow::Error,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let mut last_error = error;
            let mut attempts = 1;
            let mut delays = self.policy.backoff.build();
            while self.policy.wait_to_retry(&mut delays).await {
                if attempts == 1 {
                    self.retried += 1;
                }
                attempts += 1;
                match self.workload.handle(&item).await {
                    Ok(()) => {
                        self.handled_one();
                        self.publish_policy();
                        return;
                    }
                    Err(error) => last_error = error,
                }
            }
            let error: Arc<str> = format!("{last_error:#}").into();
            self.give_up(std::iter::once((&item, &*error)), attempts)
                .await;
        })
    }

    /// Hands one batch to [`Workload::handle_batch`], retries what failed
    /// as the policy says, and settles every item of it.
    pub async fn batch(&mut self, mut items: Vec<W::Item>) {
        let mut attempts = 0;
        // Built at the first retry: most batches never need one.
        let mut delays = None;
        loop {
            attempts += 1;
            self.outcomes.clear();
            let timing = self.timer.start();
            let mut batch = Batch {
                items: &items,
                outcomes: &mut self.outcomes,
                progress: Progress {
                    counters: &self.counters,
                    worker: self.worker,
                    handled: &mut self.handled,
                    failed: self.failed,
                },
            };
            let result = self.workload.handle_batch(&mut batch).await;
            self.timer.stop(timing);
            if self.outcomes.is_empty() && result.is_ok() {
                // Nothing marked, nothing failed: the common case, settled
                // without a look at each item.
                self.handled += items.len() as u64;
                self.publish();
                break;
            }
            self.outcomes.resize(items.len(), Outcome::Open);
            let shared: Option<Arc<str>> = result.err().map(|e| format!("{e:#}").into());
            for outcome in &mut self.outcomes {
                if let Outcome::Open = outcome {
                    *outcome = match &shared {
                        None => {
                            self.handled += 1;
                            Outcome::Done
                        }
                        Some(error) => Outcome::Failed(Arc::clone(error)),
                    };
                }
            }
            self.publish();
            // Keep only the failed items, in order, each beside its error.
            let mut kept = 0;
            for index in 0..items.len() {
                if let Outcome::Failed(_) = self.outcomes[index] {
                    items.swap(kept, index);
                    self.outcomes.swap(kept, index);
                    kept += 1;
                }
            }
            items.truncate(kept);
            self.outcomes.truncate(kept);
            if items.is_empty() {
                break;
            }
            let delays = delays.get_or_insert_with(|| self.policy.backoff.build());
            if !self.policy.wait_to_retry(delays).await {
                let errors = std::mem::take(&mut self.outcomes);
                let failed = items.iter().zip(errors.iter().map(|outcome| match outcome {
                    Outcome::Failed(error) => &**error,
                    Outcome::Open | Outcome::Done => "",
                }));
                self.give_up(failed, attempts).await;
                self.outcomes = errors;
                break;
            }
            if attempts == 1 {
                self.retried += items.len() as u64;
                self.publish_policy();
            }
        }
    }

    /// Counts items whose last attempt failed as failed, and keeps them in
    /// the dead-letter file if there is one.
    async fn give_up<'i>(
        &mut self,
        failed: impl ExactSizeIterator<Item = (&'i W::Item, &'i str)>,
        attempts: u32,
    ) where
        W::Item: 'i,
    {
        self.failed += failed.len() as u64;
        self.publish();
        self.dead_lettered += self.policy.dead_letter(failed, attempts).await;
        self.publish_policy();
    }

    #[inline]
    fn publish(&self) {
        self.counters
            .worker(self.worker)
            .publish(self.handled, self.failed);
    }

    fn publish_policy(&self) {
        self.counters
            .worker(self.worker)
            .publish_policy(self.retried, self.dead_lettered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sizes_are_whole_numbers_in_range() {
        assert_eq!(batch_size("1"), Ok(1));
        assert_eq!(batch_size("65536"), Ok(MAX_BATCH));
        for bad in ["0", "-1", "65537", "x", ""] {
            assert!(batch_size(bad).is_err(), "{bad}");
        }
    }
}
