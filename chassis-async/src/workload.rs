//! ✎ YOUR CODE GOES HERE.
//!
//! This is the one module to edit: what an item is, where the items come
//! from (a [`Source`] per producer), and how one is handled. It knows nothing
//! about channels, tasks or threads, and the same file works unchanged in
//! every Conveyor template with async workers (mpsc-fan-in,
//! flume-work-stealing, kanal-hot-path): the contract is in
//! `src/workload_api.rs`. `main` calls [`run`].
//!
//! There are two demos. [`DemoWorkload`] numbers its jobs (`--items`, shared
//! by `--producers`): an item of one word, the lean path the benchmarks
//! measure. [`LineWorkload`] takes lines from a file, stdin (`--input`) or
//! TCP clients (`--listen`). Both "handle" an item by waiting `--work-us`
//! microseconds, standing in for I/O such as a database write, and write it
//! to `--output` as NDJSON if asked. With batches (`--batch-max` above 1)
//! they handle a whole batch as one bulk write would: one wait, and one
//! write of all its lines. The readers and the writer they use
//! live in `src/io/`: copy from there.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncRead;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::Batch;
use crate::io::lines::{LineError, LineReader};
use crate::io::ndjson::NdjsonFile;
use crate::io::tcp::{Connections, Listener};
use crate::pipeline;
use crate::report::Report;
use crate::workload_api::{Numbers, Source, Workload};

/// Runs the pipeline with the demo the flags ask for. An error means the
/// workload could not start (an input that cannot be opened, a port that is
/// taken): `main` reports it as a configuration error. With your own
/// workload this becomes
/// `pipeline::run(config, YourWorkload::new(config)?, shutdown).await`.
pub async fn run(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Report> {
    let args = &config.topology.workload;
    if args.input.is_some() || args.listen.is_some() {
        pipeline::run(config, LineWorkload::new(config)?, shutdown).await
    } else {
        pipeline::run(config, DemoWorkload::new(config)?, shutdown).await
    }
}

/// Flags of the demo workload. Replace them with your own.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkloadArgs {
    /// Read items as lines from this file (`-` for stdin) instead of numbering
    /// them. One producer reads it; `--items` and `--producers` do not apply.
    #[arg(long, value_name = "PATH", conflicts_with = "listen")]
    pub input: Option<PathBuf>,

    /// Accept TCP clients on this address (`PORT` alone means 127.0.0.1:PORT)
    /// and take each line they send as an item. One producer per client, at
    /// most `--max-connections`; runs until a shutdown signal.
    #[arg(long, value_name = "ADDR", value_parser = listen_addr)]
    pub listen: Option<SocketAddr>,

    /// Clients read at once with `--listen`; more wait until one disconnects.
    #[arg(long, value_name = "N", default_value = "64", value_parser = crate::config::task_count, allow_negative_numbers = true)]
    pub max_connections: usize,

    /// Longest line accepted from `--input` or `--listen`, in bytes; longer
    /// lines are rejected and counted as failed.
    #[arg(long, value_name = "BYTES", default_value = "65536",
          value_parser = clap::value_parser!(u64).range(1..=16 * 1024 * 1024))]
    pub max_line_bytes: u64,

    /// Write every handled item to this file as NDJSON.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// A numbered job. Replace it with your own type.
///
/// One word, and `Copy`: the pipeline moves every item through its channel,
/// and a small item is what lets the channel go at full speed (kanal, for
/// one, passes an item of pointer size without copying it at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// Sequence number, unique within a run.
    pub id: u64,
}

/// The demo of numbered jobs: `--items` of them, shared by `--producers`.
pub struct DemoWorkload {
    producers: usize,
    items: u64,
    sink: Sink,
}

impl DemoWorkload {
    /// Builds the workload from the service configuration; fails when
    /// `--output` cannot be created.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            producers: config.producers,
            items: config.items,
            sink: Sink::new(config)?,
        })
    }
}

impl Workload for DemoWorkload {
    type Item = Job;
    type Source = Jobs;

    fn producers(&self) -> usize {
        self.producers
    }

    async fn open(&self, producer: usize) -> anyhow::Result<Option<Jobs>> {
        Ok(Some(Jobs(Numbers::share(
            producer,
            self.producers,
            self.items,
        ))))
    }

