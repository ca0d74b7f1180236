//! The embedding API: a [`Runtime`] owns the engine, the registry of plugins and workflows,
//! the state store and the host's policies, and runs executions on the caller's tokio
//! runtime, in process or (built with [`Runtime::redis`], the `redis` feature) through
//! Redis. It has a lifecycle: built, started (accepting work), stopped (in-flight work
//! finished or cancelled within a grace period). [`RuntimeBuilder`] configures one
//! (`builder.rs`); the distributed runtime's own operations are a [`Fleet`]'s (`fleet.rs`).

mod builder;
#[cfg(feature = "redis")]
mod fleet;
mod idempotency;
mod schedules;

pub use builder::RuntimeBuilder;
#[cfg(feature = "redis")]
pub use fleet::Fleet;
pub use schedules::{ScheduleRefused, ScheduleStatus, TickAdmission, TickAdmitted, TickPlace};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use serde_json::Value;

use crate::contract::cancel::CancelReason;
use crate::contract::error::{Error, ErrorKind, ExecutionError, LoadError, RuntimeError, codes};
use crate::contract::result::ExecutionResult;
use crate::contract::state_store::{CasOutcome, SessionKey, StoredState};
use crate::contract::workflow::{InvalidWorkflow, Workflow};
#[cfg(feature = "redis")]
use crate::distributed::Distributed;
use crate::execution::activity::{ProcessorStats, SessionRefused, SessionStats, VersionStats};
use crate::execution::registry::{Catalog, PluginChange};
use crate::execution::reload::Watcher;
use crate::sandbox::engine::Engine;
use crate::sandbox::events::{Event, EventKind, Subscription};
use crate::sandbox::plugin::Plugin;

use crate::execution::context::{Context, HostConfig};
use crate::execution::request::ExecutionRequest;

const CREATED: u8 = 0;
const RUNNING: u8 = 1;
const STOPPING: u8 = 2;
const STOPPED: u8 = 3;

/// Where a runtime is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeState {
    /// Built, not started: executions are refused.
    Created,
    /// Accepting executions.
    Running,
    /// Finishing in-flight work; new executions are refused.
    Stopping,
    /// Stopped; `start` may run it again.
    Stopped,
}

/// A snapshot of what a runtime has done.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeStats {
    /// Where the runtime is in its life.
    pub state: RuntimeState,
    /// Time since the runtime was built, in milliseconds.
    pub uptime_ms: u64,
    /// Executions in flight now (workflow steps and nested calls included).
    pub running: usize,
    /// Sessions that have seen work and not been stopped.
    pub sessions: usize,
    /// Counters per processor and workflow, over all tenants.
    pub processors: BTreeMap<String, ProcessorStats>,
    /// The same counters per tenant.
    pub tenants: BTreeMap<String, BTreeMap<String, ProcessorStats>>,
}

/// What stopping did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StopReport {
    /// Executions that finished on their own within the grace period... or were cancelled.
    pub cancelled: usize,
}

/// What stopping a session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStopReport {
    /// Executions of the session that were running or waiting, and were cancelled.
    pub cancelled: usize,
    /// Whether the session had stored state or data, now removed.
    pub removed_state: bool,
}

/// The in-process runtime. Cheap to clone; all clones share plugins and limits.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = weir::Runtime::builder().plugins_dir("plugins/dist").build().await?;
/// runtime.start();
/// let result = runtime.run("increment", serde_json::json!({ "count": 1 })).await?;
/// assert_eq!(result.state["count"], 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Context>,
    /// Where the runtime is in its life (see [`Runtime::state`]), shared by its clones.
    lifecycle: Arc<AtomicU8>,
    /// The local runtime's idempotency keys (the distributed one keeps them in Redis).
    keys: Arc<idempotency::Keys>,
    /// Set when the runtime runs work through Redis ([`Runtime::redis`]).
    #[cfg(feature = "redis")]
    distributed: Option<Arc<Distributed>>,
    plugins_dir: Option<PathBuf>,
    /// Its schedules' ticks and the API's schedules (`schedules.rs`).
    schedules: Arc<schedules::Schedules>,
}

