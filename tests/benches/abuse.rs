//! The abuse suite's attacks as load, beside a victim: `weir serve` (release) with a tenant
//! `victim` (no quota) running the trivial `hello`, and one attacking tenant per attack (one
//! execution at a time, 1,200 a minute: a fresh account each, so that one attack's spending
//! does not throttle the next) whose clients send one attack of the host's security review
//! as fast as answers come back. Each phase measures the victim's latency and the server's
//! peak resident memory; the first phase has no attack, so every ratio is against the same
//! run.
//!
//! Run with `cargo xtask bench abuse` (or `cargo bench -p weir-tests --bench abuse`);
//! `WEIR_BENCH_REQUESTS` sets the victim's requests per phase (default 1500) and
//! `WEIR_BENCH_CLIENTS` its clients (default 4); `WEIR_BENCH_ATTACKER_BYTES_PER_MINUTE`
//! gives each attacking tenant that `bytes_per_minute` quota (default none). Server and clients share this machine's
//! cores, so an attack that burns CPU shows in the victim's latency even when the host
//! holds nothing for it: that is part of what this measures.

#![allow(clippy::unwrap_used)]

#[path = "support/load.rs"]
mod load;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use weir_tests::PluginFolder;

const VICTIM: &str = "victim-token";
/// Clients the attacker runs at once.
const ATTACKERS: usize = 4;

/// One attack: what the attacker's clients send, over and over.
#[derive(Clone, Copy)]
enum Attack {
    None,
    EventFlood,
    HugeError,
    BigJobs,
    SessionChurn,
    MadeUpCalls,
    BigBatch,
    StalledConnections,
}

impl Attack {
    fn name(self) -> &'static str {
        match self {
            Attack::None => "no attack",
            Attack::EventFlood => "C1: 100 events of 60 KB per execution, a stalled event stream",
            Attack::HugeError => "H1: errors of 16 MiB with 8 MiB of details",
            Attack::BigJobs => "H2: jobs with 3 MB inputs that fail at once",
            Attack::SessionChurn => "H3: a new session id per request",
            Attack::MadeUpCalls => "H4: 300 nested calls to made-up 4 KiB names per execution",
            Attack::BigBatch => "M1: batches of 10,000 items",
            Attack::StalledConnections => "M5: 500 connections sending half a request line",
        }
    }
}

fn main() {
    let requests: usize = env_or("WEIR_BENCH_REQUESTS", 1500);
    let clients: usize = env_or("WEIR_BENCH_CLIENTS", 4);
    let folder = PluginFolder::with(&["hello", "abuse", "increment"]);
    folder.write(
        "workflows.toml",
        b"[workflow.many]\nbatch = \"increment\"\n",
    );
    let mut config = format!(
        "[tenants.victim]\ntoken_sha256 = [\"{}\"]\n",
        hex::encode(Sha256::digest(VICTIM)),
    );
    // The attackers' byte rate: none unless asked for.
    let bytes_per_minute: Option<u64> = std::env::var("WEIR_BENCH_ATTACKER_BYTES_PER_MINUTE")
        .ok()
        .and_then(|v| v.parse().ok());
    for n in 0..ATTACKS.len() {
        config.push_str(&format!(
            "\n[tenants.attacker-{n}]\ntoken_sha256 = [\"{}\"]\nconcurrent = 1\n\
             executions_per_minute = 1200\n",
            hex::encode(Sha256::digest(attacker_token(n))),
        ));
        if let Some(bytes) = bytes_per_minute {
            config.push_str(&format!("bytes_per_minute = {bytes}\n"));
        }
    }
    let (server, url) = load::serve_release(&folder, &config);
    let pid = server.pid();
    let runtime = load::client_runtime();
    // The attacker's clients run on threads of their own: their work shares the machine's
    // cores with the server and the victim, but never holds up the victim's client tasks.
    let attackers = load::client_runtime();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(clients * 4)
            .build()
            .unwrap();
        // Warm up connections, plugins and the attacker's code paths.
        victim_phase(&client, &url, clients, clients * 20, pid).await;
        let mut rows = Vec::new();
        for (n, attack) in ATTACKS.into_iter().enumerate() {
            let running =
                Running::start(attack, &url, attacker_token(n), attackers.handle());
            let phase = victim_phase(&client, &url, clients, requests, pid).await;
            let (ok, refused) = running.stop().await;
            rows.push((attack, phase, ok, refused));
        }
        let alone_p99 = rows[0].1.p99;
        println!(
            "`weir serve` (release) on loopback: the victim's {requests} `hello` requests per \
             phase from {clients} clients, beside {ATTACKERS} attacking clients"
        );
        println!();
        println!(
            "| attack | victim p50 µs | victim p99 µs | p99 ÷ no attack | server peak RSS MiB | server CPU s | clients' CPU s | attacker answered / refused |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for (attack, phase, ok, refused) in rows {
            println!(
                "| {} | {:.0} | {:.0} | {:.2}× | {} | {:.1} | {:.1} | {ok} / {refused} |",
                attack.name(),
                phase.p50,
                phase.p99,
                phase.p99 / alone_p99,
                phase.peak_rss >> 20,
                phase.server_cpu,
                phase.clients_cpu,
            );
        }
    });
}

/// Every phase, in order: the first without an attack.
const ATTACKS: [Attack; 8] = [
    Attack::None,
    Attack::EventFlood,
    Attack::HugeError,
    Attack::BigJobs,
    Attack::SessionChurn,
    Attack::MadeUpCalls,
    Attack::BigBatch,
    Attack::StalledConnections,
];

