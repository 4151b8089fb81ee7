//! Writing records as NDJSON (one JSON document per line) to a file, one
//! write per batch.

use std::path::Path;

use anyhow::Context as _;
use tokio::fs::File;
use tokio::io::{AsyncWriteExt as _, BufWriter};
use tokio::sync::Mutex;

/// An NDJSON file shared by every worker. A worker holds the lock while its
/// lines are written; a batch goes out in one write rather than one per
/// record.
#[derive(Debug)]
pub struct NdjsonFile {
    out: Mutex<BufWriter<File>>,
}

impl NdjsonFile {
    /// Creates (or truncates) the file at `path`. Runs before the pipeline
    /// starts, so a path that cannot be written is a start-up error.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self::from_file(file))
    }

    /// Opens the file at `path` to append to it, creating it if need be:
    /// for records that must outlive the run, such as dead letters.
    pub fn append(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .with_context(|| format!("cannot open {} to append to it", path.display()))?;
        Ok(Self::from_file(file))
    }

    fn from_file(file: std::fs::File) -> Self {
        Self {
            out: Mutex::new(BufWriter::new(File::from_std(file))),
        }
    }

    /// Appends records that are already lines (one JSON document each,
    /// every one ending in `\n`) with one lock: how a batch is written. The
    /// lines reach the operating system before this returns, so a record
    /// whose handler has finished survives the process being killed: a work
    /// queue may acknowledge the item right after (flume-work-stealing's
    /// nats transport does).
    pub async fn write_lines(&self, lines: &str) -> anyhow::Result<()> {
        debug_assert!(lines.is_empty() || lines.ends_with('\n'));
        let mut out = self.out.lock().await;
        out.write_all(lines.as_bytes()).await?;
        out.flush().await?;
        Ok(())
    }

    /// Writes out what is buffered and waits until the file has it.
    pub async fn flush(&self) -> anyhow::Result<()> {
        let mut out = self.out.lock().await;
        out.flush().await.context("flushing the output")?;
        out.get_mut()
            .sync_all()
            .await
            .context("syncing the output")?;
        Ok(())
    }
}
