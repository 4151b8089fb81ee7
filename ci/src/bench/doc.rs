//! `docs/benchmarks.md`: rendering a run's results, and reading the ratios
//! of an earlier one back for `--compare`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::plan::{Channel, ItemKind, Point, Subject, VARIANTS};

/// A template point whose ratio to its bare loop is below this is listed
/// as one to look into.
pub const LOW_RATIO: f64 = 0.9;

/// One point and the rate of each of its rounds.
#[derive(Debug, Clone)]
pub struct Measured {
    pub point: Point,
    /// Items per second, one per round.
    pub rates: Vec<f64>,
}

impl Measured {
    pub fn median(&self) -> f64 {
        super::measure::median(&self.rates)
    }

    /// How this point compares with `reference`: the median over the rounds
    /// of this point's rate divided by the reference's rate in the same
    /// round. The two ran seconds apart in each round (see
    /// [`super::plan::groups`]), so a machine that speeds up or slows down
    /// between rounds moves both sides of each quotient alike.
    pub fn ratio_to(&self, reference: &Measured) -> f64 {
        let per_round: Vec<f64> = self
            .rates
            .iter()
            .zip(&reference.rates)
            .map(|(rate, reference)| rate / reference)
            .collect();
        super::measure::median(&per_round)
    }

    fn range(&self) -> (f64, f64) {
        let min = self.rates.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rates.iter().copied().fold(0.0, f64::max);
        (min, max)
    }
}

/// What the document says about the run itself.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// When the run started, UTC.
    pub date: String,
    /// Label and value: CPU, cores, memory, kernel, load.
    pub machine: Vec<(String, String)>,
    /// Toolchain and crate versions, label and value.
    pub versions: Vec<(String, String)>,
    /// The command as typed.
    pub command: String,
    pub rounds: usize,
    pub target_secs: f64,
    pub wall_secs: f64,
}

/// Every point, by id.
fn by_id(results: &[Measured]) -> BTreeMap<String, &Measured> {
    results.iter().map(|m| (m.point.id(), m)).collect()
}

/// Every template point's ratio to its bare loop, by id.
pub fn ratios(results: &[Measured]) -> BTreeMap<String, f64> {
    let by_id = by_id(results);
    results
        .iter()
        .filter_map(|m| {
            let baseline = by_id.get(&m.point.baseline()?.id())?;
            Some((m.point.id(), m.ratio_to(baseline)))
        })
        .collect()
}

/// `rate` in items/s with a unit prefix, e.g. `12.3 M`.
pub fn human(rate: f64) -> String {
    match rate {
        r if r >= 1e9 => format!("{:.2} G", r / 1e9),
        r if r >= 1e6 => format!("{:.1} M", r / 1e6),
        r if r >= 1e3 => format!("{:.1} k", r / 1e3),
        r => format!("{r:.0}"),
    }
}

fn entry_name(point: &Point) -> String {
    match point.subject {
        Subject::Template { batch_max: 1, .. } => "item by item".to_owned(),
        Subject::Template { batch_max, .. } => format!("batches of {batch_max}"),
        Subject::Bare(layout) => format!("bare {}", layout.channel.label()),
    }
}

