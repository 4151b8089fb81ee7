//! The demo's blocking writer: a file, or nothing. Replace it with your own
//! blocking output (a database driver, an SDK client).

use std::fs::File;
use std::io::{BufWriter, Write};

use anyhow::Context as _;

use crate::pipeline::OutputPath;

/// Opens `--output` for writing, or a writer that discards everything.
pub fn open(path: Option<&OutputPath>) -> anyhow::Result<Box<dyn Write>> {
    Ok(match path {
        None => Box::new(std::io::sink()),
        Some(OutputPath(path)) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
    })
}
