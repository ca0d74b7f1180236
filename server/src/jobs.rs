//! Jobs: executions submitted with `POST /v1/jobs` that run in the background while the
//! client goes on, read back with `GET /v1/jobs/{id}`, listed with filters and pages, and
//! cancelled with `DELETE /v1/jobs/{id}`. Each job is one execution (its id is the
//! execution's id) of the caller's tenant, under the same grants and quotas as
//! `POST /v1/run`, and shows the latest progress its guest reported (one task per server
//! follows the `progress` events). The table lives in this server's memory: every running
//! job and each tenant's newest finished ones, within a count and a byte budget per tenant
//! ([`super::ServerConfig::jobs_kept_per_tenant`], [`super::ServerConfig::jobs_bytes_per_tenant`]),
//! oldest forgotten first. A finished job's result document is kept as the JSON text it is
//! served as, so the budget counts the bytes actually held. Lists are summaries; the result
//! comes only with `GET /v1/jobs/{id}`. Progress is matched by execution id: a job that runs
//! a workflow shows its steps' progress in the event stream, not in the job.
//!
//! A job also keeps its input (for a retry) and its steps: every execution its own started
//! (workflow steps, branches, nested calls, at any depth), with when each started and ended,
//! its attempts, retries, error and the process that ran it, followed from the event
//! stream (on the distributed runtime, every worker's). At most [`MAX_STEPS`] per job and
//! [`MAX_TRACED`] executions followed at once over all jobs; past them, steps are counted in
//! `stepsDropped`. Input and steps count in the tenant's byte budget with the result.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::access::Caller;
use super::api::{Options, admit_then_read, prepare, spawn_execution};
use super::error::ApiError;
use weir::now_ms;
use weir::{CancelHandle, CancelReason};
use weir::{ErrorKind, RuntimeError};
use weir::{Event, EventKind, Notice};

/// Jobs one server runs at once, over all tenants; more get `429` (a tenant's own
/// `concurrent` quota usually says no well before).
pub const MAX_RUNNING: usize = 10_000;

/// Steps one job keeps.
pub const MAX_STEPS: usize = 1_000;

/// Executions of running jobs followed at once, over all jobs.
pub const MAX_TRACED: usize = 100_000;

/// Retries one step keeps.
const MAX_RETRIES: usize = 20;

/// What one step is counted as in the byte budget, beyond its error's message.
const STEP_BYTES: usize = 256;

/// The longest place in its workflow (`Event::step`) a step keeps, within [`STEP_BYTES`]:
/// every place of a graph node or a chain fits; a longer one (a route's key from the
/// workflows file) is not kept, and the console then matches the step by its processor.
const MAX_PLACE_BYTES: usize = 80;

/// What is left of an error's message past a job's step bytes
/// ([`super::ServerConfig::job_step_bytes`]).
const CLIPPED_MESSAGE_BYTES: usize = 256;

/// The largest input a job keeps in the fleet beside its outcome (a larger one is kept as
/// its size): what another server's page of the job shows, and retries.
const ANNEX_INPUT_BYTES: usize = 64 << 10;

/// The most of a job's steps its annex in the fleet keeps, in bytes of JSON: its first
/// steps, the rest counted as dropped.
const ANNEX_STEPS_BYTES: usize = 256 << 10;

