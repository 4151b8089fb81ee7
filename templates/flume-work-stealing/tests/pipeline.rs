//! The pipeline's guarantees, proven on the real `pipeline::run` with a
//! workload that records what actually happened to every item.
//!
//! The tests run in real time (no paused tokio clock) because they are the
//! same for both worker kinds, and OS-thread workers sleep in real time: a
//! paused clock would race ahead of them.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use clap::Parser;
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

use {{crate_name}}::config::Config;
use {{crate_name}}::pipeline;
use {{crate_name}}::report::{EXIT_DRAIN_TIMEOUT, Report};
use {{crate_name}}::workload_api::{Numbers, Source, Workload};

use support::{runtime, within};

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
    /// Calls to `close`.
    closed: AtomicU64,
    /// `finished` when `close` was called.
    finished_at_close: AtomicU64,
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
    /// `handle` panics on this item.
    panic_at: Option<u64>,
    /// `handle` panics on every item from this one on.
    panic_from: Option<u64>,
    /// The source panics instead of returning this item.
    source_panics_at: Option<u64>,
    /// The source rejects (returns `Err` for) every number that is a
    /// multiple of this one, instead of returning it as an item.
    reject_every: Option<u64>,
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
    probe: Probe,
}

impl Source for ProbeSource {
    type Item = u64;