/// The whole document. `chart` is the chart's file name, beside it.
pub fn render(info: &RunInfo, results: &[Measured], chart: &str) -> String {
    let ratios = ratios(results);
    let by_id = by_id(results);
    let mut doc = String::new();
    let _ = writeln!(doc, "# Benchmarks\n");
    let _ = writeln!(
        doc,
        "Written by `{}` on {}. Do not edit by hand: run the command again. \
         Every speed claim in the READMEs comes from this file.\n",
        info.command, info.date
    );
    let _ = writeln!(doc, "![items/s per entry, log scale]({chart})\n");

    let _ = writeln!(doc, "## How it was measured\n");
    for (label, value) in info.machine.iter().chain(&info.versions) {
        let _ = writeln!(doc, "- {label}: {value}");
    }
    let _ = writeln!(
        doc,
        "- wall time of the run: {:.1} min\n",
        info.wall_secs / 60.0
    );
    let _ = writeln!(
        doc,
        "Each template is generated with its defaults (plus the option named in its \
         heading) by cargo-generate and built in release mode, as a user would. Each point \
         runs the service binary as its own process with `--report json` and the flags of \
         its shape; items/s is `handled` over the report's `elapsed_secs`, the pipeline's \
         own clock, so process start-up is not counted. The bare loops \
         (`ci/bare-loops`) move items through the same shape on one channel crate and \
         do nothing else, timed the same way. Their items are like the template's demo \
         items: a `u64` for the async templates (whose demo item is a number), a number \
         and an empty `String` for sync-bridge (whose demo `Record` carries the input \
         line); sync-bridge's tables also show the `u64` loop, the channel's floor. Where \
         a stage waits per item, the bare loop waits the same way: a tokio sleep, awaited \
         in a task or under `Handle::block_on` on a thread. The bare loops are built with \
         the release profile every template ships: fat LTO and one codegen unit. Each \
         point is first sized to run for about \
         {:.2} s, then run {} times. Every round runs every point once, and runs each \
         template point right next to the bare loops it is compared with, in an order \
         that turns each round; the groups themselves start one step further along each \
         round. The tables quote the median and the range of the rounds. The ratio is \
         the median, over the rounds, of the template's rate divided by the rate of the \
         bare loop of the same shape on the template's channel in the same round: the two \
         ran seconds apart, so a shared machine that changes speed between rounds (the \
         same binary can drift by half within a minute) moves both sides of each quotient \
         alike. Absolute numbers depend on the machine; compare ratios.\n",
        info.target_secs, info.rounds
    );
    let _ = writeln!(
        doc,
        "Shapes: `pP-wW-cC-uU` is P producers, W workers (consumers, or the tasks \
         between the two channels of sync-bridge's `both`), capacity C, and U µs of \
         handler work per item (a tokio sleep, so at least about a millisecond). With \
         batches, capacity counts batches and the demo handler waits once per batch.\n"
    );

    let low: Vec<(&String, &f64)> = ratios.iter().filter(|(_, r)| **r < LOW_RATIO).collect();
    let _ = writeln!(doc, "## Below {LOW_RATIO}x of the bare loop\n");
    if low.is_empty() {
        let _ = writeln!(doc, "None.\n");
    } else {
        for (id, ratio) in low {
            let _ = writeln!(doc, "- `{id}`: {ratio:.2}x");
        }
        doc.push('\n');
    }

    let _ = writeln!(doc, "## Templates against the bare loop of their shape\n");
    for (index, variant) in VARIANTS.iter().enumerate() {
        let rows: Vec<&Measured> = results
            .iter()
            .filter(|m| matches!(m.point.subject, Subject::Template { variant, .. } if variant == index))
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(doc, "### {}\n", variant.name);
        // Where the demo item is not a number, the table also shows the
        // channel's floor: the same shape carrying a `u64`.
        let records = variant.layout.item == ItemKind::Record;
        let channel = variant.layout.channel.label();
        if records {
            let _ = writeln!(
                doc,
                "| point | shape | entry | items/s | range | bare {channel}, u64 | vs u64 | bare {channel}, records | ratio |"
            );
            let _ = writeln!(doc, "|---|---|---|---|---|---|---|---|---|");
        } else {
            let _ = writeln!(
                doc,
                "| point | shape | entry | items/s | range | bare {channel} | ratio |"
            );
            let _ = writeln!(doc, "|---|---|---|---|---|---|---|");
        }
        for measured in rows {
            let point = &measured.point;
            let (min, max) = measured.range();
            let id = point.id();
            let measured_of =
                |reference: Option<Point>| reference.and_then(|r| by_id.get(&r.id()).copied());
            let rate_and_ratio = |reference: Option<&Measured>| match reference {
                Some(reference) => format!(
                    "{} | {:.2}x",
                    human(reference.median()),
                    measured.ratio_to(reference)
                ),
                None => "- | -".to_owned(),
            };
            let floor = if records {
                format!("{} | ", rate_and_ratio(measured_of(point.floor())))
            } else {
                String::new()
            };
            let _ = writeln!(
                doc,
                "| `{id}` | {} | {} | {} | {} to {} | {floor}{} |",
                point.scenario.describe(&variant.layout),
                entry_name(point),
                human(measured.median()),
                human(min),
                human(max),
                rate_and_ratio(measured_of(point.baseline())),
            );
        }
        doc.push('\n');
    }

    render_channels(&mut doc, results);

    let _ = writeln!(doc, "## Every bare loop\n");
    let _ = writeln!(doc, "| point | shape | items/s | range |");
    let _ = writeln!(doc, "|---|---|---|---|");
    for measured in results {
        if let Subject::Bare(layout) = &measured.point.subject {
            let (min, max) = measured.range();
            let _ = writeln!(
                doc,
                "| `{}` | {}: {}{} | {} | {} to {} |",
                measured.point.id(),
                layout.channel.label(),
                measured.point.scenario.describe(layout),
                match layout.item {
                    ItemKind::Number => "",
                    ItemKind::Record => ", records",
                },
                human(measured.median()),
                human(min),
                human(max)
            );
        }
    }
    doc
}

