//! Throughput of the template's pipeline, item by item and in batches of 256,
//! next to bare loops of the same shape (4 producer tasks, capacity 64, one
//! consumer task) that send one item per message on tokio mpsc, flume and
//! kanal. As in the pipeline, the consumer is a spawned task, not the future
//! that `block_on` drives. The gap between the item-by-item pipeline and
//! "bare tokio mpsc" is what the scaffold costs; the batched pipeline shows
//! what batching gains over it; the other bare loops show what a different
//! channel crate would give.
//!
//! Compare the numbers as ratios within one run: absolute items/s depend on
//! the machine and whatever else it is doing.

use std::hint::black_box;

use clap::Parser;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use {{crate_name}}::config::Config;
use {{crate_name}}::pipeline;
use {{crate_name}}::workload::DemoWorkload;

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
    let report = pipeline::run(
        config,
        DemoWorkload::new(config).expect("the demo workload starts"),
        CancellationToken::new(),
    )
    .await
    .expect("the pipeline starts");
    report.handled
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

fn fan_in(c: &mut Criterion) {
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

    let mut group = c.benchmark_group("fan-in 4 producers capacity 64");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(20);
    group.bench_function("template pipeline, item by item", |b| {
        b.iter(|| black_box(runtime.block_on(template_pipeline(&item_by_item))))
    });
    group.bench_function("template pipeline, batches of 256", |b| {
        b.iter(|| black_box(runtime.block_on(template_pipeline(&batches))))
    });
    group.bench_function("bare tokio mpsc", |b| {
        b.iter(|| black_box(runtime.block_on(bare_tokio_mpsc())))
    });
    group.bench_function("bare flume", |b| {
        b.iter(|| black_box(runtime.block_on(bare_flume())))
    });
    group.bench_function("bare kanal", |b| {
        b.iter(|| black_box(runtime.block_on(bare_kanal())))
    });
    group.finish();
}

criterion_group!(benches, fan_in);
criterion_main!(benches);
