//! One execution, start to finish: check the input, resolve the name to a processor or a
//! workflow, resolve limits, run attempts in fresh sandboxes under a deadline, fuel and a
//! memory cap, retry as the policy says, classify every failure into the contract's kinds
//! and codes, and stamp the host-owned metadata. Workflows hand their steps back in here
//! (see [`crate::execution::compose`]); guests' nested `call`s come back in one level deeper.

mod attempt;
mod classify;

/// Read by the fuzz targets (`crate::fuzz`).
#[cfg(test)]
pub(crate) use attempt::parse_output;
pub(crate) use classify::cancelled_error;
#[cfg(feature = "redis")]
pub(crate) use classify::cancelled_unstarted;
pub(crate) use classify::failed;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::Instrument;

use crate::contract::cancel::CancelHandle;
use crate::contract::clock::{self, Stamp};
use crate::contract::error::{ErrorKind, ExecutionError, codes};
use crate::contract::limits::LimitOverrides;
use crate::contract::result::{ExecutionInfo, ExecutionResult};
use crate::contract::state;
use crate::contract::state_store::SessionKey;
use crate::execution::activity::{Activity, Outcome};
use crate::execution::context::Context;
use crate::execution::registry::Unit;
use crate::execution::request::ExecutionRequest;
use crate::execution::scheduler::{Refused, Turn};
use crate::sandbox::events::{Event, EventKind};
use crate::sandbox::plugin::Plugin;
use attempt::{Window, attempt, json_text};
use classify::{not_found, out_of_time};

/// Who an execution runs for and within what bounds. A workflow passes its own scope to its
/// steps (same depth, its deadline); a guest's `call` passes one a level deeper.
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub tenant: Arc<str>,
    pub session: Option<Arc<str>>,
    /// Guest `call`s that led here (0 at the top).
    pub depth: u32,
    /// When everything must be done by, if a parent or workflow set a bound.
    pub deadline: Option<Instant>,
    pub cancel: CancelHandle,
    /// What the caller asked for: limits can only go down.
    pub limits: LimitOverrides,
    /// The execution that started this one (a workflow or a guest's `call`).
    pub parent: Option<Arc<str>>,
    /// Where this execution runs in the workflow that started it (see
    /// [`crate::execution::compose::rules::place`]); `None` outside a workflow's steps.
    pub step: Option<Arc<str>>,
    /// The caller's priority for queued work (the processor's default when `None`).
    pub priority: Option<u32>,
    /// The caller's cap on attempts (lowers, never raises, a retry policy).
    pub max_attempts: Option<u32>,
    /// Where the guest's progress reports go besides the event stream: in a distributed
    /// worker, the BullMQ job the execution runs for. Nested calls do not inherit it.
    pub progress: Option<ProgressSink>,
    /// What the submitter is charged for the fan-outs under this execution, if anything.
    pub admission: Option<Arc<dyn Admission>>,
}

/// What an execution's fan-outs cost whoever submitted it, charged before they start: the
/// seam through which an embedding (the HTTP server's tenant quotas) meters work that one
/// request makes many of. Implemented above this layer; carried by the request's scope to
/// every step and nested call.
#[async_trait::async_trait]
pub trait Admission: Send + Sync + std::fmt::Debug {
    /// Charges `items` executions (a batch's items, about to start). An error refuses them
    /// all: the batch fails with it and no item runs.
    async fn admit_items(&self, items: usize) -> Result<(), ExecutionError>;
}

/// The latest progress (percent, message) a running guest reported, for whoever follows it.
pub(crate) type ProgressSink = Arc<tokio::sync::watch::Sender<Option<(u8, String)>>>;

impl Scope {
    /// The scope of a step inside this one: same caller, cancelled with it, and bounded by
    /// `timeout` from now if given. Its place is the caller's to set (`Scope::at`).
    pub(crate) fn step(&self, timeout: Option<Duration>, cancel: CancelHandle) -> Scope {
        let own = timeout.map(|t| Instant::now() + t);
        let deadline = match (self.deadline, own) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Scope {
            deadline,
            cancel,
            ..self.clone()
        }
    }

