//! `weir plugins list|inspect`: what is in a plugins folder, what each plugin declares and is
//! granted, and why any file was rejected.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Failure, ListArgs, Outcome, PluginArgs, RedisArgs, print_json};

#[derive(Subcommand, Debug)]
pub(crate) enum PluginsCommand {
    /// One line per plugin file: name, version, digest, status.
    List(ListArgs),
    /// Everything about one plugin: version, digest, world, limits, manifest, rejection.
    Inspect(InspectArgs),
    /// Publish components to the distributed runtime's Redis (validated here first), so
    /// that workers run them without having the files. Prints `{name, digest}` per file.
    Push(PushArgs),
}

#[derive(Args, Debug)]
pub(crate) struct PushArgs {
    /// The component files (`NAME.wasm`: the stem is the processor's name).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<std::path::PathBuf>,
    #[command(flatten)]
    redis: RedisArgs,
    #[command(flatten)]
    plugins: PluginArgs,
}

#[derive(Args, Debug)]
pub(crate) struct InspectArgs {
    /// The plugin's name (its file stem).
    name: String,
    #[command(flatten)]
    plugins: PluginArgs,
}

pub(crate) async fn run(command: PluginsCommand) -> Result<Outcome, Failure> {
    match command {
        PluginsCommand::List(args) => list(args).await,
        PluginsCommand::Inspect(args) => inspect(args).await,
        PluginsCommand::Push(args) => push(args).await,
    }
}

async fn push(args: PushArgs) -> Result<Outcome, Failure> {
    let redis = args.redis.required("plugins push")?;
    let runtime = args.plugins.bare_runtime(redis).await?;
    let mut pushed = Vec::new();
    for file in &args.files {
        let digest = super::fleet(&runtime)?.push_plugin(file).await?;
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        pushed.push(json!({ "name": name, "digest": digest }));
    }
    print_json(&pushed)?;
    Ok(Outcome::Ok)
}

async fn list(args: ListArgs) -> Result<Outcome, Failure> {
    let runtime = args.plugins.runtime().await?;
    let rows = runtime.catalog().plugin_listing();
    if args.json {
        print_json(&rows)?;
        return Ok(Outcome::Ok);
    }
    println!("{:<20} {:<10} {:<14} STATUS", "NAME", "VERSION", "DIGEST");
    for row in &rows {
        let name = row["name"].as_str().unwrap_or_default();
        if row["status"] == "rejected" {
            let reason = row["reason"].as_str().unwrap_or_default();
            println!("{name:<20} {:<10} {:<14} rejected: {reason}", "-", "-");
        } else {
            let version = row["version"].as_str().unwrap_or_default();
            let digest = row["digest"].as_str().unwrap_or_default();
            println!(
                "{name:<20} {version:<10} {:<14} loaded",
                &digest[..12.min(digest.len())]
            );
        }
    }
    Ok(Outcome::Ok)
}

async fn inspect(args: InspectArgs) -> Result<Outcome, Failure> {
    let runtime = args.plugins.runtime().await?;
    let catalog = runtime.catalog();
    if let Some(plugin) = catalog.plugins.get(&args.name) {
        print_json(&plugin.detail_json())?;
        return Ok(Outcome::Ok);
    }
    if let Some(rejected) = catalog.rejected.get(&args.name) {
        print_json(&rejected.to_json())?;
        return Ok(Outcome::Ok);
    }
    Err(Failure::Usage(format!(
        "no plugin named `{}` in {} (see `weir plugins list`)",
        args.name,
        args.plugins.plugins.display()
    )))
}
