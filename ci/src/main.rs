//! `cargo ci`: the Conveyor matrix and the collection's test entry point.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use clap::{Args, Parser, Subcommand};
use conveyor_ci::matrix::{Combination, Matrix, Selection};
use conveyor_ci::runner::{Runner, Verdict};
use conveyor_ci::tools::{self, CargoGenerate};
use conveyor_ci::{bench, chassis, default_work_dir, repo_root};

/// Generates every combination of the Conveyor templates and tests each one.
#[derive(Parser)]
#[command(name = "cargo ci", bin_name = "cargo ci")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Everything CI runs: install the cargo-generate releases if needed, the
    /// collection's own tests, then the matrix's covering set.
    Test {
        /// The full product of every template's axes instead of the covering set.
        #[arg(long)]
        full: bool,
        #[command(flatten)]
        work_dir: WorkDir,
    },
    /// Runs the matrix, or a part of it.
    Matrix {
        #[command(flatten)]
        selection: SelectionArgs,
        /// Ids of single combinations to run (see `list`); repeatable.
        #[arg(long)]
        only: Vec<String>,
        /// Stop at the first failing combination.
        #[arg(long)]
        fail_fast: bool,
        #[command(flatten)]
        work_dir: WorkDir,
    },
    /// Lists the combinations of the matrix.
    List {
        #[command(flatten)]
        selection: SelectionArgs,
        /// One JSON array of {"id", "template"} objects, for the GitHub workflow.
        #[arg(long)]
        json: bool,
    },
    /// Generates one template with its defaults, runs it and prints its report.
    Try {
        /// Template name, e.g. mpsc-fan-in.
        template: String,
        #[command(flatten)]
        work_dir: WorkDir,
        /// Arguments for the service, after `--`.
        #[arg(last = true)]
        service_args: Vec<String>,
    },
    /// Benchmarks every topology next to the bare channel loops of the same
    /// shapes and writes docs/benchmarks.md and its chart. Not part of `test`.
    Bench {
        /// One scenario per topology, shorter runs, 3 rounds: a few minutes.
        /// Writes into the work directory unless --out says otherwise.
        #[arg(long)]
        quick: bool,
        /// Runs of each point; the median is quoted [default: 11, or 3 with --quick].
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=99))]
        rounds: Option<u16>,
        /// After the run, report every point whose ratio to its bare loop moved
        /// by more than --threshold against this earlier document, and fail
        /// if any dropped. Writes into the work directory unless --out says otherwise.
        #[arg(long, value_name = "BENCHMARKS_MD")]
        compare: Option<PathBuf>,
        /// The relative change --compare reports, in percent.
        #[arg(long, value_name = "PERCENT", default_value_t = 10.0)]
        threshold: f64,
        /// Where benchmarks.md and benchmarks.svg go [default: docs/ for a
        /// full run, the work directory's bench/ for --quick and --compare].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        #[command(flatten)]
        work_dir: WorkDir,
    },
    /// Installs what the matrix needs and is missing: every cargo-generate
    /// release it tests with, and nats-server.
    InstallTools,
    /// Copies the chassis (`chassis/`) into every template.
    SyncChassis,
}

#[derive(Args)]
struct SelectionArgs {
    /// The full product of the axes instead of the covering set (every value
    /// of every axis and every pair of values of two axes, plus the defaults
    /// and the extra combinations).
    #[arg(long)]
    full: bool,
    /// Only this template.
    #[arg(long)]
    template: Option<String>,
    /// Only the all-defaults combination of each template.
    #[arg(long)]
    defaults_only: bool,
}

