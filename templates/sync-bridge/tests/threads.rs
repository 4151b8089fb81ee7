//! Shutdown reaches the blocking threads: every thread the pipeline starts
//! has finished its stage when `run` returns, after a normal end and after a
//! cancellation.
//!
//! `pipeline::live_threads` counts across the whole process, so this file
//! holds a single test: nothing else in this binary starts pipeline threads
//! at the same time.

mod support;

use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use {{crate_name}}::config::Config;
use {{crate_name}}::pipeline;
use {{crate_name}}::workload::DemoWorkload;

use support::{runtime, within};

fn parse(args: &[&str]) -> Config {
    Config::try_parse_from(
        ["test", "--progress-secs=0", "--stall-warn-secs=0"]
            .iter()
            .chain(args),
    )
    .expect("valid test configuration")
}

/// The deadline is kept outside the runtime (`support::within`), so a run
/// that never ends fails the test instead of hanging it.
#[test]
fn no_pipeline_thread_outlives_the_run() {
    within(Duration::from_secs(60), || {
        runtime(true).block_on(async {
            assert_eq!(pipeline::live_threads(), 0);

            // A run that ends by itself.
            let config = parse(&["--producers=3", "--capacity=2", "--items=20000"]);
            let report = pipeline::run(
                &config,
                DemoWorkload::new(&config),
                CancellationToken::new(),
            )
            .await;
            assert_eq!(report.handled, 20_000);
            assert_eq!(
                pipeline::live_threads(),
                0,
                "a thread outlived a finished run"
            );

            // A run that goes on until it is cancelled; threads are alive
            // meanwhile.
            let config = parse(&[
                "--producers=3",
                "--capacity=4",
                "--items=0",
                "--work-us=1000",
            ]);
            let shutdown = CancellationToken::new();
            let token = shutdown.clone();
            let run = tokio::spawn(async move {
                pipeline::run(&config, DemoWorkload::new(&config), token).await
            });
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(pipeline::live_threads() > 0, "the counter sees no thread");
            shutdown.cancel();
            let report = run.await.expect("the run does not panic");
            assert!(report.cancelled);
            assert!(report.is_success(), "{report:?}");
            assert_eq!(report.produced, report.handled + report.failed);
            assert_eq!(
                pipeline::live_threads(),
                0,
                "a thread outlived a cancelled run"
            );
        });
    });
}
