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
//! is open and everything runs as the tenant `default`; then it answers only requests
//! addressed to an IP address or `localhost` from no other web origin, takes posted bodies
//! as JSON only, and installs plugins only if [`ServerConfig::open_plugin_install`] says so
//! (see `open.rs`). `/healthz` and `/readyz` are always open.
//!
//! [`serve`] bounds connections: at most [`ServerConfig::max_connections`] at once, each
//! closed if a request's headers take longer than [`ServerConfig::header_read_timeout`] (an
//! idle keep-alive connection too), and a body that takes longer than
//! [`ServerConfig::body_read_timeout`] gets `408`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = weir::Runtime::builder().plugins_dir("plugins/dist").build().await?;
//! runtime.start();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! weir_server::serve(listener, runtime, weir_server::ServerConfig::default(), shutdown).await?;
//! # Ok(()) }
//! ```

mod access;
mod api;
mod error;
mod events;
mod foreign;
#[cfg(test)]
mod fuzz;
mod history;
mod jobs;
mod metrics;
mod open;
mod quota;
mod schedules;

pub use access::{Access, HostSettings, RedisSettings, ServerFile, ServerSettings, Tenant, digest};
pub use foreign::{foreign_admission, item_admission, schedule_admission};
pub use quota::Quotas;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use tokio_util::sync::CancellationToken;

use weir::Runtime;

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
    /// Connections served at once (default 1024); more wait, unaccepted, until one closes.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and an idle keep-alive connection
    /// stays open (default 10 s); past it the connection is closed.
    pub header_read_timeout: std::time::Duration,
    /// Time a client has to send a request's whole body (default 30 s); past it, `408`.
    pub body_read_timeout: std::time::Duration,
    /// In open mode (no tenants): the host names, besides IP addresses and `localhost`,
    /// that requests may be addressed to (default none).
    pub allowed_hosts: Vec<String>,
    /// In open mode (no tenants): whether `PUT /v1/plugins/{name}` installs plugins
    /// (default no: `403`).
    pub open_plugin_install: bool,
    /// Bytes of finished jobs' result documents kept per tenant (default 64 MiB); past it
    /// the tenant's oldest finished jobs are forgotten (`404` / `job-not-found`). A result
    /// larger than all of it is kept as a note of its size.
    pub jobs_bytes_per_tenant: usize,
    /// Finished jobs kept per tenant (default 10,000); past it, likewise.
    pub jobs_kept_per_tenant: usize,
    /// Bytes of errors (details included) one job's steps keep, running or finished
    /// (default 4 MiB); past it, a step's error keeps its kind, code and the start of its
    /// message, and retries are counted, not kept.
    pub job_step_bytes: usize,
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
            max_connections: 1024,
            header_read_timeout: std::time::Duration::from_secs(10),
            body_read_timeout: std::time::Duration::from_secs(30),
            allowed_hosts: Vec::new(),
            open_plugin_install: false,
            jobs_bytes_per_tenant: 64 << 20,
            jobs_kept_per_tenant: 10_000,
            job_step_bytes: 4 << 20,
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
    ("GET", "/v1/stats/history"),
    ("GET", "/v1/sessions"),
    ("GET", "/v1/sessions/{id}"),
    ("DELETE", "/v1/sessions/{id}"),
    ("GET", "/v1/schedules"),
    ("GET", "/v1/schedules/{name}"),
    ("PUT", "/v1/schedules/{name}"),
    ("DELETE", "/v1/schedules/{name}"),
    ("GET", "/v1/events"),
    ("GET", "/v1/queues"),
    ("GET", "/v1/dlq"),
    ("POST", "/v1/dlq/{queue}/{id}/retry"),
    ("DELETE", "/v1/dlq/{queue}/{id}"),
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
    /// The last minutes of the counters, for the console's charts.
    history: Arc<history::History>,
}

