//! What `cargo ci bench` measures: the template variants, the scenarios each
//! runs, the bare loop of the same shape for each, and the points that come
//! out of crossing them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A template generated with the options that change its shape. The
/// `batching` option is not among them: it only sets the default of
/// `--batch-max`, which every point passes explicitly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    /// Short, file-system-safe name, e.g. `flume-work-stealing-threads`.
    pub name: &'static str,
    /// The template it is generated from.
    pub template: &'static str,
    /// Placeholder values on top of the template's defaults.
    pub options: &'static [(&'static str, &'static str)],
    /// The bare loop's channel and stage kinds.
    pub layout: Layout,
    /// `--batch-max` values to run: 1 and 256 where the template batches,
    /// only 1 (and no flag) where it has no `--batch-max`.
    pub batch_sizes: &'static [u32],
    /// Whether it takes `--workers`.
    pub has_workers: bool,
}

/// Which channel a shape runs over and what kind each of its stages is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Layout {
    /// The channel crate, as `conveyor-bare-loops --channel` names it.
    pub channel: Channel,
    /// Producers are OS threads rather than tasks.
    pub producer_threads: bool,
    /// The workers sit between two channels (tasks), and one consumer
    /// thread drains the second; otherwise the workers are the consumers.
    pub relay_workers: bool,
    /// Consumers are OS threads rather than tasks.
    pub consumer_threads: bool,
    /// The stage that does the per-item work.
    pub work_in: WorkIn,
    /// What a message carries, like the template's demo item.
    pub item: ItemKind,
}

/// What the bare loops send, as `conveyor-bare-loops --item` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ItemKind {
    /// A `u64`; the async templates' demo item is a number too.
    Number,
    /// A number and an empty `String`, like sync-bridge's demo `Record`: a
    /// value with drop glue, which flume moves markedly slower than a `u64`
    /// under contention.
    Record,
}

impl ItemKind {
    /// The name `conveyor-bare-loops --item` takes.
    pub fn flag(self) -> &'static str {
        match self {
            ItemKind::Number => "number",
            ItemKind::Record => "record",
        }
    }
}

/// A channel crate the bare loops can run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Channel {
    TokioMpsc,
    Flume,
    Kanal,
    AsyncChannel,
    Rtrb,
}

/// The stage that waits `--work-us` per item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkIn {
    Producers,
    Relays,
    Consumers,
}

impl Channel {
    /// The name `conveyor-bare-loops --channel` takes.
    pub fn flag(self) -> &'static str {
        match self {
            Channel::TokioMpsc => "tokio-mpsc",
            Channel::Flume => "flume",
            Channel::Kanal => "kanal",
            Channel::AsyncChannel => "async-channel",
            Channel::Rtrb => "rtrb",
        }
    }

    /// How the documents name it.
    pub fn label(self) -> &'static str {
        match self {
            Channel::TokioMpsc => "tokio mpsc",
            Channel::Flume => "flume",
            Channel::Kanal => "kanal",
            Channel::AsyncChannel => "async-channel",
            Channel::Rtrb => "rtrb ring",
        }
    }

    /// Whether more than one consumer can share its receiving end.
    fn multi_consumer(self) -> bool {
        !matches!(self, Channel::TokioMpsc | Channel::Rtrb)
    }
}

impl WorkIn {
    /// The name `conveyor-bare-loops --work-in` takes.
    pub fn flag(self) -> &'static str {
        match self {
            WorkIn::Producers => "producers",
            WorkIn::Relays => "relays",
            WorkIn::Consumers => "consumers",
        }
    }
}

/// An async task-to-task shape over `channel`, work in the consumers.
const fn tasks(channel: Channel) -> Layout {
    Layout {
        channel,
        producer_threads: false,
        relay_workers: false,
        consumer_threads: false,
        work_in: WorkIn::Consumers,
        item: ItemKind::Number,
    }
}

/// A flume layout carrying sync-bridge's kind of item, work in the consumers.
const fn bridge() -> Layout {
    Layout {
        item: ItemKind::Record,
        ..tasks(Channel::Flume)
    }
}

