//! `weir worker --redis URL`: serves the distributed runtime's queues — the jobs of every
//! processor published to Redis (this folder's plugins are published at start, and again
//! whenever a file in it changes) — until Ctrl-C or SIGTERM, then stops taking jobs and lets
//! the ones in flight finish.

use std::time::Duration;

use clap::Args;

use super::{Failure, Outcome, PluginArgs, RedisArgs};

#[derive(Args, Debug)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    plugins: PluginArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// Jobs of one queue this process runs at once (enough that jobs waiting on Redis
    /// leave the CPU busy; sandboxes are bounded separately by the instance pool).
    #[arg(long, default_value_t = 16, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    concurrency: u64,
    /// How long a job's lock lasts: a worker that dies holding a job loses it after this
    /// long, and another worker runs it.
    #[arg(long, default_value_t = 30_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(100..))]
    lock_ms: u64,
    /// How often to look for jobs whose worker died.
    #[arg(long, default_value_t = 30_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(100..))]
    stalled_interval_ms: u64,
    /// How long a change to the plugins folder must settle before it is applied.
    #[arg(long, default_value_t = 50, value_name = "MS")]
    debounce_ms: u64,
    /// On shutdown, how long jobs in flight may finish before they are cancelled.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    grace_ms: u64,
    /// Run the foreign jobs of QUEUE (jobs without weir's format, e.g. from a Node BullMQ
    /// producer) as TENANT, configured in --config: what it may run, its ceilings and its
    /// quotas apply, as to its HTTP requests. Repeat for each queue; a foreign job on any
    /// other queue fails without running.
    #[arg(long, value_name = "QUEUE=TENANT")]
    foreign: Vec<String>,
    /// The configuration (weir.toml) whose tenants run foreign jobs, and whose quotas the
    /// items of the batches this worker opens are charged to (give every worker and
    /// server of a fleet the same one).
    #[arg(long, env = "WEIR_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

pub(crate) async fn run(args: WorkerArgs) -> Result<Outcome, Failure> {
    let mut redis = args.redis.required("worker")?;
    let file = match &args.config {
        Some(path) => Some(weir_server::ServerFile::load(path).map_err(Failure::Usage)?),
        None => None,
    };
    // The file's `[redis]` retention and bounds, as on the servers.
    if let Some(file) = &file {
        file.redis.apply(&mut redis);
    }
    // The file's `[host]` bounds apply here as on the servers (batch sizes, call depth).
    let host = file
        .as_ref()
        .map(weir_server::ServerFile::host_config)
        .unwrap_or_default();
    let runtime = args.plugins.runtime_with(Some(redis), host).await?;
    let mut foreign = std::collections::BTreeMap::new();
    for pair in &args.foreign {
        let Some((queue, tenant)) = pair.split_once('=') else {
            return Err(Failure::Usage(format!(
                "--foreign `{pair}`: write QUEUE=TENANT, e.g. --foreign increment=acme"
            )));
        };
        let Some(file) = &file else {
            return Err(Failure::Usage(format!(
                "--foreign `{pair}` needs --config: foreign jobs run as a tenant configured \
                 there, under its quotas"
            )));
        };
        let admission = weir_server::foreign_admission(&runtime, &file.access, tenant)
            .map_err(Failure::Usage)?;
        foreign.insert(
            queue.to_string(),
            weir::ForeignQueue {
                tenant: tenant.to_string(),
                admission: Some(admission),
            },
        );
    }
    // The items of batches this worker opens are charged to their tenants, as the servers
    // charge theirs.
    if let Some(file) = &file {
        super::fleet(&runtime)?
            .charge_batch_items(weir_server::item_admission(&runtime, &file.access));
        // So are the schedules' ticks this worker fires.
        if file.access.is_configured() {
            runtime.charge_schedules(weir_server::schedule_admission(&runtime, &file.access));
        }
    }
    let config = weir::WorkerConfig {
        concurrency: usize::try_from(args.concurrency).unwrap_or(usize::MAX),
        lock_duration: Duration::from_millis(args.lock_ms),
        stalled_interval: Duration::from_millis(args.stalled_interval_ms),
        foreign,
        ..weir::WorkerConfig::default()
    };
    // The folder stays live: files dropped in, replaced or removed are loaded and published.
    let _watcher = args
        .plugins
        .watch(&runtime, false, Duration::from_millis(args.debounce_ms))?;
    // Before the worker announces itself: a signal that arrives once it serves must stop it
    // gracefully, not kill the process.
    let (mut interrupt, mut terminate) = super::stop_signals()?;
    let worker = super::fleet(&runtime)?.start_worker(config).await?;
    tracing::warn!(
        queues = worker.queues().await.len(),
        concurrency = args.concurrency,
        "worker serving; stop it with SIGTERM"
    );
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    tracing::warn!("stopping: finishing the jobs in flight");
    worker.close(Duration::from_millis(args.grace_ms)).await;
    runtime.stop(Duration::from_millis(args.grace_ms)).await;
    tracing::warn!("worker stopped");
    Ok(Outcome::Ok)
}
