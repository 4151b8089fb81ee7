//! Running one point: the command line of a template binary or of
//! `conveyor-bare-loops`, the run itself under a deadline, and its rate.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::plan::{Point, Subject, VARIANTS};
use crate::runner::wait_with_timeout;

/// No single run may take longer than this; a hang fails the benchmark.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The most items one run moves, whatever its rate.
const MAX_ITEMS: u64 = 200_000_000;

/// The release binaries the points run.
pub struct Binaries {
    /// One per entry of [`VARIANTS`], in that order.
    pub variants: Vec<PathBuf>,
    /// `conveyor-bare-loops`.
    pub bare_loops: PathBuf,
}

/// One run's outcome.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub items: u64,
    pub elapsed_secs: f64,
}

impl Sample {
    pub fn per_sec(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            self.items as f64 / self.elapsed_secs
        } else {
            0.0
        }
    }
}

/// The command that runs `point` over `items` items.
fn command(point: &Point, binaries: &Binaries, items: u64) -> Command {
    let scenario = &point.scenario;
    let mut command;
    match &point.subject {
        Subject::Template { variant, batch_max } => {
            command = Command::new(&binaries.variants[*variant]);
            let variant = &VARIANTS[*variant];
            command.args(["--report", "json", "--progress-secs", "0"]);
            command.args(["--stall-warn-secs", "0"]);
            // sync-bridge moves single items and has no `--batch-max`.
            if variant.batch_sizes != [1] {
                command.arg(format!("--batch-max={batch_max}"));
            }
            if variant.has_workers {
                command.arg(format!("--workers={}", scenario.workers));
            }
            // A project with the metrics endpoint would otherwise bind the
            // default port, and fail if anything else holds it.
            let (name, addr) = crate::metrics_on_a_free_port(variant.template);
            command.env(name, addr);
        }
        Subject::Bare(layout) => {
            command = Command::new(&binaries.bare_loops);
            let kind = |threads: bool| if threads { "thread" } else { "task" };
            let (relays, consumers) = if layout.relay_workers {
                (scenario.workers, 1)
            } else {
                (0, scenario.workers)
            };
            command.args(["--channel", layout.channel.flag()]);
            command.args(["--producer-kind", kind(layout.producer_threads)]);
            command.args(["--consumer-kind", kind(layout.consumer_threads)]);
            command.arg(format!("--relays={relays}"));
            command.arg(format!("--consumers={consumers}"));
            command.args(["--work-in", layout.work_in.flag()]);
            command.args(["--item", layout.item.flag()]);
        }
    }
    command.arg(format!("--producers={}", scenario.producers));
    command.arg(format!("--capacity={}", scenario.capacity));
    command.arg(format!("--work-us={}", scenario.work_us));
    command.arg(format!("--items={items}"));
    command
}

/// Runs `point` once over `items` items. Its stderr goes to `log`.
pub fn run_once(point: &Point, binaries: &Binaries, items: u64, log: &Path) -> Result<Sample> {
    let mut command = command(point, binaries, items);
    let stderr =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let output = wait_with_timeout(child, RUN_TIMEOUT)
        .with_context(|| format!("{} (see {})", point.id(), log.display()))?;
    ensure!(
        output.status.success(),
        "{} exited with {} (see {})",
        point.id(),
        output.status,
        log.display()
    );
    let sample = parse(&output.stdout, &point.subject)
        .with_context(|| format!("reading the output of {}", point.id()))?;
    ensure!(
        sample.items == items,
        "{}: {} of {items} items handled",
        point.id(),
        sample.items
    );
    Ok(sample)
}

/// The items and elapsed time in a run's JSON output: a template's report
/// (`handled`, `elapsed_secs`) or the bare loop's line (`items`, `elapsed_secs`).
fn parse(stdout: &[u8], subject: &Subject) -> Result<Sample> {
    let value: serde_json::Value = serde_json::from_slice(stdout.trim_ascii())?;
    let field = match subject {
        Subject::Template { .. } => "handled",
        Subject::Bare(_) => "items",
    };
    let items = value[field]
        .as_u64()
        .with_context(|| format!("no `{field}` in {value}"))?;
    let elapsed_secs = value["elapsed_secs"]
        .as_f64()
        .with_context(|| format!("no `elapsed_secs` in {value}"))?;
    Ok(Sample {
        items,
        elapsed_secs,
    })
}

/// How many items make a run of `point` last about `target`: a small probe,
/// grown until a run lasts at least a quarter of the target, then scaled by
/// the rate it showed. A probe with work per item starts small, since each
/// item waits at least a millisecond.
pub fn calibrate(point: &Point, binaries: &Binaries, target: Duration, log: &Path) -> Result<u64> {
    let mut items = if point.scenario.work_us == 0 {
        20_000
    } else {
        100 * u64::from(point.scenario.producers.max(point.scenario.workers))
    };
    loop {
        let sample = run_once(point, binaries, items, log)?;
        let wanted = (sample.per_sec() * target.as_secs_f64()) as u64;
        if sample.elapsed_secs >= target.as_secs_f64() / 4.0 || items >= MAX_ITEMS {
            return Ok(wanted.clamp(items.min(1_000), MAX_ITEMS));
        }
        items = wanted.clamp(items * 2, items * 64).min(MAX_ITEMS);
    }
}

/// The median of `values`, which must not be empty.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::plan::{Layout, Scenario};

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[7.0]), 7.0);
    }

    #[test]
    fn reads_a_template_report_and_a_bare_line() {
        let template = Subject::Template {
            variant: 0,
            batch_max: 1,
        };
        let report = br#"{"topology":"mpsc-fan-in","handled":500,"elapsed_secs":0.25}"#;
        let sample = parse(report, &template).unwrap();
        assert_eq!((sample.items, sample.per_sec()), (500, 2000.0));

        let bare = Subject::Bare(VARIANTS[0].layout);
        let line = b"{\"items\":10,\"elapsed_secs\":0.5,\"items_per_sec\":20}\n";
        assert_eq!(parse(line, &bare).unwrap().per_sec(), 20.0);
        assert!(parse(b"{\"elapsed_secs\":1}", &bare).is_err());
    }

    #[test]
    fn a_bare_command_carries_the_shape() {
        let binaries = Binaries {
            variants: Vec::new(),
            bare_loops: PathBuf::from("bare"),
        };
        let layout: Layout = VARIANTS
            .iter()
            .find(|v| v.name == "sync-bridge-both")
            .unwrap()
            .layout;
        let point = Point {
            subject: Subject::Bare(layout),
            scenario: Scenario {
                producers: 4,
                workers: 3,
                capacity: 64,
                work_us: 0,
            },
        };
        let command = command(&point, &binaries, 99);
        let args: Vec<_> = command.get_args().map(|a| a.to_str().unwrap()).collect();
        for expected in [
            "--relays=3",
            "--consumers=1",
            "--producers=4",
            "--items=99",
            "thread",
            "relays",
        ] {
            assert!(args.contains(&expected), "{expected} missing in {args:?}");
        }
    }
}
