//! The pipeline's guarantees, proven on the real `pipeline::run` with a
//! workload that records what actually happened to every item.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use clap::Parser;
use proptest::prelude::*;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use support::{runtime, within};

use {{crate_name}}::config::Config;
use {{crate_name}}::pipeline::{self, max_in_flight};
use {{crate_name}}::report::{EXIT_DRAIN_TIMEOUT, Report};
use {{crate_name}}::workload_api::{Numbers, Source, Workload};

/// What a [`Probe`] saw. Shared with the test, which inspects it after the run.
#[derive(Debug, Default)]
struct Observed {
    /// Items the sources returned: the ground truth of how many items exist.
    produced: AtomicU64,
    /// Wrapping sum of `mix(seq)` over every produced item.
    produced_checksum: AtomicU64,
    /// Calls to `handle` that returned, successfully or not.
    finished: AtomicU64,
    /// Wrapping sum of `mix(seq)` over every handled item. Duplicates or
    /// omissions change it, whatever the order of handling.
    checksum: AtomicU64,
    /// The most items produced but not yet finished at any moment.
    max_in_flight: AtomicU64,
}

/// A test workload: items are sequence numbers, `--items` of them shared by
/// `--producers` sources; handling can be slow, fail or panic on request.
#[derive(Debug, Clone, Default)]
struct Probe {
    seen: Arc<Observed>,
    producers: usize,
    items: u64,
    work: Duration,
    fail_every: Option<u64>,
    panic_at: Option<u64>,
    /// Item that takes `slow_work` instead of `work`.
    slow_item: Option<(u64, Duration)>,
}

impl Probe {
    /// This probe, making the items `config` asks for.
    fn sized(&self, config: &Config) -> Self {
        Self {
            producers: config.producers,
            items: config.items,
            ..self.clone()
        }
    }
}

/// A probe's source: its producer's share of the numbers, each one recorded
/// as it is made.
struct ProbeSource {
    numbers: Numbers,
    seen: Arc<Observed>,
}

impl Source for ProbeSource {
    type Item = u64;

    async fn next(&mut self) -> anyhow::Result<Option<u64>> {
        let Some(seq) = self.numbers.next_number() else {
            return Ok(None);
        };
        let produced = self.seen.produced.fetch_add(1, SeqCst) + 1;
        self.seen.produced_checksum.fetch_add(mix(seq), SeqCst);
        // On a multi-thread runtime other items may finish between the two
        // reads, so this can only underestimate; the bound check stays sound.
        let in_flight = produced.saturating_sub(self.seen.finished.load(SeqCst));
        self.seen.max_in_flight.fetch_max(in_flight, SeqCst);
        Ok(Some(seq))
    }
}

impl Workload for Probe {
    type Item = u64;
    type Source = ProbeSource;

    fn producers(&self) -> usize {
        self.producers
    }

    async fn open(&self, producer: usize) -> anyhow::Result<Option<ProbeSource>> {
        Ok(Some(ProbeSource {
            numbers: Numbers::share(producer, self.producers, self.items),
            seen: Arc::clone(&self.seen),
        }))
    }

    async fn handle(&self, seq: &u64) -> anyhow::Result<()> {
        let seq = *seq;
        let work = match self.slow_item {
            Some((slow, work)) if slow == seq => work,
            _ => self.work,
        };
        if !work.is_zero() {
            tokio::time::sleep(work).await;
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
        "--batch-max=1".to_owned(),
        "--progress-secs=0".to_owned(),
        "--stall-warn-secs=0".to_owned(),
    ])
    .expect("valid test configuration")
}

/// `config` with batches of up to `batch_max` items (1: item by item).
fn batched(mut config: Config, batch_max: usize) -> Config {
    config.topology.delivery.batch_max = batch_max;
    config
}

