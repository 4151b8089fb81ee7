//! Throughput of the template's pipeline next to bare loops of the same shape
//! (4 producer tasks, capacity 64, one consumer task) on kanal, tokio mpsc
//! and flume, and two-thread loops with no async runtime at all.
//!
//! - "template pipeline, item by item" runs this project's `pipeline::run`
//!   with the demo workload (numbered `Job`s from its sources, no simulated
//!   work) and `--batch-max 1`; "template pipeline, batches of 256" the same
//!   with `--batch-max 256`, where the channel moves batches.
//! - "bare kanal" is the floor this template is built to stay close to: a
//!   plain `send().await`/`recv().await` loop moving `u64`s. kanal carries
//!   items of up to a pointer's size inside its wake-up signal, so this is
//!   the fastest anything moves through it.
//! - "bare kanal, demo workload" is the same bare loop carrying what the
//!   template carries: the demo's `Job`s, read from the demo's own sources
//!   and given to its handler, with none of the scaffold (stop flag,
//!   counters, pacing, supervisor). The gap between it and the item-by-item
//!   pipeline is what the scaffold costs; the gap between it and "bare
//!   kanal" is what the workload's item, source and handler cost.
//! - "bare tokio mpsc" and "bare flume" show what the other channel crates
//!   give for the `u64` loop, i.e. why this template uses kanal.
//! - "crossbeam spsc threads" moves the same items from one OS thread to
//!   another through `crossbeam_channel::bounded`, and "rtrb ring spsc
//!   threads" through `rtrb`'s lock-free single-producer ring of 64 slots,
//!   both spinning rather than sleeping when the ring is full or empty: the
//!   per-item hardware reference the batched pipeline is measured against.
//!
//! As in the pipeline, each async consumer is a spawned task, not the future
//! that `block_on` drives, and the runtime has the flavor `main` uses.
//! Compare the numbers as ratios within one run: absolute items/s depend on
//! the machine and whatever else it is doing.

use std::hint::black_box;
use std::sync::Arc;

use clap::Parser;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use {{crate_name}}::config::Config;
use {{crate_name}}::pipeline;
use {{crate_name}}::workload::DemoWorkload;
use {{crate_name}}::workload_api::{Source, Workload};

const ITEMS: u64 = 200_000;
const PRODUCERS: u64 = 4;
const CAPACITY: usize = 64;

/// The runtime flavor `main` uses, so the numbers match the service.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_{{runtime}}()
        .enable_all()
        .build()
        .unwrap()
}

/// Items each bare producer sends: producer `p` sends `p, p + 4, p + 8, …`.
fn share(producer: u64) -> impl Iterator<Item = u64> {
    (producer..ITEMS).step_by(PRODUCERS as usize)
}

async fn template_pipeline(config: &Config) -> u64 {
    let workload = DemoWorkload::new(config).expect("the demo workload");
    let report = pipeline::run(config, workload, CancellationToken::new())
        .await
        .expect("the pipeline starts");
    report.handled
}

async fn bare_kanal() -> u64 {
    let (tx, rx) = kanal::bounded_async(CAPACITY);
    for producer in 0..PRODUCERS {
        let tx = tx.clone();
        tokio::spawn(async move {
            for item in share(producer) {
                tx.send(item).await.unwrap();
            }
        });
    }
    drop(tx);
    let consumer = tokio::spawn(async move {
        let mut sum = 0u64;
        while let Ok(item) = rx.recv().await {
            sum = sum.wrapping_add(item);
        }
        sum
    });
    consumer.await.unwrap()
}

async fn bare_kanal_demo_workload(config: &Config) -> u64 {
    let workload = Arc::new(DemoWorkload::new(config).expect("the demo workload"));
    let (tx, rx) = kanal::bounded_async(CAPACITY);
    for producer in 0..workload.producers() {
        let (tx, workload) = (tx.clone(), Arc::clone(&workload));
        tokio::spawn(async move {
            let mut source = workload.open(producer).await.unwrap().unwrap();
            while let Some(item) = source.next().await.unwrap() {
                tx.send(item).await.unwrap();
            }
        });
    }
    drop(tx);
    let consumer = tokio::spawn(async move {
        let mut handled = 0u64;
        while let Ok(item) = rx.recv().await {
            workload.handle(&item).await.unwrap();
            handled += 1;
        }
        handled
    });
    consumer.await.unwrap()
}

