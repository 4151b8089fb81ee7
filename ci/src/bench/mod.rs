//! `cargo ci bench`: generates every topology in release mode, runs each
//! through the standard scenarios next to the bare channel loops of the same
//! shapes, and writes `docs/benchmarks.md` and its chart.
//!
//! - [`plan`]: the variants, scenarios and points;
//! - [`measure`]: one run of one point;
//! - [`doc`]: the document, and reading an earlier one back for `--compare`;
//! - [`chart`]: the SVG chart.

pub mod chart;
pub mod doc;
pub mod measure;
pub mod plan;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use indicatif::{ProgressBar, ProgressStyle};

use crate::matrix::Matrix;
use crate::runner::{Runner, run_logged};
use crate::tools::CargoGenerate;
use doc::{Measured, RunInfo};
use measure::Binaries;
use plan::{Point, VARIANTS};

/// The file names written into the output directory.
pub const DOCUMENT: &str = "benchmarks.md";
pub const CHART: &str = "benchmarks.svg";

/// How to run the benchmark.
#[derive(Debug, Clone)]
pub struct Options {
    /// Only the scenario closest to the defaults, shorter runs, fewer rounds.
    pub quick: bool,
    /// Runs of each point whose median is quoted.
    pub rounds: usize,
    /// About how long each run lasts.
    pub run_time: Duration,
    /// An earlier document whose ratios this run is checked against.
    pub compare: Option<PathBuf>,
    /// The relative change of a ratio `--compare` reports, e.g. 0.1.
    pub threshold: f64,
    /// Where the document and chart go.
    pub out: PathBuf,
}

/// Runs the benchmark. `Ok(false)` when `--compare` found a ratio that
/// dropped by more than the threshold.
pub fn run(matrix: &Matrix, repo: &Path, work_dir: &Path, options: &Options) -> Result<bool> {
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    // Read the earlier document first, so that a wrong path fails before an
    // hour of measuring rather than after.
    let earlier = match &options.compare {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let ratios = doc::read_ratios(&text);
            ensure!(
                !ratios.is_empty(),
                "{} has no ratios to compare with; is it a document `cargo ci bench` wrote?",
                path.display()
            );
            Some(ratios)
        }
        None => None,
    };
    let started = Instant::now();
    let date = utc_now()?;
    let load_before = load_average();

    let bench_dir = work_dir.join("bench");
    let release = CargoGenerate::ensure(&matrix.cargo_generate[0])?;
    let runner = Runner::new(matrix, repo, work_dir, true, vec![release.clone()])?;
    let (binaries, mut versions) = build(matrix, repo, &runner, &release, &bench_dir)?;

    let points = plan::points(options.quick);
    println!(
        "measuring {} points: each sized to about {:.2} s, then {} rounds",
        points.len(),
        options.run_time.as_secs_f64(),
        options.rounds
    );
    let results = measure_all(&points, &binaries, options, &bench_dir.join("logs"))?;

    versions.insert(0, ("rustc".to_owned(), command_output("rustc", &["-V"])?));
    versions.insert(
        1,
        ("cargo-generate".to_owned(), release.version().to_owned()),
    );
    let mut machine = machine();
    machine.push((
        "load average (1 min) before and after".to_owned(),
        format!("{load_before} and {}", load_average()),
    ));
    let info = RunInfo {
        date,
        machine,
        versions,
        command: std::iter::once("cargo ci".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        rounds: options.rounds,
        target_secs: options.run_time.as_secs_f64(),
        wall_secs: started.elapsed().as_secs_f64(),
    };
    std::fs::create_dir_all(&options.out)?;
    let document = options.out.join(DOCUMENT);
    std::fs::write(&document, doc::render(&info, &results, CHART))
        .with_context(|| format!("writing {}", document.display()))?;
    chart::draw(&results, &options.out.join(CHART))?;
    println!(
        "wrote {} and {} in {:.1} min",
        document.display(),
        CHART,
        info.wall_secs / 60.0
    );
    print_low_ratios(&results);

    match earlier {
        Some(earlier) => Ok(report_moves(
            &earlier,
            &doc::ratios(&results),
            options.threshold,
        )),
        None => Ok(true),
    }
}

