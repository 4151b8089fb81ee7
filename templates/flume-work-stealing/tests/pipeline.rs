//! The pipeline's guarantees, proven on the real `pipeline::run` with a
//! workload that records what actually happened to every item.
//!
//! The tests run in real time (no paused tokio clock) because they are the
//! same for both worker kinds, and OS-thread workers sleep in real time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use clap::Parser;
use proptest::prelude::*;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use {{crate_name}}::config::Config;
use {{crate_name}}::pipeline::{self, Workload};
use {{crate_name}}::report::Report;

/// What a [`Probe`] saw. Shared with the test, which inspects it after the run.
#[derive(Debug, Default)]
struct Observed {
    /// Calls to `produce`: the ground truth of how many items exist.
    produced: AtomicU64,
    /// Calls to `handle` that returned, successfully or not.
    finished: AtomicU64,
    /// Wrapping sum of `mix(seq)` over every handled item. Duplicates or
    /// omissions change it, whatever the order of handling.
    checksum: AtomicU64,
    /// The most items produced but not yet finished at any moment.
    max_in_flight: AtomicU64,
}

/// A test workload: items are sequence numbers; handling can be slow, fail or
/// panic on request.
#[derive(Debug, Clone, Default)]
struct Probe {
    seen: Arc<Observed>,
    work: Duration,
    fail_every: Option<u64>,
    /// `handle` panics on this item.
    panic_at: Option<u64>,
    /// `handle` panics on every item from this one on.
    panic_from: Option<u64>,
    /// `produce` panics on this item.
    produce_panics_at: Option<u64>,
}

impl Workload for Probe {
    type Item = u64;

    fn produce(&self, seq: u64) -> u64 {
        assert_ne!(
            Some(seq),
            self.produce_panics_at,
            "test producer panics on item {seq}"
        );
        let produced = self.seen.produced.fetch_add(1, SeqCst) + 1;
        // Other items may finish between the two reads, so this can only
        // underestimate; the bound check stays sound.
        let in_flight = produced.saturating_sub(self.seen.finished.load(SeqCst));
        self.seen.max_in_flight.fetch_max(in_flight, SeqCst);
        seq
    }

    {% if worker_kind == "tasks" %}async {% endif %}fn handle(&self, seq: u64) -> anyhow::Result<()> {
        if !self.work.is_zero() {
            {% if worker_kind == "tasks" %}tokio::time::sleep(self.work).await;{% else %}std::thread::sleep(self.work);{% endif %}
        }
        if self.panic_at == Some(seq) || self.panic_from.is_some_and(|from| seq >= from) {
            panic!("test handler panics on item {seq}");
        }
        self.seen.finished.fetch_add(1, SeqCst);
        if self
            .fail_every
            .is_some_and(|every| seq.is_multiple_of(every))
        {
            anyhow::bail!("test handler rejects item {seq}");
        }
        self.seen.checksum.fetch_add(mix(seq), SeqCst);
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

/// A token that cancels itself after `delay`, and the number of items the
/// probe had finished at that moment.
fn cancel_after(delay: Duration, probe: &Probe) -> (CancellationToken, Arc<AtomicU64>) {
    let token = CancellationToken::new();
    let finished_at_cancel = Arc::new(AtomicU64::new(0));
    tokio::spawn({
        let token = token.clone();
        let seen = Arc::clone(&probe.seen);
        let at = Arc::clone(&finished_at_cancel);
        async move {
            tokio::time::sleep(delay).await;
            at.store(seen.finished.load(SeqCst), SeqCst);
            token.cancel();
        }
    });
    (token, finished_at_cancel)
}

async fn run(config: &Config, probe: &Probe) -> Report {
    pipeline::run(config, probe.clone(), CancellationToken::new()).await
}

proptest! {
    // Failure files need a `src/` next to the test; integration tests have
    // none, so proptest prints the failing case instead.
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every produced item is handled once and only once, by exactly one
    /// worker, for any number of producers and workers, any capacity down to
    /// 1, and both runtime flavors.
    #[test]
    fn every_item_is_handled_exactly_once(
        producers in 1usize..=8,
        workers in 1usize..=8,
        capacity in 1usize..=64,
        items in 1u64..=3_000,
        multi_thread in any::<bool>(),
    ) {
        let runtime = if multi_thread {
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build()
        } else {
            tokio::runtime::Builder::new_current_thread().enable_time().build()
        }
        .unwrap();
        let probe = Probe::default();
        let report = runtime.block_on(run(&config(producers, workers, capacity, items), &probe));

        prop_assert_eq!(report.produced, items);
        prop_assert_eq!(report.handled, items);
        prop_assert_eq!(report.failed, 0);
        prop_assert_eq!(report.handled_per_worker.len(), workers);
        prop_assert_eq!(report.handled_per_worker.iter().sum::<u64>(), items);
        prop_assert_eq!(probe.seen.produced.load(SeqCst), items);
        let expected = (0..items).map(mix).fold(0u64, u64::wrapping_add);
        prop_assert_eq!(probe.seen.checksum.load(SeqCst), expected);
    }
}

/// The run ends on its own once the producers are done. If any `Sender`
/// outlived them (the classic forgotten `drop(tx)`), the workers would wait
/// forever and the timeout would fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ends_by_itself_when_producers_finish() {
    let probe = Probe::default();
    let mut config = config(4, 4, 8, 50_000);
    config.progress_secs = 1; // The progress task must not hold the channel open either.
    let report = timeout(Duration::from_secs(30), run(&config, &probe))
        .await
        .expect("the pipeline did not end after its producers finished");
    assert_eq!(report.handled, 50_000);
}

/// Slow workers throttle the producers: items in flight never exceed the
/// channel capacity plus one item per waiting producer and one per worker,
/// however fast the producers are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_items_stay_within_the_bound() {
    let probe = Probe {
        work: Duration::from_millis(1),
        ..Probe::default()
    };
    let config = config(8, 3, 4, 300);
    let report = run(&config, &probe).await;