/// The API's routes over `runtime`, for embedding in an application's own axum server.
/// Event streams end when `shutdown` is cancelled. Over the distributed runtime, tenants'
/// quotas are counted in its Redis, shared by every server. Call within a Tokio runtime.
pub fn router(runtime: Runtime, config: ServerConfig, shutdown: CancellationToken) -> Router {
    let limit = config.max_body_bytes;
    let body_read_timeout = config.body_read_timeout;
    let open =
        (!config.access.is_configured()).then(|| open::OpenGuard::new(&config.allowed_hosts));
    let jobs = Arc::new(jobs::Jobs::new(
        config.jobs_bytes_per_tenant,
        config.jobs_kept_per_tenant,
        config.job_step_bytes,
    ));
    jobs.track_progress(&runtime, shutdown.clone());
    let ledger = match runtime.fleet().map(|fleet| fleet.redis_namespace("quota:")) {
        Some((conn, prefix)) => quota::Ledger::redis(conn, prefix),
        None => quota::Ledger::local(),
    };
    // Batches this server's runs open are charged fleet-wide, as the workers charge theirs.
    if let Some(fleet) = runtime.fleet()
        && config.access.is_configured()
    {
        fleet.charge_batch_items(foreign::item_admission(&runtime, &config.access));
    }
    // Schedules' ticks are charged to their tenants, by whichever process fires them.
    if config.access.is_configured() {
        runtime.charge_schedules(foreign::schedule_admission(&runtime, &config.access));
    }
    let history = Arc::new(history::History::default());
    history.sample_until(runtime.clone(), shutdown.clone());
    let state = AppState {
        history,
        ledger: Arc::new(ledger),
        runtime,
        access: Arc::new(config.access.clone()),
        jobs,
        config: Arc::new(config),
        shutdown,
        streams: Arc::default(),
    };
    let router = Router::new()
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
        .route("/v1/stats/history", get(api::stats_history))
        .route("/v1/sessions", get(api::sessions))
        .route(
            "/v1/sessions/{id}",
            get(api::session).delete(api::stop_session),
        )
        .route("/v1/schedules", get(schedules::list))
        .route(
            "/v1/schedules/{name}",
            get(schedules::get)
                .put(schedules::put)
                .delete(schedules::remove),
        )
        .route("/v1/events", get(events::stream))
        .route("/v1/queues", get(api::queues))
        .route("/v1/dlq", get(api::dead_jobs))
        .route("/v1/dlq/{queue}/{id}/retry", post(api::redrive))
        .route("/v1/dlq/{queue}/{id}", delete(api::purge))
        .fallback(api::no_route)
        .method_not_allowed_fallback(api::wrong_method)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(move |request, next| {
            body::deadline(body_read_timeout, request, next)
        }))
        .with_state(state);
    match open {
        Some(guard) => router.layer(axum::middleware::from_fn_with_state(guard, open::guard)),
        None => router,
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets requests in
/// progress finish (executions are not cancelled: stop the runtime for that). At most
/// [`ServerConfig::max_connections`] connections are served at once, and each is held to
/// [`ServerConfig::header_read_timeout`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    runtime: Runtime,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
    let header_read_timeout = config.header_read_timeout;
    let app = router(runtime, config, shutdown.clone());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // A place first: past the cap, connections wait in the listen backlog, unaccepted.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // wait a moment (as axum does) rather than spin.
                    tracing::debug!(%error, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let connection =
                builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        // Reap the connections that ended, so the set holds only live ones.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The request body's deadline.
mod body {
    use std::future::Future as _;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use axum::body::{Body, Bytes};
    use axum::extract::Request;
    use axum::http::header;
    use axum::middleware::Next;
    use axum::response::Response;
    use http_body::{Frame, SizeHint};

    /// The error a body past its deadline ends with.
    #[derive(Debug, thiserror::Error)]
    #[error("the request body did not arrive within {0:?}")]
    pub(crate) struct BodyDeadline(pub(crate) Duration);

    /// A body that fails once `deadline` has passed.
    struct DeadlineBody {
        inner: Body,
        deadline: Pin<Box<tokio::time::Sleep>>,
        limit: Duration,
    }

    impl http_body::Body for DeadlineBody {
        type Data = Bytes;
        type Error = axum::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
            if self.deadline.as_mut().poll(cx).is_ready() {
                let limit = self.limit;
                return Poll::Ready(Some(Err(axum::Error::new(BodyDeadline(limit)))));
            }
            Pin::new(&mut self.inner).poll_frame(cx)
        }

        fn is_end_stream(&self) -> bool {
            self.inner.is_end_stream()
        }

        fn size_hint(&self) -> SizeHint {
            self.inner.size_hint()
        }
    }

    /// Gives the body of a request that has one `limit` to arrive in full.
    pub(super) async fn deadline(limit: Duration, request: Request, next: Next) -> Response {
        let headers = request.headers();
        let has_body = headers.contains_key(header::TRANSFER_ENCODING)
            || headers
                .get(header::CONTENT_LENGTH)
                .is_some_and(|length| length.as_bytes() != b"0");
        if !has_body {
            return next.run(request).await;
        }
        let request = request.map(|inner| {
            Body::new(DeadlineBody {
                inner,
                deadline: Box::pin(tokio::time::sleep(limit)),
                limit,
            })
        });
        next.run(request).await
    }
}
