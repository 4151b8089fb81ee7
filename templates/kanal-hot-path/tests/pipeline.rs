//! The pipeline's guarantees, proven on the real `pipeline::run` with a
//! workload that records what actually happened to every item.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use clap::Parser;
use proptest::prelude::*;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use {{crate_name}}::config::Config;
use {{crate_name}}::pipeline::{self, Workload, max_in_flight};
use {{crate_name}}::report::Report;

/// What a [`Probe`] saw. Shared with the test, which inspects it after the run.
#[derive(Debug, Default)]
struct Observed {
    /// Calls to `produce`: the ground truth of how many items exist.
    produced: AtomicU64,
    /// Wrapping sum of `mix(seq)` over every produced item.
    created_checksum: AtomicU64,
    /// Calls to `handle` that returned, successfully or not.
    finished: AtomicU64,
    /// Wrapping sum of `mix(seq)` over every handled item. Duplicates or
    /// omissions change it, whatever the order of handling.
    checksum: AtomicU64,
    /// The most items produced but not yet finished at any moment.
    max_in_flight: AtomicU64,
}

/// A test workload: items are sequence numbers; handling can be slow, fail or
/// panic on request, and the run can be cancelled from inside `produce`.
#[derive(Debug, Clone, Default)]
struct Probe {
    seen: Arc<Observed>,
    work: Duration,
    fail_every: Option<u64>,
    panic_at: Option<u64>,
    /// Cancels `shutdown` while making this many-th item, right before a
    /// producer sends it: a cancellation that lands exactly on a hand-over.
    cancel_at: Option<u64>,
    shutdown: CancellationToken,
}

impl Workload for Probe {
    type Item = u64;

    fn produce(&self, seq: u64) -> u64 {
        let produced = self.seen.produced.fetch_add(1, SeqCst) + 1;
        self.seen.created_checksum.fetch_add(mix(seq), SeqCst);
        if self.cancel_at == Some(produced) {
            self.shutdown.cancel();
        }
        // On a multi-thread runtime other items may finish between the two
        // reads, so this can only underestimate; the bound check stays sound.
        let in_flight = produced.saturating_sub(self.seen.finished.load(SeqCst));
        self.seen.max_in_flight.fetch_max(in_flight, SeqCst);
        seq
    }