/// A [`Runtime`] that does not keep it alive (what its own tasks hold).
#[derive(Clone)]
pub(crate) struct WeakRuntime {
    shared: std::sync::Weak<Context>,
    lifecycle: std::sync::Weak<AtomicU8>,
    keys: std::sync::Weak<idempotency::Keys>,
    #[cfg(feature = "redis")]
    distributed: Option<std::sync::Weak<Distributed>>,
    plugins_dir: Option<PathBuf>,
    schedules: std::sync::Weak<schedules::Schedules>,
}

impl WeakRuntime {
    /// The runtime, if anyone still holds it.
    pub(crate) fn upgrade(&self) -> Option<Runtime> {
        Some(Runtime {
            shared: self.shared.upgrade()?,
            lifecycle: self.lifecycle.upgrade()?,
            keys: self.keys.upgrade()?,
            #[cfg(feature = "redis")]
            distributed: match &self.distributed {
                Some(weak) => Some(weak.upgrade()?),
                None => None,
            },
            plugins_dir: self.plugins_dir.clone(),
            schedules: self.schedules.upgrade()?,
        })
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("engine", self.shared.engine())
            .field("plugins", &self.shared.registry().catalog().names())
            .finish()
    }
}

impl Runtime {
    /// Starts configuring a runtime.
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// Starts configuring the local (embedded, in-process) runtime: the default, needing no
    /// server. The same as [`Runtime::builder`].
    pub fn local() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// A handle on this runtime that does not keep it alive.
    pub(crate) fn downgrade(&self) -> WeakRuntime {
        WeakRuntime {
            shared: Arc::downgrade(&self.shared),
            lifecycle: Arc::downgrade(&self.lifecycle),
            keys: Arc::downgrade(&self.keys),
            #[cfg(feature = "redis")]
            distributed: self.distributed.as_ref().map(Arc::downgrade),
            plugins_dir: self.plugins_dir.clone(),
            schedules: Arc::downgrade(&self.schedules),
        }
    }

    /// The plugins folder this runtime was built over, if any.
    pub fn plugins_folder(&self) -> Option<&Path> {
        self.plugins_dir.as_deref()
    }

