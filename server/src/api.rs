//! The request handlers of the JSON API: each turns one request into one call on the
//! [`Runtime`](weir::Runtime) and its answer into JSON.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::access::{Caller, Tenant};
use super::error::ApiError;
use super::quota::{Admitted, Refused};
use super::{AppState, OPENAPI, metrics};
use weir::ExecutionRequest;
use weir::ExecutionResult;
use weir::RuntimeError;
use weir::RuntimeState;
use weir::RuntimeStats;
use weir::{CancelHandle, CancelReason};
use weir::{ProcessorStats, SessionRefused};

/// `GET /`: the dashboard (a static page; the data it shows comes from the API, with the
/// token typed into it).
pub(super) async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Its own scripts and styles (inline) and API calls only, and never in a frame:
            // another site cannot frame it to click Stop or Redrive through it.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        super::DASHBOARD,
    )
        .into_response()
}

/// `GET /healthz`: the process is up and answering.
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 while the runtime accepts work, 503 otherwise.
pub(super) async fn readyz(State(app): State<AppState>) -> Response {
    let state = app.runtime.state();
    let body = json!({
        "status": match state {
            RuntimeState::Created => "starting",
            RuntimeState::Running => "ready",
            RuntimeState::Stopping => "stopping",
            RuntimeState::Stopped => "stopped",
        },
        "plugins": app.runtime.catalog().plugins.len(),
    });
    let status = if state == RuntimeState::Running {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text (the operator's).
pub(super) async fn metrics(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require_operator("`/metrics`")?;
    let stats = runtime_stats(&app, None).await?;
    Ok((
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&app.runtime, &stats),
    )
        .into_response())
}

/// `GET /v1/openapi.json`: the API's description.
pub(super) async fn openapi(_caller: Caller) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Options of `POST /v1/run/{name}`, from the query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RunQuery {
    /// Run in this session: an input without `metadata` continues from the session's stored
    /// revision (its version; the input's own fields are the state), and a successful result
    /// becomes the session's state.
    session: Option<String>,
    /// Lower the timeout of this execution (never raises the plugin's).
    timeout_ms: Option<u64>,
    /// The whole execution (every step, wait and retry) ends within this, or fails with
    /// `timeout`; on the distributed runtime it replaces the run deadline.
    deadline_ms: Option<u64>,
    /// Run ahead of queued work with a larger number (a tenant within its `min_priority`).
    priority: Option<u32>,
}

/// `POST /v1/run/{name}`: runs a processor or workflow on the body (a JSON object; empty
/// means `{}`) for the caller's tenant, within its quotas, and answers with its result
/// document.
pub(super) async fn run(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    query: Result<Query<RunQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Who may run what comes first: the operator, or a tenant naming what it may not run,
    // learns nothing from how its body would have been judged.
    caller.tenant()?;
    if !caller.may_run(&name) {
        return Err(not_found_for(&app, &caller, &name));
    }
    let Query(query) = query.map_err(ApiError::bad_query)?;
    // A priority past the tenant's grant is refused before its body is read or charged.
    let priority = caller.priority(query.priority)?;
    let (input, admitted) = admit_then_read(&app, &caller, body).await?;
    let options = Options {
        session: query.session,
        timeout_ms: query.timeout_ms,
        deadline_ms: query.deadline_ms,
        priority,
        code: "invalid-query",
    };
    let mut request = prepare(&app, &caller, name, input, options)?;
    let replayed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(key) = idempotency_key(&headers)? {
        request.idempotency_key = Some(key);
        let replayed = replayed.clone();
        request.on_accept = Some(weir::OnAccept::new(move |_, repeat| {
            replayed.store(repeat, std::sync::atomic::Ordering::Release);
        }));
    }
    // If the client goes away, the guard cancels the execution; its task still settles the
    // tenant's account once it has stopped.
    let cancel = request.cancel.clone();
    let execution = spawn_execution(&app, request, admitted, |_| {});
    let mut guard = CancelOnDrop(Some(cancel));
    let outcome = execution.await;
    guard.0 = None;
    let result = outcome
        .map_err(|e| ApiError::unavailable(format!("the execution's task failed: {e}")))?
        .map_err(|e| runtime_error(&app, &caller, e))?;
    let id = result.execution.id.clone();
    let mut response = ([("weir-execution-id", id)], Json(result.document())).into_response();
    if replayed.load(std::sync::atomic::Ordering::Acquire) {
        response
            .headers_mut()
            .insert(REPLAYED, axum::http::HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The header an idempotent request's key comes in.
pub(super) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header that says an answer is an earlier request's run, which the request's
/// idempotency key named (nothing ran again).
pub(super) const REPLAYED: &str = "idempotent-replayed";

/// The request's `Idempotency-Key`, if it has one (checked by the runtime; text here).
pub(super) fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    value
        .to_str()
        .map(|key| Some(key.to_string()))
        .map_err(|_| {
            ApiError::bad_request(
                "invalid-request",
                "the `Idempotency-Key` header is not visible ASCII: use up to 255 letters, digits \
             and punctuation, e.g. a UUID",
            )
        })
}

/// A request's options, and the error code for bad ones (`invalid-query` when they came
/// in the query string, `invalid-input` in a body).
pub(super) struct Options {
    pub session: Option<String>,
    pub timeout_ms: Option<u64>,
    pub deadline_ms: Option<u64>,
    /// Already allowed by [`Caller::priority`].
    pub priority: Option<u32>,
    pub code: &'static str,
}

/// Takes `caller`'s place in its tenant's quotas, then reads the request body under it and
/// charges its bytes to `bytes_per_minute`: a tenant's bodies are read and parsed no faster
/// than its quotas let it run executions, and a request refused is not read at all. The
/// place is given back when the request has ended (or is dropped with it).
pub(super) async fn admit_then_read(
    app: &AppState,
    caller: &Caller,
    body: Body,
) -> Result<(Value, Option<Admitted>), ApiError> {
    let (_, account) = caller.tenant()?;
    let mut admitted = match account {
        Some(account) => Some(admit(app, account).await?),
        None => None,
    };
    let limit = app.config.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| unread_body(&e, limit))?;
    if let Some(admitted) = &mut admitted {
        admitted.charge_bytes(bytes.len() as u64);
    }
    // A large body is parsed on the blocking pool: milliseconds of parsing on an async
    // worker would hold up every other tenant's requests queued on it.
    if bytes.len() > BLOCKING_PARSE_BYTES {
        let parsed = tokio::task::spawn_blocking(move || json_body(&bytes))
            .await
            .map_err(|e| ApiError::unavailable(format!("the body's parser failed: {e}")))?;
        return Ok((parsed?, admitted));
    }
    Ok((json_body(&bytes)?, admitted))
}

/// Bodies larger than this are parsed off the async workers (64 KiB: about 0.1 ms of
/// parsing, past which a worker held up shows in other requests' latency).
const BLOCKING_PARSE_BYTES: usize = 64 << 10;

/// Why a body could not be read: 413 past `limit`, 408 past its deadline, else 400.
pub(super) fn unread_body(error: &axum::Error, limit: usize) -> ApiError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if error.is::<http_body_util::LengthLimitError>() {
            return ApiError::too_large(limit);
        }
        cause = error.source();
    }
    match body_deadline(error) {
        Some(deadline) => ApiError::body_timeout(deadline),
        None => ApiError::bad_request("invalid-body", format!("cannot read the body: {error}")),
    }
}

/// Checks that `caller` may run `name` on `input` and applies its tenant's ceilings
/// (lowered further by `timeout_ms`): the request to execute.
pub(super) fn prepare(
    app: &AppState,
    caller: &Caller,
    name: String,
    input: Value,
    options: Options,
) -> Result<ExecutionRequest, ApiError> {
    let Options {
        session,
        timeout_ms,
        deadline_ms,
        priority,
        code,
    } = options;
    let (tenant, account) = caller.tenant()?;
    if !caller.may_run(&name) {
        // Exactly what a name that does not exist gets: nothing tells the caller whether
        // another tenant's processor has that name.
        return Err(not_found_for(app, caller, &name));
    }
    weir::validate_input(&input).map_err(|e| ApiError::bad_request("invalid-input", e.message))?;
    let mut request = ExecutionRequest::new(name, input).tenant(tenant);
    if let Some(priority) = priority {
        request = request.priority(priority);
    }
    if let Some(session) = session {
        open_session(app, tenant, &session)?;
        request = request.session(session);
    }
    if timeout_ms == Some(0) {
        return Err(ApiError::bad_request(
            code,
            "`timeoutMs` must be above zero",
        ));
    }
    match deadline_ms {
        Some(0) => {
            return Err(ApiError::bad_request(
                code,
                "`deadlineMs` must be above zero",
            ));
        }
        Some(ms) => request = request.deadline(std::time::Duration::from_millis(ms)),
        None => {}
    }
    // Batch items under this execution are charged to the tenant's rate before they start.
    if let Some(account) = account
        && account.quota.quotas().executions_per_minute.is_some()
    {
        request = request.admission(Arc::new(super::quota::TenantItems(account.clone())));
    }
    let mut limits = account.map(|a| a.quota.ceilings()).unwrap_or_default();
    if let Some(ms) = timeout_ms {
        limits.timeout_ms = Some(limits.timeout_ms.map_or(ms, |ceiling| ceiling.min(ms)));
    }
    Ok(request.limits(limits))
}

/// A place in `tenant`'s quotas, or the `429` (or `503`) that says why not.
async fn admit(app: &AppState, tenant: &Arc<Tenant>) -> Result<Admitted, ApiError> {
    quota_answer(tenant, app.ledger.admit(tenant).await)
}

/// `tenant`'s rates charged for one request that runs nothing, or the `429` (or `503`).
pub(super) async fn charge(app: &AppState, tenant: &Arc<Tenant>) -> Result<Admitted, ApiError> {
    quota_answer(tenant, app.ledger.charge(tenant).await)
}

fn quota_answer(
    tenant: &Arc<Tenant>,
    admitted: Result<Admitted, Refused>,
) -> Result<Admitted, ApiError> {
    match admitted {
        Ok(admitted) => Ok(admitted),
        Err(Refused::Over(over)) => Err(ApiError::over_quota(
            format!(
                "tenant `{}` is over its quota `{} = {}`; retry after {} s",
                tenant.name(),
                over.quota,
                over.limit,
                over.retry_after.as_secs().max(1)
            ),
            over.retry_after,
        )
        .with("quota", json!(over.quota))),
        Err(Refused::Unavailable(why)) => Err(ApiError::unavailable(why)),
    }
}

/// Opens `session` of `tenant` for work about to be accepted: `400` / `invalid-session` for
/// an id that is not a session id, `429` / `too-many-sessions` when the tenant has as many
/// sessions as it may.
fn open_session(app: &AppState, tenant: &str, session: &str) -> Result<(), ApiError> {
    match app.runtime.open_session(tenant, session) {
        Ok(()) => Ok(()),
        Err(SessionRefused::InvalidId(why)) => Err(ApiError::bad_request("invalid-session", why)),
        Err(refused @ SessionRefused::TooMany { .. }) => {
            Err(ApiError::too_many_sessions(refused.to_string()))
        }
    }
}

/// `400` / `invalid-session` unless `id` is a session id: checked before a session is looked
/// up or stopped, so that no id that could never have been opened costs anything.
fn check_session_id(app: &AppState, id: &str) -> Result<(), ApiError> {
    app.runtime
        .config()
        .sessions
        .check_id(id)
        .map_err(|why| ApiError::bad_request("invalid-session", why))
}

/// Runs `request` in a task of its own that holds the quota place and charges the fuel
/// burnt, whatever happens to the HTTP request; `done` sees the outcome first.
pub(super) fn spawn_execution(
    app: &AppState,
    request: ExecutionRequest,
    admitted: Option<Admitted>,
    done: impl FnOnce(&Result<ExecutionResult, RuntimeError>) + Send + 'static,
) -> tokio::task::JoinHandle<Result<ExecutionResult, RuntimeError>> {
    let runtime = app.runtime.clone();
    tokio::spawn(async move {
        let mut admitted = admitted;
        // A panic in the host's execution path must still settle the account and tell
        // `done` (a job would otherwise stay running for ever).
        let outcome = std::panic::AssertUnwindSafe(runtime.execute(request))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(RuntimeError::Unavailable(
                    "the execution failed inside the host (a bug: see the server's log)".into(),
                ))
            });
        if let Some(mut admitted) = admitted.take() {
            if let Ok(result) = &outcome {
                admitted.charge(result.execution.fuel_consumed);
            }
            // Given back before anyone hears of the outcome, so a client that saw its
            // execution end may start the next one at once.
            admitted.settle().await;
        }
        done(&outcome);
        outcome
    })
}

