//! The request handlers of the JSON API: each turns one request into one call on the
//! [`Runtime`](crate::Runtime) and its answer into JSON.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{AppState, OPENAPI, metrics};
use crate::error::RuntimeError;
use crate::runtime::{ExecutionRequest, RuntimeState};

/// The tenant every execution runs for until authentication names one.
pub(super) const TENANT: &str = "default";

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

/// `GET /metrics`: Prometheus text.
pub(super) async fn metrics(State(app): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&app.runtime),
    )
        .into_response()
}

/// `GET /v1/openapi.json`: the API's description.
pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Options of `POST /v1/run/{name}`, from the query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RunQuery {
    /// Run in this session: the input continues from its stored state, and a successful
    /// result becomes its state.
    session: Option<String>,
    /// Lower the timeout of this execution (never raises the plugin's).
    timeout_ms: Option<u64>,
}

/// `POST /v1/run/{name}`: runs a processor or workflow on the body (a JSON object; empty
/// means `{}`) and answers with its result document.
pub(super) async fn run(
    State(app): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<RunQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid-query", e.body_text()))?;
    let input = parse_body(&app, body)?;
    crate::state::validate_input(&input)
        .map_err(|e| ApiError::bad_request("invalid-input", e.message))?;
    let mut request = ExecutionRequest::new(name, input).tenant(TENANT);
    if let Some(session) = query.session {
        if session.is_empty() {
            return Err(ApiError::bad_request(
                "invalid-query",
                "`session` must not be empty",
            ));
        }
        request = request.session(session);
    }
    if let Some(ms) = query.timeout_ms {
        if ms == 0 {
            return Err(ApiError::bad_request(
                "invalid-query",
                "`timeoutMs` must be above zero",
            ));
        }
        request = request.timeout(Duration::from_millis(ms));
    }
    let result = app
        .runtime
        .execute(request)
        .await
        .map_err(|e| runtime_error(&app, e))?;
    let id = result.execution.id.clone();
    Ok(([("weir-execution-id", id)], Json(result.document())).into_response())
}

/// The request body as JSON: empty is `{}`; over the limit is 413.
fn parse_body(app: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(app.config.max_body_bytes)
        } else {
            ApiError::bad_request("invalid-body", e.body_text())
        }
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid-input",
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

fn runtime_error(app: &AppState, error: RuntimeError) -> ApiError {
    match error {
        RuntimeError::NotFound { reason, .. } => {
            ApiError::not_found("processor-not-found", reason).with("available", available(app))
        }
        RuntimeError::InvalidRequest(message) => ApiError::bad_request("invalid-request", message),
        other @ (RuntimeError::NotStarted
        | RuntimeError::Stopped
        | RuntimeError::Unavailable(_)) => ApiError::unavailable(other.to_string()),
    }
}

/// Names that can run: plugins and valid workflows, sorted.
fn available(app: &AppState) -> Value {
    let catalog = app.runtime.catalog();
    let mut names: Vec<&str> = catalog
        .plugins
        .keys()
        .chain(catalog.workflows.keys())
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    json!(names)
}

/// `GET /v1/plugins`: every plugin and rejected file.
pub(super) async fn plugins(State(app): State<AppState>) -> Json<Value> {
    Json(json!({ "plugins": app.runtime.catalog().plugin_listing() }))
}

/// `GET /v1/plugins/{name}`: one plugin in detail, or why its file was rejected.
pub(super) async fn plugin(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let catalog = app.runtime.catalog();
    if let Some(plugin) = catalog.plugins.get(&name) {
        return Ok(Json(plugin.detail_json()));
    }
    if let Some(rejected) = catalog.rejected.get(&name) {
        return Ok(Json(rejected.to_json()));
    }
    Err(
        ApiError::not_found("plugin-not-found", format!("no plugin named `{name}`"))
            .with("available", json!(catalog.names())),
    )
}

/// `GET /v1/workflows`: every workflow, valid or not.
pub(super) async fn workflows(State(app): State<AppState>) -> Json<Value> {
    let catalog = app.runtime.catalog();
    Json(json!({
        "workflows": catalog.workflow_listing(),
        "fileError": catalog.workflows_file_error,
    }))
}

/// `GET /v1/stats`: runtime counters, with p50/p99 per processor.
pub(super) async fn stats(State(app): State<AppState>) -> Json<Value> {
    let stats = app.runtime.stats();
    let processors: serde_json::Map<String, Value> = stats
        .processors
        .iter()
        .map(|(name, s)| {
            let finished = s.completed + s.failed;
            let mut row = json!(s);
            row["p50Us"] = json!(s.duration_quantile_us(0.5));
            row["p99Us"] = json!(s.duration_quantile_us(0.99));
            row["failureRate"] = json!(if finished == 0 {
                0.0
            } else {
                s.failed as f64 / finished as f64
            });
            (name.clone(), row)
        })
        .collect();
    Json(json!({
        "state": stats.state,
        "uptimeMs": stats.uptime_ms,
        "running": stats.running,
        "sessions": stats.sessions,
        "processors": processors,
    }))
}

/// `GET /v1/sessions`: the tenant's sessions that have seen work.
pub(super) async fn sessions(State(app): State<AppState>) -> Json<Value> {
    let sessions: Vec<_> = app
        .runtime
        .active_sessions()
        .into_iter()
        .filter(|s| s.tenant == TENANT)
        .collect();
    Json(json!({ "sessions": sessions }))
}

/// `GET /v1/sessions/{id}`: one session's counters and stored state.
pub(super) async fn session(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let stats = app.runtime.session_stats(TENANT, &id);
    let state = app.runtime.session_state(TENANT, &id).await;
    if stats.is_none() && state.is_none() {
        return Err(ApiError::not_found(
            "session-not-found",
            format!("no session `{id}` has seen work or holds state"),
        ));
    }
    Ok(Json(
        json!({ "session": id, "stats": stats, "state": state }),
    ))
}

/// `DELETE /v1/sessions/{id}`: stops the session: cancels its work, removes its state.
pub(super) async fn stop_session(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Json<Value> {
    let report = app.runtime.stop_session(TENANT, &id).await;
    Json(
        json!({ "session": id, "cancelled": report.cancelled, "removedState": report.removed_state }),
    )
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
