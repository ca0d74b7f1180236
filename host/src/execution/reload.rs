//! Hot reload: watch the plugins folder and apply every change without a restart.
//!
//! File events (created, written, renamed over, removed) are debounced: a change is applied
//! once its folder has been quiet for a moment, so editors' write-then-rename dance and
//! `cp`'s in-place writes are seen as one change of the final file. A changed `NAME.wasm`
//! (or its manifest `NAME.toml`) is read, hashed, compiled off the async executor (through
//! the compile cache) and validated like at start-up, then swapped in atomically: executions
//! already running finish on the version they started with, new ones get the new version. A
//! file that fails is rejected with its reason while the previous version keeps serving; a
//! removed file's processor refuses new executions at once. `workflows.toml` is re-read and
//! every workflow re-checked one by one.
//!
//! Each outcome is an event: `plugin:loaded|reloaded|rejected|removed`, with the name, old
//! and new digests, declared version, and how long compiling and swapping took.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher as _};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::contract::error::Error;
use crate::contract::workflow::file as workflow_file;
use crate::execution::context::Context;
use crate::execution::registry::{PluginChange, Rejection};
use crate::sandbox::events::{Event, EventKind};
use crate::sandbox::plugin::Plugin;

/// Watches a plugins folder until dropped.
pub struct Watcher {
    _watcher: notify::RecommendedWatcher,
    task: JoinHandle<()>,
    dir: PathBuf,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("dir", &self.dir).finish()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a folder must stay quiet before its changes are applied.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// The longest a change waits while the folder keeps changing.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Starts watching `dir` for `shared`'s registry.
pub(crate) fn watch(
    shared: Arc<Context>,
    dir: &Path,
    debounce: Duration,
) -> Result<Watcher, Error> {
    let dir = dir.canonicalize().map_err(|source| Error::PluginsDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let (sender, receiver) = mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        match event {
            // Something only reading the folder (another weir loading it) changes nothing.
            Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => {}
            // A send only fails once the watcher task is gone, when nothing needs to know.
            Ok(event) => {
                let _ = sender.send(event.paths);
            }
            Err(error) => tracing::warn!(%error, "plugins folder watch error"),
        }
    })
    .map_err(|e| Error::Config(format!("cannot watch {}: {e}", dir.display())))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| Error::Config(format!("cannot watch {}: {e}", dir.display())))?;
    let task = tokio::spawn(apply_changes(shared, dir.clone(), receiver, debounce));
    Ok(Watcher {
        _watcher: watcher,
        task,
        dir,
    })
}

/// What a changed path means.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    /// A plugin (its component or its manifest) changed.
    Plugin(String),
    /// `workflows.toml` changed.
    Workflows,
}

/// Which change a path is, if any: `NAME.wasm` and `NAME.toml` are plugin `NAME`;
/// `workflows.toml` is the workflows; anything else (temporary and hidden files) is not.
fn classify(path: &Path) -> Option<Change> {
    let file = path.file_name()?.to_str()?;
    if file == workflow_file::FILE_NAME {
        return Some(Change::Workflows);
    }
    if file.starts_with('.') {
        return None;
    }
    let (stem, extension) = file.rsplit_once('.')?;
    match extension {
        "wasm" | "toml" => Some(Change::Plugin(stem.to_string())),
        _ => None,
    }
}

async fn apply_changes(
    shared: Arc<Context>,
    dir: PathBuf,
    mut receiver: mpsc::UnboundedReceiver<Vec<PathBuf>>,
    debounce: Duration,
) {
    while let Some(paths) = receiver.recv().await {
        let mut changes: BTreeSet<Change> = paths.iter().filter_map(|p| classify(p)).collect();
        // Keep collecting until the folder has been quiet for `debounce`, but never hold a
        // change back longer than MAX_DELAY.
        let first = Instant::now();
        loop {
            let quiet_until = (Instant::now() + debounce).min(first + MAX_DELAY);
            match tokio::time::timeout_at(quiet_until.into(), receiver.recv()).await {
                Ok(Some(paths)) => changes.extend(paths.iter().filter_map(|p| classify(p))),
                Ok(None) => return,
                Err(_) => break,
            }
        }
        for change in changes {
            match change {
                Change::Plugin(name) => apply_plugin(&shared, &dir, &name).await,
                Change::Workflows => apply_workflows(&shared, &dir),
            }
        }
    }
}

fn plugin_event(kind: EventKind, name: &str, data: serde_json::Value) -> Event {
    let mut event = Event::new(kind, "default", None);
    event.processor = Some(name.to_string());
    event.data = Some(data);
    event
}