/// Generates and builds each variant in release mode (binaries copied aside,
/// since every variant of a template has the same binary name), and the bare
/// loops. Returns the binaries and the crate versions they were built with.
fn build(
    matrix: &Matrix,
    repo: &Path,
    runner: &Runner,
    release: &CargoGenerate,
    bench_dir: &Path,
) -> Result<(Binaries, Vec<(String, String)>)> {
    println!(
        "building {} template variants and the bare loops in release mode",
        VARIANTS.len()
    );
    let progress = ProgressBar::new(VARIANTS.len() as u64 + 1).with_style(style("building")?);
    let bin_dir = bench_dir.join("bin");
    let logs = bench_dir.join("logs");
    std::fs::create_dir_all(&bin_dir)?;
    let target = runner.target_dir();
    let mut variants = Vec::new();
    let mut versions = Vec::new();
    for variant in VARIANTS {
        progress.set_message(variant.name);
        let mut combination = matrix.template(variant.template)?.defaults();
        combination.values.extend(plan::options(variant));
        let parent = bench_dir.join("projects").join(variant.name);
        let log = logs.join(format!("{}-build.log", variant.name));
        let project = runner
            .generate(release, &combination, &parent, &log)
            .with_context(|| format!("generating {}", variant.name))?;
        let mut cargo = Command::new("cargo");
        cargo
            .args(["build", "--release", "--bins"])
            .current_dir(&project)
            .env("CARGO_TARGET_DIR", &target);
        let status = run_logged(cargo, &log)?;
        ensure!(
            status.success(),
            "building {} failed; see {}",
            variant.name,
            log.display()
        );
        let binary = bin_dir.join(variant.name);
        std::fs::copy(target.join("release").join(variant.template), &binary)
            .with_context(|| format!("copying the binary of {}", variant.name))?;
        variants.push(binary);
        if versions.is_empty() {
            versions.push((
                "crates in the templates".to_owned(),
                locked_versions(&project.join("Cargo.lock"), &["tokio", "flume", "kanal"])?,
            ));
        }
        progress.inc(1);
    }

    progress.set_message("conveyor-bare-loops");
    let manifest = repo.join("ci/bare-loops/Cargo.toml");
    let mut cargo = Command::new("cargo");
    cargo
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target);
    let log = logs.join("bare-loops-build.log");
    let status = run_logged(cargo, &log)?;
    ensure!(
        status.success(),
        "building the bare loops failed; see {}",
        log.display()
    );
    versions.push((
        "crates in the bare loops".to_owned(),
        locked_versions(
            &repo.join("ci/bare-loops/Cargo.lock"),
            &["tokio", "flume", "kanal", "async-channel", "rtrb"],
        )?,
    ));
    progress.finish_with_message("built");
    let binaries = Binaries {
        variants,
        bare_loops: target.join("release/conveyor-bare-loops"),
    };
    Ok((binaries, versions))
}

/// Sizes every point, then runs the rounds: each round runs every point
/// once, each template point next to its bare loops (see [`plan::groups`]).
fn measure_all(
    points: &[Point],
    binaries: &Binaries,
    options: &Options,
    logs: &Path,
) -> Result<Vec<Measured>> {
    std::fs::create_dir_all(logs)?;
    let runs = points.len() * (options.rounds + 1);
    let progress = ProgressBar::new(runs as u64).with_style(style("measuring")?);
    let log_of = |point: &Point| logs.join(format!("{}.log", point.id().replace('/', "_")));

    let mut sizes = Vec::with_capacity(points.len());
    for point in points {
        progress.set_message(format!("sizing {}", point.id()));
        sizes.push(measure::calibrate(
            point,
            binaries,
            options.run_time,
            &log_of(point),
        )?);
        progress.inc(1);
    }

    let groups = plan::groups(points);
    let mut rates: Vec<Vec<f64>> = vec![Vec::with_capacity(options.rounds); points.len()];
    for round in 0..options.rounds {
        for index in plan::round_order(&groups, round, options.rounds) {
            let point = &points[index];
            progress.set_message(format!(
                "round {} of {}: {}",
                round + 1,
                options.rounds,
                point.id()
            ));
            let sample = measure::run_once(point, binaries, sizes[index], &log_of(point))?;
            rates[index].push(sample.per_sec());
            progress.inc(1);
        }
    }
    progress.finish_with_message("measured");
    Ok(points
        .iter()
        .cloned()
        .zip(rates)
        .map(|(point, rates)| Measured { point, rates })
        .collect())
}

