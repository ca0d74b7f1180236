//! `/v1/schedules`: a tenant's schedules listed, read, added or replaced, and removed. An
//! added schedule runs only what its tenant may run, is checked against the host's
//! schedule bounds, and costs its tenant a request; each tick is charged to its tenant's
//! quotas by whichever process fires it (`foreign::schedule_admission`).

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use serde_json::{Value, json};
use weir::{Schedule, ScheduleRefused, ScheduleSpec};

use super::AppState;
use super::access::Caller;
use super::api::{TenantQuery, runtime_error, tenant_query};
use super::error::ApiError;

/// `GET /v1/schedules`: a tenant's own schedules; every tenant's for the operator (or one
/// tenant's with `?tenant=`), each with its next and latest ticks.
pub(super) async fn list(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<TenantQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let asked = tenant_query(query)?;
    let tenant = caller.listed_tenant(asked.as_deref())?;
    let schedules = app
        .runtime
        .schedules(tenant)
        .await
        .map_err(|e| runtime_error(&app, &caller, e))?;
    Ok(Json(json!({ "schedules": schedules })))
}

/// `GET /v1/schedules/{name}`: one schedule of the caller's tenant (the operator's
/// `?tenant=`).
pub(super) async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    query: Result<Query<TenantQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let asked = tenant_query(query)?;
    let tenant = caller.data_tenant(asked.as_deref())?;
    let schedules = app
        .runtime
        .schedules(Some(tenant))
        .await
        .map_err(|e| runtime_error(&app, &caller, e))?;
    schedules
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| Json(json!(s)))
        .ok_or_else(|| not_found(&name))
}

/// `PUT /v1/schedules/{name}`: adds or replaces a schedule of the caller's tenant; the body
/// is its fields (`run`, `input`, `cron` + `tz` or `everyMs`, `start`, `end`, `limit`,
/// `session`, `overlap`, `description`).
pub(super) async fn put(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    query: Result<Query<TenantQuery>, QueryRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let asked = tenant_query(query)?;
    let tenant = caller.data_tenant(asked.as_deref())?.to_string();
    // Adding a schedule is a request like any other to its tenant's rates.
    let admitted = match &caller {
        Caller::Tenant(account) => Some(super::api::charge(&app, account).await?),
        Caller::Operator | Caller::Open => None,
    };
    let limit = app.config.max_body_bytes;
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| super::api::unread_body(&e, limit))?;
    let mut spec: ScheduleSpec = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid-schedule",
            format!(
                "a schedule is `{{\"run\", \"input\", \"cron\", \"tz\", \"everyMs\", \"start\", \
                 \"end\", \"limit\", \"session\", \"overlap\", \"description\"}}`: {e}"
            ),
        )
    })?;
    match &spec.tenant {
        Some(named) if *named != tenant => {
            return Err(ApiError::forbidden(format!(
                "the schedule names tenant `{named}`; it is added for `{tenant}` (leave \
                 `tenant` out, or ask as that tenant)"
            )));
        }
        _ => spec.tenant = Some(tenant.clone()),
    }
    // Locally, what it runs must exist now (a typo is said at once, not at each tick); a
    // fleet's may be published later.
    let catalog = app.runtime.catalog();
    let known = app.runtime.is_distributed()
        || catalog.plugins.contains_key(&spec.run)
        || catalog.workflows.contains_key(&spec.run);
    if !known || !caller.may_run(&spec.run) {
        return Err(super::api::not_found_for(&app, &caller, &spec.run));
    }
    if let Some(session) = &spec.session {
        app.runtime
            .config()
            .sessions
            .check_id(session)
            .map_err(|why| ApiError::bad_request("invalid-schedule", why))?;
    }
    let bounds = app.runtime.config().schedules;
    let schedule = Schedule::new(&name, spec, &bounds)
        .map_err(|why| ApiError::bad_request("invalid-schedule", why))?;
    let added = app.runtime.add_schedule(schedule).await;
    if let Some(admitted) = admitted {
        admitted.settle().await;
    }
    added
        .map(|status| Json(json!(status)))
        .map_err(|refused| refusal(&app, &caller, refused))
}

/// `DELETE /v1/schedules/{name}`: removes a schedule of the caller's tenant that was added
/// through the API (the folder's go with their table in `workflows.toml`).
pub(super) async fn remove(
    State(app): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    query: Result<Query<TenantQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let asked = tenant_query(query)?;
    let tenant = caller.data_tenant(asked.as_deref())?;
    match app.runtime.remove_schedule(tenant, &name).await {
        Ok(true) => Ok(Json(json!({ "removed": name, "tenant": tenant }))),
        Ok(false) => Err(not_found(&name)),
        Err(refused) => Err(refusal(&app, &caller, refused)),
    }
}

/// What the API answers a refused schedule.
fn refusal(app: &AppState, caller: &Caller, refused: ScheduleRefused) -> ApiError {
    match refused {
        ScheduleRefused::Invalid(why) => ApiError::bad_request("invalid-schedule", why),
        ScheduleRefused::Declared(why) => ApiError::conflict("schedule-declared-in-folder", why),
        ScheduleRefused::TooMany(why) => {
            ApiError::bound_hit("too-many-schedules", why, Duration::from_secs(60))
        }
        ScheduleRefused::Runtime(error) => runtime_error(app, caller, error),
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::not_found(
        "schedule-not-found",
        format!("no schedule named `{name}` is yours; list them with GET /v1/schedules"),
    )
}