    // Not an `async fn`, unlike `LineWorkload::handle`: the benchmarks run
    // this demo with no work and no output, where a job costs one check, and
    // the compiler inlined neither the poll of an `async fn` nor that of a
    // future holding the slow path inline into the pipeline's loop. A ready
    // future beside a boxed `dyn` one it does inline: kanal-hot-path's
    // benchmark went from 4.1 to 3.4 ms per 200,000 jobs. A handler whose
    // every item waits on I/O gains nothing from this: write `async fn`.
    fn handle(&self, job: &Job) -> impl Future<Output = anyhow::Result<()>> + Send {
        if self.sink.has_work() {
            Either::Left(self.sink.handle(std::slice::from_ref(job)))
        } else {
            Either::Right(std::future::ready(Ok(())))
        }
    }

    // The same shape as `handle`, for the same reason. A real batch handler
    // looks like `LineWorkload::handle_batch`.
    fn handle_batch(
        &self,
        batch: &mut Batch<'_, Job>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        if self.sink.has_work() {
            Either::Left(self.sink.handle(batch.items()))
        } else {
            Either::Right(std::future::ready(Ok(())))
        }
    }

    async fn close(&self) -> anyhow::Result<()> {
        self.sink.close().await
    }
}

/// The demo's handling when there is work to do: boxed, so the future the
/// pipeline keeps per job stays small, and `dyn`, so polling it is one call.
type SlowPath<'a> = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

/// One producer's share of the numbered jobs.
pub struct Jobs(Numbers);

impl Source for Jobs {
    type Item = Job;

    async fn next(&mut self) -> anyhow::Result<Option<Job>> {
        Ok(self.0.next_number().map(|id| Job { id }))
    }
}

/// A line read from `--input` or `--listen`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Line {
    /// The order in which the line arrived, unique within a run.
    pub id: u64,
    /// The line, without its line ending.
    #[serde(rename = "line")]
    pub text: String,
}

/// The demo of lines: from a file or stdin with one producer, or from TCP
/// clients with one producer per client.
pub struct LineWorkload {
    input: LineInput,
    sink: Sink,
    /// Numbers the lines of every source, in the order they arrive.
    lines_read: Arc<AtomicU64>,
}

/// Where the lines come from.
enum LineInput {
    /// A file or stdin, taken by the one producer that opens it.
    Reader(Mutex<Option<LineReader<Reader>>>),
    Listener(Arc<Listener>),
}

/// A file or stdin.
type Reader = Box<dyn AsyncRead + Send + Unpin>;

impl LineWorkload {
    /// Builds the workload from the service configuration: opens the input
    /// and the output, or binds the listener, before the pipeline starts.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let args = &config.topology.workload;
        let max_line_bytes = usize::try_from(args.max_line_bytes)?;
        let input = match (&args.input, args.listen) {
            (_, Some(addr)) => LineInput::Listener(Arc::new(Listener::bind(
                addr,
                args.max_connections,
                max_line_bytes,
            )?)),
            (Some(path), None) => {
                let reader: Reader = if path.as_os_str() == "-" {
                    Box::new(tokio::io::stdin())
                } else {
                    let file = std::fs::File::open(path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    Box::new(tokio::fs::File::from_std(file))
                };
                LineInput::Reader(Mutex::new(Some(LineReader::new(reader, max_line_bytes))))
            }
            (None, None) => anyhow::bail!("lines need --input or --listen"),
        };
        Ok(Self {
            input,
            sink: Sink::new(config)?,
            lines_read: Arc::new(AtomicU64::new(0)),
        })
    }
}

impl Workload for LineWorkload {
    type Item = Line;
    type Source = LineSource;

    fn producers(&self) -> usize {
        match &self.input {
            LineInput::Reader(_) => 1,
            LineInput::Listener(listener) => listener.max_connections(),
        }
    }

    async fn open(&self, _producer: usize) -> anyhow::Result<Option<LineSource>> {
        let ids = Arc::clone(&self.lines_read);
        Ok(match &self.input {
            LineInput::Reader(reader) => reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .map(|reader| LineSource::Reader { reader, ids }),
            LineInput::Listener(listener) => Some(LineSource::Clients {
                connections: Connections::new(Arc::clone(listener)),
                ids,
            }),
        })
    }

