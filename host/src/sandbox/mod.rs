//! The sandbox layer: one attempt of one execution in one wasmtime store. The engine and
//! its compile cache, plugins (compiled, validated and pre-instantiated), warm instances,
//! the guest's log, outbound HTTP under the operator's grant and the event bus live here;
//! this file is the store data itself.
//!
//! One execution's sandbox: the store data of a fresh instance. It holds the limits (memory
//! cap, fuel, deadline), the WASI context built from the operator's grants only (by default:
//! clocks and random, no files, environment, arguments or network), the guest's log sink,
//! the `wasi:http` hooks that hold outbound requests to the operator's grant (see
//! [`crate::sandbox::outbound`]), and the host side of every weir import (`log`, `emit`, `progress`,
//! `call`, `cancelled`, `config`, the session store).
//!
//! What an import reaches beyond the sandbox (another execution for `call`, the session's
//! data, the event bus, whoever follows the progress) is the layer above's: it hands each
//! execution's sandbox a [`GuestServices`], and this layer never names its types.
//!
//! A store is cheap and short-lived: created for one attempt and dropped after it, so
//! nothing a guest does survives into the next execution.

pub(crate) mod bindings;
pub(crate) mod cache;
pub(crate) mod compiler;
pub(crate) mod engine;
pub(crate) mod events;
pub(crate) mod guest_log;
pub(crate) mod outbound;
pub(crate) mod plugin;
pub(crate) mod warm;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::contract::bounds::{Bucket, GuestBounds, clip, clip_str, escape_controls};
use crate::contract::cancel::CancelHandle;
use crate::contract::error::{Error, ErrorKind, ExecutionError, codes};
use crate::contract::manifest::Capabilities;
use crate::sandbox::bindings::{Processor, weir::processor as imports, wit};
use crate::sandbox::engine::Engine;
use crate::sandbox::events::{Event, EventBus, EventKind};
use crate::sandbox::guest_log::{GuestLog, GuestStream, Level};
use crate::sandbox::outbound::OutboundHttp;

/// Errors the host raises inside a running guest to stop it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HostTrap {
    /// The attempt's deadline passed while the guest was running.
    #[error("the execution's deadline passed")]
    Deadline,
    /// The guest tried to grow its memory past the cap.
    #[error("memory limit of {limit} bytes exceeded (the guest asked for {requested} bytes)")]
    MemoryLimit { limit: u64, requested: u64 },
}

/// Tracks and caps the linear memory of one instance (all its memories together).
pub(crate) struct MemoryLimiter {
    cap: u64,
    pub(crate) current: u64,
    pub(crate) peak: u64,
    pub(crate) hit: bool,
}

impl MemoryLimiter {
    fn new(cap: u64) -> Self {
        MemoryLimiter {
            cap,
            current: 0,
            peak: 0,
            hit: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let next = self.current - (current as u64).min(self.current) + desired as u64;
        if next > self.cap {
            self.hit = true;
            return Err(wasmtime::Error::new(HostTrap::MemoryLimit {
                limit: self.cap,
                requested: next,
            }));
        }
        self.current = next;
        self.peak = self.peak.max(next);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// What a running guest's imports reach beyond its sandbox: another execution (`call`), the
/// session's key-value data, the event bus and whoever follows the execution's progress.
/// The execution layer implements it for each execution it runs (this layer owns the trait,
/// as `wasmtime-wasi` owns `WasiView`); a sandbox without one, a plugin being described,
/// answers these imports with `not-available`.
#[async_trait::async_trait]
pub(crate) trait GuestServices: Send + Sync {
    /// The bus the execution's events are published on.
    fn events(&self) -> &EventBus;

    /// A new event of `kind` about the running execution (its tenant, session and id), or
    /// `None` when no one listens.
    fn event(&self, kind: EventKind) -> Option<Event>;

    /// Hands the guest's latest progress report to whoever follows the execution (besides
    /// the event stream).
    fn progress(&self, percent: u8, message: &str);

    /// Runs `name` on `state` for the guest, one call deeper, by `deadline` and cancelled
    /// with `cancel`: the output (or the error the guest sees), and the fuel it burnt.
    async fn call(
        &self,
        name: String,
        state: String,
        deadline: Instant,
        cancel: CancelHandle,
    ) -> (Result<String, ExecutionError>, u64);

    /// The value under `key` in the session's data.
    async fn kv_get(&self, key: String) -> Result<Option<Vec<u8>>, ExecutionError>;

    /// Sets `key` in the session's data (within the session store's bounds).
    async fn kv_set(&self, key: String, value: Vec<u8>) -> Result<(), ExecutionError>;

    /// Removes `key` from the session's data.
    async fn kv_delete(&self, key: String) -> Result<(), ExecutionError>;

    /// The keys of the session's data.
    async fn kv_keys(&self) -> Result<Vec<String>, ExecutionError>;
}

/// The data of one execution's store.
pub(crate) struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    outbound: OutboundHttp,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) log: Arc<GuestLog>,
    pub(crate) deadline: Instant,
    /// The running execution's cancellation; none while a warm instance waits idle.
    cancel: Option<CancelHandle>,
    /// Fuel burnt by this execution's nested `call`s (each in a sandbox of its own).
    pub(crate) nested_fuel: u64,
    processor: Arc<str>,
    config: Arc<BTreeMap<String, String>>,
    /// What the guest's imports reach beyond the sandbox, for the running execution;
    /// absent while a plugin is being described at load time, and while a warm instance
    /// waits idle.
    services: Option<Arc<dyn GuestServices>>,
    /// What the guest may hand the host.
    bounds: GuestBounds,
    /// This execution's allowance of custom events and progress reports.
    events: Bucket,
}

/// Everything needed to set up a sandbox.
pub(crate) struct SandboxSpec<'a> {
    pub memory_bytes: u64,
    pub fuel: u64,
    pub deadline: Instant,
    pub cancel: CancelHandle,
    pub processor: Arc<str>,
    pub log: Arc<GuestLog>,
    pub capabilities: &'a Capabilities,
    pub config: Arc<BTreeMap<String, String>>,
    pub services: Option<Arc<dyn GuestServices>>,
    pub bounds: GuestBounds,
}

