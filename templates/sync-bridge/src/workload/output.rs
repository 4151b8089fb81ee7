//! The demo's blocking writer: a file, or nothing. Replace it with your own
//! blocking output (a database driver, an SDK client).

use std::fs::File;
use std::io::{BufWriter, Write};

use anyhow::Context as _;

use crate::pipeline::OutputPath;

/// `--output`, buffered; `None` without it.
pub type Output = Option<BufWriter<File>>;

/// Opens `--output` for writing. Without it there is no writer at all,
/// rather than one that discards: formatting each line only to throw it away
/// would cost more per item than the channel does.
pub fn open(path: Option<&OutputPath>) -> anyhow::Result<Output> {
    path.map(|OutputPath(path)| {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        Ok(BufWriter::new(file))
    })
    .transpose()
}

/// Writes one line, `seq<TAB>text`, if there is an output.
pub fn write_line(output: &mut Output, seq: u64, text: &str) -> anyhow::Result<()> {
    if let Some(writer) = output {
        writeln!(writer, "{seq}\t{text}")?;
    }
    Ok(())
}

/// Flushes the output, if there is one.
pub fn flush(output: Output) -> anyhow::Result<()> {
    if let Some(mut writer) = output {
        writer.flush()?;
    }
    Ok(())
}
