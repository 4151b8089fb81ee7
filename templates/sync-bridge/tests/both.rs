//! The bridge's guarantees for direction `both`, proven on the real
//! `pipeline::run` with a workload that records what happened to every item.
//!
//! Every run has a deadline kept outside its runtime (`support::within`), so
//! a runtime that is starved or deadlocked fails the test instead of hanging
//! the suite.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::Duration;

use clap::Parser;
use proptest::prelude::*;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use {{crate_name}}::config::Config;
use {{crate_name}}::pipeline::{self, BlockingSink, BlockingSource, Workload};
use {{crate_name}}::report::{EXIT_DRAIN_TIMEOUT, EXIT_PIPELINE_ERROR, Report};

use support::{runtime, within};

/// What a [`Probe`] saw. Shared with the test, which inspects it after the run.
#[derive(Debug, Default)]
struct Observed {
    /// Items read by the source: the ground truth of how many items exist.
    produced: AtomicU64,
    /// Wrapping sum of `mix(seq)` over every item read.
    produced_checksum: AtomicU64,
    /// Items that reached their end: written, or failed on the way.
    finished: AtomicU64,
    /// Wrapping sum of `mix(seq)` over every written item. Duplicates or
    /// omissions change it, whatever the order.
    checksum: AtomicU64,
    /// The most items read but not yet finished at any moment.
    max_in_flight: AtomicU64,
    /// Set if a blocking method ever ran inside the async runtime.
    blocking_on_runtime: AtomicBool,
}

/// A test workload: items are sequence numbers; the async stage can be slow,
/// fail or panic on request; the blocking ends can fail, panic, get stuck,
/// or depend on the runtime like a blocking SDK built on it.
#[derive(Debug, Clone, Default)]
struct Probe {
    seen: Arc<Observed>,
    work: Duration,
    /// Item that takes this long in the async stage instead of `work`.
    slow_item: Option<(u64, Duration)>,
    fail_every: Option<u64>,
    panic_at: Option<u64>,
    sink_panics_at: Option<u64>,
    sink_cannot_open: bool,
    /// The sink's `open` blocks until this gate opens.
    open_gate: Option<Gate>,
    source_fails_at: Option<u64>,
    /// When set, every blocking call first waits for a task on this runtime,
    /// the way a blocking wrapper around an async client does. If async code
    /// ever blocks that runtime, this wait never ends.
    round_trip: Option<Handle>,
}

/// Holds a blocking call, the way a stuck connection does, until the test
/// lets it go by dropping the `Sender` it got from [`Gate::closed`].
#[derive(Debug, Clone)]
struct Gate(Arc<Mutex<mpsc::Receiver<()>>>);

impl Gate {
    fn closed() -> (Self, mpsc::Sender<()>) {
        let (opener, gate) = mpsc::channel();
        (Self(Arc::new(Mutex::new(gate))), opener)
    }

    /// Blocks until the gate is open.
    fn pass(&self) {
        let gate = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let _disconnected = gate.recv();
    }
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
        self.seen.produced_checksum.fetch_add(mix(seq), SeqCst);
        // Other items may finish between the two reads, so this can only
        // underestimate; the bound check stays sound.
        let in_flight = produced.saturating_sub(self.seen.finished.load(SeqCst));
        self.seen.max_in_flight.fetch_max(in_flight, SeqCst);
        Ok(Some(seq))
    }
}

impl BlockingSink for Probe {
    type Output = u64;
    type Writer = ();

    fn open(&self) -> anyhow::Result<()> {
        self.blocking_call();
        if let Some(gate) = &self.open_gate {
            gate.pass();
        }
        if self.sink_cannot_open {
            anyhow::bail!("test sink cannot open");
        }
        Ok(())
    }

    fn write(&self, _writer: &mut (), seq: u64) -> anyhow::Result<()> {
        self.blocking_call();
        if self.sink_panics_at == Some(seq) {
            panic!("test sink panics on item {seq}");
        }
        self.seen.checksum.fetch_add(mix(seq), SeqCst);
        self.finish();
        Ok(())
    }

