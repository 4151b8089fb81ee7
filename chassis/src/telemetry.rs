//! Logging and tracing setup, kept in one place so tests can leave it out.
//!
//! Logs go to stderr; stdout is reserved for the final report. `RUST_LOG`
//! overrides the default filter, e.g. `RUST_LOG=debug` or
//! `RUST_LOG=info,my_service::pipeline=trace`.

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call it once, from `main`; tests that never
/// call it run silently.
pub fn init() {
    // `from_env_lossy` keeps the valid directives of a malformed `RUST_LOG`
    // instead of refusing to start over a logging typo.
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env_lossy();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr){% if log_format == "json" %}
        .json(){% endif %}
        .init();
}
