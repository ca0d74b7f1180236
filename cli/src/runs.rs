//! `weir runs get|list`: runs of the distributed runtime as Redis knows them — one run
//! (submitted, running, or finished with its result document), or the fleet's runs a page
//! at a time — readable from any process.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Failure, Outcome, PluginArgs, RedisArgs, print_json};

#[derive(Subcommand, Debug)]
pub(crate) enum RunsCommand {
    /// Print a run: `{id, target, tenant, session, priority, submittedMs, deadlineMs, status, result}`
    /// (a run past its deadline without an outcome reads as failed, `run-lost`). Exit 0
    /// while it runs or when it succeeded, 1 when it failed, 2 when there is no such run.
    Get(GetArgs),
    /// The fleet's runs, newest first (every server's, the CLI's and the library's), from
    /// its run index in Redis: id, target, tenant, session, status, when. With more than
    /// a page, the last line says how to ask for the next (`--before`).
    List(ListArgs),
}

/// Where a run is, as `weir runs list --status` names it.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum State {
    Running,
    Completed,
    Failed,
    Cancelled,
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    plugins: PluginArgs,
    /// Only this tenant's runs.
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// Only runs of this processor or workflow.
    #[arg(long, value_name = "NAME")]
    target: Option<String>,
    /// Only runs in this session.
    #[arg(long, value_name = "SESSION")]
    session: Option<String>,
    /// Only runs in this state.
    #[arg(long, value_enum)]
    status: Option<State>,
    /// Only runs that asked for this priority or a larger number.
    #[arg(long, value_name = "N")]
    min_priority: Option<u32>,
    /// Only runs that asked for this priority or a smaller number.
    #[arg(long, value_name = "N")]
    max_priority: Option<u32>,
    /// Runs listed after this cursor (what the previous page's last line said).
    #[arg(long, value_name = "CURSOR")]
    before: Option<String>,
    /// At most this many (1 to 500).
    #[arg(long, default_value_t = 20, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=500))]
    limit: u64,
    /// Print JSON (`{"runs": [...], "next": CURSOR}`) instead of a table.
    #[arg(long)]
    json: bool,
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
        RunsCommand::List(args) => list(args).await,
    }
}

async fn list(args: ListArgs) -> Result<Outcome, Failure> {
    let redis = args.redis.required("runs list")?;
    let runtime = args.plugins.bare_runtime(redis).await?;
    let query = weir::RunQuery {
        tenant: args.tenant,
        target: args.target,
        session: args.session,
        state: args.status.map(|s| match s {
            State::Running => weir::RunState::Running,
            State::Completed => weir::RunState::Completed,
            State::Failed => weir::RunState::Failed,
            State::Cancelled => weir::RunState::Cancelled,
        }),
        before: args.before,
        limit: usize::try_from(args.limit).unwrap_or(500),
        min_priority: args.min_priority,
        max_priority: args.max_priority,
        ..weir::RunQuery::default()
    };
    let page = super::fleet(&runtime)?.runs(&query).await?;
    if args.json {
        let runs: Vec<serde_json::Value> = page
            .runs
            .iter()
            .map(|run| {
                json!({
                    "id": run.id,
                    "target": run.target,
                    "tenant": run.tenant,
                    "session": run.session,
                    "priority": run.priority,
                    "status": run.state.as_str(),
                    "submittedMs": run.submitted_ms,
                    "finishedMs": run.finished_ms,
                    "resultBytes": run.result_bytes,
                })
            })
            .collect();
        print_json(&json!({ "runs": runs, "next": page.next }))?;
        return Ok(Outcome::Ok);
    }
    println!(
        "{:<36} {:<24} {:<16} {:<16} {:<10} TOOK",
        "RUN", "TARGET", "TENANT", "SESSION", "STATUS"
    );
    for run in &page.runs {
        let took = run.finished_ms.map_or_else(
            || "-".to_string(),
            |end| format!("{} ms", end.saturating_sub(run.submitted_ms)),
        );
        println!(
            "{:<36} {:<24} {:<16} {:<16} {:<10} {took}",
            run.id,
            run.target,
            run.tenant,
            run.session.as_deref().unwrap_or("-"),
            run.state.as_str(),
        );
    }
    if let Some(next) = &page.next {
        println!("more: --before {next}");
    }
    Ok(Outcome::Ok)
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
        "priority": status.priority,
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
