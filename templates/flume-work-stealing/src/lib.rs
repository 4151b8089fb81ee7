//! A service built around flume work-stealing: async producers, each reading
//! a source of its own, feed one bounded `flume` channel, and a pool of
//! workers, each holding a clone of the receiver, takes items off it as they
//! become free.
//!
//! Where things live:
//! - [`workload`]: your item type, sources and handler; the one module to
//!   edit. The same file works unchanged in every Conveyor template with
//!   async workers, and for both worker kinds here.
//! - [`workload_api`]: what the pipeline asks of a workload, the same in
//!   every Conveyor template with async workers.
//! - [`io`]: example sources and sinks (lines from files, stdin and TCP
//!   clients; NDJSON output) to copy from.
//! - [`pipeline`]: the topology (producers, channel, draining on shutdown).
{% if transport == "nats" %}//! - [`nats`]: the stage boundary as a NATS JetStream work queue, so that
//!   producers and workers can run as separate processes on many machines.
{% endif %}//! - [`workers`]: how one worker runs, as an async task or an OS thread,
//!   whichever kind this project was generated with.
//! - [`config`], [`telemetry`], [`metrics`], [`shutdown`], [`supervisor`],
//!   [`coop`], [`counters`], [`report`]: the service chassis, the same in
//!   every Conveyor template.

pub mod config;
pub mod coop;
pub mod counters;
pub mod delivery;
pub mod io;
pub mod metrics;
{% if transport == "nats" %}pub mod nats;
{% endif %}pub mod pipeline;
pub mod report;
pub mod shutdown;
pub mod supervisor;
pub mod telemetry;
pub mod workers;
pub mod workload;
pub mod workload_api;