impl Sandbox {
    /// A fresh store for one attempt, with its limits armed.
    pub(crate) fn store(
        engine: &Engine,
        spec: SandboxSpec<'_>,
    ) -> Result<Store<Sandbox>, ExecutionError> {
        let wasi = wasi_context(spec.capabilities, &spec.log)?;
        let outbound = OutboundHttp::new(spec.capabilities.http.clone(), spec.processor.clone());
        let sandbox = Sandbox {
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            outbound,
            limiter: MemoryLimiter::new(spec.memory_bytes),
            log: spec.log,
            deadline: spec.deadline,
            cancel: Some(spec.cancel),
            nested_fuel: 0,
            processor: spec.processor,
            config: spec.config,
            services: spec.services,
            bounds: spec.bounds,
            events: Bucket::new(spec.bounds.event_rate, Instant::now()),
        };
        let mut store = Store::new(engine.wasmtime(), sandbox);
        store.limiter(|s| &mut s.limiter);
        set_fuel(&mut store, spec.fuel)?;
        // On every epoch tick: stop the guest if its deadline has passed, otherwise yield to
        // the async runtime so that timers, cancellation and other tasks make progress.
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Err(wasmtime::Error::new(HostTrap::Deadline))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);
        Ok(store)
    }

    /// Arms a reused (warm) store for its next execution, as [`Sandbox::store`] arms a new
    /// one: memory cap (peak restarts from the memory the instance already holds), fuel,
    /// deadline, cancellation, log and caller. The WASI context, the processor name and the
    /// configuration stay: they belong to the plugin, not the execution. Its log must be
    /// `spec.log`, reset.
    pub(crate) fn rearm(
        store: &mut Store<Sandbox>,
        spec: SandboxSpec<'_>,
    ) -> Result<(), ExecutionError> {
        let sandbox = store.data_mut();
        debug_assert!(Arc::ptr_eq(&sandbox.log, &spec.log));
        sandbox.limiter.cap = spec.memory_bytes;
        sandbox.limiter.peak = sandbox.limiter.current;
        sandbox.limiter.hit = false;
        sandbox.deadline = spec.deadline;
        sandbox.cancel = Some(spec.cancel);
        sandbox.nested_fuel = 0;
        sandbox.services = spec.services;
        sandbox.bounds = spec.bounds;
        sandbox.events = Bucket::new(spec.bounds.event_rate, Instant::now());
        set_fuel(store, spec.fuel)?;
        store.set_epoch_deadline(1);
        Ok(())
    }

    /// Whether no outbound HTTP request is in flight or holding an unread response: a warm
    /// instance is only kept idle when none is.
    pub(crate) fn outbound_idle(&self) -> bool {
        self.outbound.idle()
    }

    /// Lets go of everything that belongs to the execution that just ended (its services,
    /// its cancellation), before the store waits idle.
    pub(crate) fn release(&mut self) {
        self.services = None;
        self.cancel = None;
    }
}

fn set_fuel(store: &mut Store<Sandbox>, fuel: u64) -> Result<(), ExecutionError> {
    store.set_fuel(fuel).map_err(|e| {
        ExecutionError::host(
            ErrorKind::Execution,
            codes::TRAP,
            format!("cannot set fuel: {e}"),
        )
    })
}

