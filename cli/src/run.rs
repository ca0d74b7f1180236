//! `weir run NAME`: one execution of one processor, its result document on stdout.

use std::io::Read;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::{Failure, Outcome, PluginArgs, RedisArgs, print_json};

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// The processor to run (its plugin file is `NAME.wasm`).
    name: String,
    #[command(flatten)]
    plugins: PluginArgs,
    #[command(flatten)]
    redis: RedisArgs,
    /// With --redis: submit the run, print `{"run": ID}` and exit without waiting (read it
    /// later with `weir runs get ID`).
    #[arg(long, requires = "redis")]
    detach: bool,
    /// The input state: JSON text, `@FILE` to read a file, or `-` for stdin [default: {}].
    /// A batch workflow also takes a bare array of states.
    #[arg(long, short, value_name = "JSON|@FILE|-")]
    input: Option<String>,
    /// Run in this session.
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// Lower the processor's timeout to this many milliseconds.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    /// End the whole run (every step, wait and retry) within this many milliseconds, or
    /// fail it with `timeout`; with --redis it replaces the run deadline (an hour), by
    /// which a run whose outcome was lost ends as `run-lost`.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    deadline_ms: Option<u64>,
    /// Run ahead of queued work with a larger number (lower runs first; default: the
    /// processor's own).
    #[arg(long, value_name = "N")]
    priority: Option<u32>,
    /// With --redis: run at most once for this key (of the tenant) within its window (24
    /// hours): sent again, from here or any process of the fleet, it prints the same run's
    /// id and outcome instead of running again.
    #[arg(long, value_name = "KEY", requires = "redis")]
    idempotency_key: Option<String>,
}

pub(crate) async fn run(args: RunArgs) -> Result<Outcome, Failure> {
    let input = read_input(args.input.as_deref())?;
    let runtime = args.plugins.runtime_on(args.redis.config()?).await?;
    let catalog = runtime.catalog();
    let known =
        catalog.plugins.contains_key(&args.name) || catalog.workflows.contains_key(&args.name);
    // The distributed runtime knows what is published in Redis; it says if the name is not.
    if !known && !runtime.is_distributed() {
        return Err(Failure::Usage(format!(
            "{} in {}",
            catalog.why_unavailable(&args.name),
            args.plugins.plugins.display()
        )));
    }
    // A batch also takes a bare array of states.
    let is_batch = catalog
        .workflows
        .get(&args.name)
        .is_some_and(|w| matches!(w.composition(), weir::Composition::Batch { .. }));
    let input = match input {
        Value::Array(items) if is_batch => serde_json::json!({ "items": items }),
        other => other,
    };
    weir::validate_input(&input)
        .map_err(|e| Failure::Usage(format!("the input is not a valid state: {}", e.message)))?;
    let mut request = weir::ExecutionRequest::new(&args.name, input);
    if let Some(session) = args.session {
        request = request.session(session);
    }
    if let Some(ms) = args.timeout_ms {
        request = request.timeout(Duration::from_millis(ms));
    }
    if let Some(ms) = args.deadline_ms {
        request = request.deadline(Duration::from_millis(ms));
    }
    if let Some(priority) = args.priority {
        request = request.priority(priority);
    }
    if let Some(key) = args.idempotency_key {
        request = request.idempotency_key(key);
    }
    if args.detach {
        let run = super::fleet(&runtime)?.submit(request).await?;
        print_json(&serde_json::json!({ "run": run }))?;
        return Ok(Outcome::Ok);
    }
    // Ctrl-C cancels the execution: the guest is asked to stop, then stopped.
    let cancel = request.cancel.clone();
    let interrupt = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("interrupted: cancelling the execution");
            cancel.cancel();
        }
    });
    // Through Redis: say so when nothing will ever run it.
    let hint = runtime.fleet().map(|fleet| {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            if let Ok(false) = fleet.workers_alive().await {
                tracing::warn!(
                    "no weir worker is connected to this Redis: the run waits until one is \
                     (start one with `weir worker --redis URL --plugins DIR`)"
                );
            }
        })
    });
    let result = runtime.execute(request).await;
    interrupt.abort();
    if let Some(hint) = hint {
        hint.abort();
    }
    let result = result?;
    print_json(&result.document())?;
    Ok(if result.ok {
        Outcome::Ok
    } else {
        Outcome::Failed
    })
}

/// Reads `--input`: inline JSON, `@file`, or `-` for stdin.
fn read_input(arg: Option<&str>) -> Result<Value, Failure> {
    let (text, source) = match arg {
        None => return Ok(Value::Object(Default::default())),
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Failure::Usage(format!("cannot read the input from stdin: {e}")))?;
            (text, "stdin".to_string())
        }
        Some(arg) if arg.starts_with('@') => {
            let path = &arg[1..];
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("cannot read the input file {path}: {e}")))?;
            (text, path.to_string())
        }
        Some(arg) => (arg.to_string(), "--input".to_string()),
    };
    serde_json::from_str(&text)
        .map_err(|e| Failure::Usage(format!("the input from {source} is not valid JSON: {e}")))
}
