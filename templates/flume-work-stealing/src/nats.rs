//! The stage boundary as a NATS JetStream work queue (generated with
//! `transport=nats`), so that producers and workers can run as separate
//! processes, on as many machines as the work needs.
//!
//! ```text
//! produce: sources ─▶ [ flume ] ─▶ publishers ─┐
//!                                              ▼
//!                    JetStream stream (work-queue retention, on disk)
//!                                              │ one durable pull consumer,
//!                                              │ shared by every worker process
//! work:    fetcher ◀───────────────────────────┘
//!             └─▶ [ flume ] ─▶ workers ─▶ Workload::handle_batch ─▶ ack
//! ```
//!
//! A stream with work-queue retention and one durable pull consumer is the
//! distributed form of "every worker holds a clone of the receiver": each
//! message goes to one worker process, whichever asks first, and leaves the
//! stream once that process acknowledges it. A process given no role runs
//! the whole pipeline itself and never comes here.
//!
//! - **Messages.** One message carries one batch: a JSON array of up to
//!   `--batch-max` items. A bigger batch shares the cost of a message (some
//!   tens of thousands of messages a second on a 2-core machine, see the
//!   README) among more items.
//! - **Publishing.** The producers feed the in-process pipeline
//!   ([`crate::pipeline`]) as usual; its workers are `--publishers`
//!   publishers, each with one publish at a time waiting for the server to
//!   store it, which bounds the publishes in flight. An item counts as handled
//!   once the stream has it. A publish that fails (the server restarting,
//!   say) is sent again with backoff, under the same message id, which the
//!   stream uses to drop the copy if the first one did arrive.
//! - **Working.** A fetcher pulls messages and hands each batch to the local
//!   worker pool. The message is acknowledged only after every item in it
//!   is settled: handled, or failed after `--retries` and written to the
//!   dead-letter file, as in the in-process pipeline. A worker process that
//!   dies holds its messages unacknowledged; the server hands them to
//!   another process after `--ack-wait-secs`. A message is delivered at most
//!   `--max-deliver` times; after that the server stops offering it.
//! - **At least once.** An item can be handled twice: a process can die
//!   after its handler finished and before the acknowledgement reached the
//!   server. Make the handler idempotent (see the README).
//! - **Shutdown.** The fetcher stops asking for messages and hands back
//!   (negatively acknowledges) what its last request still brings, the
//!   workers drain what was fetched, the acknowledgements are flushed, and
//!   the report is printed, within `--drain-timeout` like any run. Messages
//!   not settled by the deadline are redelivered after the ack wait.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::message::{Acker, PublishMessage};
use async_nats::jetstream::{self, AckKind, stream};
use backon::{BackoffBuilder as _, ExponentialBuilder};
use futures_util::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::coop::{self, Pacer};
use crate::delivery::{Batch, FailurePolicy, Settler};
use crate::pipeline::{self, BatchMessage, TOPOLOGY, Worker};
use crate::report::Report;
use crate::supervisor::Supervisor;
use crate::workers;
use crate::workload_api::{self, Workload};

/// How long one pull request waits for messages. The fetcher looks at the
/// stop token, and whether the queue has run empty (with `--until-empty`,
/// and in `run`), at least this often.
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// How long the fetcher waits for the next message of a pull request before
/// it gives the request up: longer than the server takes to end it.
const FETCH_GUARD: Duration = Duration::from_secs(5);

/// How long the last acknowledgements may take to leave before the process
/// exits without that confirmation.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// The longest wait between two attempts at a publish that failed.
const MAX_PUBLISH_BACKOFF: Duration = Duration::from_secs(2);

/// What this process does with the work queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Role {
    /// Publish the workload's items to the work queue, then exit.
    Produce,
    /// Take items from the work queue and handle them, until a shutdown
    /// signal (or, with `--until-empty`, until the queue is empty).
    Work,
    /// Both in one process; stops once every item it published is handled.
    Run,
}

