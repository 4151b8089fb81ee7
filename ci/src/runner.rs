//! Runs the matrix: generates each combination and puts it through every step,
//! with one log file per step, a progress line per step and a summary table.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use wait_timeout::ChildExt;

use crate::checks;
use crate::matrix::{Combination, Matrix, Template};
use crate::tools::{self, CargoGenerate};

/// No single step of a combination may take longer than this.
const STEP_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// What the matrix does to each combination, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `cargo generate` with the combination's values, once per release.
    Generate,
    /// The trees of the releases are compared; differing ones are all built.
    Compare,
    /// No Liquid left over; the workflow present exactly when asked for.
    Render,
    /// `cargo fmt --check`.
    Fmt,
    /// `cargo clippy --all-targets -- -D warnings`.
    Clippy,
    /// `cargo test`: builds the test profile once and runs every test.
    Test,
    /// `cargo bench --no-run`: the release build, which also yields the binary.
    BenchBuild,
    /// The release binary on a small workload; its JSON report is checked.
    Smoke,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Step::Generate => "generate",
            Step::Compare => "compare",
            Step::Render => "render",
            Step::Fmt => "fmt",
            Step::Clippy => "clippy",
            Step::Test => "test",
            Step::BenchBuild => "bench-build",
            Step::Smoke => "smoke",
        })
    }
}

/// How one combination ended.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Every step passed.
    Passed,
    /// Its sources are identical to an earlier, passing combination, so that
    /// build's results stand for it; generation, render and fmt still ran.
    SharedBuild {
        /// Id of the combination whose build it shares.
        with: String,
    },
    /// A step failed.
    Failed {
        /// The step that failed.
        step: Step,
        /// What went wrong, in one line.
        reason: String,
        /// The step's full log.
        log: PathBuf,
    },
}

/// The result of one combination.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The combination's id.
    pub id: String,
    /// How it ended.
    pub verdict: Verdict,
    /// Wall time for all its steps.
    pub elapsed: Duration,
}

/// Runs combinations in a work directory outside the repository.
pub struct Runner<'a> {
    matrix: &'a Matrix,
    repo: PathBuf,
    work_dir: PathBuf,
    fail_fast: bool,
    releases: Vec<CargoGenerate>,
    /// The server the `transport=nats` tests start, handed to every
    /// generated project's cargo as `NATS_SERVER`, so they never depend on
    /// what else is on the PATH. Looked up once: checking it runs the binary.
    nats_server: Option<PathBuf>,
}

impl<'a> Runner<'a> {
    /// A runner that generates into `work_dir`, which must lie outside `repo`:
    /// cargo would otherwise adopt the projects into the repository's workspace.
    /// Every combination is generated with each of `releases`.
    pub fn new(
        matrix: &'a Matrix,
        repo: &Path,
        work_dir: &Path,
        fail_fast: bool,
        releases: Vec<CargoGenerate>,
    ) -> Result<Self> {
        ensure!(!releases.is_empty(), "no cargo-generate release to run");
        std::fs::create_dir_all(work_dir)
            .with_context(|| format!("creating {}", work_dir.display()))?;
        let work_dir = work_dir.canonicalize()?;
        let repo = repo.canonicalize()?;
        ensure!(
            !work_dir.starts_with(&repo),
            "the work directory {} is inside the repository; choose one outside it",
            work_dir.display()
        );
        Ok(Self {
            matrix,
            repo,
            work_dir,
            fail_fast,
            releases,
            nats_server: tools::installed_nats_server(),
        })
    }

    /// The target directory every generated project shares, so that
    /// dependencies compile once per distinct feature set.
    pub fn target_dir(&self) -> PathBuf {
        self.work_dir.join("target")
    }