/// The token of the tenant that runs the `n`th attack.
fn attacker_token(n: usize) -> String {
    format!("attacker-token-{n}")
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of process `pid`, in bytes (0 once it is gone).
fn rss_of(pid: u32) -> u64 {
    weir_tests::rss_of(pid).unwrap_or(0)
}

struct Phase {
    p50: f64,
    p99: f64,
    peak_rss: u64,
    /// CPU seconds the server spent during the phase.
    server_cpu: f64,
    /// CPU seconds this process (the victim's and the attacker's clients) spent.
    clients_cpu: f64,
}

/// CPU seconds (user and system) process `pid` has spent, from `/proc/PID/stat` (in clock
/// ticks of 1/100 s, as Linux reports them there).
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// `total` requests from the victim, `clients` at a time; every one must succeed. The
/// server's memory is sampled every 20 ms meanwhile.
async fn victim_phase(
    client: &reqwest::Client,
    url: &str,
    clients: usize,
    total: usize,
    pid: u32,
) -> Phase {
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut peak = rss_of(pid);
            while !done.load(Ordering::Relaxed) {
                peak = peak.max(rss_of(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak.max(rss_of(pid))
        })
    };
    let url = format!("{url}/v1/run/hello");
    let (server_before, clients_before) = (cpu_seconds(&pid.to_string()), cpu_seconds("self"));
    let micros =
        load::timed_posts(client, &url, VICTIM, r#"{"user":"victim"}"#, clients, total).await;
    done.store(true, Ordering::Relaxed);
    let peak_rss = sampler.await.unwrap();
    Phase {
        p50: load::quantile(&micros, 0.5),
        p99: load::quantile(&micros, 0.99),
        peak_rss,
        server_cpu: cpu_seconds(&pid.to_string()) - server_before,
        clients_cpu: cpu_seconds("self") - clients_before,
    }
}

/// An attack in progress: its clients, and what they hold open.
struct Running {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    tasks: tokio::task::JoinSet<()>,
    _held: Vec<std::net::TcpStream>,
}

impl Running {
    fn start(attack: Attack, url: &str, token: String, on: &tokio::runtime::Handle) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        let address = url.trim_start_matches("http://").to_string();
        let mut held = Vec::new();
        match attack {
            Attack::None => {}
            Attack::StalledConnections => {
                for _ in 0..500 {
                    let mut stream = std::net::TcpStream::connect(&address).unwrap();
                    stream
                        .write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
                        .unwrap();
                    held.push(stream);
                }
            }
            Attack::EventFlood => {
                // A stream the attacker opens and never reads.
                let mut stream = std::net::TcpStream::connect(&address).unwrap();
                write!(
                    stream,
                    "GET /v1/events HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\r\n"
                )
                .unwrap();
                held.push(stream);
            }
            _ => {}
        }
        if !matches!(attack, Attack::None | Attack::StalledConnections) {
            let client = reqwest::Client::new();
            // Each attack's body, built once: sending it costs the attacker only the copy
            // into the socket.
            let body = bytes::Bytes::from(match attack {
                Attack::EventFlood => json!({"emit": {"count": 100, "bytes": 60_000}}).to_string(),
                Attack::HugeError => {
                    json!({"fail": {"messageBytes": 16 << 20, "detailsBytes": 8 << 20}}).to_string()
                }
                Attack::BigJobs => json!({"processor": "abuse",
                    "input": {"fail": {"messageBytes": 10}, "pad": "p".repeat(3_000_000)}})
                .to_string(),
                Attack::MadeUpCalls => {
                    json!({"call": {"count": 300, "nameBytes": 4096}}).to_string()
                }
                Attack::BigBatch => {
                    let batch: Vec<Value> = (0..10_000).map(|_| json!({"count": 1})).collect();
                    json!({ "items": batch }).to_string()
                }
                Attack::SessionChurn | Attack::None | Attack::StalledConnections => {
                    "{}".to_string()
                }
            });
            for worker in 0..ATTACKERS {
                let (client, stop, ok, refused) =
                    (client.clone(), stop.clone(), ok.clone(), refused.clone());
                let url = url.to_string();
                let token = token.clone();
                let body = body.clone();
                tasks.spawn_on(
                    async move {
                        let mut n = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            n += 1;
                            let path = match attack {
                                Attack::EventFlood | Attack::HugeError | Attack::MadeUpCalls => {
                                    "/v1/run/abuse".to_string()
                                }
                                Attack::BigJobs => "/v1/jobs".to_string(),
                                Attack::SessionChurn => {
                                    format!("/v1/run/hello?session=churn-{worker}-{n}")
                                }
                                Attack::BigBatch => "/v1/run/many".to_string(),
                                Attack::None | Attack::StalledConnections => unreachable!(),
                            };
                            let body = body.clone();
                            let response = client
                                .post(format!("{url}{path}"))
                                .bearer_auth(&token)
                                .body(body)
                                .send()
                                .await;
                            let Ok(response) = response else {
                                refused.fetch_add(1, Ordering::Relaxed);
                                continue;
                            };
                            let status = response.status().as_u16();
                            let _ = response.bytes().await;
                            if status == 200 || status == 202 {
                                ok.fetch_add(1, Ordering::Relaxed);
                            } else {
                                refused.fetch_add(1, Ordering::Relaxed);
                                // Over quota: try again shortly, as a real client would.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    },
                    on,
                );
            }
        }
        Running {
            stop,
            ok,
            refused,
            tasks,
            _held: held,
        }
    }

    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(120), self.tasks.join_all())
            .await
            .expect("the attack stopped");
        (
            self.ok.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}
