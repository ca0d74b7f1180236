//! The registry: processor name → the plugin version currently serving it, plus the files
//! that were rejected and why. Readers take a snapshot with one atomic load (no lock on the
//! execution path); a change publishes a whole new catalog, so an execution that already
//! holds a plugin keeps it until it finishes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use wasmtime::component::Linker;

use crate::engine::Engine;
use crate::error::{Error, LoadError};
use crate::plugin::Plugin;
use crate::runtime::HostConfig;
use crate::sandbox::Sandbox;

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

/// One consistent view of every plugin and every rejected file.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Loaded plugins by name.
    pub plugins: BTreeMap<String, Arc<Plugin>>,
    /// Rejected files by stem.
    pub rejected: BTreeMap<String, Rejection>,
}

impl Catalog {
    /// Names of the loaded plugins, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.plugins.keys().map(String::as_str).collect()
    }
}

/// The live set of plugins.
#[derive(Debug, Default)]
pub struct Registry {
    current: ArcSwap<Catalog>,
}

impl Registry {
    /// The plugin serving `name` right now.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.current.load().plugins.get(name).cloned()
    }

    /// A snapshot of everything loaded and rejected.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.current.load_full()
    }

    /// Replaces the whole catalog at once.
    pub(crate) fn publish(&self, catalog: Catalog) {
        self.current.store(Arc::new(catalog));
    }

    /// Applies `change` to a copy of the catalog and publishes it. Concurrent updates are
    /// retried on the newest catalog, so none is lost.
    pub(crate) fn update(&self, change: impl Fn(&mut Catalog)) {
        self.current.rcu(|current| {
            let mut next = Catalog::clone(current);
            change(&mut next);
            next
        });
    }

    /// Loads every `*.wasm` file directly inside `dir`. A file that fails is recorded as
    /// rejected (and logged); only an unreadable folder is an error.
    pub(crate) async fn load_dir(
        engine: &Engine,
        linker: &Linker<Sandbox>,
        dir: &Path,
        host: &HostConfig,
    ) -> Result<Catalog, Error> {
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
        let mut catalog = Catalog::default();
        for path in files {
            match Plugin::load(engine, linker, &path, host).await {
                Ok(plugin) => {
                    tracing::info!(
                        name = plugin.name(),
                        version = plugin.version(),
                        digest = &plugin.digest()[..12],
                        cached = plugin.compiled_from_cache(),
                        compile_ms = plugin.compile_time().as_millis() as u64,
                        "plugin loaded"
                    );
                    catalog
                        .plugins
                        .insert(plugin.name().to_string(), Arc::new(plugin));
                }
                Err(err) => {
                    let rejection = rejection(&path, &err);
                    tracing::warn!(
                        file = %path.display(),
                        reason = %rejection.reason,
                        "plugin rejected"
                    );
                    catalog.rejected.insert(rejection.name.clone(), rejection);
                }
            }
        }
        Ok(catalog)
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