/// Every variant the benchmark generates, in the order the documents list them.
pub const VARIANTS: &[Variant] = &[
    Variant {
        name: "mpsc-fan-in",
        template: "mpsc-fan-in",
        options: &[],
        layout: tasks(Channel::TokioMpsc),
        batch_sizes: &[1, 256],
        has_workers: false,
    },
    Variant {
        name: "flume-work-stealing-tasks",
        template: "flume-work-stealing",
        options: &[("worker_kind", "tasks")],
        layout: tasks(Channel::Flume),
        batch_sizes: &[1, 256],
        has_workers: true,
    },
    Variant {
        name: "flume-work-stealing-threads",
        template: "flume-work-stealing",
        options: &[("worker_kind", "threads")],
        layout: Layout {
            consumer_threads: true,
            ..tasks(Channel::Flume)
        },
        batch_sizes: &[1, 256],
        has_workers: true,
    },
    Variant {
        name: "kanal-hot-path",
        template: "kanal-hot-path",
        options: &[],
        layout: tasks(Channel::Kanal),
        batch_sizes: &[1, 256],
        has_workers: false,
    },
    Variant {
        name: "sync-bridge-sync-to-async",
        template: "sync-bridge",
        options: &[("direction", "sync-to-async")],
        layout: Layout {
            producer_threads: true,
            ..bridge()
        },
        batch_sizes: &[1],
        has_workers: true,
    },
    Variant {
        name: "sync-bridge-async-to-sync",
        template: "sync-bridge",
        options: &[("direction", "async-to-sync")],
        layout: Layout {
            consumer_threads: true,
            work_in: WorkIn::Producers,
            ..bridge()
        },
        batch_sizes: &[1],
        has_workers: false,
    },
    Variant {
        name: "sync-bridge-both",
        template: "sync-bridge",
        options: &[("direction", "both")],
        layout: Layout {
            producer_threads: true,
            relay_workers: true,
            consumer_threads: true,
            work_in: WorkIn::Relays,
            ..bridge()
        },
        batch_sizes: &[1],
        has_workers: true,
    },
];

/// The handler cost of the "realistic" scenarios: one millisecond, the
/// order of a database write or an HTTP call on a local network, and the
/// smallest wait tokio's millisecond timer resolves.
pub const REALISTIC_WORK_US: u64 = 1000;

/// The flags every point shares: one run's shape, apart from the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scenario {
    pub producers: u16,
    /// Workers (consumer or relay tasks or threads); 1 where a template has none.
    pub workers: u16,
    pub capacity: u32,
    pub work_us: u64,
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p{}-w{}-c{}-u{}",
            self.producers, self.workers, self.capacity, self.work_us
        )
    }
}

impl Scenario {
    /// The shape in words, for the documents.
    pub fn describe(&self, layout: &Layout) -> String {
        let kind = |threads: bool| if threads { "thread" } else { "task" };
        let plural = |n: u16| if n == 1 { "" } else { "s" };
        let producers = format!(
            "{} producer {}{}",
            self.producers,
            kind(layout.producer_threads),
            plural(self.producers)
        );
        let workers = format!(
            "{} {}{}",
            self.workers,
            kind(layout.consumer_threads && !layout.relay_workers),
            plural(self.workers)
        );
        let path = if layout.relay_workers {
            format!("{producers} → {workers} → 1 thread")
        } else {
            format!("{producers} → {workers}")
        };
        let work = match self.work_us {
            0 => "no work".to_owned(),
            us => format!("{us} µs per item"),
        };
        format!("{path}, capacity {}, {work}", self.capacity)
    }
}

/// What one point runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A generated variant's release binary with `--batch-max`.
    Template { variant: usize, batch_max: u32 },
    /// `conveyor-bare-loops` with this layout.
    Bare(Layout),
}

/// One measured point: a subject in a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Point {
    pub subject: Subject,
    pub scenario: Scenario,
}

impl Point {
    /// The stable id the documents list and `--compare` matches on.
    pub fn id(&self) -> String {
        match &self.subject {
            Subject::Template { variant, batch_max } => {
                format!("{}/b{batch_max}/{}", VARIANTS[*variant].name, self.scenario)
            }
            Subject::Bare(layout) => format!("bare/{}/{}", layout_name(layout), self.scenario),
        }
    }

    /// The bare loop of the same shape, carrying a `u64`: the floor of the
    /// template's channel. The same as [`Self::baseline`] where the demo
    /// item is a number.
    pub fn floor(&self) -> Option<Point> {
        let mut floor = self.baseline()?;
        if let Subject::Bare(layout) = &mut floor.subject {
            layout.item = ItemKind::Number;
        }
        Some(floor)
    }