fn wasi_context(caps: &Capabilities, log: &Arc<GuestLog>) -> Result<WasiCtx, ExecutionError> {
    let mut b = WasiCtxBuilder::new();
    b.stdout(GuestStream::stdout(log))
        .stderr(GuestStream::stderr(log))
        .allow_ip_name_lookup(false);
    for (key, value) in &caps.env {
        b.env(key, value);
    }
    for grant in &caps.files {
        let perms = if grant.writable {
            wasmtime_wasi::FsPerms::ReadWrite
        } else {
            wasmtime_wasi::FsPerms::ReadOnly
        };
        b.preopened_dir(&grant.host, &grant.guest, perms)
            .map_err(|e| {
                ExecutionError::host(
                    ErrorKind::Configuration,
                    codes::CAPABILITY_DENIED,
                    format!(
                        "the granted directory {} cannot be opened: {e}",
                        grant.host.display()
                    ),
                )
            })?;
    }
    if caps.network.is_empty() {
        b.allow_tcp(false).allow_udp(false);
    } else {
        let grants = Arc::new(caps.network.clone());
        b.socket_addr_check(move |addr, _use| {
            let allowed = grants.iter().any(|g| g.allows(&addr));
            Box::pin(async move { allowed })
        });
    }
    Ok(b.build())
}

