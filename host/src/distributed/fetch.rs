//! The exact code a job names: a worker resolves each processor and workflow by the digest
//! pinned in the job, from what it has loaded or fetched from Redis (verified, loaded once
//! and kept for a while), and serves what is published under a name to guests' nested
//! calls (the execution layer's [`Published`]).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::content;
use super::handle::lock_map;
use super::wire::Binding;
use super::worker::Inner;
use crate::contract::error::{Error, ErrorKind, ExecutionError, codes};
use crate::contract::manifest::Manifest;
use crate::execution::context::Published;
use crate::execution::registry::Unit;
use crate::sandbox::plugin::Plugin;

/// Digests of fetched components kept per process (all are forgotten when more arrive).
const FETCHED_KEPT: usize = 64;

/// How long a component that failed to load is not tried again (an operator may fix its
/// manifest meanwhile).
const UNLOADABLE_KEPT: Duration = Duration::from_secs(10);

/// How long what a name was published as is reused for nested calls (found or not), so a
/// guest calling in a loop costs Redis at most one lookup per name in this time.
const RESOLVED_KEPT: Duration = Duration::from_secs(1);

/// Names whose resolution is kept at most (all are forgotten when more are asked for).
const RESOLVED_MAX: usize = 1024;

/// Looks for newly published processors until the worker is closed.
pub(super) async fn poll_catalog(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let every = strong.config.catalog_poll;
        if let Err(error) = strong.serve_published().await {
            tracing::debug!(%error, "cannot read the published processors; trying again");
        }
        // Say this worker is alive (submitters tell their users when none is).
        let alive = every.max(Duration::from_secs(1)) * 5;
        if let Err(error) = strong.dist.heartbeat(alive).await {
            tracing::debug!(%error, "cannot say this worker is alive");
        }
        drop(strong);
        tokio::time::sleep(every).await;
    }
}

impl Inner {
    /// Starts a BullMQ worker on the queue of every published processor not served yet.
    pub(super) async fn serve_published(self: &Arc<Self>) -> Result<(), Error> {
        let mut conn = self.dist.conn();
        let published = content::published_plugins(&mut conn, &self.dist.keys, &self.dist.seal)
            .await
            .map_err(|e| super::unreachable(&self.dist.config, e))?;
        // This worker's own processors are served even if a flooded catalog hid them.
        let catalog = self.shared.registry().catalog();
        let mut workers = self.workers.lock().await;
        let names = super::OWN_QUEUES
            .into_iter()
            .chain(published.keys().map(String::as_str))
            .chain(catalog.names());
        for name in names {
            if workers.contains_key(name) {
                continue;
            }
            let worker = self.start_queue(name).await?;
            tracing::info!(target: "weir::worker", queue = %name, "serving queue");
            workers.insert(name.to_string(), worker);
        }
        Ok(())
    }

    /// The component `digest` as processor `name`: the loaded one if it is that exact
    /// component, else one fetched from Redis before, else fetched now.
    pub(super) async fn plugin(
        &self,
        name: &str,
        digest: &str,
    ) -> Result<Arc<Plugin>, Unavailable> {
        if let Some(plugin) = self.shared.registry().get(name)
            && plugin.digest() == digest
        {
            return Ok(plugin);
        }
        let fetched = |inner: &Inner| {
            lock_map(&inner.fetched)
                .get(digest)
                .and_then(|plugins| plugins.iter().find(|p| p.name() == name).cloned())
        };
        if let Some(plugin) = fetched(self) {
            return Ok(plugin);
        }
        let key = (name.to_string(), digest.to_string());
        // A component that just failed to load is not fetched and compiled again at once
        // (a guest calling it in a loop would make this worker do that on every call).
        let unloadable = |inner: &Inner| {
            lock_map(&inner.unloadable)
                .get(&key)
                .filter(|(at, _)| at.elapsed() < UNLOADABLE_KEPT)
                .map(|(_, why)| Unavailable::Missing(why.clone()))
        };
        if let Some(refused) = unloadable(self) {
            return Err(refused);
        }
        // One fetch at a time per component: concurrent jobs of a new component compile it
        // once, and a slow compile holds up no other component's.
        let gate = lock_map(&self.fetching)
            .entry(key.clone())
            .or_default()
            .clone();
        let _fetching = Fetching {
            guard: Some(gate.clone().lock_owned().await),
            gate,
            key: key.clone(),
            all: &self.fetching,
        };
        if let Some(plugin) = fetched(self) {
            return Ok(plugin);
        }
        if let Some(refused) = unloadable(self) {
            return Err(refused);
        }
        let mut conn = self.dist.conn();
        let max = self.shared.config().max_component_bytes;
        let bytes = content::fetch_plugin(&mut conn, &self.dist.keys, digest, max)
            .await
            .map_err(Unavailable::Redis)?
            .map_err(Unavailable::Missing)?;
        let loaded = match self.manifest_for(name).await {
            Ok(manifest) => {
                let origin = PathBuf::from(format!("redis:{digest}"));
                let shared = &self.shared;
                Plugin::from_bytes(
                    shared.engine(),
                    shared.linker(),
                    name.to_string(),
                    &origin,
                    bytes,
                    manifest,
                    &shared.config().loading(),
                )
                .await
                .map_err(|e| format!("the published `{name}` ({digest}) cannot load: {e}"))
            }
            Err(why) => Err(why),
        };
        let plugin = match loaded {
            Ok(plugin) => plugin,
            Err(why) => {
                let mut unloadable = lock_map(&self.unloadable);
                unloadable.retain(|_, (at, _)| at.elapsed() < UNLOADABLE_KEPT);
                unloadable.insert(key, (Instant::now(), why.clone()));
                return Err(Unavailable::Missing(why));
            }
        };
        tracing::info!(
            target: "weir::worker",
            plugin = name,
            digest = &digest[..12.min(digest.len())],
            "fetched a published component"
        );
        let plugin = Arc::new(plugin);
        let mut fetched = lock_map(&self.fetched);
        if fetched.len() >= FETCHED_KEPT {
            fetched.clear();
        }
        let (_, digest) = key;
        fetched.entry(digest).or_default().push(plugin.clone());
        Ok(plugin)
    }

