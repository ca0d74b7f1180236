//! `weir schedules list|add|remove`: the distributed runtime's schedules as Redis keeps them
//! (BullMQ job schedulers on the `_schedule` queue): listed with their next and latest
//! ticks, added or replaced, and removed, from any process of the fleet.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Failure, Outcome, PluginArgs, RedisArgs, print_json};

#[derive(Subcommand, Debug)]
pub(crate) enum SchedulesCommand {
    /// The fleet's schedules: name, tenant, target, when, next tick, latest tick.
    List(ListArgs),
    /// Add a schedule, or replace the one of that name (its tick count is kept).
    Add(Box<AddArgs>),
    /// Remove a schedule added with `add` (or through the API); a schedule of a folder's
    /// workflows.toml goes when its table does.
    Remove(RemoveArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    plugins: PluginArgs,
    /// Only this tenant's schedules.
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// Print JSON (`{"schedules": [...]}`) instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub(crate) struct AddArgs {
    /// The schedule's name (lowercase letters, digits and `-`; unique per tenant).
    name: String,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    plugins: PluginArgs,
    /// The processor or workflow each tick runs.
    #[arg(long, value_name = "NAME")]
    run: String,
    /// The input of each run, as JSON [default: {}].
    #[arg(long, value_name = "JSON")]
    input: Option<String>,
    /// A cron expression: five fields, or six with seconds first (`*/10 * * * * *`).
    #[arg(long, value_name = "EXPR", conflicts_with = "every_ms")]
    cron: Option<String>,
    /// The IANA time zone of --cron [default: UTC].
    #[arg(long, value_name = "TZ", requires = "cron")]
    tz: Option<String>,
    /// A fixed interval in milliseconds instead of --cron (the first tick is at once).
    #[arg(long, value_name = "MS")]
    every_ms: Option<u64>,
    /// No tick before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    start: Option<String>,
    /// No tick after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    end: Option<String>,
    /// At most this many ticks.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// The tenant the runs are for [default: default].
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    /// The session the runs execute in.
    #[arg(long, value_name = "SESSION")]
    session: Option<String>,
    /// A tick while the previous tick's run goes: skip it, or start another run.
    #[arg(long, value_enum, default_value_t = Overlap::Skip)]
    overlap: Overlap,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Overlap {
    Skip,
    Allow,
}

#[derive(Args, Debug)]
pub(crate) struct RemoveArgs {
    /// The schedule's name.
    name: String,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    plugins: PluginArgs,
    /// The schedule's tenant [default: default].
    #[arg(long, value_name = "TENANT", default_value = "default")]
    tenant: String,
}

pub(crate) async fn run(command: SchedulesCommand) -> Result<Outcome, Failure> {
    match command {
        SchedulesCommand::List(args) => list(args).await,
        SchedulesCommand::Add(args) => add(*args).await,
        SchedulesCommand::Remove(args) => remove(args).await,
    }
}

async fn list(args: ListArgs) -> Result<Outcome, Failure> {
    let redis = args.redis.required("schedules list")?;
    let runtime = args.plugins.bare_runtime(redis).await?;
    super::fleet(&runtime)?;
    let schedules = runtime.schedules(args.tenant.as_deref()).await?;
    if args.json {
        print_json(&json!({ "schedules": schedules }))?;
        return Ok(Outcome::Ok);
    }
    println!(
        "{:<24} {:<16} {:<24} {:<20} {:<24} {:>6} LAST",
        "SCHEDULE", "TENANT", "RUNS", "WHEN", "NEXT", "TICKS"
    );
    for s in &schedules {
        let when = match (&s.spec.cron, s.spec.every_ms) {
            (Some(cron), _) => match &s.spec.tz {
                Some(tz) => format!("{cron} ({tz})"),
                None => cron.clone(),
            },
            (None, Some(ms)) => format!("every {ms} ms"),
            (None, None) => "-".into(),
        };
        let last = match &s.last {
            Some(last) => match (&last.run, &last.skipped) {
                (Some(run), _) => format!("{} run {run}", time_of(last.tick_ms)),
                (None, Some(why)) => format!("{} skipped: {why}", time_of(last.tick_ms)),
                (None, None) => time_of(last.tick_ms),
            },
            None => "-".into(),
        };
        println!(
            "{:<24} {:<16} {:<24} {:<20} {:<24} {:>6} {last}",
            s.name,
            s.tenant,
            s.spec.run,
            when,
            s.next_ms.map_or_else(|| "-".into(), time_of),
            s.ticks,
        );
    }
    Ok(Outcome::Ok)
}

/// `ms` since the Unix epoch as an RFC 3339 time (UTC).
fn time_of(ms: u64) -> String {
    let Ok(ms) = i64::try_from(ms) else {
        return ms.to_string();
    };
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

async fn add(args: AddArgs) -> Result<Outcome, Failure> {
    let input = match &args.input {
        Some(text) => Some(
            serde_json::from_str(text)
                .map_err(|e| Failure::Usage(format!("--input is not JSON: {e}")))?,
        ),
        None => None,
    };
    let spec = weir::ScheduleSpec {
        run: args.run,
        input,
        cron: args.cron,
        tz: args.tz,
        every_ms: args.every_ms,
        start: args.start,
        end: args.end,
        limit: args.limit,
        tenant: args.tenant,
        session: args.session,
        overlap: Some(match args.overlap {
            Overlap::Skip => weir::Overlap::Skip,
            Overlap::Allow => weir::Overlap::Allow,
        }),
        description: None,
    };
    let redis = args.redis.required("schedules add")?;
    let runtime = args.plugins.bare_runtime(redis).await?;
    super::fleet(&runtime)?;
    let schedule = weir::Schedule::new(&args.name, spec, &runtime.config().schedules)
        .map_err(|why| Failure::Usage(format!("schedule `{}`: {why}", args.name)))?;
    let status = runtime.add_schedule(schedule).await.map_err(refused)?;
    print_json(&json!(status))?;
    Ok(Outcome::Ok)
}

async fn remove(args: RemoveArgs) -> Result<Outcome, Failure> {
    let redis = args.redis.required("schedules remove")?;
    let runtime = args.plugins.bare_runtime(redis).await?;
    super::fleet(&runtime)?;
    if runtime
        .remove_schedule(&args.tenant, &args.name)
        .await
        .map_err(refused)?
    {
        println!(
            "removed schedule `{}` of tenant `{}`",
            args.name, args.tenant
        );
        Ok(Outcome::Ok)
    } else {
        Err(Failure::Usage(format!(
            "tenant `{}` has no schedule `{}` (list them with `weir schedules list`)",
            args.tenant, args.name
        )))
    }
}

fn refused(refused: weir::ScheduleRefused) -> Failure {
    match refused {
        weir::ScheduleRefused::Runtime(error) => error.into(),
        other => Failure::Usage(other.to_string()),
    }
}
