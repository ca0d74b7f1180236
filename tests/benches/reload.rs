//! Hot-reload latency: the time from a plugin file's final write (a rename over the old
//! file, as deploy tools do) to the first execution served by the new version, for a small
//! Rust component and for a 12 MiB one with a warm compile cache. Median of 20 swaps each,
//! with the default debounce. Run with `cargo xtask bench reload`
//! (or `cargo bench -p weir-tests --bench reload`).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};

const SWAPS: usize = 20;

/// `component` with a custom section appended: the same processor, another digest.
fn variant(component: &[u8], tag: u8) -> Vec<u8> {
    let name = b"weir-bench";
    let payload = [tag; 16];
    let content_len = 1 + name.len() + payload.len();
    let mut bytes = component.to_vec();
    bytes.push(0); // custom section
    bytes.push(u8::try_from(content_len).unwrap()); // LEB128, < 128
    bytes.push(u8::try_from(name.len()).unwrap());
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(&payload);
    bytes
}

fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("wasm.part");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Milliseconds from each swap's final write to the first execution of the new version.
async fn measure(name: &str, component: &[u8]) -> Vec<f64> {
    let folder = weir_tests::PluginFolder::new();
    let path = folder.path().join(format!("{name}.wasm"));
    let versions = [variant(component, 1), variant(component, 2)];
    std::fs::write(&path, &versions[0]).unwrap();
    let rt = weir::Runtime::builder()
        .plugins_dir(folder.path())
        .cache_dir(Some(weir_tests::cache_dir()))
        .build()
        .await
        .unwrap();
    rt.start();
    let _watcher = rt.watch(folder.path(), weir::DEFAULT_DEBOUNCE).unwrap();
    let mut latencies = Vec::new();
    // One warm-up swap puts both versions in the compile cache.
    for swap in 0..=SWAPS {
        let bytes = &versions[(swap + 1) % 2];
        let wanted = digest(bytes);
        replace(&path, bytes);
        let written = Instant::now();
        loop {
            let result = rt.run(name, json!({})).await.unwrap();
            assert!(result.ok, "{:?}", result.error);
            if result.execution.digest.as_deref() == Some(wanted.as_str()) {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(60),
                "the new version never served"
            );
            tokio::task::yield_now().await;
        }
        if swap > 0 {
            latencies.push(written.elapsed().as_secs_f64() * 1000.0);
        }
    }
    latencies
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let small = weir_tests::plugin_bytes("increment");
    let big = std::fs::read(weir_tests::fixtures_dir().join("big.wasm")).unwrap();
    println!(
        "time from the final write (rename over) to the first execution of the new version, {SWAPS} swaps each, debounce {} ms",
        weir::DEFAULT_DEBOUNCE.as_millis()
    );
    println!();
    println!("| component | size | median ms | p90 ms | max ms | goal |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, component, goal) in [("increment", &small, "≤ 300 ms"), ("big", &big, "—")] {
        let latencies = runtime.block_on(measure(name, component));
        println!(
            "| {name} | {:.1} MiB | {:.1} | {:.1} | {:.1} | {goal} |",
            component.len() as f64 / f64::from(1u32 << 20),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            percentile(&latencies, 1.0),
        );
    }
}