    /// This operator's manifest for `name` (limits, capabilities): the one beside where
    /// its file would be in this worker's plugins folder, if any.
    async fn manifest_for(&self, name: &str) -> Result<Manifest, String> {
        let Some(dir) = &self.plugins_dir else {
            return Ok(Manifest::default());
        };
        crate::sandbox::plugin::load_manifest(
            self.shared.engine(),
            &dir.join(format!("{name}.wasm")),
            self.shared.config().max_manifest_bytes,
        )
        .await
        .map_err(|e| e.to_string())
    }
}

impl Published for Inner {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Unit>, ExecutionError>> + Send + 'a>> {
        Box::pin(async move {
            if let Some((at, unit)) = lock_map(&self.resolved).get(name)
                && at.elapsed() < RESOLVED_KEPT
            {
                return Ok(unit.clone());
            }
            let unit = self.resolve_now(name).await.map_err(|error| {
                // The detail is the operator's; the calling guest learns only that Redis
                // could not say, and may try again.
                tracing::warn!(target: "weir::worker", callee = name, %error, "cannot look a nested call's callee up in Redis");
                ExecutionError::host(
                    ErrorKind::Network,
                    codes::STORE_UNAVAILABLE,
                    format!("cannot look `{name}` up right now"),
                )
                .retryable(true)
            })?;
            let mut resolved = lock_map(&self.resolved);
            if resolved.len() >= RESOLVED_MAX {
                resolved.clear();
            }
            resolved.insert(name.to_string(), (Instant::now(), unit.clone()));
            Ok(unit)
        })
    }
}

impl Inner {
    /// What `name` is published as now, loaded: `None` when nothing is, or when what is
    /// cannot run (logged); an error when Redis fails.
    async fn resolve_now(&self, name: &str) -> Result<Option<Unit>, String> {
        let mut conn = self.dist.conn();
        let found = content::lookup(&mut conn, &self.dist.keys, &self.dist.seal, &[name])
            .await
            .map_err(|e| e.to_string())?;
        match found.into_iter().next().flatten() {
            None => Ok(None),
            Some(Binding::Processor { digest }) => match self.plugin(name, &digest).await {
                Ok(plugin) => Ok(Some(Unit::Processor(plugin))),
                Err(Unavailable::Redis(e)) => Err(e.to_string()),
                // The operator's to read (at most once a second per name: see `resolved`).
                Err(Unavailable::Missing(why)) => {
                    tracing::warn!(target: "weir::worker", callee = name, "a nested call's callee cannot run: {why}");
                    Ok(None)
                }
            },
            Some(Binding::Workflow { digest }) => match self.dist.workflow(&digest).await {
                Ok(Ok(workflow)) => Ok(Some(Unit::Workflow(workflow))),
                Ok(Err(why)) => {
                    tracing::warn!(target: "weir::worker", workflow = name, "the published workflow ({digest}) cannot be used: {why}");
                    Ok(None)
                }
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// Why a job's component cannot be had.
pub(super) enum Unavailable {
    /// Redis failed: try the job again later.
    Redis(redis::RedisError),
    /// It is not there or does not load: the step fails.
    Missing(String),
}

/// The locks of the components a worker is fetching, by (name, digest).
pub(super) type FetchLocks = Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

/// A worker's turn to fetch one component: the lock of its (name, digest), dropped from the
/// worker's map once nobody else waits on it, so the map holds only fetches in progress.
struct Fetching<'a> {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    gate: Arc<tokio::sync::Mutex<()>>,
    key: (String, String),
    all: &'a FetchLocks,
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut all = lock_map(self.all);
        // This one and the map's: nobody else holds or waits for it.
        if Arc::strong_count(&self.gate) <= 2 {
            all.remove(&self.key);
        }
    }
}
