//! The HTTP API that `weir serve --listen ADDR` serves: JSON over HTTP/1.1, versioned under
//! `/v1`, plus health and readiness probes, Prometheus metrics and the runtime's events as
//! Server-Sent Events. [`ROUTES`] lists every route; the OpenAPI document served at
//! `/v1/openapi.json` describes exactly those (a test checks both ways).
//!
//! Conventions:
//! - a request the API refuses (nothing ran) gets a 4xx/5xx status and
//!   `{"error": {"kind", "code", "message", …}}`;
//! - an execution that ran gets `200` and its result document (the same document as
//!   `weir run` prints), whether it succeeded or failed: `ok` says which, and the
//!   `weir-execution-id` header carries its id;
//! - bodies over [`ServerConfig::max_body_bytes`] get `413`;
//! - a client that disconnects before its execution finishes cancels it.
//!
//! Callers authenticate with `Authorization: Bearer TOKEN` once tenants or an operator token
//! are configured ([`ServerFile`], from `weir.toml`): a tenant sees and runs only what its
//! patterns allow, only its own sessions and events, within its quotas (`429` with
//! `Retry-After` past one); the operator's token opens the fleet-wide views (`/metrics`,
//! every tenant's sessions and events, rejected files). With no tenants configured the API
//! is open and everything runs as the tenant `default`. `/healthz` and `/readyz` are always
//! open.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = weir::Runtime::builder().plugins_dir("plugins/dist").build().await?;
//! runtime.start();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! weir::server::serve(listener, runtime, weir::server::ServerConfig::default(), shutdown).await?;
//! # Ok(()) }
//! ```

mod access;
mod api;
mod error;
mod events;
mod jobs;
mod metrics;
mod quota;

pub use access::{Access, EventStreamSettings, ServerFile, Tenant, digest};
pub use quota::Quotas;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;

/// How the HTTP API behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body accepted, in bytes (default 4 MiB, the default output cap);
    /// larger ones get `413`.
    pub max_body_bytes: usize,
    /// Who may call (default: nobody configured, so the API is open).
    pub access: Access,
    /// Bytes of events one `GET /v1/events` client may have waiting unread (default 1 MiB);
    /// past it, events are dropped for that client and it is told how many it missed.
    pub event_stream_bytes: usize,
    /// Events one `GET /v1/events` client may have waiting unread (default 1024), likewise.
    pub event_stream_events: usize,
    /// Event streams open at once (default 64); one more gets `429`.
    pub max_event_streams: usize,
    /// Event streams one tenant (or the operator) may have open at once (default 8); one
    /// more gets `429`.
    pub max_event_streams_per_tenant: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 4 << 20,
            access: Access::default(),
            event_stream_bytes: 1 << 20,
            event_stream_events: 1024,
            max_event_streams: 64,
            max_event_streams_per_tenant: 8,
        }
    }
}

/// Every route of the API as (method, path), paths in OpenAPI's `{param}` syntax.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("POST", "/v1/run/{name}"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("DELETE", "/v1/jobs/{id}"),
    ("GET", "/v1/plugins"),
    ("GET", "/v1/plugins/{name}"),
    ("PUT", "/v1/plugins/{name}"),
    ("GET", "/v1/workflows"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("DELETE", "/v1/sessions/{id}"),
    ("GET", "/v1/events"),
    ("GET", "/v1/dlq"),
    ("POST", "/v1/dlq/{queue}/{id}/retry"),
];

/// The OpenAPI 3.1 document describing [`ROUTES`].
pub const OPENAPI: &str = include_str!("openapi.json");

/// The dashboard page served at `/`: static HTML and JavaScript that read the API with the
/// token typed into it, so a tenant's token shows that tenant's view only.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// What every handler shares.
#[derive(Clone)]
struct AppState {
    runtime: Runtime,
    config: Arc<ServerConfig>,
    access: Arc<Access>,
    jobs: Arc<jobs::Jobs>,
    /// Where tenants' quota usage is counted: in Redis over the distributed runtime.
    ledger: Arc<quota::Ledger>,
    /// Cancelled when the server shuts down: ends the event streams, which would otherwise
    /// hold graceful shutdown open forever.
    shutdown: CancellationToken,
    /// The event streams open now.
    streams: Arc<events::OpenStreams>,
}

/// The API's routes over `runtime`, for embedding in an application's own axum server.
/// Event streams end when `shutdown` is cancelled. Over the distributed runtime, tenants'
/// quotas are counted in its Redis, shared by every server. Call within a Tokio runtime.
pub fn router(runtime: Runtime, config: ServerConfig, shutdown: CancellationToken) -> Router {
    let limit = config.max_body_bytes;
    let jobs: Arc<jobs::Jobs> = Arc::default();
    jobs.track_progress(&runtime, shutdown.clone());
    let ledger = match runtime.redis_namespace("quota:") {
        Some((conn, prefix)) => quota::Ledger::redis(conn, prefix),
        None => quota::Ledger::local(),
    };
    let state = AppState {
        ledger: Arc::new(ledger),
        runtime,
        access: Arc::new(config.access.clone()),
        jobs,
        config: Arc::new(config),
        shutdown,
        streams: Arc::default(),
    };
    Router::new()
        .route("/", get(api::dashboard))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/v1/openapi.json", get(api::openapi))
        .route("/v1/run/{name}", post(api::run))
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel))
        .route("/v1/plugins", get(api::plugins))
        .route(
            "/v1/plugins/{name}",
            get(api::plugin)
                .put(api::push_plugin)
                .layer(DefaultBodyLimit::max(api::MAX_PLUGIN_BYTES)),
        )
        .route("/v1/workflows", get(api::workflows))
        .route("/v1/stats", get(api::stats))
        .route("/v1/sessions", get(api::sessions))
        .route(
            "/v1/sessions/{id}",
            get(api::session).delete(api::stop_session),
        )
        .route("/v1/events", get(events::stream))
        .route("/v1/dlq", get(api::dead_jobs))
        .route("/v1/dlq/{queue}/{id}/retry", post(api::redrive))
        .fallback(api::no_route)
        .method_not_allowed_fallback(api::wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets requests in
/// progress finish (executions are not cancelled: stop the runtime for that).
pub async fn serve(
    listener: tokio::net::TcpListener,
    runtime: Runtime,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = router(runtime, config, shutdown.clone());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
