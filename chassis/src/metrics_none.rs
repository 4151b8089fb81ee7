//! No metrics endpoint (generated with `metrics=none`): the progress line and
//! the final report are what the service says about itself. Generate with
//! `-d metrics=prometheus` for `/metrics`, `/healthz` and `/readyz`.
//!
//! The items below keep the rest of the chassis the same in both kinds of
//! project, and cost nothing: there is nothing to serve or record.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::counters::Counters;

/// Flags of the metrics endpoint: none without one.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {}

/// Nothing to serve.
pub fn serve(_args: &MetricsArgs) -> anyhow::Result<()> {
    Ok(())
}

/// Nothing watches the run.
pub fn watch_run(_counters: &Arc<Counters>, _stop: &CancellationToken, _done: &CancellationToken) {}

/// Times nothing: handling times are recorded only for the metrics endpoint.
#[derive(Debug, Default)]
pub struct HandleTimer;

impl HandleTimer {
    /// A timer for one consumer.
    pub const fn new() -> Self {
        Self
    }

    /// Call before handling an item; pass what it returns to [`Self::stop`].
    #[inline]
    pub fn start(&mut self) -> Option<std::time::Instant> {
        None
    }

    /// Call after handling the item [`Self::start`] was called for.
    #[inline]
    pub fn stop(&mut self, _started: Option<std::time::Instant>) {}
}
