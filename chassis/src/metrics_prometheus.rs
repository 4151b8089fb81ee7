//! Prometheus metrics and health probes over HTTP (generated with
//! `metrics=prometheus`).
//!
//! One listener, `--metrics-addr`, answers three paths:
//! - `GET /metrics`: the run's counters in the Prometheus text format;
//! - `GET /healthz`: 200 while the process is alive (a liveness probe);
//! - `GET /readyz`: 200 while the pipeline takes work, 503 before it starts
//!   and from the moment a shutdown or a failed stage begins the drain (a
//!   readiness probe: the load balancer stops sending work).
//!
//! The hot path is not touched. Producers and workers keep publishing into
//! their own counter slots ([`crate::counters`]); a scrape reads the slots and
//! hands the sums to the `metrics` facade, whose Prometheus exporter renders
//! them. The one figure measured on the hot path, how long the handler takes,
//! is sampled: about one item per [`SAMPLE_GAP`] per consumer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::counters::Counters;

/// Where the endpoint listens unless told otherwise: loopback only, so a
/// service does not expose its internals until someone decides to.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";

/// A client gets this long to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bounds of the handling-time histogram buckets, in seconds: from
/// 10 µs (an in-memory handler) to 10 s (a slow remote call).
const HANDLE_SECONDS_BUCKETS: [f64; 13] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0,
];

/// Flags of the metrics endpoint.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Serve /metrics, /healthz and /readyz on this address (`PORT` alone
    /// means 127.0.0.1:PORT; `off` turns the endpoint off).
    #[arg(long, value_name = "ADDR|off", default_value = DEFAULT_ADDR, value_parser = metrics_addr)]
    pub metrics_addr: MetricsAddr,
}

/// Where to serve the endpoint, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAddr {
    /// No endpoint.
    Off,
    /// Listen here.
    At(SocketAddr),
}

/// Parses `off`, `PORT` (on the loopback address) or `IP:PORT`.
fn metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    if text == "off" {
        return Ok(MetricsAddr::Off);
    }
    crate::config::port_or_socket_addr(text)
        .map(MetricsAddr::At)
        .ok_or_else(|| format!("`{text}` is not off, PORT or IP:PORT (e.g. {DEFAULT_ADDR})"))
}

/// Binds the endpoint now, so a taken port or a refused address is an error
/// before any work starts, then serves it from a task until the process
/// exits. Does nothing with `--metrics-addr off`.
pub fn serve(args: &MetricsArgs) -> anyhow::Result<()> {
    let MetricsAddr::At(addr) = args.metrics_addr else {
        return Ok(());
    };
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let local = listener.local_addr()?;

    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(name("handle_duration_seconds")),
            &HANDLE_SECONDS_BUCKETS,
        )?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).context("a metrics recorder is already installed")?;
    // Handles taken before the recorder is installed record nothing, so
    // every one is taken from here on.
    let exporter = Arc::new(Exporter::new(handle));
    let _ = HANDLE_SECONDS.set(metrics::histogram!(name("handle_duration_seconds")));

    tokio::spawn(accept(listener, exporter));
    tracing::info!(addr = %local, "serving /metrics, /healthz and /readyz");
    Ok(())
}

/// Lets the endpoint read a run's counters and know whether it still takes
/// work. The supervisor calls it when a run starts; `stop` is cancelled when
/// the drain begins (it is a child of the shutdown request, so a signal
/// cancels it too), `done` when the run has ended.
pub fn watch_run(counters: &Arc<Counters>, stop: &CancellationToken, done: &CancellationToken) {
    let run = WatchedRun {
        counters: Arc::clone(counters),
        stop: stop.clone(),
        done: done.clone(),
    };
    *RUN.lock().unwrap_or_else(PoisonError::into_inner) = Some(run);
}

/// The run the endpoint reports on: the last one started in this process.
static RUN: Mutex<Option<WatchedRun>> = Mutex::new(None);

/// The handling-time histogram, once the endpoint is serving.
static HANDLE_SECONDS: OnceLock<Histogram> = OnceLock::new();

/// What the endpoint knows of the run it reports on.
struct WatchedRun {
    counters: Arc<Counters>,
    stop: CancellationToken,
    done: CancellationToken,
}

