//! `conveyor-bare-loops`: the floor `cargo ci bench` measures each template
//! against. One run moves `--items` numbers from producers, optionally
//! through a stage of relay tasks, to consumers over bounded channels of one
//! crate, with nothing else on the path: no counters, no stop flag, no
//! supervisor, no workload beyond the optional `--work-us` wait. It prints one
//! JSON line with the items received, the elapsed time and the rate.
//!
//! The clock runs from just before the channels are made until the last
//! consumer has finished, as the templates' own reports do; building the
//! runtime and starting the process are outside it.

use std::future::Future;
use std::hint::black_box;
use std::marker::PhantomData;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use clap::{Parser, ValueEnum};
use tokio::runtime::{Handle, Runtime};

/// One bare loop: which channel, and the shape of the stages around it.
#[derive(Parser, Debug)]
#[command(name = "conveyor-bare-loops")]
struct Shape {
    /// The channel crate the stages talk over.
    #[arg(long, value_enum)]
    channel: ChannelKind,
    /// How many producers send, each an equal share of the items.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    producers: u16,
    /// Whether producers are tokio tasks or OS threads.
    #[arg(long, value_enum, default_value_t = StageKind::Task)]
    producer_kind: StageKind,
    /// Tasks between two channels that take each item from the first and
    /// pass it to the second; 0 for a single channel.
    #[arg(long, default_value_t = 0)]
    relays: u16,
    /// How many consumers receive.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    consumers: u16,
    /// Whether consumers are tokio tasks or OS threads.
    #[arg(long, value_enum, default_value_t = StageKind::Task)]
    consumer_kind: StageKind,
    /// Slots of each bounded channel.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    capacity: u32,
    /// Items to move in total.
    #[arg(long)]
    items: u64,
    /// Time to wait per item in the stage `--work-in` names (a tokio sleep
    /// in a task, a thread sleep in a thread), as the templates' demo does.
    #[arg(long, default_value_t = 0)]
    work_us: u64,
    /// The stage that waits `--work-us` per item.
    #[arg(long, value_enum, default_value_t = WorkIn::Consumers)]
    work_in: WorkIn,
    /// What each message carries.
    #[arg(long, value_enum, default_value_t = ItemKind::Number)]
    item: ItemKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ItemKind {
    /// A plain `u64`: the cheapest message there is, and the shape of the
    /// async templates' demo item (a number).
    Number,
    /// A number and an empty `String`, the shape of sync-bridge's demo
    /// `Record`. Nothing is allocated, but the type owns heap data, so the
    /// channel moves a value with drop glue.
    Record,
}

/// What a loop sends: made from its sequence number.
trait Item: Send + 'static {
    fn numbered(seq: u64) -> Self;
}

impl Item for u64 {
    fn numbered(seq: u64) -> Self {
        seq
    }
}

/// The shape of sync-bridge's demo item. Its fields are carried, never read:
/// the loops measure moving it, and consumers only `black_box` what arrives.
#[expect(dead_code, reason = "carried through the channel, never read")]
struct Record {
    seq: u64,
    text: String,
}

