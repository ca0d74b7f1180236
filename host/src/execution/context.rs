//! What every execution of one runtime shares, and what it runs under: the host's
//! policies ([`HostConfig`]) and the context ([`Context`]) holding the engine, the registry,
//! the state store, the event bus, what is running and the admission queues, plus where
//! names missing here are found when the process serves the distributed runtime (a
//! [`Published`], which the worker implements: this layer owns the trait).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::Linker;

use crate::contract::bounds::GuestBounds;
use crate::contract::error::ExecutionError;
use crate::contract::limits::Limits;
use crate::contract::state_store::{SessionBounds, SessionQuota, StateStore};
use crate::execution::activity::Activity;
use crate::execution::registry::{Registry, Unit};
use crate::execution::scheduler::Scheduler;
use crate::sandbox::Sandbox;
use crate::sandbox::engine::Engine;
use crate::sandbox::events::EventBus;
use crate::sandbox::guest_log::LogRate;
use crate::sandbox::plugin::LoadPolicy;

/// The host's policies: default limits, ceilings and guest-facing bounds.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// Limits for plugins that neither declare nor are granted one.
    pub defaults: Limits,
    /// The most any manifest or plugin can get.
    pub ceilings: Limits,
    /// Guest log lines per execution.
    pub log_rate: LogRate,
    /// What one execution's guest may hand the host: events, errors, log lines.
    pub guest: GuestBounds,
    /// Deepest chain of nested `call`s (a call past it fails before running).
    pub max_call_depth: u32,
    /// Time a cancelled guest gets to stop on its own before it is stopped.
    pub cancel_grace: Duration,
    /// Time `describe` gets when a plugin loads.
    pub describe_timeout: Duration,
    /// Bounds of the session store.
    pub session_quota: SessionQuota,
    /// Bounds on sessions: id, count per tenant, idle expiry (of counters, state and data).
    pub sessions: SessionBounds,
    /// Bounds on idempotency keys: length, window, count per tenant and in all, and the
    /// bytes of outcomes kept for them.
    pub idempotency: crate::contract::idempotency::IdempotencyBounds,
    /// Bounds on schedules: count per tenant and in all, the shortest interval, the input
    /// each keeps.
    pub schedules: crate::contract::schedule::ScheduleBounds,
    /// Deepest static nesting of workflows inside workflows.
    pub max_nesting: usize,
    /// Largest component the host reads and compiles, in bytes (default 64 MiB): a bigger
    /// plugin file, upload or published blob is refused from its size, unread.
    pub max_component_bytes: u64,
    /// Largest `workflows.toml` the host reads, in bytes (default 4 MiB); a bigger file is
    /// rejected from its size, unread, and the workflows already serving keep serving.
    pub max_workflows_file_bytes: u64,
    /// Largest operator manifest (`NAME.toml` beside a plugin) the host reads, in bytes
    /// (default 1 MiB); a bigger one fails its plugin's load with the reason, unparsed, and
    /// the plugins already serving keep serving.
    pub max_manifest_bytes: u64,
    /// Most items one batch takes (default 10,000); more fail the batch with
    /// `validation` / `batch-too-large` before any item runs.
    pub max_batch_items: usize,
    /// Events kept for a slow subscriber before it is told it lagged.
    pub event_capacity: usize,
    /// Bytes of event payloads (data, error details) kept for a slow subscriber (default
    /// 16 MiB). Past it a guest's `emit` is refused and host events lose their payload.
    pub event_buffer_bytes: usize,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            defaults: Limits::DEFAULTS,
            ceilings: Limits::CEILINGS,
            log_rate: LogRate::default(),
            guest: GuestBounds::default(),
            max_call_depth: 10,
            cancel_grace: Duration::from_millis(100),
            describe_timeout: Duration::from_secs(5),
            session_quota: SessionQuota::default(),
            sessions: SessionBounds::default(),
            idempotency: Default::default(),
            schedules: Default::default(),
            max_nesting: crate::contract::workflow::MAX_NESTING,
            max_batch_items: 10_000,
            max_component_bytes: 64 << 20,
            max_workflows_file_bytes: 4 << 20,
            max_manifest_bytes: 1 << 20,
            event_capacity: 4096,
            event_buffer_bytes: 16 << 20,
        }
    }
}