    let max_in_flight = probe.seen.max_in_flight.load(SeqCst);
    let bound = pipeline::max_in_flight(&config) as u64;
    assert!(
        max_in_flight <= bound,
        "{max_in_flight} items in flight, bound {bound}"
    );
    assert!(
        max_in_flight >= config.capacity as u64,
        "the queue never filled, so nothing was tested"
    );
    assert!(report.peak_queue_depth <= config.capacity + 1);
    assert_eq!(report.handled, 300);
}

/// Slow items are spread over all workers: each takes the next item when it
/// is free, so none sits idle while items wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_items_are_shared_by_every_worker() {
    let probe = Probe {
        work: Duration::from_millis(2),
        ..Probe::default()
    };
    let report = run(&config(1, 4, 8, 200), &probe).await;
    assert_eq!(report.handled, 200);
    assert!(
        report.handled_per_worker.iter().all(|&n| n >= 10),
        "load not shared: {:?}",
        report.handled_per_worker
    );
}

/// Cancellation stops the producers; the workers drain what was queued and
/// the run ends promptly with every produced item handled. Workers leave
/// only because the channel closes: had they raced `recv_async` against the
/// token in `select!`, they would quit with items still queued, and nothing
/// would be handled after the cancellation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_producers_and_drains_the_queue() {
    let probe = Probe {
        work: Duration::from_millis(2),
        ..Probe::default()
    };
    let (shutdown, finished_at_cancel) = cancel_after(Duration::from_millis(100), &probe);
    let config = config(4, 2, 16, 0); // 0 = produce until cancelled.

    // Draining 16 queued items plus one per producer and worker, 2 ms each
    // over 2 workers, takes well under the deadline.
    let report = timeout(
        Duration::from_secs(10),
        pipeline::run(&config, probe.clone(), shutdown),
    )
    .await
    .expect("the drain after cancellation did not finish in time");

    assert!(report.cancelled);
    assert!(report.produced > 0);
    // Fast producers keep the channel full, so at least `capacity` items were
    // queued when the token fired.
    let drained = report.handled - finished_at_cancel.load(SeqCst);
    assert!(
        drained >= config.capacity as u64,
        "only {drained} items handled after cancellation: the queue was not drained"
    );
    assert_eq!(report.produced, report.handled + report.failed);
    assert_eq!(report.handled, probe.seen.finished.load(SeqCst));
    assert_eq!(
        report.produced,
        probe.seen.produced.load(SeqCst),
        "items created but never sent"
    );
}

/// Shutdown under load, cancelled at many moments, never loses an item and
/// never hangs. A producer that raced `send_async` against cancellation would
/// drop the item it held (flume keeps it inside the send future), and a
/// worker that raced `recv_async` could lose the wake-up for a queued item
/// (flume's receive is not safe to cancel in `select!`) and hang the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_under_load_never_loses_an_item() {
    for cancel_after_ms in 1..=25 {
        let probe = Probe {
            work: Duration::from_micros(300),
            ..Probe::default()
        };
        let (shutdown, _) = cancel_after(Duration::from_millis(cancel_after_ms), &probe);
        let report = timeout(
            Duration::from_secs(10),
            pipeline::run(&config(8, 4, 2, 0), probe.clone(), shutdown),
        )
        .await
        .unwrap_or_else(|_| panic!("cancelled after {cancel_after_ms} ms: the drain hung"));

        let created = probe.seen.produced.load(SeqCst);
        assert_eq!(
            created,
            report.handled + report.failed,
            "cancelled after {cancel_after_ms} ms: {created} items created, {} handled or failed",
            report.handled + report.failed
        );
    }
}