impl Item for Record {
    fn numbered(seq: u64) -> Self {
        Record {
            seq,
            text: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ChannelKind {
    TokioMpsc,
    Flume,
    Kanal,
    AsyncChannel,
    /// `rtrb`'s lock-free ring: one producer thread, one consumer thread,
    /// both spinning while it is full or empty. The hardware reference.
    Rtrb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum StageKind {
    Task,
    Thread,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WorkIn {
    Producers,
    Relays,
    Consumers,
}

fn main() -> ExitCode {
    let shape = Shape::parse();
    match measure(&shape) {
        Ok(elapsed_secs) => {
            let per_sec = if elapsed_secs > 0.0 {
                shape.items as f64 / elapsed_secs
            } else {
                0.0
            };
            println!(
                r#"{{"items":{},"elapsed_secs":{elapsed_secs},"items_per_sec":{per_sec}}}"#,
                shape.items
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the shape once and returns its elapsed seconds, once every item
/// has arrived.
fn measure(shape: &Shape) -> Result<f64> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let received = match shape.item {
        ItemKind::Number => run_carrying::<u64>(shape, &runtime)?,
        ItemKind::Record => run_carrying::<Record>(shape, &runtime)?,
    };
    let elapsed = started.elapsed().as_secs_f64();
    ensure!(
        received == shape.items,
        "{received} of {} items arrived",
        shape.items
    );
    Ok(elapsed)
}

/// Runs the shape on its channel, each message an `I`.
fn run_carrying<I: Item>(shape: &Shape, runtime: &Runtime) -> Result<u64> {
    match shape.channel {
        ChannelKind::TokioMpsc => run::<TokioMpsc<I>>(shape, runtime),
        ChannelKind::Flume => run::<Flume<I>>(shape, runtime),
        ChannelKind::Kanal => run::<Kanal<I>>(shape, runtime),
        ChannelKind::AsyncChannel => run::<AsyncChannel<I>>(shape, runtime),
        ChannelKind::Rtrb => run_ring::<I>(shape, runtime),
    }
}

/// A bounded channel crate, seen through the four calls the loops make.
trait Channel {
    type Item: Item;
    type Tx: Clone + Send + Sync + 'static;
    type Rx: Send + 'static;

    fn bounded(capacity: usize) -> (Self::Tx, Self::Rx);
    /// One receiver per consumer. A single-consumer channel refuses more than one.
    fn share(rx: Self::Rx, consumers: usize) -> Result<Vec<Self::Rx>>;
    /// `false` once every receiver is gone.
    fn send(tx: &Self::Tx, item: Self::Item) -> impl Future<Output = bool> + Send;
    /// `None` once the channel is empty and every sender is gone.
    fn recv(rx: &mut Self::Rx) -> impl Future<Output = Option<Self::Item>> + Send;
    fn send_blocking(tx: &Self::Tx, item: Self::Item) -> bool;
    fn recv_blocking(rx: &mut Self::Rx) -> Option<Self::Item>;
}

/// Clones of a multi-consumer receiver, one per consumer.
fn clones<R: Clone>(rx: R, consumers: usize) -> Vec<R> {
    std::iter::repeat_n(rx, consumers).collect()
}

struct TokioMpsc<I>(PhantomData<I>);

impl<I: Item> Channel for TokioMpsc<I> {
    type Item = I;
    type Tx = tokio::sync::mpsc::Sender<I>;
    type Rx = tokio::sync::mpsc::Receiver<I>;

    fn bounded(capacity: usize) -> (Self::Tx, Self::Rx) {
        tokio::sync::mpsc::channel(capacity)
    }
    fn share(rx: Self::Rx, consumers: usize) -> Result<Vec<Self::Rx>> {
        ensure!(consumers == 1, "tokio mpsc has a single consumer");
        Ok(vec![rx])
    }
    async fn send(tx: &Self::Tx, item: Self::Item) -> bool {
        tx.send(item).await.is_ok()
    }
    fn recv(rx: &mut Self::Rx) -> impl Future<Output = Option<Self::Item>> + Send {
        rx.recv()
    }
    fn send_blocking(tx: &Self::Tx, item: Self::Item) -> bool {
        tx.blocking_send(item).is_ok()
    }
    fn recv_blocking(rx: &mut Self::Rx) -> Option<Self::Item> {
        rx.blocking_recv()
    }
}

struct Flume<I>(PhantomData<I>);

impl<I: Item> Channel for Flume<I> {
    type Item = I;
    type Tx = flume::Sender<I>;
    type Rx = flume::Receiver<I>;

    fn bounded(capacity: usize) -> (Self::Tx, Self::Rx) {
        flume::bounded(capacity)
    }
    fn share(rx: Self::Rx, consumers: usize) -> Result<Vec<Self::Rx>> {
        Ok(clones(rx, consumers))
    }
    async fn send(tx: &Self::Tx, item: Self::Item) -> bool {
        tx.send_async(item).await.is_ok()
    }
    async fn recv(rx: &mut Self::Rx) -> Option<Self::Item> {
        rx.recv_async().await.ok()
    }
    fn send_blocking(tx: &Self::Tx, item: Self::Item) -> bool {
        tx.send(item).is_ok()
    }
    fn recv_blocking(rx: &mut Self::Rx) -> Option<Self::Item> {
        rx.recv().ok()
    }
}

struct Kanal<I>(PhantomData<I>);

impl<I: Item> Channel for Kanal<I> {
    type Item = I;
    type Tx = kanal::AsyncSender<I>;
    type Rx = kanal::AsyncReceiver<I>;

    fn bounded(capacity: usize) -> (Self::Tx, Self::Rx) {
        kanal::bounded_async(capacity)
    }
    fn share(rx: Self::Rx, consumers: usize) -> Result<Vec<Self::Rx>> {
        Ok(clones(rx, consumers))
    }
    async fn send(tx: &Self::Tx, item: Self::Item) -> bool {
        tx.send(item).await.is_ok()
    }
    async fn recv(rx: &mut Self::Rx) -> Option<Self::Item> {
        rx.recv().await.ok()
    }
    fn send_blocking(tx: &Self::Tx, item: Self::Item) -> bool {
        tx.as_sync().send(item).is_ok()
    }
    fn recv_blocking(rx: &mut Self::Rx) -> Option<Self::Item> {
        rx.as_sync().recv().ok()
    }
}

struct AsyncChannel<I>(PhantomData<I>);

impl<I: Item> Channel for AsyncChannel<I> {
    type Item = I;
    type Tx = async_channel::Sender<I>;
    type Rx = async_channel::Receiver<I>;

    fn bounded(capacity: usize) -> (Self::Tx, Self::Rx) {
        async_channel::bounded(capacity)
    }
    fn share(rx: Self::Rx, consumers: usize) -> Result<Vec<Self::Rx>> {
        Ok(clones(rx, consumers))
    }
    async fn send(tx: &Self::Tx, item: Self::Item) -> bool {
        tx.send(item).await.is_ok()
    }
    async fn recv(rx: &mut Self::Rx) -> Option<Self::Item> {
        rx.recv().await.ok()
    }
    fn send_blocking(tx: &Self::Tx, item: Self::Item) -> bool {
        tx.send_blocking(item).is_ok()
    }
    fn recv_blocking(rx: &mut Self::Rx) -> Option<Self::Item> {
        rx.recv_blocking().ok()
    }
}

/// A stage member: a tokio task or an OS thread, each returning how many
/// items it received (0 for producers and relays).
enum Member {
    Task(tokio::task::JoinHandle<u64>),
    Thread(std::thread::JoinHandle<u64>),
}

impl Member {
    fn join(self, runtime: &Runtime) -> Result<u64> {
        match self {
            Member::Task(handle) => Ok(runtime.block_on(handle)?),
            Member::Thread(handle) => match handle.join() {
                Ok(count) => Ok(count),
                Err(_) => bail!("a stage thread panicked"),
            },
        }
    }
}

/// What the stage named by `--work-in` waits per item.
fn work_for(shape: &Shape, stage: WorkIn) -> Duration {
    if shape.work_in == stage {
        Duration::from_micros(shape.work_us)
    } else {
        Duration::ZERO
    }
}

async fn work_async(work: Duration) {
    if !work.is_zero() {
        tokio::time::sleep(work).await;
    }
}

/// The same wait on a thread: a tokio sleep driven by the runtime's timer,
/// as the templates' thread workers await their async handler under
/// `Handle::block_on`. A `std::thread::sleep` would be a different cost:
/// tokio's timer rounds up to its next millisecond tick.
fn work_blocking(runtime: &Handle, work: Duration) {
    if !work.is_zero() {
        // The sleep is made inside `block_on`: it needs the runtime's context.
        runtime.block_on(async { tokio::time::sleep(work).await });
    }
}

/// Runs the shape over channel `C` and returns the items the consumers received.
fn run<C: Channel>(shape: &Shape, runtime: &Runtime) -> Result<u64> {
    let capacity = shape.capacity as usize;
    let (tx, rx) = C::bounded(capacity);
    let mut members = Vec::new();

    for producer in 0..u64::from(shape.producers) {
        let tx = tx.clone();
        let handle = runtime.handle().clone();
        let work = work_for(shape, WorkIn::Producers);
        let share = (producer..shape.items).step_by(usize::from(shape.producers));
        members.push(match shape.producer_kind {
            StageKind::Task => Member::Task(runtime.spawn(async move {
                for seq in share {
                    work_async(work).await;
                    if !C::send(&tx, C::Item::numbered(seq)).await {
                        break;
                    }
                }
                0
            })),
            StageKind::Thread => Member::Thread(std::thread::spawn(move || {
                for seq in share {
                    work_blocking(&handle, work);
                    if !C::send_blocking(&tx, C::Item::numbered(seq)) {
                        break;
                    }
                }
                0
            })),
        });
    }
    // The channel closes when the last producer's clone is gone.
    drop(tx);

    let rx = if shape.relays == 0 {
        rx
    } else {
        let (relayed_tx, relayed_rx) = C::bounded(capacity);
        let work = work_for(shape, WorkIn::Relays);
        for mut rx in C::share(rx, usize::from(shape.relays))? {
            let tx = relayed_tx.clone();
            members.push(Member::Task(runtime.spawn(async move {
                while let Some(item) = C::recv(&mut rx).await {
                    work_async(work).await;
                    if !C::send(&tx, item).await {
                        break;
                    }
                }
                0
            })));
        }
        // As above: closed when the last relay ends.
        drop(relayed_tx);
        relayed_rx
    };

    let work = work_for(shape, WorkIn::Consumers);
    for mut rx in C::share(rx, usize::from(shape.consumers))? {
        let handle = runtime.handle().clone();
        members.push(match shape.consumer_kind {
            StageKind::Task => Member::Task(runtime.spawn(async move {
                let mut received = 0;
                while let Some(item) = C::recv(&mut rx).await {
                    work_async(work).await;
                    black_box(item);
                    received += 1;
                }
                received
            })),
            StageKind::Thread => Member::Thread(std::thread::spawn(move || {
                let mut received = 0;
                while let Some(item) = C::recv_blocking(&mut rx) {
                    work_blocking(&handle, work);
                    black_box(item);
                    received += 1;
                }
                received
            })),
        });
    }

    let mut received = 0;
    for member in members {
        received += member.join(runtime)?;
    }
    Ok(received)
}

/// The ring: one thread pushes, one pops, each spinning while it cannot.
fn run_ring<I: Item>(shape: &Shape, runtime: &Runtime) -> Result<u64> {
    ensure!(
        shape.producers == 1
            && shape.consumers == 1
            && shape.relays == 0
            && shape.producer_kind == StageKind::Thread
            && shape.consumer_kind == StageKind::Thread,
        "the rtrb ring has one producer thread and one consumer thread"
    );
    let (mut producer, mut consumer) = rtrb::RingBuffer::new(shape.capacity as usize);
    let items = shape.items;
    let handle = runtime.handle().clone();
    let produce_work = work_for(shape, WorkIn::Producers);
    let consume_work = work_for(shape, WorkIn::Consumers);
    let sender = std::thread::spawn(move || {
        for seq in 0..items {
            work_blocking(&handle, produce_work);
            let mut item = I::numbered(seq);
            while let Err(rtrb::PushError::Full(back)) = producer.push(item) {
                item = back;
                std::hint::spin_loop();
            }
        }
    });
    let mut received = 0;
    while received < items {
        match consumer.pop() {
            Ok(item) => {
                work_blocking(runtime.handle(), consume_work);
                black_box(item);
                received += 1;
            }
            Err(_) => std::hint::spin_loop(),
        }
    }
    if sender.join().is_err() {
        bail!("the ring's producer thread panicked");
    }
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(args: &[&str]) -> Shape {
        let program = std::iter::once("conveyor-bare-loops");
        Shape::try_parse_from(program.chain(args.iter().copied())).unwrap()
    }

    /// Every channel, stage kind, relay stage, item kind and place of work
    /// the benchmark can ask for moves every item, with and without work
    /// (a failure here would otherwise surface an hour into `cargo ci bench`).
    #[test]
    fn every_shape_moves_every_item() {
        let channels = ["tokio-mpsc", "flume", "kanal", "async-channel"];
        for channel in channels {
            for (producer_kind, consumer_kind) in
                [("task", "task"), ("thread", "task"), ("task", "thread")]
            {
                for (relays, work_in) in [("0", "consumers"), ("0", "producers"), ("2", "relays")] {
                    for (item, work_us) in [("number", "0"), ("record", "1000")] {
                        let consumers = if channel == "tokio-mpsc" { "1" } else { "2" };
                        let relays = if channel == "tokio-mpsc" { "0" } else { relays };
                        let shape = shape(&[
                            "--channel",
                            channel,
                            "--producers",
                            "3",
                            "--producer-kind",
                            producer_kind,
                            "--relays",
                            relays,
                            "--consumers",
                            consumers,
                            "--consumer-kind",
                            consumer_kind,
                            "--capacity",
                            "2",
                            "--items",
                            "40",
                            "--work-us",
                            work_us,
                            "--work-in",
                            work_in,
                            "--item",
                            item,
                        ]);
                        measure(&shape).unwrap_or_else(|e| panic!("{shape:?}: {e:#}"));
                    }
                }
            }
        }
    }

    #[test]
    fn the_ring_moves_every_item_with_and_without_work() {
        for work_us in ["0", "1000"] {
            let shape = shape(&[
                "--channel",
                "rtrb",
                "--producer-kind",
                "thread",
                "--consumer-kind",
                "thread",
                "--capacity",
                "1",
                "--items",
                "30",
                "--work-us",
                work_us,
            ]);
            measure(&shape).unwrap();
        }
    }

    #[test]
    fn no_items_is_a_run_too() {
        measure(&shape(&[
            "--channel",
            "kanal",
            "--capacity",
            "1",
            "--items",
            "0",
        ]))
        .unwrap();
    }

    #[test]
    fn a_second_consumer_on_tokio_mpsc_is_refused() {
        let shape = shape(&[
            "--channel",
            "tokio-mpsc",
            "--consumers",
            "2",
            "--capacity",
            "1",
            "--items",
            "5",
        ]);
        assert!(measure(&shape).is_err());
    }
}
