//! The service as its users run it: the real binary, its exit codes, its
//! report on stdout and its reaction to shutdown signals.
//!
//! Every run of the binary has a deadline, after which the test kills it and
//! fails: a service that hangs fails the suite instead of hanging it.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use support::{metrics_on_a_free_port, signal, wait_within};

const BINARY: &str = env!("CARGO_BIN_EXE_{{project-name}}");

/// The environment variable behind `--items` (package name in
/// SCREAMING_SNAKE_CASE, then the flag).
const ITEMS_VAR: &str = "{{crate_name | upcase}}_ITEMS";

/// The environment variable behind `--workers`.
const WORKERS_VAR: &str = "{{crate_name | upcase}}_WORKERS";

fn service() -> Command {
    let mut command = Command::new(BINARY);
    metrics_on_a_free_port(&mut command)
        .env_remove("RUST_LOG")
        .env_remove(ITEMS_VAR)
        .env_remove(WORKERS_VAR);
    command
}

/// How long a run to completion may take.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

fn run(args: &[&str]) -> Output {
    output_of(service().args(args))
}

/// Runs `command` to its end and collects its output, like
/// `Command::output`, but kills it and fails the test after [`RUN_DEADLINE`].
fn output_of(command: &mut Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the service binary starts");
    // Both pipes are read while the service runs, so it never blocks on a
    // full one; they close when it exits or is killed.
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let status = wait_within(&mut child, RUN_DEADLINE);
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
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
        &["--workers", "0"],
        &["--workers", "-2"],
        &["--workers", "four"],
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
    assert_eq!(report["topology"], "flume-work-stealing");
    for key in ["elapsed_secs", "items_per_sec", "peak_queue_depth"] {
        assert!(report[key].is_number(), "{key} missing: {report}");
    }
}

/// `handled_per_worker` has one entry per `--workers`, and together they
/// account for every handled item.
#[test]
fn report_shows_the_load_of_each_worker() {
    let output = run(&[
        "--items",
        "3000",
        "--workers",
        "3",
        "--report",
        "json",
        "--progress-secs",
        "0",
    ]);
    assert!(output.status.success());
    let report = json_report(&output);
    let per_worker: Vec<u64> = report["handled_per_worker"]
        .as_array()
        .expect("handled_per_worker is an array")
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(per_worker.len(), 3);
    assert_eq!(per_worker.iter().sum::<u64>(), 3000);
}

/// Every flag falls back to its environment variable; the flag wins when both are set.
#[test]
fn environment_variables_back_the_flags() {
    let output = output_of(service().env(ITEMS_VAR, "1234").args(["--report", "json"]));
    assert_eq!(json_report(&output)["produced"], 1234);

    let output = output_of(
        service()
            .env(ITEMS_VAR, "1234")
            .args(["--report", "json", "--items", "99"]),
    );
    assert_eq!(json_report(&output)["produced"], 99);

    let output = output_of(service().env(ITEMS_VAR, "lots"));
    assert_eq!(output.status.code(), Some(2));

    // `--workers` belongs to this topology's own flags and falls back too.
    let output = output_of(
        service()
            .env(WORKERS_VAR, "2")
            .args(["--report", "json", "--items", "100"]),
    );
    let report = json_report(&output);
    assert_eq!(report["handled_per_worker"].as_array().unwrap().len(), 2);

    let output = output_of(service().env(WORKERS_VAR, "0"));
    assert_eq!(output.status.code(), Some(2));
}

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
    let (started, has_started) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
        if lines.any(|line| line.contains("pipeline started")) {
            let _ = started.send(());
        }
        // Keep draining stderr so the service never blocks on a full pipe.
        lines.for_each(drop);
    });
    if has_started.recv_timeout(Duration::from_secs(30)).is_err() {
        child.kill().ok();
        panic!("the service never logged its start");
    }
    child
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
    // 64 queued items of 0.5 s each, over 2 workers, would take 16 s to drain.
    let mut child = start_endless(&[
        "--work-us",
        "500000",
        "--capacity",
        "64",
        "--producers",
        "1",
        "--workers",
        "2",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-INT");
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, "-INT");
    let status = wait_within(&mut child, Duration::from_secs(5));
    assert_eq!(status.code(), Some(130));
}

/// Producers and workers that never wait (no work per item, a channel that
/// never fills or is always just full, more tasks than cores) must still let
/// the signal through: the first SIGINT drains and reports, whatever the
/// capacity.
#[test]
#[cfg(unix)]
fn a_signal_is_heard_under_sustained_load() {
    for capacity in ["1", "999999"] {
        let mut child = start_endless(&[
            "--work-us",
            "0",
            "--capacity",
            capacity,
            "--producers",
            "4",
            "--workers",
            "4",
        ]);
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
/// the unfinished items as abandoned and the process exits with code 3,
/// even with workers still stuck in their items.
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
        "--workers",
        "2",
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
    ]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no item has finished"), "{stderr}");
    assert_eq!(json_report(&output)["stall_episodes"], 1);
}