    /// The bare loop of the same shape, carrying the same kind of item, that
    /// a template point is compared with.
    pub fn baseline(&self) -> Option<Point> {
        match self.subject {
            Subject::Template { variant, .. } => Some(Point {
                subject: Subject::Bare(VARIANTS[variant].layout),
                scenario: self.scenario,
            }),
            Subject::Bare(_) => None,
        }
    }
}

/// A short name for a layout: its channel and stage kinds.
pub fn layout_name(layout: &Layout) -> String {
    let kind = |threads: bool| if threads { "threads" } else { "tasks" };
    let mut name = format!(
        "{}-{}",
        layout.channel.flag(),
        kind(layout.producer_threads)
    );
    if layout.relay_workers {
        name.push_str("-relay-tasks");
    }
    name.push('-');
    name.push_str(kind(layout.consumer_threads));
    if layout.work_in != WorkIn::Consumers {
        name.push_str("-work-in-");
        name.push_str(layout.work_in.flag());
    }
    if layout.item == ItemKind::Record {
        name.push_str("-records");
    }
    name
}

/// The scenarios `variant` runs. The full set crosses capacity 1, 64 and
/// 1024 with 1 and 4 producers (and 1 and 4 workers where the template has
/// them) without work, and adds the realistic handler cost at capacity 64.
/// The quick set is the one scenario closest to the templates' defaults.
pub fn scenarios(variant: &Variant, quick: bool) -> Vec<Scenario> {
    let workers: &[u16] = match (variant.has_workers, quick) {
        (false, _) => &[1],
        (true, true) => &[4],
        (true, false) => &[1, 4],
    };
    let (producers, capacities): (&[u16], &[u32]) = if quick {
        (&[4], &[64])
    } else {
        (&[1, 4], &[1, 64, 1024])
    };
    let mut scenarios = Vec::new();
    for &producers in producers {
        for &workers in workers {
            for &capacity in capacities {
                scenarios.push(Scenario {
                    producers,
                    workers,
                    capacity,
                    work_us: 0,
                });
            }
            if !quick {
                scenarios.push(Scenario {
                    producers,
                    workers,
                    capacity: 64,
                    work_us: REALISTIC_WORK_US,
                });
            }
        }
    }
    scenarios
}

/// Every point of a run: each variant's entries in each of its scenarios,
/// then the bare loops they are compared with, the same shapes on the other
/// multi-consumer channels where the stages are tasks, and the rtrb ring
/// as the hardware reference for one producer and one consumer. No point
/// appears twice.
pub fn points(quick: bool) -> Vec<Point> {
    let mut templates = Vec::new();
    let mut bare = BTreeSet::new();
    for (index, variant) in VARIANTS.iter().enumerate() {
        for scenario in scenarios(variant, quick) {
            for &batch_max in variant.batch_sizes {
                templates.push(Point {
                    subject: Subject::Template {
                        variant: index,
                        batch_max,
                    },
                    scenario,
                });
            }
            bare.insert((variant.layout, scenario));
            let floor = Layout {
                item: ItemKind::Number,
                ..variant.layout
            };
            bare.insert((floor, scenario));
            if variant.layout == tasks(variant.layout.channel) {
                for channel in [
                    Channel::TokioMpsc,
                    Channel::Flume,
                    Channel::Kanal,
                    Channel::AsyncChannel,
                ] {
                    if scenario.workers == 1 || channel.multi_consumer() {
                        bare.insert((tasks(channel), scenario));
                    }
                }
            }
            if scenario.work_us == 0 && (quick || scenario.producers == 1) {
                let ring = Layout {
                    producer_threads: true,
                    consumer_threads: true,
                    ..tasks(Channel::Rtrb)
                };
                let single = Scenario {
                    producers: 1,
                    workers: 1,
                    ..scenario
                };
                bare.insert((ring, single));
            }
        }
    }
    templates.extend(bare.into_iter().map(|(layout, scenario)| Point {
        subject: Subject::Bare(layout),
        scenario,
    }));
    templates
}