    fn finish(&self, _writer: ()) -> anyhow::Result<()> {
        self.blocking_call();
        Ok(())
    }
}

impl Workload for Probe {
    async fn process(&self, seq: u64) -> anyhow::Result<u64> {
        let work = match self.slow_item {
            Some((slow, work)) if slow == seq => work,
            _ => self.work,
        };
        if !work.is_zero() {
            tokio::time::sleep(work).await;
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
        Ok(seq)
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
        "--stall-warn-secs=0".to_owned(),
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

/// How long one run may take before the test calls it hung.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Runs the pipeline on a fresh runtime of either flavor, cancelled `cancel`
/// after it starts if given, and fails the test if the run has not ended
/// within [`RUN_LIMIT`].
fn run_on(multi_thread: bool, config: &Config, probe: &Probe, cancel: Option<Duration>) -> Report {
    let (config, probe) = (config.clone(), probe.clone());
    within(RUN_LIMIT, move || {
        runtime(multi_thread).block_on(async move {
            let shutdown = cancel.map_or_else(CancellationToken::new, cancel_after);
            pipeline::run(&config, probe, shutdown).await
        })
    })
}

/// Runs the pipeline to its end on a multi-thread runtime.
fn run(config: &Config, probe: &Probe) -> Report {
    run_on(true, config, probe, None)
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

    /// Every item read is written once and only once, for any number of
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
        let probe = Probe::default();
        let config = config(producers, workers, capacity, items);
        let report = run_on(multi_thread, &config, &probe, None);

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
/// its stage, the next stage would wait forever and the deadline would fail
/// the test.
#[test]
fn ends_by_itself_when_the_source_finishes() {
    let probe = Probe::default();
    let mut config = config(2, 2, 8, 50_000);
    // The monitor must not hold a channel open either.
    config.progress_secs = 1;
    config.stall_warn_secs = 5;
    let report = run(&config, &probe);
    assert_eq!(report.handled, 50_000);
}

/// A slow async stage throttles the source threads: items in flight never
/// exceed both channels plus the items held by threads and workers.
#[test]
fn in_flight_items_stay_within_the_bound() {
    let probe = Probe {
        work: Duration::from_millis(1),
        ..Probe::default()
    };
    let config = config(4, 2, 4, 300);
    let report = run_on(false, &config, &probe, None);

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

/// Cancellation stops the source threads, both queues drain, and the run
/// ends promptly with every item read accounted for.
#[test]
fn cancel_stops_the_source_and_drains_the_queues() {
    let probe = Probe {
        work: Duration::from_millis(1),
        ..Probe::default()
    };
    let config = config(2, 2, 16, 0); // 0 = read until cancelled.
    let report = run_on(true, &config, &probe, Some(Duration::from_millis(100)));

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
#[test]
fn handler_errors_are_counted_and_the_run_goes_on() {
    let probe = Probe {
        fail_every: Some(10),
        ..Probe::default()
    };
    let report = run_on(false, &config(2, 2, 8, 1_000), &probe, None);
    assert_eq!(report.failed, 100);
    assert_eq!(report.handled, 900);
    assert!(
        report.is_success(),
        "item failures are not a pipeline error"
    );
}

/// A panicking worker turns the run into an error instead of a hang, and the
/// report still accounts for every item read: the one in the panicking
/// worker's hands is lost with it.
#[test]
fn a_panicking_worker_fails_the_run_without_hanging() {
    let probe = Probe {
        panic_at: Some(100),
        ..Probe::default()
    };
    let report = run(&config(2, 1, 16, 0), &probe);
    assert_eq!(report.failed_stages, 1);
    assert_eq!(report.exit_code(), EXIT_PIPELINE_ERROR);
    assert!(report.lost >= 1, "{report:?}");
    assert_eq!(report.unaccounted, 0);
    assert_eq!(
        report.produced,
        report.handled + report.failed + report.lost
    );
}

/// A panicking sink thread stops the run as an error; the item it was
/// writing and those still on their way are lost with it.
#[test]
fn a_panicking_sink_fails_the_run_without_hanging() {
    let probe = Probe {
        sink_panics_at: Some(100),
        ..Probe::default()
    };
    let report = run(&config(2, 2, 16, 0), &probe);
    assert_eq!(report.failed_stages, 1);
    assert_eq!(report.exit_code(), EXIT_PIPELINE_ERROR);
    assert!(report.lost >= 1, "{report:?}");
    assert_eq!(report.unaccounted, 0);
    assert_eq!(
        report.produced,
        report.handled + report.failed + report.lost
    );
}

/// A sink that cannot open ends the run before anything is read.
#[test]
fn a_sink_that_cannot_open_fails_the_run_at_once() {
    let probe = Probe {
        sink_cannot_open: true,
        ..Probe::default()
    };
    let report = run_on(false, &config(2, 2, 4, 0), &probe, None);
    assert_eq!(report.failed_stages, 1);
    assert_eq!(report.exit_code(), EXIT_PIPELINE_ERROR);
    assert_eq!(report.produced, 0);
    assert_eq!(probe.seen.produced.load(SeqCst), 0);
}

/// A sink whose `open` hangs (a server that never answers) does not keep a
/// shutdown waiting: nothing is read, and the run ends at the drain
/// deadline.
#[test]
fn a_sink_stuck_in_open_does_not_hold_up_shutdown() {
    let (gate, opener) = Gate::closed();
    let probe = Probe {
        open_gate: Some(gate),
        ..Probe::default()
    };
    let mut config = config(2, 2, 4, 0);
    config.drain_timeout = 1;
    let report = run_on(true, &config, &probe, Some(Duration::from_millis(100)));
    drop(opener); // The sink thread opens, finds no workers, and ends.

    assert!(report.cancelled && report.drain_timed_out, "{report:?}");
    assert_eq!(report.exit_code(), EXIT_DRAIN_TIMEOUT);
    assert_eq!(report.produced, 0);
    assert_eq!(probe.seen.produced.load(SeqCst), 0);
}

/// A source that fails to read stops the run as an error. The workers and
/// the sink still drain what was read, so nothing is lost.
#[test]
fn a_failing_source_stops_the_run() {
    let probe = Probe {
        source_fails_at: Some(1_001),
        ..Probe::default()
    };
    let report = run(&config(4, 2, 8, 0), &probe);
    assert_eq!(report.failed_stages, 1);
    assert_eq!(report.exit_code(), EXIT_PIPELINE_ERROR);
    assert_eq!((report.lost, report.unaccounted), (0, 0));
    assert_eq!(report.produced, report.handled + report.failed);
}

/// The reported hazard: flume's futures do not take part in tokio's
/// cooperative budget. With no work per item and huge capacities, the
/// source threads keep the first channel from ever running empty and the
/// sink keeps the second from filling, so both `recv_async` and
/// `send_async` are ready on every poll; unless the workers yield anyway,
/// they keep every runtime thread, and the timer that cancels the run never
/// fires. Capacity 1 is the control: there the channels run empty or full
/// all the time. The deadline is kept outside the runtime, so a regression
/// fails here instead of hanging.
#[test]
fn cancellation_is_heard_under_sustained_load() {
    for multi_thread in [false, true] {
        for capacity in [1, 999_999] {
            let case = format!("multi_thread={multi_thread} capacity={capacity}");
            let report = run_on(
                multi_thread,
                &config(4, 4, capacity, 0),
                &Probe::default(),
                Some(Duration::from_millis(500)),
            );
            assert!(report.cancelled, "{case}");
            assert!(report.is_success(), "{case}: {report:?}");
            assert_eq!(report.produced, report.handled, "{case}");
            assert_eq!(report.unaccounted, 0, "{case}");
        }
    }
}

/// After a shutdown request the drain gets `--drain-timeout`; then the run
/// stops waiting for workers stuck in a slow item, counts what is left as
/// abandoned, and says so in its exit code.
#[test]
fn a_drain_longer_than_the_deadline_is_abandoned() {
    let probe = Probe {
        work: Duration::from_secs(3600),
        ..Probe::default()
    };
    let mut config = config(2, 2, 8, 0);
    config.drain_timeout = 1;
    let report = run_on(true, &config, &probe, Some(Duration::from_millis(100)));

    assert!(report.drain_timed_out);
    assert!(report.elapsed < Duration::from_secs(10), "{report:?}");
    assert_eq!(report.exit_code(), EXIT_DRAIN_TIMEOUT);
    assert!(report.abandoned > 0);
    assert_eq!(
        report.abandoned,
        report.produced - report.handled - report.failed
    );
    assert_eq!((report.lost, report.unaccounted), (0, 0));
}

/// A stage that panics halfway through the run, first the worker, then the
/// sink: everything that reached the sink before the panic is in the report,
/// and only the rest is lost. One source thread and one worker keep the
/// items in order, so the numbers are exact.
#[test]
fn a_panic_mid_stage_reports_exact_numbers() {
    let panic_at = 300;
    let in_worker = Probe {
        panic_at: Some(panic_at),
        fail_every: Some(7),
        ..Probe::default()
    };
    let in_sink = Probe {
        sink_panics_at: Some(panic_at),
        fail_every: Some(7),
        ..Probe::default()
    };
    for (stage, probe) in [("worker", in_worker), ("sink", in_sink)] {
        let report = run(&config(1, 1, 512, 100_000), &probe);

        let failed = (0..panic_at).filter(|seq| seq % 7 == 0).count() as u64;
        assert_eq!(report.failed, failed, "{stage}");
        assert_eq!(report.handled, panic_at - failed, "{stage}");
        assert_eq!(report.lost, report.produced - panic_at, "{stage}");
        assert_eq!(
            (report.failed_stages, report.unaccounted),
            (1, 0),
            "{stage}"
        );
    }
}

/// A worker stuck on one slow item for longer than `--stall-warn-secs`
/// makes one stall episode; the run then recovers and succeeds.
#[test]
fn a_stuck_consumer_is_reported_as_a_stall() {
    let probe = Probe {
        slow_item: Some((5, Duration::from_millis(2_500))),
        ..Probe::default()
    };
    let mut config = config(1, 1, 4, 20);
    config.stall_warn_secs = 1;
    let report = run(&config, &probe);
    assert_eq!(report.stall_episodes, 1);
    assert_eq!(report.handled, 20);
    assert!(report.is_success());

    config.stall_warn_secs = 0;
    assert_eq!(run(&config, &probe).stall_episodes, 0, "0 turns it off");
}

/// Many source threads, tiny and small capacities, both flavors, cancelled
/// at varying moments in real time: every item read is written exactly
/// once, and the report balances. Any lost or duplicated item shows up as a
/// count, checksum or `unaccounted` mismatch.
#[test]
fn stress_every_created_item_is_accounted_for() {
    within(Duration::from_secs(120), || {
        for round in 0..4u64 {
            for multi_thread in [false, true] {
                for capacity in [1, 64] {
                    let probe = Probe::default();
                    let report = runtime(multi_thread).block_on(async {
                        let shutdown = cancel_after(Duration::from_millis(5 + 7 * round));
                        pipeline::run(&config(16, 4, capacity, 0), probe.clone(), shutdown).await
                    });
                    let case =
                        format!("round {round}, multi_thread={multi_thread}, capacity={capacity}");
                    assert_eq!(report.unaccounted, 0, "{case}: {report:?}");
                    assert_eq!(report.produced, probe.seen.produced.load(SeqCst), "{case}");
                    assert_eq!(report.handled, report.produced, "{case}");
                    assert_eq!(
                        probe.seen.checksum.load(SeqCst),
                        probe.seen.produced_checksum.load(SeqCst),
                        "{case}: the written items are not the read ones"
                    );
                }
            }
        }
    });
}
