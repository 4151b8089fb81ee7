//! The nats transport against a real `nats-server`: each test starts its own
//! server with JetStream on a random loopback port and a temporary store,
//! runs the service binary in its roles as separate processes, and stops the
//! server when it ends.
//!
//! The tests need `nats-server` (2.9 or newer) on the PATH, or its path in
//! `NATS_SERVER`; without it they fail and say how to install it. Every
//! process has a deadline, after which the test kills it and fails.

mod nats_server;
mod support;

use std::collections::HashSet;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use nats_server::NatsServer;
use support::{metrics_on_a_free_port, signal, wait_within};

const BINARY: &str = env!("CARGO_BIN_EXE_{{project-name}}");

/// The prefix of the environment variables behind the flags.
const ENV_PREFIX: &str = "{{crate_name | upcase}}";

/// How long any one process of a test may run.
const DEADLINE: Duration = Duration::from_secs(90);

/// A running service process, its stdout and stderr read as it goes.
struct Service {
    child: Child,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// How a service process ended.
struct Ended {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ended {
    /// The JSON report, after asserting that the process succeeded.
    fn report(&self) -> Value {
        assert!(
            self.status.success(),
            "the service failed ({:?}):\n{}",
            self.status,
            self.stderr
        );
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|error| {
            panic!("stdout is not one JSON report ({error}):\n{}", self.stdout)
        })
    }
}

impl Service {
    /// Starts the binary against `url` with a JSON report, no progress
    /// lines, and `args` (flags, then the role).
    fn start(url: &str, args: &[&str]) -> Self {
        let mut command = Command::new(BINARY);
        metrics_on_a_free_port(&mut command)
            .env(format!("{ENV_PREFIX}_NATS_URL"), url)
            .env_remove(format!("{ENV_PREFIX}_NATS_TOKEN"))
            .env_remove("RUST_LOG")
            .args(["--report", "json", "--progress-secs", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Self::spawn(&mut command)
    }

    fn spawn(command: &mut Command) -> Self {
        let mut child = command.spawn().expect("the service binary starts");
        let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = pipe.read_to_string(&mut text);
                text
            })
        };
        let stdout = Some(read_all(Box::new(child.stdout.take().unwrap())));
        let stderr = Some(read_all(Box::new(child.stderr.take().unwrap())));
        Self {
            child,
            stdout,
            stderr,
        }
    }