/// Cancels an execution whose client went away before it finished.
struct CancelOnDrop(Option<CancelHandle>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            cancel.cancel_with(CancelReason::Request);
        }
    }
}

/// The request body, or 413 past `limit` (the route's body limit) and 400 if it could not
/// be read.
fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else if let Some(deadline) = body_deadline(&e) {
            ApiError::body_timeout(deadline)
        } else {
            ApiError::bad_request("invalid-body", e.body_text())
        }
    })
}

/// The deadline a body missed, if that is why it could not be read.
fn body_deadline(error: &(dyn std::error::Error + 'static)) -> Option<std::time::Duration> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(missed) = error.downcast_ref::<super::body::BodyDeadline>() {
            return Some(missed.0);
        }
        cause = error.source();
    }
    None
}

/// A body's bytes as JSON: empty is `{}`.
fn json_body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid-input",
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

pub(super) fn runtime_error(app: &AppState, caller: &Caller, error: RuntimeError) -> ApiError {
    match error {
        RuntimeError::NotFound { name, .. } => not_found_for(app, caller, &name),
        RuntimeError::InvalidRequest(message) => ApiError::bad_request("invalid-request", message),
        other @ (RuntimeError::NotStarted
        | RuntimeError::Stopped
        | RuntimeError::Unavailable(_)) => ApiError::unavailable(other.to_string()),
    }
}

