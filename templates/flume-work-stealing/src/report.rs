//! The final account of a run, its balance check, and how it is printed.
//!
//! Every item that was produced ends in exactly one bucket: handled, failed
//! (its handler returned an error), abandoned (still queued or in a handler
//! when the drain deadline passed) or lost (held by a stage that panicked or
//! failed). Anything else is `unaccounted`: a bug in the pipeline, which
//! makes the run a failure.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::ReportFormat;
use crate::counters::Totals;

/// Exit code of a run that finished cleanly.
pub const EXIT_SUCCESS: u8 = 0;
/// Exit code of a run with a pipeline error: a stage panicked or failed, or
/// the balance did not add up.
pub const EXIT_PIPELINE_ERROR: u8 = 1;
/// Exit code of a run whose drain outlived `--drain-timeout` (and had no
/// pipeline error).
pub const EXIT_DRAIN_TIMEOUT: u8 = 3;

/// The final account of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Which template produced this service, e.g. `mpsc-fan-in`.
    pub topology: &'static str,
    /// Items the sources made: those that entered the channel, and the
    /// inputs a source rejected.
    pub produced: u64,
    /// Items handled successfully.
    pub handled: u64,
    /// Items whose handler returned an error, and inputs a source rejected.
    pub failed: u64,
    /// The part of `failed` that a source rejected before it became an item:
    /// a read error, an over-long or malformed line.
    pub rejected: u64,
    /// Items handed to their handler more than once (`--retries`), however
    /// they ended.
    pub retried: u64,
    /// Failed items written to the dead-letter file (`--dead-letter`).
    pub dead_lettered: u64,
    /// Failed items kept nowhere: without a dead-letter file, or when
    /// writing to it failed. The log has each one.
    pub dropped: u64,
    /// Items not finished when the drain deadline passed.
    pub abandoned: u64,
    /// Items held by a stage that panicked or failed, or left in a channel
    /// that every consumer had abandoned by failing.
    pub lost: u64,
    /// `produced - handled - failed - abandoned - lost`: zero unless the
    /// pipeline has a bug. Negative means items were finished twice.
    pub unaccounted: i64,
    /// `handled` per worker, to show how the load was spread.
    pub handled_per_worker: Vec<u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The largest queue depth sampled. Consumers sample it periodically
    /// rather than on every item, so short spikes can be missed.
    pub peak_queue_depth: usize,
    /// Pipeline stages (tasks or threads) that panicked, returned an error,
    /// or could not start. Any of them makes the run a failure.
    pub failed_stages: usize,
    /// Times the consumers made no progress for `--stall-warn-secs` while
    /// items were waiting.
    pub stall_episodes: u64,
    /// Whether a shutdown request ended the run before all items were produced.
    pub cancelled: bool,
    /// Whether the drain after a shutdown request outlived `--drain-timeout`.
    pub drain_timed_out: bool,
    /// Counts of a stage boundary that is a message engine rather than a
    /// channel (flume-work-stealing's nats transport: messages delivered,
    /// items redelivered, ...), printed after the others; empty otherwise.
    pub transport: Vec<(&'static str, u64)>,
}

/// Where the items that did not finish went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Balance {
    /// Unfinished items at the drain deadline.
    pub abandoned: u64,
    /// Unfinished items explained by a failed stage.
    pub lost: u64,
    /// Unfinished (or, if negative, over-finished) items nothing explains.
    pub unaccounted: i64,
}

impl Balance {
    /// Explains the gap between produced and finished items.
    ///
    /// When the drain deadline passed, every unfinished item is abandoned:
    /// the stages were still working on it or it was still queued. Otherwise
    /// the run waited for every stage to end, so an unfinished item can only
    /// have gone down with a stage that panicked or failed. If no stage did,
    /// the gap is a bug and stays visible as `unaccounted`; so does any
    /// surplus of finished items, whatever else happened.
    pub fn of(totals: &Totals, failed_stages: usize, drain_timed_out: bool) -> Self {
        let gap = i128::from(totals.produced) - i128::from(totals.finished());
        let unfinished = u64::try_from(gap).unwrap_or(0);
        if gap < 0 {
            Self {
                unaccounted: i64::try_from(gap).unwrap_or(i64::MIN),
                ..Self::default()
            }
        } else if drain_timed_out {
            Self {
                abandoned: unfinished,
                ..Self::default()
            }
        } else if failed_stages > 0 {
            Self {
                lost: unfinished,
                ..Self::default()
            }
        } else {
            Self {
                unaccounted: i64::try_from(unfinished).unwrap_or(i64::MAX),
                ..Self::default()
            }
        }
    }
}

impl Report {
    /// The exit code this run ends the process with.
    /// A pipeline error outranks a drain deadline that passed after it.
    pub fn exit_code(&self) -> u8 {
        if self.failed_stages > 0 || self.unaccounted != 0 {
            EXIT_PIPELINE_ERROR
        } else if self.drain_timed_out {
            EXIT_DRAIN_TIMEOUT
        } else {
            EXIT_SUCCESS
        }
    }

