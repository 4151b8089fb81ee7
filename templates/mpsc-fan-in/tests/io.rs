//! The demo's real I/O through the real binary: lines from a file, from
//! stdin and from TCP clients, NDJSON out, and the bad input a service that
//! faces a network gets. Every wait has a deadline.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_{{project-name}}");

/// How long any one step may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

/// The service under test, with its stderr read line by line as it comes.
struct Service {
    child: Child,
    log: Receiver<String>,
    /// Every log line seen so far.
    seen: Vec<String>,
}

impl Service {
    fn start(args: &[&str]) -> Self {
        Self::start_with_stdin(args, Stdio::null())
    }

    fn start_with_stdin(args: &[&str], stdin: Stdio) -> Self {
        let mut child = support::metrics_on_a_free_port(&mut Command::new(BINARY))
            .args(args)
            .args(["--report", "json", "--progress-secs", "0"])
            .env_remove("RUST_LOG")
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the service binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let (line, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for text in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = line.send(text);
            }
        });
        Self {
            child,
            log,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line containing `needle` (counting lines seen
    /// before) until there are `count` of them; returns the last.
    fn wait_for_log(&mut self, needle: &str, count: usize) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let found: Vec<&String> = self.seen.iter().filter(|l| l.contains(needle)).collect();
            if found.len() >= count {
                return found[count - 1].clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no {count}x `{needle}` in the log:\n{}",
                    self.seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "the service ended before logging `{needle}`:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// How many log lines so far contain `needle`, after reading what is
    /// there within `settle`.
    fn count_in_log(&mut self, needle: &str, settle: Duration) -> usize {
        let deadline = Instant::now() + settle;
        while let Ok(line) = self
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        self.seen.iter().filter(|l| l.contains(needle)).count()
    }

    /// The address the service listens on, from its "listening" log line.
    fn listen_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_log("listening", 1);
        support::loopback_addr_in(&line).expect("a loopback address in the line")
    }

    fn terminate(&self) {
        support::signal(&self.child, "-TERM");
    }

    /// Waits for the exit; returns its status and the JSON report.
    fn finish(mut self) -> (ExitStatus, Value) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                break status;
            }
            if Instant::now() > deadline {
                self.child.kill().ok();
                panic!("the service did not exit within {PATIENCE:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        let report = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|_| panic!("a JSON report, not {stdout:?}"));
        (status, report)
    }
}

/// The `line` of every record in the NDJSON file at `path`; checks that
/// every record is valid JSON and that ids are unique.
fn output_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("the output file exists");
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect();
    let ids: BTreeSet<u64> = records
        .iter()
        .map(|r| r["id"].as_u64().expect("an id"))
        .collect();
    assert_eq!(ids.len(), records.len(), "ids are unique");
    let mut lines: Vec<String> = records
        .iter()
        .map(|r| r["line"].as_str().expect("a line").to_owned())
        .collect();
    lines.sort();
    lines
}

fn sorted(lines: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut lines: Vec<String> = lines.into_iter().collect();
    lines.sort();
    lines
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("the service accepts connections");
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Every line of `--input` becomes an item, and `--output` gets each one as
/// a JSON record, text escaped, CRLF line endings stripped.
#[test]
fn input_lines_reach_the_output_as_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.txt"), dir.path().join("out.ndjson"));
    let lines: Vec<String> = (0..2000)
        .map(|n| format!("line {n} \"quoted\" \\ tab\t"))
        .collect();
    std::fs::write(
        &input,
        lines.iter().map(|l| format!("{l}\r\n")).collect::<String>(),
    )
    .unwrap();

    let service = Service::start(&[
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    let (status, report) = service.finish();
    assert!(status.success(), "{report}");
    assert_eq!(
        (report["produced"].as_u64(), report["handled"].as_u64()),
        (Some(2000), Some(2000))
    );
    assert_eq!(output_lines(&output), sorted(lines));
}

/// `--input -` reads stdin until it closes.
#[test]
fn stdin_is_an_input() {
    let mut service = Service::start_with_stdin(&["--input", "-"], Stdio::piped());
    let mut stdin = service.child.stdin.take().unwrap();
    for n in 0..300 {
        writeln!(stdin, "from stdin {n}").unwrap();
    }
    drop(stdin);
    let (status, report) = service.finish();
    assert!(status.success(), "{report}");
    assert_eq!(report["handled"], 300);
}

/// An over-long line and a line that is not UTF-8 are rejected and counted
/// as failed; the lines around them are handled.
#[test]
fn bad_input_lines_are_rejected_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.txt"), dir.path().join("out.ndjson"));
    let mut bytes = b"first\n".to_vec();
    bytes.extend(vec![b'x'; 100_000]);
    bytes.extend(b"\n\xff\xfe not utf-8\nlast\n");
    std::fs::write(&input, bytes).unwrap();

    let mut service = Service::start(&[
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--max-line-bytes",
        "1024",
    ]);
    service.wait_for_log("longer than 1024 bytes", 1);
    service.wait_for_log("not valid UTF-8", 1);
    let (status, report) = service.finish();
    assert!(
        status.success(),
        "rejected input is not a pipeline error: {report}"
    );
    assert_eq!(
        [&report["handled"], &report["failed"], &report["rejected"]],
        [2, 2, 2]
    );
    assert_eq!(output_lines(&output), ["first", "last"]);
}

/// Inputs and outputs that cannot be opened, and a port that is taken, are
/// start-up errors: exit code 2 and one line on stderr, before any work.
#[test]
fn unusable_input_output_or_port_exit_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for args in [
        &["--input", "/nonexistent/input.txt"][..],
        &["--output", "/nonexistent/dir/out.ndjson"][..],
        &["--listen", &port][..],
        &["--listen", "not-an-address"][..],
    ] {
        let output = support::metrics_on_a_free_port(&mut Command::new(BINARY))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(
            errors.len(),
            1,
            "{args:?}: one line of explanation, not\n{stderr}"
        );
        assert!(
            output.stdout.is_empty(),
            "{args:?}: no report without a run"
        );
    }
}

