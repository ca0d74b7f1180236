//! The registry: name → the plugin version or workflow currently serving it, plus the files
//! and definitions that were rejected and why. Readers take a snapshot with one atomic load
//! (no lock on the execution path); a change publishes a whole new catalog, so an execution
//! that already holds a plugin keeps it until it finishes. Writers are serialised.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use wasmtime::component::Linker;

use crate::contract::error::{Error, LoadError};
use crate::contract::schedule::{Schedule, ScheduleBounds};
use crate::contract::workflow::file as workflow_file;
use crate::contract::workflow::{self, InvalidWorkflow, Workflow};
use crate::execution::context::HostConfig;
use crate::sandbox::Sandbox;
use crate::sandbox::engine::Engine;
use crate::sandbox::plugin::Plugin;

/// A plugin file that was not loaded.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The file stem (the processor name it would have had).
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Why, in words that say what to fix.
    pub reason: String,
}

/// Changes kept per plugin name in [`Catalog::history`].
pub const PLUGIN_HISTORY: usize = 16;

/// One change of a plugin name: a version loaded or reloaded, or a file rejected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginChange {
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// `loaded`, `reloaded` or `rejected`.
    pub change: &'static str,
    /// The component's digest (a version that loaded).
    pub digest: Option<String>,
    /// Its declared version.
    pub version: Option<String>,
    /// Why the file was rejected (the version before it kept serving).
    pub reason: Option<String>,
}

impl PluginChange {
    /// `plugin` loaded (`reloaded` if the name served before).
    pub(crate) fn loaded(plugin: &Plugin, reloaded: bool) -> Self {
        PluginChange {
            at_ms: crate::contract::clock::now_ms(),
            change: if reloaded { "reloaded" } else { "loaded" },
            digest: Some(plugin.digest().to_string()),
            version: Some(plugin.version().to_string()),
            reason: None,
        }
    }

    /// A file was rejected, for `reason`.
    pub(crate) fn rejected(reason: &str) -> Self {
        PluginChange {
            at_ms: crate::contract::clock::now_ms(),
            change: "rejected",
            digest: None,
            version: None,
            reason: Some(reason.to_string()),
        }
    }
}

/// One consistent view of every plugin, workflow, rejected file and invalid definition.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Loaded plugins by name.
    pub plugins: BTreeMap<String, Arc<Plugin>>,
    /// Rejected files by stem.
    pub rejected: BTreeMap<String, Rejection>,
    /// Workflows that serve, by name.
    pub workflows: BTreeMap<String, Arc<Workflow>>,
    /// Workflows that do not serve, by name, with the reason.
    pub invalid_workflows: BTreeMap<String, InvalidWorkflow>,
    /// Why `workflows.toml` as a whole could not be read, if it could not.
    pub workflows_file_error: Option<String>,
    /// The schedules `workflows.toml` declares that check out, by name (replaced whole at
    /// each reload, so a change shows as a new map).
    pub schedules: Arc<BTreeMap<String, Arc<Schedule>>>,
    /// The schedules it declares that do not, by name, with the reason.
    pub invalid_schedules: BTreeMap<String, String>,
    /// What happened to each plugin name, oldest first: the last [`PLUGIN_HISTORY`]
    /// versions loaded, reloads and rejections (forgotten when its file is removed).
    pub history: BTreeMap<String, std::collections::VecDeque<PluginChange>>,
    /// Every definition (from the file and registered), re-checked when plugins change.
    definitions: Vec<Workflow>,
    /// Definitions from the file that could not even be read: (name, reason).
    unreadable: Vec<(String, String)>,
    max_nesting: usize,
}

impl Catalog {
    /// Notes `change` in `name`'s history, keeping the last [`PLUGIN_HISTORY`].
    pub(crate) fn note(&mut self, name: &str, change: PluginChange) {
        let history = match self.history.get_mut(name) {
            Some(history) => history,
            None => self.history.entry(name.to_string()).or_default(),
        };
        if history.len() >= PLUGIN_HISTORY {
            history.pop_front();
        }
        history.push_back(change);
    }

