//! ✎ YOUR CODE GOES HERE.
//!
//! This is the one module to edit: what an item is, how one is made, and how
//! one is handled. It knows nothing about channels, tasks or threads; the
//! pipeline calls [`Workload::produce`] from the producer tasks and
//! [`Workload::handle`] from whichever worker is free.
//!
//! Workers in this project are {% if worker_kind == "tasks" %}async tasks (`worker_kind=tasks`), so `handle` is an `async fn` that must never block{% else %}OS threads (`worker_kind=threads`), so `handle` is a plain `fn` that may block{% endif %}.
//! The signature of `handle` is the one thing here that depends on the worker
//! kind chosen when the project was generated. Async tasks await an
//! `async fn` on the tokio runtime: await I/O in it, and never block, since a
//! blocking call stalls every task on that runtime thread. OS threads call a
//! plain `fn` outside the runtime: block or compute in it as long as needed,
//! with no `.await`. See the `Workload` trait in `src/workers.rs`.
//!
//! The demo below makes numbered jobs and "handles" each by waiting
//! `--work-us` microseconds, which stands in for real work.

use std::time::Duration;

use crate::config::Config;
use crate::pipeline::Workload;

/// One unit of work. Replace it with your own type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// Sequence number, unique within a run.
    pub id: u64,
}

/// The demo workload that `main` runs.
#[derive(Debug, Clone)]
pub struct DemoWorkload {
    work: Duration,
}

impl DemoWorkload {
    /// Builds the workload from the service configuration.
    pub fn new(config: &Config) -> Self {
        Self {
            work: config.work(),
        }
    }
}

impl Workload for DemoWorkload {
    type Item = Job;

    fn produce(&self, seq: u64) -> Job {
        Job { id: seq }
    }

    {% if worker_kind == "tasks" %}async {% endif %}fn handle(&self, job: Job) -> anyhow::Result<()> {
        // Simulated work: {% if worker_kind == "tasks" %}waiting on tokio's timer, as I/O would (it has millisecond resolution){% else %}the thread sleeps, standing in for blocking or CPU-bound work{% endif %}.
        if !self.work.is_zero() {
            {% if worker_kind == "tasks" %}tokio::time::sleep(self.work).await;{% else %}std::thread::sleep(self.work);{% endif %}
        }
        std::hint::black_box(job);
        Ok(())
    }
}
