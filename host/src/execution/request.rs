//! What to run and for whom: the request every entry point (the library, the HTTP API, the
//! command line, a distributed submission) turns into an execution.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::contract::cancel::CancelHandle;
use crate::contract::limits::LimitOverrides;
use crate::execution::executor::Admission;

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
    /// Priority among queued work (lower runs first); the processor's default when `None`.
    pub priority: Option<u32>,
    /// Wait this long before starting.
    pub delay: Option<Duration>,
    /// At most this many attempts (can only lower the processor's retry policy).
    pub max_attempts: Option<u32>,
    /// The whole execution (its waits, its attempts, every step of a workflow) ends within
    /// this of its start (after any `delay`), or fails with `timeout`. On the distributed
    /// runtime every run has such a deadline (`RedisConfig::run_deadline`, an hour, when
    /// `None`): an outcome Redis or a worker lost then ends the run as `timeout` /
    /// `run-lost` instead of leaving its caller waiting.
    pub deadline: Option<Duration>,
    /// Charged for the batch items under this execution before they start (the HTTP
    /// server's tenant quotas); nothing is charged when `None`. The distributed runtime
    /// does not carry it to its workers: there the process that opens a batch charges its
    /// tenant through the fleet's `ItemAdmission` (`Fleet::charge_batch_items`).
    pub admission: Option<Arc<dyn Admission>>,
    /// Runs the request at most once per key within the key's window (see
    /// [`crate::IdempotencyBounds`]): the same key again (for the same tenant) returns the
    /// same run's id and outcome, even from another process of the fleet, and never runs
    /// the work twice. The same key with another processor, input or session is refused
    /// (`conflict` / `idempotency-key-reused`).
    pub idempotency_key: Option<String>,
    /// Told which run the request became once the runtime has taken it on.
    pub on_accept: Option<OnAccept>,
}

/// Told, once the runtime has taken a request on, which run it is: its id, and whether it
/// is an earlier request's run that this one's idempotency key named (`repeat`: then its
/// outcome is that run's, and nothing runs again). A server uses it to answer a submission
/// before the run ends. Not told when the request is refused before it is taken on.
#[derive(Clone)]
pub struct OnAccept(Arc<Tell>);

/// What an [`OnAccept`] calls: `(run id, repeat)`.
type Tell = dyn Fn(&str, bool) + Send + Sync;

impl OnAccept {
    /// Calls `tell(id, repeat)` once the request is taken on.
    pub fn new(tell: impl Fn(&str, bool) + Send + Sync + 'static) -> Self {
        OnAccept(Arc::new(tell))
    }

    pub(crate) fn tell(&self, id: &str, repeat: bool) {
        (self.0)(id, repeat);
    }
}

impl std::fmt::Debug for OnAccept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnAccept(..)")
    }
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
            priority: None,
            delay: None,
            max_attempts: None,
            deadline: None,
            admission: None,
            idempotency_key: None,
            on_accept: None,
        }
    }

    /// Ends the whole execution within `deadline` of its start (see
    /// [`ExecutionRequest::deadline`]).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Charges the batch items under this execution to `admission` before they start.
    pub fn admission(mut self, admission: Arc<dyn Admission>) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Makes at most `attempts` attempts (never more than the processor's policy allows).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Runs with this priority among queued work (lower runs first).
    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Starts after `delay` (cancellable while it waits).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
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

    /// Runs the request at most once for `key` within its window (see
    /// [`ExecutionRequest::idempotency_key`]).
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Tells `on_accept` which run the request became once it is taken on.
    pub fn on_accept(mut self, on_accept: OnAccept) -> Self {
        self.on_accept = Some(on_accept);
        self
    }

    /// Uses `cancel` to cancel the execution.
    pub fn cancel_handle(mut self, cancel: CancelHandle) -> Self {
        self.cancel = cancel;
        self
    }
}