    /// Waits for the process to exit, within [`DEADLINE`].
    fn wait(mut self) -> Ended {
        let status = wait_within(&mut self.child, DEADLINE);
        Ended {
            status,
            stdout: self.stdout.take().unwrap().join().unwrap(),
            stderr: self.stderr.take().unwrap().join().unwrap(),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Runs the service to its end and returns its report.
fn run_to_end(url: &str, args: &[&str]) -> Value {
    Service::start(url, args).wait().report()
}

/// The job ids in an NDJSON output file, in the order they were written.
fn ids_in(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|line| line.ends_with('}'))
        .map(|line| {
            let job: Value = serde_json::from_str(line).expect("a JSON job");
            job["id"].as_u64().expect("a job id")
        })
        .collect()
}

/// Asserts that every job `0..items` appears in at least one of `outputs`
/// (a job may appear twice: delivery is at least once).
fn assert_every_job_handled(outputs: &[PathBuf], items: u64) -> usize {
    let mut seen = HashSet::new();
    let mut lines = 0;
    for path in outputs {
        for id in ids_in(path) {
            assert!(id < items, "job {id} was never produced");
            seen.insert(id);
            lines += 1;
        }
    }
    let missing: Vec<u64> = (0..items)
        .filter(|id| !seen.contains(id))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "jobs never handled, the first few: {missing:?}"
    );
    lines
}

/// Waits until `path` holds at least `lines` records.
fn wait_for_output(path: &Path, lines: usize) {
    let start = Instant::now();
    while ids_in(path).len() < lines {
        assert!(
            start.elapsed() < DEADLINE,
            "{} never reached {lines} records",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn outputs(dir: &TempDir, count: usize) -> Vec<PathBuf> {
    (0..count)
        .map(|n| dir.path().join(format!("worker-{n}.ndjson")))
        .collect()
}

fn text(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// Publishes `items` jobs and waits until the stream has them all.
fn produce(url: &str, items: u64, extra: &[&str]) {
    let items_flag = items.to_string();
    let mut args = vec!["--items", &items_flag];
    args.extend_from_slice(extra);
    args.push("produce");
    let report = run_to_end(url, &args);
    assert_eq!(report["published"], items, "{report}");
    assert_eq!(report["unaccounted"], 0, "{report}");
}

/// `run` in one process: everything published is handled, once.
#[test]
fn run_handles_every_item_once() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("run.ndjson");
    let report = run_to_end(
        &server.url(),
        &[
            "--items",
            "3000",
            "--batch-max",
            "1",
            "--output",
            text(&output),
            "run",
        ],
    );
    assert_eq!(report["published"], 3000, "{report}");
    assert_eq!(report["produced"], 3000, "{report}");
    assert_eq!(report["handled"], 3000, "{report}");
    assert_eq!(
        report["messages"], 3000,
        "one item per message by default: {report}"
    );
    assert_eq!(report["unaccounted"], 0, "{report}");
    assert_eq!(
        assert_every_job_handled(&[output], 3000),
        3000,
        "a job was handled twice"
    );
}

/// Items published in batches travel one batch per message.
#[test]
fn a_batch_travels_as_one_message() {
    let server = NatsServer::start();
    let report = run_to_end(
        &server.url(),
        &[
            "--items",
            "1000",
            "--producers",
            "1",
            "--batch-max",
            "100",
            "--linger-ms",
            "1000",
            "run",
        ],
    );
    assert_eq!(report["handled"], 1000, "{report}");
    assert_eq!(report["messages"], 10, "{report}");
}

/// One worker process, then three at once on the same queue: every item is
/// handled exactly once, and three processes share the load.
#[test]
fn worker_processes_share_the_queue_and_handle_each_item_once() {
    for workers in [1, 3] {
        let server = NatsServer::start();
        let dir = tempfile::tempdir().unwrap();
        let items = 6000;
        let paths = outputs(&dir, workers);
        let processes: Vec<_> = paths
            .iter()
            .map(|path| {
                Service::start(
                    &server.url(),
                    &[
                        "--work-us",
                        "500",
                        "--fetch-max",
                        "4",
                        "--output",
                        text(path),
                        "work",
                    ],
                )
            })
            .collect();
        // Every process waits for messages before the first is published,
        // so none can take the whole queue while another is still starting.
        wait_for_queue(&server, "every worker waiting", |queue| {
            queue.num_waiting >= workers
        });
        produce(&server.url(), items, &["--batch-max", "10"]);
        wait_for_queue(&server, "the queue drained", |queue| {
            queue.num_pending == 0 && queue.num_ack_pending == 0
        });
        for process in &processes {
            signal(&process.child, "-TERM");
        }
        let reports: Vec<Value> = processes.into_iter().map(|p| p.wait().report()).collect();
        let handled: Vec<u64> = reports
            .iter()
            .map(|r| r["handled"].as_u64().unwrap())
            .collect();
        assert_eq!(handled.iter().sum::<u64>(), items, "{reports:?}");
        assert_eq!(
            assert_every_job_handled(&paths, items),
            items as usize,
            "a job was handled twice"
        );
        for (report, share) in reports.iter().zip(&handled) {
            assert_eq!(report["unaccounted"], 0, "{report}");
            assert_eq!(report["redelivered"], 0, "{report}");
            assert!(
                *share >= items / (workers as u64 * 5),
                "the load did not spread: {handled:?}"
            );
        }
    }
}

/// A worker process killed mid-run (SIGKILL: no drain, no acknowledgement)
/// leaves its messages unacknowledged; the server redelivers them to the
/// other processes after the ack wait, and no item is lost.
#[test]
fn a_killed_worker_s_items_are_redelivered_to_the_others() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let items = 4000;
    // The consumer is created by the first process, with this ack wait.
    let ack_wait = ["--ack-wait-secs", "2"];
    produce(
        &server.url(),
        items,
        &["--batch-max", "10", ack_wait[0], ack_wait[1]],
    );
    let paths = outputs(&dir, 3);
    let start = |path: &PathBuf| {
        Service::start(
            &server.url(),
            &[
                "--work-us",
                "2000",
                "--fetch-max",
                "8",
                "--output",
                text(path),
                "--until-empty",
                "work",
            ],
        )
    };
    let mut victim = start(&paths[0]);
    let survivors: Vec<_> = paths[1..].iter().map(start).collect();
    wait_for_output(&paths[0], 200);
    signal(&victim.child, "-KILL");
    wait_within(&mut victim.child, DEADLINE);

    let reports: Vec<Value> = survivors.into_iter().map(|p| p.wait().report()).collect();
    let redelivered: u64 = reports
        .iter()
        .map(|r| r["redelivered"].as_u64().unwrap())
        .sum();
    assert!(redelivered > 0, "nothing was redelivered: {reports:?}");
    for report in &reports {
        assert_eq!(report["unaccounted"], 0, "{report}");
    }
    // What the victim wrote before it died counts: it was handled. The rest
    // of its messages must have reached the survivors.
    assert_every_job_handled(&paths, items);
}

/// The server restarts while a `run` is publishing and working: the client
/// reconnects, the producers and the workers carry on, and nothing is lost.
/// A message whose acknowledgement was lost in the restart comes back to the
/// process that settled it, which acknowledges it again rather than handle
/// it twice.
#[test]
fn a_server_restart_mid_run_loses_nothing() {
    let mut server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("run.ndjson");
    let items = 3000;
    let mut service = Service::start(
        &server.url(),
        &[
            "--items",
            "3000",
            "--batch-max",
            "1",
            "--producers",
            "1",
            "--workers",
            "2",
            "--work-us",
            "2000",
            "--ack-wait-secs",
            "2",
            "--output",
            text(&output),
            "run",
        ],
    );
    wait_for_output(&output, 300);
    server.restart();
    assert!(
        service.child.try_wait().unwrap().is_none() && ids_in(&output).len() < items as usize,
        "the run ended before the server restarted; the test needs a longer run"
    );
    let ended = service.wait();
    let report = ended.report();
    assert!(
        ended.stderr.contains("disconnected"),
        "no disconnection seen:\n{}",
        ended.stderr
    );
    assert_eq!(report["published"], items, "{report}");
    assert_eq!(report["not_published"], 0, "{report}");
    assert_eq!(report["handled"], items, "{report}");
    assert_eq!(report["unaccounted"], 0, "{report}");
    assert_eq!(
        report["redelivered"], report["duplicates_skipped"],
        "{report}"
    );
    assert_eq!(
        assert_every_job_handled(&[output], items),
        items as usize,
        "a job was handled twice"
    );
}

/// SIGTERM to a worker process: it stops fetching, drains what it took,
/// acknowledges it, hands back what it fetched ahead, and reports; a second
/// process finishes the rest at once, and no item is handled twice.
#[test]
fn a_worker_drains_and_acknowledges_on_sigterm() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let items = 3000;
    produce(&server.url(), items, &["--batch-max", "10"]);
    let paths = outputs(&dir, 2);
    let first = Service::start(
        &server.url(),
        &[
            "--work-us",
            "2000",
            "--fetch-max",
            "4",
            "--output",
            text(&paths[0]),
            "work",
        ],
    );
    wait_for_output(&paths[0], 100);
    signal(&first.child, "-TERM");
    let stopped = first.wait().report();
    assert_eq!(stopped["cancelled"], true, "{stopped}");
    assert_eq!(stopped["abandoned"], 0, "{stopped}");
    assert_eq!(stopped["unaccounted"], 0, "{stopped}");
    let handled_first = stopped["handled"].as_u64().unwrap();
    assert!(
        handled_first < items,
        "the first worker finished everything: {stopped}"
    );

    // The messages the first worker had fetched ahead were handed back, so
    // the second one gets them at once, not after the 30 s ack wait.
    let rest = run_to_end(
        &server.url(),
        &["--output", text(&paths[1]), "--until-empty", "work"],
    );
    let took = rest["elapsed_secs"].as_f64().unwrap();
    assert!(
        took < 20.0,
        "the rest waited for the ack wait ({took} s): {rest}"
    );
    assert_eq!(handled_first + rest["handled"].as_u64().unwrap(), items);
    assert_eq!(
        assert_every_job_handled(&paths, items),
        items as usize,
        "a job was handled twice"
    );
}

/// A worker whose drain outlives `--drain-timeout` stops waiting, reports
/// what it left as abandoned and exits 3; what it left is redelivered after
/// the ack wait, and another worker handles it.
#[test]
fn a_drain_past_its_deadline_leaves_the_rest_to_other_workers() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let items = 20;
    produce(
        &server.url(),
        items,
        &["--batch-max", "1", "--ack-wait-secs", "2"],
    );
    let paths = outputs(&dir, 2);
    // Each item takes 3 s, far past the 1 s drain deadline.
    let slow = Service::start(
        &server.url(),
        &[
            "--work-us",
            "3000000",
            "--workers",
            "2",
            "--fetch-max",
            "4",
            "--drain-timeout",
            "1",
            "--output",
            text(&paths[0]),
            "work",
        ],
    );
    wait_for_queue(&server, "two messages taken", |queue| {
        queue.num_ack_pending >= 2
    });
    signal(&slow.child, "-TERM");
    let ended = slow.wait();
    assert_eq!(ended.status.code(), Some(3), "{}", ended.stderr);
    let report: Value = serde_json::from_str(ended.stdout.trim()).expect("a JSON report");
    assert_eq!(report["drain_timed_out"], true, "{report}");
    assert!(report["abandoned"].as_u64().unwrap() >= 2, "{report}");
    assert_eq!(report["unaccounted"], 0, "{report}");

    let rest = run_to_end(
        &server.url(),
        &["--output", text(&paths[1]), "--until-empty", "work"],
    );
    assert!(rest["redelivered"].as_u64().unwrap() >= 2, "{rest}");
    assert_every_job_handled(&paths, items);
}

/// Waits until the work queue's consumer (which the first service process
/// creates) is in a state that `reached` accepts; `what` names it in the
/// failure.
fn wait_for_queue(
    server: &NatsServer,
    what: &str,
    reached: impl Fn(&async_nats::jetstream::consumer::Info) -> bool,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(server.url())
            .await
            .expect("a test client");
        let jetstream = async_nats::jetstream::new(client);
        let start = Instant::now();
        loop {
            let consumer = match jetstream.get_stream("work").await {
                Ok(stream) => stream
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>("workers")
                    .await
                    .ok(),
                Err(_) => None,
            };
            let state = match consumer {
                Some(mut consumer) => consumer.info().await.ok().cloned(),
                None => None,
            };
            if state.as_ref().is_some_and(&reached) {
                return;
            }
            assert!(start.elapsed() < DEADLINE, "never reached: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// A message that is not a JSON array of items is terminated and counted,
/// and the worker carries on with the next.
#[test]
fn a_malformed_message_is_terminated_and_counted() {
    let server = NatsServer::start();
    produce(&server.url(), 5, &["--batch-max", "1"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(server.url())
            .await
            .expect("a test client");
        let jetstream = async_nats::jetstream::new(client);
        let stored = jetstream
            .publish("work.items", "not json".into())
            .await
            .unwrap();
        stored.await.expect("the stream stored the message");
    });
    let report = run_to_end(&server.url(), &["--until-empty", "work"]);
    assert_eq!(report["handled"], 5, "{report}");
    assert_eq!(report["malformed_messages"], 1, "{report}");
    assert_eq!(report["messages"], 6, "{report}");
}

/// A server that requires a token: the right one works, a wrong or missing
/// one fails fast with a clear error and a non-zero exit, and the token is
/// never printed.
#[test]
fn token_authentication() {
    let token = "s3cret-token-for-the-test";
    let server = NatsServer::start_with(&["--auth", token]);
    let with_token = |value: Option<&str>| {
        let mut command = Command::new(BINARY);
        metrics_on_a_free_port(&mut command)
            .env(format!("{ENV_PREFIX}_NATS_URL"), server.url())
            .env_remove(format!("{ENV_PREFIX}_NATS_TOKEN"))
            .args([
                "--report",
                "json",
                "--progress-secs",
                "0",
                "--items",
                "100",
                "run",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(value) = value {
            command.env(format!("{ENV_PREFIX}_NATS_TOKEN"), value);
        }
        let started = Instant::now();
        let ended = Service::spawn(&mut command).wait();
        (ended, started.elapsed())
    };

    let (ended, _) = with_token(Some(token));
    assert_eq!(ended.report()["handled"], 100);
    assert!(
        !ended.stderr.contains(token),
        "the token was logged:\n{}",
        ended.stderr
    );

    for wrong in [Some("not-the-token"), None] {
        let (ended, took) = with_token(wrong);
        assert_eq!(ended.status.code(), Some(2), "{wrong:?}: {}", ended.stderr);
        assert!(
            ended.stderr.contains("cannot connect to NATS"),
            "{}",
            ended.stderr
        );
        assert!(
            ended.stderr.contains("authorization violation"),
            "{}",
            ended.stderr
        );
        assert!(
            !ended.stderr.contains(token),
            "the token was logged:\n{}",
            ended.stderr
        );
        assert!(ended.stdout.is_empty(), "no report without a connection");
        assert!(took < Duration::from_secs(10), "the refusal took {took:?}");
    }
}

/// No server where the URL points, or one that never answers: a clear error
/// and a non-zero exit within the connect timeout, never a hang.
#[test]
fn an_unreachable_server_fails_fast() {
    // A port that refuses connections: bound, then released.
    let refused = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // A port that accepts connections and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("nats://{}", silent.local_addr().unwrap());
    for url in [format!("nats://{refused}"), silent_url] {
        let started = Instant::now();
        let ended = Service::start(&url, &["--nats-connect-timeout", "2", "run"]).wait();
        let took = started.elapsed();
        assert_eq!(ended.status.code(), Some(2), "{url}: {}", ended.stderr);
        assert!(
            ended.stderr.contains("cannot connect to NATS at"),
            "{url}: {}",
            ended.stderr
        );
        assert!(
            took < Duration::from_secs(15),
            "{url}: giving up took {took:?}"
        );
    }
}

/// A server that requires TLS, with a certificate from a private CA: over
/// `tls://` the run works once `--nats-ca` trusts that CA, and without it
/// the certificate is refused with a clear error and exit code 2.
#[test]
fn tls_with_a_private_certificate_authority() {
    let dir = tempfile::tempdir().unwrap();
    let [ca, cert, key] =
        ["ca.pem", "server.pem", "server-key.pem"].map(|name| dir.path().join(name));
    let (ca_pem, cert_pem, key_pem) = certificates();
    std::fs::write(&ca, ca_pem).unwrap();
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    let server =
        NatsServer::start_with(&["--tls", "--tlscert", text(&cert), "--tlskey", text(&key)]);
    let url = server.url().replace("nats://", "tls://");

    let report = run_to_end(&url, &["--nats-ca", text(&ca), "--items", "100", "run"]);
    assert_eq!(report["handled"], 100, "{report}");

    let refused = Service::start(&url, &["--items", "100", "run"]).wait();
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("cannot connect to NATS"),
        "{}",
        refused.stderr
    );
}

/// A CA, and a certificate it signed for 127.0.0.1 with its key, as PEM.
fn certificates() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "conveyor test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    (ca_cert.pem(), server_cert.pem(), server_key.serialize_pem())
}