    /// Generates `combination` with `release` into `parent` and returns the
    /// project directory.
    pub fn generate(
        &self,
        release: &CargoGenerate,
        combination: &Combination,
        parent: &Path,
        log: &Path,
    ) -> Result<PathBuf> {
        let project = parent.join(&combination.template);
        if project.exists() {
            std::fs::remove_dir_all(&project)
                .with_context(|| format!("removing {}", project.display()))?;
        }
        std::fs::create_dir_all(parent)?;
        let command = release
            .generate()
            .template(&self.repo.join("templates").join(&combination.template))
            .name(&combination.template)
            .destination(parent)
            .values(&combination.values)
            .command();
        let status = run_logged(command, log)?;
        ensure!(
            status.success(),
            "cargo-generate {} exited with {status}; see {}",
            release.version(),
            log.display()
        );
        Ok(project)
    }

    /// Runs every combination and prints a summary; returns the outcomes.
    pub fn run(&self, combinations: &[Combination]) -> Result<Vec<Outcome>> {
        let started = Instant::now();
        println!(
            "matrix: {} combination(s); work dir {}; shared target dir {}",
            combinations.len(),
            self.work_dir.display(),
            self.target_dir().display()
        );
        let mut builds: HashMap<u64, String> = HashMap::new();
        let mut outcomes = Vec::new();
        for (index, combination) in combinations.iter().enumerate() {
            println!(
                "[{:>2}/{}] {}",
                index + 1,
                combinations.len(),
                combination.id()
            );
            let outcome = self.run_one(combination, &mut builds);
            let failed = matches!(outcome.verdict, Verdict::Failed { .. });
            outcomes.push(outcome);
            if failed && self.fail_fast {
                println!("stopping at the first failure (--fail-fast)");
                break;
            }
        }
        print_summary(&outcomes, started.elapsed());
        Ok(outcomes)
    }

    fn run_one(&self, combination: &Combination, builds: &mut HashMap<u64, String>) -> Outcome {
        let started = Instant::now();
        let logs = self.work_dir.join("logs").join(slug(&combination.id()));
        let verdict = match self.steps(combination, &logs, builds) {
            Ok(verdict) => verdict,
            Err(failure) => failure,
        };
        Outcome {
            id: combination.id(),
            verdict,
            elapsed: started.elapsed(),
        }
    }