    async fn next(&mut self) -> anyhow::Result<Option<u64>> {
        let Some(seq) = self.numbers.next_number() else {
            return Ok(None);
        };
        assert_ne!(
            Some(seq),
            self.probe.source_panics_at,
            "test source panics on item {seq}"
        );
        if self
            .probe
            .reject_every
            .is_some_and(|every| seq.is_multiple_of(every))
        {
            anyhow::bail!("test source rejects input {seq}");
        }
        let seen = &self.probe.seen;
        let produced = seen.produced.fetch_add(1, SeqCst) + 1;
        seen.produced_checksum.fetch_add(mix(seq), SeqCst);
        // Other items may finish between the two reads, so this can only
        // underestimate; the bound check stays sound.
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
            // {% if worker_kind == "tasks" %}Task workers run the handler on the runtime: it waits without blocking.{% else %}Worker threads run the handler on a thread of its own, so it may block: the tests then also show that a blocking handler holds up nothing on the runtime.{% endif %}
            {% if worker_kind == "tasks" %}tokio::time::sleep(work).await;{% else %}std::thread::sleep(work);{% endif %}
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

    async fn close(&self) -> anyhow::Result<()> {
        self.seen.closed.fetch_add(1, SeqCst);
        let finished = self.seen.finished.load(SeqCst);
        self.seen.finished_at_close.store(finished, SeqCst);
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

/// What the probe had seen when a [`cancel_after`] token fired.
#[derive(Debug, Default)]
struct AtCancel {
    produced: AtomicU64,
    finished: AtomicU64,
}

/// A token that cancels itself after `delay`, and what the probe had seen at
/// that moment.
fn cancel_after(delay: Duration, probe: &Probe) -> (CancellationToken, Arc<AtCancel>) {
    let token = CancellationToken::new();
    let at_cancel = Arc::new(AtCancel::default());
    tokio::spawn({
        let token = token.clone();
        let seen = Arc::clone(&probe.seen);
        let at = Arc::clone(&at_cancel);
        async move {
            tokio::time::sleep(delay).await;
            at.finished.store(seen.finished.load(SeqCst), SeqCst);
            at.produced.store(seen.produced.load(SeqCst), SeqCst);
            token.cancel();
        }
    });
    (token, at_cancel)
}

async fn run(config: &Config, probe: &Probe) -> Report {
    run_until(config, probe, CancellationToken::new()).await
}

/// Runs the pipeline with `probe` making the items `config` asks for, until
/// they are handled or `shutdown` is cancelled.
async fn run_until(config: &Config, probe: &Probe, shutdown: CancellationToken) -> Report {
    run_pipeline(config, probe.sized(config), shutdown).await
}

/// Runs the future `test` makes on a fresh multi-thread runtime (two
/// threads), under a deadline kept outside that runtime: a pipeline that
/// hangs, or starves the runtime so that its own timers never fire, fails the
/// test instead of hanging the suite.
fn on_runtime<T, F, Fut>(limit: Duration, test: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    within(limit, move || runtime(true).block_on(test()))
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
    /// 1, item by item or in batches of any size, and both runtime flavors.
    #[test]
    fn every_item_is_handled_exactly_once(
        producers in 1usize..=8,
        workers in 1usize..=8,
        capacity in 1usize..=64,
        items in 1u64..=3_000,
        batch_max in prop_oneof![Just(1usize), 2usize..=300],
        multi_thread in any::<bool>(),
    ) {
        let probe = Probe::default();
        let config = batched(config(producers, workers, capacity, items), batch_max);
        let report = within(Duration::from_secs(30), {
            let probe = probe.clone();
            move || runtime(multi_thread).block_on(async move { run(&config, &probe).await })
        });

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
/// forever and the deadline would pass.
#[test]
fn ends_by_itself_when_producers_finish() {
    let probe = Probe::default();
    let report = on_runtime(Duration::from_secs(30), {
        let probe = probe.clone();
        || async move {
            let mut config = config(4, 4, 8, 50_000);
            config.progress_secs = 1; // The progress task must not hold the channel open either.
            run(&config, &probe).await
        }
    });
    assert_eq!(report.handled, 50_000);
    assert_eq!(probe.seen.closed.load(SeqCst), 1, "close is called once");
    assert_eq!(
        probe.seen.finished_at_close.load(SeqCst),
        50_000,
        "close comes after the last item"
    );
}

/// Slow workers throttle the producers: items in flight never exceed a
/// message (an item, or a batch) in each channel slot, in each waiting
/// producer's hands and in each worker's, however fast the producers are.
#[test]
fn in_flight_items_stay_within_the_bound() {
    for batch_max in [1, 16] {
        let probe = Probe {
            work: Duration::from_millis(1),
            ..Probe::default()
        };
        let items = 300 * batch_max as u64;
        let config = batched(config(8, 3, 4, items), batch_max);
        let report = on_runtime(Duration::from_secs(60), {
            let (config, probe) = (config.clone(), probe.clone());
            move || async move { run(&config, &probe).await }
        });

        let max_in_flight = probe.seen.max_in_flight.load(SeqCst);
        let bound = pipeline::max_in_flight(config.capacity, 8, 3, batch_max) as u64;
        assert!(
            max_in_flight <= bound,
            "batch_max {batch_max}: {max_in_flight} items in flight, bound {bound}"
        );
        assert!(
            max_in_flight >= (config.capacity * batch_max) as u64,
            "batch_max {batch_max}: the queue never filled, so nothing was tested"
        );
        assert!(report.peak_queue_depth <= config.capacity + 1);
        assert_eq!(report.handled, items);
    }
}

/// Slow items are spread over all workers: each takes the next item when it
/// is free, so none sits idle while items wait.
#[test]
fn slow_items_are_shared_by_every_worker() {
    let probe = Probe {
        work: Duration::from_millis(2),
        ..Probe::default()
    };
    let report = on_runtime(Duration::from_secs(30), move || async move {
        run(&config(1, 4, 8, 200), &probe).await
    });
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
#[test]
fn cancel_stops_producers_and_drains_the_queue() {
    let probe = Probe {
        work: Duration::from_millis(2),
        ..Probe::default()
    };
    let config = config(4, 2, 16, 0); // 0 = produce until cancelled.
    // Draining 16 queued items plus one per producer and worker, 2 ms each
    // over 2 workers, takes well under the deadline.
    let (report, at_cancel) = on_runtime(Duration::from_secs(10), {
        let probe = probe.clone();
        move || async move {
            let (shutdown, at_cancel) = cancel_after(Duration::from_millis(100), &probe);
            let report = run_until(&config, &probe, shutdown).await;
            (report, at_cancel)
        }
    });

    assert!(report.cancelled);
    assert!(report.produced > 0);
    // Fast producers keep the channel full, so items were queued (or in a
    // worker's hands) when the token fired, and all of them must be handled
    // after it. How many depends on how the threads were scheduled just then.
    let in_flight = at_cancel.produced.load(SeqCst) - at_cancel.finished.load(SeqCst);
    let drained = report.handled - at_cancel.finished.load(SeqCst);
    assert!(in_flight > 0, "nothing was in flight at the cancellation");
    assert!(
        drained >= in_flight,
        "{drained} items handled after cancellation, {in_flight} were in flight: \
         the queue was not drained"
    );
    assert_eq!(report.produced, report.handled + report.failed);
    assert_eq!(report.unaccounted, 0);
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
#[test]
fn cancellation_under_load_never_loses_an_item() {
    for (cancel_after_ms, batch_max) in (1..=25).zip([1, 4].into_iter().cycle()) {
        let probe = Probe {
            work: Duration::from_micros(300),
            ..Probe::default()
        };
        let report = on_runtime(Duration::from_secs(10), {
            let probe = probe.clone();
            move || async move {
                let (shutdown, _) = cancel_after(Duration::from_millis(cancel_after_ms), &probe);
                let config = batched(config(8, 4, 2, 0), batch_max);
                run_until(&config, &probe, shutdown).await
            }
        });

        let created = probe.seen.produced.load(SeqCst);
        assert_eq!(
            created,
            report.handled + report.failed,
            "cancelled after {cancel_after_ms} ms: {created} items created, {} handled or failed",
            report.handled + report.failed
        );
        assert_eq!(
            report.unaccounted, 0,
            "cancelled after {cancel_after_ms} ms"
        );
    }
}

/// The flume hazard: a blocking `send` or `recv` in async code holds the
/// runtime thread. On a `current_thread` runtime with capacity 1, a blocking
/// call in a producer or an async worker deadlocks the pipeline; with thread
/// workers, a blocking producer stalls every other task{% if worker_kind == "threads" %} (and the handler,
/// which blocks its worker thread here, must not reach the runtime){% endif %}. The pipeline runs
/// under a deadline kept outside its runtime (a deadlocked runtime cannot
/// fire its own timeout), next to a heartbeat task that must keep ticking
/// while items flow.
#[test]
fn nothing_blocks_the_runtime() {
    let (report, beats, elapsed) = within(Duration::from_secs(30), || {
        runtime(false).block_on(async {
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
        })
    });
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
#[test]
fn handler_errors_are_counted_and_the_run_goes_on() {
    let probe = Probe {
        fail_every: Some(10),
        work: Duration::from_micros(500),
        ..Probe::default()
    };
    let report = on_runtime(Duration::from_secs(30), move || async move {
        run(&config(3, 4, 8, 1_000), &probe).await
    });
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

/// A panicking worker fails the run and stops the producers; the other
/// workers drain what is already queued. Only the item in the panicking
/// hands is lost, and the report says so exactly. The producers would go on
/// forever otherwise (`--items 0`), and the other workers with them, so the
/// run ending at all shows that they stopped.
#[test]
fn a_panicking_worker_stops_the_producers_and_the_others_drain() {
    let probe = Probe {
        panic_at: Some(100),
        ..Probe::default()
    };
    let report = on_runtime(Duration::from_secs(30), {
        let probe = probe.clone();
        move || async move { run(&config(2, 4, 16, 0), &probe).await }
    });
    assert_eq!(report.failed_stages, 1);
    assert!(!report.is_success());
    assert!(
        !report.cancelled,
        "the stop came from the panic, not a shutdown"
    );
    assert_eq!(report.produced, probe.seen.produced.load(SeqCst));
    assert_eq!(report.lost, 1, "the item in the panicking hands");
    assert_eq!((report.failed, report.unaccounted), (0, 0));
    assert_eq!(
        report.handled,
        report.produced - 1,
        "the others drained the rest"
    );
    assert_eq!(
        probe.seen.checksum.load(SeqCst),
        probe
            .seen
            .produced_checksum
            .load(SeqCst)
            .wrapping_sub(mix(100)),
        "the handled items are not the produced ones minus the lost one"
    );
}

/// When every worker panics, the producers must still stop. The stop token
/// cannot reach a producer that waits in `send_async` for a slot on a full
/// channel (that wait is never raced, see `src/pipeline.rs`); only the end of
/// the last `Receiver` wakes it. Slow handlers let the producers fill the
/// channel and wait before the workers panic, so if `run` kept a `Receiver`
/// alive, the producers would wait forever and the deadline would pass.
/// The item each waiting producer holds when its send fails goes down with
/// the workers, and the report counts it as lost, like those in the channel.
#[test]
fn when_every_worker_panics_the_run_ends() {
    let (producers, workers, capacity) = (8, 3, 8);
    let probe = Probe {
        panic_from: Some(0),
        work: Duration::from_millis(100),
        ..Probe::default()
    };
    let report = on_runtime(Duration::from_secs(30), {
        let probe = probe.clone();
        move || async move { run(&config(producers, workers, capacity, 0), &probe).await }
    });
    assert_eq!(report.failed_stages, workers);
    assert_eq!((report.handled, report.failed), (0, 0));
    assert_eq!(report.lost, report.produced, "nothing was handled");
    assert_eq!(report.unaccounted, 0);
    assert_eq!(
        report.produced,
        probe.seen.produced.load(SeqCst),
        "an item a source made was not counted"
    );
    assert!(
        report.produced <= pipeline::max_in_flight(capacity, producers, workers, 1) as u64,
        "the channel, one item per waiting producer and one per worker: {report:?}"
    );
}

/// A panicking producer stops the others, even when they would otherwise
/// produce forever, and the run ends as an error. Its source panicked
/// before it returned an item, so the producer held none and nothing is
/// lost: the workers drain everything queued.
#[test]
fn a_panicking_producer_stops_the_run() {
    let probe = Probe {
        source_panics_at: Some(1_001),
        ..Probe::default()
    };
    let report = on_runtime(Duration::from_secs(30), move || async move {
        run(&config(4, 2, 8, 0), &probe).await
    });
    assert_eq!(report.failed_stages, 1);
    assert!(!report.is_success());
    assert_eq!((report.lost, report.unaccounted), (0, 0));
    assert_eq!(report.produced, report.handled + report.failed);
}

/// The flume hazard under sustained load: flume's futures do not take part
/// in tokio's cooperative scheduling, so a producer whose channel always has
/// room and a worker that always finds an item never wait, and unless they
/// yield to the scheduler, the timer that cancels the run never fires. A huge
/// capacity keeps the channel from ever filling, capacity 1 keeps it always
/// just full, and four producers and four workers keep every runtime thread
/// busy. The deadline is kept outside the runtime, so a regression fails here
/// instead of hanging.
#[test]
fn cancellation_is_heard_under_sustained_load() {
    for multi_thread in [false, true] {
        for capacity in [1, 999_999] {
            let case = format!("multi_thread={multi_thread} capacity={capacity}");
            let report = within(Duration::from_secs(30), move || {
                runtime(multi_thread).block_on(async {
                    let probe = Probe::default();
                    let (shutdown, _) = cancel_after(Duration::from_millis(200), &probe);
                    run_until(&config(4, 4, capacity, 0), &probe, shutdown).await
                })
            });
            assert!(report.cancelled, "{case}");
            assert!(report.is_success(), "{case}: {report:?}");
            assert_eq!(report.produced, report.handled, "{case}");
        }
    }
}

/// After a shutdown request the drain gets `--drain-timeout`; then the run
/// stops waiting, counts what is left as abandoned, and says so in its exit
/// code. The workers are stuck in their first items for an hour; the run
/// still ends about a second after the cancellation.
#[test]
fn a_drain_longer_than_the_deadline_is_abandoned() {
    let probe = Probe {
        work: Duration::from_secs(3600),
        ..Probe::default()
    };
    let mut config = config(2, 2, 8, 0);
    config.drain_timeout = 1;
    let started = Instant::now();
    let report = on_runtime(Duration::from_secs(30), move || async move {
        let (shutdown, _) = cancel_after(Duration::from_millis(50), &probe);
        run_until(&config, &probe, shutdown).await
    });

    assert!(report.drain_timed_out);
    assert_eq!(report.exit_code(), EXIT_DRAIN_TIMEOUT);
    assert!(report.abandoned > 0);
    assert_eq!(
        report.abandoned,
        report.produced - report.handled - report.failed
    );
    assert_eq!((report.lost, report.unaccounted), (0, 0));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// A worker that panics mid-run: everything it finished before the panic is
/// reported as handled or failed, and only the rest as lost. One producer and
/// one worker keep the items in order, so the numbers are exact: the worker
/// finished exactly the items before the one it panicked on, and the items
/// still queued went down with the last receiver.
///
/// With batches, an item that failed earlier in the panicking batch was not
/// settled yet (it would have been retried or dead-lettered after the
/// batch), so it is lost rather than failed; the handled count stays exact.
#[test]
fn a_panic_mid_run_reports_exact_numbers() {
    let panic_at = 300;
    for batch_max in [1, 64] {
        let probe = Probe {
            panic_at: Some(panic_at),
            fail_every: Some(7),
            ..Probe::default()
        };
        let config = batched(config(1, 1, 512, 100_000), batch_max);
        let report = on_runtime(Duration::from_secs(30), move || async move {
            run(&config, &probe).await
        });

        let failed = (0..panic_at).filter(|seq| seq % 7 == 0).count() as u64;
        assert_eq!(report.handled, panic_at - failed, "batch_max {batch_max}");
        let settled_below = if batch_max == 1 {
            panic_at
        } else {
            panic_at / 64 * 64
        };
        let settled = (0..settled_below).filter(|seq| seq % 7 == 0).count() as u64;
        assert_eq!(report.failed, settled, "batch_max {batch_max}");
        assert_eq!(
            report.lost,
            report.produced - report.handled - report.failed,
            "batch_max {batch_max}"
        );
        assert_eq!((report.failed_stages, report.unaccounted), (1, 0));
    }
}

/// A worker stuck on one slow item for longer than `--stall-warn-secs`, with
/// items waiting behind it, makes one stall episode; the run then recovers
/// and succeeds. One worker, so nobody else takes the waiting items.
#[test]
fn a_stuck_worker_is_reported_as_a_stall() {
    let stalled_run = |slow: Duration, stall_warn_secs: u64| {
        let probe = Probe {
            slow_item: Some((5, slow)),
            ..Probe::default()
        };
        let mut config = config(1, 1, 4, 20);
        config.stall_warn_secs = stall_warn_secs;
        on_runtime(Duration::from_secs(30), move || async move {
            run(&config, &probe).await
        })
    };
    // Samples every 250 ms: a 2.5 s stall is seen well past the 1 s mark.
    let report = stalled_run(Duration::from_millis(2_500), 1);
    assert_eq!(report.stall_episodes, 1);
    assert_eq!(report.handled, 20);
    assert!(report.is_success());

    let report = stalled_run(Duration::from_millis(1_500), 0);
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
                        let delay = Duration::from_millis(5 + 7 * round);
                        let (shutdown, _) = cancel_after(delay, &probe);
                        let config = batched(config(16, 4, capacity, 0), batch_max);
                        run_until(&config, &probe, shutdown).await
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

/// An input the source cannot read is counted as rejected (and so failed),
/// the producer goes on with the next one, and the run still succeeds.
#[test]
fn rejected_inputs_are_counted_and_the_producer_goes_on() {
    let probe = Probe {
        reject_every: Some(10),
        ..Probe::default()
    };
    let report = on_runtime(Duration::from_secs(30), {
        let probe = probe.clone();
        move || async move { run(&config(3, 4, 8, 1_000), &probe).await }
    });
    assert_eq!(report.rejected, 100);
    assert_eq!(report.failed, 100, "a rejected input counts as failed");
    assert_eq!(report.handled, 900);
    assert_eq!(report.produced, 1_000, "made: 900 items and 100 rejects");
    assert_eq!(probe.seen.produced.load(SeqCst), 900);
    assert_eq!(report.unaccounted, 0);
    assert!(report.is_success(), "{report:?}");
}

/// A workload whose sources wait for input that never comes, in `open` or
/// in `next`: a quiet socket, an empty pipe.
struct Quiet {
    wait_in_open: bool,
}

/// A source with nothing to say.
struct Silent;

impl Source for Silent {
    type Item = u64;

    async fn next(&mut self) -> anyhow::Result<Option<u64>> {
        std::future::pending().await
    }
}

impl Workload for Quiet {
    type Item = u64;
    type Source = Silent;

    fn producers(&self) -> usize {
        2
    }

    async fn open(&self, _producer: usize) -> anyhow::Result<Option<Silent>> {
        if self.wait_in_open {
            std::future::pending::<()>().await;
        }
        Ok(Some(Silent))
    }

    async fn handle(&self, _item: &u64) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A source waiting for input does not hold up a shutdown: the wait, in
/// `open` or in `next`, is raced against the stop token and dropped, and the
/// run ends at once with a clean report.
#[test]
fn a_waiting_source_does_not_hold_up_shutdown() {
    for wait_in_open in [true, false] {
        let started = Instant::now();
        let report = on_runtime(Duration::from_secs(10), move || async move {
            let shutdown = CancellationToken::new();
            tokio::spawn({
                let shutdown = shutdown.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    shutdown.cancel();
                }
            });
            run_pipeline(&config(2, 2, 8, 0), Quiet { wait_in_open }, shutdown).await
        });
        let case = format!("wait_in_open={wait_in_open}");
        assert!(report.cancelled, "{case}");
        assert!(report.is_success(), "{case}: {report:?}");
        assert_eq!(report.produced, 0, "{case}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{case}: {:?}",
            started.elapsed()
        );
    }
}

/// A workload whose source for producer 1 cannot be opened.
struct OneBadSource;

impl Workload for OneBadSource {
    type Item = u64;
    type Source = Numbers;

    fn producers(&self) -> usize {
        2
    }

    async fn open(&self, producer: usize) -> anyhow::Result<Option<Numbers>> {
        anyhow::ensure!(producer != 1, "test source {producer} cannot be opened");
        // Endless: only the failed stage stops it.
        Ok(Some(Numbers::share(producer, 2, 0)))
    }

    async fn handle(&self, _item: &u64) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A source that cannot be opened fails the run like a panicking producer:
/// the other producers stop (theirs would go on for ever), the workers drain
/// what was queued, and the exit code says so.
#[test]
fn a_source_that_cannot_be_opened_fails_the_run() {
    let report = on_runtime(Duration::from_secs(30), || async {
        run_pipeline(&config(2, 2, 8, 0), OneBadSource, CancellationToken::new()).await
    });
    assert_eq!(report.failed_stages, 1);
    assert!(!report.is_success());
    assert_eq!((report.lost, report.unaccounted), (0, 0));
    assert_eq!(report.produced, report.handled);
}

/// A handler that awaits tokio's timer, on both runtime flavors. Worker
/// {% if worker_kind == "tasks" %}tasks await it like any task; worker threads{% else %}threads{% endif %} run the handler with
/// `Handle::block_on`, and the timer is driven by the runtime's own threads
/// (on a `current_thread` runtime, the one in `Runtime::block_on`), so the
/// same handler must work there too.
#[test]
fn a_handler_may_await_tokio_timers_on_either_flavor() {
    struct Waits(Arc<AtomicU64>);

    impl Workload for Waits {
        type Item = u64;
        type Source = Numbers;

        fn producers(&self) -> usize {
            2
        }

        async fn open(&self, producer: usize) -> anyhow::Result<Option<Numbers>> {
            Ok(Some(Numbers::share(producer, 2, 100)))
        }

        async fn handle(&self, _item: &u64) -> anyhow::Result<()> {
            tokio::time::sleep(Duration::from_millis(1)).await;
            self.0.fetch_add(1, SeqCst);
            Ok(())
        }
    }

    for multi_thread in [false, true] {
        let handled = Arc::new(AtomicU64::new(0));
        let report = within(Duration::from_secs(30), {
            let handled = Arc::clone(&handled);
            move || {
                runtime(multi_thread).block_on(async {
                    let workload = Waits(handled);
                    run_pipeline(&config(2, 4, 8, 0), workload, CancellationToken::new()).await
                })
            }
        });
        assert_eq!(report.handled, 100, "multi_thread={multi_thread}");
        assert_eq!(handled.load(SeqCst), 100, "multi_thread={multi_thread}");
        assert!(report.is_success(), "multi_thread={multi_thread}");
    }
}
