//! `weir build [DIR…] --out DIR`: build plugin projects of any language into components,
//! check that weir loads each one, and install it into a plugins folder.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::json;
use weir_devkit::{Built, Project, Tools};

use super::{Failure, Outcome, print_json};

#[derive(Args, Debug)]
pub(crate) struct BuildArgs {
    /// Plugin project folders (each with a weir-plugin.toml) [default: .].
    #[arg(value_name = "DIR")]
    projects: Vec<PathBuf>,
    /// The plugins folder to install the components into.
    #[arg(
        long,
        env = "WEIR_PLUGINS",
        default_value = "plugins",
        value_name = "DIR"
    )]
    out: PathBuf,
    /// Where intermediate files go [default: <project>/.weir].
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Folders searched for compilers before PATH (componentize-py, componentize-js, zig,
    /// go), e.g. a virtualenv's bin folder.
    #[arg(long = "tools", value_name = "DIR")]
    tool_paths: Vec<PathBuf>,
    /// Where compiled components are cached [default: ~/.cache/weir/compiled]. The check
    /// compiles each component once, so the first `weir run` after a build is fast.
    #[arg(long, env = "WEIR_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

pub(crate) async fn run(args: BuildArgs) -> Result<Outcome, Failure> {
    let projects = if args.projects.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.projects.clone()
    };
    let tools = Tools::with_paths(args.tool_paths.clone());
    let mut reports = Vec::new();
    for dir in &projects {
        let project = Project::open(dir).map_err(|e| Failure::Usage(e.to_string()))?;
        let work_dir = match &args.work_dir {
            Some(root) => root.join(&project.name),
            None => dir.join(".weir"),
        };
        eprintln!(
            "building {} ({}) from {}",
            project.name,
            project.lang.display_name(),
            dir.display()
        );
        let built = {
            let tools = tools.clone();
            let project = project.clone();
            tokio::task::spawn_blocking(move || weir_devkit::build(&project, &work_dir, &tools))
                .await
                .map_err(|e| Failure::Infrastructure(format!("the build task failed: {e}")))?
                .map_err(|e| Failure::Usage(e.to_string()))?
        };
        let version = check(&built, args.cache_dir.clone()).await?;
        let path =
            weir_devkit::install(&built, &args.out).map_err(|e| Failure::Usage(e.to_string()))?;
        eprintln!(
            "built {} {version} ({}) into {}: {:.1} MiB in {:.1} s",
            built.name,
            built.lang.display_name(),
            path.display(),
            built.size as f64 / (1024.0 * 1024.0),
            built.duration.as_secs_f64()
        );
        reports.push(json!({
            "name": built.name,
            "lang": built.lang.as_str(),
            "version": version,
            "path": path,
            "sizeBytes": built.size,
            "buildMs": built.duration.as_millis() as u64,
        }));
    }
    print_json(&reports)?;
    Ok(Outcome::Ok)
}

/// Loads the built component the way `weir run` would (in a folder of its own) and returns
/// its declared version; a component weir would reject fails the build with the reason.
async fn check(built: &Built, cache_dir: Option<PathBuf>) -> Result<String, Failure> {
    let folder = built
        .path
        .parent()
        .map(|p| p.join("check"))
        .unwrap_or_else(|| PathBuf::from("check"));
    let copy = folder.join(format!("{}.wasm", built.name));
    std::fs::create_dir_all(&folder)
        .and_then(|_| clear_other_files(&folder, &copy))
        .and_then(|_| std::fs::copy(&built.path, &copy).map(|_| ()))
        .map_err(|e| {
            Failure::Infrastructure(format!("cannot prepare {}: {e}", folder.display()))
        })?;
    let runtime = weir::Runtime::builder()
        .plugins_dir(&folder)
        .cache_dir(cache_dir.or_else(weir::CompileCache::default_dir))
        .build()
        .await?;
    let catalog = runtime.catalog();
    if let Some(plugin) = catalog.plugins.get(&built.name) {
        return Ok(plugin.version().to_string());
    }
    let reason = catalog
        .rejected
        .get(&built.name)
        .map_or_else(|| "it was not loaded".to_string(), |r| r.reason.clone());
    Err(Failure::Usage(format!(
        "{} built, but weir rejects it: {reason}",
        built.name
    )))
}

fn clear_other_files(folder: &Path, keep: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(folder)? {
        let path = entry?.path();
        if path != keep && path.is_file() {
            std::fs::remove_file(path)?;
        }
    }
    Ok(())
}