/// Where the work queue lives and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server to connect to; `tls://` requires TLS. Several servers,
    /// comma-separated, are tried in turn.
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Token to authenticate with. Prefer the environment variable: a flag
    /// shows in the process list. Never logged.
    #[arg(
        long,
        value_name = "TOKEN",
        hide_env_values = true,
        conflicts_with = "nats_creds"
    )]
    pub nats_token: Option<Secret>,

    /// Credentials file (a user JWT and its NKey seed, as `nsc` writes it).
    #[arg(long, value_name = "PATH")]
    pub nats_creds: Option<PathBuf>,

    /// PEM file of the root certificates to trust for TLS instead of the
    /// system's: for a server whose certificate a private CA signed.
    #[arg(long, value_name = "PATH")]
    pub nats_ca: Option<PathBuf>,

    /// PEM file of this client's certificate, for servers that verify
    /// clients (mutual TLS); needs `--nats-key`.
    #[arg(long, value_name = "PATH", requires = "nats_key")]
    pub nats_cert: Option<PathBuf>,

    /// PEM file of the key of `--nats-cert`.
    #[arg(long, value_name = "PATH", requires = "nats_cert")]
    pub nats_key: Option<PathBuf>,

    /// Seconds to wait for the server when connecting, before giving up.
    #[arg(long, value_name = "SECS", default_value = "5",
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub nats_connect_timeout: u64,

    /// The JetStream stream holding the queue; created with work-queue
    /// retention if it does not exist.
    #[arg(long, value_name = "NAME", default_value = "work")]
    pub nats_stream: String,

    /// The subject items are published on.
    #[arg(long, value_name = "SUBJECT", default_value = "work.items")]
    pub nats_subject: String,

    /// The durable consumer every worker process shares.
    #[arg(long, value_name = "NAME", default_value = "workers")]
    pub nats_consumer: String,

    /// Seconds the server waits for a message's acknowledgement before it
    /// hands the message to another worker. Longer than a batch's handling
    /// takes. Applies when the consumer is created.
    #[arg(long, value_name = "SECS", default_value = "30",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub ack_wait_secs: u64,

    /// Deliveries of one message before the server stops offering it.
    /// Applies when the consumer is created.
    #[arg(long, value_name = "N", default_value = "5",
          value_parser = clap::value_parser!(i64).range(1..=1_000))]
    pub max_deliver: i64,

    /// Publishes in flight at once (`produce`, `run`): the producing side's
    /// workers, each waiting for the stream to store one message. A publish
    /// waits a round trip to the server, so more of them in flight keep it
    /// busy.
    #[arg(long, value_name = "N", default_value = "32", value_parser = crate::config::task_count, allow_negative_numbers = true)]
    pub publishers: usize,

    /// Messages each fetch asks the server for ahead of the workers.
    #[arg(long, value_name = "N", default_value = "64",
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub fetch_max: u64,

    /// `work` stops, drains and reports once the queue holds nothing for
    /// this consumer and nothing is waiting for an acknowledgement.
    #[arg(long)]
    pub until_empty: bool,
}

/// A value kept out of logs and debug output: the token.
#[derive(Clone)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            Err("the token is empty".into())
        } else {
            Ok(Self(text.to_owned()))
        }
    }
}

