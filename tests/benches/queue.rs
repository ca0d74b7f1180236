//! The distributed runtime's queue costs, beside two baselines on the same Redis in the same
//! run: raw bullmq-official running a trivial Rust closure, and Node BullMQ (6.5.1) running
//! a trivial JS job. For each: the round trip of one job (added, processed, its completion
//! seen by the producer) one at a time, p50 and p99; and jobs completed per second with 50
//! in flight, with 1 and with 2 workers (the baselines' run 8 jobs at a time each, weir's
//! their default `--concurrency`, 16). weir's workers are `weir worker` processes (release
//! build) running the `increment` plugin in a fresh sandbox per job; the baselines' workers
//! run in their producer's process. On a 2-core machine two workers measure contention, not
//! scaling.
//!
//! Run with `cargo xtask bench queue` (or `cargo bench -p weir-tests --bench queue`).
//! `WEIR_BENCH_JOBS` (default 20,000: Node reaches its pace only after a few thousand jobs)
//! and `WEIR_BENCH_ROUND_TRIPS` (default 300) set the sizes.
//! `WEIR_BENCH_ONLY=raw,node,weir,unsigned` (any of them) runs only those systems;
//! `unsigned` is weir with `--insecure-redis` (no fleet key: nothing signed or checked), not
//! run by default: beside `weir`, it measures what signing and checking cost per job.
//! `WEIR_BENCH_CONCURRENCY=N` passes `--concurrency N` to the `weir worker` processes.
//! `WEIR_BENCH_WARM=1` grants `increment` warm instances (`[warm]` in its manifest), to
//! see the queue's cost without a fresh sandbox per job.
//!
//! Beside each system's figures it prints what the one Redis spent per job: CPU time (user
//! and system, from `INFO` before and after) and commands processed, over every job it ran.
//! A fleet's Redis is shared by all its workers, so 1 s ÷ that CPU time is the ceiling of
//! jobs/s whatever the number of workers.
//!
//! Each system runs three shapes of work (`WEIR_BENCH_SHAPES=single,chain3,par3`, any of
//! them): a single job; a chain of three (weir: a chain workflow of three `increment`
//! steps; BullMQ: a flow of three jobs, each the parent of the next, as BullMQ chains
//! jobs); and a parallel of three (weir: a parallel workflow of three branches; BullMQ: a
//! flow of three children and their parent, which runs once they are done). A chain's or
//! a parallel's figures are per run (of three steps), over a third as many runs as
//! `WEIR_BENCH_JOBS` says.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bullmq::options::RedisConnectionOptions;
use bullmq::types::RemoveOnFinish;
use bullmq::{
    JobOptions, Queue, QueueEvent, QueueEvents, QueueEventsOptions, QueueOptions, Worker,
    WorkerOptions,
};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const IN_FLIGHT: usize = 50;
const WARM_UP: usize = 30;

/// What one unit of work is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One job.
    Single,
    /// Three jobs, one after another.
    Chain3,
    /// Three jobs at once, then what joins them.
    Par3,
}

impl Shape {
    const ALL: [Shape; 3] = [Shape::Single, Shape::Chain3, Shape::Par3];

    fn name(self) -> &'static str {
        match self {
            Shape::Single => "single",
            Shape::Chain3 => "chain3",
            Shape::Par3 => "par3",
        }
    }

    /// What the report calls one unit.
    fn unit(self) -> &'static str {
        match self {
            Shape::Single => "job",
            Shape::Chain3 => "chain of 3",
            Shape::Par3 => "parallel of 3",
        }
    }

    /// The units a run of `jobs` jobs makes of this shape.
    fn units(self, jobs: usize) -> usize {
        match self {
            Shape::Single => jobs,
            Shape::Chain3 | Shape::Par3 => (jobs / 3).max(1),
        }
    }

    /// A BullMQ flow of this shape on `queue` whose root job is `id`: a chain nests each
    /// job as the parent of the one before it; a parallel is a parent of three children.
    fn flow(self, queue: &str, id: String) -> bullmq::FlowJob {
        let job = |id: Option<String>| {
            let mut options = JobOptions::new().remove_on_complete(RemoveOnFinish::Count(1000));
            options.job_id = id;
            bullmq::FlowJob::new("t", queue, json!({}))
                .unwrap()
                .options(options)
        };
        match self {
            Shape::Single => job(Some(id)),
            Shape::Chain3 => job(Some(id)).add_child(job(None).add_child(job(None))),
            Shape::Par3 => job(Some(id))
                .add_child(job(None))
                .add_child(job(None))
                .add_child(job(None)),
        }
    }
}

fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One system's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    p50_us: f64,
    p99_us: f64,
    per_second: f64,
    /// Redis's CPU time (user + system) per job, in µs, and the commands Redis processed
    /// per job: over every job the system ran (warm-up, round trips and throughput), from
    /// `INFO` before and after. The one Redis a fleet shares tops out at 1 s ÷ this.
    redis_cpu_us: f64,
    redis_commands: f64,
}

/// Redis's CPU seconds (user + system, main thread and children) and commands processed
/// so far, from `INFO`.
fn redis_usage(url: &str) -> (f64, u64) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_connection().unwrap();
    let info: String = redis::cmd("INFO")
        .arg("everything")
        .query(&mut conn)
        .unwrap();
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or("0")
            .to_string()
    };
    let cpu = ["used_cpu_sys", "used_cpu_user"]
        .iter()
        .map(|name| field(name).parse::<f64>().unwrap_or(0.0))
        .sum();
    // This INFO is one more command; noise beside thousands of jobs.
    (cpu, field("total_commands_processed").parse().unwrap_or(0))
}

/// What Redis did for `jobs` jobs since `before` (from [`redis_usage`]): CPU µs and
/// commands per job.
fn redis_per_job(url: &str, before: (f64, u64), jobs: usize) -> (f64, f64) {
    let after = redis_usage(url);
    let jobs = jobs.max(1) as f64;
    (
        (after.0 - before.0) * 1e6 / jobs,
        after.1.saturating_sub(before.1) as f64 / jobs,
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((p / 100.0) * sorted.len() as f64) as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Times `once` sequentially, then with [`IN_FLIGHT`] at a time, counting what the Redis at
/// `url` spent on it.
async fn measure<F, Fut>(url: &str, once: F, round_trips: usize, jobs: usize) -> Figures
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let before = redis_usage(url);
    for _ in 0..WARM_UP {
        once().await;
    }
    let mut times = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let started = Instant::now();
        once().await;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let once = once.clone();
        let next = next.clone();
        tasks.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < jobs {
                once().await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let per_second = jobs as f64 / started.elapsed().as_secs_f64();
    let (redis_cpu_us, redis_commands) = redis_per_job(url, before, WARM_UP + round_trips + jobs);
    Figures {
        p50_us: percentile(&times, 50.0),
        p99_us: percentile(&times, 99.0),
        per_second,
        redis_cpu_us,
        redis_commands,
    }
}

/// bullmq-official alone: a closure returning `{}`, completions read from the queue's
/// event stream by one reader that hands them to waiters.
async fn raw(url: &str, workers: usize, round_trips: usize, jobs: usize, shape: Shape) -> Figures {
    let connection = RedisConnectionOptions::new().url(url);
    let prefix = format!("rawbench{workers}{}", shape.name());
    let flows = Arc::new(
        bullmq::FlowProducer::with_options(
            bullmq::FlowProducerOptions::new()
                .connection(connection.clone())
                .prefix(prefix.clone()),
        )
        .await
        .unwrap(),
    );
    let queue = Arc::new(
        Queue::with_options(
            "trivial",
            QueueOptions::new()
                .connection(connection.clone())
                .prefix(prefix.clone()),
        )
        .await
        .unwrap(),
    );
    let events = QueueEvents::with_options(
        "trivial",
        QueueEventsOptions {
            connection: connection.clone(),
            prefix: prefix.clone(),
            ..QueueEventsOptions::default()
        },
    )
    .await
    .unwrap();
    let waiters: Arc<Mutex<HashMap<String, oneshot::Sender<()>>>> = Arc::default();
    let dispatch = waiters.clone();
    let reader = tokio::spawn(async move {
        while let Some(entry) = events.next_event().await {
            if let QueueEvent::Completed { job_id, .. } = entry.event
                && let Some(waiter) = dispatch.lock().unwrap().remove(&job_id)
            {
                let _ = waiter.send(());
            }
        }
    });
    let mut running = Vec::new();
    for _ in 0..workers {
        let options = WorkerOptions::new()
            .connection(connection.clone())
            .prefix(prefix.clone())
            .concurrency(8);
        let worker = Worker::with_options(
            "trivial",
            |_job, _token| async { Ok::<Value, bullmq::Error>(json!({})) },
            options,
        )
        .await
        .unwrap();
        let worker = Arc::new(worker);
        // A worker's event channel is unbounded: drain it, as any user of the crate must.
        let events = worker.clone();
        tokio::spawn(async move { while events.next_event().await.is_some() {} });
        running.push(worker);
    }
    let once = {
        let queue = queue.clone();
        move || {
            let queue = queue.clone();
            let flows = flows.clone();
            let waiters = waiters.clone();
            async move {
                let id = uuid_like();
                let (done, wait) = oneshot::channel();
                waiters.lock().unwrap().insert(id.clone(), done);
                if shape == Shape::Single {
                    let mut options =
                        JobOptions::new().remove_on_complete(RemoveOnFinish::Count(1000));
                    options.job_id = Some(id);
                    queue.add("t", json!({})).options(options).await.unwrap();
                } else {
                    flows.add(shape.flow("trivial", id)).await.unwrap();
                }
                tokio::time::timeout(Duration::from_secs(30), wait)
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
    };
    let figures = measure(url, once, round_trips, jobs).await;
    for worker in &running {
        worker.close(1_000).await.unwrap();
    }
    reader.abort();
    figures
}

fn uuid_like() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "j-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Node BullMQ, through `tests/node/bench.mjs`.
fn node(url: &str, workers: usize, round_trips: usize, jobs: usize, shape: Shape) -> Figures {
    let dir = weir_tests::node_project();
    let before = redis_usage(url);
    let output = std::process::Command::new("node")
        .arg(dir.join("bench.mjs"))
        .arg(url)
        .args([workers, round_trips, jobs, IN_FLIGHT].map(|n| n.to_string()))
        .arg(shape.name())
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // bench.mjs warms up with 30 jobs, as `measure` does.
    let (redis_cpu_us, redis_commands) = redis_per_job(url, before, WARM_UP + round_trips + jobs);
    let figures: Value = serde_json::from_slice(&output.stdout).unwrap();
    Figures {
        p50_us: figures["p50Us"].as_f64().unwrap(),
        p99_us: figures["p99Us"].as_f64().unwrap(),
        per_second: figures["perSecond"].as_f64().unwrap(),
        redis_cpu_us,
        redis_commands,
    }
}

/// weir: `weir worker` processes running `increment`, a runtime submitting and waiting;
/// with the tests' fleet key when `signed`, else with none (`--insecure-redis`).
async fn weir(
    url: &str,
    workers: usize,
    round_trips: usize,
    jobs: usize,
    signed: bool,
    shape: Shape,
) -> Figures {
    let folder = weir_tests::PluginFolder::with(&["increment"]);
    folder.write(
        "workflows.toml",
        b"[workflow.chain3]\nchain = [\"increment\", \"increment\", \"increment\"]\n\n\
          [workflow.par3]\nparallel = [\"increment\", \"increment\", \"increment\"]\n",
    );
    let target = match shape {
        Shape::Single => "increment",
        Shape::Chain3 => "chain3",
        Shape::Par3 => "par3",
    };
    if warm_mode() {
        // Idle instances for every job a worker may run at once, so none is dropped.
        folder.manifest(
            "increment",
            "[warm]\nmax_executions = 1000000\nmax_idle = 64\n",
        );
    }
    let binary = weir_tests::weir_release_bin();
    let concurrency = std::env::var("WEIR_BENCH_CONCURRENCY").ok();
    let mut extra: Vec<&str> = match &concurrency {
        Some(n) => vec!["--concurrency", n.as_str()],
        None => Vec::new(),
    };
    if !signed {
        extra.push("--insecure-redis");
    }
    let _workers: Vec<_> = (0..workers)
        .map(|_| weir_tests::WorkerProcess::start_binary(binary, url, folder.path(), &extra))
        .collect();
    let runtime = weir::Runtime::redis(url)
        .trust(if signed {
            weir_tests::fleet()
        } else {
            weir::Trust::Insecure
        })
        .plugins_dir(folder.path())
        .cache_dir(Some(weir_tests::cache_dir()))
        .build()
        .await
        .unwrap();
    runtime.start();
    let once = move || {
        let runtime = runtime.clone();
        async move {
            let result = runtime.run(target, json!({"count": 1})).await.unwrap();
            assert!(result.ok, "{:?}", result.error);
        }
    };
    measure(url, once, round_trips, jobs).await
}

/// Whether `WEIR_BENCH_WARM=1` asks for warm instances.
fn warm_mode() -> bool {
    std::env::var("WEIR_BENCH_WARM").as_deref() == Ok("1")
}

/// weir's throughput ÷ a baseline's to two places, or `–` when the baseline did not run.
fn ratio(weir: Figures, baseline: Option<Figures>) -> String {
    baseline.map_or_else(
        || "–".to_string(),
        |b| format!("{:.2}", weir.per_second / b.per_second),
    )
}

fn row(name: &str, f: Figures) {
    println!(
        "{name:<34} {:>9.0} {:>9.0} {:>10.0} {:>14.1} {:>14.1}",
        f.p50_us, f.p99_us, f.per_second, f.redis_cpu_us, f.redis_commands
    );
}

fn main() {
    let jobs = size("WEIR_BENCH_JOBS", 20_000);
    let round_trips = size("WEIR_BENCH_ROUND_TRIPS", 300);
    let redis = weir_tests::RedisServer::start();
    let url = redis.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "queue round trip (one at a time) and throughput ({IN_FLIGHT} in flight), {jobs} jobs"
    );
    println!(
        "{:<34} {:>9} {:>9} {:>10} {:>14} {:>14}",
        "", "p50 µs", "p99 µs", "jobs/s", "Redis CPU µs/job", "commands/job"
    );
    let only = std::env::var("WEIR_BENCH_ONLY").ok();
    let systems = ["raw", "node", "weir", "unsigned"];
    if let Some(only) = &only
        && let Some(unknown) = only
            .split(',')
            .map(str::trim)
            .find(|o| !systems.contains(o))
    {
        eprintln!("WEIR_BENCH_ONLY: `{unknown}` is not one of raw, node, weir, unsigned");
    }
    let wanted = |name: &str| match only.as_deref() {
        Some(only) => only.split(',').any(|o| o.trim() == name),
        None => name != "unsigned",
    };
    let shapes: Vec<Shape> = match std::env::var("WEIR_BENCH_SHAPES") {
        Ok(list) => list
            .split(',')
            .filter_map(|name| {
                let shape = Shape::ALL.into_iter().find(|s| s.name() == name.trim());
                if shape.is_none() {
                    eprintln!("WEIR_BENCH_SHAPES: `{name}` is not one of single, chain3, par3");
                }
                shape
            })
            .collect(),
        Err(_) => Shape::ALL.to_vec(),
    };
    let mode = if warm_mode() {
        "warm instances"
    } else {
        "fresh sandbox"
    };
    let mut all = Vec::new();
    for shape in shapes {
        let units = shape.units(jobs);
        if shape != Shape::Single {
            println!("{} ({units} runs; figures per run)", shape.unit());
        }
        for workers in [1, 2] {
            let raw = wanted("raw").then(|| {
                let figures = runtime.block_on(raw(&url, workers, round_trips, units, shape));
                row(&format!("bullmq-official, {workers} worker(s)"), figures);
                figures
            });
            let node = wanted("node").then(|| {
                let figures = node(&url, workers, round_trips, units, shape);
                row(&format!("Node BullMQ 6.5.1, {workers} worker(s)"), figures);
                figures
            });
            let unsigned = wanted("unsigned").then(|| {
                let figures =
                    runtime.block_on(weir(&url, workers, round_trips, units, false, shape));
                row(&format!("weir unsigned, {workers} worker(s)"), figures);
                figures
            });
            let weir = wanted("weir").then(|| {
                let figures =
                    runtime.block_on(weir(&url, workers, round_trips, units, true, shape));
                row(&format!("weir ({mode}), {workers} worker(s)"), figures);
                figures
            });
            all.push((shape, workers, raw, node, weir, unsigned));
        }
    }
    println!();
    for (shape, workers, raw, node, weir, unsigned) in all {
        let Some(weir) = weir else { continue };
        let unit = shape.unit();
        if let Some(unsigned) = unsigned {
            println!(
                "{unit}, {workers} worker(s): signed ÷ unsigned: throughput {:.2}×, round \
                 trip p50 {:.2}×",
                weir.per_second / unsigned.per_second,
                weir.p50_us / unsigned.p50_us,
            );
        }
        if shape == Shape::Single {
            println!(
                "{unit}, {workers} worker(s): weir p50 {:.2} ms (goal ≤ 1 ms); throughput {}× \
                 Node BullMQ (goal ≥ 1.5×), {}× raw bullmq-official (goal ≥ 0.67×)",
                weir.p50_us / 1000.0,
                ratio(weir, node),
                ratio(weir, raw),
            );
        } else {
            println!(
                "{unit}, {workers} worker(s): weir p50 {:.2} ms; throughput {}× Node BullMQ, \
                 {}× raw bullmq-official",
                weir.p50_us / 1000.0,
                ratio(weir, node),
                ratio(weir, raw),
            );
        }
        if let Some(raw) = raw {
            println!(
                "{unit}, {workers} worker(s): Redis CPU per {unit}, weir ÷ raw \
                 bullmq-official: {:.2}× (goal ≤ 1.25×); commands {:.1} against {:.1}; one \
                 Redis's ceiling at this cost: about {:.0} weir runs/s",
                weir.redis_cpu_us / raw.redis_cpu_us,
                weir.redis_commands,
                raw.redis_commands,
                1e6 / weir.redis_cpu_us,
            );
        }
        if let Some(node) = node {
            println!(
                "{unit}, {workers} worker(s): Redis CPU per {unit}, weir ÷ Node BullMQ: {:.2}×",
                weir.redis_cpu_us / node.redis_cpu_us,
            );
        }
    }
}
