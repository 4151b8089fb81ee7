//! A service built around a sync bridge: blocking code on its own threads and
//! async tasks on the tokio runtime, joined by bounded `flume` channels.
//!
//! Where things live:
//! - [`workload`]: your item type, blocking I/O and async handling; the one
//!   module to edit.
//! - [`pipeline`]: the topology (threads, tasks, channels).
//! - [`config`], [`telemetry`], [`metrics`], [`shutdown`], [`supervisor`],
//!   [`coop`], [`counters`], [`report`]: the service chassis, the same in
//!   every Conveyor template.

pub mod config;
pub mod coop;
pub mod counters;
pub mod metrics;
pub mod pipeline;
pub mod report;
pub mod shutdown;
pub mod supervisor;
pub mod telemetry;
pub mod workload;
