//! The workload contract (`src/workload_api.rs`) as the pipeline keeps it:
//! sources that end, fail and wait, producers that open nothing, and the
//! last word of `close`. Every template with async workers runs this same
//! file against its own pipeline.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use {{crate_name}}::config::Config;
use {{crate_name}}::pipeline;
use {{crate_name}}::report::{EXIT_PIPELINE_ERROR, Report};
use {{crate_name}}::workload_api::{Source, Workload};

/// One step of a scripted source.
#[derive(Debug, Clone, Copy)]
enum Step {
    Item(u64),
    /// An input the source cannot read.
    Reject,
    /// Waits for input that never comes.
    Wait,
}

use Step::{Item, Reject, Wait};

/// A source that plays its steps, then ends.
struct Script(VecDeque<Step>);

impl Source for Script {
    type Item = u64;

    async fn next(&mut self) -> anyhow::Result<Option<u64>> {
        match self.0.front() {
            // The step stays: asked again (after a batch's linger dropped
            // this future, say), the source is still waiting.
            Some(Wait) => std::future::pending().await,
            Some(Item(item)) => {
                let item = *item;
                self.0.pop_front();
                Ok(Some(item))
            }
            Some(Reject) => {
                self.0.pop_front();
                anyhow::bail!("unreadable input")
            }
            None => Ok(None),
        }
    }
}

/// How a scripted producer opens.
#[derive(Debug, Clone)]
enum Opening {
    Plays(Vec<Step>),
    Nothing,
    Fails,
    Waits,
}

/// A workload whose producers play the given scripts and which records what
/// it handled and when it was closed.
#[derive(Default)]
struct Scripted {
    producers: Vec<Opening>,
    handled: Mutex<Vec<u64>>,
    /// How many items were handled when `close` ran, plus one; 0: never ran.
    closed_after: AtomicU64,
    close_fails: bool,
}

impl Scripted {
    fn new(producers: Vec<Opening>) -> Self {
        Self {
            producers,
            ..Self::default()
        }
    }
}

impl Workload for Scripted {
    type Item = u64;
    type Source = Script;

    fn producers(&self) -> usize {
        self.producers.len()
    }

    async fn open(&self, producer: usize) -> anyhow::Result<Option<Script>> {
        match &self.producers[producer] {
            Opening::Plays(steps) => Ok(Some(Script(steps.iter().copied().collect()))),
            Opening::Nothing => Ok(None),
            Opening::Fails => anyhow::bail!("cannot connect"),
            Opening::Waits => std::future::pending().await,
        }
    }

    async fn handle(&self, item: &u64) -> anyhow::Result<()> {
        self.handled.lock().unwrap().push(*item);
        Ok(())
    }

    async fn close(&self) -> anyhow::Result<()> {
        let handled = self.handled.lock().unwrap().len() as u64;
        self.closed_after.store(handled + 1, SeqCst);
        anyhow::ensure!(!self.close_fails, "cannot flush");
        Ok(())
    }
}

fn config() -> Config {
    Config::try_parse_from([
        "test",
        "--capacity=2",
        "--progress-secs=0",
        "--stall-warn-secs=0",
    ])
    .expect("valid test configuration")
}

/// Runs `workload` to its end, or until `cancel_after` has passed, within a
/// deadline. Real time, not paused: a paused clock jumps ahead whenever the
/// runtime is idle, even while thread workers are busy.
async fn run(workload: Scripted, cancel_after: Option<Duration>) -> (Report, Arc<Scripted>) {
    let workload = Arc::new(workload);
    let shutdown = CancellationToken::new();
    if let Some(delay) = cancel_after {
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            cancel.cancel();
        });
    }
    let report = timeout(
        Duration::from_secs(60),
        pipeline::run(&config(), Arc::clone(&workload), shutdown),
    )
    .await
    .expect("the run must end")
    .expect("the run must start");
    (report, workload)
}

fn handled_sorted(workload: &Scripted) -> Vec<u64> {
    let mut handled = workload.handled.lock().unwrap().clone();
    handled.sort_unstable();
    handled
}

/// Each producer ends with its source; the run ends when all have, with
/// every item handled, and `close` runs once, after the last item.
#[tokio::test]
async fn the_run_ends_when_every_source_has_ended() {
    let workload = Scripted::new(vec![
        Opening::Plays(vec![Item(1), Item(2), Item(3)]),
        Opening::Nothing,
        Opening::Plays(vec![Item(4)]),
        Opening::Plays(vec![]),
    ]);
    let (report, workload) = run(workload, None).await;
    assert!(report.is_success(), "{report:?}");
    assert_eq!((report.produced, report.handled), (4, 4));
    assert_eq!(handled_sorted(&workload), [1, 2, 3, 4]);
    assert_eq!(workload.closed_after.load(SeqCst), 4 + 1);
}

/// An input a source cannot read is counted as rejected (and failed), and
/// the producer goes on with the next one.
#[tokio::test]
async fn rejected_inputs_are_counted_and_the_source_goes_on() {
    let workload = Scripted::new(vec![
        Opening::Plays(vec![Item(1), Reject, Item(2), Reject, Reject, Item(3)]),
        Opening::Plays(vec![Reject, Item(4)]),
    ]);
    let (report, workload) = run(workload, None).await;
    assert_eq!(handled_sorted(&workload), [1, 2, 3, 4]);
    assert_eq!(
        (
            report.produced,
            report.handled,
            report.failed,
            report.rejected
        ),
        (8, 4, 4, 4)
    );
    assert_eq!(report.unaccounted, 0);
    assert!(
        report.is_success(),
        "rejected input is not a pipeline error"
    );
}

/// A source waiting for input that never comes (a quiet client, an empty
/// pipe), and a producer still waiting to open its source, do not hold up
/// shutdown; what the sources returned before is handled.
#[tokio::test]
async fn waiting_sources_do_not_hold_up_shutdown() {
    let workload = Scripted::new(vec![
        Opening::Plays(vec![Item(1), Item(2), Wait, Item(99)]),
        Opening::Waits,
    ]);
    let (report, workload) = run(workload, Some(Duration::from_millis(50))).await;
    assert!(report.cancelled);
    assert!(
        !report.drain_timed_out,
        "the drain must not need the deadline"
    );
    assert!(report.is_success(), "{report:?}");
    assert_eq!(handled_sorted(&workload), [1, 2]);
    assert_eq!((report.produced, report.handled), (2, 2));
    assert_eq!(workload.closed_after.load(SeqCst), 2 + 1);
}

/// A source that cannot open fails the run instead of silently shrinking
/// it; the other producers stop too.
#[tokio::test]
async fn a_source_that_cannot_open_fails_the_run() {
    let workload = Scripted::new(vec![Opening::Plays(vec![Item(1), Wait]), Opening::Fails]);
    let (report, _) = run(workload, None).await;
    assert_eq!(report.failed_stages, 1);
    assert_eq!(report.exit_code(), EXIT_PIPELINE_ERROR);
    assert_eq!(report.unaccounted, 0);
}

/// `close` failing (an output that cannot be flushed) fails the run.
#[tokio::test]
async fn a_failing_close_fails_the_run() {
    let workload = Scripted {
        close_fails: true,
        ..Scripted::new(vec![Opening::Plays(vec![Item(1)])])
    };
    let (report, _) = run(workload, None).await;
    assert_eq!(report.handled, 1);
    assert_eq!(report.failed_stages, 1);
    assert_eq!(report.exit_code(), EXIT_PIPELINE_ERROR);
}
