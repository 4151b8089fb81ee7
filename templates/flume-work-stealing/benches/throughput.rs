//! Throughput of the template's pipeline next to bare work-stealing loops of
//! the same shape: 1 producer task, a channel of capacity 64, 4 spawned
//! consumers that share one receiver. The template runs the demo of
//! numbered jobs (one-word `Job` items), item by item and in batches of 256;
//! "bare flume, 4 tasks" sends plain `u64`s one per message through a plain
//! loop, so the gap between it and the item-by-item pipeline is what the
//! scaffold costs, and the batched pipeline shows what batching gains;
//! "bare flume, 4 threads" shows what OS-thread workers cost on this
//! channel; async-channel and kanal show what another channel crate would
//! give for this shape.
//!
//! Compare the numbers as ratios within one run: absolute items/s depend on
//! the machine and whatever else it is doing.

use std::hint::black_box;

use clap::Parser;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use {{crate_name}}::config::Config;
use {{crate_name}}::pipeline;
use {{crate_name}}::workload::DemoWorkload;

const ITEMS: u64 = 200_000;
const WORKERS: usize = 4;
const CAPACITY: usize = 64;

/// The runtime flavor `main` uses, so the numbers match the service.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_{{runtime}}()
        .enable_all()
        .build()
        .unwrap()
}

async fn template_pipeline(config: &Config) -> u64 {
    let workload = DemoWorkload::new(config).expect("the demo workload needs no files here");
    let report = pipeline::run(config, workload, CancellationToken::new())
        .await
        .expect("the pipeline starts");
    report.handled
}

/// Waits for every consumer and adds up what they summed.
async fn total(consumers: Vec<JoinHandle<u64>>) -> u64 {
    let mut sum = 0u64;
    for consumer in consumers {
        sum = sum.wrapping_add(consumer.await.unwrap());
    }
    sum
}

async fn bare_flume_tasks() -> u64 {
    let (tx, rx) = flume::bounded(CAPACITY);
    let consumers = (0..WORKERS)
        .map(|_| {
            let rx = rx.clone();
            tokio::spawn(async move {
                let mut sum = 0u64;
                while let Ok(item) = rx.recv_async().await {
                    sum = sum.wrapping_add(item);
                }
                sum
            })
        })
        .collect();
    drop(rx);
    tokio::spawn(async move {
        for item in 0..ITEMS {
            tx.send_async(item).await.unwrap();
        }
    });
    total(consumers).await
}

async fn bare_flume_threads() -> u64 {
    let (tx, rx) = flume::bounded(CAPACITY);
    let consumers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let rx = rx.clone();
            std::thread::spawn(move || {
                let mut sum = 0u64;
                while let Ok(item) = rx.recv() {
                    sum = sum.wrapping_add(item);
                }
                sum
            })
        })
        .collect();
    drop(rx);
    tokio::spawn(async move {
        for item in 0..ITEMS {
            tx.send_async(item).await.unwrap();
        }
    });
    let joined = consumers
        .into_iter()
        .map(|consumer| tokio::task::spawn_blocking(move || consumer.join().unwrap()))
        .collect();
    total(joined).await
}

async fn bare_async_channel() -> u64 {
    let (tx, rx) = async_channel::bounded(CAPACITY);
    let consumers = (0..WORKERS)
        .map(|_| {
            let rx = rx.clone();
            tokio::spawn(async move {
                let mut sum = 0u64;
                while let Ok(item) = rx.recv().await {
                    sum = sum.wrapping_add(item);
                }
                sum
            })
        })
        .collect();
    drop(rx);
    tokio::spawn(async move {
        for item in 0..ITEMS {
            tx.send(item).await.unwrap();
        }
    });
    total(consumers).await
}

async fn bare_kanal() -> u64 {
    let (tx, rx) = kanal::bounded_async(CAPACITY);
    let consumers = (0..WORKERS)
        .map(|_| {
            let rx = rx.clone();
            tokio::spawn(async move {
                let mut sum = 0u64;
                while let Ok(item) = rx.recv().await {
                    sum = sum.wrapping_add(item);
                }
                sum
            })
        })
        .collect();
    drop(rx);
    tokio::spawn(async move {
        for item in 0..ITEMS {
            tx.send(item).await.unwrap();
        }
    });
    total(consumers).await
}

fn work_stealing(c: &mut Criterion) {
    let runtime = runtime();
    let config = |batch_max: usize| {
        Config::try_parse_from([
            "bench".to_owned(),
            "--producers=1".to_owned(),
            format!("--workers={WORKERS}"),
            format!("--capacity={CAPACITY}"),
            format!("--items={ITEMS}"),
            format!("--batch-max={batch_max}"),
            "--progress-secs=0".to_owned(),
        ])
        .unwrap()
    };
    let (item_by_item, batches) = (config(1), config(256));

    let mut group = c.benchmark_group("work-stealing 1 producer 4 workers capacity 64");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(20);
    group.bench_function("template pipeline, item by item", |b| {
        b.iter(|| black_box(runtime.block_on(template_pipeline(&item_by_item))))
    });
    group.bench_function("template pipeline, batches of 256", |b| {
        b.iter(|| black_box(runtime.block_on(template_pipeline(&batches))))
    });
    group.bench_function("bare flume, 4 tasks", |b| {
        b.iter(|| black_box(runtime.block_on(bare_flume_tasks())))
    });
    group.bench_function("bare flume, 4 threads", |b| {
        b.iter(|| black_box(runtime.block_on(bare_flume_threads())))
    });
    group.bench_function("bare async-channel", |b| {
        b.iter(|| black_box(runtime.block_on(bare_async_channel())))
    });
    group.bench_function("bare kanal", |b| {
        b.iter(|| black_box(runtime.block_on(bare_kanal())))
    });
    group.finish();
}

criterion_group!(benches, work_stealing);
criterion_main!(benches);