    /// This scope for the step at `place` of its workflow.
    pub(crate) fn at(mut self, place: impl Into<Arc<str>>) -> Scope {
        self.step = Some(place.into());
        self
    }
}

/// Runs a top-level execution.
pub(crate) async fn execute(shared: &Arc<Context>, request: ExecutionRequest) -> ExecutionResult {
    let scope = Scope {
        tenant: Arc::from(request.tenant.as_deref().unwrap_or("default")),
        session: request.session.as_deref().map(Arc::from),
        depth: 0,
        deadline: request
            .deadline
            .map(|d| Instant::now() + request.delay.unwrap_or_default() + d),
        cancel: request.cancel,
        limits: request.limits,
        parent: None,
        step: None,
        priority: request.priority,
        max_attempts: request.max_attempts,
        progress: None,
        admission: request.admission,
    };
    if let Some(delay) = request.delay {
        // A delayed execution is cancellable while it waits; it then starts normally (and
        // refuses to, if it was cancelled).
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = scope.cancel.cancelled() => {}
        }
    }
    run(
        shared,
        &request.processor,
        request.input,
        scope,
        request.id,
        None,
    )
    .await
}

/// A processor fixed in advance and the number of the one attempt to make: how a worker of
/// the distributed runtime runs a job, where the queue (not the executor) makes retries.
pub(crate) struct Pinned {
    pub plugin: Arc<Plugin>,
    pub attempt: u32,
}

/// Runs one attempt of a pinned processor as a top-level execution: same checks, limits,
/// events and metadata as any execution, no retries.
#[cfg(feature = "redis")]
pub(crate) async fn execute_pinned(
    shared: &Arc<Context>,
    pinned: Pinned,
    input: Value,
    scope: Scope,
    id: Option<String>,
) -> ExecutionResult {
    let name = pinned.plugin.name().to_string();
    run(shared, &name, input, scope, id, Some(pinned)).await
}

/// The result of a request that could not even start (nothing ran).
pub(crate) fn refused(request: ExecutionRequest, error: ExecutionError) -> ExecutionResult {
    let tenant = request.tenant.unwrap_or_else(|| "default".to_string());
    let info = ExecutionInfo::new(request.id, request.processor, tenant, request.session);
    failed(request.input, error, info)
}

/// Runs a guest's nested `call`: one level deeper, within the caller's deadline, cancelled
/// with the caller. Fails before anything runs when the depth would pass the maximum.
pub(crate) async fn call_nested(
    shared: &Arc<Context>,
    caller: &Scope,
    name: String,
    state: String,
    deadline: Instant,
    cancel: CancelHandle,
) -> (Result<String, ExecutionError>, u64) {
    let depth = caller.depth + 1;
    let max = shared.config().max_call_depth;
    if depth > max {
        let error = ExecutionError::host(
            ErrorKind::Execution,
            codes::CALL_DEPTH_EXCEEDED,
            format!("calling `{name}` would nest {depth} calls deep; the maximum is {max}"),
        );
        return (Err(error), 0);
    }
    // The guest picks the name: one that cannot exist, or does not, is refused before
    // anything is recorded for it (no stats row, no event), so made-up names leave no trace.
    if !crate::contract::names::is_valid_name(&name) {
        let shown =
            crate::contract::bounds::escape_controls(&crate::contract::bounds::clip_str(&name, 64));
        let error = ExecutionError::host(
            ErrorKind::NotFound,
            codes::PROCESSOR_NOT_FOUND,
            format!(
                "no processor or workflow named `{shown}`: names are 1 to 64 lowercase letters, \
                 digits and hyphens, starting with a letter"
            ),
        );
        return (Err(error), 0);
    }
    let known = shared.registry().resolve(&name).is_some()
        || !matches!(shared.resolve_published(&name).await, Ok(None));
    if !known {
        let error = ExecutionError::host(
            ErrorKind::NotFound,
            codes::PROCESSOR_NOT_FOUND,
            format!("no processor or workflow named `{name}`"),
        );
        return (Err(error), 0);
    }
    let input: Value = match serde_json::from_str(&state) {
        Ok(input) => input,
        Err(e) => {
            let error = ExecutionError::host(
                ErrorKind::Validation,
                codes::INVALID_INPUT,
                format!("the state passed to `{name}` is not valid JSON: {e}"),
            );
            return (Err(error), 0);
        }
    };
    let scope = Scope {
        depth,
        deadline: Some(deadline),
        cancel,
        progress: None,
        // A call is no step of the caller's workflow.
        step: None,
        ..caller.clone()
    };
    let result = run_boxed(shared, &name, input, scope).await;
    let fuel = result.execution.fuel_consumed;
    let outcome = match result.error {
        None => Ok(json_text(&result.state)),
        Some(error) => Err(error),
    };
    (outcome, fuel)
}

