//! The life of one run, the same for every topology: start the stages, watch
//! them while they work, wait for them to end (after a shutdown request, no
//! longer than the drain deadline), and turn the counters into the report.
//!
//! A topology builds its channel, hands each producer and worker loop to
//! [`Supervisor::spawn_task`] or [`Supervisor::spawn_thread`], drops its own
//! channel ends, and calls [`Supervisor::finish`].

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::counters::{Counters, Totals};
use crate::report::{Balance, Report, per_second};

/// How a stage ended: `Err` describes a panic or an error.
pub type StageEnd = Result<(), String>;

/// Runs the stages of one pipeline run and reports on them.
pub struct Supervisor {
    topology: &'static str,
    started: std::time::Instant,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    stop: CancellationToken,
    stages: JoinSet<StageEnd>,
    names: HashMap<Id, String>,
    failed_to_start: usize,
    drain_deadline: Option<Duration>,
    progress_every: Option<Duration>,
    stall_after: Option<Duration>,
    done: CancellationToken,
}

impl Supervisor {
    /// Prepares a run with counter slots for `producers` producers and
    /// `workers` workers. `shutdown` is the caller's request to stop.
    pub fn new(
        topology: &'static str,
        config: &Config,
        shutdown: CancellationToken,
        producers: usize,
        workers: usize,
    ) -> Self {
        let counters = Arc::new(Counters::new(producers, workers));
        // A failed stage stops the sources through this child token without
        // cancelling the caller's token.
        let stop = shutdown.child_token();
        let done = CancellationToken::new();
        crate::metrics::watch_run(&counters, &stop, &done);
        Self {
            topology,
            started: std::time::Instant::now(),
            counters,
            stop,
            shutdown,
            stages: JoinSet::new(),
            names: HashMap::new(),
            failed_to_start: 0,
            drain_deadline: config.drain_deadline(),
            progress_every: config.progress_interval(),
            stall_after: config.stall_warning_after(),
            done,
        }
    }

    /// The run's counters, for the stages to publish into.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// Cancelled when the sources should stop: on a shutdown request, or
    /// when a stage fails.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// The stop token as a flag that costs one load to read, for loops that
    /// look at it before every item. It follows the token through a small
    /// task, so it turns true a moment after the token is cancelled.
    pub fn stop_flag(&self) -> Arc<StopFlag> {
        let flag = Arc::new(StopFlag::default());
        let follower = Arc::clone(&flag);
        let (stop, done) = (self.stop.clone(), self.done.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => follower.0.store(true, Relaxed),
                () = done.cancelled() => {}
            }
        });
        flag
    }

    /// Runs `stage` as a task inside `span`. If it panics or returns an
    /// error, the sources stop and the run fails. After a panic the stop
    /// comes as the panic unwinds, after the panic hook has printed it, so
    /// sources may make a few more items first: they are drained and counted
    /// like any others.
    ///
    /// The task enters and leaves `span` on every poll, and a loop over a
    /// channel is polled up to once per item: an enabled span then costs a
    /// fifth of a fan-in's throughput at capacity 1. Give loops a
    /// `debug_span!`, which costs nothing at the default `info` level and
    /// still tags their log lines with `RUST_LOG=debug`.
    pub fn spawn_task<F>(&mut self, name: String, span: tracing::Span, stage: F)
    where
        F: Future + Send + 'static,
        F::Output: StageOutcome,
    {
        let stop = self.stop.clone();
        let handle = self.stages.spawn(async move {
            // A panic unwinds through this guard, which stops the sources so
            // the rest of the pipeline winds down instead of running on.
            let _stop_sources_on_panic = StopOnPanic(stop.clone());
            let end = stage.instrument(span).await.into_end();
            if end.is_err() {
                stop.cancel();
            }
            end
        });
        self.names.insert(handle.id(), name);
    }

    /// Runs `body` on an OS thread called `name`. If it panics or returns an
    /// error, the sources stop and the run fails; if the OS refuses the
    /// thread, likewise.
    pub fn spawn_thread<F>(&mut self, name: String, body: F)
    where
        F: FnOnce() -> anyhow::Result<()> + Send + 'static,
    {
        let (report_end, ended) = tokio::sync::oneshot::channel::<StageEnd>();
        let stop = self.stop.clone();
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let end = match std::panic::catch_unwind(AssertUnwindSafe(body)) {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(format!("failed: {error:#}")),
                    Err(panic) => Err(format!("panicked: {}", panic_message(panic.as_ref()))),
                };
                if end.is_err() {
                    stop.cancel();
                }
                let _ = report_end.send(end);
            });
        match spawned {
            // The thread is not joined: it reports its end through the
            // channel, so waiting for it never blocks the runtime, and a
            // thread stuck past the drain deadline cannot hold up the exit.
            Ok(_detached) => {
                let handle = self.stages.spawn(async move {
                    ended
                        .await
                        .unwrap_or_else(|_| Err("ended without reporting".to_owned()))
                });
                self.names.insert(handle.id(), name);
            }
            Err(error) => {
                tracing::error!(stage = name, %error, "cannot start a pipeline thread");
                self.failed_to_start += 1;
                self.stop.cancel();
            }
        }
    }

    /// Waits for every stage to end, or, once the sources have been told to
    /// stop (a shutdown request or a failed stage), for the drain deadline,
    /// whichever comes first; then builds the report.
    /// Stages still running at the deadline are abandoned: tasks are aborted,
    /// threads are left to the process exit.
    pub async fn finish(mut self) -> Report {
        let monitor = tokio::spawn(monitor(
            Arc::clone(&self.counters),
            self.progress_every,
            self.stall_after,
            self.done.clone(),
        ));
        let mut failed_stages = self.failed_to_start;
        // The deadline follows the stop token, not only the shutdown request:
        // after a stage fails, a source blocked in a read that never returns
        // (stdin with no more lines) must not keep the run alive for ever.
        let mut deadline = pin!(drain_deadline(self.stop.clone(), self.drain_deadline));
        let drain_timed_out = loop {
            // Stages are joined in the order they end, so a failure is logged
            // as it happens. The drain deadline is raced alongside: a stage
            // stuck in a slow handler must not keep the process past it.
            // Losing the race only drops a `join_next` call, which is cancel
            // safe; the stages themselves keep running.
            tokio::select! {
                ended = self.stages.join_next_with_id() => match ended {
                    Some(ended) => failed_stages += usize::from(self.failed(ended)),
                    None => break false,
                },
                () = &mut deadline => break true,
            }
        };
        let totals = self.counters.totals();
        self.done.cancel();
        let stall_episodes = monitor.await.unwrap_or_default();
        self.stages.abort_all();

        let balance = Balance::of(&totals, failed_stages, drain_timed_out);
        log_balance(&totals, &balance, drain_timed_out);
        Report {
            topology: self.topology,
            produced: totals.made(),
            handled: totals.handled,
            failed: totals.failed_or_rejected(),
            rejected: totals.rejected,
            retried: totals.retried,
            dead_lettered: totals.dead_lettered,
            dropped: totals.dropped(),
            abandoned: balance.abandoned,
            lost: balance.lost,
            unaccounted: balance.unaccounted,
            handled_per_worker: totals.handled_per_worker,
            elapsed: self.started.elapsed(),
            peak_queue_depth: self.counters.peak_queue_depth(),
            failed_stages,
            stall_episodes,
            cancelled: self.shutdown.is_cancelled(),
            drain_timed_out,
            transport: Vec::new(),
        }
    }

    /// Logs a stage that ended badly and says whether it did.
    fn failed(&self, ended: Result<(Id, StageEnd), JoinError>) -> bool {
        let (id, problem) = match ended {
            Ok((_, Ok(()))) => return false,
            Ok((id, Err(problem))) => (id, problem),
            Err(error) if error.is_panic() => {
                let id = error.id();
                let panic = error.into_panic();
                (id, format!("panicked: {}", panic_message(panic.as_ref())))
            }
            Err(error) => (error.id(), error.to_string()),
        };
        let stage = self.names.get(&id).map_or("a stage", String::as_str);
        tracing::error!(stage, problem, "pipeline stage ended badly");
        true
    }
}

