//! `weir runs get ID`: a run of the distributed runtime as Redis knows it — submitted,
//! running, or finished with its result document — readable from any process.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Failure, Outcome, PluginArgs, RedisArgs, print_json};

#[derive(Subcommand, Debug)]
pub(crate) enum RunsCommand {
    /// Print a run: `{id, target, tenant, session, submittedMs, deadlineMs, status, result}`
    /// (a run past its deadline without an outcome reads as failed, `run-lost`). Exit 0
    /// while it runs or when it succeeded, 1 when it failed, 2 when there is no such run.
    Get(GetArgs),
}

#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// The run's id (what `weir run --detach` printed).
    id: String,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    plugins: PluginArgs,
    /// Wait for the run to finish.
    #[arg(long)]
    wait: bool,
}

pub(crate) async fn run(command: RunsCommand) -> Result<Outcome, Failure> {
    match command {
        RunsCommand::Get(args) => get(args).await,
    }
}

async fn get(args: GetArgs) -> Result<Outcome, Failure> {
    let redis = args.redis.required("runs get")?;
    let runtime = args.plugins.bare_runtime(redis).await?;
    let fleet = super::fleet(&runtime)?;
    let Some(mut status) = fleet.run_status(&args.id).await? else {
        return Err(Failure::Usage(format!(
            "there is no run `{}` in Redis (never submitted, or its record expired)",
            args.id
        )));
    };
    if args.wait && status.result.is_none() {
        status.result = Some(fleet.wait_run(&args.id).await?);
    }
    let state = match &status.result {
        None => "running",
        Some(result) if result.ok => "ok",
        Some(_) => "failed",
    };
    print_json(&json!({
        "id": status.id,
        "target": status.target,
        "tenant": status.tenant,
        "session": status.session,
        "submittedMs": status.submitted_ms,
        "deadlineMs": status.deadline_ms,
        "status": state,
        "result": status.result.as_ref().map(|r| r.document()),
    }))?;
    Ok(if state == "failed" {
        Outcome::Failed
    } else {
        Outcome::Ok
    })
}
