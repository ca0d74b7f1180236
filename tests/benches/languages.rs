//! What each plugin language costs, measured in one run: component size, build time (a
//! fresh `weir build` work folder; the compilers' own caches as they are), first-load
//! compile time (no compile cache), cached load time (a second start on a warm cache), and
//! the p50 of one execution of the language's example plugin — with the Rust `word-count`
//! plugin as the baseline of the same run — and the resident memory a loaded plugin adds
//! (the growth of this process's RSS across a cached start that loads it: compiled code
//! mapped in, the pre-instantiated component; an approximation, as the allocator may keep
//! freed memory). Then the start of one runtime holding every
//! language's plugin on a warm cache (the goal: ≤ 1 s). Each plugin is measured again with
//! `[warm]` granted in its manifest: executions reuse an instance of the tenant's instead of
//! starting afresh, which spares an interpreter its start-up.
//!
//! Then, for each language, weir against raw wasmtime on the same component, taking turns
//! in blocks in one run: a fresh weir sandbox against a fresh instance by hand on weir's
//! engine configuration and on wasmtime's default one, then a warm weir instance against
//! one instance called again and again by hand; and a fresh instance by hand timed in
//! phases (its instantiation, its first call, a second call on it), to show how much of a
//! fresh instance's time is the language's start-up.
//!
//! Run with `cargo xtask bench languages` (or `cargo bench -p weir-tests --bench languages`);
//! `WEIR_BENCH_SAMPLES` sets the executions per plugin (default 300); `WEIR_BENCH_ONLY=raw`
//! runs only the comparison with raw wasmtime, and `WEIR_BENCH_LANGS=C,Go` narrows that
//! comparison to those languages; `WEIR_BENCH_RESET_WRITTEN=1` turns on
//! `EngineConfig::reset_written_pages_only`. It keeps the system allocator, whose RSS
//! growth says more about a loaded plugin than mimalloc's (which keeps freed memory).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmtime::Engine;

#[path = "support/raw.rs"]
mod raw;

use raw::{Baseline, Reused};
use weir_tests::time_block;

struct Case {
    lang: &'static str,
    plugin: &'static str,
    /// The project folder under `plugins/`, when `weir build` builds it.
    project: Option<&'static str>,
    input: Value,
}

/// The languages the comparison with raw wasmtime runs: every one, or those
/// `WEIR_BENCH_LANGS` names (e.g. `C,Go`).
fn raw_cases() -> Vec<Case> {
    let Ok(only) = std::env::var("WEIR_BENCH_LANGS") else {
        return cases();
    };
    let chosen: Vec<Case> = cases()
        .into_iter()
        .filter(|c| {
            only.split(',')
                .any(|l| l.trim().eq_ignore_ascii_case(c.lang))
        })
        .collect();
    assert!(
        !chosen.is_empty(),
        "WEIR_BENCH_LANGS={only} names no language; use Rust, Python, JavaScript, C or Go"
    );
    chosen
}

fn cases() -> Vec<Case> {
    let text = "the quick brown fox jumps over the lazy dog\nand then it rests";
    vec![
        Case {
            lang: "Rust",
            plugin: "word-count",
            project: None,
            input: json!({"text": text}),
        },
        Case {
            lang: "Python",
            plugin: "text-stats",
            project: Some("text-stats"),
            input: json!({"text": text}),
        },
        Case {
            lang: "JavaScript",
            plugin: "validate-json",
            project: Some("validate-json"),
            input: json!({
                "schema": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}},
                "document": {"id": 7}
            }),
        },
        Case {
            lang: "C",
            plugin: "checksum",
            project: Some("checksum"),
            input: json!({"text": text}),
        },
        Case {
            lang: "Go",
            plugin: "pick-route",
            project: Some("pick-route"),
            input: json!({"amount": 20, "country": "DE"}),
        },
    ]
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Builds the project in a fresh work folder; returns the build time.
fn build_time(project: &str) -> Duration {
    let dir = repo_root().join("plugins").join(project);
    let project = weir_devkit::Project::open(&dir).unwrap();
    let work = tempfile::tempdir().unwrap();
    let tools =
        weir_devkit::Tools::with_paths(std::env::split_paths(env!("WEIR_TEST_TOOLS")).collect());
    weir_devkit::build(&project, work.path(), &tools)
        .unwrap()
        .duration
}

