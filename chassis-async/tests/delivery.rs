//! Batches with a linger, retries and the dead-letter file, proven on the
//! real `pipeline::run` with workloads that record every attempt. Real time,
//! not paused: a paused clock jumps ahead whenever the runtime is idle, even
//! while thread workers are busy.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use {{crate_name}}::config::Config;
use {{crate_name}}::delivery::Batch;
use {{crate_name}}::pipeline;
use {{crate_name}}::report::Report;
use {{crate_name}}::workload_api::{Numbers, Source, Workload};

/// Numbered items from one producer, whose handler fails each item a given
/// number of times before it passes, and records every attempt.
struct Flaky {
    items: u64,
    /// Attempts that fail for item `id`; `u32::MAX` fails it for ever.
    failures: fn(u64) -> u32,
    attempts: Mutex<HashMap<u64, u32>>,
}

impl Flaky {
    fn new(items: u64, failures: fn(u64) -> u32) -> Self {
        Self {
            items,
            failures,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt at `id`; `Err` while it should still fail.
    fn attempt(&self, id: u64) -> anyhow::Result<()> {
        let mut attempts = self.attempts.lock().unwrap();
        let attempt = attempts.entry(id).or_default();
        *attempt += 1;
        anyhow::ensure!(*attempt > (self.failures)(id), "item {id} failed");
        Ok(())
    }

    fn attempts_at(&self, id: u64) -> u32 {
        self.attempts.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

impl Workload for Flaky {
    type Item = u64;
    type Source = Numbers;

    fn producers(&self) -> usize {
        1
    }

    async fn open(&self, _producer: usize) -> anyhow::Result<Option<Numbers>> {
        Ok(Some(Numbers::share(0, 1, self.items)))
    }

    async fn handle(&self, id: &u64) -> anyhow::Result<()> {
        self.attempt(*id)
    }
}

/// [`Flaky`] with a batch handler that writes a batch in one go: one failing
/// item fails the whole batch, the way a bulk insert in one transaction does.
struct AllOrNothing(Flaky);

impl Workload for AllOrNothing {
    type Item = u64;
    type Source = Numbers;

    fn producers(&self) -> usize {
        1
    }

    async fn open(&self, producer: usize) -> anyhow::Result<Option<Numbers>> {
        self.0.open(producer).await
    }

    async fn handle(&self, id: &u64) -> anyhow::Result<()> {
        self.0.handle(id).await
    }

    async fn handle_batch(&self, batch: &mut Batch<'_, u64>) -> anyhow::Result<()> {
        let mut outcome = Ok(());
        for id in batch.items() {
            if let Err(error) = self.0.attempt(*id) {
                outcome = Err(error);
            }
        }
        outcome.map_err(|error| error.context("the bulk write failed"))
    }
}

/// A source that makes one item per `every`, for ever, and notes when.
struct Trickle {
    next: u64,
    every: Duration,
    made: Arc<Mutex<Vec<Instant>>>,
}

impl Source for Trickle {
    type Item = u64;

    async fn next(&mut self) -> anyhow::Result<Option<u64>> {
        // Cancel safe: the item is made after the wait, never during it.
        tokio::time::sleep(self.every).await;
        self.made.lock().unwrap().push(Instant::now());
        self.next += 1;
        Ok(Some(self.next - 1))
    }
}

/// A trickling source, or one that makes `burst` items and then waits for
/// ever; its handler notes when each item was handled.
struct Timed {
    every: Duration,
    burst: Option<u64>,
    made: Arc<Mutex<Vec<Instant>>>,
    handled: Mutex<HashMap<u64, Instant>>,
}

impl Timed {
    fn new(every: Duration, burst: Option<u64>) -> Self {
        Self {
            every,
            burst,
            made: Arc::default(),
            handled: Mutex::default(),
        }
    }
}

/// [`Timed`]'s source.
enum TimedSource {
    Trickle(Trickle),
    Burst { left: u64, next: u64 },
}

impl Source for TimedSource {
    type Item = u64;

    async fn next(&mut self) -> anyhow::Result<Option<u64>> {
        match self {
            Self::Trickle(trickle) => trickle.next().await,
            Self::Burst { left: 0, .. } => std::future::pending().await,
            Self::Burst { left, next } => {
                *left -= 1;
                *next += 1;
                Ok(Some(*next - 1))
            }
        }
    }
}

impl Workload for Timed {
    type Item = u64;
    type Source = TimedSource;

    fn producers(&self) -> usize {
        1
    }

    async fn open(&self, _producer: usize) -> anyhow::Result<Option<TimedSource>> {
        Ok(Some(match self.burst {
            Some(left) => TimedSource::Burst { left, next: 0 },
            None => TimedSource::Trickle(Trickle {
                next: 0,
                every: self.every,
                made: Arc::clone(&self.made),
            }),
        }))
    }

    async fn handle(&self, id: &u64) -> anyhow::Result<()> {
        self.handled.lock().unwrap().insert(*id, Instant::now());
        Ok(())
    }
}

fn config(flags: &[&str]) -> Config {
    let base = [
        "test",
        "--capacity=4",
        "--progress-secs=0",
        "--stall-warn-secs=0",
    ];
    Config::try_parse_from(base.iter().chain(flags)).expect("valid test configuration")
}

/// Runs `workload` to its end, or until `cancel_after` has passed, within a
/// deadline.
async fn run<W: Workload>(config: &Config, workload: W, cancel_after: Option<Duration>) -> Report {
    let shutdown = CancellationToken::new();
    if let Some(delay) = cancel_after {
        let cancel = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            cancel.cancel();
        });
    }
    timeout(
        Duration::from_secs(60),
        pipeline::run(config, workload, shutdown),
    )
    .await
    .expect("the run must end")
    .expect("the run must start")
}

/// The dead-letter file's records.
fn dead_letters(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("the dead-letter file exists")
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

/// A source that makes an item now and then: each one is handled about
/// `--linger-ms` after it was made (not when 100 more have come), and no
/// sooner, as its batch waits that long for company.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_source_gets_each_item_handled_within_the_linger() {
    let linger = Duration::from_millis(40);
    let workload = Arc::new(Timed::new(Duration::from_millis(150), None));
    let config = config(&["--batch-max=100", "--linger-ms=40"]);
    let report = run(
        &config,
        Arc::clone(&workload),
        Some(Duration::from_millis(1_000)),
    )
    .await;

    let made = workload.made.lock().unwrap().clone();
    let handled = workload.handled.lock().unwrap().clone();
    assert!(made.len() >= 4, "only {} items made", made.len());
    assert_eq!(report.handled, made.len() as u64);
    for (id, made_at) in made.iter().enumerate() {
        let latency = handled[&(id as u64)] - *made_at;
        // The last item may be flushed early by the shutdown.
        if id + 1 < made.len() {
            assert!(latency >= linger, "item {id} sent after {latency:?}");
        }
        assert!(
            latency < linger + Duration::from_millis(100),
            "item {id} waited {latency:?}"
        );
    }
}

/// A shutdown while a batch is half full (its source waiting, its linger far
/// off) sends that batch: every item the source made is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_flushes_the_half_full_batch() {
    let workload = Arc::new(Timed::new(Duration::ZERO, Some(5)));
    let config = config(&["--batch-max=100", "--linger-ms=60000"]);
    let started = Instant::now();
    let report = run(
        &config,
        Arc::clone(&workload),
        Some(Duration::from_millis(200)),
    )
    .await;

    assert!(report.cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the linger held up the drain"
    );
    assert_eq!((report.produced, report.handled), (5, 5));
    assert_eq!(workload.handled.lock().unwrap().len(), 5);
}

/// Items that fail twice and then pass are retried and handled, item by item
/// and in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_until_they_pass() {
    for batch_max in ["1", "8"] {
        let workload = Arc::new(Flaky::new(300, |id| if id % 3 == 0 { 2 } else { 0 }));
        let config = config(&[
            &format!("--batch-max={batch_max}"),
            "--retries=3",
            "--retry-backoff-ms=1",
        ]);
        let report = run(&config, Arc::clone(&workload), None).await;

        assert!(report.is_success(), "batch_max {batch_max}: {report:?}");
        assert_eq!((report.handled, report.failed), (300, 0));
        assert_eq!(report.retried, 100, "batch_max {batch_max}");
        assert_eq!((report.dead_lettered, report.dropped), (0, 0));
        assert_eq!(workload.attempts_at(3), 3);
        assert_eq!(workload.attempts_at(4), 1);
    }
}