    async fn handle(&self, seq: u64) -> anyhow::Result<()> {
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        if self.panic_at == Some(seq) {
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

fn config(producers: usize, capacity: usize, items: u64) -> Config {
    Config::try_parse_from([
        "test".to_owned(),
        format!("--producers={producers}"),
        format!("--capacity={capacity}"),
        format!("--items={items}"),
        "--progress-secs=0".to_owned(),
    ])
    .expect("valid test configuration")
}

/// A token that cancels itself after `delay` (of tokio time, so paused-time
/// tests stay instant).
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

proptest! {
    // Failure files need a `src/` next to the test; integration tests have
    // none, so proptest prints the failing case instead.
    #![proptest_config(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every produced item is handled once and only once, for any number of
    /// producers, any capacity down to 1, and both runtime flavors.
    #[test]
    fn every_item_is_handled_exactly_once(
        producers in 1usize..=8,
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
        let report = runtime.block_on(run(&config(producers, capacity, items), &probe));

        prop_assert_eq!(report.produced, items);
        prop_assert_eq!(report.handled, items);
        prop_assert_eq!(report.failed, 0);
        prop_assert_eq!(probe.seen.produced.load(SeqCst), items);
        let expected = (0..items).map(mix).fold(0u64, u64::wrapping_add);
        prop_assert_eq!(probe.seen.checksum.load(SeqCst), expected);
    }
}

/// The run ends on its own once the producers are done. If any `Sender`
/// outlived them (the classic forgotten `drop(tx)`), the consumer would wait
/// forever and the timeout would fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ends_by_itself_when_producers_finish() {
    let probe = Probe::default();
    let mut config = config(4, 8, 50_000);
    config.progress_secs = 1; // The progress task must not hold the channel open either.
    let report = timeout(Duration::from_secs(30), run(&config, &probe))
        .await
        .expect("the pipeline did not end after its producers finished");
    assert_eq!(report.handled, 50_000);
}

/// A slow consumer throttles the producers: items in flight never exceed the
/// channel capacity plus one item waiting in each producer's `send` plus what
/// the consumer holds, however fast producers are. Swapping in an unbounded
/// channel makes this fail.
#[tokio::test(start_paused = true)]
async fn in_flight_items_stay_within_capacity_plus_producer_and_consumer_hands() {
    let (producers, capacity) = (8, 4);
    let probe = Probe {
        work: Duration::from_millis(1),
        ..Probe::default()
    };
    let report = run(&config(producers, capacity, 500), &probe).await;

    let max_in_flight_seen = probe.seen.max_in_flight.load(SeqCst);
    let bound = max_in_flight(capacity, producers) as u64;
    assert!(
        max_in_flight_seen <= bound,
        "{max_in_flight_seen} items in flight, bound {bound}"
    );
    assert!(
        max_in_flight_seen >= capacity as u64,
        "the queue never filled, so nothing was tested"
    );
    // What the consumer finds waiting: a full channel plus, with batching,
    // the item of every producer parked in `send`.
    assert!(report.peak_queue_depth <= 1 + capacity + producers);
    assert_eq!(report.handled, 500);
}

/// Cancellation stops the producers, the consumer drains what was queued, and
/// the run ends promptly with every produced item handled.
#[tokio::test(start_paused = true)]
async fn cancel_stops_producers_and_drains_the_queue() {
    let probe = Probe {
        work: Duration::from_millis(1),
        ..Probe::default()
    };
    let shutdown = cancel_after(Duration::from_millis(50));
    let config = config(4, 16, 0); // 0 = produce until cancelled.

    // Draining at most capacity + held items of 1 ms each takes well under a second.
    let report = timeout(
        Duration::from_secs(1),
        pipeline::run(&config, probe.clone(), shutdown),
    )
    .await
    .expect("the drain after cancellation did not finish in time");

    assert!(report.cancelled);
    assert!(report.produced > 0);
    assert_eq!(
        report.produced,
        probe.seen.produced.load(SeqCst),
        "items created but never sent"
    );
    assert_eq!(report.produced, report.handled + report.failed);
    assert_eq!(report.handled, probe.seen.finished.load(SeqCst));
}

/// Producers parked on a full channel when cancellation comes. A kanal send
/// future dropped while it waits for room drops its item, so racing `send`
/// against cancellation in `select!` would show up here as items created but
/// never handled. Producers await every send to the end instead.
#[tokio::test(start_paused = true)]
async fn cancellation_under_load_never_loses_an_item() {
    for cancel_after_ms in 1..=40 {
        let probe = Probe {
            work: Duration::from_millis(1),
            ..Probe::default()
        };
        let shutdown = cancel_after(Duration::from_millis(cancel_after_ms));
        let capacity = 1 + (cancel_after_ms % 3) as usize;
        let report = pipeline::run(&config(8, capacity, 0), probe.clone(), shutdown).await;

        let created = probe.seen.produced.load(SeqCst);
        assert_eq!(
            created,
            report.handled + report.failed,
            "cancelled after {cancel_after_ms} ms: {created} items created, {} handled or failed",
            report.handled + report.failed
        );
        assert_eq!(report.produced, created);
    }
}

/// The kanal hazard: its `recv` is not cancel safe. A consumer waiting in
/// `recv` on an empty queue gets the next item handed straight into its
/// future; if that future is dropped (say, because a `select!` with
/// cancellation picked the other branch), the item is gone, even when the
/// consumer drains the channel afterwards. Here the consumer is fast, so it
/// waits on an empty queue, and the run is cancelled right as a producer
/// sends, at hundreds of different points and on both runtime flavors.
#[test]
fn cancellation_while_the_consumer_waits_never_loses_an_item() {
    let flavors = [
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap(),
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap(),
    ];
    for runtime in &flavors {
        for cancel_at in 1..=300 {
            let probe = Probe {
                cancel_at: Some(cancel_at),
                ..Probe::default()
            };
            let capacity = 1 + (cancel_at % 4) as usize;
            let config = config(4, capacity, 0);
            let run = pipeline::run(&config, probe.clone(), probe.shutdown.clone());
            let report = runtime
                .block_on(async { timeout(Duration::from_secs(30), run).await })
                .expect("a cancelled run must drain and end");

            let created = probe.seen.produced.load(SeqCst);
            assert!(report.cancelled);
            assert_eq!(
                created,
                report.handled + report.failed,
                "cancelled at item {cancel_at}: {created} items created, {} handled or failed",
                report.handled + report.failed
            );
            assert_eq!(report.produced, created);
            assert_eq!(
                probe.seen.checksum.load(SeqCst),
                probe.seen.created_checksum.load(SeqCst),
                "cancelled at item {cancel_at}: the handled items are not the created ones"
            );
        }
    }
}

/// A handler error is counted, and the pipeline goes on with the next item.
#[tokio::test]
async fn handler_errors_are_counted_and_the_run_goes_on() {
    let probe = Probe {
        fail_every: Some(10),
        ..Probe::default()
    };
    let report = run(&config(3, 8, 1_000), &probe).await;
    assert_eq!(report.failed, 100);
    assert_eq!(report.handled, 900);
    assert!(
        report.is_success(),
        "item failures are not a pipeline error"
    );
}

/// A panicking consumer turns the run into an error instead of a hang, and
/// the report still accounts for every item that entered the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_consumer_fails_the_run_without_hanging() {
    let probe = Probe {
        panic_at: Some(100),
        ..Probe::default()
    };
    let report = timeout(
        Duration::from_secs(30),
        run(&config(4, 16, 100_000), &probe),
    )
    .await
    .expect("a panicking consumer must not hang the run");
    assert_eq!(report.panicked_tasks, 1);
    assert!(!report.is_success());
    assert!(
        report.failed >= 1,
        "the item in the panicking hand counts as failed"
    );
    assert!(
        report.produced < 100_000,
        "producers stopped once the consumer was gone"
    );
    assert_eq!(report.produced, report.handled + report.failed);
}

/// A panicking producer stops the others, even when they would otherwise
/// produce forever, and the run ends as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_producer_stops_the_run() {
    #[derive(Clone)]
    struct PanicsAtSeq(u64);
    impl Workload for PanicsAtSeq {
        type Item = u64;
        fn produce(&self, seq: u64) -> u64 {
            assert_ne!(seq, self.0, "test producer panics on item {seq}");
            seq
        }
        async fn handle(&self, _seq: u64) -> anyhow::Result<()> {
            Ok(())
        }
    }
    let report = timeout(
        Duration::from_secs(30),
        pipeline::run(
            &config(4, 8, 0),
            PanicsAtSeq(1_001),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("a panicking producer must stop the run");
    assert_eq!(report.panicked_tasks, 1);
    assert_eq!(report.produced, report.handled + report.failed);
}
