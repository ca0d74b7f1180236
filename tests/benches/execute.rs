//! One execution of `increment`, three ways, measured in the same run so the ratios hold on
//! a noisy machine:
//!
//! 1. **weir**: `Runtime::execute` through the public API (result document included);
//! 2. **raw, weir's engine**: wasmtime by hand on the same engine (pooling allocator, fuel,
//!    epochs): `InstancePre` + a fresh `Store` + `process`, the floor weir builds on;
//! 3. **raw, default engine**: the same by hand on wasmtime's default configuration, for
//!    reference;
//!
//! and, in a phase of their own, in **warm mode** (a second runtime whose `increment` has
//! `[warm]` in its manifest):
//!
//! 4. **weir, warm**: `Runtime::execute` reusing an idle instance of the tenant;
//! 5. **raw, reused instance**: `process` called again on one instance kept by hand, the
//!    floor warm mode builds on;
//!
//! then, in phases of their own: a fresh instance by hand on weir's engine timed in
//! **phases** (its instantiation, its first call, a second call on it), to show what the
//! guest sets up on its first call; two workflows of the same processor as ratios to one
//! weir execution of the same mode, a **chain of 10** and a **parallel of 3**, fresh and
//! warm; and **throughput** on the two-worker runtime with 64 executions in flight against
//! 1 in flight.
//!
//! It runs on mimalloc, the allocator the `weir` binary ships with; the raw baselines run on
//! it too.
//!
//! The cases take turns in blocks of 32 samples, so a burst of load hits all of them alike
//! while each is measured in its own steady state, as a host running it back to back would:
//! taking turns sample by sample (`WEIR_BENCH_BLOCK=1`) puts a default-configuration
//! instantiation, which maps and faults fresh memory, before every weir sample and charges
//! its cache misses to weir.
//! Run with `cargo xtask bench` (or `cargo bench -p weir-tests --bench execute`);
//! `WEIR_BENCH_SAMPLES` sets the sample count (default 3000), `WEIR_BENCH_BLOCK` the
//! block size;
//! `WEIR_BENCH_ONLY=weir|raw|default|warm|reused|phases|chain|parallel|throughput` runs one case alone, e.g. to count its instructions under
//! `valgrind --tool=callgrind` (steadier than time on a noisy machine; set `WEIR_BENCH_POOL=4`
//! there, see [`weir_tests::bench_engine_config`]);
//! `WEIR_BENCH_RESET_WRITTEN=1` builds weir's engines (and so the raw cases on weir's engine)
//! with `EngineConfig::reset_written_pages_only` on.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use wasmtime::Engine;

/// The allocator the `weir` binary ships with, so weir's allocations cost what they cost
/// there (the raw baselines run on it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "support/raw.rs"]
mod raw;

use raw::{Baseline, Reused};
use weir_tests::time_block;

struct Samples {
    name: &'static str,
    micros: Vec<f64>,
}

impl Samples {
    fn new(name: &'static str) -> Self {
        Samples {
            name,
            micros: Vec::new(),
        }
    }

    fn record(&mut self, elapsed: Duration) {
        self.micros.push(elapsed.as_secs_f64() * 1e6);
    }

