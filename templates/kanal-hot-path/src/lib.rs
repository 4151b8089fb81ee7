//! A throughput-first service: many async producers, one bounded `kanal`
//! channel, one consumer, and as little work per item as the shape allows.
//!
//! Where things live:
//! - [`workload`]: your item type and handler; the one module to edit.
//! - [`pipeline`]: the topology (tasks, channel, draining on shutdown).
//! - [`config`], [`telemetry`], [`shutdown`], [`report`]: the service chassis.

pub mod config;
pub mod pipeline;
pub mod report;
pub mod shutdown;
pub mod telemetry;
pub mod workload;