    /// Runs the steps in order; `Err` carries the failing step's verdict.
    fn steps(
        &self,
        combination: &Combination,
        logs: &Path,
        builds: &mut HashMap<u64, String>,
    ) -> std::result::Result<Verdict, Verdict> {
        let template = self
            .matrix
            .template(&combination.template)
            .map_err(|e| failed(Step::Generate, e, logs))?;
        let trees = timed(Step::Generate, logs, || {
            self.releases
                .iter()
                .map(|release| {
                    let version = release.version();
                    let parent = self
                        .work_dir
                        .join("projects")
                        .join(format!("cargo-generate-{version}"));
                    let log = logs.join(format!("generate-{version}.log"));
                    let project = self.generate(release, combination, &parent, &log)?;
                    Ok((version.to_owned(), project))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let variants = timed(Step::Compare, logs, || {
            compare(&trees, &logs.join("compare.log"))
        })?;
        let mut verdict = Verdict::Passed;
        for (index, (version, project)) in variants.iter().enumerate() {
            // The first tree's logs sit in the combination's folder; a
            // differing tree of a later release gets a folder of its own.
            let logs = if index == 0 {
                logs.to_path_buf()
            } else {
                logs.join(format!("cargo-generate-{version}"))
            };
            verdict = self.check_tree(combination, template, project, &logs, builds)?;
        }
        Ok(verdict)
    }

    /// Every step after generation, for one generated tree.
    fn check_tree(
        &self,
        combination: &Combination,
        template: &Template,
        project: &Path,
        logs: &Path,
        builds: &mut HashMap<u64, String>,
    ) -> std::result::Result<Verdict, Verdict> {
        timed(Step::Render, logs, || {
            let leftovers = checks::leftover_liquid(project)?;
            ensure!(
                leftovers.is_empty(),
                "Liquid left over:\n{}",
                leftovers.join("\n")
            );
            let default = template
                .placeholders
                .get("github_ci")
                .map(|p| p.default.as_str());
            let github_ci = combination.value("github_ci").or(default) == Some("true");
            checks::check_workflow(project, github_ci)
        })?;
        timed(Step::Fmt, logs, || {
            self.cargo(project, &["fmt", "--check"], &logs.join("fmt.log"))
        })?;

        let fingerprint =
            checks::build_fingerprint(project).map_err(|e| failed(Step::Render, e, logs))?;
        if let Some(earlier) = builds.get(&fingerprint) {
            println!(
                "         same sources as {earlier}: its clippy, test, bench build and smoke run stand"
            );
            return Ok(Verdict::SharedBuild {
                with: earlier.clone(),
            });
        }

        timed(Step::Clippy, logs, || {
            self.cargo(
                project,
                &["clippy", "--all-targets", "--", "-D", "warnings"],
                &logs.join("clippy.log"),
            )
        })?;
        timed(Step::Test, logs, || {
            self.cargo(project, &["test"], &logs.join("test.log"))
        })?;
        timed(Step::BenchBuild, logs, || {
            self.cargo(
                project,
                &["bench", "--no-run"],
                &logs.join("bench-build.log"),
            )
        })?;
        timed(Step::Smoke, logs, || {
            self.smoke(combination, &template.smoke_args, &logs.join("smoke.log"))
        })?;

        builds.insert(fingerprint, combination.id());
        Ok(Verdict::Passed)
    }

    fn cargo(&self, project: &Path, args: &[&str], log: &Path) -> Result<()> {
        let mut command = Command::new("cargo");
        command
            .args(args)
            .current_dir(project)
            .env("CARGO_TARGET_DIR", self.target_dir())
            .env("CARGO_TERM_COLOR", "never");
        if let Some(nats_server) = &self.nats_server {
            command.env("NATS_SERVER", nats_server);
        }
        let status = run_logged(command, log)?;
        ensure!(
            status.success(),
            "cargo {} exited with {status}",
            args.join(" ")
        );
        Ok(())
    }

    /// Runs the release binary that `cargo bench --no-run` left behind (no
    /// second release build) and checks its JSON report.
    fn smoke(&self, combination: &Combination, smoke_args: &[String], log: &Path) -> Result<()> {
        let binary = self
            .target_dir()
            .join("release")
            .join(&combination.template);
        ensure!(binary.exists(), "no release binary at {}", binary.display());
        let items = smoke_args
            .windows(2)
            .find(|pair| pair[0] == "--items")
            .and_then(|pair| pair[1].parse().ok())
            .context("smoke_args in ci/matrix.toml need `--items N`")?;
        let stderr = File::create(log)?;
        let (metrics_var, metrics_addr) = crate::metrics_on_a_free_port(&combination.template);
        let child = Command::new(&binary)
            .args(smoke_args)
            .args(["--report", "json", "--progress-secs", "0"])
            .env_remove("RUST_LOG")
            .env(metrics_var, metrics_addr)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let output = wait_with_timeout(child, STEP_TIMEOUT)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        writeln!(
            File::options().append(true).open(log)?,
            "--- stdout ---\n{stdout}"
        )?;
        ensure!(
            output.status.success(),
            "the service exited with {}",
            output.status
        );
        checks::check_smoke_report(&stdout, &combination.template, items)
    }
}

/// Compares the trees the releases generated (version, project folder) and
/// returns those to build: the first, plus every one that differs from it.
/// The differences are written to `log` and announced.
fn compare(trees: &[(String, PathBuf)], log: &Path) -> Result<Vec<(String, PathBuf)>> {
    let (first_version, first) = &trees[0];
    let mut report = String::new();
    let mut variants = vec![trees[0].clone()];
    for (version, tree) in &trees[1..] {
        let differences = checks::tree_differences(first, tree)?;
        if differences.is_empty() {
            report.push_str(&format!("{version}: identical to {first_version}\n"));
        } else {
            println!(
                "         cargo-generate {version} generates a different tree than {first_version}: both are built (see {})",
                log.display()
            );
            report.push_str(&format!("{version}: differs from {first_version}:\n"));
            for difference in differences {
                report.push_str(&format!("  {difference}\n"));
            }
            variants.push((version.clone(), tree.clone()));
        }
    }
    std::fs::write(log, report)?;
    Ok(variants)
}

/// Runs `step`, prints its progress line, and turns an error into a failed verdict.
fn timed<T>(
    step: Step,
    logs: &Path,
    run: impl FnOnce() -> Result<T>,
) -> std::result::Result<T, Verdict> {
    let started = Instant::now();
    let result = run();
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(value) => {
            println!("         {step:<12} ok     {secs:>6.1}s");
            Ok(value)
        }
        Err(error) => {
            println!("         {step:<12} FAILED {secs:>6.1}s");
            Err(failed(step, error, logs))
        }
    }
}

fn failed(step: Step, error: anyhow::Error, logs: &Path) -> Verdict {
    let log = logs.join(format!("{step}.log"));
    let _ = std::fs::create_dir_all(logs);
    if !log.exists() {
        // In-process checks write no log of their own; keep the reason findable.
        let _ = std::fs::write(&log, format!("{error:#}\n"));
    }
    let reason = format!("{error:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    Verdict::Failed { step, reason, log }
}

/// Runs `command` with stdout and stderr in `log`, within [`STEP_TIMEOUT`].
pub(crate) fn run_logged(mut command: Command, log: &Path) -> Result<ExitStatus> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    Ok(wait_with_timeout(child, STEP_TIMEOUT)?.status)
}

/// Waits for `child`, killing it after `timeout`. Its stdout, if piped, is
/// read on a thread meanwhile, so a chatty child never blocks on a full pipe.
pub(crate) fn wait_with_timeout(
    mut child: std::process::Child,
    timeout: Duration,
) -> Result<std::process::Output> {
    let stdout = child.stdout.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut pipe, &mut bytes).map(|_| bytes)
        })
    });
    let Some(status) = child.wait_timeout(timeout)? else {
        child.kill().ok();
        child.wait().ok();
        bail!("timed out after {timeout:?}");
    };
    let stdout = match stdout {
        Some(reader) => reader
            .join()
            .map_err(|_| anyhow::anyhow!("the stdout reader panicked"))??,
        None => Vec::new(),
    };
    Ok(std::process::Output {
        status,
        stdout,
        stderr: Vec::new(),
    })
}