/// 404 for a name this caller cannot run, listing only the names it can.
pub(super) fn not_found_for(app: &AppState, caller: &Caller, name: &str) -> ApiError {
    ApiError::not_found(
        "processor-not-found",
        format!("no processor or workflow named `{name}` is available to you"),
    )
    .with("available", available(app, caller))
}

/// Names this caller can run: plugins and valid workflows, sorted.
fn available(app: &AppState, caller: &Caller) -> Value {
    let catalog = app.runtime.catalog();
    let mut names: Vec<&str> = catalog
        .plugins
        .keys()
        .chain(catalog.workflows.keys())
        .map(String::as_str)
        .filter(|name| caller.may_run(name))
        .collect();
    names.sort_unstable();
    json!(names)
}

/// `GET /v1/plugins`: the plugins this caller may run; the operator also sees rejected files.
pub(super) async fn plugins(State(app): State<AppState>, caller: Caller) -> Json<Value> {
    let rows: Vec<Value> = app
        .runtime
        .catalog()
        .plugin_listing()
        .into_iter()
        .filter(|row| visible(&caller, row))
        .collect();
    Json(json!({ "plugins": rows }))
}

/// The largest component `PUT /v1/plugins/{name}` takes: 64 MiB.
pub(super) const MAX_PLUGIN_BYTES: usize = 64 << 20;

