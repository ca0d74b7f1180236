//! Jobs: executions submitted with `POST /v1/jobs` that run in the background while the
//! client goes on, read back with `GET /v1/jobs/{id}`, listed with filters and pages, and
//! cancelled with `DELETE /v1/jobs/{id}`. Each job is one execution (its id is the
//! execution's id) of the caller's tenant, under the same grants and quotas as
//! `POST /v1/run`, and shows the latest progress its guest reported (one task per server
//! follows the `progress` events). The table lives in this server's memory: every running
//! job and each tenant's newest [`KEPT_FINISHED`] finished ones. Progress is matched by
//! execution id: a job that runs a workflow shows its steps' progress in the event stream,
//! not in the job.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::access::Caller;
use super::api::{Options, parse_body, prepare, spawn_execution};
use super::error::ApiError;
use crate::cancel::{CancelHandle, CancelReason};
use crate::clock::now_ms;
use crate::error::{ErrorKind, RuntimeError};
use crate::events::{Event, EventKind, Notice};

/// Finished jobs kept for reading, per tenant; older ones are forgotten.
pub const KEPT_FINISHED: usize = 10_000;

/// Jobs one server runs at once, over all tenants; more get `429` (a tenant's own
/// `concurrent` quota usually says no well before).
pub const MAX_RUNNING: usize = 10_000;

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
    submitted_ms: u64,
    cancel: CancelHandle,
    outcome: Mutex<Outcome>,
    /// Becomes true when the job has finished: what `?waitMs=` waits on.
    done: tokio::sync::watch::Sender<bool>,
}

struct Outcome {
    status: Status,
    /// The latest progress the guest reported: percent and message.
    progress: Option<(u8, String)>,
    finished_ms: Option<u64>,
    /// The result document, once finished.
    result: Option<Value>,
}

impl Job {
    fn lock(&self) -> std::sync::MutexGuard<'_, Outcome> {
        self.outcome.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn to_json(&self) -> Value {
        let outcome = self.lock();
        json!({
            "id": self.id,
            "tenant": self.tenant,
            "processor": self.processor,
            "session": self.session,
            "status": outcome.status.as_str(),
            "progress": outcome.progress.as_ref().map(|(percent, message)| {
                json!({ "percent": percent, "message": message })
            }),
            "submittedAtMs": self.submitted_ms,
            "finishedAtMs": outcome.finished_ms,
            "result": outcome.result,
        })
    }
}

/// Every job this server knows.
#[derive(Default)]
pub(super) struct Jobs {
    inner: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_id: HashMap<String, Arc<Job>>,
    /// Each tenant's finished jobs, oldest first: the ones to forget first. One ring per
    /// tenant, so that one tenant's many jobs never push out another's results.
    finished: HashMap<String, VecDeque<String>>,
    /// Jobs still running, over all tenants.
    running: usize,
}

impl Jobs {
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

