//! The service as its users run it: the real binary, its exit codes, its
//! report on stdout, its files, and its reaction to shutdown signals.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use support::{metrics_on_a_free_port, signal, wait_within};

const BINARY: &str = env!("CARGO_BIN_EXE_{{project-name}}");

/// The environment variable behind `--items` (package name in
/// SCREAMING_SNAKE_CASE, then the flag).
const ITEMS_VAR: &str = "{{crate_name | upcase}}_ITEMS";

fn service() -> Command {
    let mut command = Command::new(BINARY);
    metrics_on_a_free_port(&mut command)
        .env_remove("RUST_LOG")
        .env_remove(ITEMS_VAR);
    command
}

/// How long a run that should end by itself may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Runs the service with `args` to its end; see [`output_within`].
fn run(args: &[&str]) -> Output {
    output_within(service().args(args))
}

/// Runs `command` to its end and collects its output like
/// `Command::output`, but kills it and fails the test after [`RUN_LIMIT`].
fn output_within(command: &mut Command) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the service binary starts");
    // Both pipes are read while the service runs, so it never blocks on a
    // full one.
    let stdout = read_to_end(child.stdout.take().unwrap());
    let stderr = read_to_end(child.stderr.take().unwrap());
    let status = wait_within(&mut child, RUN_LIMIT);
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn read_to_end(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

fn json_report(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout.lines();
    let report = lines.next().expect("a report on stdout");
    assert_eq!(
        lines.next(),
        None,
        "stdout must hold only the report:\n{stdout}"
    );
    serde_json::from_str(report).expect("the report is one JSON object")
}

/// A scratch folder of this test, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "{}-{test}-{}",
            env!("CARGO_PKG_NAME"),
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, file: &str) -> String {
        self.0.join(file).display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Bad values are refused with one line on stderr and exit code 2, never a panic.
#[test]
fn bad_configuration_exits_2_with_one_line() {
    let mut cases = vec![
        vec!["--capacity", "0"],
        vec!["--capacity", "abc"],
        vec!["--capacity", "-1"],
        vec!["--producers", "0"],
        vec!["--items", "many"],
        vec!["--no-such-flag"],
    ];
{% if direction != "async-to-sync" %}    cases.push(vec!["--workers", "0"]);
    cases.push(vec!["--input", "/no/such/input.txt"]);
    cases.push(vec!["--input", "/"]);
{% endif %}{% if direction != "sync-to-async" %}    cases.push(vec!["--output", "/no/such/folder/out.txt"]);
    cases.push(vec!["--output", "/"]);
{% endif %}    for args in cases {
        let output = run(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

/// `--report json` prints exactly one JSON object with every documented key;
/// logs stay on stderr.
#[test]
fn json_report_accounts_for_every_item() {
    let output = run(&[
        "--items",
        "5000",
        "--report",
        "json",
        "--progress-secs",
        "0",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json_report(&output);
    assert_eq!(report["produced"], 5000);
    assert_eq!(report["handled"], 5000);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["topology"], "sync-bridge");
    for key in ["abandoned", "lost", "unaccounted", "failed_stages"] {
        assert_eq!(report[key], 0, "{key}: {report}");
    }
    for key in [
        "elapsed_secs",
        "items_per_sec",
        "peak_queue_depth",
        "stall_episodes",
    ] {
        assert!(report[key].is_number(), "{key} missing: {report}");
    }
    for key in ["cancelled", "drain_timed_out"] {
        assert_eq!(report[key], false, "{key}: {report}");
    }
}

/// Every flag falls back to its environment variable; the flag wins when both are set.
#[test]
fn environment_variables_back_the_flags() {
    let output = output_within(service().env(ITEMS_VAR, "1234").args(["--report", "json"]));
    assert_eq!(json_report(&output)["produced"], 1234);

    let output = output_within(
        service()
            .env(ITEMS_VAR, "1234")
            .args(["--report", "json", "--items", "99"]),
    );
    assert_eq!(json_report(&output)["produced"], 99);

    let output = output_within(service().env(ITEMS_VAR, "lots"));
    assert_eq!(output.status.code(), Some(2));
}
{% if direction != "async-to-sync" %}
/// `--input` reads a file line by line, end to end, through the real binary;
/// `--items 0` reads the whole file.
#[test]
fn reads_every_line_of_an_input_file() {
    let scratch = Scratch::new("input");
    let input = scratch.path("input.txt");
    let lines: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(&input, lines).unwrap();
    let output = run(&[
        "--input",
        &input,
        "--items",
        "0",
        "--producers",
        "3",
        "--report",
        "json",
        "--progress-secs",
        "0",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json_report(&output);
    assert_eq!(report["produced"], 1000);
    assert_eq!(report["handled"], 1000);
    assert_eq!(report["cancelled"], false);
}

/// `--input -` reads stdin until it closes.
#[test]
fn reads_stdin_until_it_closes() {
    use std::io::Write as _;
    let mut child = service()
        .args([
            "--input",
            "-",
            "--items",
            "0",
            "--report",
            "json",
            "--progress-secs",
            "0",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..300 {
        writeln!(stdin, "record {i}").unwrap();
    }
    drop(stdin); // EOF ends the source.
    let status = wait_within(&mut child, Duration::from_secs(20));
    assert!(status.success());
    let report = json_report(&child.wait_with_output().unwrap());
    assert_eq!(report["handled"], 300);
}
{% endif %}{% if direction != "sync-to-async" %}
/// `--output` receives one line per item from the blocking sink.
#[test]
fn writes_one_line_per_item_to_the_output_file() {
    let scratch = Scratch::new("output");
    let out = scratch.path("out.txt");
    let output = run(&[
        "--output",
        &out,
        "--items",
        "777",
        "--report",
        "json",
        "--progress-secs",
        "0",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(json_report(&output)["handled"], 777);
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written.lines().count(), 777);
}
{% endif %}{% if direction == "both" %}
/// Lines travel from `--input` through the async stage to `--output`.
#[test]
fn input_lines_reach_the_output_file_transformed() {
    let scratch = Scratch::new("both");
    let input = scratch.path("in.txt");
    let out = scratch.path("out.txt");
    std::fs::write(&input, "alpha\nbeta\ngamma\n").unwrap();
    let output = run(&[
        "--input",
        &input,
        "--output",
        &out,
        "--items",
        "0",
        "--producers",
        "1",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut written: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    written.sort();
    assert_eq!(written, ["0\tALPHA", "1\tBETA", "2\tGAMMA"]);
}
{% endif %}
/// Starts the service with endless input and waits until its pipeline runs.
fn start_endless(args: &[&str]) -> Child {
    let mut child = service()
        .args(["--items", "0", "--report", "json", "--progress-secs", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.contains("pipeline started"));
    assert!(started, "the service never logged its start");
    // Keep draining stderr so the service never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// SIGTERM stops the source side, drains the queue, waits for the threads
/// and exits 0 with a report in which every produced item was handled.
#[test]
#[cfg(unix)]
fn sigterm_drains_and_exits_cleanly() {
    let mut child = start_endless(&["--work-us", "2000", "--capacity", "8"]);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-TERM");
    let status = wait_within(&mut child, Duration::from_secs(10));
    let output = child.wait_with_output().unwrap();
    assert!(status.success(), "exit status {status}");
    let report = json_report(&output);
    assert_eq!(report["cancelled"], true);
    assert!(report["produced"].as_u64().unwrap() > 0);
    assert_eq!(report["produced"], report["handled"]);
}

/// A second signal cuts a long drain short: the process exits at once with
/// the documented code instead of finishing the queue.
#[test]
#[cfg(unix)]
fn a_second_signal_forces_exit() {
    // Items of 5 s each: the drain would take far longer than the deadline.
    let mut child = start_endless(&[
        "--work-us",
        "5000000",
        "--capacity",
        "64",
        "--producers",
        "1",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-INT");
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-INT");
    let status = wait_within(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(130));
}

/// The reported scenario: no work per item and a channel that never runs
/// empty or full, so flume's futures are ready on every poll. The async
/// stages must still yield to the scheduler, or the signal listener never
/// runs: the first SIGINT must drain and report, whatever the capacity.
#[test]
#[cfg(unix)]
fn a_signal_is_heard_under_sustained_load() {
    for capacity in ["1", "100000"] {
{% if direction == "async-to-sync" %}        let args = ["--work-us", "0", "--capacity", capacity];
{% else %}        let args = ["--work-us", "0", "--capacity", capacity, "--workers", "2"];
{% endif %}        let mut child = start_endless(&args);
        std::thread::sleep(Duration::from_secs(2));
        signal(&child, "-INT");
        let status = wait_within(&mut child, Duration::from_secs(15));
        let output = child.wait_with_output().unwrap();
        let case = format!("capacity {capacity}");
        assert!(status.success(), "{case}: exit status {status}");
        let report = json_report(&output);
        assert_eq!(report["cancelled"], true, "{case}");
        assert_eq!(report["produced"], report["handled"], "{case}");
        assert_eq!(report["unaccounted"], 0, "{case}");
    }
}

/// The handlers are installed before the pipeline starts, so a signal sent
/// the moment the service says it has started drains it rather than
/// killing the process without a report.
#[test]
#[cfg(unix)]
fn a_signal_right_at_start_still_gets_a_report() {
    for attempt in 0..10 {
        let mut child = start_endless(&[]);
        signal(&child, "-INT");
        let status = wait_within(&mut child, Duration::from_secs(15));
        let output = child.wait_with_output().unwrap();
        assert!(status.success(), "attempt {attempt}: exit status {status}");
        assert_eq!(json_report(&output)["cancelled"], true, "attempt {attempt}");
    }
}
{% if direction == "async-to-sync" %}
/// A named pipe for `--output` whose reader reads nothing for `stuck_for`,
/// then everything: once the pipe buffer is full, the sink's `write` blocks,
/// the way a write to a stalled disk or peer does.
#[cfg(unix)]
fn stuck_output(scratch: &Scratch, stuck_for: Duration) -> String {
    let path = scratch.path("stuck.fifo");
    let made = Command::new("mkfifo").arg(&path).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    let fifo = path.clone();
    // Not joined: if the service never opens the pipe, this thread stays
    // blocked in `open` until the test binary exits.
    std::thread::spawn(move || {
        let mut pipe = std::fs::File::open(fifo).expect("the pipe opens");
        std::thread::sleep(stuck_for);
        let _ = std::io::copy(&mut pipe, &mut std::io::sink());
    });
    path
}

/// A drain that outlives `--drain-timeout` is cut short: the report counts
/// the unfinished items as abandoned and the process exits with code 3. The
/// sink is stuck in a blocking write that nothing can interrupt.
#[test]
#[cfg(unix)]
fn a_drain_past_its_deadline_exits_3_with_the_abandoned_count() {
    let scratch = Scratch::new("drain");
    let output = stuck_output(&scratch, Duration::from_secs(60));
    let mut child = start_endless(&[
        "--output",
        &output,
        "--drain-timeout",
        "1",
        "--producers",
        "1",
        "--capacity",
        "4",
    ]);{% else %}
/// A drain that outlives `--drain-timeout` is cut short: the report counts
/// the unfinished items as abandoned and the process exits with code 3.
#[test]
#[cfg(unix)]
fn a_drain_past_its_deadline_exits_3_with_the_abandoned_count() {
    let mut child = start_endless(&[
        "--work-us",
        "60000000",
        "--drain-timeout",
        "1",
        "--producers",
        "1",
        "--capacity",
        "4",
    ]);{% endif %}
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-TERM");
    let status = wait_within(&mut child, Duration::from_secs(15));
    let output = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(3));
    let report = json_report(&output);
    assert_eq!(report["drain_timed_out"], true);
    let count = |key: &str| report[key].as_u64().unwrap();
    assert!(count("abandoned") > 0, "{report}");
    assert_eq!(
        count("produced"),
        count("handled") + count("failed") + count("abandoned"),
        "{report}"
    );
}
{% if direction == "async-to-sync" %}
/// A sink stuck for longer than `--stall-warn-secs` gets one warning on
/// stderr and one stall episode in the report; the run still succeeds.
#[test]
#[cfg(unix)]
fn a_stall_is_logged_and_counted() {
    let scratch = Scratch::new("stall");
    let stuck = stuck_output(&scratch, Duration::from_millis(2_500));
    let output = run(&[
        "--output",
        &stuck,
        "--items",
        "50000",
        "--stall-warn-secs",
        "1",
        "--progress-secs",
        "0",
        "--report",
        "json",
    ]);{% else %}
/// Workers stuck for longer than `--stall-warn-secs` get one warning on
/// stderr and one stall episode in the report; the run still succeeds.
#[test]
fn a_stall_is_logged_and_counted() {
    let output = run(&[
        "--items",
        "1",
        "--work-us",
        "2500000",
        "--stall-warn-secs",
        "1",
        "--progress-secs",
        "0",
        "--report",
        "json",
    ]);{% endif %}
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no item has finished"), "{stderr}");
    assert_eq!(json_report(&output)["stall_episodes"], 1);
}