/// `PUT /v1/plugins/{name}` (the operator's): installs the component in the body as the
/// processor `name`. It is written to the server's plugins folder (staged, then renamed
/// into place) and loaded at once; over Redis it is also published, so every worker can
/// run it. A component that does not load is refused with the reason (`422`), and the
/// previous version, file included, stays.
pub(super) async fn push_plugin(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_operator("installing a plugin")?;
    if matches!(caller, Caller::Open) && !app.config.open_plugin_install {
        return Err(ApiError::forbidden_because(
            "plugin-install-disabled",
            "this API has no operator token, so it installs plugins only if started with \
             --allow-plugin-install; configure an operator token (--config) instead",
        ));
    }
    if !weir::is_valid_name(&name) {
        return Err(ApiError::bad_request(
            "invalid-name",
            format!(
                "`{name}` is not a processor name: lowercase letters, digits and `-`, starting \
                 with a letter"
            ),
        ));
    }
    let bytes = body_bytes(body, MAX_PLUGIN_BYTES)?;
    let Some(dir) = app.runtime.plugins_folder() else {
        return Err(ApiError::unavailable(
            "this server has no plugins folder to install into: start it with --plugins DIR",
        ));
    };
    let target = dir.join(format!("{name}.wasm"));
    let io = |what: &str, e: std::io::Error| {
        ApiError::unavailable(format!("cannot {what} in {}: {e}", dir.display()))
    };
    let previous = tokio::fs::read(&target).await.ok();
    // Staged under a name the folder's loader and watcher ignore, then renamed into place,
    // so nothing ever reads half a file.
    let staged = dir.join(format!(".{name}.{}.upload", uuid::Uuid::new_v4()));
    tokio::fs::write(&staged, &bytes)
        .await
        .map_err(|e| io("write the component", e))?;
    tokio::fs::rename(&staged, &target)
        .await
        .map_err(|e| io("move the component into place", e))?;
    let plugin = match app.runtime.load_plugin(&target).await {
        Ok(plugin) => plugin,
        Err(error) => {
            // Put the folder back as it was: the previous version keeps serving either way.
            let restored = match previous {
                Some(previous) => tokio::fs::write(&target, previous).await,
                None => tokio::fs::remove_file(&target).await,
            };
            if let Err(e) = restored {
                tracing::warn!(target: "weir::server", plugin = %name, error = %e, "cannot restore the plugins folder after a refused upload");
            }
            return Err(ApiError::unprocessable(
                "invalid-plugin",
                format!("the component cannot serve as `{name}`: {error}"),
            ));
        }
    };
    if let Some(fleet) = app.runtime.fleet() {
        fleet.push_plugin(&target).await.map_err(|e| {
            ApiError::unavailable(format!(
                "`{name}` is loaded here but could not be published to Redis: {e}"
            ))
        })?;
    }
    Ok(Json(plugin.detail_json()).into_response())
}