/// Plays `role`, with `workload`'s sources on the producing side and its
/// handler on the working side.
pub async fn run<W: Workload>(
    role: Role,
    config: &Config,
    workload: W,
    shutdown: CancellationToken,
) -> anyhow::Result<Report> {
    let args = &config.topology.nats;
    let client = connect(args).await?;
    let jetstream = jetstream::new(client.clone());
    let consumer = work_queue(&jetstream, args).await?;
    tracing::info!(
        url = %redacted(&args.nats_url),
        stream = %args.nats_stream,
        consumer = %args.nats_consumer,
        ?role,
        "work queue ready"
    );
    let workload = Arc::new(workload);
    let report = match role {
        Role::Produce => {
            let mut report = produce(config, &workload, jetstream, shutdown).await?;
            workload_api::close(&*workload, &mut report).await;
            report
        }
        Role::Work => {
            // Nothing in this process produces, so with `--until-empty` the
            // first empty queue ends the work.
            let until = args.until_empty.then(|| {
                let produced_all = CancellationToken::new();
                produced_all.cancel();
                produced_all
            });
            work(config, workload, consumer, shutdown, until).await?
        }
        Role::Run => {
            // The working side stops at an empty queue only once this
            // process has published everything: before that, an empty
            // queue means the workers are ahead of the producers.
            let produced_all = CancellationToken::new();
            let producing = {
                let (config, workload) = (config.clone(), Arc::clone(&workload));
                let (shutdown, produced_all) = (shutdown.clone(), produced_all.clone());
                tokio::spawn(async move {
                    let report = produce(&config, &workload, jetstream, shutdown).await;
                    produced_all.cancel();
                    report
                })
            };
            let mut report = work(config, workload, consumer, shutdown, Some(produced_all)).await?;
            let produced = producing.await.context("the producing side panicked")??;
            merge_producing_side(&mut report, &produced);
            report
        }
    };
    // Acknowledgements are sent without waiting for the server's answer;
    // flushing makes sure they left this process before it exits. Bounded:
    // with the server gone, a flush would wait for it to come back.
    match tokio::time::timeout(FLUSH_WAIT, client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, "flushing the last acknowledgements failed; those messages will be redelivered")
        }
        Err(_) => tracing::warn!(
            "the server did not confirm the last acknowledgements in time; those messages may be redelivered"
        ),
    }
    Ok(report)
}

/// Connects with the configured credentials, within
/// `--nats-connect-timeout`: an unreachable server or refused credentials
/// end the run with an error instead of a wait.
async fn connect(args: &NatsArgs) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name(env!("CARGO_PKG_NAME"))
        .connection_timeout(Duration::from_secs(args.nats_connect_timeout));
    if let Some(Secret(token)) = &args.nats_token {
        options = options.token(token.clone());
    }
    if let Some(path) = &args.nats_creds {
        options = options
            .credentials_file(path)
            .await
            .with_context(|| format!("cannot read the credentials file {}", path.display()))?;
    }
    // TLS itself follows the URL (`tls://` requires it, and a server may
    // ask for it); these only say whom to trust and who this client is.
    if let Some(path) = &args.nats_ca {
        options = options.add_root_certificates(path.clone());
    }
    if let (Some(cert), Some(key)) = (&args.nats_cert, &args.nats_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    options
        .connect(args.nats_url.as_str())
        .await
        .with_context(|| format!("cannot connect to NATS at {}", redacted(&args.nats_url)))
}