/// Many clients at once, each a producer of its own: every line of every
/// client reaches the output, and a shutdown after they leave drains.
#[test]
fn the_listener_fans_in_many_clients() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.ndjson");
    let mut service = Service::start(&[
        "--listen",
        "127.0.0.1:0",
        "--output",
        output.to_str().unwrap(),
    ]);
    let addr = service.listen_addr();
    let clients: Vec<_> = (0..6)
        .map(|client| {
            std::thread::spawn(move || {
                let mut stream = connect(addr);
                for n in 0..500 {
                    writeln!(stream, "client {client} line {n}").unwrap();
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    service.wait_for_log("client disconnected", 6);
    service.terminate();
    let (status, report) = service.finish();
    assert!(status.success(), "{report}");
    assert_eq!(report["handled"], 3000);
    let expected = (0..6).flat_map(|c| (0..500).map(move |n| format!("client {c} line {n}")));
    assert_eq!(output_lines(&output), sorted(expected));
}

/// A client sending an over-long line or invalid UTF-8 gets those lines
/// rejected and counted; its other lines, and other clients, go on.
#[test]
fn bad_client_lines_are_rejected_and_the_connection_goes_on() {
    let mut service = Service::start(&["--listen", "127.0.0.1:0", "--max-line-bytes", "64"]);
    let addr = service.listen_addr();
    let mut stream = connect(addr);
    stream.write_all(b"good 1\n").unwrap();
    stream.write_all(&vec![b'y'; 1 << 20]).unwrap();
    stream.write_all(b"\n\xc3\x28\ngood 2\n").unwrap();
    drop(stream);
    service.wait_for_log("client disconnected", 1);
    service.terminate();
    let (status, report) = service.finish();
    assert!(status.success(), "{report}");
    assert_eq!(
        [&report["handled"], &report["failed"], &report["rejected"]],
        [2, 2, 2]
    );
}

/// With every connection slot taken, a new client waits (and the log says
/// so) until a slot frees; then its lines are read.
#[test]
fn clients_beyond_max_connections_wait_for_a_slot() {
    let mut service = Service::start(&["--listen", "127.0.0.1:0", "--max-connections", "1"]);
    let addr = service.listen_addr();
    let mut first = connect(addr);
    writeln!(first, "from the first client").unwrap();
    service.wait_for_log("client connected", 1);
    service.wait_for_log("new clients wait", 1);

    let mut second = connect(addr);
    writeln!(second, "from the second client").unwrap();
    second.shutdown(Shutdown::Write).unwrap();
    assert_eq!(
        service.count_in_log("client connected", Duration::from_millis(500)),
        1,
        "the second client must wait while the first holds the only slot"
    );
    drop(first);
    service.wait_for_log("client connected", 2);
    service.wait_for_log("client disconnected", 2);
    service.terminate();
    let (status, report) = service.finish();
    assert!(status.success(), "{report}");
    assert_eq!(report["handled"], 2);
}

/// A client that stalls halfway through a line, and one that never sends
/// anything, do not hold up shutdown: the run ends at once, not at the
/// drain deadline. Half a line is not an item yet, so nothing is lost.
#[test]
fn stalled_clients_do_not_hold_up_shutdown() {
    let mut service = Service::start(&["--listen", "127.0.0.1:0", "--drain-timeout", "60"]);
    let addr = service.listen_addr();
    let mut stalled = connect(addr);
    stalled.write_all(b"half a li").unwrap();
    let _silent = connect(addr);
    service.wait_for_log("client connected", 2);
    let asked = Instant::now();
    service.terminate();
    let (status, report) = service.finish();
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "took {:?}",
        asked.elapsed()
    );
    assert!(status.success(), "{report}");
    assert_eq!(report["drain_timed_out"], false);
    assert_eq!([&report["produced"], &report["unaccounted"]], [0, 0]);
}
