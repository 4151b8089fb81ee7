//! The pipeline's guarantees, proven on the real `pipeline::run` with a
//! workload that records what actually happened to every item.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

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
    created_checksum: AtomicU64,
    /// Calls to `handle` that returned, successfully or not.
    finished: AtomicU64,
    /// Wrapping sum of `mix(seq)` over every handled item. Duplicates or
    /// omissions change it, whatever the order of handling.
    checksum: AtomicU64,
    /// The most items produced but not yet finished at any moment.
    max_in_flight: AtomicU64,
    /// The number (counting from 1) of the first item made at or after
    /// [`Probe::stop_due`]; 0 while there is none.
    first_late_item: AtomicU64,
}

impl Observed {
    /// Items made at or after [`Probe::stop_due`].
    fn made_late(&self) -> u64 {
        match self.first_late_item.load(SeqCst) {
            0 => 0,
            first => self.produced.load(SeqCst) - first + 1,
        }
    }
}

/// A test workload: items are sequence numbers, `--items` of them shared by
/// `--producers` sources; handling can be slow, fail or panic on request, and
/// the run can be cancelled from inside a source.
#[derive(Debug, Clone, Default)]
struct Probe {
    seen: Arc<Observed>,
    producers: usize,
    items: u64,
    work: Duration,
    fail_every: Option<u64>,
    panic_at: Option<u64>,
    /// Item that takes the given time instead of `work`.
    slow_item: Option<(u64, Duration)>,
    /// Cancels `shutdown` while making this many-th item, right before a
    /// producer sends it: a cancellation that lands exactly on a hand-over.
    cancel_at: Option<u64>,
    shutdown: CancellationToken,
    /// The moment the test asks the run to stop. Every item made after it is
    /// one the stop request was too late for.
    stop_due: Option<Instant>,
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
/// as it is made, right before the producer sends it.
struct ProbeSource {
    numbers: Numbers,
    probe: Probe,
}

impl Source for ProbeSource {
    type Item = u64;