/// How long a finished job waits for the ends of its steps still on their way (from
/// workers) before the fleet keeps its timeline (an end that comes later shows on this
/// server only).
const ANNEX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Status {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    /// The fleet index's word for it.
    fn state(self) -> weir::RunState {
        match self {
            Status::Running => weir::RunState::Running,
            Status::Completed => weir::RunState::Completed,
            Status::Failed => weir::RunState::Failed,
            Status::Cancelled => weir::RunState::Cancelled,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

struct Job {
    id: String,
    tenant: String,
    processor: String,
    session: Option<String>,
    /// Its priority among queued work, if it asked for one (lower runs first).
    priority: Option<u32>,
    /// The input state as JSON text (what a retry submits again).
    input: Arc<str>,
    submitted_ms: u64,
    cancel: CancelHandle,
    outcome: Mutex<Outcome>,
    /// Becomes true when the job has finished: what `?waitMs=` waits on.
    done: tokio::sync::watch::Sender<bool>,
    /// Its steps that started and have not ended yet, and whether its own execution's end
    /// has arrived (on the distributed runtime the events may come after the job's
    /// outcome): what its annex in the fleet waits for.
    open_steps: tokio::sync::watch::Sender<OpenSteps>,
}

/// What of a job's timeline is still on its way.
#[derive(Debug, Clone, Copy, Default)]
struct OpenSteps {
    /// Steps started and not ended.
    open: usize,
    /// The job's own execution has ended.
    own_ended: bool,
}

struct Outcome {
    status: Status,
    /// The latest progress the guest reported: percent and message.
    progress: Option<(u8, String)>,
    finished_ms: Option<u64>,
    /// The result document as JSON text, once finished.
    result: Option<Arc<str>>,
    /// Its executions, in the order they started.
    steps: Vec<Step>,
    /// Steps past [`MAX_STEPS`] (or [`MAX_TRACED`]) not kept.
    steps_dropped: u64,
    /// The bytes of the steps' errors and retries, within
    /// [`super::ServerConfig::job_step_bytes`].
    step_bytes: usize,
}

/// One execution of a job (the job's own, a workflow's step, a nested call), for its
/// timeline.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Step {
    execution_id: String,
    parent_id: Option<String>,
    processor: String,
    /// Where it ran in the workflow that started it (`step:2`, `node:parse`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<String>,
    depth: u32,
    started_at_ms: u64,
    ended_at_ms: Option<u64>,
    /// `running`, `completed` or `failed`.
    status: &'static str,
    duration_us: Option<u64>,
    attempts: Option<u32>,
    error: Option<weir::ExecutionError>,
    /// The attempts that failed and were retried: which, when, why.
    retries: Vec<Value>,
    /// The process that ran it (its id among the fleet's), when another one did.
    origin: Option<String>,
    /// Retries counted but not kept: past [`MAX_RETRIES`], or past the job's step bytes.
    #[serde(skip_serializing_if = "is_zero")]
    retries_dropped: u32,
    /// Its error's details were not kept, past the job's step bytes: their size.
    #[serde(skip_serializing_if = "Option::is_none")]
    details_dropped_bytes: Option<usize>,
    /// The bytes of JSON its error and its retries hold (details included), counted as
    /// they are recorded.
    #[serde(skip)]
    error_bytes: usize,
    #[serde(skip)]
    retries_bytes: usize,
}

impl Step {
    fn bytes(&self) -> usize {
        STEP_BYTES + self.error_bytes + self.retries_bytes
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The size of `value` as JSON text, without writing it anywhere.
fn json_bytes(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

impl Job {
    /// A job that starts running now.
    fn running(
        id: String,
        tenant: String,
        processor: String,
        session: Option<String>,
        priority: Option<u32>,
        input: Arc<str>,
        cancel: CancelHandle,
    ) -> Job {
        Job {
            id,
            tenant,
            processor,
            session,
            priority,
            input,
            submitted_ms: now_ms(),
            cancel,
            outcome: Mutex::new(Outcome {
                status: Status::Running,
                progress: None,
                finished_ms: None,
                result: None,
                steps: Vec::new(),
                steps_dropped: 0,
                step_bytes: 0,
            }),
            done: tokio::sync::watch::channel(false).0,
            open_steps: tokio::sync::watch::channel(OpenSteps::default()).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outcome> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job without its result: what lists show, with the result's size.
    fn summary(&self) -> Value {
        let outcome = self.lock();
        json!({
            "id": self.id,
            "tenant": self.tenant,
            "processor": self.processor,
            "session": self.session,
            "priority": self.priority,
            "status": outcome.status.as_str(),
            "progress": outcome.progress.as_ref().map(|(percent, message)| {
                json!({ "percent": percent, "message": message })
            }),
            "submittedAtMs": self.submitted_ms,
            "finishedAtMs": outcome.finished_ms,
            "resultBytes": outcome.result.as_ref().map(|r| r.len()),
            "stepCount": outcome.steps.len(),
            "stepsDropped": outcome.steps_dropped,
        })
    }

    /// The job with its input, its steps and its result document (once finished), as the
    /// JSON text `GET /v1/jobs/{id}` answers.
    fn with_result(&self) -> Response {
        let summary = self.summary().to_string();
        let (result, steps) = {
            let outcome = self.lock();
            let steps = serde_json::to_string(&outcome.steps).unwrap_or_else(|_| "[]".into());
            (outcome.result.clone(), steps)
        };
        let result_len = result.as_ref().map_or(0, |r| r.len());
        let mut body =
            String::with_capacity(summary.len() + self.input.len() + steps.len() + result_len + 40);
        // The summary is a JSON object: its closing brace gives way to the rest.
        body.push_str(&summary[..summary.len() - 1]);
        body.push_str(",\"input\":");
        body.push_str(&self.input);
        body.push_str(",\"steps\":");
        body.push_str(&steps);
        if let Some(result) = result {
            body.push_str(",\"result\":");
            body.push_str(&result);
        }
        body.push('}');
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }

    /// What the fleet keeps of the job beside its run's outcome, as JSON text: its input
    /// (up to [`ANNEX_INPUT_BYTES`]) and its first steps, up to [`ANNEX_STEPS_BYTES`] of
    /// them (the rest counted in `stepsDropped`).
    fn annex(&self) -> String {
        let outcome = self.lock();
        let mut steps = String::from("[");
        let mut kept = 0;
        for step in &outcome.steps {
            let Ok(text) = serde_json::to_string(step) else {
                break;
            };
            if steps.len() + text.len() + 2 > ANNEX_STEPS_BYTES {
                break;
            }
            if kept > 0 {
                steps.push(',');
            }
            steps.push_str(&text);
            kept += 1;
        }
        steps.push(']');
        let dropped = outcome.steps_dropped + (outcome.steps.len() - kept) as u64;
        let input = if self.input.len() <= ANNEX_INPUT_BYTES {
            &*self.input
        } else {
            "null"
        };
        format!(
            "{{\"input\":{input},\"inputBytes\":{},\"steps\":{steps},\"stepsDropped\":{dropped}}}",
            self.input.len(),
        )
    }

    /// Waits until the job's own execution has ended and none of its steps is open: its
    /// timeline is whole (the job's outcome can arrive before the events that make it).
    async fn timeline_settled(&self) {
        let mut steps = self.open_steps.subscribe();
        let _ = steps.wait_for(|s| s.open == 0 && s.own_ended).await;
    }

    /// What the job holds, in bytes, for the budget: its input, steps and result.
    fn held_bytes(&self) -> usize {
        let outcome = self.lock();
        self.input.len()
            + outcome.result.as_ref().map_or(0, |r| r.len())
            + outcome.steps.iter().map(Step::bytes).sum::<usize>()
    }
}

/// Every job this server knows.
pub(super) struct Jobs {
    inner: Mutex<Table>,
    /// Bytes of results kept per tenant.
    max_bytes: usize,
    /// Finished jobs kept per tenant.
    max_kept: usize,
    /// Bytes of errors one job's steps keep.
    max_step_bytes: usize,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<String, Arc<Job>>,
    /// Each tenant's finished jobs, oldest first: the ones to forget first. One ring per
    /// tenant, so that one tenant's many jobs never push out another's results.
    finished: HashMap<String, Finished>,
    /// Jobs still running, over all tenants.
    running: usize,
    /// The running jobs' executions being followed: execution id → its job and the index
    /// of its step there.
    trace: HashMap<String, (Arc<Job>, usize)>,
}

/// One tenant's finished jobs: ids and result sizes, oldest first, and their total.
#[derive(Default)]
struct Finished {
    ring: VecDeque<(String, usize)>,
    bytes: usize,
}

impl Jobs {
    /// An empty table keeping, per tenant, `max_kept` finished jobs whose results add up to
    /// at most `max_bytes`, and in each job at most `max_step_bytes` of its steps' errors.
    pub(super) fn new(max_bytes: usize, max_kept: usize, max_step_bytes: usize) -> Self {
        Jobs {
            inner: Mutex::default(),
            max_bytes,
            max_kept: max_kept.max(1),
            max_step_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a running job, unless [`MAX_RUNNING`] already run.
    fn insert(&self, job: Arc<Job>) -> Result<(), ApiError> {
        let mut table = self.lock();
        if table.running >= MAX_RUNNING {
            return Err(ApiError::over_quota(
                format!("this server already runs {MAX_RUNNING} jobs; retry later"),
                std::time::Duration::from_secs(1),
            )
            .with("quota", json!("server_jobs")));
        }
        table.running += 1;
        table.by_id.insert(job.id.clone(), job);
        Ok(())
    }

    /// Takes back `job`, added by [`Jobs::insert`], that never became a run of its own (its
    /// idempotency key named an earlier run, or it was refused before it ran).
    fn withdraw(&self, job: &Arc<Job>) {
        let mut table = self.lock();
        if table
            .by_id
            .get(&job.id)
            .is_some_and(|held| Arc::ptr_eq(held, job))
        {
            table.by_id.remove(&job.id);
            table.running = table.running.saturating_sub(1);
        }
    }

    /// Records that `job` finished with a result of `bytes`, and forgets the tenant's oldest
    /// finished jobs past the count or the byte budget.
    fn finish(&self, job: &Job, bytes: usize) {
        let mut table = self.lock();
        table.running = table.running.saturating_sub(1);
        // Its steps that ended are not followed any more (the ends still on their way
        // are, until they arrive or the job is forgotten).
        let ended: Vec<String> = job
            .lock()
            .steps
            .iter()
            .filter(|s| s.ended_at_ms.is_some())
            .map(|s| s.execution_id.clone())
            .collect();
        for id in ended {
            table.trace.remove(&id);
        }
        let finished = table.finished.entry(job.tenant.clone()).or_default();
        finished.ring.push_back((job.id.clone(), bytes));
        finished.bytes += bytes;
        let mut forgotten = Vec::new();
        while finished.ring.len() > self.max_kept
            || (finished.bytes > self.max_bytes && finished.ring.len() > 1)
        {
            let Some((old, old_bytes)) = finished.ring.pop_front() else {
                break;
            };
            finished.bytes -= old_bytes;
            forgotten.push(old);
        }
        for old in forgotten {
            if let Some(job) = table.by_id.remove(&old) {
                let steps: Vec<String> = job
                    .lock()
                    .steps
                    .iter()
                    .map(|s| s.execution_id.clone())
                    .collect();
                for id in steps {
                    table.trace.remove(&id);
                }
            }
        }
    }

    /// The result document as the JSON text kept (serialized once, straight from the
    /// result): whole within the budget, else a note of its size (with whether it
    /// succeeded).
    fn kept_result(&self, ok: bool, document: &impl serde::Serialize) -> Arc<str> {
        let text = serde_json::to_string(document).unwrap_or_else(|error| {
            json!({ "ok": ok, "error": { "kind": "execution", "code": "invalid-output", "message": format!("the result could not be written as JSON: {error}") } })
                .to_string()
        });
        if text.len() <= self.max_bytes {
            return text.into();
        }
        json!({
            "ok": ok,
            "resultTooLarge": { "bytes": text.len(), "limit": self.max_bytes },
        })
        .to_string()
        .into()
    }

    /// Records a `progress` event against the job whose execution reported it.
    fn progress(&self, event: &Event) {
        let Some(id) = event.execution_id.as_deref() else {
            return;
        };
        let Some(job) = self.lock().by_id.get(id).cloned() else {
            return;
        };
        let data = event.data.as_ref();
        let percent = data
            .and_then(|d| d["percent"].as_u64())
            .map_or(0, |p| p.min(100) as u8);
        let message = data
            .and_then(|d| d["message"].as_str())
            .unwrap_or_default()
            .to_string();
        let mut outcome = job.lock();
        if outcome.status == Status::Running {
            outcome.progress = Some((percent, message));
        }
    }

    /// Records a step's start, end or retry against the job it belongs to: the job's own
    /// execution, or one started (at any depth) by an execution of the job.
    fn follow(&self, event: &Event) {
        let Some(id) = event.execution_id.as_deref() else {
            return;
        };
        let mut table = self.lock();
        if let Some((job, index)) = table.trace.get(id).cloned() {
            drop(table);
            self.update_step(&job, index, id, event);
            return;
        }
        // A new execution: the job's own, or a child of one followed. (On the distributed
        // runtime a workflow's own execution runs nowhere and says nothing: its steps name
        // the job as their parent.)
        if event.event != EventKind::ProcessorStarted {
            return;
        }
        let job = match table.by_id.get(id) {
            Some(job) => job.clone(),
            None => {
                let Some(parent) = event.parent_id.as_deref() else {
                    return;
                };
                match table.trace.get(parent) {
                    Some((job, _)) => job.clone(),
                    None => match table.by_id.get(parent) {
                        Some(job) => job.clone(),
                        None => return,
                    },
                }
            }
        };
        let mut outcome = job.lock();
        // Past either bound the step is only counted (and never followed, so its trace
        // cannot outlive the job).
        if table.trace.len() >= MAX_TRACED || outcome.steps.len() >= MAX_STEPS {
            outcome.steps_dropped += 1;
            return;
        }
        table
            .trace
            .insert(id.to_string(), (job.clone(), outcome.steps.len()));
        outcome.steps.push(Step {
            execution_id: id.to_string(),
            parent_id: event.parent_id.clone(),
            processor: event.processor.clone().unwrap_or_default(),
            step: event
                .step
                .clone()
                .filter(|place| place.len() <= MAX_PLACE_BYTES),
            depth: event.depth.unwrap_or(0),
            started_at_ms: event.timestamp_ms,
            ended_at_ms: None,
            status: "running",
            duration_us: None,
            attempts: None,
            error: None,
            retries: Vec::new(),
            origin: event.origin.clone(),
            retries_dropped: 0,
            details_dropped_bytes: None,
            error_bytes: 0,
            retries_bytes: 0,
        });
        job.open_steps.send_modify(|steps| steps.open += 1);
    }

    /// Records the end or a retry of step `index` (execution `id`) of `job`.
    fn update_step(&self, job: &Job, index: usize, id: &str, event: &Event) {
        let mut outcome = job.lock();
        let finished = outcome.status != Status::Running;
        let Outcome {
            steps, step_bytes, ..
        } = &mut *outcome;
        let Some(step) = steps.get_mut(index) else {
            return;
        };
        match event.event {
            kind @ (EventKind::ProcessorCompleted | EventKind::ProcessorFailed) => {
                let first_end = step.ended_at_ms.is_none();
                job.open_steps.send_modify(|steps| {
                    if first_end {
                        steps.open = steps.open.saturating_sub(1);
                    }
                    steps.own_ended |= id == job.id;
                });
                step.status = if kind == EventKind::ProcessorCompleted {
                    "completed"
                } else {
                    "failed"
                };
                step.ended_at_ms = Some(event.timestamp_ms);
                step.duration_us = event.duration_us;
                step.attempts = event.attempts;
                let mut error = event.error.clone();
                let mut bytes = error.as_ref().map_or(0, json_bytes);
                // Past the job's bound the error keeps its kind, code and the start of its
                // message only.
                if *step_bytes + bytes > self.max_step_bytes
                    && let Some(error) = error.as_mut()
                {
                    step.details_dropped_bytes = error.details.take().as_ref().map(json_bytes);
                    if error.message.len() > CLIPPED_MESSAGE_BYTES {
                        let mut end = CLIPPED_MESSAGE_BYTES;
                        while !error.message.is_char_boundary(end) {
                            end -= 1;
                        }
                        error.message.truncate(end);
                        error.message.push('…');
                    }
                    bytes = json_bytes(&*error);
                }
                *step_bytes = step_bytes.saturating_sub(step.error_bytes) + bytes;
                step.error = error;
                step.error_bytes = bytes;
                // The end of a finished job's step: nothing more to follow for it.
                if finished {
                    drop(outcome);
                    self.lock().trace.remove(id);
                }
            }
            EventKind::ProcessorRetrying => {
                let retry = json!({
                    "attempt": event.attempt,
                    "atMs": event.timestamp_ms,
                    "error": event.error,
                    "delayMs": event.data.as_ref().and_then(|d| d.get("delayMs")),
                });
                let bytes = json_bytes(&retry);
                if step.retries.len() >= MAX_RETRIES || *step_bytes + bytes > self.max_step_bytes {
                    step.retries_dropped = step.retries_dropped.saturating_add(1);
                    return;
                }
                *step_bytes += bytes;
                step.retries_bytes += bytes;
                step.retries.push(retry);
            }
            // A second start of an execution followed already: nothing new.
            _ => {}
        }
    }

    /// Follows the runtime's `progress` events into the jobs they belong to, until
    /// `shutdown`.
    pub(super) fn track_progress(
        self: &Arc<Self>,
        runtime: &weir::Runtime,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let jobs = self.clone();
        let mut events = runtime.subscribe();
        handle.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    notice = events.recv() => match notice {
                        None => break,
                        Some(Notice::Event(event)) => match event.event {
                            EventKind::Progress => jobs.progress(&event),
                            EventKind::ProcessorStarted
                            | EventKind::ProcessorCompleted
                            | EventKind::ProcessorFailed
                            | EventKind::ProcessorRetrying => jobs.follow(&event),
                            _ => {}
                        },
                        Some(_) => {}
                    },
                }
            }
        });
    }

    /// The job `id` if `caller` may see it.
    fn get(&self, caller: &Caller, id: &str) -> Option<Arc<Job>> {
        self.lock()
            .by_id
            .get(id)
            .filter(|job| caller.sees_tenant(&job.tenant))
            .cloned()
    }
}

/// The body of `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Submission {
    /// The processor or workflow to run.
    processor: String,
    /// Its input state (default `{}`).
    #[serde(default = "empty_object")]
    input: Value,
    /// Run in this session.
    session: Option<String>,
    /// Lower the timeout.
    timeout_ms: Option<u64>,
    /// End the whole execution within this.
    deadline_ms: Option<u64>,
    /// Run ahead of queued work with a larger number (a tenant within its `min_priority`).
    priority: Option<u32>,
}

fn empty_object() -> Value {
    json!({})
}

/// `POST /v1/jobs`: starts an execution and answers `202` with its job at once.
pub(super) async fn submit(
    State(app): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = super::api::idempotency_key(&headers)?;
    let (body, admitted) = admit_then_read(&app, &caller, body).await?;
    let submission: Submission = serde_json::from_value(body).map_err(|e| {
        ApiError::bad_request(
            "invalid-input",
            format!(
                "a job is `{{\"processor\", \"input\", \"session\", \"timeoutMs\", \
                 \"deadlineMs\", \"priority\"}}`: {e}"
            ),
        )
    })?;
    // A job must name something that runs now: say so at once, not in a failed job. (On
    // the distributed runtime, a processor may exist only in Redis: the run says.)
    let catalog = app.runtime.catalog();
    let known = app.runtime.is_distributed()
        || catalog.plugins.contains_key(&submission.processor)
        || catalog.workflows.contains_key(&submission.processor);
    if !known || !caller.may_run(&submission.processor) {
        return Err(super::api::not_found_for(
            &app,
            &caller,
            &submission.processor,
        ));
    }
    let priority = caller.priority(submission.priority)?;
    let input: Arc<str> = submission.input.to_string().into();
    let options = Options {
        session: submission.session,
        timeout_ms: submission.timeout_ms,
        deadline_ms: submission.deadline_ms,
        priority,
        code: "invalid-input",
    };
    let request = prepare(
        &app,
        &caller,
        submission.processor,
        submission.input,
        options,
    )?;
    let id = weir::new_execution_id();
    let job = Arc::new(Job::running(
        id.clone(),
        request.tenant.clone().unwrap_or_default(),
        request.processor.clone(),
        request.session.clone(),
        request.priority,
        input,
        request.cancel.clone(),
    ));
    // With an idempotency key, the runtime says whether the job is a run of its own (then
    // 0 → 1) or an earlier request's (0 → 2); until then it is only provisional.
    const OWN: u8 = 1;
    const REPEAT: u8 = 2;
    let accepted = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let mut request = request;
    request.id = Some(id.clone());
    let told = match key {
        Some(key) => {
            let (tell, told) = tokio::sync::oneshot::channel();
            let tell = Mutex::new(Some(tell));
            let accepted = accepted.clone();
            let cancel = request.cancel.clone();
            request.idempotency_key = Some(key);
            request.on_accept = Some(weir::OnAccept::new(move |run, repeat| {
                accepted.store(if repeat { REPEAT } else { OWN }, Ordering::Release);
                if repeat {
                    // Nothing of this job's runs: stop waiting for the other run.
                    cancel.cancel_with(CancelReason::Request);
                }
                if let Some(tell) = tell.lock().ok().and_then(|mut t| t.take()) {
                    let _ = tell.send((run.to_string(), repeat));
                }
            }));
            Some(told)
        }
        None => None,
    };
    let keyed = told.is_some();
    // Refused (and the quota place given back) if the server runs too many jobs already.
    app.jobs.insert(job.clone())?;
    let jobs = app.jobs.clone();
    let fleet = app.runtime.fleet();
    let finished = job.clone();
    let own = accepted.clone();
    let execution = spawn_execution(&app, request, admitted, move |outcome| {
        if keyed && own.load(Ordering::Acquire) != OWN {
            jobs.withdraw(&finished);
            return;
        }
        let (status, result) = match outcome {
            Ok(result) if result.ok => (
                Status::Completed,
                jobs.kept_result(true, &result.document()),
            ),
            Ok(result) => {
                let cancelled = result
                    .error
                    .as_ref()
                    .is_some_and(|e| e.kind == ErrorKind::Cancelled);
                let status = if cancelled {
                    Status::Cancelled
                } else {
                    Status::Failed
                };
                (status, jobs.kept_result(false, &result.document()))
            }
            // It could not even start: the reason, in the shape of a result's error.
            Err(error) => {
                let (kind, code) = match error {
                    RuntimeError::NotFound { .. } => ("not-found", "processor-not-found"),
                    RuntimeError::InvalidRequest(_) => ("validation", "invalid-request"),
                    _ => ("unavailable", "unavailable"),
                };
                let message = error.to_string();
                let document = json!({ "ok": false, "error": { "kind": kind, "code": code, "message": message } });
                (Status::Failed, jobs.kept_result(false, &document))
            }
        };
        {
            let mut outcome = finished.lock();
            outcome.status = status;
            outcome.finished_ms = Some(now_ms());
            outcome.result = Some(result);
        }
        finished.done.send_replace(true);
        let bytes = finished.held_bytes();
        jobs.finish(&finished, bytes);
        if let Some(fleet) = fleet {
            annex_in_fleet(fleet, finished);
        }
    });
    let Some(told) = told else {
        drop(execution);
        return Ok((StatusCode::ACCEPTED, Json(job.summary())).into_response());
    };
    match told.await {
        Ok((_, false)) => {
            drop(execution);
            Ok((StatusCode::ACCEPTED, Json(job.summary())).into_response())
        }
        Ok((run, true)) => {
            app.jobs.withdraw(&job);
            drop(execution);
            let summary = match app.jobs.get(&caller, &run) {
                Some(earlier) => earlier.summary(),
                None => match app.runtime.fleet() {
                    Some(fleet) => match fleet_run(&fleet, &caller, &run).await? {
                        Some(status) => fleet_job(&status),
                        None => json!({ "id": run }),
                    },
                    None => json!({ "id": run }),
                },
            };
            let mut response = (StatusCode::OK, Json(summary)).into_response();
            response.headers_mut().insert(
                super::api::REPLAYED,
                axum::http::HeaderValue::from_static("true"),
            );
            Ok(response)
        }
        // Refused before it was taken on: why, as the answer.
        Err(_) => {
            app.jobs.withdraw(&job);
            let outcome = execution
                .await
                .map_err(|e| ApiError::unavailable(format!("the execution's task failed: {e}")))?;
            Err(match outcome {
                Err(error) => super::api::runtime_error(&app, &caller, error),
                Ok(result) => refused_job(&result),
            })
        }
    }
}

/// The answer to a job refused before it ran, from its result's error: `409` for an
/// idempotency key sent with another request, `429` for too many keys.
fn refused_job(result: &weir::ExecutionResult) -> ApiError {
    let Some(error) = &result.error else {
        return ApiError::unavailable("the job was refused without a reason (a bug)");
    };
    let message = error.message.clone();
    match error.code.as_deref() {
        Some(weir::codes::IDEMPOTENCY_KEY_REUSED) => {
            ApiError::conflict(weir::codes::IDEMPOTENCY_KEY_REUSED, message)
        }
        Some(weir::codes::TOO_MANY_IDEMPOTENCY_KEYS) => ApiError::bound_hit(
            weir::codes::TOO_MANY_IDEMPOTENCY_KEYS,
            message,
            std::time::Duration::from_secs(60),
        ),
        _ => ApiError::unprocessable("refused", message),
    }
}

/// Keeps the finished `job`'s input and timeline beside its run's outcome in Redis, so
/// that every server of the fleet shows its page whole: once its steps have all ended, or
/// after [`ANNEX_WAIT`].
fn annex_in_fleet(fleet: weir::Fleet, job: Arc<Job>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let _ = tokio::time::timeout(ANNEX_WAIT, job.timeline_settled()).await;
        let text = job.annex();
        if let Err(error) = fleet.annex_run(&job.id, &text).await {
            tracing::warn!(
                job = %job.id,
                "the job's input and timeline were not kept in Redis, so other servers show \
                 its outcome only: {error}"
            );
        }
    });
}

/// Redis did not answer a read of the fleet's runs.
fn runs_unavailable(error: RuntimeError) -> ApiError {
    ApiError::unavailable(format!(
        "the fleet's runs cannot be read from Redis ({error}); check that the server given to \
         `--redis` is up"
    ))
}

/// A run of the fleet that `caller` may see: `None` when there is none (or not the
/// caller's).
async fn fleet_run(
    fleet: &weir::Fleet,
    caller: &Caller,
    id: &str,
) -> Result<Option<weir::RunStatus>, ApiError> {
    Ok(fleet
        .run_status(id)
        .await
        .map_err(runs_unavailable)?
        .filter(|run| caller.sees_tenant(&run.tenant)))
}

/// A run of the fleet as a job: what its record says, with the input and steps its
/// submitting server kept (when a server's jobs API submitted it).
fn fleet_job(run: &weir::RunStatus) -> Value {
    let status = match &run.result {
        None => Status::Running,
        Some(result) if result.ok => Status::Completed,
        Some(result)
            if result
                .error
                .as_ref()
                .is_some_and(|e| e.kind == ErrorKind::Cancelled) =>
        {
            Status::Cancelled
        }
        Some(_) => Status::Failed,
    };
    let mut annex: Value = run
        .annex
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_else(|| json!({}));
    let result = run.result.as_ref().map(|r| r.document());
    let steps = annex["steps"].take();
    let mut job = json!({
        "id": run.id,
        "tenant": run.tenant,
        "processor": run.target,
        "session": run.session,
        "priority": run.priority,
        "status": status.as_str(),
        "progress": null,
        "submittedAtMs": run.submitted_ms,
        "finishedAtMs": run.finished_ms,
        "resultBytes": result.as_ref().map(json_bytes),
        "stepCount": steps.as_array().map(Vec::len),
        "stepsDropped": annex["stepsDropped"].take(),
        "input": annex["input"].take(),
        "inputBytes": annex["inputBytes"].take(),
        "steps": if steps.is_array() { steps } else { json!([]) },
    });
    if let Some(result) = result.and_then(|r| serde_json::to_value(r).ok()) {
        job["result"] = result;
    }
    job
}

/// A run of the fleet's index as a row of a list.
fn fleet_row(run: &weir::RunSummary) -> Value {
    json!({
        "id": run.id,
        "tenant": run.tenant,
        "processor": run.target,
        "session": run.session,
        "priority": run.priority,
        "status": run.state.as_str(),
        "progress": null,
        "submittedAtMs": run.submitted_ms,
        "finishedAtMs": run.finished_ms,
        "resultBytes": run.result_bytes,
        "stepCount": null,
        "stepsDropped": null,
    })
}

/// Options of `GET /v1/jobs/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct GetQuery {
    /// Wait up to this long (at most a minute) for a running job to finish.
    wait_ms: Option<u64>,
}

/// The longest `?waitMs=` honoured.
const MAX_WAIT_MS: u64 = 60_000;

/// `GET /v1/jobs/{id}`: the job, with its result document once it has finished;
/// `?waitMs=N` answers as soon as it finishes, or after N ms with it still running.
pub(super) async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(ApiError::bad_query)?;
    let wait = query
        .wait_ms
        .map(|ms| std::time::Duration::from_millis(ms.min(MAX_WAIT_MS)));
    let Some(job) = app.jobs.get(&caller, &id) else {
        // Behind `--redis`: a run another server (or the CLI) submitted.
        let fleet = app.runtime.fleet().ok_or_else(|| job_not_found(&id))?;
        let mut run = fleet_run(&fleet, &caller, &id)
            .await?
            .ok_or_else(|| job_not_found(&id))?;
        if let (None, Some(wait)) = (&run.result, wait) {
            tokio::select! {
                _ = tokio::time::timeout(wait, fleet.wait_run(&id)) => {}
                _ = app.shutdown.cancelled() => {}
            }
            run = fleet_run(&fleet, &caller, &id).await?.unwrap_or(run);
        }
        return Ok(Json(fleet_job(&run)).into_response());
    };
    if let Some(wait) = wait {
        let mut done = job.done.subscribe();
        // Timing out is an answer too (the job, still running), and so is the server
        // shutting down, which must not wait for this.
        tokio::select! {
            _ = tokio::time::timeout(wait, done.wait_for(|finished| *finished)) => {}
            _ = app.shutdown.cancelled() => {}
        }
    }
    Ok(job.with_result())
}