/// Each version of plugin `name` that ran (in the fleet, behind `--redis`), newest first:
/// its digest, its declared version when the plugin's history still knows it, and its
/// counters with their quantiles and failure rate.
async fn version_rows(
    app: &AppState,
    catalog: &weir::Catalog,
    name: &str,
) -> Result<Value, ApiError> {
    let versions = match app.runtime.fleet() {
        Some(fleet) => fleet.version_stats(name).await.map_err(fleet_unavailable)?,
        None => app.runtime.version_stats(name),
    };
    let declared = |digest: &str| {
        catalog.history.get(name).and_then(|changes| {
            changes
                .iter()
                .rev()
                .find(|c| c.digest.as_deref() == Some(digest))
                .and_then(|c| c.version.clone())
        })
    };
    let rows: Vec<Value> = versions
        .iter()
        .rev()
        .map(|v| {
            let mut row = stats_row(&v.stats);
            row["digest"] = json!(v.digest);
            row["version"] = json!(declared(&v.digest));
            row
        })
        .collect();
    Ok(Value::Array(rows))
}

/// Whether a listing row is for this caller's eyes: names it may run, and rejections (which
/// name files and say why) for the operator only.
fn visible(caller: &Caller, row: &Value) -> bool {
    let name = row["name"].as_str().unwrap_or_default();
    let fleet_only = row["status"] == "rejected";
    caller.may_run(name) && (!fleet_only || caller.is_fleet())
}