    async fn next(&mut self) -> anyhow::Result<Option<u64>> {
        let Some(seq) = self.numbers.next_number() else {
            return Ok(None);
        };
        let seen = &self.probe.seen;
        let produced = seen.produced.fetch_add(1, SeqCst) + 1;
        seen.created_checksum.fetch_add(mix(seq), SeqCst);
        if self.probe.stop_due.is_some_and(|due| Instant::now() >= due) {
            let _ = seen
                .first_late_item
                .compare_exchange(0, produced, SeqCst, SeqCst);
        }
        if self.probe.cancel_at == Some(produced) {
            self.probe.shutdown.cancel();
        }
        // On a multi-thread runtime other items may finish between the two
        // reads, so this can only underestimate; the bound check stays sound.
        let in_flight = produced.saturating_sub(seen.finished.load(SeqCst));
        seen.max_in_flight.fetch_max(in_flight, SeqCst);
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
            probe: self.clone(),
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
        let seen = probe.clone();
        let report = within(Duration::from_secs(30), move || {
            runtime(multi_thread).block_on(run(&config, &seen))
        });

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
/// hands and in the consumer's, however fast producers are. Swapping in an
/// unbounded channel makes this fail.
#[tokio::test(start_paused = true)]
async fn in_flight_items_stay_within_capacity_plus_producer_and_consumer_hands() {
    let (producers, capacity) = (8, 4);
    for batch_max in [1, 16] {
        let probe = Probe {
            work: Duration::from_millis(1),
            ..Probe::default()
        };
        let items = 500 * batch_max as u64;
        let config = batched(config(producers, capacity, items), batch_max);
        let report = timeout(Duration::from_secs(60), run(&config, &probe))
            .await
            .expect("a throttled run must still end");

        let max_in_flight_seen = probe.seen.max_in_flight.load(SeqCst);
        let bound = max_in_flight(capacity, producers, batch_max) as u64;
        assert!(
            max_in_flight_seen <= bound,
            "batch_max {batch_max}: {max_in_flight_seen} items in flight, bound {bound}"
        );
        assert!(
            max_in_flight_seen >= (capacity * batch_max) as u64,
            "batch_max {batch_max}: the queue never filled, so nothing was tested"
        );
        // What the consumer finds waiting: at most a full channel and the
        // message it took.
        assert!(report.peak_queue_depth <= 1 + capacity + producers);
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
        let config = config(8, capacity, 0);
        let report = timeout(
            Duration::from_secs(10),
            run_pipeline(&config, probe.sized(&config), shutdown),
        )
        .await
        .expect("a cancelled run must drain and end");

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
    within(Duration::from_secs(120), || {
        for multi_thread in [false, true] {
            let runtime = runtime(multi_thread);
            for cancel_at in 1..=300 {
                let probe = Probe {
                    cancel_at: Some(cancel_at),
                    ..Probe::default()
                };
                let capacity = 1 + (cancel_at % 4) as usize;
                let config = config(4, capacity, 0);
                let run = run_pipeline(&config, probe.sized(&config), probe.shutdown.clone());
                let report = runtime
                    .block_on(async { timeout(Duration::from_secs(30), run).await })
                    .expect("a cancelled run must drain and end");

                let case = format!("multi_thread={multi_thread}, cancelled at item {cancel_at}");
                let created = probe.seen.produced.load(SeqCst);
                assert!(report.cancelled, "{case}");
                assert_eq!(
                    created,
                    report.handled + report.failed,
                    "{case}: {created} items created, {} handled or failed",
                    report.handled + report.failed
                );
                assert_eq!(report.produced, created, "{case}");
                assert_eq!(report.unaccounted, 0, "{case}: {report:?}");
                assert_eq!(
                    probe.seen.checksum.load(SeqCst),
                    probe.seen.created_checksum.load(SeqCst),
                    "{case}: the handled items are not the created ones"
                );
            }
        }
    });
}

/// A handler error is counted, and the pipeline goes on with the next item.
#[tokio::test]
async fn handler_errors_are_counted_and_the_run_goes_on() {
    let probe = Probe {
        fail_every: Some(10),
        ..Probe::default()
    };
    let report = timeout(Duration::from_secs(30), run(&config(3, 8, 1_000), &probe))
        .await
        .expect("the run must end");
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
            let numbers = Numbers::share(producer, 4, 0);
            Ok(Some(PanickingSource(numbers, self.0)))
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

/// The kanal hazard under sustained load: kanal's futures never spend tokio's
/// coop budget, so a producer whose channel has room, or a consumer whose
/// channel is not empty, does not yield unless the pipeline makes it. Until
/// it does, the timer that cancels the run (a stand-in for the signal
/// listener) and the task that turns the token into the stop flag wait.
///
/// The channel does fill in the end and park the producers, so without the
/// yields the run is late rather than stuck for good: with the largest
/// capacity, the stop lands seconds and millions of items late. So besides
/// the deadline, which is kept outside the runtime so that a worse regression
/// fails here instead of hanging, the test counts the items made after the
/// stop was due. Unlike a time limit, that does not depend on the machine's
/// speed. On one runtime thread, with the yields, the count stays within a
/// few turns of each task (a turn ends after 128 units of budget, about
/// 33,000 items, or when the channel is full): up to about 280,000 in debug
/// and release builds. Without them it is 9 to 13 million, so the limit sits
/// at about one full channel. On two threads the count also
/// depends on how the OS schedules them (a worker set aside for a moment lets
/// the other produce on), so there only the deadline and the accounting are
/// checked.
#[test]
fn cancellation_is_heard_under_sustained_load() {
    const STOP_AFTER: Duration = Duration::from_millis(200);
    const LATE_ITEMS_ALLOWED: u64 = 1_000_000;
    for multi_thread in [false, true] {
        for capacity in [1, 999_999] {
            let (report, made_late) = within(Duration::from_secs(30), move || {
                runtime(multi_thread).block_on(async {
                    let probe = Probe {
                        stop_due: Some(Instant::now() + STOP_AFTER),
                        ..Probe::default()
                    };
                    let shutdown = cancel_after(STOP_AFTER);
                    let config = config(4, capacity, 0);
                    let report = run_pipeline(&config, probe.sized(&config), shutdown).await;
                    (report, probe.seen.made_late())
                })
            });
            let case = format!("multi_thread={multi_thread} capacity={capacity}: {report:?}");
            assert!(report.cancelled, "{case}");
            assert!(report.is_success(), "{case}");
            assert_eq!(report.produced, report.handled, "{case}");
            if !multi_thread {
                assert!(
                    made_late <= LATE_ITEMS_ALLOWED,
                    "{case}: {made_late} items made after the stop was due"
                );
            }
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

/// A consumer that panics partway through a batch. Everything it finished
/// before the panic is reported as handled or failed, and only the rest as
/// lost. One producer keeps the items in order, so the numbers are exact, on
/// both runtime flavors: a consumer that published its counters once per
/// batch would report no finished item of the panicking batch at all.
///
/// With batches, an item that failed earlier in the panicking batch was not
/// settled yet (it would have been retried or dead-lettered after the
/// batch), so it is lost rather than failed; the handled count stays exact.
#[test]
fn a_panic_mid_batch_reports_exact_numbers() {
    let panic_at = 300;
    for (multi_thread, batch_max) in [(false, 1), (true, 1), (false, 64), (true, 64)] {
        let probe = Probe {
            panic_at: Some(panic_at),
            fail_every: Some(7),
            ..Probe::default()
        };
        let seen = probe.clone();
        let config = batched(config(1, 512, 100_000), batch_max);
        let report = within(Duration::from_secs(30), move || {
            runtime(multi_thread).block_on(run(&config, &seen))
        });

        let case = format!("multi_thread={multi_thread}, batch_max={batch_max}: {report:?}");
        let failed = (0..panic_at).filter(|seq| seq % 7 == 0).count() as u64;
        assert_eq!(report.handled, panic_at - failed, "{case}");
        let settled_below = if batch_max == 1 {
            panic_at
        } else {
            panic_at / 64 * 64
        };
        let settled = (0..settled_below).filter(|seq| seq % 7 == 0).count() as u64;
        assert_eq!(report.failed, settled, "{case}");
        assert_eq!(
            report.lost,
            report.produced - report.handled - report.failed,
            "{case}"
        );
        assert_eq!((report.failed_stages, report.unaccounted), (1, 0), "{case}");
        assert_eq!(probe.seen.finished.load(SeqCst), panic_at, "{case}");
    }
}

/// A consumer stuck on one slow item for longer than `--stall-warn-secs`
/// makes one stall episode; the run then recovers and succeeds.
#[tokio::test(start_paused = true)]
async fn a_stuck_consumer_is_reported_as_a_stall() {
    let probe = Probe {
        slow_item: Some((5, Duration::from_secs(10))),
        ..Probe::default()
    };
    let mut config = config(1, 4, 20);
    config.stall_warn_secs = 2;
    let report = timeout(Duration::from_secs(60), run(&config, &probe))
        .await
        .expect("a stalled run must still end");
    assert_eq!(report.stall_episodes, 1);
    assert_eq!(report.handled, 20);
    assert!(report.is_success());

    config.stall_warn_secs = 0;
    let report = timeout(Duration::from_secs(60), run(&config, &probe))
        .await
        .expect("a stalled run must still end");
    assert_eq!(report.stall_episodes, 0, "0 turns it off");
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
                        probe.seen.created_checksum.load(SeqCst),
                        "{case}: the handled items are not the created ones"
                    );
                }
            }
        }
    });
}