/// A file-system-safe form of a combination id.
fn slug(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '=' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn print_summary(outcomes: &[Outcome], elapsed: Duration) {
    let width = outcomes
        .iter()
        .map(|o| o.id.len())
        .max()
        .unwrap_or(0)
        .max(11);
    println!(
        "\n{:<width$}  {:<8} {:>8}  note",
        "combination", "result", "time"
    );
    for outcome in outcomes {
        let (result, note) = match &outcome.verdict {
            Verdict::Passed => ("passed", String::new()),
            Verdict::SharedBuild { with } => ("passed", format!("build shared with {with}")),
            Verdict::Failed { step, log, .. } => ("FAILED", format!("{step}: {}", log.display())),
        };
        println!(
            "{:<width$}  {result:<8} {:>7.1}s  {note}",
            outcome.id,
            outcome.elapsed.as_secs_f64()
        );
    }
    for outcome in outcomes {
        if let Verdict::Failed { step, reason, log } = &outcome.verdict {
            println!(
                "\nFAILED {} at step {step}: {reason}\nlog: {}",
                outcome.id,
                log.display()
            );
            if let Ok(text) = std::fs::read_to_string(log) {
                let lines: Vec<&str> = text.lines().collect();
                for line in &lines[lines.len().saturating_sub(25)..] {
                    println!("    {line}");
                }
            }
        }
    }
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o.verdict, Verdict::Failed { .. }))
        .count();
    println!("\nwall time {:.1} min", elapsed.as_secs_f64() / 60.0);
    println!(
        "matrix: {} passed, {failed} failed",
        outcomes.len() - failed
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_safe_file_names() {
        assert_eq!(
            slug("mpsc-fan-in:batching=true,runtime=multi_thread"),
            "mpsc-fan-in_batching=true_runtime=multi_thread"
        );
    }
}
