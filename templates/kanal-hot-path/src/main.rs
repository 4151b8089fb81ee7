//! Entry point: parse the configuration, set up logging, run the pipeline until
//! it finishes or a shutdown signal arrives, and print the report.
//!
//! Exit codes: 0 clean run, 1 pipeline error, 2 bad configuration.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use {{crate_name}}::config::{self, Config};
use {{crate_name}}::workload::DemoWorkload;
use {{crate_name}}::{pipeline, shutdown, telemetry};

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

    let shutdown = CancellationToken::new();
    shutdown::cancel_on_signal(shutdown.clone());
    let report = pipeline::run(&config, DemoWorkload::new(&config), shutdown).await;

    println!("{}", report.render(config.report));
    if report.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
