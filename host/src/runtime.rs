//! The local runtime: the in-process entry point that owns the engine, the registry of
//! plugins and workflows, the state store and the host's policies, and runs executions on
//! the caller's tokio runtime. It has a lifecycle: built, started (accepting work), stopped
//! (in-flight work finished or cancelled within a grace period).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use serde_json::Value;
use tokio::sync::Semaphore;

use crate::activity::{Activity, ProcessorStats, SessionRefused, SessionStats};
use crate::cancel::CancelReason;
use crate::distributed::{
    DeadJob, Distributed, RedisConfig, RunStatus, WorkerConfig, WorkerHandle,
};
use crate::engine::{Engine, EngineConfig};
use crate::error::{Error, ErrorKind, ExecutionError, LoadError, RuntimeError, codes};
use crate::events::{Event, EventBus, EventKind, Subscription};
use crate::plugin::Plugin;
use crate::redis_store::RedisStateStore;
use crate::registry::{Catalog, Registry};
use crate::reload::Watcher;
use crate::result::ExecutionResult;
use crate::scheduler::Scheduler;
use crate::store::{CasOutcome, MemoryStateStore, SessionKey, StateStore, StoredState};
use crate::workflow::{InvalidWorkflow, Workflow};

pub(crate) use crate::context::{HostConfig, Shared};
use crate::request::ExecutionRequest;

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
    shared: Arc<Shared>,
    /// Set when the runtime runs work through Redis ([`Runtime::redis`]).
    distributed: Option<Arc<Distributed>>,
    plugins_dir: Option<PathBuf>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("engine", &self.shared.engine)
            .field("plugins", &self.shared.registry.catalog().names())
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

    /// Starts configuring the distributed runtime on the Redis at `url`: the same API, with
    /// every execution run as jobs by `weir worker` processes (see [`Runtime::serve`]).
    /// The plugins and workflows this runtime loads are published to Redis, so any worker
    /// can run them; sessions' state is kept in Redis.
    pub fn redis(url: impl Into<String>) -> RuntimeBuilder {
        RuntimeBuilder::default().redis_config(RedisConfig::new(url))
    }

    /// The plugins folder this runtime was built over, if any.
    pub fn plugins_folder(&self) -> Option<&Path> {
        self.plugins_dir.as_deref()
    }

    /// Whether executions run through Redis.
    pub fn is_distributed(&self) -> bool {
        self.distributed.is_some()
    }

    /// A connection to the distributed runtime's Redis, and the key prefix under which an
    /// embedding keeps its own data called `name` there (all its keys start with it, inside
    /// the fleet's namespace): how state an embedding shares with the whole fleet, such as
    /// the HTTP server's tenant quota ledger, is kept. `None` on a local runtime.
    pub fn redis_namespace(
        &self,
        name: &str,
    ) -> Option<(redis::aio::ConnectionManager, String)> {
        let distributed = self.distributed.as_ref()?;
        Some((distributed.conn(), distributed.keys.own(name)))
    }

    fn distributed(&self) -> Result<&Arc<Distributed>, RuntimeError> {
        self.distributed.as_ref().ok_or_else(|| {
            RuntimeError::Unavailable(
                "this runtime is local: build it with Runtime::redis(url) to use runs in Redis"
                    .into(),
            )
        })
    }

    /// Submits an execution to the distributed runtime and returns its run id at once; the
    /// run continues without this process. Read it with [`Runtime::run_status`] or wait for
    /// it with [`Runtime::wait_run`].
    pub async fn submit(&self, request: ExecutionRequest) -> Result<String, RuntimeError> {
        self.accepting()?;
        let distributed = self.distributed()?;
        distributed
            .publish_if_changed(&self.shared.registry)
            .await
            .map_err(refusal)?;
        // Events of the run reach this process's subscribers from the start.
        distributed.ensure_reader().await.map_err(refusal)?;
        match distributed.submit(request).await {
            Ok(Ok(run)) => Ok(run),
            Ok(Err(refused)) => Err(not_published(refused)),
            Err(error) => Err(refusal(error)),
        }
    }

    /// Cancels the run `id` of the distributed runtime wherever its jobs are: running steps
    /// are interrupted (softly, then for real), steps not started yet are cancelled when
    /// they start. The run ends with a `cancelled` result. False if there is no such run
    /// or it has ended.
    pub async fn cancel_run(&self, id: &str) -> Result<bool, RuntimeError> {
        let distributed = self.distributed()?;
        let unavailable = refusal;
        let running = distributed
            .status(id)
            .await
            .map_err(unavailable)?
            .is_some_and(|status| status.result.is_none());
        if running {
            let target = crate::distributed::CancelTarget::Run { id: id.to_string() };
            distributed
                .cancel(target, CancelReason::Request)
                .await
                .map_err(unavailable)?;
        }
        Ok(running)
    }

    /// The dead-letter set of the distributed runtime: the newest `limit` jobs that failed
    /// for good, in `queue` or in every published processor's queue.
    pub async fn dead_jobs(
        &self,
        queue: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadJob>, RuntimeError> {
        self.distributed()?
            .dead_jobs(queue, limit)
            .await
            .map_err(refusal)
    }

    /// Redrives the dead job `id` of `queue`: it runs again with fresh attempts, and its
    /// run carries on from it to a new outcome.
    pub async fn redrive(&self, queue: &str, id: &str) -> Result<(), Error> {
        let distributed = self.distributed.as_ref().ok_or_else(|| {
            Error::Config("only a runtime built with Runtime::redis(url) has dead jobs".into())
        })?;
        distributed.redrive(queue, id).await
    }

    /// A run of the distributed runtime as Redis knows it; `None` if there is no such run
    /// (or its record has expired).
    /// A run whose deadline has passed (with `RedisConfig::lost_grace`) without an outcome
    /// is given its `run-lost` outcome here.
    pub async fn run_status(&self, id: &str) -> Result<Option<RunStatus>, RuntimeError> {
        self.distributed()?
            .settled_status(id)
            .await
            .map_err(refusal)
    }

    /// Whether any `weir worker` is connected to the distributed runtime's Redis (each says
    /// so every few seconds).
    pub async fn workers_alive(&self) -> Result<bool, RuntimeError> {
        self.distributed()?.any_worker().await.map_err(refusal)
    }

    /// Waits for the outcome of the run `id` of the distributed runtime.
    pub async fn wait_run(&self, id: &str) -> Result<ExecutionResult, RuntimeError> {
        self.distributed()?.wait(id).await.map_err(refusal)
    }

    /// Serves the distributed runtime's queues from this process: runs the jobs of every
    /// processor published to Redis until the returned handle is closed.
    pub async fn serve(&self, config: WorkerConfig) -> Result<WorkerHandle, Error> {
        let distributed = self.distributed.clone().ok_or_else(|| {
            Error::Config("only a runtime built with Runtime::redis(url) can serve queues".into())
        })?;
        WorkerHandle::start(
            self.shared.clone(),
            distributed,
            self.plugins_dir.clone(),
            config,
        )
        .await
    }

    /// Publishes the component in `path` to Redis as the processor named by its file stem,
    /// so that workers can run it without having the file; returns its digest. The
    /// component is loaded and validated here first.
    pub async fn push_plugin(&self, path: impl AsRef<Path>) -> Result<String, Error> {
        let distributed = self.distributed.clone().ok_or_else(|| {
            Error::Config("only a runtime built with Runtime::redis(url) can push plugins".into())
        })?;
        let path = path.as_ref();
        let shared = &self.shared;
        let plugin = Plugin::load(
            &shared.engine,
            &shared.linker,
            path,
            &shared.config.loading(),
        )
        .await
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        distributed
            .push_plugin(plugin.name(), plugin.version(), &bytes)
            .await
    }

    fn accepting(&self) -> Result<(), RuntimeError> {
        match self.shared.lifecycle.load(Ordering::Acquire) {
            RUNNING => Ok(()),
            CREATED => Err(RuntimeError::NotStarted),
            _ => Err(RuntimeError::Stopped),
        }
    }

    /// Runs `request` here, or through Redis and waits for its outcome.
    async fn run_request(
        &self,
        request: ExecutionRequest,
    ) -> Result<ExecutionResult, RuntimeError> {
        match &self.distributed {
            None => Ok(crate::executor::execute(&self.shared, request).await),
            // Boxed: its futures are large, and the local path's future would otherwise be
            // as large and copied whole at every level of every local execution.
            Some(distributed) => Box::pin(self.run_remote(distributed, request)).await,
        }
    }

    /// Submits `request` through Redis and waits for its outcome.
    async fn run_remote(
        &self,
        distributed: &Distributed,
        request: ExecutionRequest,
    ) -> Result<ExecutionResult, RuntimeError> {
        let unavailable = refusal;
        distributed
            .publish_if_changed(&self.shared.registry)
            .await
            .map_err(unavailable)?;
        let cancel = request.cancel.clone();
        let mut request = request;
        let id = request
            .id
            .get_or_insert_with(crate::clock::new_execution_id)
            .clone();
        // Listening before submitting: the outcome cannot come first.
        let receiver = distributed.expect(&id).await.map_err(unavailable)?;
        let run = match distributed.submit(request).await {
            Ok(Ok(run)) => run,
            Ok(Err(refused)) => {
                distributed.unexpect(&id);
                return Err(not_published(refused));
            }
            Err(error) => {
                distributed.unexpect(&id);
                return Err(unavailable(error));
            }
        };
        // The caller's cancel handle (e.g. Ctrl-C on `weir run`) cancels the run wherever
        // it is; its outcome (cancelled) still comes back.
        let wait = distributed.outcome(&run, receiver);
        tokio::pin!(wait);
        tokio::select! {
            result = &mut wait => return result.map_err(unavailable),
            _ = cancel.cancelled() => {}
        }
        let reason = cancel.reason().unwrap_or(CancelReason::Request);
        let target = crate::distributed::CancelTarget::Run { id: run.clone() };
        distributed
            .cancel(target, reason)
            .await
            .map_err(unavailable)?;
        wait.await.map_err(unavailable)
    }

    /// Starts accepting executions. Starting a running runtime is a no-op; a stopped one
    /// starts again.
    pub fn start(&self) {
        let lifecycle = &self.shared.lifecycle;
        let _ = lifecycle.compare_exchange(CREATED, RUNNING, Ordering::AcqRel, Ordering::Acquire);
        let _ = lifecycle.compare_exchange(STOPPED, RUNNING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Stops accepting executions, lets in-flight work finish for up to `grace`, then
    /// cancels what is left (softly, then for real) and waits for it to end.
    pub async fn stop(&self, grace: Duration) -> StopReport {
        let shared = &self.shared;
        shared.lifecycle.store(STOPPING, Ordering::Release);
        let mut cancelled = 0;
        if !shared.activity.idle(Instant::now() + grace).await {
            cancelled = shared.activity.cancel_all(CancelReason::Shutdown);
            // Cancelled guests stop within the cancellation grace period; allow for a loaded
            // machine, then move on regardless.
            let hard = shared.config.cancel_grace * 10 + Duration::from_secs(1);
            shared.activity.idle(Instant::now() + hard).await;
        }
        shared.lifecycle.store(STOPPED, Ordering::Release);
        StopReport { cancelled }
    }

    /// Where the runtime is in its life.
    pub fn state(&self) -> RuntimeState {
        match self.shared.lifecycle.load(Ordering::Acquire) {
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
        if self.distributed.is_none() && !shared.registry.contains(&request.processor) {
            return Err(RuntimeError::NotFound {
                reason: shared
                    .registry
                    .catalog()
                    .why_unavailable(&request.processor),
                name: request.processor,
            });
        }
        let Some(session) = request.session.clone() else {
            return self.run_request(request).await;
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
                return Ok(crate::executor::refused(request, error));
            }
        }
        let expected = match self.base_revision(&key, &mut request.input).await {
            Ok(expected) => expected,
            Err(error) => return Ok(crate::executor::refused(request, error)),
        };
        let mut result = self.run_request(request).await?;
        if result.ok {
            self.persist(&key, expected, &mut result).await;
        }
        Ok(result)
    }

    /// Opens `session` of `tenant` for work about to be submitted (or finds it open):
    /// refused if the id is not a session id ([`SessionBounds::check_id`]) or if the tenant
    /// already has [`SessionBounds::max_per_tenant`] sessions that have not expired.
    /// [`Runtime::execute`] does this itself; a server calls it first to answer the caller
    /// before it accepts the work.
    pub fn open_session(&self, tenant: &str, session: &str) -> Result<(), SessionRefused> {
        self.shared
            .activity
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
        let stored = self.shared.store.get(key).await?;
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
            .store
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
            .activity
            .cancel(execution_id, CancelReason::Request)
    }

    /// Stops a session: cancels its running and waiting work (softly, then for real), waits
    /// for it to end, and removes the session's state and key-value data.
    pub async fn stop_session(&self, tenant: &str, session: &str) -> SessionStopReport {
        let shared = &self.shared;
        let key = SessionKey::new(tenant, session);
        let mut cancelled = shared.activity.cancel_session(&key);
        if let Some(distributed) = &self.distributed {
            // Everywhere: running jobs are interrupted by their workers, waiting ones
            // removed (and counted), later-starting ones cancelled.
            match distributed.stop_session(tenant, session).await {
                Ok(removed) => cancelled += removed,
                Err(error) => tracing::warn!(%error, "cannot reach the session's remote work"),
            }
        }
        let hard = shared.config.cancel_grace * 10 + Duration::from_secs(1);
        shared
            .activity
            .session_idle(&key, Instant::now() + hard)
            .await;
        let removed_state = shared.store.delete(&key).await.unwrap_or(false);
        shared.activity.forget_session(&key);
        if shared.events.active() {
            let mut event = Event::new(EventKind::SessionStopped, tenant, Some(session));
            event.data = Some(serde_json::json!({ "cancelled": cancelled }));
            shared.events.publish(event);
        }
        SessionStopReport {
            cancelled,
            removed_state,
        }
    }

    /// The session's stored state, if it has one.
    pub async fn session_state(&self, tenant: &str, session: &str) -> Option<Value> {
        let key = SessionKey::new(tenant, session);
        self.shared
            .store
            .get(&key)
            .await
            .ok()
            .flatten()
            .map(|s| s.state)
    }

    /// What the runtime has done so far.
    pub fn stats(&self) -> RuntimeStats {
        let activity = &self.shared.activity;
        RuntimeStats {
            state: self.state(),
            uptime_ms: activity.uptime().as_millis().try_into().unwrap_or(u64::MAX),
            running: activity.running(),
            sessions: activity.sessions().len(),
            processors: activity.processor_stats(),
            tenants: activity.tenant_stats(),
        }
    }

    /// One session's counters, if it has seen work and not been stopped.
    pub fn session_stats(&self, tenant: &str, session: &str) -> Option<SessionStats> {
        self.shared
            .activity
            .session_stats(&SessionKey::new(tenant, session))
    }

    /// Every session that has seen work and not been stopped or expired.
    pub fn active_sessions(&self) -> Vec<SessionStats> {
        self.shared.activity.sessions()
    }

    /// The sessions of `tenant` that have seen work and not been stopped or expired.
    pub fn sessions_of(&self, tenant: &str) -> Vec<SessionStats> {
        self.shared.activity.sessions_of(Some(tenant))
    }

    /// Subscribes to this runtime's events (see [`crate::Event`] for the payloads).
    ///
    /// On the distributed runtime, events of every process arrive too (from the moment
    /// this process starts reading them; its first submission waits for that).
    pub fn subscribe(&self) -> Subscription {
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
        self.shared.events.subscribe()
    }

    /// The plugin serving `name` right now.
    pub fn plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.shared.registry.get(name)
    }

    /// Every loaded plugin and every rejected file.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.shared.registry.catalog()
    }

    /// Loads (or replaces) the plugin in the file at `path` and publishes it at once: new
    /// executions get it, running ones finish on the version they started with. On failure
    /// the previous version, if any, keeps serving.
    pub async fn load_plugin(&self, path: impl AsRef<Path>) -> Result<Arc<Plugin>, LoadError> {
        let shared = &self.shared;
        let plugin = Arc::new(
            Plugin::load(
                &shared.engine,
                &shared.linker,
                path.as_ref(),
                &shared.config.loading(),
            )
            .await?,
        );
        shared.registry.update(|catalog| {
            catalog.rejected.remove(plugin.name());
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
        if let Some(distributed) = &self.distributed {
            distributed.publish_reloads(&self.shared);
        }
        crate::reload::watch(self.shared.clone(), dir.as_ref(), debounce)
    }

    /// Registers (or replaces) a workflow. It is checked against what is loaded now: every
    /// name must resolve, it may not contain itself, and nesting is bounded. On failure
    /// nothing changes and the error says why.
    ///
    /// On the distributed runtime, the definition is published to Redis before this
    /// runtime's next submission.
    pub fn register(&self, workflow: Workflow) -> Result<Arc<Workflow>, InvalidWorkflow> {
        if let Some(distributed) = &self.distributed {
            distributed.definitions_changed();
        }
        self.shared.registry.register(workflow)
    }

    /// Removes a workflow; returns whether it existed. Workflows that used it become
    /// invalid, with the reason.
    pub fn unregister(&self, name: &str) -> bool {
        self.shared.registry.unregister(name)
    }

    /// The workflow serving `name` right now.
    pub fn workflow(&self, name: &str) -> Option<Arc<Workflow>> {
        self.shared.registry.catalog().workflows.get(name).cloned()
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.shared.engine
    }

    /// The host policies in force.
    pub fn config(&self) -> &HostConfig {
        &self.shared.config
    }
}

/// Configures and builds a [`Runtime`].
#[derive(Debug, Default)]
pub struct RuntimeBuilder {
    plugins_dir: Option<PathBuf>,
    engine: EngineConfig,
    host: HostConfig,
    store: Option<Arc<dyn StateStore>>,
    redis: Option<RedisConfig>,
    trust: Option<crate::distributed::Trust>,
}

impl RuntimeBuilder {
    /// Loads plugins from `dir` (every `*.wasm` directly inside it).
    pub fn plugins_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.plugins_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Sets the engine configuration.
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine = config;
        self
    }

    /// Sets the host policies.
    pub fn host_config(mut self, config: HostConfig) -> Self {
        self.host = config;
        self
    }

    /// Keeps sessions' state and data in `store` (by default, in memory).
    pub fn state_store(mut self, store: Arc<dyn StateStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Runs work through the Redis `config` describes (see [`Runtime::redis`]).
    pub fn redis_config(mut self, config: RedisConfig) -> Self {
        self.redis = Some(config);
        self
    }

    /// Sets how the distributed runtime's processes tell their fleet's writes to Redis
    /// from anyone else's: the fleet key (replacing [`RedisConfig::trust`], whichever was
    /// set first). Without it the distributed runtime refuses to start.
    pub fn trust(mut self, trust: crate::distributed::Trust) -> Self {
        self.trust = Some(trust);
        self
    }

    /// Sets the compile cache directory (`None` disables the cache).
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.engine.cache_dir = dir;
        self
    }

    /// Builds the engine and loads the plugins and workflows; the runtime accepts work once
    /// [`Runtime::start`] is called. Broken plugin files are rejected (see
    /// [`Runtime::catalog`]), not errors; a missing plugins folder is.
    pub async fn build(mut self) -> Result<Runtime, Error> {
        if let (Some(config), Some(trust)) = (&mut self.redis, self.trust.take()) {
            config.trust = trust;
        }
        // Said before anything is compiled or connected.
        if let Some(config) = &self.redis {
            crate::distributed::check_trust(config)?;
        }
        if self.host.ceilings.memory_bytes > self.engine.max_memory_bytes {
            self.engine.max_memory_bytes = self.host.ceilings.memory_bytes;
        }
        let engine = Engine::new(self.engine)?;
        let linker = crate::sandbox::linker(&engine)?;
        let registry = Registry::new(self.host.max_nesting);
        if let Some(dir) = &self.plugins_dir {
            registry.load_dir(&engine, &linker, dir, &self.host).await?;
        }
        let slots = Semaphore::new(engine.config().max_instances as usize);
        let distributed = match &self.redis {
            Some(config) => {
                let distributed =
                    Distributed::connect(config.clone(), self.host.max_batch_items).await?;
                distributed.publish(&registry.catalog()).await?;
                // Events are shared once the runtime exists (below).
                if self.store.is_none() {
                    let store = RedisStateStore::connect(config, self.host.session_quota)
                        .await?
                        .with_idle_expiry(self.host.sessions.idle_expiry);
                    self.store = Some(Arc::new(store));
                }
                Some(distributed)
            }
            None => None,
        };
        let store = self.store.unwrap_or_else(|| {
            Arc::new(
                MemoryStateStore::new(self.host.session_quota)
                    .with_idle_expiry(self.host.sessions.idle_expiry),
            )
        });
        let events = EventBus::new(self.host.event_capacity, self.host.event_buffer_bytes);
        let sessions = self.host.sessions;
        let shared = Arc::new(Shared {
            engine,
            linker,
            registry,
            config: self.host,
            slots,
            store,
            events,
            activity: Activity::new(sessions),
            scheduler: Scheduler::default(),
            published: Mutex::new(None),
            lifecycle: AtomicU8::new(CREATED),
        });
        if let Some(distributed) = &distributed {
            distributed.share_events(&shared);
        }
        Ok(Runtime {
            shared,
            distributed,
            plugins_dir: self.plugins_dir,
        })
    }
}

/// The refusal of a run whose name nothing published.
fn not_published(refused: ExecutionResult) -> RuntimeError {
    RuntimeError::NotFound {
        reason: refused
            .error
            .map(|e| e.message)
            .unwrap_or_else(|| format!("`{}` is not published", refused.execution.processor)),
        name: refused.execution.processor,
    }
}

/// A distributed runtime's error as the caller sees it: the request's fault, or Redis's.
fn refusal(error: Error) -> RuntimeError {
    match error {
        Error::Config(message) => RuntimeError::InvalidRequest(message),
        other => RuntimeError::Unavailable(other.to_string()),
    }
}
