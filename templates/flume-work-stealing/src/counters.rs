//! The hot-path counters of a run.
//!
//! Each producer and worker owns one slot and is the only one that writes it,
//! so counting costs a plain store per item and no contention. Readers (the
//! monitor, the final report) sum the slots. A worker publishes after every
//! item, not once per batch: if it panics halfway through a batch, its slot
//! still says exactly how many items it finished.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Live counters of one run: one slot per producer and per worker.
#[derive(Debug)]
pub struct Counters {
    producers: Box<[ProducerSlot]>,
    workers: Box<[WorkerSlot]>,
    queue_depth: AtomicUsize,
    peak_queue_depth: AtomicUsize,
    stall_episodes: AtomicU64,
}

/// What one producer has sent into the channel, and the inputs its source
/// rejected. Written only by that producer.
#[derive(Debug, Default)]
#[repr(align(128))] // One slot per cache line (two on CPUs that prefetch pairs).
pub struct ProducerSlot {
    produced: AtomicU64,
    rejected: AtomicU64,
}

/// What one worker has finished, and what its failure policy did. Written
/// only by that worker.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerSlot {
    handled: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
}

/// A sum of all slots at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Items that entered the channel.
    pub produced: u64,
    /// Inputs a source could not turn into an item (a read error, a
    /// malformed record). They never entered the channel.
    pub rejected: u64,
    /// Items whose handler returned `Ok`.
    pub handled: u64,
    /// Items whose handler returned an error (after any retries).
    pub failed: u64,
    /// Items handed to their handler more than once.
    pub retried: u64,
    /// Failed items written to the dead-letter file.
    pub dead_lettered: u64,
    /// `handled` per worker, in worker order.
    pub handled_per_worker: Vec<u64>,
}

impl Totals {
    /// Items that have finished, successfully or not.
    pub fn finished(&self) -> u64 {
        self.handled + self.failed
    }

    /// What the report calls produced: items and rejected inputs. A rejected
    /// input never entered the channel, so the balance leaves it out.
    pub fn made(&self) -> u64 {
        self.produced + self.rejected
    }

    /// What the report calls failed: failed items and rejected inputs.
    pub fn failed_or_rejected(&self) -> u64 {
        self.failed + self.rejected
    }

    /// Failed items that were not kept anywhere: no dead-letter file was
    /// given, or writing to it failed. Only the log has them.
    pub fn dropped(&self) -> u64 {
        self.failed.saturating_sub(self.dead_lettered)
    }
}

impl Counters {
    /// Counters for `producers` producers and `workers` workers.
    pub fn new(producers: usize, workers: usize) -> Self {
        Self {
            producers: (0..producers).map(|_| ProducerSlot::default()).collect(),
            workers: (0..workers).map(|_| WorkerSlot::default()).collect(),
            queue_depth: AtomicUsize::new(0),
            peak_queue_depth: AtomicUsize::new(0),
            stall_episodes: AtomicU64::new(0),
        }
    }

    /// The slot of producer `index`.
    pub fn producer(&self, index: usize) -> &ProducerSlot {
        &self.producers[index]
    }

    /// The slot of worker `index`.
    pub fn worker(&self, index: usize) -> &WorkerSlot {
        &self.workers[index]
    }

    /// Records a sampled queue depth and keeps the largest seen. Call it from
    /// one consumer, or from each worker now and then: it writes a shared line.
    pub fn observe_queue_depth(&self, depth: usize) {
        self.queue_depth.store(depth, Relaxed);
        // The load is a shared read of a line that rarely changes; only a new
        // peak pays for the read-modify-write.
        if depth > self.peak_queue_depth.load(Relaxed) {
            self.peak_queue_depth.fetch_max(depth, Relaxed);
        }
    }

    /// The queue depth sampled last.
    pub fn queue_depth(&self) -> usize {
        self.queue_depth.load(Relaxed)
    }

    /// The largest queue depth recorded so far.
    pub fn peak_queue_depth(&self) -> usize {
        self.peak_queue_depth.load(Relaxed)
    }

    /// Records how many stall episodes the monitor has seen so far.
    pub fn set_stall_episodes(&self, episodes: u64) {
        self.stall_episodes.store(episodes, Relaxed);
    }

    /// Stall episodes so far.
    pub fn stall_episodes(&self) -> u64 {
        self.stall_episodes.load(Relaxed)
    }

    /// Sums every slot. Finished items are read before produced ones, so a
    /// snapshot taken while the pipeline runs never shows more finished than
    /// produced.
    pub fn totals(&self) -> Totals {
        let handled_per_worker: Vec<u64> = self
            .workers
            .iter()
            .map(|w| w.handled.load(Relaxed))
            .collect();
        let sum = |field: fn(&WorkerSlot) -> &AtomicU64| -> u64 {
            self.workers.iter().map(|w| field(w).load(Relaxed)).sum()
        };
        Totals {
            produced: self
                .producers
                .iter()
                .map(|p| p.produced.load(Relaxed))
                .sum(),
            rejected: self
                .producers
                .iter()
                .map(|p| p.rejected.load(Relaxed))
                .sum(),
            handled: handled_per_worker.iter().sum(),
            failed: sum(|w| &w.failed),
            retried: sum(|w| &w.retried),
            dead_lettered: sum(|w| &w.dead_lettered),
            handled_per_worker,
        }
    }
}

impl ProducerSlot {
    /// Publishes this producer's running total.
    pub fn publish(&self, produced: u64) {
        self.produced.store(produced, Relaxed);
    }

    /// Publishes how many inputs this producer's source has rejected.
    pub fn publish_rejected(&self, rejected: u64) {
        self.rejected.store(rejected, Relaxed);
    }
}

impl WorkerSlot {
    /// Publishes this worker's running totals. Call it after every item.
    pub fn publish(&self, handled: u64, failed: u64) {
        self.handled.store(handled, Relaxed);
        self.failed.store(failed, Relaxed);
    }

    /// Publishes what this worker's failure policy has done so far: items
    /// retried, and failed items written to the dead-letter file.
    pub fn publish_policy(&self, retried: u64, dead_lettered: u64) {
        self.retried.store(retried, Relaxed);
        self.dead_lettered.store(dead_lettered, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_their_slots() {
        let counters = Counters::new(2, 2);
        counters.producer(0).publish(3);
        counters.producer(1).publish(4);
        counters.producer(1).publish_rejected(2);
        counters.worker(0).publish(5, 1);
        counters.worker(1).publish(1, 0);
        counters.worker(0).publish_policy(2, 1);
        counters.observe_queue_depth(7);
        counters.observe_queue_depth(2);
        let totals = counters.totals();
        assert_eq!((totals.produced, totals.handled, totals.failed), (7, 6, 1));
        assert_eq!(totals.finished(), 7);
        assert_eq!(totals.rejected, 2);
        assert_eq!(totals.handled_per_worker, vec![5, 1]);
        assert_eq!((totals.retried, totals.dead_lettered), (2, 1));
        assert_eq!(totals.dropped(), 0);
        assert_eq!(counters.queue_depth(), 2);
        assert_eq!(counters.peak_queue_depth(), 7);
    }
}