    /// Whether the run ended without a pipeline error and within its drain
    /// deadline (item failures are counted, not fatal).
    pub fn is_success(&self) -> bool {
        self.exit_code() == EXIT_SUCCESS
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
            ("rejected", self.rejected.to_string()),
            ("retried", self.retried.to_string()),
            ("dead-lettered", self.dead_lettered.to_string()),
            ("dropped", self.dropped.to_string()),
            ("abandoned", self.abandoned.to_string()),
            ("lost", self.lost.to_string()),
            ("unaccounted", self.unaccounted.to_string()),
            ("elapsed", format!("{:.3} s", self.elapsed.as_secs_f64())),
            ("throughput", format!("{:.0} items/s", self.items_per_sec())),
            ("peak queue depth", self.peak_queue_depth.to_string()),
            (
                "handled per worker",
                format!("{:?}", self.handled_per_worker),
            ),
            ("failed stages", self.failed_stages.to_string()),
            ("stall episodes", self.stall_episodes.to_string()),
            ("cancelled", self.cancelled.to_string()),
            ("drain timed out", self.drain_timed_out.to_string()),
        ];
        let mut table = String::new();
        for (name, value) in rows {
            let _ = writeln!(table, "{name:<20} {value}");
        }
        for (name, count) in &self.transport {
            let _ = writeln!(table, "{:<20} {count}", name.replace('_', " "));
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
                r#""topology":"{}","produced":{},"handled":{},"failed":{},"rejected":{},"#,
                r#""retried":{},"dead_lettered":{},"dropped":{},"#,
                r#""abandoned":{},"lost":{},"unaccounted":{},"#,
                r#""elapsed_secs":{},"items_per_sec":{},"peak_queue_depth":{},"#,
                r#""handled_per_worker":{:?},"failed_stages":{},"stall_episodes":{},"#,
                r#""cancelled":{},"drain_timed_out":{}"#,
            ),
            self.topology,
            self.produced,
            self.handled,
            self.failed,
            self.rejected,
            self.retried,
            self.dead_lettered,
            self.dropped,
            self.abandoned,
            self.lost,
            self.unaccounted,
            self.elapsed.as_secs_f64(),
            self.items_per_sec(),
            self.peak_queue_depth,
            self.handled_per_worker,
            self.failed_stages,
            self.stall_episodes,
            self.cancelled,
            self.drain_timed_out,
        );
        for (name, count) in &self.transport {
            let _ = write!(json, r#","{name}":{count}"#);
        }
        json.push('}');
        json
    }
}

/// `count / elapsed`, and 0 for an empty interval rather than infinity, which
/// JSON cannot represent.
pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(produced: u64, handled: u64, failed: u64) -> Totals {
        Totals {
            produced,
            rejected: 0,
            handled,
            failed,
            retried: 0,
            dead_lettered: 0,
            handled_per_worker: vec![handled],
        }
    }

    fn report(totals: Totals, failed_stages: usize, drain_timed_out: bool) -> Report {
        let balance = Balance::of(&totals, failed_stages, drain_timed_out);
        Report {
            topology: "test",
            produced: totals.produced,
            handled: totals.handled,
            failed: totals.failed,
            rejected: totals.rejected,
            retried: totals.retried,
            dead_lettered: totals.dead_lettered,
            dropped: totals.dropped(),
            abandoned: balance.abandoned,
            lost: balance.lost,
            unaccounted: balance.unaccounted,
            handled_per_worker: totals.handled_per_worker,
            elapsed: Duration::from_millis(100),
            peak_queue_depth: 3,
            failed_stages,
            stall_episodes: 0,
            cancelled: drain_timed_out,
            drain_timed_out,
            transport: Vec::new(),
        }
    }

    #[test]
    fn a_balanced_run_succeeds() {
        let report = report(totals(10, 9, 1), 0, false);
        assert_eq!(
            (report.lost, report.abandoned, report.unaccounted),
            (0, 0, 0)
        );
        assert_eq!(report.exit_code(), EXIT_SUCCESS);
    }

    #[test]
    fn items_held_by_a_failed_stage_are_lost_not_failed() {
        let report = report(totals(10, 6, 1), 1, false);
        assert_eq!((report.failed, report.lost, report.unaccounted), (1, 3, 0));
        assert_eq!(report.exit_code(), EXIT_PIPELINE_ERROR);
    }

    #[test]
    fn a_gap_without_a_failed_stage_is_unaccounted_and_fails_the_run() {
        // Hiding it would make the exactly-once tests blind to a lost item.
        let report = report(totals(10, 6, 1), 0, false);
        assert_eq!((report.lost, report.unaccounted), (0, 3));
        assert_eq!(report.exit_code(), EXIT_PIPELINE_ERROR);
    }

    #[test]
    fn items_finished_twice_are_unaccounted_even_with_a_failed_stage() {
        let report = report(totals(10, 11, 0), 1, false);
        assert_eq!((report.lost, report.unaccounted), (0, -1));
    }

    #[test]
    fn unfinished_items_at_the_deadline_are_abandoned() {
        let report = report(totals(10, 4, 0), 0, true);
        assert_eq!((report.abandoned, report.unaccounted), (6, 0));
        assert_eq!(report.exit_code(), EXIT_DRAIN_TIMEOUT);
    }

    #[test]
    fn json_has_the_documented_keys_and_finite_numbers() {
        let json = report(totals(5, 5, 0), 0, false).render(ReportFormat::Json);
        assert!(!json.contains('\n'));
        for key in [
            "topology",
            "produced",
            "handled",
            "failed",
            "rejected",
            "retried",
            "dead_lettered",
            "dropped",
            "abandoned",
            "lost",
            "unaccounted",
            "elapsed_secs",
            "items_per_sec",
            "peak_queue_depth",
            "handled_per_worker",
            "failed_stages",
            "stall_episodes",
            "cancelled",
            "drain_timed_out",
        ] {
            assert!(
                json.contains(&format!("\"{key}\":")),
                "{key} missing in {json}"
            );
        }
        assert!(!json.contains("inf") && !json.contains("NaN"), "{json}");
    }
}
