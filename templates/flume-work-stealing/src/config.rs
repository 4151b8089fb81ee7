//! Command-line configuration, with an environment variable behind every flag.
//!
//! The variable is the flag's name prefixed with the package name in
//! SCREAMING_SNAKE_CASE: for a package `my-service`, `--capacity` falls back to
//! `MY_SERVICE_CAPACITY`. Command-line flags win over the environment.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};

/// The most items a channel may buffer. A queue larger than this hides a
/// consumer that cannot keep up instead of pushing back on the producers.
pub const MAX_CAPACITY: usize = 999_999;

/// The most producer or worker tasks a run may start.
pub const MAX_TASKS: usize = 4096;

/// Everything a run needs to know, parsed from flags and environment variables.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Producer tasks or threads (the source side).
    #[arg(long, value_name = "N", default_value = "4", value_parser = task_count, allow_negative_numbers = true)]
    pub producers: usize,

    /// Channel capacity: how many messages may wait between the stages; a
    /// message is an item, or a batch where the topology sends batches.
    #[arg(long, value_name = "N", default_value = "{{capacity}}", value_parser = capacity, allow_negative_numbers = true)]
    pub capacity: usize,

    /// Items to produce in total; 0 keeps producing until a shutdown signal.
    #[arg(long, value_name = "N", default_value = "1000000")]
    pub items: u64,

    /// Simulated work per item in microseconds (0 measures the pipeline itself).
    #[arg(long, value_name = "US", default_value = "0",
          value_parser = clap::value_parser!(u64).range(..=60_000_000))]
    pub work_us: u64,

    /// Seconds between progress lines on stderr (0 turns them off).
    #[arg(long, value_name = "SECS", default_value = "1",
          value_parser = clap::value_parser!(u64).range(..=86_400))]
    pub progress_secs: u64,

    /// After a shutdown signal, seconds to wait for the drain before giving
    /// up: the report then counts the unfinished items as abandoned and the
    /// process exits with code 3. 0 waits for as long as the drain takes.
    #[arg(long, value_name = "SECS", default_value = "30",
          value_parser = clap::value_parser!(u64).range(..=86_400))]
    pub drain_timeout: u64,

    /// Warn when the consumers have made no progress for this many seconds
    /// while items are waiting (0 turns the warning off).
    #[arg(long, value_name = "SECS", default_value = "5",
          value_parser = clap::value_parser!(u64).range(..=86_400))]
    pub stall_warn_secs: u64,

    /// Format of the final report on stdout.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = ReportFormat::Text)]
    pub report: ReportFormat,

    /// Flags of the metrics endpoint.
    #[command(flatten)]
    pub metrics: crate::metrics::MetricsArgs,

    /// Flags that only this topology has.
    #[command(flatten)]
    pub topology: crate::pipeline::TopologyArgs,
}

/// How the final report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// A table for people.
    Text,
    /// One JSON object on one line, for scripts and tests.
    Json,
}

impl Config {
    /// Parses `args` (program name first), falling back to the environment
    /// variable of each flag that is not given.
    pub fn from_args_and_env<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let prefix = env_prefix(env!("CARGO_PKG_NAME"));
        // Global, so a flag may also follow a subcommand where the topology
        // has them (flume-work-stealing's `work --until-empty`).
        let command = Self::command().mut_args(|arg| {
            let var = format!("{prefix}_{}", arg.get_id().as_str().to_ascii_uppercase());
            arg.env(var).global(true)
        });
        let mut matches = command.try_get_matches_from(args)?;
        Self::from_arg_matches_mut(&mut matches)
    }

    /// Simulated work per item.
    pub fn work(&self) -> Duration {
        Duration::from_micros(self.work_us)
    }

    /// Interval between progress lines, or `None` when they are off.
    pub fn progress_interval(&self) -> Option<Duration> {
        seconds_unless_zero(self.progress_secs)
    }

    /// How long a drain may take after a shutdown signal, or `None` for no limit.
    pub fn drain_deadline(&self) -> Option<Duration> {
        seconds_unless_zero(self.drain_timeout)
    }

    /// How long the consumers may make no progress before a warning, or
    /// `None` when the warning is off.
    pub fn stall_warning_after(&self) -> Option<Duration> {
        seconds_unless_zero(self.stall_warn_secs)
    }
}

/// `secs` as a duration, with 0 meaning "off".
fn seconds_unless_zero(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// The first line of a clap error: what was wrong, without usage or hints.
pub fn one_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let mut lines = rendered.lines();
    let first = lines.next().unwrap_or("error: invalid arguments");
    // "... were not provided:" names the missing flags on the lines below.
    if !first.ends_with(':') {
        return first.to_owned();
    }
    let listed: Vec<&str> = lines
        .map_while(|line| line.strip_prefix("  "))
        .map(str::trim)
        .collect();
    format!("{first} {}", listed.join(", "))
}

/// Reads an address flag: `IP:PORT`, or a bare `PORT` on the loopback
/// address. A service faces untrusted input, so it listens only where it is
/// told to, and "where" defaults to this machine alone.
pub fn port_or_socket_addr(text: &str) -> Option<SocketAddr> {
    match text.parse::<u16>() {
        Ok(port) => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
        Err(_) => text.parse().ok(),
    }
}

/// `my-service` becomes `MY_SERVICE`.
fn env_prefix(package: &str) -> String {
    package.replace('-', "_").to_ascii_uppercase()
}

/// Parses a task count (1 to [`MAX_TASKS`]) for `--producers` and for the
/// task or thread flags of a topology's `TopologyArgs`.
pub fn task_count(value: &str) -> Result<usize, String> {
    whole_number_in(value, MAX_TASKS)
}

fn capacity(value: &str) -> Result<usize, String> {
    whole_number_in(value, MAX_CAPACITY)
}

fn whole_number_in(value: &str, max: usize) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("svc").chain(args.iter().copied()))
    }

    #[test]
    fn a_missing_argument_is_named_on_the_one_line() {
        let command =
            clap::Command::new("svc").arg(clap::Arg::new("key").long("key").required(true));
        let error = command
            .try_get_matches_from(["svc"])
            .expect_err("--key is required");
        let line = one_line(&error);
        assert!(line.ends_with("were not provided: --key <key>"), "{line}");
    }

    #[test]
    fn counts_must_be_whole_numbers_in_range() {
        for bad in ["0", "-1", "abc", "1.5", "", "1000000"] {
            let error = parse(&["--capacity", bad]).expect_err(bad);
            assert!(
                one_line(&error).contains("from 1 to 999999"),
                "{bad}: {error}"
            );
        }
        assert!(parse(&["--producers", "0"]).is_err());
        assert_eq!(parse(&["--capacity", "1"]).unwrap().capacity, 1);
    }

    #[test]
    fn error_summary_is_one_line_naming_the_flag() {
        let error = parse(&["--capacity", "abc"]).unwrap_err();
        let line = one_line(&error);
        assert!(
            line.starts_with("error:") && line.contains("--capacity"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn zero_turns_the_timers_off() {
        let config = parse(&["--drain-timeout", "0", "--stall-warn-secs", "0"]).unwrap();
        assert_eq!(config.drain_deadline(), None);
        assert_eq!(config.stall_warning_after(), None);
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.drain_deadline(), Some(Duration::from_secs(30)));
        assert!(parse(&["--drain-timeout", "-1"]).is_err());
    }

    #[test]
    fn env_prefix_is_screaming_snake_case() {
        assert_eq!(env_prefix("my-pipeline-svc"), "MY_PIPELINE_SVC");
    }
}