/// Runs the real pipeline; every test workload starts.
async fn run_pipeline<W: Workload>(
    config: &Config,
    workload: W,
    shutdown: CancellationToken,
) -> Report {
    pipeline::run(config, workload, shutdown)
        .await
        .expect("the pipeline starts")
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
    run_pipeline(config, probe.sized(config), CancellationToken::new()).await
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
    /// producers, any capacity down to 1, item by item or in batches of any
    /// size, and both runtime flavors.
    #[test]
    fn every_item_is_handled_exactly_once(
        producers in 1usize..=8,
        capacity in 1usize..=64,
        items in 1u64..=3_000,
        batch_max in prop_oneof![Just(1usize), 2usize..=300],
        multi_thread in any::<bool>(),
    ) {
        let probe = Probe::default();
        let config = batched(config(producers, capacity, items), batch_max);
        let report = runtime(multi_thread).block_on(run(&config, &probe));

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

/// A slow consumer throttles the producers: items in flight never exceed a
/// message (an item, or a batch) in each channel slot, in each producer's
/// hands and in the consumer's, however fast producers are.
#[tokio::test(start_paused = true)]
async fn in_flight_items_stay_within_capacity_plus_consumer_hands() {
    let capacity = 4;
    for batch_max in [1, 16] {
        let probe = Probe {
            work: Duration::from_millis(1),
            ..Probe::default()
        };
        let items = 500 * batch_max as u64;
        let report = run(&batched(config(8, capacity, items), batch_max), &probe).await;

        let bound = max_in_flight(capacity, 8, batch_max) as u64;
        let max_in_flight = probe.seen.max_in_flight.load(SeqCst);
        assert!(
            max_in_flight <= bound,
            "batch_max {batch_max}: {max_in_flight} items in flight, bound {bound}"
        );
        assert!(
            max_in_flight >= (capacity * batch_max) as u64,
            "batch_max {batch_max}: the queue never filled, so nothing was tested"
        );
        assert!(report.peak_queue_depth <= capacity + 1);
        assert_eq!(report.handled, items);
    }
}

/// Cancellation stops the producers, the consumer drains what was queued, and
/// the run ends promptly with every produced item handled, item by item and
/// in (small) batches.
#[tokio::test(start_paused = true)]
async fn cancel_stops_producers_and_drains_the_queue() {
    for batch_max in [1, 4] {
        let probe = Probe {
            work: Duration::from_millis(1),
            ..Probe::default()
        };
        let shutdown = cancel_after(Duration::from_millis(50));
        let config = batched(config(4, 16, 0), batch_max); // 0 = produce until cancelled.

        // Draining at most (capacity + held messages) × batch_max items of 1 ms
        // each takes well under a second.
        let report = timeout(
            Duration::from_secs(1),
            run_pipeline(&config, probe.sized(&config), shutdown),
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
}

/// The tokio mpsc hazard: `send(item)` raced against cancellation in
/// `select!` drops the item when cancellation wins. With producers parked on a
/// full channel at the moment of cancellation, that would show up here as
/// items produced but never handled. Producers reserve a permit first instead.
#[tokio::test(start_paused = true)]
async fn cancellation_under_load_never_loses_an_item() {
    for (cancel_after_ms, batch_max) in (1..=40).zip([1, 4].into_iter().cycle()) {
        let probe = Probe {
            work: Duration::from_millis(1),
            ..Probe::default()
        };
        let shutdown = cancel_after(Duration::from_millis(cancel_after_ms));
        let config = batched(config(8, 2, 0), batch_max);
        let report = run_pipeline(&config, probe.sized(&config), shutdown).await;

        let created = probe.seen.produced.load(SeqCst);
        assert_eq!(
            created,
            report.handled + report.failed,
            "cancelled after {cancel_after_ms} ms: {created} items created, {} handled or failed",
            report.handled + report.failed
        );
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
    assert_eq!(report.failed_stages, 1);
    assert!(!report.is_success());
    assert!(
        report.lost >= 1,
        "the item in the panicking hand is lost with it"
    );
    assert!(
        report.produced < 100_000,
        "producers stopped once the consumer was gone"
    );
    assert_eq!(report.unaccounted, 0);
    assert_eq!(
        report.produced,
        report.handled + report.failed + report.lost
    );
}

/// A panicking producer stops the others, even when they would otherwise
/// produce forever, and the run ends as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_producer_stops_the_run() {
    struct PanicsAtSeq(u64);
    struct PanickingSource(Numbers, u64);
    impl Source for PanickingSource {
        type Item = u64;
        async fn next(&mut self) -> anyhow::Result<Option<u64>> {
            let seq = self.0.next_number();
            assert_ne!(seq, Some(self.1), "test source panics on item {}", self.1);
            Ok(seq)
        }
    }
    impl Workload for PanicsAtSeq {
        type Item = u64;
        type Source = PanickingSource;
        fn producers(&self) -> usize {
            4
        }
        async fn open(&self, producer: usize) -> anyhow::Result<Option<PanickingSource>> {
            Ok(Some(PanickingSource(
                Numbers::share(producer, 4, 0),
                self.0,
            )))
        }
        async fn handle(&self, _seq: &u64) -> anyhow::Result<()> {
            Ok(())
        }
    }
    let report = timeout(
        Duration::from_secs(30),
        run_pipeline(
            &config(4, 8, 0),
            PanicsAtSeq(1_001),
            CancellationToken::new(),
        ),
    )
    .await
    .expect("a panicking producer must stop the run");
    assert_eq!(report.failed_stages, 1);
    assert_eq!(report.unaccounted, 0);
    assert_eq!(
        report.produced,
        report.handled + report.failed + report.lost
    );
}

/// The mpsc hazard under sustained load: producers whose channel always has
/// room never wait, so unless they yield to the scheduler, the timer that
/// cancels the run never fires. A huge capacity keeps the channel from ever
/// filling, and more producers than runtime threads keep every thread busy.
/// The deadline is kept outside the runtime, so a regression fails here
/// instead of hanging.
#[test]
fn cancellation_is_heard_under_sustained_load() {
    for multi_thread in [false, true] {
        for capacity in [1, 999_999] {
            let report = within(Duration::from_secs(30), move || {
                runtime(multi_thread).block_on(async {
                    let shutdown = cancel_after(Duration::from_millis(200));
                    let config = config(4, capacity, 0);
                    run_pipeline(&config, Probe::default().sized(&config), shutdown).await
                })
            });
            assert!(
                report.cancelled,
                "multi_thread={multi_thread} capacity={capacity}"
            );
            assert!(report.is_success(), "{report:?}");
            assert_eq!(report.produced, report.handled);
        }
    }
}

/// After a shutdown request the drain gets `--drain-timeout`; then the run
/// stops waiting, counts what is left as abandoned, and says so in its exit
/// code.
#[tokio::test(start_paused = true)]
async fn a_drain_longer_than_the_deadline_is_abandoned() {
    let probe = Probe {
        work: Duration::from_secs(3600),
        ..Probe::default()
    };
    let mut config = config(2, 8, 0);
    config.drain_timeout = 5;
    let report = timeout(
        Duration::from_secs(60),
        run_pipeline(
            &config,
            probe.sized(&config),
            cancel_after(Duration::from_millis(10)),
        ),
    )
    .await
    .expect("the drain deadline must end the run");

    assert!(report.drain_timed_out);
    assert_eq!(report.exit_code(), EXIT_DRAIN_TIMEOUT);
    assert!(report.abandoned > 0);
    assert_eq!(
        report.abandoned,
        report.produced - report.handled - report.failed
    );
    assert_eq!((report.lost, report.unaccounted), (0, 0));
}

/// A consumer that panics halfway through a batch: everything it finished
/// before the panic is reported as handled, and only the rest as lost. One
/// producer keeps the items in order, so the numbers are exact.
///
/// With batches, an item that failed earlier in the panicking batch was not
/// settled yet (it would have been retried or dead-lettered after the
/// batch), so it is lost rather than failed; the handled count stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_mid_batch_reports_exact_numbers() {
    let panic_at = 300;
    for batch_max in [1, 64] {
        let probe = Probe {
            panic_at: Some(panic_at),
            fail_every: Some(7),
            ..Probe::default()
        };
        let config = batched(config(1, 512, 100_000), batch_max);
        let report = timeout(Duration::from_secs(30), run(&config, &probe))
            .await
            .expect("a panicking consumer must not hang the run");

        let failed = (0..panic_at).filter(|seq| seq % 7 == 0).count() as u64;
        assert_eq!(report.handled, panic_at - failed, "batch_max {batch_max}");
        let settled = if batch_max == 1 {
            failed
        } else {
            let batch_start = panic_at / 64 * 64;
            (0..batch_start).filter(|seq| seq % 7 == 0).count() as u64
        };
        assert_eq!(report.failed, settled, "batch_max {batch_max}");
        assert_eq!(
            report.lost,
            report.produced - report.handled - report.failed,
            "batch_max {batch_max}"
        );
        assert_eq!((report.failed_stages, report.unaccounted), (1, 0));
    }
}

/// Consumers stuck on one slow item for longer than `--stall-warn-secs`
/// make one stall episode; the run then recovers and succeeds.
#[tokio::test(start_paused = true)]
async fn a_stuck_consumer_is_reported_as_a_stall() {
    let probe = Probe {
        slow_item: Some((5, Duration::from_secs(10))),
        ..Probe::default()
    };
    let mut config = config(1, 4, 20);
    config.stall_warn_secs = 2;
    let report = run(&config, &probe).await;
    assert_eq!(report.stall_episodes, 1);
    assert_eq!(report.handled, 20);
    assert!(report.is_success());

    config.stall_warn_secs = 0;
    assert_eq!(
        run(&config, &probe).await.stall_episodes,
        0,
        "0 turns it off"
    );
}

/// Many producers, tiny and small capacities, both flavors, cancelled at
/// varying moments in real time: every item the workload created is handled
/// exactly once, and the report balances. Any lost or duplicated item shows
/// up as a count, checksum or `unaccounted` mismatch.
#[test]
fn stress_every_created_item_is_accounted_for() {
    within(Duration::from_secs(120), || {
        for round in 0..4u64 {
            for multi_thread in [false, true] {
                for capacity in [1, 64] {
                    let probe = Probe::default();
                    let batch_max = if round % 2 == 0 { 1 } else { 32 };
                    let report = runtime(multi_thread).block_on(async {
                        let shutdown = cancel_after(Duration::from_millis(5 + 7 * round));
                        let config = batched(config(16, capacity, 0), batch_max);
                        run_pipeline(&config, probe.sized(&config), shutdown).await
                    });
                    let case = format!(
                        "round {round}, multi_thread={multi_thread}, capacity={capacity}, \
                         batch_max={batch_max}"
                    );
                    assert_eq!(report.unaccounted, 0, "{case}: {report:?}");
                    assert_eq!(report.produced, probe.seen.produced.load(SeqCst), "{case}");
                    assert_eq!(report.handled, report.produced, "{case}");
                    assert_eq!(
                        probe.seen.checksum.load(SeqCst),
                        probe.seen.produced_checksum.load(SeqCst),
                        "{case}: the handled items are not the produced ones"
                    );
                }
            }
        }
    });
}
