//! `weir serve`: a long-running host that keeps the plugins folder live — files dropped in,
//! replaced or removed take effect without a restart — with `--listen ADDR`, serves the HTTP
//! API there (see [`weir::server`]), and with `--events json`, writes every event as one
//! JSON line on stdout for operators to pipe. Stops gracefully on Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use clap::{Args, ValueEnum};

use super::{Failure, Outcome, PluginArgs, RedisArgs};

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    plugins: PluginArgs,
    /// Run executions through Redis (the distributed runtime, served by `weir worker`s)
    /// instead of in this process.
    #[command(flatten)]
    redis: RedisArgs,
    /// Write every event to stdout in this format (one per line).
    #[arg(long, value_enum, value_name = "FORMAT")]
    events: Option<EventFormat>,
    /// How long a change to the folder must settle before it is applied.
    #[arg(long, default_value_t = 50, value_name = "MS")]
    debounce_ms: u64,
    /// On shutdown, how long running work may finish before it is cancelled.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    grace_ms: u64,
    /// Serve the HTTP API on this address, e.g. 127.0.0.1:8080 (port 0 picks a free port;
    /// the address is logged).
    #[arg(long, env = "WEIR_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Largest HTTP request body accepted, in bytes; larger ones get 413 [default: the
    /// config file's `[server] max_body_bytes`, else 4 MiB].
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<usize>,
    /// The server's configuration: tenants, their tokens and quotas, the operator's token
    /// (see `weir_server::ServerFile`). Without it the HTTP API is open to anyone who can
    /// reach it, and everything runs as the tenant `default`.
    #[arg(long, env = "WEIR_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Without tenants, the API answers requests addressed to IP addresses and `localhost`
    /// only (against DNS rebinding); also answer those addressed to NAME. Repeatable.
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_host: Vec<String>,
    /// Without an operator token, let `PUT /v1/plugins/NAME` install plugins (refused by
    /// default: anyone who reaches an open API could install code).
    #[arg(long)]
    allow_plugin_install: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EventFormat {
    /// One JSON object per line: `{"event":"plugin:loaded","processor":...}`.
    Json,
}

pub(crate) async fn run(args: ServeArgs) -> Result<Outcome, Failure> {
    // Before anything is announced: a signal that arrives once the API is up must stop it
    // gracefully, not kill the process.
    let (mut interrupt, mut terminate) = super::stop_signals()?;
    // The file first: some of its settings bound the runtime itself (sessions).
    let file = match &args.config {
        Some(path) => weir_server::ServerFile::load(path).map_err(Failure::Usage)?,
        None => weir_server::ServerFile::default(),
    };
    let host = file.host_config();
    let mut redis = args.redis.config()?;
    if let Some(redis) = &mut redis {
        file.redis.apply(redis);
    }
    let runtime = args.plugins.runtime_with(redis, host).await?;
    let mut events = runtime.subscribe();
    // On Redis the folder is optional (workers may hold the plugins); watch it if it is there.
    let required = args.redis.redis.is_none();
    let _watcher =
        args.plugins
            .watch(&runtime, required, Duration::from_millis(args.debounce_ms))?;
    let shutdown = CancellationToken::new();
    let server = match args.listen {
        Some(address) => Some(listen(&runtime, address, &args, file, &shutdown).await?),
        None => None,
    };
    let catalog = runtime.catalog();
    tracing::warn!(
        plugins = catalog.plugins.len(),
        rejected = catalog.rejected.len(),
        workflows = catalog.workflows.len(),
        folder = %args.plugins.plugins.display(),
        "serving; changes to the folder apply without a restart"
    );
    loop {
        tokio::select! {
            notice = events.recv() => {
                let Some(notice) = notice else { break };
                if let Some(EventFormat::Json) = args.events {
                    print_notice(&notice)?;
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    // Stop taking requests and end event streams; requests in progress finish, or are
    // cancelled with the rest of the running work after the grace period.
    shutdown.cancel();
    let report = runtime.stop(Duration::from_millis(args.grace_ms)).await;
    if let Some(server) = server {
        match tokio::time::timeout(Duration::from_secs(5), server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "the HTTP API stopped with an error"),
            Ok(Err(error)) => tracing::warn!(%error, "the HTTP API task failed"),
            Err(_) => tracing::warn!("the HTTP API did not finish its requests within 5 s"),
        }
    }
    tracing::warn!(cancelled = report.cancelled, "stopped");
    Ok(Outcome::Ok)
}

/// Binds `address` and serves the HTTP API there until `shutdown`.
async fn listen(
    runtime: &weir::Runtime,
    address: SocketAddr,
    args: &ServeArgs,
    file: weir_server::ServerFile,
    shutdown: &CancellationToken,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, Failure> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
        Failure::Usage(format!(
            "cannot listen on {address}: {e} (pick another address with --listen)"
        ))
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| Failure::Infrastructure(format!("cannot read the bound address: {e}")))?;
    if !file.access.is_configured() {
        tracing::warn!(
            "no tenants or operator token configured (--config): the HTTP API is open to \
             anyone who can reach it, and everything runs as the tenant `default`"
        );
    }
    let mut config = weir_server::ServerConfig {
        max_body_bytes: args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(weir_server::ServerConfig::default().max_body_bytes),
        access: file.access,
        allowed_hosts: args.allow_host.clone(),
        open_plugin_install: args.allow_plugin_install,
        ..weir_server::ServerConfig::default()
    };
    file.settings.apply(&mut config);
    tracing::warn!(url = %format!("http://{bound}"), "HTTP API listening");
    Ok(tokio::spawn(weir_server::serve(
        listener,
        runtime.clone(),
        config,
        shutdown.clone(),
    )))
}

fn print_notice(notice: &weir::Notice) -> Result<(), Failure> {
    let line = match notice {
        weir::Notice::Event(event) => serde_json::to_string(event.as_ref()),
        weir::Notice::Lagged { missed } => {
            serde_json::to_string(&serde_json::json!({ "event": "lagged", "missed": missed }))
        }
    }
    .map_err(|e| Failure::Infrastructure(format!("cannot encode an event: {e}")))?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::Infrastructure(format!("cannot write to stdout: {e}")))
}