fn job_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "job-not-found",
        format!(
            "no job `{id}` (each tenant's newest finished jobs are kept within a count and a \
             byte budget, and a fleet's runs for the run retention; older ones are forgotten)"
        ),
    )
}

/// `DELETE /v1/jobs/{id}`: cancels a running job; a finished one is left as it is.
pub(super) async fn cancel(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let running = match app.jobs.get(&caller, &id) {
        Some(job) => {
            let running = job.lock().status == Status::Running;
            if running {
                job.cancel.cancel_with(CancelReason::Request);
            }
            running
        }
        // Behind `--redis`: a run another server (or the CLI) submitted, cancelled
        // wherever its jobs are.
        None => {
            let fleet = app.runtime.fleet().ok_or_else(|| job_not_found(&id))?;
            let run = fleet_run(&fleet, &caller, &id)
                .await?
                .ok_or_else(|| job_not_found(&id))?;
            run.result.is_none() && fleet.cancel_run(&id).await.map_err(runs_unavailable)?
        }
    };
    let status = if running {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "id": id, "cancelled": running }))).into_response())
}

/// Filters and page of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ListQuery {
    status: Option<Status>,
    processor: Option<String>,
    session: Option<String>,
    /// The operator's choice of one tenant.
    tenant: Option<String>,
    /// Submitted at or after (ms since the Unix epoch).
    since_ms: Option<u64>,
    /// Submitted before (ms since the Unix epoch).
    until_ms: Option<u64>,
    /// Jobs older than this one (the previous page's `next`).
    before: Option<String>,
    /// Page size: default 50, at most 500.
    limit: Option<usize>,
    /// Jobs that asked for this priority or a larger number (a job that asked for none is
    /// in no range).
    min_priority: Option<u32>,
    /// Jobs that asked for this priority or a smaller number.
    max_priority: Option<u32>,
    /// The page's order: `time` (newest first, the default) or `priority` (the most urgent
    /// first, then newest). Pages always go back in time: `priority` orders each page.
    sort: Option<Sort>,
}

