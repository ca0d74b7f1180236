//! Errors: the typed failure of an execution (part of the result document, with the fixed
//! kinds and host codes of the contract) and the library's own errors for setup and loading.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The category of a failed execution. Callers, retry policies and exit codes act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The input is not acceptable.
    Validation,
    /// A business rule refused the input.
    Business,
    /// A processor, route or resource does not exist.
    NotFound,
    /// Time ran out.
    Timeout,
    /// A limit was hit: memory, fuel, output size, capacity or a quota.
    Resource,
    /// A remote dependency failed.
    Network,
    /// A processor or its settings are misconfigured.
    Configuration,
    /// The processor failed unexpectedly: a trap, a panic, a bug.
    Execution,
    /// The execution was cancelled.
    Cancelled,
    /// A concurrent writer changed the same state first.
    Conflict,
}

impl ErrorKind {
    /// Every kind, in the contract's order.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Validation,
        ErrorKind::Business,
        ErrorKind::NotFound,
        ErrorKind::Timeout,
        ErrorKind::Resource,
        ErrorKind::Network,
        ErrorKind::Configuration,
        ErrorKind::Execution,
        ErrorKind::Cancelled,
        ErrorKind::Conflict,
    ];

    /// The kind's name in the contract, e.g. `not-found`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Validation => "validation",
            ErrorKind::Business => "business",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Resource => "resource",
            ErrorKind::Network => "network",
            ErrorKind::Configuration => "configuration",
            ErrorKind::Execution => "execution",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Conflict => "conflict",
        }
    }

    /// Parses a kind name as written in the contract (`not-found`, `resource`, …).
    pub fn parse(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fixed codes of errors the host makes (as opposed to errors a processor returns).
pub mod codes {
    /// The execution's wall-clock deadline passed.
    pub const DEADLINE_EXCEEDED: &str = "deadline-exceeded";
    /// A distributed run did not end by its deadline: its outcome was lost (a worker or
    /// Redis lost it) or it ran too long.
    pub const RUN_LOST: &str = "run-lost";
    /// The worker running a distributed step stopped before the step ended (killed,
    /// crashed, out of memory): the step is not handed to another worker, since it may
    /// have caused the crash (`weir dlq retry` sends it back).
    pub const WORKER_LOST: &str = "worker-lost";
    /// The fuel budget ran out.
    pub const FUEL_EXHAUSTED: &str = "fuel-exhausted";
    /// The guest tried to grow its memory past the cap.
    pub const MEMORY_LIMIT: &str = "memory-limit";
    /// The guest's WebAssembly call stack overflowed.
    pub const STACK_OVERFLOW: &str = "stack-overflow";
    /// The returned state is larger than the output cap.
    pub const OUTPUT_TOO_LARGE: &str = "output-too-large";
    /// A tenant's quota was exceeded.
    pub const QUOTA_EXCEEDED: &str = "quota-exceeded";
    /// The host has no free sandbox slot right now.
    pub const CAPACITY_EXCEEDED: &str = "capacity-exceeded";
    /// The guest trapped (a panic, an abort, an invalid operation).
    pub const TRAP: &str = "trap";
    /// A nested call went deeper than the maximum call depth.
    pub const CALL_DEPTH_EXCEEDED: &str = "call-depth-exceeded";
    /// No processor of that name is registered.
    pub const PROCESSOR_NOT_FOUND: &str = "processor-not-found";
    /// A route selector's key matched no route and there is no fallback.
    pub const NO_ROUTE: &str = "no-route";
    /// The state changed under a concurrent writer.
    pub const STATE_CONFLICT: &str = "state-conflict";
    /// Cancelled by an explicit request.
    pub const CANCELLED_BY_REQUEST: &str = "cancelled-by-request";
    /// Cancelled because a parallel sibling failed.
    pub const CANCELLED_BY_SIBLING: &str = "cancelled-by-sibling";
    /// Cancelled because its session was stopped.
    pub const SESSION_STOPPED: &str = "session-stopped";
    /// Cancelled because the runtime stopped before it finished.
    pub const RUNTIME_STOPPED: &str = "runtime-stopped";
    /// The state store could not be reached or failed a command.
    pub const STORE_UNAVAILABLE: &str = "store-unavailable";
    /// A stored state failed its integrity check (changed outside weir).
    pub const STATE_CORRUPTED: &str = "state-corrupted";
    /// The processor used a capability the operator did not grant.
    pub const CAPABILITY_DENIED: &str = "capability-denied";
    /// The input state is not a JSON object or its host-owned `metadata` is malformed.
    pub const INVALID_INPUT: &str = "invalid-input";
    /// The processor returned something that is not a JSON object.
    pub const INVALID_OUTPUT: &str = "invalid-output";
    /// A host service the processor asked for is not available in this context.
    pub const NOT_AVAILABLE: &str = "not-available";
    /// The session store was used by an execution that runs without a session.
    pub const NO_SESSION: &str = "no-session";
    /// A custom event's name or data is over its bound.
    pub const EVENT_TOO_LARGE: &str = "event-too-large";
    /// More events (or other guest requests) than the execution's rate allows.
    pub const RATE_LIMITED: &str = "rate-limited";
    /// A tenant has as many sessions as it may; a new one waits for an idle one to expire.
    pub const TOO_MANY_SESSIONS: &str = "too-many-sessions";
    /// An idempotency key came again with another request (processor, input or session)
    /// within its window.
    pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency-key-reused";
    /// A tenant holds as many idempotency keys as it may; a new one waits for an old one's
    /// window to end.
    pub const TOO_MANY_IDEMPOTENCY_KEYS: &str = "too-many-idempotency-keys";
    /// An idempotency key's run has ended, but its outcome is no longer kept.
    pub const IDEMPOTENT_OUTCOME_GONE: &str = "idempotent-outcome-gone";
    /// A batch's input holds more items than a batch may take.
    pub const BATCH_TOO_LARGE: &str = "batch-too-large";
}

/// Why an execution failed: the `error` member of the result document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionError {
    /// The category.
    pub kind: ErrorKind,
    /// A stable code: one of [`codes`] for host-made errors, or the processor's own.
    pub code: Option<String>,
    /// What happened, for people.
    pub message: String,
    /// Whether trying again might succeed.
    pub retryable: bool,
    /// Structured details, if any.
    pub details: Option<serde_json::Value>,
}

