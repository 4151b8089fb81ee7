//! The topology: a bridge between blocking code on `std::thread`s and async
//! tasks on the tokio runtime, over bounded `flume` channels. flume gives one
//! channel a blocking end (`send`/`recv`) and an async end
//! (`send_async`/`recv_async`), so each side uses the calls that suit it.
//!
//! The rules this module keeps, and its tests guard:
//!
//! - Blocking calls run only on the pipeline's own threads, and async code
//!   only ever awaits `send_async`/`recv_async`. A blocking `send` or `recv`
//!   inside a task would stall a runtime thread, and on a `current_thread`
//!   runtime, stall everything.
//! - Every async loop over a flume channel calls
//!   [`Pacer::step`](crate::coop::Pacer::step) once per item. flume's
//!   futures take no part in tokio's cooperative budget: on a channel that
//!   never runs empty (or never fills) they are ready on every poll, and a
//!   task awaiting them in a loop would never hand its thread back to the
//!   scheduler. The signal listener, the timers and the drain deadline would
//!   starve with it.
//!
//! The direction's `run` only builds the channels and hands each stage to
//! the [`Supervisor`](crate::supervisor::Supervisor), which watches them,
//! waits for the drain and writes the report. The run ends when the source
//! side is finished and every queued item has been handled, or when the
//! drain after a shutdown request outlives `--drain-timeout`.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
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

/// How many threads started by pipelines in this process are still running
/// their stage. When `run` returns within its drain deadline, the threads of
/// that run are done: each has returned from its stage before the
/// supervisor heard that it ended.
pub fn live_threads() -> usize {
    LIVE_THREADS.load(SeqCst)
}

/// Wraps the body of a pipeline thread so that [`live_threads`] counts it
/// from now until the body has returned or unwound. Dropped unrun (the OS
/// refused the thread), it stops counting too.
fn counted<F>(body: F) -> impl FnOnce() -> anyhow::Result<()> + Send + 'static
where
    F: FnOnce() -> anyhow::Result<()> + Send + 'static,
{
    let alive = LiveThread::new();
    move || {
        let _alive = alive;
        body()
    }
}

/// One count in [`LIVE_THREADS`], held for as long as it lives.
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