/// How a page of jobs is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Sort {
    Time,
    Priority,
}

impl ListQuery {
    /// Whether a job that asked for `priority` is in the asked range.
    fn priority_matches(&self, priority: Option<u32>) -> bool {
        if self.min_priority.is_none() && self.max_priority.is_none() {
            return true;
        }
        priority.is_some_and(|p| {
            self.min_priority.is_none_or(|min| p >= min)
                && self.max_priority.is_none_or(|max| p <= max)
        })
    }
}

/// Orders `rows` (newest first) as `sort` asks: by priority, the most urgent first and the
/// ones that asked for none last, newest first within one priority.
fn sort_page(rows: &mut [Value], sort: Option<Sort>) {
    if sort == Some(Sort::Priority) {
        rows.sort_by_key(|row| row["priority"].as_u64().unwrap_or(u64::MAX));
    }
}

/// `GET /v1/jobs`: the caller's jobs, newest first, filtered, a page at a time.
pub(super) async fn list(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(ApiError::bad_query)?;
    caller.may_ask_for(q.tenant.as_deref())?;
    let limit = ApiError::page_limit(q.limit, 500)?;
    if let Some(fleet) = app.runtime.fleet() {
        return fleet_list(&app, &fleet, &caller, q, limit).await;
    }
    let mut jobs: Vec<Arc<Job>> = app
        .jobs
        .lock()
        .by_id
        .values()
        .filter(|job| caller.sees_tenant(&job.tenant))
        .filter(|job| q.tenant.as_deref().is_none_or(|t| job.tenant == t))
        .filter(|job| q.processor.as_deref().is_none_or(|p| job.processor == p))
        .filter(|job| q.session.is_none() || job.session == q.session)
        .filter(|job| q.since_ms.is_none_or(|t| job.submitted_ms >= t))
        .filter(|job| q.until_ms.is_none_or(|t| job.submitted_ms < t))
        .filter(|job| q.before.as_deref().is_none_or(|b| job.id.as_str() < b))
        .filter(|job| q.priority_matches(job.priority))
        .cloned()
        .collect();
    if let Some(status) = q.status {
        jobs.retain(|job| job.lock().status == status);
    }
    // Ids are UUIDv7: ordered by submission time.
    jobs.sort_by(|a, b| b.id.cmp(&a.id));
    let next = (jobs.len() > limit).then(|| jobs[limit - 1].id.clone());
    jobs.truncate(limit);
    let mut rows: Vec<Value> = jobs.iter().map(|job| job.summary()).collect();
    sort_page(&mut rows, q.sort);
    Ok(Json(json!({ "jobs": rows, "next": next })))
}