/// The task-to-task shapes without work, one row each, with every channel
/// crate's bare loop side by side: which channel is fastest for a shape.
fn render_channels(doc: &mut String, results: &[Measured]) {
    let channels = [
        Channel::TokioMpsc,
        Channel::Flume,
        Channel::Kanal,
        Channel::AsyncChannel,
    ];
    let mut rows: BTreeMap<_, BTreeMap<Channel, f64>> = BTreeMap::new();
    for measured in results {
        if let Subject::Bare(layout) = measured.point.subject {
            let tasks_only =
                !layout.producer_threads && !layout.consumer_threads && !layout.relay_workers;
            if tasks_only && measured.point.scenario.work_us == 0 {
                rows.entry(measured.point.scenario)
                    .or_default()
                    .insert(layout.channel, measured.median());
            }
        }
    }
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(doc, "## Channel crates on the same task-to-task shape\n");
    let _ = writeln!(
        doc,
        "Bare loops, median items/s; tokio mpsc has one consumer, so it has no \
         entry with 4 workers.\n"
    );
    let header: Vec<&str> = channels.iter().map(|c| c.label()).collect();
    let _ = writeln!(doc, "| shape | {} |", header.join(" | "));
    let _ = writeln!(doc, "|---|{}", "---|".repeat(channels.len()));
    for (scenario, rates) in rows {
        let cells: Vec<String> = channels
            .iter()
            .map(|c| rates.get(c).map_or("-".to_owned(), |r| human(*r)))
            .collect();
        let _ = writeln!(doc, "| `{scenario}` | {} |", cells.join(" | "));
    }
    doc.push('\n');
}

/// The ratio column of every template row in a document `render` wrote, by id.
pub fn read_ratios(markdown: &str) -> BTreeMap<String, f64> {
    markdown
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .strip_prefix('|')?
                .strip_suffix('|')?
                .split('|')
                .map(str::trim)
                .collect();
            let id = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            let ratio = cells.last()?.strip_suffix('x')?.parse().ok()?;
            Some((id.to_owned(), ratio))
        })
        .collect()
}

/// A point whose ratio moved by more than the threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Moved {
    pub id: String,
    pub before: f64,
    pub after: f64,
}

impl Moved {
    /// The relative change, e.g. -0.12 for a drop of 12%.
    pub fn change(&self) -> f64 {
        self.after / self.before - 1.0
    }
}

