//! The demo's blocking reader: lines from a file or stdin, shared by the
//! source threads. Replace it with your own blocking input.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::sync::{Mutex, PoisonError};

use anyhow::Context as _;

use crate::pipeline::InputPath;

/// Reads one line per call. The file is opened on the first call, so the
/// opening happens on a source thread, not on the async runtime.
pub struct Lines {
    path: InputPath,
    reader: Mutex<Option<Box<dyn BufRead + Send>>>,
}

impl Lines {
    /// Lines of `path`, not opened yet.
    pub fn new(path: InputPath) -> Self {
        Self {
            path,
            reader: Mutex::new(None),
        }
    }

    /// The next line without its line ending, or `None` at the end of input.
    /// Blocks until a line or the end arrives: for stdin that can be a while.
    pub fn next_line(&self) -> anyhow::Result<Option<String>> {
        let mut reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        let reader = match &mut *reader {
            Some(reader) => reader,
            empty => empty.insert(self.open()?),
        };
        let mut line = String::new();
        let read = reader
            .read_line(&mut line)
            .with_context(|| format!("reading {}", self.describe()))?;
        if read == 0 {
            return Ok(None);
        }
        let end = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(end);
        Ok(Some(line))
    }

    fn open(&self) -> anyhow::Result<Box<dyn BufRead + Send>> {
        Ok(match &self.path {
            InputPath::Stdin => Box::new(BufReader::new(std::io::stdin())),
            InputPath::File(path) => Box::new(BufReader::new(
                File::open(path).with_context(|| format!("opening {}", self.describe()))?,
            )),
        })
    }

    fn describe(&self) -> String {
        match &self.path {
            InputPath::Stdin => "stdin".to_owned(),
            InputPath::File(path) => path.display().to_string(),
        }
    }
}