    fn finish(&self, job: &Job) {
        let mut table = self.lock();
        table.running = table.running.saturating_sub(1);
        let ring = table.finished.entry(job.tenant.clone()).or_default();
        ring.push_back(job.id.clone());
        let forgotten: Vec<String> = if ring.len() > KEPT_FINISHED {
            ring.drain(..ring.len() - KEPT_FINISHED).collect()
        } else {
            Vec::new()
        };
        for old in forgotten {
            table.by_id.remove(&old);
        }
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

    /// Follows the runtime's `progress` events into the jobs they belong to, until
    /// `shutdown`.
    pub(super) fn track_progress(
        self: &Arc<Self>,
        runtime: &crate::Runtime,
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
                        Some(Notice::Event(event)) if event.event == EventKind::Progress => {
                            jobs.progress(&event);
                        }
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
}

fn empty_object() -> Value {
    json!({})
}

/// `POST /v1/jobs`: starts an execution and answers `202` with its job at once.
pub(super) async fn submit(
    State(app): State<AppState>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = parse_body(&app, body)?;
    let submission: Submission = serde_json::from_value(body).map_err(|e| {
        ApiError::bad_request(
            "invalid-input",
            format!("a job is `{{\"processor\", \"input\", \"session\", \"timeoutMs\"}}`: {e}"),
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
    let options = Options {
        session: submission.session,
        timeout_ms: submission.timeout_ms,
        code: "invalid-input",
    };
    let (request, admitted) = prepare(
        &app,
        &caller,
        submission.processor,
        submission.input,
        options,
    )
    .await?;
    let id = crate::clock::new_execution_id();
    let job = Arc::new(Job {
        id: id.clone(),
        tenant: request.tenant.clone().unwrap_or_default(),
        processor: request.processor.clone(),
        session: request.session.clone(),
        submitted_ms: now_ms(),
        cancel: request.cancel.clone(),
        outcome: Mutex::new(Outcome {
            status: Status::Running,
            progress: None,
            finished_ms: None,
            result: None,
        }),
        done: tokio::sync::watch::channel(false).0,
    });
    // Refused (and the quota place given back) if the server runs too many jobs already.
    app.jobs.insert(job.clone())?;
    let jobs = app.jobs.clone();
    let mut request = request;
    request.id = Some(id.clone());
    let finished = job.clone();
    drop(spawn_execution(&app, request, admitted, move |outcome| {
        let (status, result) = match outcome {
            Ok(result) if result.ok => (Status::Completed, json!(result.document())),
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
                (status, json!(result.document()))
            }
            // It could not even start: the reason, in the shape of a result's error.
            Err(error) => {
                let (kind, code) = match error {
                    RuntimeError::NotFound { .. } => ("not-found", "processor-not-found"),
                    RuntimeError::InvalidRequest(_) => ("validation", "invalid-request"),
                    _ => ("unavailable", "unavailable"),
                };
                let message = error.to_string();
                (
                    Status::Failed,
                    json!({ "ok": false, "error": { "kind": kind, "code": code, "message": message } }),
                )
            }
        };
        {
            let mut outcome = finished.lock();
            outcome.status = status;
            outcome.finished_ms = Some(now_ms());
            outcome.result = Some(result);
        }
        finished.done.send_replace(true);
        jobs.finish(&finished);
    }));
    Ok((StatusCode::ACCEPTED, Json(job.to_json())).into_response())
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
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query.map_err(ApiError::bad_query)?;
    let job = app
        .jobs
        .get(&caller, &id)
        .ok_or_else(|| job_not_found(&id))?;
    if let Some(ms) = query.wait_ms {
        let mut done = job.done.subscribe();
        let wait = std::time::Duration::from_millis(ms.min(MAX_WAIT_MS));
        // Timing out is an answer too (the job, still running), and so is the server
        // shutting down, which must not wait for this.
        tokio::select! {
            _ = tokio::time::timeout(wait, done.wait_for(|finished| *finished)) => {}
            _ = app.shutdown.cancelled() => {}
        }
    }
    Ok(Json(job.to_json()))
}

fn job_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "job-not-found",
        format!(
            "no job `{id}` (each tenant's newest {KEPT_FINISHED} finished jobs are kept on this \
             server)"
        ),
    )
}

/// `DELETE /v1/jobs/{id}`: cancels a running job; a finished one is left as it is.
pub(super) async fn cancel(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let job = app
        .jobs
        .get(&caller, &id)
        .ok_or_else(|| job_not_found(&id))?;
    let running = job.lock().status == Status::Running;
    if running {
        job.cancel.cancel_with(CancelReason::Request);
    }
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
        .cloned()
        .collect();
    if let Some(status) = q.status {
        jobs.retain(|job| job.lock().status == status);
    }
    // Ids are UUIDv7: ordered by submission time.
    jobs.sort_by(|a, b| b.id.cmp(&a.id));
    let next = (jobs.len() > limit).then(|| jobs[limit - 1].id.clone());
    jobs.truncate(limit);
    let rows: Vec<Value> = jobs.iter().map(|job| job.to_json()).collect();
    Ok(Json(json!({ "jobs": rows, "next": next })))
}