/// `GET /v1/jobs` behind `--redis`: the fleet's runs, from its index in Redis (every
/// server's, the CLI's and the library's), shown as this server's jobs where it has them
/// (with their progress and steps).
async fn fleet_list(
    app: &AppState,
    fleet: &weir::Fleet,
    caller: &Caller,
    q: ListQuery,
    limit: usize,
) -> Result<Json<Value>, ApiError> {
    if let Some(before) = &q.before
        && !weir::RunPage::is_cursor(before)
    {
        return Err(ApiError::bad_request(
            "invalid-query",
            format!("`before={before}` is not a page's `next`: pass the `next` of the page before"),
        ));
    }
    let tenant = match caller {
        Caller::Tenant(own) => Some(own.name().to_string()),
        Caller::Operator | Caller::Open => q.tenant,
    };
    let query = weir::RunQuery {
        tenant,
        target: q.processor,
        session: q.session,
        state: q.status.map(Status::state),
        since_ms: q.since_ms,
        until_ms: q.until_ms,
        before: q.before,
        limit,
        min_priority: q.min_priority,
        max_priority: q.max_priority,
    };
    let page = fleet.runs(&query).await.map_err(runs_unavailable)?;
    let local: Vec<Option<Arc<Job>>> = {
        let table = app.jobs.lock();
        page.runs
            .iter()
            .map(|run| table.by_id.get(&run.id).cloned())
            .collect()
    };
    let rows: Vec<Value> = page
        .runs
        .iter()
        .zip(local)
        .map(|(run, job)| match job {
            Some(job) => job.summary(),
            None => fleet_row(run),
        })
        .collect();
    let mut rows = rows;
    sort_page(&mut rows, q.sort);
    Ok(Json(json!({ "jobs": rows, "next": page.next })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, tenant: &str) -> Arc<Job> {
        Arc::new(Job::running(
            id.into(),
            tenant.into(),
            "p".into(),
            None,
            None,
            Arc::from("{}"),
            CancelHandle::new(),
        ))
    }

    /// Runs job `id` of `tenant` to its end with a result of `bytes` bytes.
    fn finish(jobs: &Jobs, id: &str, tenant: &str, bytes: usize) {
        let job = job(id, tenant);
        jobs.insert(job.clone()).unwrap();
        let result = jobs.kept_result(true, &json!("x".repeat(bytes - 2)));
        assert_eq!(result.len(), bytes);
        job.lock().result = Some(result);
        jobs.finish(&job, bytes);
    }

    fn kept(jobs: &Jobs) -> Vec<String> {
        let mut ids: Vec<String> = jobs.lock().by_id.keys().cloned().collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_tenants_oldest_finished_jobs_go_past_its_byte_budget() {
        let jobs = Jobs::new(100, 1000, 4 << 20);
        finish(&jobs, "a1", "a", 40);
        finish(&jobs, "a2", "a", 40);
        finish(&jobs, "b1", "b", 90);
        assert_eq!(kept(&jobs), ["a1", "a2", "b1"]);
        // 120 bytes for `a`: its oldest goes; `b`'s budget is its own.
        finish(&jobs, "a3", "a", 40);
        assert_eq!(kept(&jobs), ["a2", "a3", "b1"]);
        assert_eq!(jobs.lock().finished["a"].bytes, 80);
    }

    #[test]
    fn a_tenants_oldest_finished_jobs_go_past_its_count() {
        let jobs = Jobs::new(1 << 20, 2, 4 << 20);
        for id in ["1", "2", "3"] {
            finish(&jobs, id, "a", 10);
        }
        assert_eq!(kept(&jobs), ["2", "3"]);
    }

    #[test]
    fn a_result_over_the_whole_budget_is_kept_as_a_note_of_its_size() {
        let jobs = Jobs::new(100, 10, 4 << 20);
        let note: Value =
            serde_json::from_str(&jobs.kept_result(false, &json!("x".repeat(500)))).unwrap();
        assert_eq!(
            note,
            json!({"ok": false, "resultTooLarge": {"bytes": 502, "limit": 100}})
        );
    }

    fn event(kind: EventKind, id: &str, parent: Option<&str>, processor: &str) -> Event {
        serde_json::from_value(json!({
            "event": kind,
            "sequence": 1,
            "timestampMs": 1,
            "tenant": "a",
            "executionId": id,
            "parentId": parent,
            "processor": processor,
        }))
        .expect("an event")
    }

    #[test]
    fn a_jobs_steps_are_followed_at_any_depth_with_their_retries_and_ends() {
        let jobs = Jobs::new(1 << 20, 10, 4 << 20);
        let root = job("root", "a");
        jobs.insert(root.clone()).unwrap();
        jobs.follow(&event(EventKind::ProcessorStarted, "root", None, "flow"));
        jobs.follow(&event(EventKind::ProcessorStarted, "s1", Some("root"), "p"));
        jobs.follow(&event(EventKind::ProcessorStarted, "s2", Some("s1"), "q"));
        // Another job's executions are not this one's.
        jobs.follow(&event(
            EventKind::ProcessorStarted,
            "x",
            Some("elsewhere"),
            "p",
        ));
        let mut retry = event(EventKind::ProcessorRetrying, "s2", Some("s1"), "q");
        retry.attempt = Some(1);
        retry.data = Some(json!({ "delayMs": 5 }));
        jobs.follow(&retry);
        let mut failed = event(EventKind::ProcessorFailed, "s2", Some("s1"), "q");
        failed.error = Some(weir::ExecutionError::host(
            ErrorKind::Network,
            "down",
            "down",
        ));
        failed.attempts = Some(2);
        jobs.follow(&failed);
        jobs.follow(&event(
            EventKind::ProcessorCompleted,
            "s1",
            Some("root"),
            "p",
        ));
        let outcome = root.lock();
        let steps: Vec<(&str, &str)> = outcome
            .steps
            .iter()
            .map(|s| (s.execution_id.as_str(), s.status))
            .collect();
        assert_eq!(
            steps,
            [("root", "running"), ("s1", "completed"), ("s2", "failed")]
        );
        let s2 = &outcome.steps[2];
        assert_eq!(s2.retries.len(), 1);
        assert_eq!(s2.retries[0]["delayMs"], 5);
        assert_eq!(s2.attempts, Some(2));
        assert_eq!(s2.error.as_ref().map(|e| e.message.as_str()), Some("down"));
        drop(outcome);
        assert_eq!(jobs.lock().trace.len(), 3, "x is not followed");
    }

    #[test]
    fn a_steps_error_details_and_retries_count_in_the_byte_budget() {
        let jobs = Jobs::new(1 << 30, 10, 4 << 20);
        let root = job("root", "a");
        jobs.insert(root.clone()).unwrap();
        jobs.follow(&event(EventKind::ProcessorStarted, "root", None, "p"));
        let error = weir::ExecutionError::host(ErrorKind::Execution, "boom", "boom")
            .with_details(json!({ "blob": "x".repeat(32 << 10) }));
        let mut retry = event(EventKind::ProcessorRetrying, "root", None, "p");
        retry.error = Some(error.clone());
        jobs.follow(&retry);
        let mut failed = event(EventKind::ProcessorFailed, "root", None, "p");
        failed.error = Some(error);
        jobs.follow(&failed);
        // The details are held twice (the retry's and the end's): both count.
        assert!(root.held_bytes() > 64 << 10, "{}", root.held_bytes());
    }

    #[tokio::test]
    async fn a_jobs_timeline_is_settled_once_its_own_end_and_every_step_end_arrived() {
        let jobs = Jobs::new(1 << 30, 10, 4 << 20);
        let root = job("root", "a");
        jobs.insert(root.clone()).unwrap();
        let settled = |job: Arc<Job>| tokio::spawn(async move { job.timeline_settled().await });
        // Nothing arrived yet (the outcome came first): not settled, though nothing is open.
        let waiting = settled(root.clone());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        jobs.follow(&event(EventKind::ProcessorStarted, "root", None, "flow"));
        jobs.follow(&event(EventKind::ProcessorStarted, "s1", Some("root"), "p"));
        jobs.follow(&event(EventKind::ProcessorCompleted, "root", None, "flow"));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a step is still open");
        jobs.follow(&event(
            EventKind::ProcessorCompleted,
            "s1",
            Some("root"),
            "p",
        ));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("settled once the step ended")
            .expect("joins");
    }

    #[test]
    fn a_running_jobs_steps_hold_at_most_their_byte_bound() {
        let jobs = Jobs::new(1 << 30, 10, 4 << 20);
        let root = job("root", "a");
        jobs.insert(root.clone()).unwrap();
        jobs.follow(&event(EventKind::ProcessorStarted, "root", None, "flow"));
        // A thousand steps, each retried twice and failing, every error with 64 KiB of
        // details: about 190 MiB of errors if all were kept.
        let error = || {
            let mut error = weir::ExecutionError::host(ErrorKind::Execution, "boom", "failed");
            error.details = Some(json!("x".repeat(64 << 10)));
            error
        };
        for i in 0..MAX_STEPS - 1 {
            let id = format!("s{i}");
            jobs.follow(&event(EventKind::ProcessorStarted, &id, Some("root"), "p"));
            for _ in 0..2 {
                let mut retry = event(EventKind::ProcessorRetrying, &id, Some("root"), "p");
                retry.error = Some(error());
                jobs.follow(&retry);
            }
            let mut failed = event(EventKind::ProcessorFailed, &id, Some("root"), "p");
            failed.error = Some(error());
            jobs.follow(&failed);
        }
        // Still running, it holds its bound (the errors', and each step's own), and what it
        // holds is what it counts.
        let held = root.held_bytes();
        let past = CLIPPED_MESSAGE_BYTES + 256;
        assert!(
            held <= (4 << 20) + MAX_STEPS * (STEP_BYTES + past),
            "{held}"
        );
        let text = serde_json::to_string(&root.lock().steps).unwrap();
        assert!(text.len() <= held, "{} > {held}", text.len());
        // Every step is still there, with its status and its error's kind and message.
        let outcome = root.lock();
        assert_eq!(outcome.steps.len(), MAX_STEPS);
        let last = outcome.steps.last().unwrap();
        assert_eq!(last.status, "failed");
        assert_eq!(
            last.error.as_ref().map(|e| e.message.as_str()),
            Some("failed")
        );
    }

    #[test]
    fn a_jobs_annex_in_the_fleet_keeps_its_first_steps_within_its_byte_bound() {
        let jobs = Jobs::new(1 << 30, 10, 4 << 20);
        let root = job("root", "a");
        jobs.insert(root.clone()).unwrap();
        jobs.follow(&event(EventKind::ProcessorStarted, "root", None, "flow"));
        // Steps whose errors carry large messages: far more than the annex keeps.
        for i in 0..MAX_STEPS - 1 {
            let id = format!("s{i}");
            jobs.follow(&event(EventKind::ProcessorStarted, &id, Some("root"), "p"));
            let mut failed = event(EventKind::ProcessorFailed, &id, Some("root"), "p");
            failed.error = Some(weir::ExecutionError::host(
                ErrorKind::Execution,
                "boom",
                "x".repeat(4 << 10),
            ));
            jobs.follow(&failed);
        }
        let annex: Value = serde_json::from_str(&root.annex()).expect("the annex is JSON");
        let kept = annex["steps"].as_array().expect("steps").len();
        assert!(kept > 10 && kept < MAX_STEPS, "{kept}");
        assert_eq!(annex["stepsDropped"], (MAX_STEPS - kept) as u64);
        assert_eq!(
            annex["steps"][0]["executionId"], "root",
            "the first steps are kept"
        );
        assert!(
            root.annex().len() <= ANNEX_STEPS_BYTES + 256,
            "{}",
            root.annex().len()
        );
        assert_eq!(annex["input"], json!({}));
    }

    #[test]
    fn a_job_keeps_at_most_its_steps_and_forgets_their_traces_when_it_goes() {
        let jobs = Jobs::new(1 << 20, 1, 4 << 20);
        let root = job("root", "a");
        jobs.insert(root.clone()).unwrap();
        jobs.follow(&event(EventKind::ProcessorStarted, "root", None, "flow"));
        for i in 0..MAX_STEPS + 4 {
            let id = format!("s{i}");
            jobs.follow(&event(EventKind::ProcessorStarted, &id, Some("root"), "p"));
        }
        assert_eq!(root.lock().steps.len(), MAX_STEPS);
        assert_eq!(root.lock().steps_dropped, 5);
        root.lock().status = Status::Completed;
        jobs.finish(&root, 10);
        // The job is forgotten once a newer one of its tenant finishes past the count.
        finish(&jobs, "next", "a", 10);
        assert!(jobs.lock().trace.is_empty(), "{}", jobs.lock().trace.len());
    }
}
