//! Timed HTTP load for the benches that drive `weir serve`: a tenant's clients sending one
//! request after another, every answer `200`, and the latencies they saw. Shared by the
//! `serve` and `abuse` benchmarks.

use std::time::Instant;

use weir_tests::{PluginFolder, WeirProcess};

/// Starts the release `weir serve` on `folder` with `config` as its `weir.toml`; returns
/// the process and its URL.
pub fn serve_release(folder: &PluginFolder, config: &str) -> (WeirProcess, String) {
    let config_file = folder.path().join("weir.toml");
    std::fs::write(&config_file, config).unwrap();
    let config_arg = config_file.to_string_lossy().into_owned();
    WeirProcess::serve_binary(
        weir_tests::weir_release_bin(),
        folder.path(),
        &["--config", &config_arg],
    )
}

/// The Tokio runtime the load's clients run on: two threads, as the machine has cores.
pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `total` POSTs of `body` to `url` with `token`, from `clients` clients at once; each must
/// be answered `200`. Returns every request's latency in µs, sorted.
pub async fn timed_posts(
    client: &reqwest::Client,
    url: &str,
    token: &'static str,
    body: &'static str,
    clients: usize,
    total: usize,
) -> Vec<f64> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let client = client.clone();
        let url = url.to_string();
        let n = total / clients + usize::from(c < total % clients);
        tasks.spawn(async move {
            let mut micros = Vec::with_capacity(n);
            for _ in 0..n {
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .bearer_auth(token)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status().as_u16(), 200, "`{token}` was refused");
                response.bytes().await.unwrap();
                micros.push(sent.elapsed().as_secs_f64() * 1e6);
            }
            micros
        });
    }
    let mut micros: Vec<f64> = tasks.join_all().await.into_iter().flatten().collect();
    micros.sort_by(f64::total_cmp);
    micros
}

/// The `q` quantile of sorted `values`.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    values[((values.len() - 1) as f64 * q).round() as usize]
}
