//! What the pipeline asks of the code it carries: a [`Source`] per producer,
//! a handler for each item, and a last word once every item is done.
//!
//! The same API in every template with async workers (mpsc-fan-in,
//! flume-work-stealing, kanal-hot-path), so `src/workload.rs` moves between
//! them unchanged: measure, and if the channel turns out to be the
//! bottleneck, switch the topology and keep your code.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use anyhow::Context as _;
use tokio_util::sync::WaitForCancellationFuture;

use crate::counters::ProducerSlot;
use crate::delivery::Batch;
use crate::report::Report;

/// The code a pipeline carries. Implemented by
/// [`crate::workload::DemoWorkload`]; tests implement it to observe the
/// pipeline.
pub trait Workload: Send + Sync + 'static {
    /// One unit of work travelling through the channel. Handlers see it by
    /// reference, so the pipeline still has it to retry or to write to the
    /// dead-letter file (as JSON, hence `Serialize`). Items that cross
    /// processes (flume-work-stealing's nats transport) travel as JSON and
    /// are read back, hence `DeserializeOwned`.
    type Item: Send + Sync + serde::Serialize + serde::de::DeserializeOwned + 'static;
    /// Where one producer gets its items from.
    type Source: Source<Item = Self::Item>;

    /// How many producers run at once, each reading a source of its own.
    fn producers(&self) -> usize;

    /// Opens the source of producer `producer` (counted from 0), once, when
    /// the producer starts. `Ok(None)` means this producer has nothing to
    /// read and ends at once; an error is logged and fails the run, like a
    /// producer that panics.
    ///
    /// It is raced against shutdown: if a shutdown request comes while it
    /// waits, the future is dropped and the producer ends.
    fn open(
        &self,
        producer: usize,
    ) -> impl Future<Output = anyhow::Result<Option<Self::Source>>> + Send;

    /// Handles one item. An error fails the item: it is retried
    /// (`--retries`), then written to the dead-letter file (`--dead-letter`)
    /// or dropped, and the pipeline goes on with the next item. It runs on
    /// the tokio runtime: await I/O here, never block.
    fn handle(&self, item: &Self::Item) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Handles a batch of items, when the pipeline sends batches
    /// (`--batch-max` above 1): override it to write a batch in one go (one
    /// bulk insert, one request, one write). This default hands the items
    /// to [`handle`](Self::handle) one by one.
    ///
    /// `Ok` means every item it did not [`fail`](Batch::fail) is handled;
    /// `Err` fails every item it did not mark [`done`](Batch::done). Failed
    /// items are retried as a smaller batch, then dead-lettered, like
    /// failed single items.
    fn handle_batch(
        &self,
        batch: &mut Batch<'_, Self::Item>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        async move {
            let items = batch.items();
            for (index, item) in items.iter().enumerate() {
                match self.handle(item).await {
                    Ok(()) => batch.done(index),
                    Err(error) => batch.fail(index, error),
                }
            }
            Ok(())
        }
    }

    /// Called once, after the last item has been handled (or abandoned at the
    /// drain deadline): flush and close sinks here. An error fails the run.
    fn close(&self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }
}

/// A shared workload is a workload, so a caller can keep a handle on the
/// one a pipeline runs (to read its state afterwards, say).
impl<W: Workload> Workload for Arc<W> {
    type Item = W::Item;
    type Source = W::Source;

    fn producers(&self) -> usize {
        (**self).producers()
    }

    fn open(
        &self,
        producer: usize,
    ) -> impl Future<Output = anyhow::Result<Option<Self::Source>>> + Send {
        (**self).open(producer)
    }

    fn handle(&self, item: &Self::Item) -> impl Future<Output = anyhow::Result<()>> + Send {
        (**self).handle(item)
    }

    fn handle_batch(
        &self,
        batch: &mut Batch<'_, Self::Item>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        (**self).handle_batch(batch)
    }

    fn close(&self) -> impl Future<Output = anyhow::Result<()>> + Send {
        (**self).close()
    }
}