/// `GET /v1/plugins/{name}`: one plugin in detail, or (for the operator) why its file was
/// rejected.
pub(super) async fn plugin(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = app.runtime.catalog();
    let history = json!(catalog.history.get(&name));
    if caller.may_run(&name) {
        if let Some(plugin) = catalog.plugins.get(&name) {
            let mut detail = plugin.detail_json();
            detail["history"] = history;
            // Counted over every tenant: the operator's to read.
            if caller.is_fleet() {
                detail["versions"] = version_rows(&app, &catalog, &name).await?;
            }
            if !caller.is_fleet()
                && let Some(detail) = detail.as_object_mut()
            {
                // The operator's manifest (configuration values, granted environment, host
                // paths and addresses), the file's path and why files were rejected are not
                // the tenant's to read.
                detail.remove("manifest");
                detail.remove("path");
                if let Some(history) = detail.get_mut("history").and_then(Value::as_array_mut) {
                    history.retain(|change| change["change"] != "rejected");
                }
            }
            return Ok(Json(detail));
        }
        if caller.is_fleet()
            && let Some(rejected) = catalog.rejected.get(&name)
        {
            let mut detail = rejected.to_json();
            detail["history"] = history;
            return Ok(Json(detail));
        }
    }
    let names: Vec<&str> = catalog
        .names()
        .into_iter()
        .filter(|n| caller.may_run(n))
        .collect();
    Err(ApiError::not_found(
        "plugin-not-found",
        format!("no plugin named `{name}` is available to you"),
    )
    .with("available", json!(names)))
}

/// `GET /v1/workflows`: the workflows this caller may run, valid or not.
pub(super) async fn workflows(State(app): State<AppState>, caller: Caller) -> Json<Value> {
    let catalog = app.runtime.catalog();
    let rows: Vec<Value> = catalog
        .workflow_listing()
        .into_iter()
        .filter(|row| caller.may_run(row["name"].as_str().unwrap_or_default()))
        .collect();
    let file_error = if caller.is_fleet() {
        catalog.workflows_file_error.clone()
    } else {
        None
    };
    Json(json!({ "workflows": rows, "fileError": file_error }))
}

/// `GET /v1/stats`: counters with p50/p99 and failure rate per processor: a tenant's own;
/// for the operator, every tenant's and their sum.
///
/// Behind `--redis`, the fleet's counters (every worker's and every server's executions),
/// as kept in Redis; otherwise this process's.
pub(super) async fn stats(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let tenant = match &caller {
        Caller::Tenant(tenant) => Some(tenant.name()),
        Caller::Operator | Caller::Open => None,
    };
    let stats = runtime_stats(&app, tenant).await?;
    let rows = |processors: &BTreeMap<String, ProcessorStats>| {
        processors
            .iter()
            .map(|(name, s)| (name.clone(), stats_row(s)))
            .collect::<Map<String, Value>>()
    };
    match &caller {
        Caller::Tenant(tenant) => {
            let own = stats
                .tenants
                .get(tenant.name())
                .map(rows)
                .unwrap_or_default();
            Ok(Json(json!({
                "state": stats.state,
                "tenant": tenant.name(),
                "processors": own,
            })))
        }
        Caller::Operator | Caller::Open => {
            let tenants: Map<String, Value> = stats
                .tenants
                .iter()
                .map(|(tenant, processors)| (tenant.clone(), Value::Object(rows(processors))))
                .collect();
            Ok(Json(json!({
                "state": stats.state,
                "uptimeMs": stats.uptime_ms,
                "running": stats.running,
                "sessions": stats.sessions,
                "processors": rows(&stats.processors),
                "tenants": tenants,
            })))
        }
    }
}

/// The counters a request sees (`tenant`'s only, or every tenant's): the fleet's behind
/// `--redis`, this process's otherwise.
/// `GET /v1/stats/history`: the last five minutes of the counters, a reading every 2 s
/// (see [`crate::history`]): a tenant's own; every tenant's for the operator.
pub(super) async fn stats_history(State(app): State<AppState>, caller: Caller) -> Json<Value> {
    let tenant = match &caller {
        Caller::Tenant(tenant) => Some(tenant.name()),
        Caller::Operator | Caller::Open => None,
    };
    Json(app.history.json(tenant))
}