/// Runs a step of a workflow or a nested call. Boxed: an execution can contain itself.
pub(crate) fn run_boxed<'a>(
    shared: &'a Arc<Context>,
    name: &'a str,
    input: Value,
    scope: Scope,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ExecutionResult> + Send + 'a>> {
    Box::pin(run(shared, name, input, scope, None, None))
}

pub(super) async fn run(
    shared: &Arc<Context>,
    name: &str,
    input: Value,
    scope: Scope,
    id: Option<String>,
    pinned: Option<Pinned>,
) -> ExecutionResult {
    // The clocks are read here, when the guest returns, at the end, and after anything that
    // may have waited (a limited queue, a retry's backoff); every other time the execution
    // needs (its id, its metadata's timestamps, the guest's deadline) derives from those.
    let started = Stamp::now();
    let id = id.unwrap_or_else(|| clock::execution_id(started.wall));
    let info = ExecutionInfo::new(
        Some(id),
        name,
        &*scope.tenant,
        scope.session.as_deref().map(str::to_string),
    );
    // The span's own target lets operators see guest lines with their execution's fields
    // without enabling the host's info logs.
    let span = tracing::info_span!(
        target: "weir::execution",
        "execution",
        id = %info.id,
        processor = %info.processor,
        tenant = %info.tenant,
        session = info.session.as_deref(),
        depth = scope.depth,
    );
    let events = shared.events();
    let parent = scope.parent.clone();
    let place = scope.step.clone();
    let depth = scope.depth;
    let session_key = scope
        .session
        .as_ref()
        .map(|session| SessionKey::new(&*scope.tenant, &**session));
    let began = shared.activity().begin(
        &info.id,
        &scope.tenant,
        &info.processor,
        session_key,
        &scope.cancel,
    );
    // Ends the record even if this future is dropped before it finishes.
    let mut record = Recorded {
        activity: shared.activity(),
        id: info.id.clone(),
        tenant: scope.tenant.clone(),
        processor: info.processor.clone(),
        started: started.instant,
        done: false,
    };
    if events.active() {
        if began.new_session {
            events.publish(Event::new(
                EventKind::SessionCreated,
                &info.tenant,
                info.session.as_deref(),
            ));
        }
        events.publish(execution_event(
            EventKind::ProcessorStarted,
            &info,
            parent.as_deref(),
            place.as_deref(),
            depth,
        ));
    }
    let mut result = run_in_span(shared, input, scope, info, pinned, started)
        .instrument(span)
        .await;
    let elapsed = started.instant.elapsed();
    result.execution.duration_us = elapsed.as_micros().try_into().unwrap_or(u64::MAX);
    record.finish(
        Outcome {
            ok: result.ok,
            duration: elapsed,
            fuel: result.execution.fuel_consumed,
            peak_memory: result.execution.peak_memory_bytes,
        },
        result.execution.digest.as_deref(),
    );
    if events.active() {
        events.publish(end_event(
            &result,
            parent.as_deref(),
            place.as_deref(),
            depth,
        ));
    }
    result
}

