//! Throughput of the nats transport by batch size, end to end, next to the
//! in-process pipeline carrying the same items in the same run.
//!
//! For each `--batch-max`, a local `nats-server` gets one `produce` process
//! and three `work` processes (`--work-us 0`, the demo's numbered jobs). The
//! clock runs from the start of the producer until the queue holds nothing
//! and nothing waits for an acknowledgement. The in-process figure is the
//! service run without a role (1 producer, 4 workers, the same batch size).
//! Each point is the median of a few rounds; on a shared machine, read the
//! ratios rather than the absolute numbers.
//!
//! `cargo bench --bench nats`. It needs `nats-server`, like the tests.

#[path = "../tests/nats_server/mod.rs"]
mod nats_server;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer};
use nats_server::NatsServer;
use serde_json::Value;

const BINARY: &str = env!("CARGO_BIN_EXE_{{project-name}}");

/// The prefix of the environment variables behind the flags.
const ENV_PREFIX: &str = "{{crate_name | upcase}}";

/// Batch sizes measured, and the items sent at each: enough for a run of
/// about a second or more.
const POINTS: [(u64, u64); 5] = [
    (1, 100_000),
    (4, 200_000),
    (16, 500_000),
    (64, 1_000_000),
    (256, 2_000_000),
];

const ROUNDS: usize = 3;
const WORKER_PROCESSES: usize = 3;

/// The longest any one round may take before the benchmark gives up.
const ROUND_DEADLINE: Duration = Duration::from_secs(300);

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the queue's state");
    println!(
        "{:>10} {:>10} {:>16} {:>16} {:>20} {:>8}",
        "batch", "items", "nats items/s", "nats messages/s", "in-process items/s", "ratio"
    );
    for (batch, items) in POINTS {
        let server = NatsServer::start();
        let mut nats = Vec::new();
        let mut in_process = Vec::new();
        // Interleaved, so that a change in the machine's load hits both.
        for _ in 0..ROUNDS {
            nats.push(through_nats(&runtime, &server, batch, items));
            in_process.push(without_role(batch, items));
        }
        let (nats, in_process) = (median(nats), median(in_process));
        println!(
            "{batch:>10} {items:>10} {nats:>16.0} {:>16.0} {in_process:>20.0} {:>8.3}",
            nats / batch as f64,
            nats / in_process
        );
    }
}

/// Items per second through the work queue, from the producer's start until
/// the queue is drained.
fn through_nats(
    runtime: &tokio::runtime::Runtime,
    server: &NatsServer,
    batch: u64,
    items: u64,
) -> f64 {
    let batch_flag = batch.to_string();
    let items_flag = items.to_string();
    let workers: Vec<Child> = (0..WORKER_PROCESSES)
        .map(|_| spawn(server, &["work"]))
        .collect();
    let mut consumer = runtime.block_on(consumer(server));
    let started = Instant::now();
    let producer = spawn(
        server,
        &[
            "--items",
            &items_flag,
            "--producers",
            "1",
            "--batch-max",
            &batch_flag,
            "produce",
        ],
    );
    let produced = finish(producer);
    assert!(produced.status.success(), "the producer failed");
    loop {
        let info = runtime
            .block_on(consumer.info())
            .expect("the consumer's state")
            .clone();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < ROUND_DEADLINE,
            "the queue did not drain"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = started.elapsed();
    let handled: u64 = workers
        .into_iter()
        .map(|worker| {
            let _ = Command::new("kill")
                .args(["-TERM", &worker.id().to_string()])
                .status();
            report(&finish(worker))["handled"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(handled, items, "the workers did not handle every item once");
    items as f64 / elapsed.as_secs_f64()
}

/// Items per second of the same workload with the channel in one process.
fn without_role(batch: u64, items: u64) -> f64 {
    let mut command = Command::new(BINARY);
    command
        .env(format!("{ENV_PREFIX}_METRICS_ADDR"), "127.0.0.1:0")
        .args([
            "--report",
            "json",
            "--progress-secs",
            "0",
            "--producers",
            "1",
        ])
        .args([
            "--items",
            &items.to_string(),
            "--batch-max",
            &batch.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let output = finish(command.spawn().expect("the service starts"));
    report(&output)["items_per_sec"].as_f64().unwrap()
}

/// The durable consumer the service creates, to watch its state.
async fn consumer(server: &NatsServer) -> PullConsumer {
    let client = async_nats::connect(server.url()).await.expect("a client");
    let jetstream = jetstream::new(client);
    // The worker processes create the stream and the consumer as they
    // start; wait for them.
    let deadline = Instant::now() + ROUND_DEADLINE;
    loop {
        if let Ok(stream) = jetstream.get_stream("work").await
            && let Ok(consumer) = stream.get_consumer("workers").await
        {
            return consumer;
        }
        assert!(
            Instant::now() < deadline,
            "the workers never created the queue"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn spawn(server: &NatsServer, args: &[&str]) -> Child {
    Command::new(BINARY)
        .env(format!("{ENV_PREFIX}_NATS_URL"), server.url())
        .env(format!("{ENV_PREFIX}_METRICS_ADDR"), "127.0.0.1:0")
        .args(["--report", "json", "--progress-secs", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the service starts")
}

/// Waits for `child`, killing it past [`ROUND_DEADLINE`].
fn finish(mut child: Child) -> Output {
    let started = Instant::now();
    while child.try_wait().expect("the child's state").is_none() {
        if started.elapsed() > ROUND_DEADLINE {
            let _ = child.kill();
            panic!("a service process ran past {ROUND_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("the child's output")
}

fn report(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("not a JSON report ({error}): {stdout}"))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
