//! `weir serve` under load: many HTTP clients running the trivial `hello` processor through
//! `POST /v1/run/hello`, with two tenants. `steady` has no quota; `flood` may start 600
//! executions a minute and sends as fast as it can, so most of its requests are refused
//! with `429`. Measured in one run: `steady` alone, then `steady` beside `flood`, so the
//! ratio says what a flooding tenant costs the other.
//!
//! Run with `cargo xtask bench serve` (or `cargo bench -p weir-tests --bench serve`);
//! `WEIR_BENCH_REQUESTS` sets the `steady` requests per phase (default 4000) and
//! `WEIR_BENCH_CLIENTS` the clients per tenant (default 16). The server is the release
//! binary, on loopback, on the same two cores as the clients.

#![allow(clippy::unwrap_used)]

#[path = "support/load.rs"]
mod load;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use weir_tests::PluginFolder;

const STEADY: &str = "steady-token";
const FLOOD: &str = "flood-token";

fn main() {
    let requests: usize = env_or("WEIR_BENCH_REQUESTS", 4000);
    let clients: usize = env_or("WEIR_BENCH_CLIENTS", 16);
    let folder = PluginFolder::with(&["hello"]);
    let config = format!(
        "[tenants.steady]\ntoken_sha256 = [\"{}\"]\n\n[tenants.flood]\ntoken_sha256 = [\"{}\"]\nexecutions_per_minute = 600\n",
        hex::encode(Sha256::digest(STEADY)),
        hex::encode(Sha256::digest(FLOOD)),
    );
    let (_server, url) = load::serve_release(&folder, &config);
    let runtime = load::client_runtime();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(clients * 2)
            .build()
            .unwrap();
        // Warm up connections and the plugin.
        steady_phase(&client, &url, clients, clients * 20).await;
        let alone = steady_phase(&client, &url, clients, requests).await;
        let flood = Flood::start(&client, &url, clients);
        let beside = steady_phase(&client, &url, clients, requests).await;
        let (flood_ok, flood_refused, flood_seconds) = flood.stop().await;

        println!(
            "`weir serve` (release) on loopback, {clients} clients per tenant, `hello`, {requests} steady requests per phase"
        );
        println!();
        println!("| phase | steady p50 µs | steady p99 µs | steady req/s | flood ok | flood 429 | flood req/s |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        println!(
            "| steady alone | {:.0} | {:.0} | {:.0} | – | – | – |",
            alone.p50, alone.p99, alone.rate
        );
        println!(
            "| steady beside flood | {:.0} | {:.0} | {:.0} | {flood_ok} | {flood_refused} | {:.0} |",
            beside.p50,
            beside.p99,
            beside.rate,
            (flood_ok + flood_refused) as f64 / flood_seconds
        );
        println!();
        println!(
            "beside the flood, steady's p50 is {:.2}× and its throughput {:.2}× what it was alone",
            beside.p50 / alone.p50,
            beside.rate / alone.rate
        );
    });
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Phase {
    p50: f64,
    p99: f64,
    rate: f64,
}

/// `total` requests from `steady`, `clients` at a time; every one must succeed.
async fn steady_phase(client: &reqwest::Client, url: &str, clients: usize, total: usize) -> Phase {
    let started = Instant::now();
    let url = format!("{url}/v1/run/hello");
    let micros =
        load::timed_posts(client, &url, STEADY, r#"{"user":"load"}"#, clients, total).await;
    let seconds = started.elapsed().as_secs_f64();
    Phase {
        p50: load::quantile(&micros, 0.5),
        p99: load::quantile(&micros, 0.99),
        rate: micros.len() as f64 / seconds,
    }
}

/// `flood`'s clients, sending as fast as answers come back until stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    started: Instant,
    tasks: tokio::task::JoinSet<()>,
}

impl Flood {
    fn start(client: &reqwest::Client, url: &str, clients: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (client, stop, ok, refused) =
                (client.clone(), stop.clone(), ok.clone(), refused.clone());
            let url = format!("{url}/v1/run/hello");
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let response = client
                        .post(&url)
                        .bearer_auth(FLOOD)
                        .body("{}")
                        .send()
                        .await
                        .unwrap();
                    match response.status().as_u16() {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => refused.fetch_add(1, Ordering::Relaxed),
                        other => panic!("flood got {other}"),
                    };
                    response.bytes().await.unwrap();
                }
            });
        }
        Flood {
            stop,
            ok,
            refused,
            started: Instant::now(),
            tasks,
        }
    }

    async fn stop(self) -> (u64, u64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let seconds = self.started.elapsed().as_secs_f64();
        tokio::time::timeout(Duration::from_secs(60), self.tasks.join_all())
            .await
            .expect("the flood stopped");
        (
            self.ok.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            seconds,
        )
    }
}
