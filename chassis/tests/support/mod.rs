//! Helpers shared by the pipeline tests: runtimes of either flavor, and a
//! deadline that holds even when the runtime under test is starved.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

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