/// The linker every processor is instantiated with: WASI (with `wasi:http`'s outgoing
/// requests, denied unless granted) plus weir's imports.
pub(crate) fn linker(engine: &Engine) -> Result<Linker<Sandbox>, Error> {
    let mut linker = Linker::new(engine.wasmtime());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| Error::Engine(format!("cannot link WASI: {e}")))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(|e| Error::Engine(format!("cannot link wasi:http: {e}")))?;
    Processor::add_to_linker::<Sandbox, HasSelf<Sandbox>>(&mut linker, |s| s)
        .map_err(|e| Error::Engine(format!("cannot link weir's imports: {e}")))?;
    Ok(linker)
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Sandbox {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

fn not_available(what: &str) -> wit::ProcessorError {
    wit::ProcessorError {
        kind: wit::ErrorKind::Configuration,
        code: Some(codes::NOT_AVAILABLE.to_string()),
        message: format!("{what} is not available while a plugin is being described"),
        retryable: false,
        details: None,
    }
}

impl Sandbox {
    fn services(&self, what: &str) -> Result<Arc<dyn GuestServices>, wit::ProcessorError> {
        self.services.clone().ok_or_else(|| not_available(what))
    }
}

impl imports::types::Host for Sandbox {}

impl imports::logging::Host for Sandbox {
    fn log(&mut self, level: imports::logging::Level, message: String, fields: Option<String>) {
        use imports::logging::Level as L;
        let level = match level {
            L::Trace => Level::Trace,
            L::Debug => Level::Debug,
            L::Info => Level::Info,
            L::Warn => Level::Warn,
            L::Error => Level::Error,
        };
        self.log.log(level, &message, fields.as_deref());
    }
}

impl Sandbox {
    /// An event about this execution, ready to fill in and publish, with the bus to publish
    /// it on; `None` when no one listens (or while describing).
    fn event(&self, kind: EventKind) -> Option<(&EventBus, Event)> {
        let services = self.services.as_deref()?;
        let mut event = services.event(kind)?;
        event.processor = Some(self.processor.to_string());
        Some((services.events(), event))
    }
}

impl imports::events::Host for Sandbox {
    fn emit(&mut self, name: String, data: String) -> Result<(), wit::ProcessorError> {
        let bounds = self.bounds;
        if name.len() > bounds.event_name_bytes || data.len() > bounds.event_data_bytes {
            let shown = escape_controls(&clip_str(&name, 64));
            return Err(wit::ProcessorError {
                kind: wit::ErrorKind::Resource,
                code: Some(codes::EVENT_TOO_LARGE.to_string()),
                message: format!(
                    "event `{shown}` is too large: its name has {} bytes (at most {}) and its \
                     data {} bytes (at most {}); send less, or a reference to where the rest is",
                    name.len(),
                    bounds.event_name_bytes,
                    data.len(),
                    bounds.event_data_bytes
                ),
                retryable: false,
                details: None,
            });
        }
        let text_bytes = data.len();
        let Ok(data) = serde_json::from_str::<serde_json::Value>(&data) else {
            return Err(wit::ProcessorError {
                kind: wit::ErrorKind::Validation,
                code: Some(codes::INVALID_INPUT.to_string()),
                message: format!("event `{name}`: data is not valid JSON"),
                retryable: false,
                details: None,
            });
        };
        if !self.events.take() {
            return Err(wit::ProcessorError {
                kind: wit::ErrorKind::Resource,
                code: Some(codes::RATE_LIMITED.to_string()),
                message: format!(
                    "event `{name}` refused: an execution may publish {} events at once and {} \
                     a second after that",
                    bounds.event_rate.burst, bounds.event_rate.per_second
                ),
                retryable: false,
                details: None,
            });
        }
        tracing::debug!(target: "weir::events", event = %name, "custom event");
        if let Some((bus, mut event)) = self.event(EventKind::Custom) {
            event.name = Some(name.clone());
            event.data = Some(data);
            // The text's length, already known: no second walk of the parsed data.
            if let Err(full) = bus.publish_guest(event, text_bytes) {
                return Err(wit::ProcessorError {
                    kind: wit::ErrorKind::Resource,
                    code: Some(codes::RATE_LIMITED.to_string()),
                    message: format!(
                        "event `{name}` refused: the host already holds {} of events its \
                         subscribers have not read yet; try again later",
                        crate::contract::bounds::human_bytes(full.limit as u64)
                    ),
                    retryable: true,
                    details: None,
                });
            }
        }
        Ok(())
    }

    fn progress(&mut self, percent: u8, message: String) -> Result<(), wit::ProcessorError> {
        let percent = percent.min(100);
        let message = clip(message, MAX_PROGRESS_MESSAGE);
        tracing::debug!(target: "weir::events", percent, "progress: {message}");
        if let Some(services) = &self.services {
            services.progress(percent, &message);
        }
        // Over the event rate the progress still counts (the latest report wins), but no
        // event is published for it.
        if self.events.take()
            && let Some((bus, mut event)) = self.event(EventKind::Progress)
        {
            event.data = Some(serde_json::json!({ "percent": percent, "message": message }));
            bus.publish(event);
        }
        Ok(())
    }
}

impl imports::invoke::Host for Sandbox {
    async fn call(&mut self, name: String, state: String) -> Result<String, wit::ProcessorError> {
        let services = self.services("`call`")?;
        let cancel = self
            .cancel
            .as_ref()
            .map_or_else(CancelHandle::new, CancelHandle::child);
        let (outcome, fuel) = services.call(name, state, self.deadline, cancel).await;
        self.nested_fuel = self.nested_fuel.saturating_add(fuel);
        outcome.map_err(to_wit_error)
    }
}

impl imports::cancellation::Host for Sandbox {
    fn cancelled(&mut self) -> bool {
        self.cancel.as_ref().is_some_and(CancelHandle::is_cancelled)
    }
}

impl imports::config::Host for Sandbox {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }

    fn get_all(&mut self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl imports::session_store::Host for Sandbox {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, wit::ProcessorError> {
        let services = self.services("the session store")?;
        services.kv_get(key).await.map_err(to_wit_error)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), wit::ProcessorError> {
        let services = self.services("the session store")?;
        services.kv_set(key, value).await.map_err(to_wit_error)
    }

    async fn delete(&mut self, key: String) -> Result<(), wit::ProcessorError> {
        let services = self.services("the session store")?;
        services.kv_delete(key).await.map_err(to_wit_error)
    }

    async fn list_keys(&mut self) -> Result<Vec<String>, wit::ProcessorError> {
        let services = self.services("the session store")?;
        services.kv_keys().await.map_err(to_wit_error)
    }
}

/// The longest progress message kept, in bytes; longer ones are cut (at a character).
const MAX_PROGRESS_MESSAGE: usize = 1024;

/// A host-side error as the guest sees it.
pub(crate) fn to_wit_error(e: ExecutionError) -> wit::ProcessorError {
    wit::ProcessorError {
        kind: e.kind.into(),
        code: e.code,
        message: e.message,
        retryable: e.retryable,
        details: e.details.map(|d| d.to_string()),
    }
}

/// A guest's error as the host reports it, held to `bounds` (the details' limit is at most
/// `output_bytes`): details too large are never parsed.
pub(crate) fn from_wit_error(
    e: wit::ProcessorError,
    bounds: &GuestBounds,
    output_bytes: u64,
) -> ExecutionError {
    let limit = bounds.details_limit(output_bytes);
    let details = e.details.map(|text| {
        let bytes = text.len() as u64;
        if bytes > limit {
            crate::contract::bounds::details_too_large(bytes, limit)
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        }
    });
    let error = ExecutionError {
        kind: e.kind.into(),
        code: e.code,
        message: e.message,
        retryable: e.retryable,
        details,
    };
    bounds.error(error, output_bytes)
}
