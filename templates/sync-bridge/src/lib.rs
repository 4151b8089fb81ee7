//! A service built around a sync bridge: blocking code on its own threads and
//! async tasks on the tokio runtime, joined by bounded `flume` channels.
//!
//! Where things live:
//! - [`workload`]: your item type, blocking I/O and async handling; the one
//!   module to edit.
//! - [`pipeline`]: the topology (threads, tasks, channels, draining on shutdown).
//! - [`config`], [`telemetry`], [`shutdown`], [`report`]: the service chassis.

pub mod config;
pub mod pipeline;
pub mod report;
pub mod shutdown;
pub mod telemetry;
pub mod workload;
