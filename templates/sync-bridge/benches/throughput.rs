//! Throughput of the template's bridge next to bare loops of the bridge's
//! shape on flume, tokio mpsc and kanal, with one blocking thread, one async
//! task and capacity 64. The gap to "bare flume" is what the scaffold costs;
//! the other two show what a different channel crate would give.
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
const CAPACITY: usize = 64;

/// The runtime flavor `main` uses, so the numbers match the service.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_{{runtime}}()
        .enable_all()
        .build()
        .unwrap()
}

async fn template_bridge(config: &Config) -> u64 {
    let report = pipeline::run(config, DemoWorkload::new(config), CancellationToken::new()).await;
    report.handled
}
{% if direction == "async-to-sync" %}
// The shape of this direction: one async task sends, one OS thread receives.

async fn bare_flume() -> u64 {
    let (tx, rx) = flume::bounded(CAPACITY);
    let sink = std::thread::spawn(move || rx.iter().fold(0u64, u64::wrapping_add));
    for item in 0..ITEMS {
        tx.send_async(item).await.unwrap();
    }
    drop(tx);
    tokio::task::spawn_blocking(move || sink.join().unwrap())
        .await
        .unwrap()
}

async fn bare_tokio_mpsc() -> u64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel(CAPACITY);
    let sink = std::thread::spawn(move || {
        let mut sum = 0u64;
        while let Some(item) = rx.blocking_recv() {
            sum = sum.wrapping_add(item);
        }
        sum
    });
    for item in 0..ITEMS {
        tx.send(item).await.unwrap();
    }
    drop(tx);
    tokio::task::spawn_blocking(move || sink.join().unwrap())
        .await
        .unwrap()
}

async fn bare_kanal() -> u64 {
    let (tx, rx) = kanal::bounded_async(CAPACITY);
    let rx = rx.to_sync();
    let sink = std::thread::spawn(move || {
        let mut sum = 0u64;
        while let Ok(item) = rx.recv() {
            sum = sum.wrapping_add(item);
        }
        sum
    });
    for item in 0..ITEMS {
        tx.send(item).await.unwrap();
    }
    drop(tx);
    tokio::task::spawn_blocking(move || sink.join().unwrap())
        .await
        .unwrap()
}
{% else %}
// The shape of this direction: one OS thread sends, one async task receives.

async fn bare_flume() -> u64 {
    let (tx, rx) = flume::bounded(CAPACITY);
    let source = std::thread::spawn(move || {
        for item in 0..ITEMS {
            tx.send(item).unwrap();
        }
    });
    let consumer = tokio::spawn(async move {
        let mut sum = 0u64;
        while let Ok(item) = rx.recv_async().await {
            sum = sum.wrapping_add(item);
        }
        sum
    });
    let sum = consumer.await.unwrap();
    source.join().unwrap(); // finished: its sender is gone
    sum
}

async fn bare_tokio_mpsc() -> u64 {
    let (tx, mut rx) = tokio::sync::mpsc::channel(CAPACITY);
    let source = std::thread::spawn(move || {
        for item in 0..ITEMS {
            tx.blocking_send(item).unwrap();
        }
    });
    let consumer = tokio::spawn(async move {
        let mut sum = 0u64;
        while let Some(item) = rx.recv().await {
            sum = sum.wrapping_add(item);
        }
        sum
    });
    let sum = consumer.await.unwrap();
    source.join().unwrap();
    sum
}

async fn bare_kanal() -> u64 {
    let (tx, rx) = kanal::bounded_async(CAPACITY);
    let tx = tx.to_sync();
    let source = std::thread::spawn(move || {
        for item in 0..ITEMS {
            tx.send(item).unwrap();
        }
    });
    let consumer = tokio::spawn(async move {
        let mut sum = 0u64;
        while let Ok(item) = rx.recv().await {
            sum = sum.wrapping_add(item);
        }
        sum
    });
    let sum = consumer.await.unwrap();
    source.join().unwrap();
    sum
}
{% endif %}
fn bridge(c: &mut Criterion) {
    let runtime = runtime();
    let config = Config::try_parse_from([
        "bench".to_owned(),
        "--producers=1".to_owned(),
        format!("--capacity={CAPACITY}"),
        format!("--items={ITEMS}"),
        "--progress-secs=0".to_owned(),
    ])
    .unwrap();

    let mut group = c.benchmark_group("bridge 1 thread 1 task capacity 64");
    group.throughput(Throughput::Elements(ITEMS));
    group.sample_size(20);
    group.bench_function("template bridge", |b| {
        b.iter(|| black_box(runtime.block_on(template_bridge(&config))))
    });
    group.bench_function("bare flume", |b| {
        b.iter(|| black_box(runtime.block_on(bare_flume())))
    });
    group.bench_function("bare tokio mpsc", |b| {
        b.iter(|| black_box(runtime.block_on(bare_tokio_mpsc())))
    });
    group.bench_function("bare kanal", |b| {
        b.iter(|| black_box(runtime.block_on(bare_kanal())))
    });
    group.finish();
}

criterion_group!(benches, bridge);
criterion_main!(benches);
