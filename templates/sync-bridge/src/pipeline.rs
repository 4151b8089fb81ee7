//! The topology: a bridge between blocking code on `std::thread`s and async
//! tasks on the tokio runtime, over bounded `flume` channels. flume gives one
//! channel a blocking end (`send`/`recv`) and an async end
//! (`send_async`/`recv_async`), so each side uses the calls that suit it.
//!
//! The rule this module keeps, and its tests guard: blocking calls run only
//! on the pipeline's own threads, and async code only ever awaits
//! `send_async`/`recv_async`. A blocking `send` or `recv` inside a task would
//! stall a runtime thread, and on a `current_thread` runtime, stall everything.
//!
//! The run ends when the source side is finished and every queued item has
//! been handled. Every thread the pipeline starts is joined before `run`
//! returns.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::thread::JoinHandle;

use tokio_util::sync::CancellationToken;
{% if direction == "sync-to-async" %}
mod source;
mod sync_to_async;

pub use source::{BlockingSource, InputPath};
pub use sync_to_async::{TopologyArgs, Workload, max_in_flight, run};
{% elsif direction == "async-to-sync" %}
mod async_to_sync;
mod sink;

pub use async_to_sync::{TopologyArgs, Workload, max_in_flight, run};
pub use sink::{BlockingSink, OutputPath};
{% else %}
mod both;
mod sink;
mod source;

pub use both::{TopologyArgs, Workload, max_in_flight, run};
pub use sink::{BlockingSink, OutputPath};
pub use source::{BlockingSource, InputPath};
{% endif %}
/// The name this topology reports itself under.
pub const TOPOLOGY: &str = "sync-bridge";

/// The direction this project was generated for.
pub const DIRECTION: &str = "{{direction}}";

/// Consumers sample the queue depth once per this many receives.
const DEPTH_SAMPLE_EVERY: u64 = 64;

/// Pipeline threads started and not yet finished, in this whole process.
static LIVE_THREADS: AtomicUsize = AtomicUsize::new(0);

/// How many threads started by pipelines in this process are still running.
/// After `run` returns, the threads of that run are finished and joined.
pub fn live_threads() -> usize {
    LIVE_THREADS.load(SeqCst)
}

/// Counts one live thread from before it starts until its body has returned
/// or unwound.
struct LiveThread;

impl LiveThread {
    fn new() -> Self {
        LIVE_THREADS.fetch_add(1, SeqCst);
        Self
    }
}

impl Drop for LiveThread {
    fn drop(&mut self) {
        LIVE_THREADS.fetch_sub(1, SeqCst);
    }
}

/// A blocking stage on its own OS thread.
struct BlockingThread {
    name: String,
    handle: JoinHandle<anyhow::Result<()>>,
}

/// Starts `body` on a named OS thread. If the body fails or panics, `stop` is
/// cancelled so the rest of the pipeline winds down instead of waiting for it.
/// Returns `None` (and cancels `stop`) when the OS refuses a new thread.
fn spawn_thread<F>(name: String, stop: &CancellationToken, body: F) -> Option<BlockingThread>
where
    F: FnOnce() -> anyhow::Result<()> + Send + 'static,
{
    let alive = LiveThread::new();
    let stop_on_failure = stop.clone();
    let spawned = std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let _alive = alive;
            let guard = StopOnPanic(stop_on_failure);
            let result = body();
            if result.is_err() {
                guard.0.cancel();
            }
            result
        });
    match spawned {
        Ok(handle) => Some(BlockingThread { name, handle }),
        Err(error) => {
            tracing::error!(thread = name, %error, "cannot start a pipeline thread");
            stop.cancel();
            None
        }
    }
}

/// Waits for a pipeline thread without blocking the runtime: `join` runs on
/// tokio's blocking pool. Returns whether the thread failed or panicked.
async fn join_thread(thread: BlockingThread) -> bool {
    let BlockingThread { name, handle } = thread;
    match tokio::task::spawn_blocking(move || handle.join()).await {
        Ok(Ok(Ok(()))) => false,
        Ok(Ok(Err(error))) => {
            tracing::error!(
                thread = name,
                error = format!("{error:#}"),
                "pipeline thread failed"
            );
            true
        }
        Ok(Err(_panic)) => {
            tracing::error!(thread = name, "pipeline thread panicked");
            true
        }
        Err(error) => {
            tracing::error!(thread = name, %error, "cannot join a pipeline thread");
            true
        }
    }
}

/// Logs a task's panic and says whether there was one.
fn joined_with_panic(result: Result<(), tokio::task::JoinError>, task: &str) -> bool {
    match result {
        Ok(()) => false,
        Err(error) => {
            tracing::error!(task, %error, "pipeline task panicked");
            true
        }
    }
}

/// Cancels the run when dropped during a panic, so one failing stage stops
/// the sources instead of leaving them running until their quota is done.
struct StopOnPanic(CancellationToken);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.cancel();
        }
    }
}