/// The flume hazard: a blocking `send` or `recv` in async code holds the
/// runtime thread. On a `current_thread` runtime with capacity 1, a blocking
/// call in a producer or an async worker deadlocks the pipeline; with thread
/// workers, a blocking producer stalls every other task. The pipeline runs on
/// its own thread (a deadlocked runtime cannot fire its own timeout), next to
/// a heartbeat task that must keep ticking while items flow.
#[test]
fn nothing_blocks_the_runtime() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let outcome = runtime.block_on(async {
            let beats = Arc::new(AtomicU64::new(0));
            let heartbeat = tokio::spawn({
                let beats = Arc::clone(&beats);
                async move {
                    let mut ticks = tokio::time::interval(Duration::from_millis(1));
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                    loop {
                        ticks.tick().await;
                        beats.fetch_add(1, SeqCst);
                    }
                }
            });
            let probe = Probe {
                work: Duration::from_millis(1),
                ..Probe::default()
            };
            let started = Instant::now();
            let report = run(&config(2, 2, 1, 200), &probe).await;
            heartbeat.abort();
            (report, beats.load(SeqCst), started.elapsed())
        });
        let _ = done_tx.send(outcome);
    });
    let (report, beats, elapsed) = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("deadlock: a blocking channel call ran on the current_thread runtime");
    assert_eq!(report.handled, 200);
    // The runtime thread is idle nearly all the time (workers are slow), so
    // the 1 ms heartbeat ticks every millisecond or two. A producer blocked in
    // a synchronous `send` holds the thread for long stretches instead, and
    // the heartbeat falls far below this generous floor.
    let expected = elapsed.as_millis() as u64 / 10;
    assert!(
        beats >= expected,
        "the runtime was blocked: {beats} heartbeats in {elapsed:?}, expected at least {expected}"
    );
}

/// A handler error is counted, and every worker goes on with the next item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_are_counted_and_the_run_goes_on() {
    let probe = Probe {
        fail_every: Some(10),
        work: Duration::from_micros(500),
        ..Probe::default()
    };
    let report = run(&config(3, 4, 8, 1_000), &probe).await;
    assert_eq!(report.failed, 100);
    assert_eq!(report.handled, 900);
    assert!(
        report.is_success(),
        "item failures are not a pipeline error"
    );
    assert!(
        report.handled_per_worker.iter().all(|&n| n > 0),
        "a worker stopped after an error: {:?}",
        report.handled_per_worker
    );
}

/// A panicking worker is reported and fails the run, the item in its hands is
/// counted as failed, and the other workers handle everything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_is_reported_and_the_others_go_on() {
    let probe = Probe {
        panic_at: Some(100),
        ..Probe::default()
    };
    let report = timeout(
        Duration::from_secs(30),
        run(&config(2, 4, 16, 5_000), &probe),
    )
    .await
    .expect("a panicking worker must not hang the run");
    assert_eq!(report.panicked_tasks, 1);
    assert!(!report.is_success());
    assert_eq!(report.produced, 5_000, "producers go on");
    assert_eq!(report.failed, 1, "the item in the panicking hands");
    assert_eq!(report.handled, 4_999, "the other workers handled the rest");
    let expected = (0..5_000u64)
        .filter(|&seq| seq != 100)
        .map(mix)
        .fold(0u64, u64::wrapping_add);
    assert_eq!(probe.seen.checksum.load(SeqCst), expected);
}

/// When every worker panics, the producers notice that nobody receives any
/// more and stop, even when they would otherwise produce forever. The report
/// accounts for every item that entered the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_worker_panics_the_run_ends() {
    let probe = Probe {
        panic_from: Some(50),
        ..Probe::default()
    };
    let report = timeout(
        Duration::from_secs(30),
        pipeline::run(&config(2, 3, 8, 0), probe.clone(), CancellationToken::new()),
    )
    .await
    .expect("producers must stop once every worker is gone");
    assert_eq!(report.panicked_tasks, 3);
    assert!(report.failed >= 3, "each panicking worker held an item");
    assert_eq!(report.produced, report.handled + report.failed);
}

/// A panicking producer stops the others, even when they would otherwise
/// produce forever, and the run ends as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_producer_stops_the_run() {
    let probe = Probe {
        produce_panics_at: Some(1_001),
        ..Probe::default()
    };
    let report = timeout(
        Duration::from_secs(30),
        pipeline::run(&config(4, 2, 8, 0), probe.clone(), CancellationToken::new()),
    )
    .await
    .expect("a panicking producer must stop the run");
    assert_eq!(report.panicked_tasks, 1);
    assert_eq!(report.produced, report.handled + report.failed);
}
