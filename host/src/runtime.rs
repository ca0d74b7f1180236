//! The local runtime: the in-process entry point that owns the engine, the registry of
//! plugins and the host's policies, and runs executions on the caller's tokio runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use wasmtime::component::Linker;

use crate::cancel::CancelHandle;
use crate::engine::{Engine, EngineConfig};
use crate::error::{Error, LoadError};
use crate::events::{EventBus, Subscription};
use crate::guest_log::LogRate;
use crate::limits::{LimitOverrides, Limits};
use crate::plugin::Plugin;
use crate::registry::{Catalog, Registry};
use crate::result::ExecutionResult;
use crate::sandbox::Sandbox;
use crate::sessions::{SessionQuota, SessionStore};
use crate::workflow::{InvalidWorkflow, Workflow};

/// The host's policies: default limits, ceilings and guest-facing bounds.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Limits for plugins that neither declare nor are granted one.
    pub defaults: Limits,
    /// The most any manifest or plugin can get.
    pub ceilings: Limits,
    /// Guest log lines per execution.
    pub log_rate: LogRate,
    /// Deepest chain of nested `call`s (a call past it fails before running).
    pub max_call_depth: u32,
    /// Time a cancelled guest gets to stop on its own before it is stopped.
    pub cancel_grace: Duration,
    /// Time `describe` gets when a plugin loads.
    pub describe_timeout: Duration,
    /// Bounds of the session store.
    pub session_quota: SessionQuota,
    /// Deepest static nesting of workflows inside workflows.
    pub max_nesting: usize,
    /// Events kept for a slow subscriber before it is told it lagged.
    pub event_capacity: usize,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            defaults: Limits::DEFAULTS,
            ceilings: Limits::CEILINGS,
            log_rate: LogRate::default(),
            max_call_depth: 10,
            cancel_grace: Duration::from_millis(100),
            describe_timeout: Duration::from_secs(5),
            session_quota: SessionQuota::default(),
            max_nesting: crate::workflow::MAX_NESTING,
            event_capacity: 4096,
        }
    }
}

/// What to run and for whom.
#[derive(Debug, Clone)]
pub struct ExecutionRequest {
    /// The processor's name.
    pub processor: String,
    /// The input state (a JSON object).
    pub input: Value,
    /// The tenant (`default` when `None`).
    pub tenant: Option<String>,
    /// The session, if any.
    pub session: Option<String>,
    /// Limits the caller asks for; they can only lower the processor's.
    pub limits: LimitOverrides,
    /// Cancels the execution when triggered.
    pub cancel: CancelHandle,
    /// A caller-chosen execution id (a fresh UUIDv7 when `None`).
    pub id: Option<String>,
}

impl ExecutionRequest {
    /// A request to run `processor` on `input`.
    pub fn new(processor: impl Into<String>, input: Value) -> Self {
        ExecutionRequest {
            processor: processor.into(),
            input,
            tenant: None,
            session: None,
            limits: LimitOverrides::default(),
            cancel: CancelHandle::new(),
            id: None,
        }
    }

    /// Runs in `session`.
    pub fn session(mut self, session: impl Into<String>) -> Self {
        self.session = Some(session.into());
        self
    }

    /// Runs for `tenant`.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Lowers the processor's timeout to `timeout` (never raises it).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.limits.timeout_ms = Some(timeout.as_millis().try_into().unwrap_or(u64::MAX));
        self
    }

    /// Lowers the processor's limits (never raises them).
    pub fn limits(mut self, limits: LimitOverrides) -> Self {
        self.limits = limits;
        self
    }

    /// Uses `cancel` to cancel the execution.
    pub fn cancel_handle(mut self, cancel: CancelHandle) -> Self {
        self.cancel = cancel;
        self
    }
}

/// State shared by every execution of one runtime.
pub(crate) struct Shared {
    pub engine: Engine,
    pub linker: Linker<Sandbox>,
    pub registry: Registry,
    pub config: HostConfig,
    pub slots: Semaphore,
    pub sessions: SessionStore,
    pub events: EventBus,
}

/// The in-process runtime. Cheap to clone; all clones share plugins and limits.
///
/// ```no_run
/// # async fn demo() -> Result<(), weir::Error> {
/// let runtime = weir::Runtime::builder().plugins_dir("plugins/dist").build().await?;
/// let result = runtime.run("increment", serde_json::json!({ "count": 1 })).await;
/// assert_eq!(result.state["count"], 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
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

    /// Runs `processor` on `input` with default options.
    pub async fn run(&self, processor: &str, input: Value) -> ExecutionResult {
        self.execute(ExecutionRequest::new(processor, input)).await
    }

    /// Runs one execution to its end and returns its result document. Never panics on
    /// anything a plugin or the input does: every failure is in the result.
    pub async fn execute(&self, request: ExecutionRequest) -> ExecutionResult {
        crate::executor::execute(&self.shared, request).await
    }

    /// Subscribes to this runtime's events (see [`crate::Event`] for the payloads).
    pub fn subscribe(&self) -> Subscription {
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
                &shared.config,
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

    /// Registers (or replaces) a workflow. It is checked against what is loaded now: every
    /// name must resolve, it may not contain itself, and nesting is bounded. On failure
    /// nothing changes and the error says why.
    pub fn register(&self, workflow: Workflow) -> Result<Arc<Workflow>, InvalidWorkflow> {
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

    /// Sets the compile cache directory (`None` disables the cache).
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.engine.cache_dir = dir;
        self
    }

    /// Builds the engine and loads the plugins. Broken plugin files are rejected (see
    /// [`Runtime::catalog`]), not errors; a missing plugins folder is.
    pub async fn build(mut self) -> Result<Runtime, Error> {
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
        let sessions = SessionStore::new(self.host.session_quota);
        let events = EventBus::new(self.host.event_capacity);
        Ok(Runtime {
            shared: Arc::new(Shared {
                engine,
                linker,
                registry,
                config: self.host,
                slots,
                sessions,
                events,
            }),
        })
    }
}
