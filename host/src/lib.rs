//! weir runs processors compiled to WebAssembly components.
//!
//! A processor is a sandboxed function `state -> result<state, error>` built against the WIT
//! contract in `wit/` (in Rust with `weir-sdk`, or any language that emits a component).
//! weir loads processors from a folder, and runs every execution in a fresh sandbox with a
//! wall-clock timeout that really stops the guest, a fuel budget, a memory cap and an output
//! cap. Every execution returns an [`ExecutionResult`], whatever happened; what surfaces
//! print (CLI, HTTP, job return values) is its [`ResultDocument`]: the result itself, or
//! for a batch `{ok, items: [result, …]}`.
//!
//! ```no_run
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = weir::Runtime::builder().plugins_dir("plugins/dist").build().await?;
//! runtime.start();
//! let result = runtime.run("hello", json!({ "user": "Ada" })).await?;
//! assert!(result.ok);
//! assert_eq!(result.state["greeting"], "Hello Ada!");
//! runtime.stop(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! The core concepts, by lifetime:
//! - an [`Engine`] lives as long as the process: the wasmtime configuration (pooling
//!   allocator, epochs, fuel), its epoch ticker and the on-disk compile cache;
//! - a [`Plugin`] lives until its file changes: compiled, validated and pre-instantiated
//!   once, with its metadata, operator [`Manifest`] and resolved [`Limits`];
//! - a sandbox lives for one attempt of one execution: a fresh instance and store, dropped
//!   at the end, so nothing leaks between executions or tenants;
//! - a [`Runtime`] lives as long as the application: it ties them together, runs
//!   [`ExecutionRequest`]s between [`Runtime::start`] and [`Runtime::stop`], composes them
//!   into [`Workflow`]s, keeps sessions' state in a [`StateStore`] and publishes
//!   [`Event`]s.
//!
//! The distributed runtime ([`Runtime::redis`]) runs the same executions as BullMQ jobs
//! through Redis, on `weir worker` processes; what only it can do (runs kept in Redis, the
//! dead-letter set, serving as a worker) is a [`Fleet`]'s, from [`Runtime::fleet`]. It is the
//! default-on `redis` feature: `weir = { default-features = false }` builds the local
//! runtime alone. The HTTP server and the `weir` binary are the crates `weir-server` and
//! `weir-cli`, over this crate's public API.
//!
//! Inside, the crate is built in layers, one folder each, and an import points only down:
//! `contract` (what both runtimes agree on) ← `sandbox` (one attempt in one wasmtime store)
//! ← `execution` (one execution and the workflows made of them) ← `distributed` (the same
//! through Redis) ← `runtime` (this API). `docs/layout.md` maps every folder; `cargo xtask
//! layers` checks the direction.

mod contract;
#[cfg(feature = "redis")]
mod distributed;
mod execution;
#[cfg(test)]
mod fuzz;
mod runtime;
mod sandbox;

pub use contract::bounds::{GuestBounds, Rate};
pub use contract::cancel::{CancelHandle, CancelReason};
pub use contract::clock::{new_execution_id, now_ms};
pub use contract::error::{Error, ErrorKind, ExecutionError, LoadError, RuntimeError, codes};
pub use contract::http_grant::{HttpGrant, HttpRule};
pub use contract::idempotency::IdempotencyBounds;
pub use contract::limits::{LimitOverrides, Limits, QueuePolicy, RateLimit};
pub use contract::manifest::QueueOverrides;
pub use contract::manifest::{Capabilities, DirGrant, Manifest, NetworkGrant, WarmPolicy};
pub use contract::merge::merge_branches;
pub use contract::names::is_valid_name;
pub use contract::result::{ExecutionInfo, ExecutionResult, ResultDocument, StepFailure};
pub use contract::retry::{Backoff, RetryPolicy};
pub use contract::schedule::{
    LastTick, Origin as ScheduleOrigin, Overlap, Schedule, ScheduleBounds, ScheduleSpec, When,
};
pub use contract::state::{MAX_VERSION, StateMetadata, validate_input};
pub use contract::state_store::{
    CasOutcome, MemoryStateStore, SessionBounds, SessionKey, SessionQuota, StateStore, StoredState,
};
pub use contract::workflow::file::FILE_NAME as WORKFLOWS_FILE;
pub use contract::workflow::{
    BatchPolicy, Composition, DEFAULT_BATCH_CONCURRENCY, GraphNode, InvalidWorkflow, MAX_DELAY,
    MAX_NESTING, OnFailure, Selector, Workflow, delay_of, delay_step,
};
#[cfg(feature = "redis")]
pub use distributed::state_store::RedisStateStore;
#[cfg(feature = "redis")]
pub use distributed::{
    DeadJob, FleetKey, ForeignAdmission, ForeignPlace, ForeignQueue, ItemAdmission, QueueCounts,
    RedisConfig, Retention, RunPage, RunQuery, RunState, RunStatus, RunSummary, Trust,
    WorkerConfig, WorkerHandle,
};
pub use execution::activity::{
    DURATION_BUCKETS_US, ProcessorStats, SessionProcessorStats, SessionRefused, SessionStats,
    VERSION_NAMES, VERSIONS_KEPT, VersionStats,
};
pub use execution::context::HostConfig;
pub use execution::executor::Admission;
pub use execution::registry::{Catalog, PLUGIN_HISTORY, PluginChange, Registry, Rejection};
pub use execution::reload::{DEFAULT_DEBOUNCE, Watcher};
pub use execution::request::{ExecutionRequest, OnAccept};
#[cfg(feature = "redis")]
pub use runtime::Fleet;
pub use runtime::{
    Runtime, RuntimeBuilder, RuntimeState, RuntimeStats, ScheduleRefused, ScheduleStatus,
    SessionStopReport, StopReport, TickAdmission, TickAdmitted, TickPlace,
};
pub use sandbox::bindings::WORLD;
pub use sandbox::cache::CompileCache;
pub use sandbox::compiler::{COMPILE_PROCESS_ARG, CompileProcess, Compiler, compile_process_main};
pub use sandbox::engine::{Engine, EngineConfig};
pub use sandbox::events::{Event, EventKind, Notice, Subscription};
pub use sandbox::guest_log::LogRate;
pub use sandbox::plugin::{Description, Plugin, QueueSettings};