/// Items that always fail are tried `1 + --retries` times and end in the
/// dead-letter file, each with its error and attempt count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_that_always_fail_end_in_the_dead_letter_file() {
    for batch_max in ["1", "8"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.ndjson");
        let workload = Arc::new(Flaky::new(200, |id| if id % 5 == 0 { u32::MAX } else { 0 }));
        let config = config(&[
            &format!("--batch-max={batch_max}"),
            "--retries=2",
            "--retry-backoff-ms=1",
            &format!("--dead-letter={}", path.display()),
        ]);
        let report = run(&config, Arc::clone(&workload), None).await;

        assert!(
            report.is_success(),
            "item failures are not a pipeline error"
        );
        assert_eq!(
            (report.handled, report.failed),
            (160, 40),
            "batch_max {batch_max}"
        );
        assert_eq!(
            (report.retried, report.dead_lettered, report.dropped),
            (40, 40, 0)
        );
        let records = dead_letters(&path);
        let mut ids: Vec<u64> = records
            .iter()
            .map(|r| r["item"].as_u64().unwrap())
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..200).step_by(5).collect::<Vec<u64>>());
        for record in &records {
            assert_eq!(record["attempts"], 3, "{record}");
            let id = record["item"].as_u64().unwrap();
            assert_eq!(record["error"], format!("item {id} failed"));
            assert_eq!(workload.attempts_at(id), 3);
        }
    }
}