    async fn handle(&self, line: &Line) -> anyhow::Result<()> {
        self.sink.handle(std::slice::from_ref(line)).await
    }

    // A bulk write: one wait and one write for the whole batch, the way a
    // database insert of many rows (`INSERT … VALUES (…), (…), …`) or a bulk
    // HTTP request would go. An `Err` fails every item of the batch; a sink
    // that reports failures per record would call `batch.fail(index, error)`
    // for those and return `Ok`.
    async fn handle_batch(&self, batch: &mut Batch<'_, Line>) -> anyhow::Result<()> {
        self.sink.handle(batch.items()).await
    }

    async fn close(&self) -> anyhow::Result<()> {
        self.sink.close().await
    }
}

/// One producer's lines.
pub enum LineSource {
    /// Lines of a file or stdin.
    Reader {
        reader: LineReader<Reader>,
        ids: Arc<AtomicU64>,
    },
    /// Lines from TCP clients, one client at a time.
    Clients {
        connections: Connections,
        ids: Arc<AtomicU64>,
    },
    /// An input that failed: nothing more comes from it.
    Ended,
}

impl Source for LineSource {
    type Item = Line;

    async fn next(&mut self) -> anyhow::Result<Option<Line>> {
        match self {
            Self::Reader { reader, ids } => match reader.next_line().await {
                Ok(Some(text)) => Ok(Some(numbered(ids, text))),
                Ok(None) => Ok(None),
                Err(LineError::Bad(bad)) => Err(bad.into()),
                // A file that cannot be read any further ends this source
                // after the error is counted.
                Err(LineError::Io(error)) => {
                    tracing::error!(%error, "input unreadable, no more lines from it");
                    *self = Self::Ended;
                    Err(anyhow::Error::new(error).context("reading the input"))
                }
            },
            Self::Clients { connections, ids } => {
                Ok(Some(numbered(ids, connections.next_line().await?)))
            }
            Self::Ended => Ok(None),
        }
    }
}

fn numbered(ids: &AtomicU64, text: String) -> Line {
    Line {
        id: ids.fetch_add(1, Relaxed),
        text,
    }
}

/// What both demos do with an item: wait `--work-us`, then write it to
/// `--output` if one is given.
struct Sink {
    work: Duration,
    output: Option<NdjsonFile>,
}

impl Sink {
    fn new(config: &Config) -> anyhow::Result<Self> {
        let output = config.topology.workload.output.as_deref();
        Ok(Self {
            work: config.work(),
            output: output.map(NdjsonFile::create).transpose()?,
        })
    }

    /// Whether handling an item does anything: wait, or write.
    fn has_work(&self) -> bool {
        !self.work.is_zero() || self.output.is_some()
    }

    /// Waits `--work-us` once, then writes `items` to the output, if any,
    /// one JSON line each and all in one write. The lines are rendered
    /// before the future is made, so it holds them rather than a borrow of
    /// the items.
    fn handle<T: serde::Serialize>(&self, items: &[T]) -> SlowPath<'_> {
        let lines = self.output.as_ref().map(|_| json_lines(items));
        Box::pin(async move {
            // tokio's timer has millisecond resolution: a few microseconds of
            // simulated work still waits about 1 ms.
            if !self.work.is_zero() {
                tokio::time::sleep(self.work).await;
            }
            if let (Some(output), Some(lines)) = (&self.output, lines) {
                output.write_lines(&lines?).await?;
            }
            Ok(())
        })
    }

    async fn close(&self) -> anyhow::Result<()> {
        match &self.output {
            Some(output) => output.flush().await,
            None => Ok(()),
        }
    }
}

/// `items` as NDJSON: one line of JSON each, every line ending in `\n`.
fn json_lines<T: serde::Serialize>(items: &[T]) -> anyhow::Result<String> {
    let mut lines = String::new();
    for item in items {
        lines.push_str(&serde_json::to_string(item)?);
        lines.push('\n');
    }
    Ok(lines)
}

/// Parses `--listen`: `IP:PORT`, or a bare `PORT` on the loopback address.
fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    crate::config::port_or_socket_addr(text)
        .ok_or_else(|| format!("`{text}` is not PORT or IP:PORT (e.g. 127.0.0.1:7878)"))
}
