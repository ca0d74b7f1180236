//! Resident memory under load: 10,000 executions of `sleep` submitted at once, each waiting
//! one second in a host call (a WASI clock wait, so no WebAssembly runs), on a runtime with
//! the default engine configuration: at most `max_instances` (1000) sandboxes exist at once
//! and the rest wait for a slot. Reports the process's RSS before, at its peak and after,
//! and the most executions in flight, with pooled memories kept resident (the default) and
//! not. Run with `cargo xtask bench memory` (or `cargo bench -p weir-tests --bench memory`);
//! `WEIR_BENCH_EXECUTIONS` sets the count (default 10000); `WEIR_BENCH_RESET_WRITTEN=1`
//! turns on `EngineConfig::reset_written_pages_only`.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;

/// This process's resident set size, in MiB.
fn rss_mib() -> f64 {
    weir_tests::rss_bytes() as f64 / (1024.0 * 1024.0)
}

struct Figures {
    before: f64,
    peak: f64,
    after: f64,
    most_running: usize,
    took: Duration,
}

async fn measure(executions: usize, keep_resident_bytes: usize) -> Figures {
    let folder = weir_tests::PluginFolder::with(&["sleep"]);
    folder.manifest("sleep", "[limits]\ntimeout_ms = 60000\n");
    let rt = weir::Runtime::builder()
        .plugins_dir(folder.path())
        .engine_config(weir::EngineConfig {
            keep_resident_bytes,
            cache_dir: Some(weir_tests::cache_dir()),
            ..weir_tests::bench_engine_config()
        })
        .build()
        .await
        .unwrap();
    rt.start();
    assert!(rt.run("sleep", json!({"ms": 1})).await.unwrap().ok);
    let before = rss_mib();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..executions {
        let rt = rt.clone();
        tasks.spawn(async move {
            let result = rt.run("sleep", json!({"ms": 1000})).await.unwrap();
            assert!(result.ok, "{:?}", result.error);
        });
    }
    let mut peak = before;
    let mut most_running = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                Some(done) => done.unwrap(),
                None => break,
            },
            _ = tick.tick() => {
                peak = peak.max(rss_mib());
                most_running = most_running.max(rt.stats().running);
            }
        }
    }
    let took = started.elapsed();
    Figures {
        before,
        peak,
        after: rss_mib(),
        most_running,
        took,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let executions: usize = std::env::var("WEIR_BENCH_EXECUTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let default_keep = weir::EngineConfig::default().keep_resident_bytes;
    println!(
        "{executions} executions of `sleep` (1 s in a host call each), submitted at once; pool of {} sandboxes\n",
        weir::EngineConfig::default().max_instances
    );
    println!(
        "| kept resident per memory | RSS before | RSS peak | peak − before | per sandbox | after | most in flight | all done in |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for keep in [default_keep, 0] {
        let f = measure(executions, keep).await;
        let sandboxes = f
            .most_running
            .min(weir::EngineConfig::default().max_instances as usize)
            .max(1);
        println!(
            "| {:.2} MiB | {:.0} MiB | {:.0} MiB | {:.0} MiB | {:.2} MiB | {:.0} MiB | {} | {:.1} s |",
            keep as f64 / (1024.0 * 1024.0),
            f.before,
            f.peak,
            f.peak - f.before,
            (f.peak - f.before) / sandboxes as f64,
            f.after,
            f.most_running,
            f.took.as_secs_f64()
        );
    }
}