/// `processor:completed` or `processor:failed` for the execution that ended with `result`
/// (started by `parent`, at place `step` of its workflow, `depth` calls deep).
pub(crate) fn end_event(
    result: &ExecutionResult,
    parent: Option<&str>,
    step: Option<&str>,
    depth: u32,
) -> Event {
    let kind = if result.ok {
        EventKind::ProcessorCompleted
    } else {
        EventKind::ProcessorFailed
    };
    let mut event = execution_event(kind, &result.execution, parent, step, depth);
    event.attempts = Some(result.execution.attempts);
    event.duration_us = Some(result.execution.duration_us);
    event.error = result.error.clone();
    event
}

/// The activity record of one execution, ended exactly once: by `finish`, or as a failure if
/// the execution's future is dropped first.
struct Recorded<'a> {
    activity: &'a Activity,
    id: String,
    tenant: Arc<str>,
    processor: String,
    started: Instant,
    done: bool,
}

impl Recorded<'_> {
    /// Ends the record: `outcome` of version `digest` (when the unit was resolved).
    fn finish(&mut self, outcome: Outcome, digest: Option<&str>) {
        self.done = true;
        self.activity
            .end_version(&self.id, &self.tenant, &self.processor, digest, outcome);
    }
}

impl Drop for Recorded<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.activity.end(
                &self.id,
                &self.tenant,
                &self.processor,
                Outcome::timed(false, self.started.elapsed()),
            );
        }
    }
}

/// An event about the execution `info` describes, started by `parent` (at `step` of it, if
/// that is a workflow).
pub(crate) fn execution_event(
    kind: EventKind,
    info: &ExecutionInfo,
    parent: Option<&str>,
    step: Option<&str>,
    depth: u32,
) -> Event {
    let mut event = Event::new(kind, &info.tenant, info.session.as_deref());
    event.execution_id = Some(info.id.clone());
    event.processor = Some(info.processor.clone());
    event.parent_id = parent.map(str::to_string);
    event.step = step.map(str::to_string);
    event.depth = Some(depth);
    event
}