    /// Names of the loaded plugins, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.plugins.keys().map(String::as_str).collect()
    }

    /// Why `name` cannot run: its plugin file was rejected, its workflow is invalid, or
    /// nothing has that name (listing what does).
    pub fn why_unavailable(&self, name: &str) -> String {
        if let Some(rejected) = self.rejected.get(name) {
            return format!(
                "the plugin `{name}` ({}) was rejected: {}",
                rejected.path.display(),
                rejected.reason
            );
        }
        if let Some(invalid) = self.invalid_workflows.get(name) {
            return format!("the workflow `{name}` is invalid: {}", invalid.reason);
        }
        let mut names = self.names();
        names.extend(self.workflows.keys().map(String::as_str));
        names.sort_unstable();
        if names.is_empty() {
            format!("no processor or workflow named `{name}` (nothing is loaded)")
        } else {
            format!(
                "no processor or workflow named `{name}` (available: {})",
                names.join(", ")
            )
        }
    }

    /// Replaces the definitions that came from the workflows file, keeping registered ones.
    /// Takes what `workflows.toml` now says: its workflows (re-checked with the rest) and its
    /// schedules, each checked against `bounds`.
    pub(crate) fn set_file(&mut self, parsed: workflow_file::Parsed, bounds: &ScheduleBounds) {
        self.definitions.retain(|w| !w.is_from_file());
        self.definitions.extend(parsed.workflows);
        self.unreadable = parsed.broken;
        let mut schedules = BTreeMap::new();
        let mut invalid: BTreeMap<String, String> = parsed.broken_schedules.into_iter().collect();
        let mut per_tenant: BTreeMap<String, usize> = BTreeMap::new();
        for (name, spec, here) in parsed.schedules {
            match Schedule::new(&name, spec, bounds) {
                Ok(schedule) => {
                    let of_tenant = per_tenant.entry(schedule.tenant().to_string()).or_default();
                    if *of_tenant >= bounds.max_per_tenant || schedules.len() >= bounds.max_total {
                        let reason = format!(
                            "{here}tenant `{}` has {} schedules before this one, or the file \
                             {} in all: past the host's schedule bounds (max_schedules_per_tenant \
                             {}, max_schedules {})",
                            schedule.tenant(),
                            of_tenant,
                            schedules.len(),
                            bounds.max_per_tenant,
                            bounds.max_total
                        );
                        invalid.insert(name, reason);
                        continue;
                    }
                    *of_tenant += 1;
                    schedules.insert(name, Arc::new(schedule));
                }
                Err(reason) => {
                    invalid.insert(name, format!("{here}{reason}"));
                }
            }
        }
        self.schedules = Arc::new(schedules);
        self.invalid_schedules = invalid;
    }

    /// Re-checks every workflow definition against the loaded plugins.
    fn recheck(&mut self) {
        let processors: BTreeSet<String> = self.plugins.keys().cloned().collect();
        let checked = workflow::check(self.definitions.clone(), &processors, self.max_nesting);
        self.workflows = checked.valid;
        self.invalid_workflows = checked.invalid;
        for (name, reason) in &self.unreadable {
            self.invalid_workflows.insert(
                name.clone(),
                InvalidWorkflow::new(name.clone(), reason.clone()),
            );
        }
    }
}

/// What a name resolves to.
#[derive(Debug, Clone)]
pub(crate) enum Unit {
    Processor(Arc<Plugin>),
    Workflow(Arc<Workflow>),
}

/// The live set of plugins and workflows.
#[derive(Debug, Default)]
pub struct Registry {
    current: ArcSwap<Catalog>,
    writer: Mutex<()>,
}

impl Registry {
    pub(crate) fn new(max_nesting: usize) -> Self {
        Registry {
            current: ArcSwap::from_pointee(Catalog {
                max_nesting,
                ..Catalog::default()
            }),
            writer: Mutex::new(()),
        }
    }