async fn runtime_stats(app: &AppState, tenant: Option<&str>) -> Result<RuntimeStats, ApiError> {
    match app.runtime.fleet() {
        Some(fleet) => fleet.stats(tenant).await.map_err(fleet_unavailable),
        None => Ok(app.runtime.stats()),
    }
}

/// Redis did not answer a read of the fleet's counters.
fn fleet_unavailable(error: RuntimeError) -> ApiError {
    ApiError::unavailable(format!(
        "the fleet's counters cannot be read from Redis ({error}); check that the server \
         given to `--redis` is up"
    ))
}

fn stats_row(s: &ProcessorStats) -> Value {
    let finished = s.completed + s.failed;
    let mut row = json!(s);
    row["p50Us"] = json!(s.duration_quantile_us(0.5));
    row["p99Us"] = json!(s.duration_quantile_us(0.99));
    row["failureRate"] = json!(if finished == 0 {
        0.0
    } else {
        s.failed as f64 / finished as f64
    });
    row
}

/// Which tenant's sessions a request means (`?tenant=`, for the operator).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantQuery {
    tenant: Option<String>,
}

pub(super) fn tenant_query(
    query: Result<Query<TenantQuery>, QueryRejection>,
) -> Result<Option<String>, ApiError> {
    query.map(|Query(q)| q.tenant).map_err(ApiError::bad_query)
}

/// `GET /v1/sessions`: sessions that have seen work: a tenant's own; every tenant's for the
/// operator (or one tenant's with `?tenant=`).
pub(super) async fn sessions(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<TenantQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let asked = tenant_query(query)?;
    // Only the sessions asked for are copied: one tenant's many never slow another's list.
    let tenant = caller.listed_tenant(asked.as_deref())?;
    let sessions = match (app.runtime.fleet(), tenant) {
        (Some(fleet), tenant) => fleet.sessions(tenant).await.map_err(fleet_unavailable)?,
        (None, None) => app.runtime.active_sessions(),
        (None, Some(tenant)) => app.runtime.sessions_of(tenant),
    };
    Ok(Json(json!({ "sessions": sessions })))
}

/// `GET /v1/sessions/{id}`: one session's counters and stored state.
pub(super) async fn session(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<TenantQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let asked = tenant_query(query)?;
    let tenant = caller.data_tenant(asked.as_deref())?;
    check_session_id(&app, &id)?;
    let stats = match app.runtime.fleet() {
        Some(fleet) => fleet
            .session_stats(tenant, &id)
            .await
            .map_err(fleet_unavailable)?,
        None => app.runtime.session_stats(tenant, &id),
    };
    let state = app.runtime.session_state(tenant, &id).await;
    if stats.is_none() && state.is_none() {
        return Err(ApiError::not_found(
            "session-not-found",
            format!("no session `{id}` has seen work or holds state"),
        ));
    }
    Ok(Json(
        json!({ "session": id, "tenant": tenant, "stats": stats, "state": state }),
    ))
}

/// `DELETE /v1/sessions/{id}`: stops the session: cancels its work, removes its state.
/// Charged to the tenant's rates (`executions_per_minute`) like one execution.
pub(super) async fn stop_session(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<TenantQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let asked = tenant_query(query)?;
    let tenant = caller.data_tenant(asked.as_deref())?;
    check_session_id(&app, &id)?;
    // A stop reaches every worker of a fleet: a tenant pays for it as for an execution
    // (from its rates: a tenant at its `concurrent` quota can still stop its work).
    let admitted = match &caller {
        Caller::Tenant(account) => Some(charge(&app, account).await?),
        Caller::Operator | Caller::Open => None,
    };
    let report = app.runtime.stop_session(tenant, &id).await;
    if let Some(admitted) = admitted {
        admitted.settle().await;
    }
    Ok(Json(json!({
        "session": id,
        "tenant": tenant,
        "cancelled": report.cancelled,
        "removedState": report.removed_state,
    })))
}

/// How many dead jobs `GET /v1/dlq` lists, and from which queue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeadQuery {
    queue: Option<String>,
    /// Default 50, at most 1000.
    limit: Option<usize>,
}