async fn run_in_span(
    shared: &Arc<Context>,
    input: Value,
    scope: Scope,
    mut info: ExecutionInfo,
    pinned: Option<Pinned>,
    started: Stamp,
) -> ExecutionResult {
    let prepared = state::prepare_input_at(input, scope.session.as_deref(), started.wall);
    let (input, metadata) = match prepared {
        Ok(prepared) => prepared,
        Err(error) => return failed(Value::Null, error, info),
    };
    let resolved = match &pinned {
        Some(pinned) => Some(Unit::Processor(pinned.plugin.clone())),
        None => match shared.registry().resolve(&info.processor) {
            Some(unit) => Some(unit),
            // On a worker: a nested call (or a step of a workflow it calls) to a name this
            // process only knows through Redis.
            None => match shared.resolve_published(&info.processor).await {
                Ok(unit) => unit,
                Err(error) => return failed(state::with_metadata(input, &metadata), error, info),
            },
        },
    };
    let plugin = match resolved {
        Some(Unit::Processor(plugin)) => plugin,
        Some(Unit::Workflow(workflow)) => {
            info.digest = Some(workflow.digest().to_string());
            let input_state = state::with_metadata(input, &metadata);
            return crate::execution::compose::run(
                shared,
                &workflow,
                input_state,
                metadata,
                scope,
                info,
            )
            .await;
        }
        None => {
            let error = if scope.depth == 0 {
                not_found(shared, &info.processor)
            } else {
                // A guest's `call`: its output reaches the caller, so it learns nothing about
                // what else is loaded or why files were rejected.
                ExecutionError::host(
                    ErrorKind::NotFound,
                    codes::PROCESSOR_NOT_FOUND,
                    format!("no processor or workflow named `{}`", info.processor),
                )
            };
            return failed(state::with_metadata(input, &metadata), error, info);
        }
    };
    info.digest = Some(plugin.digest().to_string());
    info.version = Some(plugin.version().to_string());

    let limits = plugin.limits().lowered_by(&scope.limits);
    // The stamped input is only built as a document if it has to be returned (as the last
    // good state of a failure); the guest gets text written straight from the parts.
    let input_text = state::text_with_metadata(&input, &metadata);
    let policy = plugin.retry();
    let max_attempts = match &pinned {
        // Exactly the one attempt asked for.
        Some(pinned) => {
            info.attempts = pinned.attempt.saturating_sub(1);
            pinned.attempt
        }
        None => policy.attempts_allowed(scope.max_attempts),
    };
    let cancel = scope.cancel.clone();
    // The time as last read: the start, or after a wait. The input's handling since then is
    // not counted.
    let mut now = started.instant;

    loop {
        if cancel.is_cancelled() {
            let error = cancelled_error(&cancel, "before it started");
            return failed(state::with_metadata(input, &metadata), error, info);
        }
        if scope.deadline.is_some_and(|d| now >= d) {
            let error = out_of_time(&info.processor);
            return failed(state::with_metadata(input, &metadata), error, info);
        }
        // Wait for this processor's queue: a concurrency slot, a rate token, our turn.
        let queue = plugin.queue();
        let priority = scope.priority.unwrap_or(queue.priority);
        let queue_deadline = scope.deadline.unwrap_or(now + limits.timeout());
        let _admission = match shared
            .scheduler()
            .admit(
                &info.processor,
                queue,
                Turn {
                    tenant: &scope.tenant,
                    priority,
                    nested: scope.depth > 0,
                },
                queue_deadline,
                &cancel,
            )
            .await
        {
            Ok(admission) => admission,
            Err(Refused::Cancelled) => {
                let error = cancelled_error(&cancel, "while it waited in its queue");
                return failed(state::with_metadata(input, &metadata), error, info);
            }
            Err(Refused::Deadline) => {
                let error = ExecutionError::host(
                    ErrorKind::Timeout,
                    codes::DEADLINE_EXCEEDED,
                    format!(
                        "`{}` waited in its queue until its deadline passed",
                        info.processor
                    ),
                )
                .retryable(true);
                return failed(state::with_metadata(input, &metadata), error, info);
            }
        };
        if !queue.is_unlimited() {
            // The admission may have waited.
            now = Instant::now();
        }
        info.attempts += 1;
        let attempt_deadline = {
            let own = now + limits.timeout();
            scope.deadline.map_or(own, |d| d.min(own))
        };
        let outcome = attempt(
            shared,
            &plugin,
            &input_text,
            &info,
            &limits,
            Window {
                started,
                now,
                deadline: attempt_deadline,
            },
            &scope,
        )
        .await;
        info.fuel_consumed = info.fuel_consumed.saturating_add(outcome.fuel);
        info.peak_memory_bytes = info.peak_memory_bytes.max(outcome.peak_memory);
        let error = match outcome.result {
            Ok(output) => {
                let ended = started.wall_at(outcome.ended);
                let state = state::with_metadata(output, &metadata.bumped_at(ended));
                return ExecutionResult {
                    ok: true,
                    state,
                    error: None,
                    execution: info,
                    items: None,
                    failures: Vec::new(),
                };
            }
            Err(error) => error,
        };
        let retry =
            policy.retry_after(info.attempts, max_attempts, &error, &cancel, scope.deadline);
        let Some(delay) = retry else {
            return failed(state::with_metadata(input, &metadata), error, info);
        };
        tracing::info!(
            attempt = info.attempts,
            delay_ms = delay.as_millis() as u64,
            error = %error,
            "retrying"
        );
        if shared.events().active() {
            let mut event = execution_event(
                EventKind::ProcessorRetrying,
                &info,
                scope.parent.as_deref(),
                scope.step.as_deref(),
                scope.depth,
            );
            event.attempt = Some(info.attempts);
            event.error = Some(error.clone());
            event.data = Some(serde_json::json!({ "delayMs": delay.as_millis() as u64 }));
            shared.events().publish(event);
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => {
                let error = cancelled_error(&cancel, "while waiting to retry");
                return failed(state::with_metadata(input, &metadata), error, info);
            }
        }
        now = Instant::now();
    }
}