    /// The plugin serving `name` right now.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.current.load().plugins.get(name).cloned()
    }

    /// Whether a processor or workflow serves `name` right now (cheaper than `resolve`).
    pub(crate) fn contains(&self, name: &str) -> bool {
        let catalog = self.current.load();
        catalog.plugins.contains_key(name) || catalog.workflows.contains_key(name)
    }

    /// The processor or workflow serving `name` right now.
    pub(crate) fn resolve(&self, name: &str) -> Option<Unit> {
        let catalog = self.current.load();
        if let Some(plugin) = catalog.plugins.get(name) {
            return Some(Unit::Processor(plugin.clone()));
        }
        catalog
            .workflows
            .get(name)
            .map(|w| Unit::Workflow(w.clone()))
    }

    /// A snapshot of everything loaded and rejected.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Applies `change` to a copy of the catalog, re-checks the workflows and publishes the
    /// result. Writers take turns, so no update is lost.
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut Catalog) -> R) -> R {
        let _turn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Catalog::clone(&self.current.load());
        let result = change(&mut next);
        next.recheck();
        self.current.store(Arc::new(next));
        result
    }

    /// Registers (or replaces) a workflow. Fails, changing nothing, if the definition does
    /// not check out against what is loaded now.
    pub(crate) fn register(&self, workflow: Workflow) -> Result<Arc<Workflow>, InvalidWorkflow> {
        let _turn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Catalog::clone(&self.current.load());
        let name = workflow.name().to_string();
        next.definitions.retain(|w| w.name() != name);
        next.unreadable.retain(|(n, _)| n != &name);
        next.definitions.push(workflow);
        next.recheck();
        if let Some(invalid) = next.invalid_workflows.get(&name) {
            return Err(invalid.clone());
        }
        let registered = next.workflows[&name].clone();
        self.current.store(Arc::new(next));
        Ok(registered)
    }

    /// Removes a workflow definition; returns whether there was one.
    pub(crate) fn unregister(&self, name: &str) -> bool {
        self.update(|catalog| {
            let before = catalog.definitions.len() + catalog.unreadable.len();
            catalog.definitions.retain(|w| w.name() != name);
            catalog.unreadable.retain(|(n, _)| n != name);
            before != catalog.definitions.len() + catalog.unreadable.len()
        })
    }

    /// Loads every `*.wasm` file directly inside `dir` and the workflows of its
    /// `workflows.toml`, and publishes them. A file or definition that fails is recorded
    /// (and logged) with its reason; only an unreadable folder is an error.
    pub(crate) async fn load_dir(
        &self,
        engine: &Engine,
        linker: &Linker<Sandbox>,
        dir: &Path,
        host: &HostConfig,
    ) -> Result<(), Error> {
        let fail = |source| Error::PluginsDir {
            path: dir.to_path_buf(),
            source,
        };
        let mut files = Vec::new();
        let mut entries = tokio::fs::read_dir(dir).await.map_err(fail)?;
        while let Some(entry) = entries.next_entry().await.map_err(fail)? {
            let path = entry.path();
            let is_wasm = path.extension().is_some_and(|e| e == "wasm");
            if is_wasm && tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file()) {
                files.push(path);
            }
        }
        files.sort();
        let mut plugins = BTreeMap::new();
        let mut rejected = BTreeMap::new();
        for path in files {
            match Plugin::load(engine, linker, &path, &host.loading()).await {
                Ok(plugin) => {
                    tracing::info!(
                        name = plugin.name(),
                        version = plugin.version(),
                        digest = &plugin.digest()[..12],
                        cached = plugin.compiled_from_cache(),
                        compile_ms = plugin.compile_time().as_millis() as u64,
                        "plugin loaded"
                    );
                    plugins.insert(plugin.name().to_string(), Arc::new(plugin));
                }
                Err(err) => {
                    let rejection = rejection(&path, &err);
                    tracing::warn!(
                        file = %path.display(),
                        reason = %rejection.reason,
                        "plugin rejected"
                    );
                    rejected.insert(rejection.name.clone(), rejection);
                }
            }
        }
        let (parsed, file_error) = match workflow_file::load(dir, host.max_workflows_file_bytes) {
            Ok(parsed) => (parsed.unwrap_or_default(), None),
            Err(error) => {
                tracing::warn!(%error, "workflows file rejected");
                (workflow_file::Parsed::default(), Some(error))
            }
        };
        self.update(|catalog| {
            for plugin in plugins.values() {
                catalog.note(plugin.name(), PluginChange::loaded(plugin, false));
            }
            for rejection in rejected.values() {
                catalog.note(&rejection.name, PluginChange::rejected(&rejection.reason));
            }
            catalog.plugins = plugins;
            catalog.rejected = rejected;
            catalog.set_file(parsed, &host.schedules);
            catalog.workflows_file_error = file_error;
        });
        let catalog = self.catalog();
        for invalid in catalog.invalid_workflows.values() {
            tracing::warn!(workflow = %invalid.name, reason = %invalid.reason, "workflow invalid");
        }
        for (name, reason) in &catalog.invalid_schedules {
            tracing::warn!(schedule = %name, %reason, "schedule invalid");
        }
        Ok(())
    }
}

fn rejection(path: &Path, err: &LoadError) -> Rejection {
    Rejection {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: path.to_path_buf(),
        reason: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugins_history_keeps_its_last_changes_oldest_first() {
        let mut catalog = Catalog::default();
        for i in 0..PLUGIN_HISTORY + 3 {
            catalog.note("p", PluginChange::rejected(&format!("try {i}")));
        }
        let history = &catalog.history["p"];
        assert_eq!(history.len(), PLUGIN_HISTORY);
        assert_eq!(history[0].reason.as_deref(), Some("try 3"));
        let last = history.back().and_then(|c| c.reason.as_deref());
        assert_eq!(last, Some(format!("try {}", PLUGIN_HISTORY + 2)).as_deref());
        assert!(!catalog.history.contains_key("q"));
    }

    #[test]
    fn the_files_schedules_past_a_tenants_bound_do_not_tick() {
        let text = "[schedule.a]\nrun = \"x\"\nevery_ms = 1000\n\
                    [schedule.b]\nrun = \"x\"\nevery_ms = 1000\n\
                    [schedule.c]\nrun = \"x\"\nevery_ms = 1000\n\
                    [schedule.d]\nrun = \"x\"\nevery_ms = 1000\ntenant = \"acme\"\n";
        let parsed = workflow_file::parse(text, Path::new("workflows.toml")).unwrap();
        let bounds = ScheduleBounds {
            max_per_tenant: 2,
            ..ScheduleBounds::default()
        };
        let mut catalog = Catalog::default();
        catalog.set_file(parsed, &bounds);
        let valid: Vec<&str> = catalog.schedules.keys().map(String::as_str).collect();
        assert_eq!(valid, ["a", "b", "d"]);
        let reason = &catalog.invalid_schedules["c"];
        assert!(reason.contains("max_schedules_per_tenant 2"), "{reason}");
    }
}
