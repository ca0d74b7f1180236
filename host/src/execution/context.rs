//! What every execution of one runtime shares, and what it runs under: the host's
//! policies ([`HostConfig`]) and the context ([`Shared`]) holding the engine, the registry,
//! the state store, the event bus, what is running and the admission queues, plus where
//! names missing here are found when the process serves the distributed runtime (a
//! [`Published`], which the worker implements: this layer owns the trait).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU8;
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
    /// Deepest static nesting of workflows inside workflows.
    pub max_nesting: usize,
    /// Largest component the host reads and compiles, in bytes (default 64 MiB): a bigger
    /// plugin file, upload or published blob is refused from its size, unread.
    pub max_component_bytes: u64,
    /// Largest `workflows.toml` the host reads, in bytes (default 4 MiB); a bigger file is
    /// rejected from its size, unread, and the workflows already serving keep serving.
    pub max_workflows_file_bytes: u64,
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
            max_nesting: crate::contract::workflow::MAX_NESTING,
            max_batch_items: 10_000,
            max_component_bytes: 64 << 20,
            max_workflows_file_bytes: 4 << 20,
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
            describe_timeout: self.describe_timeout,
            log_rate: self.log_rate,
            guest: self.guest,
        }
    }
}

/// State shared by every execution of one runtime.
pub(crate) struct Shared {
    pub engine: Engine,
    pub linker: Linker<Sandbox>,
    pub registry: Registry,
    pub config: HostConfig,
    pub slots: Semaphore,
    pub store: Arc<dyn StateStore>,
    pub events: EventBus,
    pub activity: Activity,
    pub scheduler: Scheduler,
    /// Where names this process has not loaded are found, when it serves as a worker of
    /// the distributed runtime (see [`Published`]).
    pub(crate) published: Mutex<Option<Weak<dyn Published>>>,
    /// Where the runtime is in its life (see `Runtime::state`).
    pub(crate) lifecycle: AtomicU8,
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

impl Shared {
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
