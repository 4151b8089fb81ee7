//! The bridge's guarantees for direction `sync-to-async`, proven on the real
//! `pipeline::run` with a workload that records what happened to every item.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use clap::Parser;
use proptest::prelude::*;
use tokio::runtime::Handle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use {{crate_name}}::config::Config;
use {{crate_name}}::pipeline::{self, BlockingSource, Workload};
use {{crate_name}}::report::Report;

/// What a [`Probe`] saw. Shared with the test, which inspects it after the run.
#[derive(Debug, Default)]
struct Observed {
    /// Items read by the source: the ground truth of how many items exist.
    produced: AtomicU64,
    /// Items that reached their end: processed, or failed.
    finished: AtomicU64,
    /// Wrapping sum of `mix(seq)` over every processed item. Duplicates or
    /// omissions change it, whatever the order.
    checksum: AtomicU64,
    /// The most items read but not yet finished at any moment.
    max_in_flight: AtomicU64,
    /// Set if a blocking method ever ran inside the async runtime.
    blocking_on_runtime: AtomicBool,
}

/// A test workload: items are sequence numbers; the async stage can be slow,
/// fail or panic on request; the blocking source can fail, or depend on the
/// runtime like a blocking SDK built on it.
#[derive(Debug, Clone, Default)]
struct Probe {
    seen: Arc<Observed>,
    work: Duration,
    fail_every: Option<u64>,
    panic_at: Option<u64>,
    source_fails_at: Option<u64>,
    /// When set, every blocking call first waits for a task on this runtime,
    /// the way a blocking wrapper around an async client does. If async code
    /// ever blocks that runtime, this wait never ends.
    round_trip: Option<Handle>,
}

impl Probe {
    fn blocking_call(&self) {
        if Handle::try_current().is_ok() {
            self.seen.blocking_on_runtime.store(true, SeqCst);
        }
        if let Some(runtime) = &self.round_trip {
            let _ = runtime.block_on(runtime.spawn(async {}));
        }
    }

    fn finish(&self) {
        self.seen.finished.fetch_add(1, SeqCst);
    }
}

impl BlockingSource for Probe {
    type Item = u64;

    fn read(&self, seq: u64) -> anyhow::Result<Option<u64>> {
        self.blocking_call();
        if self.source_fails_at == Some(seq) {
            anyhow::bail!("test source cannot read item {seq}");
        }
        let produced = self.seen.produced.fetch_add(1, SeqCst) + 1;
        // Other items may finish between the two reads, so this can only
        // underestimate; the bound check stays sound.
        let in_flight = produced.saturating_sub(self.seen.finished.load(SeqCst));
        self.seen.max_in_flight.fetch_max(in_flight, SeqCst);
        Ok(Some(seq))
    }
}

impl Workload for Probe {
    async fn process(&self, seq: u64) -> anyhow::Result<()> {
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        if self.panic_at == Some(seq) {
            panic!("test worker panics on item {seq}");
        }
        if self
            .fail_every
            .is_some_and(|every| seq.is_multiple_of(every))
        {
            self.finish();
            anyhow::bail!("test worker rejects item {seq}");
        }
        self.seen.checksum.fetch_add(mix(seq), SeqCst);
        self.finish();
        Ok(())
    }
}

/// SplitMix64's finaliser: spreads sequence numbers over all 64 bits so that
/// a sum of them is a good order-independent checksum.
fn mix(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn config(producers: usize, workers: usize, capacity: usize, items: u64) -> Config {
    Config::try_parse_from([
        "test".to_owned(),
        format!("--producers={producers}"),
        format!("--workers={workers}"),
        format!("--capacity={capacity}"),
        format!("--items={items}"),
        "--progress-secs=0".to_owned(),
    ])
    .expect("valid test configuration")
}

/// A token that cancels itself after `delay`.
fn cancel_after(delay: Duration) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        cancel.cancel();
    });
    token
}

async fn run(config: &Config, probe: &Probe) -> Report {
    pipeline::run(config, probe.clone(), CancellationToken::new()).await
}

/// Runs the pipeline on a fresh `current_thread` runtime in its own thread,
/// with the probe's blocking calls tied to that runtime. Returns `None` if it
/// does not finish within `deadline`: the runtime is stuck, and the thread
/// is left behind (the test fails anyway).
fn run_on_current_thread(config: Config, mut probe: Probe, deadline: Duration) -> Option<Report> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    probe.round_trip = Some(runtime.handle().clone());
    let (done, report) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let report = runtime.block_on(pipeline::run(&config, probe, CancellationToken::new()));
        let _ = done.send(report);
    });
    report.recv_timeout(deadline).ok()
}