/// `GET /v1/dlq`: the distributed runtime's dead jobs, newest first (the operator's).
pub(super) async fn dead_jobs(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<DeadQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_operator("the dead-letter queue")?;
    let Query(query) = query.map_err(ApiError::bad_query)?;
    let limit = ApiError::page_limit(query.limit, 1000)?;
    let dead = fleet(&app)?
        .dead_jobs(query.queue.as_deref(), limit)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(json!({ "dead": dead })))
}

/// `GET /v1/queues`: how many jobs each of the distributed runtime's queues holds, by
/// state (the operator's).
pub(super) async fn queues(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_operator("the queues")?;
    let queues = fleet(&app)?
        .queue_counts()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(Json(json!({ "queues": queues })))
}

/// The distributed runtime's own operations; 503 on a local runtime, which has no queues.
fn fleet(app: &AppState) -> Result<weir::Fleet, ApiError> {
    app.runtime.fleet().ok_or_else(|| {
        ApiError::unavailable(
            "this server's runtime is local: it has no queues (start it with --redis URL)",
        )
    })
}

/// `POST /v1/dlq/{queue}/{id}/retry`: runs a dead job again with fresh attempts (the
/// operator's).
pub(super) async fn redrive(
    State(app): State<AppState>,
    caller: Caller,
    Path((queue, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_operator("the dead-letter queue")?;
    fleet(&app)?
        .redrive(&queue, &id)
        .await
        .map_err(|e| match e {
            // Not dead (or no such job): say what the job is, as the CLI does.
            weir::Error::Config(message) => ApiError::not_found("dead-job-not-found", message),
            other => ApiError::unavailable(other.to_string()),
        })?;
    Ok(Json(json!({ "queue": queue, "id": id, "redriven": true })))
}

/// `DELETE /v1/dlq/{queue}/{id}`: removes a dead job for good (the operator's).
pub(super) async fn purge(
    State(app): State<AppState>,
    caller: Caller,
    Path((queue, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    caller.require_operator("the dead-letter queue")?;
    fleet(&app)?.purge(&queue, &id).await.map_err(|e| match e {
        weir::Error::Config(message) => ApiError::not_found("dead-job-not-found", message),
        other => ApiError::unavailable(other.to_string()),
    })?;
    Ok(Json(json!({ "queue": queue, "id": id, "purged": true })))
}

/// A known path with the wrong method: 405 with the methods it has.
pub(super) async fn wrong_method(method: axum::http::Method, uri: Uri) -> ApiError {
    let path = uri.path();
    let allowed: Vec<&str> = super::ROUTES
        .iter()
        .filter(|(_, pattern)| path_matches(pattern, path))
        .map(|(method, _)| *method)
        .collect();
    ApiError::method_not_allowed(format!(
        "`{path}` does not take {method}; it takes {}",
        allowed.join(", ")
    ))
    .with("allowed", json!(allowed))
}

/// Whether `path` fits the route `pattern` (`{param}` matches one segment).
fn path_matches(pattern: &str, path: &str) -> bool {
    let (mut a, mut b) = (pattern.split('/'), path.split('/'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(p), Some(s)) if p == s || (p.starts_with('{') && !s.is_empty()) => {}
            _ => return false,
        }
    }
}

/// Any other path: 404 with the routes that exist.
pub(super) async fn no_route(uri: Uri) -> ApiError {
    let routes: Vec<String> = super::ROUTES
        .iter()
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    ApiError::not_found("no-route", format!("nothing is served at `{}`", uri.path()))
        .with("routes", json!(routes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_patterns_match_one_segment_per_parameter() {
        assert!(path_matches("/v1/run/{name}", "/v1/run/hello"));
        assert!(path_matches("/healthz", "/healthz"));
        assert!(!path_matches("/v1/run/{name}", "/v1/run/"));
        assert!(!path_matches("/v1/run/{name}", "/v1/run/a/b"));
        assert!(!path_matches("/v1/plugins", "/v1/plugins/x"));
    }
}