async fn bare_tokio_mpsc() -> u64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel(CAPACITY);
    for producer in 0..PRODUCERS {
        let tx = tx.clone();
        tokio::spawn(async move {
            for item in share(producer) {
                tx.send(item).await.unwrap();
            }
        });
    }
    drop(tx);
    let consumer = tokio::spawn(async move {
        let mut sum = 0u64;
        while let Some(item) = rx.recv().await {
            sum = sum.wrapping_add(item);
        }
        sum
    });
    consumer.await.unwrap()
}

async fn bare_flume() -> u64 {
    let (tx, rx) = flume::bounded(CAPACITY);
    for producer in 0..PRODUCERS {
        let tx = tx.clone();
        tokio::spawn(async move {
            for item in share(producer) {
                tx.send_async(item).await.unwrap();
            }
        });
    }
    drop(tx);
    let consumer = tokio::spawn(async move {
        let mut sum = 0u64;
        while let Ok(item) = rx.recv_async().await {
            sum = sum.wrapping_add(item);
        }
        sum
    });
    consumer.await.unwrap()
}

/// One producer thread, one consumer thread, blocking sends and receives.
fn crossbeam_spsc_threads() -> u64 {
    let (tx, rx) = crossbeam_channel::bounded(CAPACITY);
    let producer = std::thread::spawn(move || {
        for item in 0..ITEMS {
            tx.send(item).unwrap();
        }
    });
    let consumer = std::thread::spawn(move || rx.iter().fold(0u64, u64::wrapping_add));
    producer.join().unwrap();
    consumer.join().unwrap()
}

/// One producer thread, one consumer thread, a lock-free ring between them.
fn rtrb_spsc_threads() -> u64 {
    let (mut tx, mut rx) = rtrb::RingBuffer::new(CAPACITY);
    let producer = std::thread::spawn(move || {
        for item in 0..ITEMS {
            while tx.push(item).is_err() {
                std::hint::spin_loop();
            }
        }
    });
    let consumer = std::thread::spawn(move || {
        let mut sum = 0u64;
        for _ in 0..ITEMS {
            loop {
                match rx.pop() {
                    Ok(item) => {
                        sum = sum.wrapping_add(item);
                        break;
                    }
                    Err(_) => std::hint::spin_loop(),
                }
            }
        }
        sum
    });
    producer.join().unwrap();
    consumer.join().unwrap()
}

fn hot_path(c: &mut Criterion) {
    let runtime = runtime();
    let config = |batch_max: usize| {
        Config::try_parse_from([
            "bench".to_owned(),
            format!("--producers={PRODUCERS}"),
            format!("--capacity={CAPACITY}"),
            format!("--items={ITEMS}"),
            format!("--batch-max={batch_max}"),
            "--progress-secs=0".to_owned(),
        ])
        .unwrap()
    };
    let (item_by_item, batches) = (config(1), config(256));

    let mut group = c.benchmark_group("hot path 4 producers capacity 64");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(20);
    group.bench_function("template pipeline, item by item", |b| {
        b.iter(|| black_box(runtime.block_on(template_pipeline(&item_by_item))))
    });
    group.bench_function("template pipeline, batches of 256", |b| {
        b.iter(|| black_box(runtime.block_on(template_pipeline(&batches))))
    });
    group.bench_function("bare kanal", |b| {
        b.iter(|| black_box(runtime.block_on(bare_kanal())))
    });
    group.bench_function("bare kanal, demo workload", |b| {
        b.iter(|| black_box(runtime.block_on(bare_kanal_demo_workload(&item_by_item))))
    });
    group.bench_function("bare tokio mpsc", |b| {
        b.iter(|| black_box(runtime.block_on(bare_tokio_mpsc())))
    });
    group.bench_function("bare flume", |b| {
        b.iter(|| black_box(runtime.block_on(bare_flume())))
    });
    group.bench_function("crossbeam spsc threads", |b| {
        b.iter(|| black_box(crossbeam_spsc_threads()))
    });
    group.bench_function("rtrb ring spsc threads", |b| {
        b.iter(|| black_box(rtrb_spsc_threads()))
    });
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
