//! Entry point: parse the configuration, set up logging, listen for shutdown
//! signals, serve the metrics endpoint, run the pipeline until it finishes or
//! is told to stop, and print the report.
//!
//! Exit codes: 0 clean run, 1 pipeline error, 2 bad configuration, 3 the
//! drain outlived `--drain-timeout` (without a pipeline error), 130 a second
//! signal forced the exit.

use std::io::Write as _;
use std::process::ExitCode;

use {{crate_name}}::config::{self, Config};
use {{crate_name}}::report::EXIT_PIPELINE_ERROR;
use {{crate_name}}::{metrics, shutdown, telemetry, workload};

const BAD_CONFIG: u8 = 2;

#[tokio::main(flavor = "{{runtime}}")]
async fn main() -> ExitCode {
    let config = match Config::from_args_and_env(std::env::args_os()) {
        Ok(config) => config,
        Err(error) if !error.use_stderr() => error.exit(), // --help, --version
        Err(error) => {
            eprintln!("{}", config::one_line(&error));
            return ExitCode::from(BAD_CONFIG);
        }
    };
    telemetry::init();

    // Listening starts before the pipeline does, so a signal at any moment
    // of the run drains it instead of killing the process without a report.
    let shutdown = match shutdown::listen() {
        Ok(token) => token,
        Err(error) => {
            tracing::error!(%error, "cannot listen for shutdown signals");
            return ExitCode::from(EXIT_PIPELINE_ERROR);
        }
    };
    // The endpoint binds before any work starts, so a taken port is a
    // configuration error rather than a service that runs unobserved.
    if let Err(error) = metrics::serve(&config.metrics) {
        eprintln!("error: {error:#}");
        return ExitCode::from(BAD_CONFIG);
    }
    // The workload opens its input and output and binds its listener before
    // the pipeline starts, so a bad path or a taken port is a configuration
    // error with one line of explanation.
    let report = match workload::run(&config, shutdown).await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(BAD_CONFIG);
        }
    };

    println!("{}", report.render(config.report));
    // Exit here instead of returning: returning drops the runtime, which
    // waits for its blocking threads and its tasks, so a read of stdin still
    // waiting for a line, or a stage that outlived the drain deadline, would
    // keep the process alive after the report.
    let _ = std::io::stdout().flush();
    std::process::exit(i32::from(report.exit_code()))
}