/// Starts a runtime over `folder` with `cache` and returns it with the time the start took.
async fn start(folder: &Path, cache: Option<PathBuf>) -> (weir::Runtime, Duration) {
    let started = Instant::now();
    let rt = weir::Runtime::builder()
        .plugins_dir(folder)
        .engine_config(weir_tests::bench_engine_config())
        .cache_dir(cache)
        .build()
        .await
        .unwrap();
    rt.start();
    let took = started.elapsed();
    (rt, took)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// `samples` execution times of the case's plugin on `rt`, sorted, after a warm-up so the
/// first executions' page faults are not counted.
async fn sample(rt: &weir::Runtime, case: &Case, samples: usize) -> Vec<Duration> {
    for _ in 0..samples.div_ceil(10) {
        assert!(rt.run(case.plugin, case.input.clone()).await.unwrap().ok);
    }
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let result = rt.run(case.plugin, case.input.clone()).await.unwrap();
        times.push(started.elapsed());
        assert!(result.ok, "{}: {result:?}", case.plugin);
    }
    times.sort();
    times
}

/// p50s of one case: weir fresh, raw fresh on weir's engine, raw fresh on the default
/// engine, weir warm, raw reused; the fresh three taking turns in blocks, then the warm
/// two (see [`weir_tests::bench_blocks`]).
async fn against_raw(case: &Case, samples: usize, cache: &Path) -> ([Duration; 5], [Duration; 3]) {
    let folder = weir_tests::PluginFolder::with(&[case.plugin]);
    let (fresh, _) = start(folder.path(), Some(cache.to_path_buf())).await;
    let warm_folder = weir_tests::PluginFolder::with(&[case.plugin]);
    warm_folder.manifest(case.plugin, "[warm]\nmax_executions = 1000000\n");
    let (warm, _) = start(warm_folder.path(), Some(cache.to_path_buf())).await;
    let wasm = weir_tests::plugin_bytes(case.plugin);
    let same = Baseline::new(fresh.engine().wasmtime().clone(), &wasm, true);
    let default = Baseline::new(Engine::default(), &wasm, false);
    let mut reused = Reused::new(warm.engine().wasmtime(), &wasm).await;
    let raw_input = raw::stamped(&case.input);
    let ctx = raw::context(case.plugin);
    let [
        mut weir_fresh,
        mut same_fresh,
        mut default_fresh,
        mut weir_warm,
        mut reused_calls,
    ] = <[Vec<Duration>; 5]>::default();
    let warmup = samples / 10 + 1;
    let blocks = weir_tests::bench_blocks(warmup + samples);
    let run = async |rt: &weir::Runtime| {
        assert!(rt.run(case.plugin, case.input.clone()).await.unwrap().ok);
    };
    for block in &blocks {
        let fresh_run = async || run(&fresh).await;
        time_block(block.clone(), warmup, fresh_run, |t| weir_fresh.push(t)).await;
        let call = async || drop(same.call(&raw_input, &ctx).await);
        time_block(block.clone(), warmup, call, |t| same_fresh.push(t)).await;
        let call = async || drop(default.call(&raw_input, &ctx).await);
        time_block(block.clone(), warmup, call, |t| default_fresh.push(t)).await;
    }
    for block in &blocks {
        let warm_run = async || run(&warm).await;
        time_block(block.clone(), warmup, warm_run, |t| weir_warm.push(t)).await;
        let call = async || drop(reused.call(&raw_input, &ctx).await);
        time_block(block.clone(), warmup, call, |t| reused_calls.push(t)).await;
    }
    // Where a fresh instance's time goes, on weir's engine: instantiation, first call,
    // second call (a fresh instance per sample, after the warm-up).
    let phases = same.phase_samples(&raw_input, &ctx, warmup, samples).await;
    let p50 = |mut t: Vec<Duration>| {
        t.sort();
        percentile(&t, 0.5)
    };
    let times = [
        weir_fresh,
        same_fresh,
        default_fresh,
        weir_warm,
        reused_calls,
    ];
    (times.map(p50), phases.map(p50))
}