/// The stream and its durable consumer, created if they do not exist yet.
/// Existing ones are used as they are, settings included.
async fn work_queue(
    jetstream: &jetstream::Context,
    args: &NatsArgs,
) -> anyhow::Result<PullConsumer> {
    let stream = jetstream
        .get_or_create_stream(stream::Config {
            name: args.nats_stream.clone(),
            subjects: vec![args.nats_subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot open the JetStream stream `{}`", args.nats_stream))?;
    stream
        .get_or_create_consumer(
            &args.nats_consumer,
            pull::Config {
                durable_name: Some(args.nats_consumer.clone()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: Duration::from_secs(args.ack_wait_secs),
                max_deliver: args.max_deliver,
                ..Default::default()
            },
        )
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))
        .with_context(|| format!("cannot open the consumer `{}`", args.nats_consumer))
}

/// The producing side: the in-process pipeline with publishers for
/// workers. Its report counts an item handled once the stream stored it.
async fn produce<W: Workload>(
    config: &Config,
    workload: &Arc<W>,
    jetstream: jetstream::Context,
    shutdown: CancellationToken,
) -> anyhow::Result<Report> {
    let publisher = Publisher {
        workload: Arc::clone(workload),
        jetstream,
        subject: config.topology.nats.nats_subject.clone(),
        ids: MessageIds::new(),
        shutdown: shutdown.clone(),
    };
    // The in-process pipeline, with publishers for its workers.
    let mut publishing = config.clone();
    publishing.topology.workers = config.topology.nats.publishers;
    let mut report = pipeline::run_in_process(&publishing, publisher, shutdown).await?;
    report.transport.push(("published", report.handled));
    Ok(report)
}

/// Folds the producing side of a `run` into the working side's report: what
/// it published, what it could not, and whatever made it fail.
fn merge_producing_side(report: &mut Report, produced: &Report) {
    report.transport.push(("published", produced.handled));
    let unpublished = produced.produced - produced.handled;
    report.transport.push(("not_published", unpublished));
    report.failed_stages += produced.failed_stages;
    report.unaccounted += produced.unaccounted;
    report.drain_timed_out |= produced.drain_timed_out;
}

/// The producing side's "workload": the user's sources, and a handler that
/// publishes each batch as one message and waits until the stream has it.
struct Publisher<W> {
    workload: Arc<W>,
    jetstream: jetstream::Context,
    subject: String,
    ids: MessageIds,
    /// Once a shutdown is requested, a failing publish stops being retried.
    shutdown: CancellationToken,
}

impl<W: Workload> Workload for Publisher<W> {
    type Item = W::Item;
    type Source = W::Source;

    fn producers(&self) -> usize {
        self.workload.producers()
    }

    fn open(
        &self,
        producer: usize,
    ) -> impl Future<Output = anyhow::Result<Option<W::Source>>> + Send {
        self.workload.open(producer)
    }

    async fn handle(&self, item: &W::Item) -> anyhow::Result<()> {
        self.publish(std::slice::from_ref(item)).await
    }

    async fn handle_batch(&self, batch: &mut Batch<'_, W::Item>) -> anyhow::Result<()> {
        self.publish(batch.items()).await
    }
}

impl<W: Workload> Publisher<W> {
    /// Publishes `items` as one message and waits for the stream to store
    /// it. A failure (no connection, no answer in time) is retried with
    /// backoff until it succeeds or a shutdown is requested; every attempt
    /// carries the same message id, so the stream keeps one copy.
    async fn publish(&self, items: &[W::Item]) -> anyhow::Result<()> {
        // Built once: a clone shares the payload.
        let message = PublishMessage::build()
            .payload(serde_json::to_vec(items)?.into())
            .message_id(self.ids.next());
        let mut delays = ExponentialBuilder::default()
            .with_max_delay(MAX_PUBLISH_BACKOFF)
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let stored = async {
                self.jetstream
                    .send_publish(self.subject.clone(), message.clone())
                    .await?
                    .await
                    .map_err(anyhow::Error::from)
            };
            let error = match stored.await {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            if self.shutdown.is_cancelled() {
                return Err(error.context("publishing to the work queue"));
            }
            let delay = delays.next().unwrap_or(MAX_PUBLISH_BACKOFF);
            tracing::warn!(
                error = format!("{error:#}"),
                ?delay,
                "publish failed; trying again"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => {}
            }
        }
    }
}

/// Message ids unique to this process: its id and start time, then a
/// counter. The stream drops a message whose id it saw within the last two
/// minutes, which makes a retried publish safe.
struct MessageIds {
    prefix: String,
    next: AtomicU64,
}

impl MessageIds {
    fn new() -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Self {
            prefix: format!("{}-{started}", std::process::id()),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        format!("{}-{}", self.prefix, self.next.fetch_add(1, Relaxed))
    }
}

/// A batch fetched from the work queue, with what acknowledges it.
struct Fetched<I> {
    items: Vec<I>,
    acker: Acker,
    /// The message's sequence number in the stream, its identity across
    /// deliveries.
    sequence: u64,
    settled: Arc<Settled>,
}

impl<W: Workload> BatchMessage<W> for Fetched<W::Item> {
    /// Handles the batch, then acknowledges it. A worker that panics in the
    /// handler drops the message unacknowledged, so the server redelivers
    /// it after the ack wait.
    async fn settle(self, settler: &mut Settler<W>) -> usize {
        let items = self.items.len();
        settler.batch(self.items).await;
        if let Err(error) = self.acker.ack().await {
            tracing::warn!(%error, "acknowledging a message failed; it will be redelivered");
        }
        self.settled.insert(self.sequence);
        items
    }
}

/// The stream sequence numbers of the messages this process settled last,
/// so that one coming back (its acknowledgement was lost, say in a server
/// restart) is acknowledged again instead of handled twice. Redeliveries to
/// another process are not caught here: see the README on idempotent
/// handlers.
struct Settled {
    recent: std::sync::Mutex<(HashSet<u64>, VecDeque<u64>)>,
}

impl Settled {
    /// How many sequence numbers are remembered; older ones are forgotten.
    const REMEMBERED: usize = 65_536;

    fn new() -> Self {
        Self {
            recent: std::sync::Mutex::new((HashSet::new(), VecDeque::new())),
        }
    }

    fn insert(&self, sequence: u64) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let (set, order) = &mut *recent;
        if set.insert(sequence) {
            order.push_back(sequence);
            if order.len() > Self::REMEMBERED
                && let Some(oldest) = order.pop_front()
            {
                set.remove(&oldest);
            }
        }
    }

    fn contains(&self, sequence: u64) -> bool {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.0.contains(&sequence)
    }
}

/// Counts of the working side, for the report.
#[derive(Default)]
struct FetchCounts {
    /// Messages taken from the queue.
    messages: AtomicU64,
    /// Items in messages that had been delivered before (to this process or
    /// another one).
    redelivered: AtomicU64,
    /// Items in redelivered messages this process had already settled,
    /// acknowledged again without handling them twice.
    duplicates: AtomicU64,
    /// Messages that were not a JSON array of items, terminated unhandled.
    malformed: AtomicU64,
}

/// The working side: a fetcher feeding the local worker pool, until a
/// shutdown request or, when `until` is given, until it is cancelled (the
/// producing side is done) and the queue is empty.
async fn work<W: Workload>(
    config: &Config,
    workload: Arc<W>,
    consumer: PullConsumer,
    shutdown: CancellationToken,
    until: Option<CancellationToken>,
) -> anyhow::Result<Report> {
    let worker_count = config.topology.workers;
    let mut supervisor = Supervisor::new(TOPOLOGY, config, shutdown, 1, worker_count);
    let policy = Arc::new(FailurePolicy::new(
        &config.topology.delivery,
        supervisor.stop_token().clone(),
    )?);
    let counts = Arc::new(FetchCounts::default());
    tracing::info!(
        workers = worker_count,
        worker_kind = workers::KIND,
        "working"
    );

    // Workers first, as in the in-process pipeline: they own the only
    // receivers, and the fetcher owns the only sender, so the workers see
    // the end once the fetcher stops and they have drained the channel.
    let (tx, rx) = flume::bounded::<Fetched<W::Item>>(config.capacity);
    for id in 0..worker_count {
        let counters = Arc::clone(supervisor.counters());
        let settler = Settler::new(Arc::clone(&workload), Arc::clone(&policy), counters, id);
        workers::spawn_batches(Worker::new(id, rx.clone(), settler), &mut supervisor);
    }
    drop(rx);
    let fetcher = Fetcher {
        consumer,
        tx,
        counters: Arc::clone(supervisor.counters()),
        counts: Arc::clone(&counts),
        settled: Arc::new(Settled::new()),
        stop: supervisor.stop_token().clone(),
        until,
        fetch_max: usize::try_from(config.topology.nats.fetch_max)?,
    };
    let span = tracing::debug_span!("fetcher");
    supervisor.spawn_task("fetcher".into(), span, fetcher.run());

    let mut report = supervisor.finish().await;
    workload_api::close(&*workload, &mut report).await;
    policy.close(&mut report).await;
    report.transport.extend([
        ("delivered", report.produced),
        ("messages", counts.messages.load(Relaxed)),
        ("redelivered", counts.redelivered.load(Relaxed)),
        ("duplicates_skipped", counts.duplicates.load(Relaxed)),
        ("malformed_messages", counts.malformed.load(Relaxed)),
    ]);
    Ok(report)
}

/// Takes messages from the durable consumer and sends their batches to the
/// workers. Counts their items as produced, so the report's balance holds
/// for this process: every item delivered here is handled, failed,
/// abandoned or lost.
struct Fetcher<I> {
    consumer: PullConsumer,
    tx: flume::Sender<Fetched<I>>,
    counters: Arc<crate::counters::Counters>,
    counts: Arc<FetchCounts>,
    settled: Arc<Settled>,
    stop: CancellationToken,
    until: Option<CancellationToken>,
    fetch_max: usize,
}

impl<I: serde::de::DeserializeOwned + Send + 'static> Fetcher<I> {
    async fn run(mut self) -> anyhow::Result<()> {
        let counters = Arc::clone(&self.counters);
        let slot = counters.producer(0);
        let mut pacer = Pacer::default();
        let mut delivered = 0u64;
        // One pull request at a time, each for up to `--fetch-max` messages
        // and ending by itself after `IDLE_CHECK`. The fetch is never
        // dropped half-way, not even on shutdown: every message the server
        // sends for it arrives here, and is either handled or handed back.
        // (A request dropped early would leave the messages sent for it
        // unacknowledged until the ack wait.)
        while !self.stop.is_cancelled() {
            let mut batch = match self
                .consumer
                .batch()
                .max_messages(self.fetch_max)
                .expires(IDLE_CHECK)
                .messages()
                .await
            {
                Ok(batch) => batch,
                // No connection (the server restarting, say): the client
                // reconnects by itself; try again shortly.
                Err(error) => {
                    tracing::warn!(%error, "cannot fetch from the work queue; trying again");
                    tokio::time::sleep(IDLE_CHECK).await;
                    continue;
                }
            };
            let mut fetched_any = false;
            // The server ends the request after `IDLE_CHECK`; the timeout
            // only guards against a server that went away in between.
            while let Ok(Some(next)) = tokio::time::timeout(FETCH_GUARD, batch.next()).await {
                let message = match next {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(%error, "fetching from the work queue");
                        continue;
                    }
                };
                fetched_any = true;
                if self.stop.is_cancelled() {
                    hand_back(&message).await;
                    continue;
                }
                let Some(fetched) = self.decode(message).await else {
                    continue;
                };
                let size = fetched.items.len() as u64;
                // Sent without a race against cancellation, like the
                // in-process producers do: dropping a waiting send would
                // lose the batch. It ends once a worker frees a slot.
                if self.tx.send_async(fetched).await.is_err() {
                    // Every worker is gone: the batch goes down with them.
                    slot.publish(delivered + size);
                    self.stop.cancel();
                    continue;
                }
                delivered += size;
                slot.publish(delivered);
                // A fetch may bring many messages at once, and flume takes
                // no part in tokio's cooperative budget: yield now and then.
                let due = pacer.count(u32::try_from(size).unwrap_or(u32::MAX));
                if due > 0 {
                    coop::spend(due).await;
                }
            }
            if !fetched_any && self.queue_is_done().await {
                break;
            }
        }
        tracing::debug!(delivered, "fetcher finished");
        Ok(())
    }

    /// The message's items, counted; `None` for a message this process has
    /// settled before (acknowledged again) and for one that is not a JSON
    /// array of items (terminated, so it is never offered again).
    async fn decode(&self, message: jetstream::Message) -> Option<Fetched<I>> {
        self.counts.messages.fetch_add(1, Relaxed);
        let Ok((sequence, delivered)) = message
            .info()
            .map(|info| (info.stream_sequence, info.delivered))
        else {
            tracing::error!(subject = %message.subject, "a message without JetStream metadata, ignored");
            self.counts.malformed.fetch_add(1, Relaxed);
            return None;
        };
        let (message, acker) = message.split();
        let items = match serde_json::from_slice::<Vec<I>>(&message.payload) {
            Ok(items) => items,
            Err(error) => {
                tracing::error!(%error, sequence, "malformed message, terminated");
                self.counts.malformed.fetch_add(1, Relaxed);
                if let Err(error) = acker.ack_with(AckKind::Term).await {
                    tracing::warn!(%error, "terminating a malformed message failed");
                }
                return None;
            }
        };
        if delivered > 1 {
            self.counts
                .redelivered
                .fetch_add(items.len() as u64, Relaxed);
            if self.settled.contains(sequence) {
                self.counts
                    .duplicates
                    .fetch_add(items.len() as u64, Relaxed);
                if let Err(error) = acker.ack().await {
                    tracing::warn!(%error, "acknowledging a message failed; it will be redelivered");
                }
                return None;
            }
        }
        Some(Fetched {
            items,
            acker,
            sequence,
            settled: Arc::clone(&self.settled),
        })
    }

    /// Whether the work is done: the producing side has finished and the
    /// consumer has nothing pending and nothing waiting for an
    /// acknowledgement. Always false without `until`.
    async fn queue_is_done(&mut self) -> bool {
        let Some(until) = &self.until else {
            return false;
        };
        if !until.is_cancelled() {
            return false;
        }
        match self.consumer.info().await {
            Ok(info) => info.num_pending == 0 && info.num_ack_pending == 0,
            Err(error) => {
                tracing::warn!(%error, "cannot read the consumer's state");
                false
            }
        }
    }
}

