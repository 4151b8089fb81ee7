//! ✎ YOUR CODE GOES HERE.
//!
//! This is the one module to edit: what an item is, the blocking I/O at the
//! edge of the service, and the async handling in the middle. It knows
//! nothing about channels, threads or tasks; `src/pipeline.rs` decides where
//! each method runs:
{% if direction == "sync-to-async" %}//!
//! - [`BlockingSource::read`] runs on the source threads (`std::thread`), so
//!   it may block: the demo reads lines from `--input` (a file, or stdin
//!   with `-`), or makes numbered items when no input is given.
//! - [`Workload::process`] runs on async worker tasks, so it must await and
//!   never block: the demo waits `--work-us` microseconds.
{% elsif direction == "async-to-sync" %}//!
//! - [`Workload::produce`] runs on async producer tasks, so it must await and
//!   never block: the demo waits `--work-us` microseconds and makes a
//!   numbered record.
//! - [`BlockingSink::write`] runs on the sink thread (`std::thread`), so it
//!   may block: the demo writes one line per record to `--output`, or
//!   discards them when no output is given.
{% else %}//!
//! - [`BlockingSource::read`] runs on the source threads (`std::thread`), so
//!   it may block: the demo reads lines from `--input` (a file, or stdin
//!   with `-`), or makes numbered items when no input is given.
//! - [`Workload::process`] runs on async worker tasks, so it must await and
//!   never block: the demo waits `--work-us` microseconds and upper-cases
//!   the line.
//! - [`BlockingSink::write`] runs on the sink thread (`std::thread`), so it
//!   may block: the demo writes one line per record to `--output`, or
//!   discards them when no output is given.
{% endif %}
{% if direction != "async-to-sync" %}mod input;
{% endif %}{% if direction != "sync-to-async" %}mod output;
{% endif %}
{% if direction == "sync-to-async" %}use std::future::Future;
use std::pin::Pin;
{% endif %}use std::time::Duration;

{% if direction == "sync-to-async" %}use tokio_util::either::Either;
{% endif %}use tokio_util::sync::CancellationToken;

use crate::config::Config;
{% if direction == "sync-to-async" %}use crate::pipeline::{BlockingSource, Workload};
{% elsif direction == "async-to-sync" %}use crate::pipeline::{BlockingSink, OutputPath, Workload};
{% else %}use crate::pipeline::{BlockingSink, BlockingSource, OutputPath, Workload};
{% endif %}use crate::report::Report;

/// Runs the pipeline with the demo workload; `main` calls this. An error
/// means the workload could not start, and `main` reports it as a
/// configuration error. The demo opens its files on the pipeline's threads,
/// where blocking is allowed, so it has none to report here.
pub async fn run(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Report> {
    Ok(crate::pipeline::run(config, DemoWorkload::new(config), shutdown).await)
}

/// One unit of work. Replace it with your own type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number, unique within a run.
    pub seq: u64,
    /// The input line; empty for generated records (an empty `String` does
    /// not allocate).
    pub text: String,
}

/// The demo workload that `main` runs.
pub struct DemoWorkload {
    work: Duration,
{% if direction != "async-to-sync" %}    input: Option<input::Lines>,
{% endif %}{% if direction != "sync-to-async" %}    output: Option<OutputPath>,
{% endif %}}

impl DemoWorkload {
    /// Builds the workload from the service configuration. It opens nothing:
    /// files are opened on the pipeline's threads, where blocking is allowed.
    pub fn new(config: &Config) -> Self {
        Self {
            work: config.work(),
{% if direction != "async-to-sync" %}            input: config.topology.input.clone().map(input::Lines::new),
{% endif %}{% if direction != "sync-to-async" %}            output: config.topology.output.clone(),
{% endif %}        }
    }

    /// Simulated async work. tokio's timer has millisecond resolution: a few
    /// microseconds still wait about 1 ms.
    async fn simulate_work(&self) {
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
    }
}
{% if direction != "async-to-sync" %}
impl BlockingSource for DemoWorkload {
    type Item = Record;

    fn read(&self, seq: u64) -> anyhow::Result<Option<Record>> {
        let Some(input) = &self.input else {
            return Ok(Some(Record {
                seq,
                text: String::new(),
            }));
        };
        Ok(input.next_line()?.map(|text| Record { seq, text }))
    }
}
{% endif %}{% if direction != "sync-to-async" %}
impl BlockingSink for DemoWorkload {
    type Output = Record;
    type Writer = output::Output;

    fn open(&self) -> anyhow::Result<output::Output> {
        output::open(self.output.as_ref())
    }

    fn write(&self, writer: &mut output::Output, record: Record) -> anyhow::Result<()> {
        output::write_line(writer, record.seq, &record.text)
    }

    fn finish(&self, writer: output::Output) -> anyhow::Result<()> {
        output::flush(writer)
    }
}
{% endif %}
impl Workload for DemoWorkload {
{% if direction == "sync-to-async" %}    // Not an `async fn`, which your handler should be: the benchmarks run
    // this demo with no work, where handling a record costs nothing, and the
    // compiler inlined neither the poll of an `async fn` nor that of a future
    // holding the sleep into the workers' loop. A ready future beside a boxed
    // one it does inline. In two paired runs against the bare flume loop,
    // 4 source threads and 4 workers at capacity 64 went from 0.90x and
    // 1.07x to 1.21x and 1.09x, and at capacity 1 from 0.88x and 0.82x to
    // 0.91x and 1.07x. The async-to-sync demo, tried the same way, lost a
    // quarter with 4 producers, so it stays an `async fn`
    // (docs/measured-results.md in the Conveyor repository).
    fn process(&self, record: Record) -> impl Future<Output = anyhow::Result<()>> + Send {
        if self.work.is_zero() {
            std::hint::black_box(record);
            return Either::Right(std::future::ready(Ok(())));
        }
        let slow: SlowPath<'_> = Box::pin(async move {
            self.simulate_work().await;
            std::hint::black_box(record);
            Ok(())
        });
        Either::Left(slow)
    }
{% elsif direction == "async-to-sync" %}    async fn produce(&self, seq: u64) -> anyhow::Result<Record> {
        self.simulate_work().await;
        Ok(Record {
            seq,
            text: String::new(),
        })
    }
{% else %}    async fn process(&self, mut record: Record) -> anyhow::Result<Record> {
        self.simulate_work().await;
        record.text.make_ascii_uppercase();
        Ok(record)
    }
{% endif %}}
{% if direction == "sync-to-async" %}
/// The demo's handling when it has work to simulate: boxed, so the future a
/// worker keeps per record stays small, and `dyn`, so polling it is one call.
type SlowPath<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;
{% endif %}