/// The points that are measured side by side: each template point with the
/// bare loops it is compared with (its baseline and, for records, the `u64`
/// floor), as lists of indices into `points`. A round runs a group's members
/// one right after the other, so that a ratio compares runs made seconds
/// apart rather than minutes: on a shared machine the speed of the same
/// binary drifts by half over a minute. Bare loops that no template is
/// compared with form groups of their own.
pub fn groups(points: &[Point]) -> Vec<Vec<usize>> {
    // A template shares the group of its baseline's shape; a bare loop is
    // keyed by its own shape. The item kind is left out of the key, which
    // puts sync-bridge's records loop and its `u64` floor together.
    let key = |point: &Point| {
        let layout = match point.subject {
            Subject::Template { variant, .. } => VARIANTS[variant].layout,
            Subject::Bare(layout) => layout,
        };
        let shape = Layout {
            item: ItemKind::Number,
            ..layout
        };
        (shape, point.scenario)
    };
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index_of_key = BTreeMap::new();
    for (index, point) in points.iter().enumerate() {
        let group = *index_of_key.entry(key(point)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[group].push(index);
    }
    groups
}

/// The order of the runs of round `round` out of `rounds`: the groups of
/// [`groups`], each round starting one step further along the list, and each
/// group's members turned by one every round, so that no point always runs
/// first, or always right after the same other point.
pub fn round_order(groups: &[Vec<usize>], round: usize, rounds: usize) -> Vec<usize> {
    let offset = round * groups.len() / rounds.max(1);
    (0..groups.len())
        .flat_map(|step| {
            let group = &groups[(offset + step) % groups.len()];
            (0..group.len()).map(move |member| group[(round + member) % group.len()])
        })
        .collect()
}

/// The placeholder values `variant` is generated with, on top of the defaults.
pub fn options(variant: &Variant) -> BTreeMap<String, String> {
    variant
        .options
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_point_has_its_baseline_in_the_plan() {
        for quick in [true, false] {
            let points = points(quick);
            for point in &points {
                for reference in [point.baseline(), point.floor()].into_iter().flatten() {
                    assert!(
                        points.contains(&reference),
                        "{} has no reference {}",
                        point.id(),
                        reference.id()
                    );
                }
            }
        }
    }

    #[test]
    fn every_template_point_runs_in_the_group_of_its_references() {
        for quick in [true, false] {
            let points = points(quick);
            let groups = groups(&points);
            let group_of = |point: &Point| {
                let index = points.iter().position(|p| p == point).unwrap();
                groups.iter().position(|g| g.contains(&index)).unwrap()
            };
            for point in &points {
                for reference in [point.baseline(), point.floor()].into_iter().flatten() {
                    assert_eq!(group_of(point), group_of(&reference), "{}", point.id());
                }
            }
        }
    }

    #[test]
    fn every_round_runs_every_point_once_with_groups_kept_together() {
        let points = points(false);
        let groups = groups(&points);
        assert!(groups.iter().all(|g| g.len() <= 4), "groups stay small");
        let rounds = 7;
        let mut first_of_group = vec![std::collections::BTreeSet::new(); groups.len()];
        for round in 0..rounds {
            let order = round_order(&groups, round, rounds);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..points.len()).collect::<Vec<_>>());
            let mut at = 0;
            while at < order.len() {
                let group = groups.iter().position(|g| g.contains(&order[at])).unwrap();
                let members = &order[at..at + groups[group].len()];
                assert!(members.iter().all(|m| groups[group].contains(m)));
                first_of_group[group].insert(members[0]);
                at += members.len();
            }
        }
        for (group, firsts) in groups.iter().zip(&first_of_group) {
            assert_eq!(firsts.len(), group.len(), "each member leads in turn");
        }
    }

    #[test]
    fn ids_are_unique() {
        let points = points(false);
        let mut ids: Vec<String> = points.iter().map(Point::id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), points.len());
    }

    #[test]
    fn single_consumer_channels_never_get_more_than_one_consumer() {
        for point in points(false) {
            if let Subject::Bare(layout) = point.subject
                && !layout.channel.multi_consumer()
            {
                assert_eq!(point.scenario.workers, 1, "{}", point.id());
            }
        }
    }

    #[test]
    fn the_full_plan_covers_the_scenarios_the_issue_names() {
        let full = points(false);
        for capacity in [1, 64, 1024] {
            assert!(full.iter().any(|p| p.scenario.capacity == capacity));
        }
        for count in [1, 4] {
            assert!(full.iter().any(|p| p.scenario.producers == count));
            assert!(full.iter().any(|p| p.scenario.workers == count));
        }
        assert!(full.iter().any(|p| p.scenario.work_us == REALISTIC_WORK_US));
        assert!(points(true).len() < full.len() / 4);
    }
}