/// Where one producer gets its items from: a counter, a file, a connection,
/// a consumer of some broker. Each producer owns its source, so it can hold
/// a connection or a cursor without sharing it.
pub trait Source: Send + 'static {
    /// What the source makes.
    type Item: Send + 'static;

    /// The next item; `Ok(None)` at the end of input, which ends this
    /// producer (the run ends when every producer has ended and the queue is
    /// drained).
    ///
    /// An error means one input could not be read: a malformed record, an
    /// over-long line, a read that failed. It is logged and counted as a
    /// rejected (and so failed) item, and the producer calls `next` again.
    /// A source that cannot go on after an error returns `Ok(None)` from
    /// then on.
    ///
    /// **Cancel safety.** While it waits for input, this future is raced
    /// against shutdown and dropped when the shutdown request comes first,
    /// so a source waiting on a quiet socket never holds up the drain; with
    /// batches it is also raced against the batch's linger, and dropped when
    /// the partial batch is due, then asked again. It
    /// must therefore be cancel safe: dropping it before it completes must
    /// not lose input it has already read. Keep partial input in `self`,
    /// not in locals of the future, and use cancel-safe reads (tokio's
    /// `AsyncBufReadExt::fill_buf`, `TcpListener::accept`, a channel's
    /// `recv`). Once it has returned an item, that item is the pipeline's
    /// to deliver: it is never dropped.
    fn next(&mut self) -> impl Future<Output = anyhow::Result<Option<Self::Item>>> + Send;
}

/// The numbers `first`, `first + stride`, `first + 2 * stride`, … below
/// `end` (without end when `end` is 0). With `first` the producer's index
/// and `stride` the number of producers, the producers share `0..end`
/// between them, each number made exactly once: how the demo numbers its
/// jobs, and a handy source for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbers {
    next: u64,
    stride: u64,
    end: u64,
}

impl Numbers {
    /// Producer `producer`'s share of `0..items` among `producers` producers.
    pub fn share(producer: usize, producers: usize, items: u64) -> Self {
        Self {
            next: producer as u64,
            stride: producers as u64,
            end: items,
        }
    }

    /// The next number of the share, if any is left.
    #[inline]
    pub fn next_number(&mut self) -> Option<u64> {
        if self.end != 0 && self.next >= self.end {
            return None;
        }
        let number = self.next;
        self.next += self.stride;
        Some(number)
    }
}

impl Source for Numbers {
    type Item = u64;

    async fn next(&mut self) -> anyhow::Result<Option<u64>> {
        Ok(self.next_number())
    }
}

/// Waits for `next` (a source's next item, say) or for `cancelled`,
/// whichever is ready first; `None` when cancelled. `next` is polled first,
/// and `cancelled` only while `next` is pending, so a source with an item
/// ready never pays for polling the token (which takes a lock).
///
/// This is `tokio::select! { biased; … }` without the macro's own work on
/// every call (its branch bookkeeping and coop budget check): with an
/// always-ready source and trivial handlers, that work cost the
/// work-stealing pipeline about a sixth of its throughput.
pub fn unless_cancelled<'a, F: Future>(
    mut next: Pin<&'a mut F>,
    mut cancelled: Pin<&'a mut WaitForCancellationFuture<'_>>,
) -> impl Future<Output = Option<F::Output>> + 'a {
    poll_fn(move |cx| {
        if let Poll::Ready(value) = next.as_mut().poll(cx) {
            return Poll::Ready(Some(value));
        }
        cancelled.as_mut().poll(cx).map(|()| None)
    })
}

/// Opens the source of producer `producer`, raced against `cancelled`:
/// opening may wait (for a connection, say), and the workload's contract
/// makes dropping it safe. `None` when the producer has nothing to read or
/// the run is cancelled first.
pub async fn open_unless_cancelled<W: Workload>(
    workload: &W,
    producer: usize,
    cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
) -> anyhow::Result<Option<W::Source>> {
    tokio::select! {
        opened = workload.open(producer) => opened.context("opening the source"),
        () = cancelled => Ok(None),
    }
}

/// Counts and logs an input a producer's source could not read. Kept out of
/// line, off the producers' hot loops.
#[cold]
pub fn input_rejected(slot: &ProducerSlot, rejected: &mut u64, error: &anyhow::Error) {
    *rejected += 1;
    slot.publish_rejected(*rejected);
    tracing::warn!(error = format!("{error:#}"), "input rejected");
}

/// Calls [`Workload::close`] at the end of a run and counts a failure as a
/// failed stage, so the run exits non-zero when, say, the output could not
/// be flushed.
pub async fn close<W: Workload>(workload: &W, report: &mut Report) {
    if let Err(error) = workload.close().await {
        tracing::error!(error = format!("{error:#}"), "closing the workload failed");
        report.failed_stages += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_number_once() {
        let mut seen: Vec<u64> = (0..3)
            .flat_map(|producer| {
                let mut share = Numbers::share(producer, 3, 10);
                std::iter::from_fn(move || share.next_number())
            })
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_share_without_end_goes_on() {
        let mut share = Numbers::share(1, 2, 0);
        let first: Vec<u64> = std::iter::from_fn(|| share.next_number()).take(3).collect();
        assert_eq!(first, [1, 3, 5]);
    }
}