impl HostConfig {
    /// What loading a plugin is held to under this configuration.
    pub(crate) fn loading(&self) -> LoadPolicy {
        LoadPolicy {
            defaults: self.defaults,
            ceilings: self.ceilings,
            max_component_bytes: self.max_component_bytes,
            max_manifest_bytes: self.max_manifest_bytes,
            describe_timeout: self.describe_timeout,
            log_rate: self.log_rate,
            guest: self.guest,
        }
    }
}

/// What every execution of one runtime shares: the engine and the linker its sandboxes
/// are made with, the registry of names, the host's policies, the sandbox slots, the state
/// store, the event bus, what is running, and the admission queues. Built once by the
/// runtime; every layer that holds one reads it through its accessors.
pub(crate) struct Context {
    engine: Engine,
    linker: Linker<Sandbox>,
    registry: Registry,
    config: HostConfig,
    /// One permit per sandbox that may exist at once (the engine's `max_instances`).
    slots: Semaphore,
    state_store: Arc<dyn StateStore>,
    events: EventBus,
    activity: Activity,
    scheduler: Scheduler,
    /// Where names this process has not loaded are found, when it serves as a worker of
    /// the distributed runtime (see [`Published`]).
    published: Mutex<Option<Weak<dyn Published>>>,
}

/// What a worker of the distributed runtime offers a guest's nested `call` (and the steps
/// of a workflow it calls) for a name this process has not loaded: the component or
/// workflow published to Redis under that name now, fetched by digest.
pub(crate) trait Published: Send + Sync {
    /// The unit published as `name`: `Ok(None)` when there is none (or it cannot load, which
    /// is logged), an error when Redis cannot say.
    fn resolve<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Unit>, ExecutionError>> + Send + 'a>>;
}

impl Context {
    /// A context over `engine` and the rest, with as many sandbox slots as the engine
    /// allows instances, and nothing running yet.
    pub(crate) fn new(
        engine: Engine,
        linker: Linker<Sandbox>,
        registry: Registry,
        config: HostConfig,
        state_store: Arc<dyn StateStore>,
        events: EventBus,
    ) -> Self {
        let slots = Semaphore::new(engine.config().max_instances as usize);
        let activity = Activity::new(config.sessions);
        Self {
            engine,
            linker,
            registry,
            config,
            slots,
            state_store,
            events,
            activity,
            scheduler: Scheduler::default(),
            published: Mutex::new(None),
        }
    }

    /// The engine every sandbox of this runtime is made with.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker every sandbox of this runtime is instantiated with.
    pub(crate) fn linker(&self) -> &Linker<Sandbox> {
        &self.linker
    }

    /// The names this runtime resolves: plugins and workflows.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The host's policies.
    pub(crate) fn config(&self) -> &HostConfig {
        &self.config
    }

    /// The sandbox slots: one permit per sandbox that may exist at once.
    pub(crate) fn slots(&self) -> &Semaphore {
        &self.slots
    }

    /// Where sessions' state and key-value data live.
    pub(crate) fn state_store(&self) -> &Arc<dyn StateStore> {
        &self.state_store
    }

    /// The runtime's event bus.
    pub(crate) fn events(&self) -> &EventBus {
        &self.events
    }

    /// What is running, and each processor's and session's figures.
    pub(crate) fn activity(&self) -> &Activity {
        &self.activity
    }

    /// The per-processor admission queues.
    pub(crate) fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Makes `published` the place names missing here are looked for (until it is dropped;
    /// the worker started last wins).
    #[cfg(feature = "redis")]
    pub(crate) fn set_published_resolver(&self, published: Weak<dyn Published>) {
        *self.published.lock().unwrap_or_else(|p| p.into_inner()) = Some(published);
    }

    /// `name` as published for the distributed runtime's workers, if this process serves
    /// as one; `Ok(None)` otherwise.
    pub(crate) async fn resolve_published(
        &self,
        name: &str,
    ) -> Result<Option<Unit>, ExecutionError> {
        let published = self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(Weak::upgrade);
        match published {
            Some(published) => published.resolve(name).await,
            None => Ok(None),
        }
    }
}
