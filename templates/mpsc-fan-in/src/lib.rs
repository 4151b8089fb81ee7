//! A service built around an mpsc fan-in: many async producers, one bounded
//! `tokio::sync::mpsc` channel, one consumer.
//!
//! Where things live:
//! - [`workload`]: your item type, sources and handler; the one module to edit.
//! - [`workload_api`]: what the pipeline asks of a workload, the same in
//!   every Conveyor template with async workers.
//! - [`io`]: example sources and sinks (lines from files, stdin and TCP
//!   clients; NDJSON output) to copy from.
//! - [`pipeline`]: the topology (tasks, channel, draining on shutdown).
//! - [`config`], [`telemetry`], [`metrics`], [`shutdown`], [`supervisor`],
//!   [`coop`], [`counters`], [`report`]: the service chassis, the same in
//!   every Conveyor template.

pub mod config;
pub mod coop;
pub mod counters;
pub mod delivery;
pub mod io;
pub mod metrics;
pub mod pipeline;
pub mod report;
pub mod shutdown;
pub mod supervisor;
pub mod telemetry;
pub mod workload;
pub mod workload_api;