/// Without a dead-letter file, items that fail are counted as dropped, and
/// the run still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_file_failed_items_are_dropped_and_counted() {
    let workload = Flaky::new(100, |id| if id % 10 == 0 { u32::MAX } else { 0 });
    let report = run(
        &config(&["--retries=1", "--retry-backoff-ms=1"]),
        workload,
        None,
    )
    .await;
    assert!(report.is_success());
    assert_eq!(
        (report.failed, report.dead_lettered, report.dropped),
        (10, 0, 10)
    );
}

/// A batch handler that fails: every item of the batch fails with its
/// error, the batch is retried, and what still fails is dead-lettered
/// while the items that passed on the retry are handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_batch_handler_is_retried_then_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.ndjson");
    // Item 17 always fails, item 40 fails once: the batches that hold them
    // fail whole on their first attempt.
    let workload = Arc::new(AllOrNothing(Flaky::new(64, |id| match id {
        17 => u32::MAX,
        40 => 1,
        _ => 0,
    })));
    let config = config(&[
        "--batch-max=8",
        "--linger-ms=60000",
        "--retries=2",
        "--retry-backoff-ms=1",
        &format!("--dead-letter={}", path.display()),
    ]);
    let report = run(&config, Arc::clone(&workload), None).await;

    assert!(report.is_success(), "{report:?}");
    // 16..24 and 40..48 failed whole on the first attempt and were retried.
    assert_eq!(report.retried, 16);
    // 16..24 fails whole on every attempt, 17 being in it.
    assert_eq!((report.handled, report.failed), (56, 8));
    assert_eq!(report.dead_lettered, 8);
    let records = dead_letters(&path);
    let ids: Vec<u64> = records
        .iter()
        .map(|r| r["item"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (16..24).collect::<Vec<u64>>());
    assert!(
        records[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("the bulk write failed"),
        "{}",
        records[0]
    );
    assert_eq!(workload.0.attempts_at(40), 2);
}

/// A shutdown during a backoff wait ends the wait: the item goes to the
/// dead-letter file with the attempts it had, and the drain does not sit
/// out the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_a_backoff_dead_letters_the_item() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.ndjson");
    let workload = Flaky::new(0, |_| u32::MAX);
    let config = config(&[
        "--retries=5",
        "--retry-backoff-ms=60000",
        &format!("--dead-letter={}", path.display()),
    ]);
    let started = Instant::now();
    let report = run(&config, workload, Some(Duration::from_millis(200))).await;

    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the drain sat out a backoff"
    );
    assert!(report.is_success(), "{report:?}");
    assert!(report.failed > 0);
    assert_eq!(report.handled, 0);
    assert_eq!(report.dead_lettered, report.failed);
    assert_eq!(report.produced, report.failed, "{report:?}");
    for record in dead_letters(&path) {
        assert_eq!(record["attempts"], 1, "{record}");
    }
}

/// The dead-letter file is appended to: what earlier runs left there stays
/// for replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_earlier_runs_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dead.ndjson");
    std::fs::write(&path, "{\"item\":1,\"error\":\"earlier\",\"attempts\":1}\n").unwrap();
    let config = config(&[&format!("--dead-letter={}", path.display())]);
    let workload = Flaky::new(10, |id| if id == 4 { u32::MAX } else { 0 });
    let report = run(&config, workload, None).await;

    assert_eq!(report.dead_lettered, 1);
    let records = dead_letters(&path);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["error"], "earlier");
    assert_eq!(records[1]["item"], 4);
}

/// A dead-letter path that cannot be created fails the run before it starts.
#[tokio::test]
async fn an_unwritable_dead_letter_file_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("dead.ndjson");
    let config = config(&[&format!("--dead-letter={}", path.display())]);
    let started = pipeline::run(&config, Flaky::new(10, |_| 0), CancellationToken::new()).await;
    let error = started.expect_err("a dead-letter file in a missing directory");
    assert!(format!("{error:#}").contains("dead.ndjson"), "{error:#}");
}
