//! The blocking source: `--producers` OS threads call
//! [`BlockingSource::read`] and push each item into flume with the blocking
//! `send`. A full channel parks the thread, never a runtime worker.

use std::path::PathBuf;
use std::sync::Arc;

use super::counted;
use crate::config::Config;
use crate::counters::Counters;
use crate::supervisor::{StopFlag, Supervisor};

/// The blocking half that makes items: a file or stdin reader, a blocking SDK.
/// Every call runs on one of the pipeline's source threads, never on the
/// async runtime, so it may block as long as it needs.
pub trait BlockingSource: Send + Sync + 'static {
    /// One unit of work travelling from the source to the async stage.
    type Item: Send + 'static;

    /// Makes item number `seq`, or returns `Ok(None)` at the end of the input.
    /// Each `seq` below `--items` is asked for at most once, by one thread;
    /// several threads may call `read` at the same time. An error stops the
    /// run and makes it a failure (exit code 1).
    fn read(&self, seq: u64) -> anyhow::Result<Option<Self::Item>>;
}

/// `--input`: a readable file, or `-` for stdin. Checked when the flags are
/// parsed, so a missing file is a configuration error (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputPath {
    /// Standard input.
    Stdin,
    /// A file that could be opened when the flags were parsed.
    File(PathBuf),
}

impl InputPath {
    /// The clap value parser for `--input`.
    pub fn parse(value: &str) -> Result<Self, String> {
        if value == "-" {
            return Ok(Self::Stdin);
        }
        let path = PathBuf::from(value);
        match std::fs::File::open(&path) {
            Ok(file) if file.metadata().is_ok_and(|m| m.is_dir()) => {
                Err("is a directory, expected a file or `-` for stdin".to_owned())
            }
            Ok(_) => Ok(Self::File(path)),
            Err(error) => Err(format!("cannot open it: {error}")),
        }
    }
}

/// Starts the source threads. They own the only `Sender`s: `tx` is consumed
/// here, so the async side sees the end of input once every thread is done.
pub(super) fn spawn<S: BlockingSource>(
    supervisor: &mut Supervisor,
    config: &Config,
    source: &Arc<S>,
    tx: flume::Sender<S::Item>,
) {
    // One flag for all threads. They look at it before every item: a relaxed
    // load, where the token itself takes a lock that, paid per item, costs
    // a third of the bridge's throughput.
    let stop = supervisor.stop_flag();
    for id in 0..config.producers {
        let thread = SourceThread {
            id,
            stride: config.producers as u64,
            items: config.items,
            source: Arc::clone(source),
            tx: tx.clone(),
            counters: Arc::clone(supervisor.counters()),
            stop: Arc::clone(&stop),
        };
        supervisor.spawn_thread(format!("source-{id}"), counted(move || thread.run()));
    }
}

/// One source thread and everything it needs.
struct SourceThread<S: BlockingSource> {
    id: usize,
    stride: u64,
    items: u64,
    source: Arc<S>,
    tx: flume::Sender<S::Item>,
    counters: Arc<Counters>,
    stop: Arc<StopFlag>,
}

impl<S: BlockingSource> SourceThread<S> {
    /// Reads items `id`, `id + stride`, … until the quota is reached, the
    /// input ends, the run is cancelled or the async side is gone.
    ///
    /// Cancellation is seen between items. A `read` that is blocked (stdin
    /// with no line yet) cannot be interrupted: the thread stops once it
    /// returns, and until then only `--drain-timeout` ends the run. A blocked
    /// `send` always returns: the async side drains the channel until every
    /// sender is gone, and if it is aborted at the drain deadline, its
    /// receivers drop and `send` fails.
    fn run(self) -> anyhow::Result<()> {
        let _span = tracing::info_span!("source", id = self.id).entered();
        let slot = self.counters.producer(self.id);
        let mut produced = 0u64;
        let mut seq = self.id as u64;
        while self.items == 0 || seq < self.items {
            // Checked before every item, not every few: a slow source (stdin)
            // must stop at its next line, not dozens of lines later.
            if self.stop.is_set() {
                break;
            }
            let Some(item) = self.source.read(seq)? else {
                break; // end of input
            };
            if self.tx.send(item).is_err() {
                break; // every receiver is gone: the async side stopped
            }
            produced += 1;
            slot.publish(produced);
            seq += self.stride;
        }
        tracing::debug!(produced, "source finished");
        Ok(())
    }
}
