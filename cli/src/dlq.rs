//! `weir dlq list|retry`: the distributed runtime's dead jobs — steps that failed for good
//! (attempts exhausted, or a failure that is never retried) — and sending them back.

use clap::{Args, Subcommand};

use super::{Failure, Outcome, PluginArgs, RedisArgs, print_json};

#[derive(Subcommand, Debug)]
pub(crate) enum DlqCommand {
    /// The newest dead jobs: queue, job id, run, when, why.
    List(ListArgs),
    /// Send dead jobs back to their queues with fresh attempts (`QUEUE/JOB` each, as
    /// `list` shows them); a job's run carries on from it to a new outcome.
    Retry(RetryArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    plugins: PluginArgs,
    /// Only this processor's queue.
    #[arg(long, value_name = "NAME")]
    queue: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 50, value_name = "N")]
    limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct RetryArgs {
    /// The jobs, as `QUEUE/JOB`.
    #[arg(required = true, value_name = "QUEUE/JOB")]
    jobs: Vec<String>,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    plugins: PluginArgs,
}

pub(crate) async fn run(command: DlqCommand) -> Result<Outcome, Failure> {
    match command {
        DlqCommand::List(args) => list(args).await,
        DlqCommand::Retry(args) => retry(args).await,
    }
}

async fn list(args: ListArgs) -> Result<Outcome, Failure> {
    let redis = args.redis.required("dlq list")?;
    let runtime = args.plugins.bare_runtime(redis).await?;
    let dead = super::fleet(&runtime)?
        .dead_jobs(args.queue.as_deref(), args.limit)
        .await?;
    if args.json {
        print_json(&dead)?;
        return Ok(Outcome::Ok);
    }
    println!("{:<40} {:<10} REASON", "QUEUE/JOB", "ATTEMPTS");
    for job in &dead {
        println!(
            "{:<40} {:<10} {}",
            format!("{}/{}", job.queue, job.id),
            job.attempts,
            job.reason
        );
    }
    Ok(Outcome::Ok)
}

async fn retry(args: RetryArgs) -> Result<Outcome, Failure> {
    let redis = args.redis.required("dlq retry")?;
    let runtime = args.plugins.bare_runtime(redis).await?;
    let fleet = super::fleet(&runtime)?;
    for entry in &args.jobs {
        let Some((queue, id)) = entry.split_once('/') else {
            return Err(Failure::Usage(format!(
                "`{entry}` is not QUEUE/JOB (copy it from `weir dlq list`)"
            )));
        };
        fleet.redrive(queue, id).await?;
        eprintln!("weir: {entry} is back in its queue");
    }
    Ok(Outcome::Ok)
}