proptest! {
    // Failure files need a `src/` next to the test; integration tests have
    // none, so proptest prints the failing case instead.
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every item read is processed once and only once, for any number of
    /// source threads and workers, any capacity down to 1, and both runtime
    /// flavors.
    #[test]
    fn every_item_is_handled_exactly_once(
        producers in 1usize..=4,
        workers in 1usize..=4,
        capacity in 1usize..=32,
        items in 1u64..=2_000,
        multi_thread in any::<bool>(),
    ) {
        let runtime = if multi_thread {
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build()
        } else {
            tokio::runtime::Builder::new_current_thread().enable_time().build()
        }
        .unwrap();
        let probe = Probe::default();
        let config = config(producers, workers, capacity, items);
        let report = runtime.block_on(run(&config, &probe));

        prop_assert_eq!(report.produced, items);
        prop_assert_eq!(report.handled, items);
        prop_assert_eq!(report.failed, 0);
        prop_assert_eq!(probe.seen.produced.load(SeqCst), items);
        let expected = (0..items).map(mix).fold(0u64, u64::wrapping_add);
        prop_assert_eq!(probe.seen.checksum.load(SeqCst), expected);
        prop_assert!(!probe.seen.blocking_on_runtime.load(SeqCst));
    }
}

/// The hazard of this topology: a blocking `send`/`recv` inside async code.
/// On a `current_thread` runtime with capacity 1, whose blocking ends need
/// that runtime to make progress, such a call blocks the only runtime thread
/// while the other end waits for it: a deadlock, caught by the deadline.
#[test]
fn async_code_never_blocks_the_runtime() {
    for (producers, workers) in [(1, 1), (2, 2), (3, 1)] {
        let probe = Probe::default();
        let report = run_on_current_thread(
            config(producers, workers, 1, 2_000),
            probe.clone(),
            Duration::from_secs(20),
        )
        .expect("the bridge deadlocked: async code made a blocking call on the runtime");
        assert_eq!(report.handled, 2_000);
        assert!(!probe.seen.blocking_on_runtime.load(SeqCst));
    }
}

/// The run ends on its own once the source is done. If any sender outlived
/// the source threads, the workers would wait forever and the timeout would fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ends_by_itself_when_the_source_finishes() {
    let probe = Probe::default();
    let mut config = config(2, 2, 8, 50_000);
    config.progress_secs = 1; // The progress task must not hold a channel open either.
    let report = timeout(Duration::from_secs(30), run(&config, &probe))
        .await
        .expect("the pipeline did not end after its source finished");
    assert_eq!(report.handled, 50_000);
}

/// A slow async stage throttles the source threads: items in flight never
/// exceed the channel plus the items held by threads and workers.
#[tokio::test]
async fn in_flight_items_stay_within_the_bound() {
    let probe = Probe {
        work: Duration::from_millis(1),
        ..Probe::default()
    };
    let config = config(4, 2, 4, 300);
    let report = run(&config, &probe).await;

    let max_in_flight = probe.seen.max_in_flight.load(SeqCst);
    let bound = pipeline::max_in_flight(&config) as u64;
    assert!(
        max_in_flight <= bound,
        "{max_in_flight} items in flight, bound {bound}"
    );
    assert!(
        max_in_flight >= 4,
        "the queue never filled, so nothing was tested"
    );
    assert_eq!(report.handled, 300);
}

/// Cancellation stops the source threads, the queue drains, and the run
/// ends promptly with every item read accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_source_and_drains_the_queue() {
    let probe = Probe {
        work: Duration::from_millis(1),
        ..Probe::default()
    };
    let shutdown = cancel_after(Duration::from_millis(100));
    let config = config(2, 2, 16, 0); // 0 = read until cancelled.
    let report = timeout(
        Duration::from_secs(10),
        pipeline::run(&config, probe.clone(), shutdown),
    )
    .await
    .expect("the drain after cancellation did not finish in time");

    assert!(report.cancelled);
    assert!(report.produced > 0);
    assert_eq!(report.produced, probe.seen.produced.load(SeqCst));
    assert_eq!(report.produced, report.handled + report.failed);
    assert_eq!(
        report.handled + report.failed,
        probe.seen.finished.load(SeqCst)
    );
}

/// An error in the async stage is counted, and the pipeline goes on.
#[tokio::test]
async fn handler_errors_are_counted_and_the_run_goes_on() {
    let probe = Probe {
        fail_every: Some(10),
        ..Probe::default()
    };
    let report = run(&config(2, 2, 8, 1_000), &probe).await;
    assert_eq!(report.failed, 100);
    assert_eq!(report.handled, 900);
    assert!(
        report.is_success(),
        "item failures are not a pipeline error"
    );
}

/// A panicking worker turns the run into an error instead of a hang, and the
/// report still accounts for every item read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_fails_the_run_without_hanging() {
    let probe = Probe {
        panic_at: Some(100),
        ..Probe::default()
    };
    let report = timeout(Duration::from_secs(30), run(&config(2, 1, 16, 0), &probe))
        .await
        .expect("a panicking worker must not hang the run");
    assert_eq!(report.panicked_tasks, 1);
    assert!(!report.is_success());
    assert!(report.failed >= 1);
    assert_eq!(report.produced, report.handled + report.failed);
}

/// A source that fails to read stops the run as an error, with every item
/// read accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_stops_the_run() {
    let probe = Probe {
        source_fails_at: Some(1_001),
        ..Probe::default()
    };
    let report = timeout(Duration::from_secs(30), run(&config(4, 2, 8, 0), &probe))
        .await
        .expect("a failing source must stop the run");
    assert_eq!(report.panicked_tasks, 1);
    assert_eq!(report.produced, report.handled + report.failed);
}
