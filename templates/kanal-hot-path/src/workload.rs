//! ✎ YOUR CODE GOES HERE.
//!
//! This is the one module to edit: what an item is, how one is made, and how
//! one is handled. It knows nothing about channels or tasks; the pipeline in
//! `pipeline.rs` calls [`Workload::produce`] from the producer tasks and
//! [`Workload::handle`] from the consumer.
//!
//! This template exists for the case where the channel is the bottleneck, so
//! the hot path stays lean only if the workload does too: keep the item small
//! (a few words, `Copy` if it can be; large payloads belong behind an index or
//! a pooled buffer, not in a fresh `Box` per item) and avoid allocating in
//! `produce` and `handle`.
//!
//! The demo below makes numbered jobs and "handles" each by waiting
//! `--work-us` microseconds, which stands in for I/O such as a database write.

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

    async fn handle(&self, job: Job) -> anyhow::Result<()> {
        // tokio's timer has millisecond resolution: a few microseconds of
        // simulated work still waits about 1 ms.
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        std::hint::black_box(job);
        Ok(())
    }
}
