//! Counting what a run did, the progress line, and the final report.
//!
//! Each producer and worker owns one slot of [`Counters`] and is the only one
//! that writes it, so counting costs a plain store per item and no contention.
//! Readers (the progress line, the final report) sum the slots.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::ReportFormat;

/// Live counters of one run: one slot per producer and per worker.
#[derive(Debug)]
pub struct Counters {
    producers: Box<[ProducerSlot]>,
    workers: Box<[WorkerSlot]>,
    queue_depth: AtomicUsize,
    peak_queue_depth: AtomicUsize,
}

/// What one producer has sent into the channel. Written only by that producer.
#[derive(Debug, Default)]
#[repr(align(128))] // One slot per cache line (two on CPUs that prefetch pairs).
pub struct ProducerSlot {
    produced: AtomicU64,
}

/// What one worker has finished. Written only by that worker.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerSlot {
    handled: AtomicU64,
    failed: AtomicU64,
}

/// A consistent-enough sum of all slots at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Items that entered the channel.
    pub produced: u64,
    /// Items whose handler returned `Ok`.
    pub handled: u64,
    /// Items whose handler returned an error.
    pub failed: u64,
    /// `handled` per worker, in worker order.
    pub handled_per_worker: Vec<u64>,
}

impl Counters {
    /// Counters for `producers` producers and `workers` workers.
    pub fn new(producers: usize, workers: usize) -> Self {
        Self {
            producers: (0..producers).map(|_| ProducerSlot::default()).collect(),
            workers: (0..workers).map(|_| WorkerSlot::default()).collect(),
            queue_depth: AtomicUsize::new(0),
            peak_queue_depth: AtomicUsize::new(0),
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
    /// one consumer, or from each worker per batch: it writes a shared line.
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

    /// Sums every slot.
    pub fn totals(&self) -> Totals {
        let handled_per_worker: Vec<u64> = self
            .workers
            .iter()
            .map(|w| w.handled.load(Relaxed))
            .collect();
        Totals {
            produced: self
                .producers
                .iter()
                .map(|p| p.produced.load(Relaxed))
                .sum(),
            handled: handled_per_worker.iter().sum(),
            failed: self.workers.iter().map(|w| w.failed.load(Relaxed)).sum(),
            handled_per_worker,
        }
    }
}

impl ProducerSlot {
    /// Publishes this producer's running total.
    pub fn publish(&self, produced: u64) {
        self.produced.store(produced, Relaxed);
    }
}

impl WorkerSlot {
    /// Publishes this worker's running totals.
    pub fn publish(&self, handled: u64, failed: u64) {
        self.handled.store(handled, Relaxed);
        self.failed.store(failed, Relaxed);
    }
}

/// Logs throughput and queue depth every `every` until `done` is cancelled.
pub async fn log_progress(counters: Arc<Counters>, every: Duration, done: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // The first tick is immediate; there is nothing to say yet.
    let mut last = (Instant::now(), 0u64);
    loop {
        // The pipeline cancels `done` when it has finished; the final report
        // replaces the progress line from then on.
        tokio::select! {
            _ = done.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        let totals = counters.totals();
        let finished = totals.handled + totals.failed;
        let rate = per_second(finished - last.1, now - last.0);
        tracing::info!(
            produced = totals.produced,
            handled = totals.handled,
            failed = totals.failed,
            items_per_sec = rate.round() as u64,
            queue_depth = counters.queue_depth(),
            "progress"
        );
        last = (now, finished);
    }
}

/// The final account of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Which template produced this service, e.g. `mpsc-fan-in`.
    pub topology: &'static str,
    /// Items that entered the channel.
    pub produced: u64,
    /// Items handled successfully.
    pub handled: u64,
    /// Items whose handler failed, plus items lost with a panicking task.
    pub failed: u64,
    /// `handled` per worker, to show how the load was spread.
    pub handled_per_worker: Vec<u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The largest queue depth sampled. Consumers sample it periodically
    /// rather than on every item, so short spikes can be missed.
    pub peak_queue_depth: usize,
    /// Pipeline tasks that panicked. Any panic makes the run a failure.
    pub panicked_tasks: usize,
    /// Whether a shutdown request ended the run before all items were produced.
    pub cancelled: bool,
}

impl Report {
    /// Builds the report from the final totals.
    ///
    /// Items that entered the channel but were neither handled nor failed can
    /// only have been lost with a panicking task (held in its hands or left in
    /// a channel it dropped). They are counted as failed, so the report still
    /// accounts for every item.
    pub fn new(
        topology: &'static str,
        totals: Totals,
        peak_queue_depth: usize,
        started: Instant,
        panicked_tasks: usize,
        cancelled: bool,
    ) -> Self {
        let mut failed = totals.failed;
        let unaccounted = totals
            .produced
            .saturating_sub(totals.handled + totals.failed);
        if panicked_tasks > 0 && unaccounted > 0 {
            tracing::error!(
                items = unaccounted,
                "items lost with a panicking task, counted as failed"
            );
            failed += unaccounted;
        }
        Self {
            topology,
            produced: totals.produced,
            handled: totals.handled,
            failed,
            handled_per_worker: totals.handled_per_worker,
            elapsed: started.elapsed(),
            peak_queue_depth,
            panicked_tasks,
            cancelled,
        }
    }

    /// Whether the run ended without a pipeline error (item failures are
    /// counted, not fatal).
    pub fn is_success(&self) -> bool {
        self.panicked_tasks == 0
    }

    /// Handled items per second of wall time.
    pub fn items_per_sec(&self) -> f64 {
        per_second(self.handled, self.elapsed)
    }

    /// The report as text or as one line of JSON.
    pub fn render(&self, format: ReportFormat) -> String {
        match format {
            ReportFormat::Text => self.to_table(),
            ReportFormat::Json => self.to_json(),
        }
    }

    fn to_table(&self) -> String {
        let rows = [
            ("topology", self.topology.to_owned()),
            ("produced", self.produced.to_string()),
            ("handled", self.handled.to_string()),
            ("failed", self.failed.to_string()),
            ("elapsed", format!("{:.3} s", self.elapsed.as_secs_f64())),
            ("throughput", format!("{:.0} items/s", self.items_per_sec())),
            ("peak queue depth", self.peak_queue_depth.to_string()),
            (
                "handled per worker",
                format!("{:?}", self.handled_per_worker),
            ),
            ("panicked tasks", self.panicked_tasks.to_string()),
            ("cancelled", self.cancelled.to_string()),
        ];
        let mut table = String::new();
        for (name, value) in rows {
            let _ = writeln!(table, "{name:<20} {value}");
        }
        table.pop(); // `println!` adds the last newline.
        table
    }

    fn to_json(&self) -> String {
        // Every value is a number, a bool or a fixed identifier, so nothing
        // needs escaping.
        let mut json = String::from("{");
        let _ = write!(
            json,
            concat!(
                r#""topology":"{}","produced":{},"handled":{},"failed":{},"#,
                r#""elapsed_secs":{},"items_per_sec":{},"peak_queue_depth":{},"#,
                r#""handled_per_worker":{:?},"panicked_tasks":{},"cancelled":{}"#,
            ),
            self.topology,
            self.produced,
            self.handled,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.items_per_sec(),
            self.peak_queue_depth,
            self.handled_per_worker,
            self.panicked_tasks,
            self.cancelled,
        );
        json.push('}');
        json
    }
}

/// `count / elapsed`, and 0 for an empty interval rather than infinity, which
/// JSON cannot represent.
fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(produced: u64, handled: u64, failed: u64, panicked_tasks: usize) -> Report {
        let totals = Totals {
            produced,
            handled,
            failed,
            handled_per_worker: vec![handled],
        };
        Report::new("test", totals, 3, Instant::now(), panicked_tasks, false)
    }

    #[test]
    fn items_lost_to_a_panic_are_counted_as_failed() {
        let report = report(10, 6, 1, 1);
        assert_eq!(report.failed, 4);
        assert_eq!(report.produced, report.handled + report.failed);
        assert!(!report.is_success());
    }

    #[test]
    fn without_a_panic_a_gap_is_left_visible() {
        // A gap without a panic is a bug in the pipeline; hiding it would make
        // the exactly-once tests blind to it.
        assert_eq!(report(10, 6, 1, 0).failed, 1);
    }

    #[test]
    fn json_has_the_documented_keys_and_finite_numbers() {
        let json = report(5, 5, 0, 0).render(ReportFormat::Json);
        assert!(!json.contains('\n'));
        for key in [
            "topology",
            "produced",
            "handled",
            "failed",
            "elapsed_secs",
            "items_per_sec",
            "peak_queue_depth",
            "handled_per_worker",
        ] {
            assert!(
                json.contains(&format!("\"{key}\":")),
                "{key} missing in {json}"
            );
        }
        assert!(!json.contains("inf") && !json.contains("NaN"), "{json}");
    }

    #[test]
    fn counters_sum_their_slots() {
        let counters = Counters::new(2, 2);
        counters.producer(0).publish(3);
        counters.producer(1).publish(4);
        counters.worker(0).publish(5, 1);
        counters.worker(1).publish(1, 0);
        counters.observe_queue_depth(7);
        counters.observe_queue_depth(2);
        let totals = counters.totals();
        assert_eq!((totals.produced, totals.handled, totals.failed), (7, 6, 1));
        assert_eq!(totals.handled_per_worker, vec![5, 1]);
        assert_eq!(counters.peak_queue_depth(), 7);
    }
}
