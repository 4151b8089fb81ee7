//! The service as its users run it: the real binary, its exit codes, its
//! report on stdout and its reaction to shutdown signals.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::RecvTimeoutError;
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

/// How long a run that is expected to end by itself may take.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

fn run(args: &[&str]) -> Output {
    output_within(service().args(args), RUN_DEADLINE)
}

/// Like `Command::output`, but fails the test (and kills the service) if it
/// has not exited within `deadline`.
fn output_within(command: &mut Command, deadline: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the service binary starts");
    // Both pipes are read while the service runs, so it never blocks on a
    // full one.
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let status = wait_within(&mut child, deadline);
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
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

/// Bad values are refused with one line on stderr and exit code 2, never a panic.
#[test]
fn bad_configuration_exits_2_with_one_line() {
    for args in [
        &["--capacity", "0"][..],
        &["--capacity", "abc"],
        &["--capacity", "-1"],
        &["--producers", "0"],
        &["--items", "many"],
        &["--no-such-flag"],
    ] {
        let output = run(args);
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
    assert_eq!(report["topology"], "kanal-hot-path");
    for key in ["elapsed_secs", "items_per_sec", "peak_queue_depth"] {
        assert!(report[key].is_number(), "{key} missing: {report}");
    }
}

/// Every flag falls back to its environment variable; the flag wins when both are set.
#[test]
fn environment_variables_back_the_flags() {
    let output = output_within(
        service().env(ITEMS_VAR, "1234").args(["--report", "json"]),
        RUN_DEADLINE,
    );
    assert_eq!(json_report(&output)["produced"], 1234);

    let output = output_within(
        service()
            .env(ITEMS_VAR, "1234")
            .args(["--report", "json", "--items", "99"]),
        RUN_DEADLINE,
    );
    assert_eq!(json_report(&output)["produced"], 99);

    let output = output_within(service().env(ITEMS_VAR, "lots"), RUN_DEADLINE);
    assert_eq!(output.status.code(), Some(2));
}

/// Starts the service with endless input and waits (at most 30 s) until its
/// pipeline runs.
fn start_endless(args: &[&str]) -> Child {
    let mut child = service()
        .args(["--items", "0", "--report", "json", "--progress-secs", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (started, has_started) = std::sync::mpsc::channel();
    // Reads stderr until the start line, then keeps draining it so the
    // service never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
        if lines.by_ref().any(|line| line.contains("pipeline started")) {
            let _ = started.send(());
        }
        lines.for_each(drop);
    });
    match has_started.recv_timeout(Duration::from_secs(30)) {
        Ok(()) => child,
        Err(error) => {
            child.kill().ok();
            match error {
                RecvTimeoutError::Timeout => panic!("the service did not start within 30 s"),
                RecvTimeoutError::Disconnected => panic!("the service never logged its start"),
            }
        }
    }
}

/// SIGTERM drains the queue and exits 0 with a report in which every
/// produced item was handled.
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
    // 64 queued items of 0.5 s each would take half a minute to drain.
    let mut child = start_endless(&[
        "--work-us",
        "500000",
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

/// Producers that never wait (no work per item, a channel that never
/// fills, more tasks than cores) must still let the signal through: the
/// first SIGINT drains and reports, whatever the capacity.
#[test]
#[cfg(unix)]
fn a_signal_is_heard_under_sustained_load() {
    for capacity in ["1", "999999"] {
        let mut child =
            start_endless(&["--work-us", "0", "--capacity", capacity, "--producers", "4"]);
        std::thread::sleep(Duration::from_millis(500));
        signal(&child, "-INT");
        let status = wait_within(&mut child, Duration::from_secs(15));
        let output = child.wait_with_output().unwrap();
        assert!(
            status.success(),
            "capacity {capacity}: exit status {status}"
        );
        let report = json_report(&output);
        assert_eq!(report["cancelled"], true, "capacity {capacity}");
        assert_eq!(report["produced"], report["handled"], "capacity {capacity}");
        assert_eq!(report["unaccounted"], 0, "capacity {capacity}");
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
    ]);
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

/// Consumers stuck for longer than `--stall-warn-secs` get one warning on
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
    ]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no item has finished"), "{stderr}");
    assert_eq!(json_report(&output)["stall_episodes"], 1);
}