    /// Whether executions run through Redis (then [`Runtime::fleet`] has the distributed
    /// runtime's own operations).
    pub fn is_distributed(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.distributed.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    fn accepting(&self) -> Result<(), RuntimeError> {
        match self.lifecycle.load(Ordering::Acquire) {
            RUNNING => Ok(()),
            CREATED => Err(RuntimeError::NotStarted),
            _ => Err(RuntimeError::Stopped),
        }
    }

    /// Runs `request` here, or through Redis and waits for its outcome; `true` beside it
    /// when that is the outcome of an earlier request its idempotency key named.
    async fn run_request(
        &self,
        request: ExecutionRequest,
    ) -> Result<(ExecutionResult, bool), RuntimeError> {
        #[cfg(feature = "redis")]
        if let Some(distributed) = &self.distributed {
            // Boxed: its futures are large, and the local path's future would otherwise be
            // as large and copied whole at every level of every local execution.
            return Box::pin(self.run_remote(distributed, request)).await;
        }
        Ok((
            crate::execution::executor::execute(&self.shared, request).await,
            false,
        ))
    }

    /// Runs a request with an idempotency key on the local runtime: at most once per key
    /// (of its tenant) within the key's window; a repeat gets the first run's outcome.
    async fn execute_once(
        &self,
        key: String,
        mut request: ExecutionRequest,
    ) -> Result<ExecutionResult, RuntimeError> {
        use idempotency::{Claim, Waited};
        let bounds = self.shared.config().idempotency;
        bounds
            .check_key(&key)
            .map_err(RuntimeError::InvalidRequest)?;
        let tenant = request.tenant.clone().unwrap_or_else(|| "default".into());
        let fingerprint = crate::contract::idempotency::fingerprint(
            &request.processor,
            &request.input,
            request.session.as_deref(),
        );
        let run = request
            .id
            .get_or_insert_with(crate::contract::clock::new_execution_id)
            .clone();
        // A key whose first request was refused before it ran is free again: claim it
        // again (a few times: each try follows a refusal).
        for _ in 0..3 {
            match self.keys.claim(&tenant, &key, &fingerprint, &run) {
                Claim::New(ticket) => {
                    let outcome = Box::pin(self.execute(request)).await;
                    if let Ok(result) = &outcome {
                        ticket.finish(result);
                    }
                    return outcome;
                }
                Claim::Repeat { run, slot } => {
                    if let Some(on_accept) = &request.on_accept {
                        on_accept.tell(&run, true);
                    }
                    let cancel = request.cancel.clone();
                    let waited = tokio::select! {
                        waited = idempotency::wait(slot) => waited,
                        () = cancel.cancelled() => {
                            let error = ExecutionError::host(
                                ErrorKind::Cancelled,
                                codes::CANCELLED_BY_REQUEST,
                                format!("cancelled while waiting for run `{run}`, which its \
                                         idempotency key names (the run goes on)"),
                            );
                            return Ok(crate::execution::executor::refused(request, error));
                        }
                    };
                    match waited {
                        Waited::Done(result) => return Ok((*result).clone()),
                        Waited::Gone => {
                            let error = ExecutionError::host(
                                ErrorKind::Conflict,
                                codes::IDEMPOTENT_OUTCOME_GONE,
                                format!(
                                    "idempotency key `{key}` names run `{run}`, which has \
                                     ended; its outcome is no longer kept (past the bytes of \
                                     outcomes kept), and it does not run again"
                                ),
                            )
                            .with_details(serde_json::json!({ "run": run }));
                            return Ok(crate::execution::executor::refused(request, error));
                        }
                        Waited::Free => continue,
                    }
                }
                Claim::Reused { run } => {
                    let error = crate::contract::idempotency::key_reused(&key, &run, bounds.window);
                    return Ok(crate::execution::executor::refused(request, error));
                }
                Claim::Full { limit, per_tenant } => {
                    let whose = if per_tenant {
                        format!("tenant `{tenant}` holds")
                    } else {
                        "this runtime holds".to_string()
                    };
                    let error = ExecutionError::host(
                        ErrorKind::Resource,
                        codes::TOO_MANY_IDEMPOTENCY_KEYS,
                        format!(
                            "{whose} {limit} idempotency keys, the most it may; retry once \
                             older keys' windows end, or send the request without a key"
                        ),
                    )
                    .retryable(true);
                    return Ok(crate::execution::executor::refused(request, error));
                }
            }
        }
        Err(RuntimeError::InvalidRequest(format!(
            "idempotency key `{key}`: the requests sent under it were refused before they ran; \
             send it again"
        )))
    }

    /// Starts accepting executions. Starting a running runtime is a no-op; a stopped one
    /// starts again.
    pub fn start(&self) {
        let lifecycle = &self.lifecycle;
        let _ = lifecycle.compare_exchange(CREATED, RUNNING, Ordering::AcqRel, Ordering::Acquire);
        let _ = lifecycle.compare_exchange(STOPPED, RUNNING, Ordering::AcqRel, Ordering::Acquire);
        self.drive_schedules();
    }

    /// Stops accepting executions, lets in-flight work finish for up to `grace`, then
    /// cancels what is left (softly, then for real) and waits for it to end.
    pub async fn stop(&self, grace: Duration) -> StopReport {
        let shared = &self.shared;
        self.lifecycle.store(STOPPING, Ordering::Release);
        self.wake_schedules();
        let mut cancelled = 0;
        if !shared.activity().idle(Instant::now() + grace).await {
            cancelled = shared.activity().cancel_all(CancelReason::Shutdown);
            // Cancelled guests stop within the cancellation grace period; allow for a loaded
            // machine, then move on regardless.
            let hard = shared.config().cancel_grace * 10 + Duration::from_secs(1);
            shared.activity().idle(Instant::now() + hard).await;
        }
        // What ran last counts in the fleet's counters, and this process no longer runs
        // anything there.
        #[cfg(feature = "redis")]
        if let Some(distributed) = &self.distributed {
            distributed.flush_activity().await;
        }
        self.lifecycle.store(STOPPED, Ordering::Release);
        StopReport { cancelled }
    }

    /// Where the runtime is in its life.
    pub fn state(&self) -> RuntimeState {
        match self.lifecycle.load(Ordering::Acquire) {
            CREATED => RuntimeState::Created,
            RUNNING => RuntimeState::Running,
            STOPPING => RuntimeState::Stopping,
            _ => RuntimeState::Stopped,
        }
    }

    /// Runs `processor` (or a workflow) on `input` with default options.
    pub async fn run(
        &self,
        processor: &str,
        input: Value,
    ) -> Result<ExecutionResult, RuntimeError> {
        self.execute(ExecutionRequest::new(processor, input)).await
    }

    /// Runs `processor` (or a workflow) on `input` in `session`.
    pub async fn execute_in_session(
        &self,
        session: impl Into<String>,
        processor: &str,
        input: Value,
    ) -> Result<ExecutionResult, RuntimeError> {
        self.execute(ExecutionRequest::new(processor, input).session(session))
            .await
    }

    /// Runs one execution to its end and returns its result document.
    ///
    /// Refused (an `Err`) only when the runtime is not running or nothing has the name;
    /// everything a plugin or the input does is in the result. In a session, a successful
    /// result becomes the session's state, written with compare-and-set: if the session's
    /// state moved while this ran, the result is a `conflict` / `state-conflict` failure
    /// instead of a silent overwrite. An input without `metadata` continues from the
    /// session's stored state revision.
    pub async fn execute(
        &self,
        mut request: ExecutionRequest,
    ) -> Result<ExecutionResult, RuntimeError> {
        let shared = &self.shared;
        self.accepting()?;
        if !self.is_distributed() && !shared.registry().contains(&request.processor) {
            return Err(RuntimeError::NotFound {
                reason: shared
                    .registry()
                    .catalog()
                    .why_unavailable(&request.processor),
                name: request.processor,
            });
        }
        if !self.is_distributed() {
            if let Some(key) = request.idempotency_key.take() {
                return Box::pin(self.execute_once(key, request)).await;
            }
            if let Some(on_accept) = &request.on_accept {
                let id = request
                    .id
                    .get_or_insert_with(crate::contract::clock::new_execution_id);
                on_accept.tell(id, false);
            }
        }
        let Some(session) = request.session.clone() else {
            return self.run_request(request).await.map(|(result, _)| result);
        };
        let key = SessionKey::new(request.tenant.as_deref().unwrap_or("default"), session);
        match self.open_session(&key.tenant, &key.session) {
            Ok(()) => {}
            Err(SessionRefused::InvalidId(why)) => return Err(RuntimeError::InvalidRequest(why)),
            Err(refused @ SessionRefused::TooMany { .. }) => {
                let error = ExecutionError::host(
                    ErrorKind::Resource,
                    codes::TOO_MANY_SESSIONS,
                    refused.to_string(),
                )
                .retryable(true);
                return Ok(crate::execution::executor::refused(request, error));
            }
        }
        let expected = match self.base_revision(&key, &mut request.input).await {
            Ok(expected) => expected,
            Err(error) => return Ok(crate::execution::executor::refused(request, error)),
        };
        let (mut result, repeat) = self.run_request(request).await?;
        // A repeat's outcome was kept by the run that had it.
        if result.ok && !repeat {
            self.persist(&key, expected, &mut result).await;
        }
        Ok(result)
    }

    /// Opens `session` of `tenant` for work about to be submitted (or finds it open):
    /// refused if the id is not a session id ([`crate::SessionBounds::check_id`]) or if the tenant
    /// already has [`crate::SessionBounds::max_per_tenant`] sessions that have not expired.
    /// [`Runtime::execute`] does this itself; a server calls it first to answer the caller
    /// before it accepts the work.
    pub fn open_session(&self, tenant: &str, session: &str) -> Result<(), SessionRefused> {
        self.shared
            .activity()
            .open_session(&SessionKey::new(tenant, session))
    }

    /// The revision a session execution starts from. An input without `metadata` takes
    /// the session's stored metadata (so revisions continue).
    async fn base_revision(
        &self,
        key: &SessionKey,
        input: &mut Value,
    ) -> Result<Option<u64>, ExecutionError> {
        let has_metadata = input.get("metadata").is_some_and(|m| !m.is_null());
        if has_metadata {
            let version = input["metadata"]["version"].as_u64().unwrap_or(0);
            return Ok((version > 0).then_some(version));
        }
        let stored = self.shared.state_store().get(key).await?;
        if let (Some(stored), Some(state)) = (&stored, input.as_object_mut())
            && let Some(metadata) = stored.state.get("metadata")
        {
            state.insert("metadata".into(), metadata.clone());
        }
        Ok(stored.map(|s| s.version))
    }

    /// Stores a successful session result as the session's state, or turns it into a
    /// conflict if the state moved meanwhile.
    async fn persist(&self, key: &SessionKey, expected: Option<u64>, result: &mut ExecutionResult) {
        let version = result.state["metadata"]["version"].as_u64().unwrap_or(0);
        let stored = StoredState {
            version,
            state: result.state.clone(),
        };
        let error = match self
            .shared
            .state_store()
            .compare_and_set(key, expected, stored)
            .await
        {
            Ok(CasOutcome::Stored) => return,
            Ok(CasOutcome::Conflict { current }) => ExecutionError::host(
                ErrorKind::Conflict,
                codes::STATE_CONFLICT,
                format!(
                    "session `{}` moved to revision {} while this execution ran from revision \
                     {}; run it again on the session's current state",
                    key.session,
                    current.map_or("none".to_string(), |v| v.to_string()),
                    expected.map_or("none".to_string(), |v| v.to_string()),
                ),
            )
            .retryable(true)
            .with_details(serde_json::json!({ "expected": expected, "current": current })),
            Err(error) => error,
        };
        result.ok = false;
        result.error = Some(error);
    }

    /// Runs many executions concurrently; results come back in request order.
    pub async fn execute_many(
        &self,
        requests: Vec<ExecutionRequest>,
    ) -> Vec<Result<ExecutionResult, RuntimeError>> {
        let mut tasks = tokio::task::JoinSet::new();
        for (index, request) in requests.into_iter().enumerate() {
            let runtime = self.clone();
            tasks.spawn(async move { (index, runtime.execute(request).await) });
        }
        let mut results: Vec<Option<Result<ExecutionResult, RuntimeError>>> = Vec::new();
        results.resize_with(tasks.len(), || None);
        while let Some(joined) = tasks.join_next().await {
            if let Ok((index, result)) = joined {
                results[index] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(RuntimeError::Stopped)))
            .collect()
    }

    /// Cancels a running execution (and everything it started) by id: softly, then for
    /// real after the grace period. False if nothing with that id is running.
    pub fn cancel(&self, execution_id: &str) -> bool {
        self.shared
            .activity()
            .cancel(execution_id, CancelReason::Request)
    }

    /// Stops a session: cancels its running and waiting work (softly, then for real), waits
    /// for it to end, and removes the session's state and key-value data.
    pub async fn stop_session(&self, tenant: &str, session: &str) -> SessionStopReport {
        let shared = &self.shared;
        let key = SessionKey::new(tenant, session);
        let cancelled = shared.activity().cancel_session(&key)
            + self.stop_remote_session(tenant, session).await;
        let hard = shared.config().cancel_grace * 10 + Duration::from_secs(1);
        shared
            .activity()
            .session_idle(&key, Instant::now() + hard)
            .await;
        let removed_state = shared.state_store().delete(&key).await.unwrap_or(false);
        shared.activity().forget_session(&key);
        #[cfg(feature = "redis")]
        if let Some(distributed) = &self.distributed
            && let Err(error) = distributed.forget_session_activity(&key).await
        {
            tracing::warn!(%error, "cannot forget the session's counters in Redis");
        }
        if shared.events().active() {
            let mut event = Event::new(EventKind::SessionStopped, tenant, Some(session));
            event.data = Some(serde_json::json!({ "cancelled": cancelled }));
            shared.events().publish(event);
        }
        SessionStopReport {
            cancelled,
            removed_state,
        }
    }

    /// Stops a session's work through Redis, on a distributed runtime: running jobs are
    /// interrupted by their workers, waiting ones removed (and counted), later-starting
    /// ones cancelled. How many were removed; 0 on a local runtime.
    async fn stop_remote_session(&self, tenant: &str, session: &str) -> usize {
        #[cfg(feature = "redis")]
        if let Some(distributed) = &self.distributed {
            match distributed.stop_session(tenant, session).await {
                Ok(removed) => return removed,
                Err(error) => tracing::warn!(%error, "cannot reach the session's remote work"),
            }
        }
        #[cfg(not(feature = "redis"))]
        let _ = (tenant, session);
        0
    }

    /// The session's stored state, if it has one.
    pub async fn session_state(&self, tenant: &str, session: &str) -> Option<Value> {
        let key = SessionKey::new(tenant, session);
        self.shared
            .state_store()
            .get(&key)
            .await
            .ok()
            .flatten()
            .map(|s| s.state)
    }

    /// What the runtime has done so far.
    pub fn stats(&self) -> RuntimeStats {
        let activity = self.shared.activity();
        RuntimeStats {
            state: self.state(),
            uptime_ms: activity.uptime().as_millis().try_into().unwrap_or(u64::MAX),
            running: activity.running(),
            sessions: activity.sessions().len(),
            processors: activity.processor_stats(),
            tenants: activity.tenant_stats(),
        }
    }

    /// The counters of each version (digest) of processor or workflow `name` this runtime
    /// ran, over every tenant: the [`crate::VERSIONS_KEPT`] latest, in the order each first
    /// ran.
    pub fn version_stats(&self, name: &str) -> Vec<VersionStats> {
        self.shared.activity().version_stats(name)
    }

    /// One session's counters, if it has seen work and not been stopped.
    pub fn session_stats(&self, tenant: &str, session: &str) -> Option<SessionStats> {
        self.shared
            .activity()
            .session_stats(&SessionKey::new(tenant, session))
    }

    /// Every session that has seen work and not been stopped or expired.
    pub fn active_sessions(&self) -> Vec<SessionStats> {
        self.shared.activity().sessions()
    }

    /// The sessions of `tenant` that have seen work and not been stopped or expired.
    pub fn sessions_of(&self, tenant: &str) -> Vec<SessionStats> {
        self.shared.activity().sessions_of(Some(tenant))
    }

    /// Subscribes to this runtime's events (see [`crate::Event`] for the payloads).
    ///
    /// On the distributed runtime, events of every process arrive too (from the moment
    /// this process starts reading them; its first submission waits for that).
    pub fn subscribe(&self) -> Subscription {
        #[cfg(feature = "redis")]
        if let Some(distributed) = &self.distributed
            && !distributed.reading()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let distributed = distributed.clone();
            handle.spawn(async move {
                if let Err(error) = distributed.ensure_reader().await {
                    tracing::warn!(%error, "cannot read other processes' events");
                }
            });
        }
        self.shared.events().subscribe()
    }