    /// Records `elapsed` unless the sample is a warm-up (`record` false).
    fn record_if(&mut self, record: bool, elapsed: Duration) {
        if record {
            self.record(elapsed);
        }
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.micros.clone();
        sorted.sort_by(f64::total_cmp);
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index]
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported, so ignore args.
    let samples: usize = std::env::var("WEIR_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    // Single executions and chains run on a current-thread runtime (the lowest latency);
    // parallel workflows on a two-worker runtime, so that branches can use both cores.
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    bench(samples, &current, &multi);
}

fn bench(samples: usize, current: &tokio::runtime::Runtime, multi: &tokio::runtime::Runtime) {
    current.block_on(measure(samples, multi));
}

/// A runtime over a folder holding `increment` (with `manifest` beside it, if given) and
/// two workflows of it: `chain-10` and `parallel-3`.
async fn increment_runtime(manifest: Option<&str>) -> (weir_tests::PluginFolder, ::weir::Runtime) {
    let folder = weir_tests::PluginFolder::with(&["increment"]);
    if let Some(manifest) = manifest {
        folder.manifest("increment", manifest);
    }
    let runtime = ::weir::Runtime::builder()
        .plugins_dir(folder.path())
        .engine_config(weir_tests::bench_engine_config())
        .cache_dir(Some(weir_tests::cache_dir()))
        .build()
        .await
        .expect("weir builds");
    runtime.start();
    runtime
        .register(::weir::Workflow::chain("chain-10", ["increment"; 10]))
        .expect("a valid chain");
    runtime
        .register(::weir::Workflow::parallel("parallel-3", ["increment"; 3]))
        .expect("a valid parallel");
    (folder, runtime)
}

async fn measure(samples: usize, multi: &tokio::runtime::Runtime) {
    let (_folder, weir) = increment_runtime(None).await;
    // The same plugin, opted into warm instances by its manifest, on a runtime of its own.
    let (_warm_folder, warm) = increment_runtime(Some("[warm]\nmax_executions = 1000000\n")).await;
    let wasm = weir_tests::plugin_bytes("increment");
    let mut reused = Reused::new(weir.engine().wasmtime(), &wasm).await;
    let same_engine = Baseline::new(weir.engine().wasmtime().clone(), &wasm, true);
    let default_engine = Baseline::new(Engine::default(), &wasm, false);

    let input = json!({"count": 1});
    let raw_input = raw::stamped(&input);
    let ctx = raw::context("increment");

    let mut weir_samples = Samples::new("weir (public API)");
    let mut same_samples = Samples::new("raw wasmtime, weir's engine config");
    let mut default_samples = Samples::new("raw wasmtime, default config");
    let mut warm_samples = Samples::new("weir, warm instance (public API)");
    let mut reused_samples = Samples::new("raw wasmtime, reused instance");
    let mut chain_samples = Samples::new("weir chain of 10");
    let mut parallel_samples = Samples::new("weir parallel of 3");
    let mut warm_chain_samples = Samples::new("weir chain of 10, warm");
    let mut warm_parallel_samples = Samples::new("weir parallel of 3, warm");
    let only = std::env::var("WEIR_BENCH_ONLY").ok();
    let runs = |case: &str| only.as_deref().is_none_or(|o| o == case);
    let warmup = samples / 10 + 10;
    let blocks = weir_tests::bench_blocks(warmup + samples);
    for block in &blocks {
        if runs("weir") {
            let run = async || run_ok(&weir, "increment", &input).await;
            time_block(block.clone(), warmup, run, |t| weir_samples.record(t)).await;
        }
        if runs("raw") {
            let call = async || drop(same_engine.call(&raw_input, &ctx).await);
            time_block(block.clone(), warmup, call, |t| same_samples.record(t)).await;
        }
        if runs("default") {
            let call = async || drop(default_engine.call(&raw_input, &ctx).await);
            time_block(block.clone(), warmup, call, |t| default_samples.record(t)).await;
        }
    }
    // Warm mode in a phase of its own, taking turns with its own baseline: fresh
    // instantiations in between would evict the caches both warm cases rely on.
    for block in &blocks {
        if runs("warm") {
            let run = async || run_ok(&warm, "increment", &input).await;
            time_block(block.clone(), warmup, run, |t| warm_samples.record(t)).await;
        }
        if runs("reused") {
            let call = async || drop(reused.call(&raw_input, &ctx).await);
            time_block(block.clone(), warmup, call, |t| reused_samples.record(t)).await;
        }
    }
    // A fresh instance by hand in phases, to show what the guest sets up on its first call:
    // its instantiation, its first call, and a second call on it.
    let mut phase_samples = [
        Samples::new("raw phases: instantiation"),
        Samples::new("raw phases: first call"),
        Samples::new("raw phases: second call"),
    ];
    if runs("phases") {
        let phases = same_engine
            .phase_samples(&raw_input, &ctx, warmup, samples)
            .await;
        for (phase, times) in phase_samples.iter_mut().zip(phases) {
            times.into_iter().for_each(|t| phase.record(t));
        }
    }
    // Workflows in a phase of their own: a parallel sample leaves worker threads spinning
    // for a moment, which would tax whichever single execution came next.
    let rounds = samples / 5 + 1;
    for i in 0..rounds + rounds / 10 {
        let record = i >= rounds / 10;
        for (runtime, chains, parallels) in [
            (&weir, &mut chain_samples, &mut parallel_samples),
            (&warm, &mut warm_chain_samples, &mut warm_parallel_samples),
        ] {
            if runs("chain") {
                let elapsed = timed_run(runtime, "chain-10", &input).await;
                chains.record_if(record, elapsed);
            }
            if runs("parallel") {
                // Timed on a worker of the multi-threaded runtime, from start to result.
                let runtime = runtime.clone();
                let input = input.clone();
                let elapsed = multi
                    .spawn(async move {
                        let started = Instant::now();
                        let result = runtime.run("parallel-3", input).await.unwrap();
                        assert!(result.ok, "{:?}", result.error);
                        started.elapsed()
                    })
                    .await
                    .expect("the parallel sample ran");
                parallels.record_if(record, elapsed);
            }
        }
    }
    // Throughput: the same number of executions with 1 and with 64 in flight, alternated
    // twice so a burst of load hits both alike.
    let total = samples.max(640);
    let mut rates = [0.0f64; 2];
    if runs("throughput") {
        for _ in 0..2 {
            for (slot, in_flight) in [(0, 1), (1, 64)] {
                rates[slot] += throughput(&weir, multi, in_flight, total, &input).await / 2.0;
            }
        }
    }
    if only.is_some() {
        if rates[0] > 0.0 {
            println!(
                "throughput: {:.0}/s with 1 in flight, {:.0}/s with 64",
                rates[0], rates[1]
            );
        }
        for s in [
            &weir_samples,
            &same_samples,
            &default_samples,
            &warm_samples,
            &reused_samples,
            &chain_samples,
            &parallel_samples,
            &warm_chain_samples,
            &warm_parallel_samples,
        ]
        .into_iter()
        .chain(&phase_samples)
        {
            if !s.micros.is_empty() {
                println!(
                    "{}: p50 {:.2} µs, p99 {:.2} µs",
                    s.name,
                    s.percentile(0.5),
                    s.percentile(0.99)
                );
            }
        }
        return;
    }

    let baseline = same_samples.percentile(0.5);
    println!(
        "one execution of `increment`, {samples} samples each (taking turns in blocks of {}), pooling allocator: {}",
        blocks.first().map_or(0, ExactSizeIterator::len),
        weir.engine().is_pooling()
    );
    println!();
    println!("| case | p50 µs | p99 µs | p50 ÷ raw (weir's engine) |");
    println!("|---|---:|---:|---:|");
    for s in [
        &weir_samples,
        &same_samples,
        &default_samples,
        &warm_samples,
        &reused_samples,
    ] {
        println!(
            "| {} | {:.1} | {:.1} | {:.2}× |",
            s.name,
            s.percentile(0.5),
            s.percentile(0.99),
            s.percentile(0.5) / baseline
        );
    }
    println!();
    println!(
        "fresh: weir ÷ raw with the same engine: {:.2}× (goal ≤ 1.3×); weir ÷ raw default \
         engine: {:.2}× (goal ≤ 0.3×)",
        weir_samples.percentile(0.5) / baseline,
        weir_samples.percentile(0.5) / default_samples.percentile(0.5)
    );
    println!(
        "warm: weir ÷ raw reused instance: {:.2}× (goal ≤ 1.3×); warm ÷ fresh: {:.2}×",
        warm_samples.percentile(0.5) / reused_samples.percentile(0.5),
        warm_samples.percentile(0.5) / weir_samples.percentile(0.5)
    );
    let [instantiate, first, second] = phase_samples.map(|s| s.percentile(0.5));
    println!(
        "a fresh instance by hand on weir's engine, p50: instantiation {instantiate:.1} µs, \
         first call {first:.1} µs, second call on it {second:.1} µs (first − second: {:.1} µs)",
        first - second
    );
    println!();
    println!("| workflow | p50 µs | p99 µs | p50 ÷ one weir execution of the same mode | goal |");
    println!("|---|---:|---:|---:|---:|");
    let fresh = weir_samples.percentile(0.5);
    let warm = warm_samples.percentile(0.5);
    for (s, single, goal) in [
        (&chain_samples, fresh, "≤ 12×"),
        (&parallel_samples, fresh, "≤ 4×"),
        (&warm_chain_samples, warm, "≤ 12×"),
        (&warm_parallel_samples, warm, "≤ 4×"),
    ] {
        println!(
            "| {} | {:.1} | {:.1} | {:.2}× | {goal} |",
            s.name,
            s.percentile(0.5),
            s.percentile(0.99),
            s.percentile(0.5) / single
        );
    }
    println!();
    println!("| executions in flight (2 worker threads) | executions/s | ÷ 1 in flight |");
    println!("|---|---:|---:|");
    for (in_flight, rate) in [(1, rates[0]), (64, rates[1])] {
        println!("| {in_flight} | {rate:.0} | {:.2}× |", rate / rates[0]);
    }
}

/// How long one successful run of `name` takes through the public API.
async fn timed_run(runtime: &::weir::Runtime, name: &str, input: &serde_json::Value) -> Duration {
    let started = Instant::now();
    let result = runtime.run(name, input.clone()).await.unwrap();
    let elapsed = started.elapsed();
    assert!(result.ok, "{:?}", result.error);
    elapsed
}

/// Runs `name` and returns its result, which must be a success.
async fn run_ok(
    runtime: &::weir::Runtime,
    name: &str,
    input: &serde_json::Value,
) -> ::weir::ExecutionResult {
    let result = runtime.run(name, input.clone()).await.unwrap();
    assert!(result.ok, "{:?}", result.error);
    result
}

/// Executions per second of `increment` with `in_flight` running at once on `multi`
/// (`total` executions in all).
async fn throughput(
    weir: &::weir::Runtime,
    multi: &tokio::runtime::Runtime,
    in_flight: usize,
    total: usize,
    input: &serde_json::Value,
) -> f64 {
    let weir = weir.clone();
    let input = input.clone();
    multi
        .spawn(async move {
            let started = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for task in 0..in_flight {
                let weir = weir.clone();
                let input = input.clone();
                let runs = total / in_flight + usize::from(task < total % in_flight);
                tasks.spawn(async move {
                    for _ in 0..runs {
                        let result = weir.run("increment", input.clone()).await.unwrap();
                        assert!(result.ok, "{:?}", result.error);
                    }
                });
            }
            tasks.join_all().await;
            total as f64 / started.elapsed().as_secs_f64()
        })
        .await
        .expect("the throughput run ran")
}