/// Times how long a consumer's handler takes, for a sample of the items.
///
/// Reading the clock twice and recording costs about as much as a fast
/// pipeline spends on a whole item: timing one item in 64 cost kanal-hot-path
/// a seventh of its throughput at 65 M items/s. So the timer takes roughly
/// one sample per [`SAMPLE_GAP`] and no more, whatever the rate: it times
/// every `stride`-th item, doubling the stride while samples come closer than
/// half the gap and halving it while they are more than four gaps apart.
/// Between samples an item costs a counter decrement; a slow handler is
/// timed on every item.
#[derive(Debug)]
pub struct HandleTimer {
    countdown: u32,
    stride: u32,
    last_sample: Option<Instant>,
}

/// The spacing of handling-time samples a timer aims at, per consumer.
pub const SAMPLE_GAP: Duration = Duration::from_millis(1);

/// The most items a timer lets pass between two samples.
const MAX_STRIDE: u32 = 1 << 16;

impl Default for HandleTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl HandleTimer {
    /// A timer for one consumer; it times the first item.
    pub const fn new() -> Self {
        Self {
            countdown: 1,
            stride: 1,
            last_sample: None,
        }
    }

    /// Call before handling an item; pass what it returns to [`Self::stop`].
    #[inline]
    pub fn start(&mut self) -> Option<Instant> {
        self.countdown -= 1;
        if self.countdown > 0 {
            return None;
        }
        self.countdown = self.stride;
        HANDLE_SECONDS.get()?;
        Some(Instant::now())
    }

    /// Call after handling the item [`Self::start`] was called for.
    #[inline]
    pub fn stop(&mut self, started: Option<Instant>) {
        if let (Some(started), Some(histogram)) = (started, HANDLE_SECONDS.get()) {
            histogram.record(started.elapsed().as_secs_f64());
            if let Some(last) = self.last_sample {
                self.stride = next_stride(self.stride, started - last);
            }
            self.last_sample = Some(started);
        }
    }
}

/// The stride after two samples `gap` apart.
fn next_stride(stride: u32, gap: Duration) -> u32 {
    if gap < SAMPLE_GAP / 2 {
        (stride * 2).min(MAX_STRIDE)
    } else if gap > SAMPLE_GAP * 4 {
        (stride / 2).max(1)
    } else {
        stride
    }
}

/// A metric name with the package's prefix: `my-service` gives
/// `my_service_items_handled_total`.
fn name(suffix: &str) -> String {
    format!("{}_{suffix}", env!("CARGO_PKG_NAME").replace('-', "_"))
}

/// Turns the run's counters into Prometheus metrics when scraped.
struct Exporter {
    handle: PrometheusHandle,
    produced: Counter,
    rejected: Counter,
    handled: Counter,
    failed: Counter,
    retried: Counter,
    dead_lettered: Counter,
    dropped: Counter,
    stall_episodes: Counter,
    queue_depth: Gauge,
    in_flight: Gauge,
}

