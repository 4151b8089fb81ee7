//! The metrics endpoint as an operator meets it: the real binary, scraped
//! and probed over HTTP while it runs, stopped with SIGTERM.

mod support;

use std::io::{BufRead, BufReader, Read as _};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use support::within;

const BINARY: &str = env!("CARGO_BIN_EXE_{{project-name}}");

/// The prefix of every metric: the package name in snake case.
fn prefix() -> String {
    env!("CARGO_PKG_NAME").replace('-', "_")
}

/// Every test gets this long, whatever happens to the service under test.
const DEADLINE: Duration = Duration::from_secs(60);

/// A running service with its endpoint on a port of its own choosing.
struct Service {
    child: Child,
    /// `http://127.0.0.1:PORT`, as the service logged it.
    base: String,
}

impl Service {
    /// Starts the binary with an endpoint on a free loopback port, the JSON
    /// report, and `args`; waits for the line that says where it serves.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(BINARY)
            .args(["--metrics-addr", "127.0.0.1:0", "--report", "json"])
            .args(["--progress-secs", "0"])
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the service binary starts");
        let (lines, stderr) = std::sync::mpsc::channel();
        let pipe = BufReader::new(child.stderr.take().unwrap());
        // The thread reads stderr to the end, whether or not anyone listens
        // any more, so the service never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in pipe.lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let base = loop {
            let line = match stderr.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => panic!("the service never said where it serves"),
                Err(RecvTimeoutError::Disconnected) => panic!("the service exited before serving"),
            };
            if line.contains("serving /metrics")
                && let Some(addr) = support::loopback_addr_in(&line)
            {
                break format!("http://{addr}");
            }
        };
        Self { child, base }
    }

    /// GETs `path`: the status and the body.
    fn get(&self, path: &str) -> (u16, String) {
        let url = format!("{}{path}", self.base);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut response = agent
            .get(&url)
            .call()
            .unwrap_or_else(|error| panic!("GET {url}: {error}"));
        let body = response.body_mut().read_to_string().expect("a text body");
        (response.status().as_u16(), body)
    }

    /// The value of the metric `name` (without the prefix) in a fresh scrape.
    fn metric(&self, name: &str) -> f64 {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "{body}");
        let metric = format!("{}_{name}", prefix());
        value_of(&body, &metric).unwrap_or_else(|| panic!("no {metric} in the scrape:\n{body}"))
    }

    fn terminate(&self) {
        support::signal(&self.child, "-TERM");
    }

    /// Waits for the process to exit: its status and its JSON report.
    fn wait(mut self) -> (ExitStatus, serde_json::Value) {
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .expect("piped stdout")
            .read_to_string(&mut stdout)
            .expect("the report is text");
        let status = self.child.wait().expect("the service exits");
        let report = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|error| panic!("no JSON report ({error}) in {stdout:?}"));
        (status, report)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // A test that fails halfway must not leave a service running.
        let _ = self.child.kill();
    }
}

/// The value of an unlabelled sample `name` in Prometheus text.
fn value_of(scrape: &str, name: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (sample, value) = line.rsplit_once(' ')?;
        (sample == name).then(|| value.parse().ok())?
    })
}

/// Polls `condition` every 50 ms until it holds; fails after `limit`.
fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn counters_advance_while_the_service_runs() {
    within(DEADLINE, || {
        let service = Service::start(&["--items", "0", "--work-us", "100"]);
        eventually(Duration::from_secs(10), "a first handled item", || {
            service.metric("items_handled_total") > 0.0
        });
        let before = service.metric("items_handled_total");
        eventually(Duration::from_secs(10), "more handled items", || {
            service.metric("items_handled_total") > before
        });
        assert!(service.metric("items_produced_total") >= before);
        // Handling times are sampled, so the histogram fills as items finish.
        eventually(Duration::from_secs(10), "a timed item", || {
            service.metric("handle_duration_seconds_count") > 0.0
        });
        let (_, body) = service.get("/metrics");
        let prefix = prefix();
        let first_worker = format!("{prefix}_worker_items_handled_total") + r#"{worker="0"}"#;
        assert!(body.contains(&first_worker), "per-worker counts:\n{body}");
        assert!(body.contains(&format!("# TYPE {prefix}_queue_depth gauge")));
        service.terminate();
        let (status, report) = service.wait();
        assert_eq!(status.code(), Some(0), "{report}");
    });
}

#[test]
fn readiness_drops_at_sigterm_and_the_last_scrape_matches_the_report() {
    within(DEADLINE, || {
        // Every item takes a minute of simulated work, so the pipeline fills
        // up and stops moving: what a scrape shows then is what the report
        // will say. (Where the work sits in the producers, as in sync-bridge's
        // async-to-sync direction, nothing is produced at all, and the
        // counters stay at zero.)
        let service = Service::start(&[
            "--items",
            "1000",
            "--capacity",
            "1",
            "--work-us",
            "60000000",
            "--drain-timeout",
            "1",
            "--stall-warn-secs",
            "0",
        ]);
        eventually(Duration::from_secs(10), "readiness", || {
            service.get("/readyz").0 == 200
        });
        // Settled once five scrapes in a row, over a quarter of a second at
        // least, saw the same count.
        let (mut last, mut same) = (-1.0, 0);
        eventually(
            Duration::from_secs(10),
            "a pipeline that stopped moving",
            || {
                let produced = service.metric("items_produced_total");
                same = if produced == last { same + 1 } else { 0 };
                last = produced;
                same >= 4
            },
        );
        let handled = service.metric("items_handled_total");
        let failed = service.metric("items_failed_total");

        service.terminate();
        eventually(Duration::from_secs(5), "readiness to drop", || {
            service.get("/readyz").0 == 503
        });
        assert_eq!(service.get("/healthz").0, 200, "alive while draining");
        let (status, report) = service.wait();

        // The drain outlives --drain-timeout: the documented exit code 3.
        assert_eq!(status.code(), Some(3), "{report}");
        assert_eq!(report["produced"].as_f64(), Some(last), "{report}");
        assert_eq!(report["handled"].as_f64(), Some(handled), "{report}");
        assert_eq!(report["failed"].as_f64(), Some(failed), "{report}");
    });
}

#[test]
fn a_taken_port_is_a_configuration_error() {
    within(DEADLINE, || {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let output = Command::new(BINARY)
            .args(["--metrics-addr", &addr, "--items", "10"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        assert!(output.stdout.is_empty(), "no work, no report");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let error = stderr.lines().last().unwrap_or_default();
        assert!(
            error.contains(&format!("cannot serve metrics on {addr}")),
            "{stderr}"
        );

        let output = Command::new(BINARY)
            .args(["--metrics-addr", "localhost", "--items", "10"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("--metrics-addr"), "{stderr}");
    });
}