#[derive(Args)]
struct WorkDir {
    /// Where projects, the shared target dir and logs go (outside the repository).
    #[arg(long, env = "CONVEYOR_WORK_DIR", default_value_os_t = default_work_dir())]
    work_dir: PathBuf,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `task`; `Ok(false)` means it ran and something failed.
fn run(task: Task) -> Result<bool> {
    let matrix = Matrix::load(repo_root())?;
    match task {
        Task::List { selection, json } => {
            let combinations = matrix.combinations(&selection.into_selection(Vec::new()))?;
            if json {
                let rows: Vec<_> = combinations
                    .iter()
                    .map(|c| serde_json::json!({ "id": c.id(), "template": c.template }))
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                combinations.iter().for_each(|c| println!("{c}"));
            }
            Ok(true)
        }
        Task::InstallTools => install_tools(&matrix).map(|_| true),
        Task::SyncChassis => {
            let changed = chassis::sync(repo_root(), &matrix.chassis_carriers(repo_root()))?;
            println!("{changed} chassis copies updated");
            Ok(true)
        }
        Task::Matrix {
            selection,
            only,
            fail_fast,
            work_dir,
        } => {
            let releases = install_tools(&matrix)?;
            let combinations = matrix.combinations(&selection.into_selection(only))?;
            run_matrix(
                &matrix,
                &combinations,
                &work_dir.work_dir,
                fail_fast,
                releases,
            )
        }
        Task::Bench {
            quick,
            rounds,
            compare,
            threshold,
            out,
            work_dir,
        } => {
            ensure!(
                threshold.is_finite() && threshold > 0.0,
                "--threshold must be a positive number of percent"
            );
            let trial = quick || compare.is_some();
            let options = bench::Options {
                quick,
                rounds: rounds.map_or(if quick { 3 } else { 11 }, usize::from),
                run_time: Duration::from_millis(if quick { 100 } else { 300 }),
                compare,
                threshold: threshold / 100.0,
                out: out.unwrap_or_else(|| {
                    if trial {
                        work_dir.work_dir.join("bench")
                    } else {
                        repo_root().join("docs")
                    }
                }),
            };
            bench::run(&matrix, repo_root(), &work_dir.work_dir, &options)
        }
        Task::Test { full, work_dir } => test_everything(&matrix, full, &work_dir.work_dir),
        Task::Try {
            template,
            work_dir,
            service_args,
        } => try_template(&matrix, &template, &work_dir.work_dir, &service_args),
    }
}

/// Every release in `ci/matrix.toml`, and nats-server, installed where
/// missing.
fn install_tools(matrix: &Matrix) -> Result<Vec<CargoGenerate>> {
    tools::ensure_nats_server()?;
    matrix
        .cargo_generate
        .iter()
        .map(CargoGenerate::ensure)
        .collect()
}

/// The collection's own tests, then the matrix.
fn test_everything(matrix: &Matrix, full: bool, work_dir: &Path) -> Result<bool> {
    let releases = install_tools(matrix)?;
    println!("== the collection's own tests (cargo test)");
    let status = Command::new("cargo")
        .args(["test", "--locked"])
        .current_dir(repo_root())
        .status()?;
    ensure!(status.success(), "the collection's own tests failed");
    println!("== the matrix");
    let combinations = matrix.combinations(&Selection {
        full,
        ..Selection::default()
    })?;
    run_matrix(matrix, &combinations, work_dir, false, releases)
}

/// Generates `template` with its defaults outside the repository, then builds
/// and runs it in release mode so its report is printed.
fn try_template(
    matrix: &Matrix,
    template: &str,
    work_dir: &Path,
    service_args: &[String],
) -> Result<bool> {
    // The oldest release installs fastest on a fresh machine; every release
    // the matrix tests generates the same project.
    let release = CargoGenerate::ensure(&matrix.cargo_generate[0])?;
    let runner = Runner::new(matrix, repo_root(), work_dir, true, vec![release.clone()])?;
    let combination = matrix.template(template)?.defaults();
    let log = work_dir
        .join("logs")
        .join(format!("try-{template}-generate.log"));
    let project = runner
        .generate(&release, &combination, &work_dir.join("try"), &log)
        .with_context(|| format!("see {}", log.display()))?;
    println!(
        "generated {} with the template defaults; running it:",
        project.display()
    );
    let status = Command::new("cargo")
        .args(["run", "--release", "--quiet", "--"])
        .args(service_args)
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", runner.target_dir())
        .status()?;
    println!(
        "the project stays at {}; edit src/workload.rs to make it yours",
        project.display()
    );
    Ok(status.success())
}

/// Runs `combinations`; `Ok(false)` when any of them failed.
fn run_matrix(
    matrix: &Matrix,
    combinations: &[Combination],
    work_dir: &Path,
    fail_fast: bool,
    releases: Vec<CargoGenerate>,
) -> Result<bool> {
    let runner = Runner::new(matrix, repo_root(), work_dir, fail_fast, releases)?;
    let outcomes = runner.run(combinations)?;
    Ok(outcomes
        .iter()
        .all(|o| !matches!(o.verdict, Verdict::Failed { .. })))
}

impl SelectionArgs {
    fn into_selection(self, only: Vec<String>) -> Selection {
        Selection {
            full: self.full,
            template: self.template,
            defaults_only: self.defaults_only,
            only,
        }
    }
}