impl Exporter {
    fn new(handle: PrometheusHandle) -> Self {
        let counter = |suffix: &str, help: &'static str| {
            metrics::describe_counter!(name(suffix), Unit::Count, help);
            metrics::counter!(name(suffix))
        };
        let gauge = |suffix: &str, help: &'static str| {
            metrics::describe_gauge!(name(suffix), Unit::Count, help);
            metrics::gauge!(name(suffix))
        };
        metrics::describe_counter!(
            name("worker_items_handled_total"),
            Unit::Count,
            "Items handled successfully, per worker."
        );
        metrics::describe_histogram!(
            name("handle_duration_seconds"),
            Unit::Seconds,
            "Time the handler took per call, for an item or a whole batch (sampled: about one call per millisecond per consumer)."
        );
        Self {
            handle,
            produced: counter(
                "items_produced_total",
                "Items made by the sources, rejected inputs included.",
            ),
            rejected: counter(
                "items_rejected_total",
                "Inputs a source could not read; also counted as produced and failed.",
            ),
            handled: counter("items_handled_total", "Items handled successfully."),
            failed: counter(
                "items_failed_total",
                "Items whose handler failed, rejected inputs included.",
            ),
            retried: counter(
                "items_retried_total",
                "Items handed to their handler more than once (--retries).",
            ),
            dead_lettered: counter(
                "items_dead_lettered_total",
                "Failed items written to the dead-letter file.",
            ),
            dropped: counter(
                "items_dropped_total",
                "Failed items kept nowhere: no dead-letter file, or writing to it failed.",
            ),
            stall_episodes: counter(
                "stall_episodes_total",
                "Times no item finished for --stall-warn-secs while items were waiting.",
            ),
            queue_depth: gauge(
                "queue_depth",
                "Items waiting in the channel, as last sampled by a consumer.",
            ),
            in_flight: gauge(
                "items_in_flight",
                "Items produced and not yet finished: queued, or in a handler.",
            ),
        }
    }

    /// The Prometheus text of the current run's counters.
    fn render(&self) -> String {
        let run = RUN.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(run) = run.as_ref() {
            let totals = run.counters.totals();
            // The same figures as the report's, so that the two always agree.
            self.produced.absolute(totals.made());
            self.rejected.absolute(totals.rejected);
            self.handled.absolute(totals.handled);
            self.failed.absolute(totals.failed_or_rejected());
            self.retried.absolute(totals.retried);
            self.dead_lettered.absolute(totals.dead_lettered);
            self.dropped.absolute(totals.dropped());
            self.stall_episodes.absolute(run.counters.stall_episodes());
            self.queue_depth.set(run.counters.queue_depth() as f64);
            self.in_flight
                .set(totals.produced.saturating_sub(totals.finished()) as f64);
            for (worker, handled) in totals.handled_per_worker.iter().enumerate() {
                metrics::counter!(name("worker_items_handled_total"), "worker" => worker.to_string())
                    .absolute(*handled);
            }
        }
        drop(run);
        // Histograms are kept in buckets that upkeep folds together; the
        // exporter's own HTTP listener runs it on a timer, this one on scrape.
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// Whether the pipeline takes work: a run has started, and neither a
    /// shutdown nor a failed stage has begun its drain, and it has not ended.
    fn ready(&self) -> bool {
        let run = RUN.lock().unwrap_or_else(PoisonError::into_inner);
        run.as_ref()
            .is_some_and(|run| !run.stop.is_cancelled() && !run.done.is_cancelled())
    }

    fn respond(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
        }
        match request.uri().path() {
            "/metrics" => {
                let mut response = text(StatusCode::OK, self.render());
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8".parse().unwrap(),
                );
                response
            }
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.ready() => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            _ => text(StatusCode::NOT_FOUND, "try /metrics, /healthz or /readyz\n"),
        }
    }
}

/// A plain-text response.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

/// Accepts scrapers and probes, one task per connection, until the process
/// exits. A failed accept (out of file descriptors, say) is logged and
/// retried after a pause, so the endpoint outlives a bad moment.
async fn accept(listener: tokio::net::TcpListener, exporter: Arc<Exporter>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let exporter = Arc::clone(&exporter);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = exporter.respond(&request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_like_the_listener_flag() {
        assert_eq!(metrics_addr("off"), Ok(MetricsAddr::Off));
        assert_eq!(
            metrics_addr("9000"),
            Ok(MetricsAddr::At("127.0.0.1:9000".parse().unwrap()))
        );
        assert_eq!(
            metrics_addr("0.0.0.0:9464"),
            Ok(MetricsAddr::At("0.0.0.0:9464".parse().unwrap()))
        );
        for bad in ["", "on", "localhost:9464", "70000", "1.2.3.4"] {
            assert!(metrics_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_timer_samples_nothing_without_an_endpoint() {
        let mut timer = HandleTimer::new();
        assert!((0..1000).all(|_| timer.start().is_none()));
    }

    #[test]
    fn the_stride_follows_the_rate_of_samples() {
        let fast = SAMPLE_GAP / 10;
        let slow = SAMPLE_GAP * 10;
        let mut stride = 1;
        for _ in 0..40 {
            stride = next_stride(stride, fast);
        }
        assert_eq!(stride, MAX_STRIDE, "fast items: ever fewer samples");
        assert_eq!(next_stride(stride, SAMPLE_GAP), stride, "on target: kept");
        for _ in 0..40 {
            stride = next_stride(stride, slow);
        }
        assert_eq!(stride, 1, "slow items: every one is timed");
    }
}
