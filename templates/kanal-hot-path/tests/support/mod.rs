//! Helpers shared by the tests: runtimes of either flavor, a deadline that
//! holds even when the runtime under test is starved, and signals to and
//! exits of the service binary.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

/// A runtime of the flavor asked for: two worker threads, the machine's core
/// count in CI, or one thread.
pub fn runtime(multi_thread: bool) -> Runtime {
    if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
    }
    .expect("a test runtime")
}

/// Runs `test` on a thread of its own and fails if it has not finished
/// within `limit`. The deadline is kept by this thread, outside any tokio
/// runtime, so a test whose runtime never gets to run its timers fails
/// instead of hanging the suite.
pub fn within<T, F>(limit: Duration, test: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(test());
    });
    match result.recv_timeout(limit) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("the test did not finish within {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => panic!("the test panicked (see above)"),
    }
}

/// Sends the signal `name` (`-TERM`, `-INT`, `-KILL`, ...) to `child`.
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {name} failed");
}

/// Waits for `child` to exit; kills it and fails the test after `deadline`.
pub fn wait_within(child: &mut Child, deadline: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > deadline {
            child.kill().ok();
            panic!("the service did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Gives the service its metrics endpoint on a free port, where the project
/// has one, so that tests running at once do not fight over the default
/// port. It goes through the environment variable behind `--metrics-addr`
/// (package name in SCREAMING_SNAKE_CASE, then the flag), which a project
/// without the endpoint ignores.
pub fn metrics_on_a_free_port(command: &mut Command) -> &mut Command {
    let prefix = env!("CARGO_PKG_NAME")
        .replace('-', "_")
        .to_ascii_uppercase();
    command.env(format!("{prefix}_METRICS_ADDR"), "127.0.0.1:0")
}

/// The first loopback address (`127.0.0.1:PORT`) in a log line, in either
/// log format.
pub fn loopback_addr_in(line: &str) -> Option<SocketAddr> {
    let start = line.find("127.0.0.1:")?;
    let addr: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
        .collect();
    addr.parse().ok()
}