/// Gives back a message fetched after a shutdown request: a negative
/// acknowledgement, so the server offers it to another worker at once rather
/// than after the ack wait.
async fn hand_back(message: &jetstream::Message) {
    if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
        tracing::warn!(%error, "handing a message back failed; it will be redelivered");
    }
}

/// `url` without a password or token in it, for logs and errors.
fn redacted(url: &str) -> String {
    url.split(',')
        .map(|server| match server.rsplit_once('@') {
            Some((before, host)) => {
                let scheme = before.split_once("://").map_or("", |(scheme, _)| scheme);
                if scheme.is_empty() {
                    format!("***@{host}")
                } else {
                    format!("{scheme}://***@{host}")
                }
            }
            None => server.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_url_are_never_shown() {
        assert_eq!(redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redacted("nats://me:secret@host:4222"),
            "nats://***@host:4222"
        );
        assert_eq!(
            redacted("tls://token@a:1,nats://b:2"),
            "tls://***@a:1,nats://b:2"
        );
        assert_eq!(redacted("user:pw@host"), "***@host");
    }

    #[test]
    fn a_token_does_not_show_in_debug_output() {
        let token: Secret = "s3cret".parse().unwrap();
        assert!(!format!("{token:?}").contains("s3cret"));
        assert!("".parse::<Secret>().is_err());
    }

    #[test]
    fn only_the_most_recent_settled_messages_are_remembered() {
        let settled = Settled::new();
        let count = Settled::REMEMBERED as u64 + 10;
        for sequence in 1..=count {
            settled.insert(sequence);
        }
        settled.insert(count);
        assert!(!settled.contains(10));
        assert!(settled.contains(11));
        assert!(settled.contains(count));
        assert!(!settled.contains(count + 1));
    }

    #[test]
    fn message_ids_do_not_repeat() {
        let ids = MessageIds::new();
        assert_ne!(ids.next(), ids.next());
        assert_ne!(MessageIds::new().next(), ids.next());
    }
}
