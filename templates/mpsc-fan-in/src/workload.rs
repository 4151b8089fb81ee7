//! ✎ YOUR CODE GOES HERE.
//!
//! This is the one module to edit: what an item is, where the items come
//! from (a [`Source`] per producer), and how one is handled. It knows nothing
//! about channels, tasks or threads, and the same file works unchanged in
//! every Conveyor template with async workers (mpsc-fan-in,
//! flume-work-stealing, kanal-hot-path): the contract is in
//! `src/workload_api.rs`.
//!
//! The demo below makes numbered jobs, or reads lines from a file, stdin
//! (`--input`) or TCP clients (`--listen`); it "handles" each by waiting
//! `--work-us` microseconds, standing in for I/O such as a database write,
//! and writes it to `--output` as NDJSON if asked. The readers and the
//! writer it uses live in `src/io/`: copy from there, not from the counter.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncRead;

use crate::config::Config;
use crate::io::lines::{LineError, LineReader};
use crate::io::ndjson::NdjsonFile;
use crate::io::tcp::{Connections, Listener};
use crate::workload_api::{Numbers, Source, Workload};

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

/// One unit of work. Replace it with your own type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Unique within a run: the sequence number of a numbered job, or the
    /// order in which a line arrived.
    pub id: u64,
    /// The line this job was read from, when it came from `--input` or
    /// `--listen`.
    pub line: Option<Box<str>>,
}

impl Job {
    /// The job as one line of JSON.
    pub fn to_ndjson(&self) -> String {
        match &self.line {
            // `serde_json` escapes the line; everything else is a number.
            Some(line) => format!(
                r#"{{"id":{},"line":{}}}"#,
                self.id,
                serde_json::Value::from(&**line)
            ),
            None => format!(r#"{{"id":{}}}"#, self.id),
        }
    }
}

/// The demo workload that `main` runs.
pub struct DemoWorkload {
    work: Duration,
    input: Input,
    output: Option<NdjsonFile>,
    /// Numbers the lines of every source, in the order they arrive.
    lines_read: Arc<AtomicU64>,
}

/// Where the demo's items come from.
enum Input {
    Numbers {
        producers: usize,
        items: u64,
    },
    Lines {
        reader: Mutex<Option<LineReader<Reader>>>,
    },
    Listener(Arc<Listener>),
}

/// A file or stdin.
type Reader = Box<dyn AsyncRead + Send + Unpin>;

impl DemoWorkload {
    /// Builds the workload from the service configuration: opens the input
    /// and the output, and binds the listener. Any of them failing is a
    /// start-up error, reported before the pipeline starts.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let args = &config.topology.workload;
        let max_line_bytes = usize::try_from(args.max_line_bytes)?;
        let input = if let Some(addr) = args.listen {
            Input::Listener(Arc::new(Listener::bind(
                addr,
                args.max_connections,
                max_line_bytes,
            )?))
        } else if let Some(path) = &args.input {
            let reader: Reader = if path.as_os_str() == "-" {
                Box::new(tokio::io::stdin())
            } else {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                Box::new(tokio::fs::File::from_std(file))
            };
            Input::Lines {
                reader: Mutex::new(Some(LineReader::new(reader, max_line_bytes))),
            }
        } else {
            Input::Numbers {
                producers: config.producers,
                items: config.items,
            }
        };
        Ok(Self {
            work: config.work(),
            input,
            output: args.output.as_deref().map(NdjsonFile::create).transpose()?,
            lines_read: Arc::new(AtomicU64::new(0)),
        })
    }
}

impl Workload for DemoWorkload {
    type Item = Job;
    type Source = DemoSource;

    fn producers(&self) -> usize {
        match &self.input {
            Input::Numbers { producers, .. } => *producers,
            Input::Lines { .. } => 1,
            Input::Listener(listener) => listener.max_connections(),
        }
    }

    async fn open(&self, producer: usize) -> anyhow::Result<Option<DemoSource>> {
        Ok(Some(match &self.input {
            Input::Numbers { producers, items } => {
                DemoSource::Numbers(Numbers::share(producer, *producers, *items))
            }
            Input::Lines { reader } => {
                let reader = reader.lock().unwrap_or_else(PoisonError::into_inner).take();
                let Some(reader) = reader else {
                    return Ok(None);
                };
                DemoSource::Lines {
                    reader,
                    ids: Arc::clone(&self.lines_read),
                }
            }
            Input::Listener(listener) => DemoSource::Clients {
                connections: Connections::new(Arc::clone(listener)),
                ids: Arc::clone(&self.lines_read),
            },
        }))
    }

    async fn handle(&self, job: Job) -> anyhow::Result<()> {
        // tokio's timer has millisecond resolution: a few microseconds of
        // simulated work still waits about 1 ms.
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        if let Some(output) = &self.output {
            output.write(&job.to_ndjson()).await?;
        }
        std::hint::black_box(job);
        Ok(())
    }

    async fn close(&self) -> anyhow::Result<()> {
        match &self.output {
            Some(output) => output.flush().await,
            None => Ok(()),
        }
    }
}

/// One producer's source in the demo.
pub enum DemoSource {
    /// Numbered jobs: this producer's share of `--items`.
    Numbers(Numbers),
    /// Lines of a file or stdin.
    Lines {
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

impl Source for DemoSource {
    type Item = Job;

    async fn next(&mut self) -> anyhow::Result<Option<Job>> {
        match self {
            Self::Numbers(numbers) => Ok(numbers.next_number().map(|id| Job { id, line: None })),
            Self::Lines { reader, ids } => match reader.next_line().await {
                Ok(Some(line)) => Ok(Some(line_job(ids, line))),
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
                Ok(Some(line_job(ids, connections.next_line().await?)))
            }
            Self::Ended => Ok(None),
        }
    }
}

fn line_job(ids: &AtomicU64, line: String) -> Job {
    Job {
        id: ids.fetch_add(1, Relaxed),
        line: Some(line.into_boxed_str()),
    }
}

/// Parses `HOST:PORT`, or a bare `PORT` on the loopback address: a service
/// faces untrusted input, so it listens only where it is told to.
fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse()
        .map_err(|_| format!("`{text}` is not PORT or IP:PORT (e.g. 127.0.0.1:7878)"))
}