/// The points in both maps whose ratio changed by more than `threshold`
/// (0.1 for 10%), biggest drop first.
pub fn moved(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    threshold: f64,
) -> Vec<Moved> {
    let mut moved: Vec<Moved> = after
        .iter()
        .filter_map(|(id, &after)| {
            let before = *before.get(id)?;
            let change = Moved {
                id: id.clone(),
                before,
                after,
            };
            (change.change().abs() > threshold).then_some(change)
        })
        .collect();
    moved.sort_by(|a, b| a.change().total_cmp(&b.change()));
    moved
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::plan::points;

    fn measured_quick_run() -> Vec<Measured> {
        points(true)
            .into_iter()
            .enumerate()
            .map(|(i, point)| Measured {
                point,
                rates: vec![
                    1e6 * (i + 1) as f64,
                    2e6 * (i + 1) as f64,
                    1.5e6 * (i + 1) as f64,
                ],
            })
            .collect()
    }

    fn info() -> RunInfo {
        RunInfo {
            date: "2026-11-27 13:00 UTC".into(),
            machine: vec![("cores".into(), "2".into())],
            versions: vec![("rustc".into(), "1.95.0".into())],
            command: "cargo ci bench --quick".into(),
            rounds: 3,
            target_secs: 0.1,
            wall_secs: 60.0,
        }
    }

    #[test]
    fn the_ratios_read_back_are_the_ratios_written() {
        let results = measured_quick_run();
        let written = ratios(&results);
        assert!(!written.is_empty());
        let read = read_ratios(&render(&info(), &results, "chart.svg"));
        assert_eq!(read.len(), written.len());
        for (id, ratio) in written {
            assert!(
                (read[&id] - ratio).abs() < 0.006,
                "{id}: {} vs {ratio}",
                read[&id]
            );
        }
    }

    #[test]
    fn only_moves_beyond_the_threshold_are_reported_drops_first() {
        let before: BTreeMap<String, f64> = [("a", 1.0), ("b", 1.0), ("c", 2.0), ("gone", 1.0)]
            .map(|(k, v)| (k.to_owned(), v))
            .into();
        let after: BTreeMap<String, f64> = [("a", 1.05), ("b", 0.8), ("c", 2.5), ("new", 1.0)]
            .map(|(k, v)| (k.to_owned(), v))
            .into();
        let moved = moved(&before, &after, 0.1);
        let ids: Vec<&str> = moved.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert!((moved[0].change() + 0.2).abs() < 1e-9);
    }

    #[test]
    fn low_ratios_are_listed() {
        let mut results = measured_quick_run();
        let template = results
            .iter()
            .position(|m| m.point.baseline().is_some())
            .unwrap();
        let baseline_id = results[template].point.baseline().unwrap().id();
        let baseline = results
            .iter()
            .find(|m| m.point.id() == baseline_id)
            .unwrap();
        results[template].rates = baseline.rates.iter().map(|rate| rate / 2.0).collect();
        let doc = render(&info(), &results, "chart.svg");
        let id = results[template].point.id();
        assert!(doc.contains(&format!("- `{id}`: 0.50x")), "{doc}");
    }

    #[test]
    fn the_ratio_pairs_the_runs_of_each_round() {
        let point = points(true).remove(0);
        let measured = |rates: Vec<f64>| Measured {
            point: point.clone(),
            rates,
        };
        // Per round 0.5, 2.0 and 0.9: the median is 0.9, where the
        // medians' quotient would say 1.0.
        let template = measured(vec![1.0, 2.0, 9.0]);
        let bare = measured(vec![2.0, 1.0, 10.0]);
        assert!((template.ratio_to(&bare) - 0.9).abs() < 1e-9);
    }

    #[test]
    fn rates_read_with_a_unit() {
        assert_eq!(human(2.5e9), "2.50 G");
        assert_eq!(human(12_345_678.0), "12.3 M");
        assert_eq!(human(4_200.0), "4.2 k");
        assert_eq!(human(950.0), "950");
    }
}