/// Prints weir against raw wasmtime, language by language.
async fn raw_table(samples: usize, cache: &Path) {
    println!(
        "\nweir against raw wasmtime on the same component, {samples} samples each (fresh cases \
         taking turns in blocks, then warm ones):\n"
    );
    println!(
        "| language | weir fresh | raw fresh (weir's engine) | raw fresh (default) | weir ÷ raw same | weir ÷ raw default | weir warm | raw reused | warm ÷ reused |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut startup = Vec::new();
    for case in raw_cases() {
        let ([fresh, same, default, warm, reused], phases) =
            against_raw(&case, samples, cache).await;
        startup.push((case.lang, phases));
        let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "| {} | {} | {} | {} | {:.2}× | {:.2}× | {} | {} | {:.2}× |",
            case.lang,
            us(fresh),
            us(same),
            us(default),
            ratio(fresh, same),
            ratio(fresh, default),
            us(warm),
            us(reused),
            ratio(warm, reused),
        );
    }
    println!(
        "\nA fresh instance by hand on weir's engine, in phases ({samples} instances each, \
         p50): instantiation (with any start-up the component runs in it), its first call, \
         a second call on the same instance:\n"
    );
    println!("| language | instantiation | first call | second call | first − second |");
    println!("|---|---:|---:|---:|---:|");
    for (lang, [instantiate, first, second]) in startup {
        println!(
            "| {lang} | {} | {} | {} | {} |",
            us(instantiate),
            us(first),
            us(second),
            us(first.saturating_sub(second)),
        );
    }
}

#[tokio::main]
async fn main() {
    let samples: usize = std::env::var("WEIR_BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let cache = tempfile::tempdir().unwrap();
    if std::env::var("WEIR_BENCH_ONLY").as_deref() == Ok("raw") {
        raw_table(samples, cache.path()).await;
        return;
    }
    let mut rows = Vec::new();
    let mut baseline_p50 = None;
    for case in cases() {
        let component = weir_tests::plugin_path(case.plugin);
        let size = std::fs::metadata(&component).unwrap().len();
        let build = case.project.map(build_time);
        let folder = weir_tests::PluginFolder::with(&[case.plugin]);
        // First load: nothing cached, the component is compiled.
        let (rt, _) = start(folder.path(), None).await;
        let compile = rt.plugin(case.plugin).unwrap().compile_time();
        drop(rt);
        // Fill the cache, then time a start that reads it.
        drop(start(folder.path(), Some(cache.path().to_path_buf())).await);
        let rss_before = weir_tests::rss_bytes();
        let (rt, cached_start) = start(folder.path(), Some(cache.path().to_path_buf())).await;
        let rss_loaded = weir_tests::rss_bytes().saturating_sub(rss_before);
        assert!(rt.plugin(case.plugin).unwrap().compiled_from_cache());
        let times = sample(&rt, &case, samples).await;
        drop(rt);
        // The same plugin with warm instances granted: each execution reuses the last one's
        // instance instead of starting the interpreter afresh.
        folder.manifest(case.plugin, "[warm]\nmax_executions = 1000000\n");
        let (warm, _) = start(folder.path(), Some(cache.path().to_path_buf())).await;
        let warm_times = sample(&warm, &case, samples).await;
        drop(warm);
        let p50 = percentile(&times, 0.5);
        let warm_p50 = percentile(&warm_times, 0.5);
        let baseline = *baseline_p50.get_or_insert(p50);
        rows.push(format!(
            "| {} (`{}`) | {:.2} MiB | {} | {} | {} | {:.1} MiB | {} ({:.1}×) | {} | {} ({:.2}× fresh) |",
            case.lang,
            case.plugin,
            size as f64 / (1024.0 * 1024.0),
            build.map_or_else(
                || "cargo".to_string(),
                |d| format!("{:.1} s", d.as_secs_f64())
            ),
            ms(compile),
            ms(cached_start),
            rss_loaded as f64 / (1024.0 * 1024.0),
            us(p50),
            p50.as_secs_f64() / baseline.as_secs_f64(),
            us(percentile(&times, 0.99)),
            us(warm_p50),
            warm_p50.as_secs_f64() / p50.as_secs_f64(),
        ));
    }
    let all = weir_tests::PluginFolder::with(&cases().iter().map(|c| c.plugin).collect::<Vec<_>>());
    drop(start(all.path(), Some(cache.path().to_path_buf())).await);
    let (_, all_start) = start(all.path(), Some(cache.path().to_path_buf())).await;

    println!(
        "{samples} executions per plugin after warm-up; p50 ratio against Rust in this run.\n"
    );
    println!(
        "| language (plugin) | component | build | first load (compile) | cached start | RSS loaded | execution p50 | p99 | warm instance p50 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!(
        "\nStart of one runtime with all five plugins, compile cache warm: {}",
        ms(all_start)
    );
    raw_table(samples, cache.path()).await;
}