/// What a stage task returns: nothing, or a result whose error fails the run.
pub trait StageOutcome {
    /// How the stage ended.
    fn into_end(self) -> StageEnd;
}

impl StageOutcome for () {
    fn into_end(self) -> StageEnd {
        Ok(())
    }
}

impl StageOutcome for anyhow::Result<()> {
    fn into_end(self) -> StageEnd {
        self.map_err(|error| format!("failed: {error:#}"))
    }
}

/// The stop token as a plain flag: written once, read by a hot loop for the
/// price of one load. Alone on its cache line, so counters written next to
/// it never evict it.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct StopFlag(AtomicBool);

impl StopFlag {
    /// Whether the sources should stop.
    pub fn is_set(&self) -> bool {
        self.0.load(Relaxed)
    }
}

/// Cancels the token when dropped during a panic.
struct StopOnPanic(CancellationToken);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.cancel();
        }
    }
}

/// Ends `limit` after `stop` is cancelled; never, without a limit.
async fn drain_deadline(stop: CancellationToken, limit: Option<Duration>) {
    stop.cancelled().await;
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

/// Says what happened to the items that did not finish.
fn log_balance(totals: &Totals, balance: &Balance, drain_timed_out: bool) {
    if drain_timed_out {
        tracing::error!(
            abandoned = balance.abandoned,
            "the drain outlived --drain-timeout; unfinished items are abandoned"
        );
    }
    if balance.lost > 0 {
        tracing::error!(items = balance.lost, "items lost with a failed stage");
    }
    if balance.unaccounted != 0 {
        tracing::error!(
            unaccounted = balance.unaccounted,
            produced = totals.produced,
            finished = totals.finished(),
            "the report does not balance: this is a bug in the pipeline"
        );
    }
    tracing::info!(
        produced = totals.produced,
        handled = totals.handled,
        failed = totals.failed,
        rejected = totals.rejected,
        handled_per_worker = ?totals.handled_per_worker,
        "pipeline finished"
    );
}

/// The text a panic was raised with, if it was text.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Logs progress and watches for stalls until `done` is cancelled; returns
/// the number of stall episodes.
async fn monitor(
    counters: Arc<Counters>,
    progress_every: Option<Duration>,
    stall_after: Option<Duration>,
    done: CancellationToken,
) -> u64 {
    // Stalls are sampled four times per warning period, so one is reported
    // at most a quarter period late.
    let tick = match (progress_every, stall_after.map(|after| after / 4)) {
        (None, None) => return 0,
        (Some(every), None) => every,
        (None, Some(sample)) => sample,
        (Some(every), Some(sample)) => every.min(sample),
    };
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is due at once; there is nothing to say yet. Times are
    // the ticks' scheduled instants rather than `Instant::now()`, so that a
    // progress line due every tick is not skipped for being a hair early.
    // Even that first tick waits for the timer wheel to turn (up to a
    // millisecond, and later while the workers are busy), so it is raced
    // against `done` too: otherwise every run, however short, would end up
    // to a millisecond late, waiting for this task.
    let start = tokio::select! {
        () = done.cancelled() => return 0,
        start = ticks.tick() => start,
    };
    let mut progress = progress_every.map(|every| ProgressLine::new(every, start));
    let mut stall = stall_after.map(|after| StallWatch::new(after, start));
    loop {
        // `done` is cancelled once the stages have ended; the final report
        // replaces the progress line from then on.
        let now = tokio::select! {
            () = done.cancelled() => break,
            now = ticks.tick() => now,
        };
        let totals = counters.totals();
        if let Some(progress) = &mut progress {
            progress.observe(now, &totals, counters.queue_depth());
        }
        if let Some(stall) = &mut stall {
            stall.observe(now, &totals);
            counters.set_stall_episodes(stall.episodes);
        }
    }
    stall.map_or(0, |stall| stall.episodes)
}

/// The periodic progress line: throughput since the last line, queue depth.
struct ProgressLine {
    every: Duration,
    last: (Instant, u64),
}

impl ProgressLine {
    fn new(every: Duration, start: Instant) -> Self {
        Self {
            every,
            last: (start, 0),
        }
    }

    fn observe(&mut self, now: Instant, totals: &Totals, queue_depth: usize) {
        if now - self.last.0 < self.every {
            return;
        }
        let finished = totals.finished();
        let rate = per_second(finished - self.last.1, now - self.last.0);
        tracing::info!(
            produced = totals.produced,
            handled = totals.handled,
            failed = totals.failed,
            rejected = totals.rejected,
            items_per_sec = rate.round() as u64,
            queue_depth,
            "progress"
        );
        self.last = (now, finished);
    }
}

/// Notices when no item finishes for `after` while items are waiting: a
/// queue that stays full, or consumers stuck in a handler. Warns once per
/// episode and says when it is over.
struct StallWatch {
    after: Duration,
    finished: u64,
    since: Instant,
    stalled: bool,
    episodes: u64,
}

impl StallWatch {
    fn new(after: Duration, start: Instant) -> Self {
        Self {
            after,
            finished: 0,
            since: start,
            stalled: false,
            episodes: 0,
        }
    }

    fn observe(&mut self, now: Instant, totals: &Totals) {
        let finished = totals.finished();
        let waiting = totals.produced.saturating_sub(finished);
        if finished != self.finished || waiting == 0 {
            if self.stalled {
                tracing::info!(
                    stalled_secs = (now - self.since).as_secs_f64(),
                    "items are finishing again after a stall"
                );
                self.stalled = false;
            }
            self.finished = finished;
            self.since = now;
        } else if !self.stalled && now - self.since >= self.after {
            tracing::warn!(
                waiting,
                stalled_secs = (now - self.since).as_secs_f64(),
                "no item has finished for --stall-warn-secs while items are waiting: \
                 the consumers are stuck or too slow"
            );
            self.stalled = true;
            self.episodes += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(produced: u64, finished: u64) -> Totals {
        Totals {
            produced,
            handled: finished,
            ..Totals::default()
        }
    }

    #[test]
    fn a_stall_is_one_episode_however_long_it_lasts() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut watch = StallWatch::new(2 * second, start);
        watch.observe(start + second, &totals(10, 5));
        watch.observe(start + 2 * second, &totals(10, 5));
        assert_eq!(watch.episodes, 0, "not yet stalled for the full period");
        watch.observe(start + 4 * second, &totals(10, 5));
        watch.observe(start + 9 * second, &totals(12, 5));
        assert_eq!(watch.episodes, 1);
        watch.observe(start + 10 * second, &totals(12, 6));
        assert!(!watch.stalled, "progress ends the episode");
        watch.observe(start + 13 * second, &totals(12, 6));
        assert_eq!(watch.episodes, 2);
    }

    #[test]
    fn an_idle_pipeline_is_not_stalled() {
        let start = Instant::now();
        let mut watch = StallWatch::new(Duration::from_secs(1), start);
        watch.observe(start + Duration::from_secs(60), &totals(7, 7));
        assert_eq!(watch.episodes, 0, "nothing waits, so nothing is stuck");
    }
}
