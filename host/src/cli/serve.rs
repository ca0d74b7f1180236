//! `weir serve`: a long-running host that keeps the plugins folder live — files dropped in,
//! replaced or removed take effect without a restart — and, with `--events json`, writes
//! every event as one JSON line on stdout for operators to pipe. Stops gracefully on Ctrl-C
//! or SIGTERM. (The HTTP API arrives in a later version.)

use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio::signal::unix::{SignalKind, signal};

use super::{Failure, Outcome, PluginArgs};

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    plugins: PluginArgs,
    /// Write every event to stdout in this format (one per line).
    #[arg(long, value_enum, value_name = "FORMAT")]
    events: Option<EventFormat>,
    /// How long a change to the folder must settle before it is applied.
    #[arg(long, default_value_t = 50, value_name = "MS")]
    debounce_ms: u64,
    /// On shutdown, how long running work may finish before it is cancelled.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    grace_ms: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EventFormat {
    /// One JSON object per line: `{"event":"plugin:loaded","processor":...}`.
    Json,
}

pub(crate) async fn run(args: ServeArgs) -> Result<Outcome, Failure> {
    let runtime = args.plugins.runtime().await?;
    let mut events = runtime.subscribe();
    let _watcher = runtime
        .watch(
            &args.plugins.plugins,
            Duration::from_millis(args.debounce_ms),
        )
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let catalog = runtime.catalog();
    tracing::warn!(
        plugins = catalog.plugins.len(),
        rejected = catalog.rejected.len(),
        workflows = catalog.workflows.len(),
        folder = %args.plugins.plugins.display(),
        "serving; changes to the folder apply without a restart"
    );
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|e| Failure::Infrastructure(format!("cannot listen for SIGTERM: {e}")))?;
    loop {
        tokio::select! {
            notice = events.recv() => {
                let Some(notice) = notice else { break };
                if let Some(EventFormat::Json) = args.events {
                    print_notice(&notice)?;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    let report = runtime.stop(Duration::from_millis(args.grace_ms)).await;
    tracing::warn!(cancelled = report.cancelled, "stopped");
    Ok(Outcome::Ok)
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
