//! Reading lines with a length limit, cancel safely.
//!
//! `AsyncBufReadExt::lines` grows its buffer for as long as a line goes on,
//! so one client sending a gigabyte without a newline takes a gigabyte of
//! memory. [`LineReader`] keeps at most `max_bytes` of a line; the rest of an
//! over-long line is skipped, and the line is reported as bad.

use std::fmt;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// Why a line was not returned. The reader has moved past it either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadLine {
    /// Longer than the limit (not counting the line ending).
    TooLong {
        /// The limit in bytes.
        max_bytes: usize,
    },
    /// Not valid UTF-8.
    NotUtf8,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong { max_bytes } => write!(f, "line longer than {max_bytes} bytes"),
            Self::NotUtf8 => f.write_str("line is not valid UTF-8"),
        }
    }
}

impl std::error::Error for BadLine {}

/// What reading the next line gave.
#[derive(Debug)]
pub enum LineError {
    /// A line the reader skipped; reading can go on.
    Bad(BadLine),
    /// The underlying read failed; the input is probably unusable.
    Io(std::io::Error),
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bad(bad) => bad.fmt(f),
            Self::Io(error) => write!(f, "read failed: {error}"),
        }
    }
}

impl std::error::Error for LineError {}

/// Splits a byte stream into UTF-8 lines of at most `max_bytes` bytes each.
#[derive(Debug)]
pub struct LineReader<R> {
    reader: BufReader<R>,
    /// The line read so far. Kept here, not in the future of `next_line`,
    /// so that dropping that future loses nothing.
    line: Vec<u8>,
    /// Whether the line read so far has gone past the limit (its bytes are
    /// then no longer kept).
    too_long: bool,
    max_bytes: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// Lines of `reader`, each at most `max_bytes` long.
    pub fn new(reader: R, max_bytes: usize) -> Self {
        Self {
            reader: BufReader::new(reader),
            line: Vec::new(),
            too_long: false,
            max_bytes,
        }
    }

    /// The next line without its line ending (`\n` or `\r\n`), or `Ok(None)`
    /// at the end of input. A last line without a line ending counts.
    ///
    /// Cancel safe: every byte taken from the reader is in `self` before
    /// the next await, so a dropped call loses nothing and the next call
    /// goes on where it stopped.
    pub async fn next_line(&mut self) -> Result<Option<String>, LineError> {
        loop {
            let available = self.reader.fill_buf().await.map_err(LineError::Io)?;
            if available.is_empty() {
                if self.line.is_empty() && !self.too_long {
                    return Ok(None);
                }
                return self.take_line().map(Some);
            }
            let newline = available.iter().position(|&byte| byte == b'\n');
            let chunk = &available[..newline.unwrap_or(available.len())];
            // One byte over the limit is kept for a `\r` before the newline.
            if self.too_long || self.line.len() + chunk.len() > self.max_bytes + 1 {
                self.too_long = true;
                self.line = Vec::new();
            } else {
                self.line.extend_from_slice(chunk);
            }
            let used = newline.map_or(available.len(), |at| at + 1);
            self.reader.consume(used);
            if newline.is_some() {
                return self.take_line().map(Some);
            }
        }
    }

    /// Hands out the line read so far and starts the next one.
    fn take_line(&mut self) -> Result<String, LineError> {
        let mut line = std::mem::take(&mut self.line);
        if std::mem::take(&mut self.too_long) {
            return Err(LineError::Bad(BadLine::TooLong {
                max_bytes: self.max_bytes,
            }));
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.len() > self.max_bytes {
            return Err(LineError::Bad(BadLine::TooLong {
                max_bytes: self.max_bytes,
            }));
        }
        String::from_utf8(line).map_err(|_| LineError::Bad(BadLine::NotUtf8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(input: &[u8], max_bytes: usize) -> Vec<Result<String, String>> {
        let mut reader = LineReader::new(input, max_bytes);
        let mut lines = Vec::new();
        loop {
            match reader.next_line().await {
                Ok(Some(line)) => lines.push(Ok(line)),
                Ok(None) => return lines,
                Err(error) => lines.push(Err(error.to_string())),
            }
        }
    }

    #[tokio::test]
    async fn splits_lines_and_strips_their_endings() {
        let lines = read_all(b"one\r\ntwo\n\nlast", 16).await;
        assert_eq!(
            lines,
            [Ok("one"), Ok("two"), Ok(""), Ok("last")].map(|r| r.map(str::to_owned))
        );
    }

    #[tokio::test]
    async fn skips_an_over_long_line_and_goes_on() {
        let lines = read_all(b"12345\n123456\n1234\r\n", 5).await;
        assert_eq!(
            lines,
            [
                Ok("12345".to_owned()),
                Err("line longer than 5 bytes".to_owned()),
                Ok("1234".to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn rejects_invalid_utf8_and_goes_on() {
        let lines = read_all(b"ok\n\xff\xfe\nfine\n", 16).await;
        assert_eq!(
            lines,
            [
                Ok("ok".to_owned()),
                Err("line is not valid UTF-8".to_owned()),
                Ok("fine".to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn memory_stays_bounded_while_a_line_goes_on() {
        let huge = vec![b'x'; 1 << 20];
        let mut reader = LineReader::new(&huge[..], 64);
        assert!(matches!(
            reader.next_line().await,
            Err(LineError::Bad(BadLine::TooLong { max_bytes: 64 }))
        ));
        assert!(
            reader.line.capacity() <= 65,
            "kept {} bytes",
            reader.line.capacity()
        );
        assert!(matches!(reader.next_line().await, Ok(None)));
    }

    #[tokio::test]
    async fn a_dropped_read_loses_no_input() {
        // The writer sends half a line, the read is cancelled while it waits
        // for the rest, then the rest arrives: the line comes out whole.
        let (mut writer, reader) = tokio::io::duplex(64);
        let mut lines = LineReader::new(reader, 64);
        use tokio::io::AsyncWriteExt as _;
        writer.write_all(b"hel").await.unwrap();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), lines.next_line()).await;
        assert!(waited.is_err(), "no line is complete yet");
        writer.write_all(b"lo\n").await.unwrap();
        assert_eq!(lines.next_line().await.unwrap(), Some("hello".to_owned()));
    }
}