/// Applies the current contents of `dir/NAME.wasm` (and its manifest).
async fn apply_plugin(shared: &Arc<Context>, dir: &Path, name: &str) {
    let path = dir.join(format!("{name}.wasm"));
    let old = shared.registry().get(name);
    if !path.is_file() {
        let had_rejection = shared.registry().catalog().rejected.contains_key(name);
        if old.is_none() && !had_rejection {
            return;
        }
        shared.registry().update(|catalog| {
            catalog.plugins.remove(name);
            catalog.rejected.remove(name);
            catalog.history.remove(name);
        });
        if let Some(old) = old {
            tracing::info!(name, "plugin removed");
            shared.events().publish(plugin_event(
                EventKind::PluginRemoved,
                name,
                json!({ "oldDigest": old.digest(), "path": path }),
            ));
        }
        return;
    }
    let started = Instant::now();
    match Plugin::load(
        shared.engine(),
        shared.linker(),
        &path,
        &shared.config().loading(),
    )
    .await
    {
        Ok(plugin) => {
            if let Some(old) = &old
                && old.digest() == plugin.digest()
                && old.manifest() == plugin.manifest()
            {
                // Touched, or rewritten with the same bytes: nothing to swap. A rejection
                // left by a broken write in between is over.
                shared.registry().update(|catalog| {
                    catalog.rejected.remove(name);
                });
                return;
            }
            let compile = started.elapsed();
            let plugin = Arc::new(plugin);
            let swap_started = Instant::now();
            shared.registry().update(|catalog| {
                catalog.rejected.remove(name);
                catalog.note(name, PluginChange::loaded(&plugin, old.is_some()));
                catalog.plugins.insert(name.to_string(), plugin.clone());
            });
            let swap = swap_started.elapsed();
            let kind = if old.is_some() {
                EventKind::PluginReloaded
            } else {
                EventKind::PluginLoaded
            };
            tracing::info!(
                name,
                version = plugin.version(),
                digest = &plugin.digest()[..12],
                cached = plugin.compiled_from_cache(),
                load_ms = compile.as_millis() as u64,
                "plugin {}",
                if old.is_some() { "reloaded" } else { "loaded" }
            );
            shared.events().publish(plugin_event(
                kind,
                name,
                json!({
                    "digest": plugin.digest(),
                    "oldDigest": old.as_ref().map(|o| o.digest()),
                    "version": plugin.version(),
                    "oldVersion": old.as_ref().map(|o| o.version()),
                    "fromCache": plugin.compiled_from_cache(),
                    "compileMs": compile.as_secs_f64() * 1000.0,
                    "swapUs": swap.as_secs_f64() * 1e6,
                    "path": path,
                }),
            ));
        }
        Err(error) => {
            let reason = error.to_string();
            tracing::warn!(name, %reason, serving = old.is_some(), "plugin rejected");
            let rejection = Rejection {
                name: name.to_string(),
                path: path.clone(),
                reason: reason.clone(),
            };
            shared.registry().update(|catalog| {
                catalog.note(name, PluginChange::rejected(&rejection.reason));
                catalog.rejected.insert(name.to_string(), rejection);
            });
            shared.events().publish(plugin_event(
                EventKind::PluginRejected,
                name,
                json!({
                    "reason": reason,
                    "servingDigest": old.as_ref().map(|o| o.digest()),
                    "path": path,
                }),
            ));
        }
    }
}

/// Re-reads `workflows.toml` and re-checks every workflow.
fn apply_workflows(shared: &Context, dir: &Path) {
    let parsed = match workflow_file::load(dir, shared.config().max_workflows_file_bytes) {
        Ok(parsed) => parsed.unwrap_or_default(),
        Err(error) => {
            tracing::warn!(%error, "workflows file rejected; the previous workflows keep serving");
            shared.registry().update(|catalog| {
                catalog.workflows_file_error = Some(error);
            });
            publish_workflows(shared);
            return;
        }
    };
    shared.registry().update(|catalog| {
        catalog.set_file(parsed, &shared.config().schedules);
        catalog.workflows_file_error = None;
    });
    publish_workflows(shared);
}

fn publish_workflows(shared: &Context) {
    let catalog = shared.registry().catalog();
    tracing::info!(
        valid = catalog.workflows.len(),
        invalid = catalog.invalid_workflows.len(),
        "workflows reloaded"
    );
    let invalid: serde_json::Map<String, serde_json::Value> = catalog
        .invalid_workflows
        .values()
        .map(|w| (w.name.clone(), json!(w.reason)))
        .collect();
    let mut event = Event::new(EventKind::WorkflowsReloaded, "default", None);
    event.data = Some(json!({
        "valid": catalog.workflows.keys().collect::<Vec<_>>(),
        "invalid": invalid,
        "fileError": catalog.workflows_file_error,
        "schedules": catalog.schedules.keys().collect::<Vec<_>>(),
        "invalidSchedules": catalog.invalid_schedules,
    }));
    shared.events().publish(event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plugins_manifests_and_the_workflows_file_count() {
        let c = |p: &str| classify(Path::new(p));
        assert_eq!(c("/p/add-ten.wasm"), Some(Change::Plugin("add-ten".into())));
        assert_eq!(c("/p/add-ten.toml"), Some(Change::Plugin("add-ten".into())));
        assert_eq!(c("/p/workflows.toml"), Some(Change::Workflows));
        assert_eq!(c("/p/.add-ten.wasm.swp"), None);
        assert_eq!(c("/p/add-ten.wasm.tmp"), None);
        assert_eq!(c("/p/add-ten.wasm~"), None);
        assert_eq!(c("/p/4913"), None);
    }
}