impl ExecutionError {
    /// A host-made error with one of the fixed [`codes`].
    pub fn host(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        ExecutionError {
            kind,
            code: Some(code.to_string()),
            message: message.into(),
            retryable: false,
            details: None,
        }
    }

    /// Marks the error as retryable (or not).
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// Attaches structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Whether this error's code is `code`.
    pub fn has_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

impl fmt::Display for ExecutionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{} ({code}): {}", self.kind, self.message),
            None => write!(f, "{}: {}", self.kind, self.message),
        }
    }
}

impl std::error::Error for ExecutionError {}

/// Why a plugin file was not loaded. Each variant says what the operator should fix.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The component is larger than the host takes.
    #[error(
        "it is {bytes} bytes; a component is at most {limit} bytes (the host's \
         max_component_bytes): it was not read or compiled"
    )]
    TooLarge {
        /// Its size.
        bytes: u64,
        /// The most the host takes.
        limit: u64,
    },
    /// The component's code is beyond what the host compiles: too many functions, or one
    /// too large.
    #[error(
        "{what} ({bound} is {limit}, the host's {setting}): it was not compiled; split the \
         code or ask the operator to raise the bound"
    )]
    CodeTooLarge {
        /// What is over the bound, e.g. "it defines 300000 functions".
        what: String,
        /// The bound's name in words.
        bound: &'static str,
        /// Its value.
        limit: u64,
        /// The [`crate::EngineConfig`] field that sets it.
        setting: &'static str,
    },
    /// The file is a symlink that leads out of the plugins folder.
    #[error(
        "{path} is a symlink to {target}, outside the plugins folder: weir does not follow \
         links out of the folder (copy the file in instead)"
    )]
    OutsideFolder {
        /// The link.
        path: PathBuf,
        /// Where it leads.
        target: PathBuf,
    },
    /// The file name is not a valid processor name.
    #[error(
        "`{stem}` is not a valid processor name: use lowercase letters, digits and `-`, \
         starting with a letter (rename the file)"
    )]
    BadFileName {
        /// The file stem.
        stem: String,
    },
    /// The bytes are not a WebAssembly component that compiles.
    #[error("not a valid WebAssembly component: {reason}")]
    Compile {
        /// What the compiler said.
        reason: String,
    },
    /// Compiling the component took longer than the host's compile clock allows
    /// ([`crate::CompileProcess::timeout`]): the compiling process was killed.
    #[error(
        "compiling it took longer than {limit_ms} ms (the host's compile timeout, \
         `--compile-timeout-ms`): it was stopped and not loaded; make the component smaller or \
         ask the operator to raise the timeout"
    )]
    CompileTimeout {
        /// The clock bound, in milliseconds.
        limit_ms: u64,
    },
    /// The process compiling the component failed without a compiler's reason: it could not
    /// start, it crashed, or it ran out of its memory bound.
    #[error("it could not be compiled: {reason}")]
    CompilerFailed {
        /// What went wrong.
        reason: String,
    },
    /// The component was built for another world.
    #[error("built for another world: {reason}; rebuild it against the `processor` world in wit/")]
    WrongWorld {
        /// What does not match.
        reason: String,
    },
    /// `describe` failed or answered something unusable.
    #[error("`describe` failed: {reason}")]
    Describe {
        /// What went wrong.
        reason: String,
    },
    /// `describe` names a different processor than the file stem.
    #[error(
        "it describes itself as `{declared}`, but the file is named `{stem}.wasm`: rename the \
         file to `{declared}.wasm` (a plugin's identity is its file name)"
    )]
    NameMismatch {
        /// The file stem.
        stem: String,
        /// The name `describe` returned.
        declared: String,
    },
    /// The distributed runtime loaded the plugin but could not publish it to Redis: the
    /// version before it, if any, keeps serving everywhere.
    #[error(
        "it loaded but could not be published to Redis: {reason}; the version before it \
         keeps serving (load it again once Redis answers)"
    )]
    Publish {
        /// Why it was not published.
        reason: String,
    },
    /// The operator manifest beside the plugin is invalid.
    #[error("its manifest {path} is invalid: {reason}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong, with the line where possible.
        reason: String,
    },
}

/// Why the runtime refused an execution (the execution itself never started).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// `start` has not been called yet.
    #[error("the runtime has not been started: call start() before executing")]
    NotStarted,
    /// `stop` was called; the runtime accepts no new work.
    #[error("the runtime is stopping or stopped: it accepts no new executions")]
    Stopped,
    /// No processor or workflow has that name.
    #[error("{reason}")]
    NotFound {
        /// The name asked for.
        name: String,
        /// Why it cannot run, and what exists instead.
        reason: String,
    },
    /// The distributed runtime could not reach Redis.
    #[error("{0}")]
    Unavailable(String),
    /// The request cannot be run as it is (e.g. its id names a run that exists already).
    #[error("{0}")]
    InvalidRequest(String),
}

/// Errors of the weir library at its boundary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The wasmtime engine could not be created with this configuration.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// The plugins folder is missing or unreadable.
    #[error("cannot read the plugins folder {path}: {source} (create it or pass --plugins DIR)")]
    PluginsDir {
        /// The folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The compile cache folder is unusable or unsafe.
    #[error("compile cache {path}: {reason}")]
    Cache {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Redis could not be reached.
    #[error("cannot reach Redis at {url}: {reason} (is redis-server running there?)")]
    Redis {
        /// The server's URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
}