fn style(prefix: &str) -> Result<ProgressStyle> {
    Ok(ProgressStyle::with_template(&format!(
        "{prefix:>9} [{{elapsed_precise}}] {{wide_bar}} {{pos}}/{{len}} {{msg}}"
    ))?)
}

fn print_low_ratios(results: &[Measured]) {
    let low: BTreeMap<String, f64> = doc::ratios(results)
        .into_iter()
        .filter(|(_, ratio)| *ratio < doc::LOW_RATIO)
        .collect();
    if !low.is_empty() {
        println!("below {}x of the bare loop of their shape:", doc::LOW_RATIO);
        for (id, ratio) in low {
            println!("  {id}: {ratio:.2}x");
        }
    }
}

/// Prints the points whose ratio moved by more than `threshold`; `false`
/// when any of them dropped.
fn report_moves(
    earlier: &BTreeMap<String, f64>,
    now: &BTreeMap<String, f64>,
    threshold: f64,
) -> bool {
    let compared = now.keys().filter(|id| earlier.contains_key(*id)).count();
    let moved = doc::moved(earlier, now, threshold);
    println!(
        "{compared} points compared; {} moved by more than {:.0}% in ratio terms",
        moved.len(),
        threshold * 100.0
    );
    for change in &moved {
        println!(
            "  {:+6.1}%  {}  {:.2}x -> {:.2}x",
            change.change() * 100.0,
            change.id,
            change.before,
            change.after
        );
    }
    moved.iter().all(|m| m.change() > 0.0)
}

/// `name version` of each of `names` in a lock file, comma-separated.
fn locked_versions(lock: &Path, names: &[&str]) -> Result<String> {
    #[derive(serde::Deserialize)]
    struct Lock {
        package: Vec<Package>,
    }
    #[derive(serde::Deserialize)]
    struct Package {
        name: String,
        version: String,
    }
    let text =
        std::fs::read_to_string(lock).with_context(|| format!("reading {}", lock.display()))?;
    let lock: Lock =
        toml::from_str(&text).with_context(|| format!("parsing {}", lock.display()))?;
    Ok(names
        .iter()
        .filter_map(|name| {
            let package = lock.package.iter().find(|p| p.name == *name)?;
            Some(format!("{name} {}", package.version))
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// CPU, cores, memory and kernel, as far as Linux's /proc tells them.
fn machine() -> Vec<(String, String)> {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|line| line.starts_with(key))
            .and_then(|line| line.split(':').nth(1))
            .map(|value| value.trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    vec![
        (
            "CPU".to_owned(),
            field(&read("/proc/cpuinfo"), "model name"),
        ),
        ("cores available".to_owned(), cores.to_string()),
        (
            "memory".to_owned(),
            gibibytes(&field(&read("/proc/meminfo"), "MemTotal")),
        ),
        (
            "kernel".to_owned(),
            read("/proc/sys/kernel/osrelease").trim().to_owned(),
        ),
    ]
}

/// `/proc/meminfo`'s "24684084 kB" as "23.5 GiB"; anything else as it is.
fn gibibytes(kilobytes: &str) -> String {
    match kilobytes.strip_suffix(" kB").map(str::parse::<f64>) {
        Some(Ok(kb)) => format!("{:.1} GiB", kb / (1024.0 * 1024.0)),
        _ => kilobytes.to_owned(),
    }
}

/// The 1-minute load average, or "unknown".
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn utc_now() -> Result<String> {
    command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
}

fn command_output(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        output.status.success(),
        "{program} exited with {}",
        output.status
    );
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
