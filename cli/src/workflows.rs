//! `weir workflows list|check`: the workflows of a plugins folder (its `workflows.toml`),
//! what each composes, and why any of them cannot serve.

use clap::{Args, Subcommand};

use super::{Failure, ListArgs, Outcome, PluginArgs, print_json};

#[derive(Subcommand, Debug)]
pub(crate) enum WorkflowsCommand {
    /// One line per workflow: name, kind, status (and why an invalid one is invalid).
    List(ListArgs),
    /// Check every definition; exit 2 with one line per problem if any is invalid.
    Check(CheckArgs),
}

#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    plugins: PluginArgs,
}

pub(crate) async fn run(command: WorkflowsCommand) -> Result<Outcome, Failure> {
    match command {
        WorkflowsCommand::List(args) => list(args).await,
        WorkflowsCommand::Check(args) => check(args).await,
    }
}

async fn list(args: ListArgs) -> Result<Outcome, Failure> {
    let runtime = args.plugins.runtime().await?;
    let catalog = runtime.catalog();
    if let Some(error) = &catalog.workflows_file_error {
        return Err(Failure::Usage(error.clone()));
    }
    let rows = catalog.workflow_listing();
    if args.json {
        print_json(&rows)?;
        return Ok(Outcome::Ok);
    }
    println!("{:<20} {:<9} STATUS", "NAME", "KIND");
    for row in &rows {
        let name = row["name"].as_str().unwrap_or_default();
        if row["status"] == "invalid" {
            let reason = row["reason"].as_str().unwrap_or_default();
            println!("{name:<20} {:<9} invalid: {reason}", "-");
        } else {
            let kind = row["kind"].as_str().unwrap_or_default();
            println!("{name:<20} {kind:<9} valid");
        }
    }
    Ok(Outcome::Ok)
}

async fn check(args: CheckArgs) -> Result<Outcome, Failure> {
    let runtime = args.plugins.runtime().await?;
    let catalog = runtime.catalog();
    if let Some(error) = &catalog.workflows_file_error {
        return Err(Failure::Usage(error.clone()));
    }
    let invalid: Vec<_> = catalog.invalid_workflows.values().collect();
    if invalid.is_empty() {
        println!("{} workflows are valid", catalog.workflows.len());
        return Ok(Outcome::Ok);
    }
    for workflow in &invalid[..invalid.len() - 1] {
        eprintln!("weir: workflow `{}`: {}", workflow.name, workflow.reason);
    }
    let last = invalid[invalid.len() - 1];
    Err(Failure::Usage(format!(
        "workflow `{}`: {}",
        last.name, last.reason
    )))
}