    /// The plugin serving `name` right now.
    pub fn plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.shared.registry().get(name)
    }

    /// Every loaded plugin and every rejected file.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.shared.registry().catalog()
    }

    /// Loads (or replaces) the plugin in the file at `path` and publishes it at once: new
    /// executions get it, running ones finish on the version they started with. On failure
    /// the previous version, if any, keeps serving.
    pub async fn load_plugin(&self, path: impl AsRef<Path>) -> Result<Arc<Plugin>, LoadError> {
        let shared = &self.shared;
        let loaded = Plugin::load(
            shared.engine(),
            shared.linker(),
            path.as_ref(),
            &shared.config().loading(),
        )
        .await;
        let plugin = match loaded {
            Ok(plugin) => Arc::new(plugin),
            Err(error) => {
                // The version before (if any) keeps serving; the refusal is in its history.
                // Only a name the catalog knows has a history: refused loads of new names
                // would otherwise pile up.
                if let Some(name) = path.as_ref().file_stem().and_then(|s| s.to_str()) {
                    shared.registry().update(|catalog| {
                        if catalog.plugins.contains_key(name) || catalog.rejected.contains_key(name)
                        {
                            catalog.note(name, PluginChange::rejected(&error.to_string()));
                        }
                    });
                }
                return Err(error);
            }
        };
        // Published before it serves here: a version this process runs, the fleet can.
        #[cfg(feature = "redis")]
        if let Some(distributed) = &self.distributed {
            distributed
                .publish_loaded(&plugin)
                .await
                .map_err(|reason| LoadError::Publish { reason })?;
        }
        shared.registry().update(|catalog| {
            catalog.rejected.remove(plugin.name());
            let reloaded = catalog.plugins.contains_key(plugin.name());
            catalog.note(plugin.name(), PluginChange::loaded(&plugin, reloaded));
            catalog
                .plugins
                .insert(plugin.name().to_string(), plugin.clone());
        });
        Ok(plugin)
    }

    /// Watches `dir` and applies every change to its plugins, manifests and workflows file
    /// while the runtime serves (see [`crate::Watcher`]): changes apply once the folder has
    /// been quiet for `debounce`. Watching stops when the returned watcher is dropped.
    ///
    /// On the distributed runtime, every plugin and workflow that (re)loads is published to
    /// Redis at once, so new runs pin the new version.
    pub fn watch(&self, dir: impl AsRef<Path>, debounce: Duration) -> Result<Watcher, Error> {
        #[cfg(feature = "redis")]
        if let Some(distributed) = &self.distributed {
            distributed.publish_reloads(&self.shared);
        }
        crate::execution::reload::watch(self.shared.clone(), dir.as_ref(), debounce)
    }

    /// Registers (or replaces) a workflow. It is checked against what is loaded now: every
    /// name must resolve, it may not contain itself, and nesting is bounded. On failure
    /// nothing changes and the error says why.
    ///
    /// On the distributed runtime, the definition is published to Redis before this
    /// runtime's next submission.
    pub fn register(&self, workflow: Workflow) -> Result<Arc<Workflow>, InvalidWorkflow> {
        #[cfg(feature = "redis")]
        if let Some(distributed) = &self.distributed {
            distributed.definitions_changed();
        }
        self.shared.registry().register(workflow)
    }

    /// Removes a workflow; returns whether it existed. Workflows that used it become
    /// invalid, with the reason.
    pub fn unregister(&self, name: &str) -> bool {
        self.shared.registry().unregister(name)
    }

    /// The workflow serving `name` right now.
    pub fn workflow(&self, name: &str) -> Option<Arc<Workflow>> {
        self.shared
            .registry()
            .catalog()
            .workflows
            .get(name)
            .cloned()
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        self.shared.engine()
    }

    /// The host policies in force.
    pub fn config(&self) -> &HostConfig {
        self.shared.config()
    }
}
