//! The HTTP API's fuzz target: requests near the API's routes (any method, path, query,
//! headers and body) sent to the router in process, in open mode and with tenants. Every
//! answer must come within a few seconds, never be a `500`, and, when it is an error, be the
//! API's JSON error document.
//!
//! With `WEIR_FUZZ_PLUGINS` naming a folder of the test plugins (`cargo xtask fuzz` builds
//! one, with the example `workflows.toml`), the router serves some of them, so requests run
//! processors and workflows, some of which fail, trap or answer large; without it, the
//! folder is empty and the target covers parsing and routing only.

use std::time::{Duration, Instant};

use axum::body::Body;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{ROUTES, ServerConfig, ServerFile, router};
use weir_fuzzing::{fuzz, json_near, toml_near, word};

const OPERATOR_TOKEN: &str = "operator-token";
const TENANT_TOKEN: &str = "acme-token";

/// The test plugins the target serves from `WEIR_FUZZ_PLUGINS`: ones that succeed, and
/// ones that fail, trap, log or emit much, or answer large; none that only waits for its
/// timeout (an answer must come within 10 s).
const FUZZ_PLUGINS: &[&str] = &[
    "hello",
    "increment",
    "double",
    "add-ten",
    "classify",
    "sum-counts",
    "validate-email",
    "word-count",
    "stamp",
    "panic",
    "flaky",
    "huge-output",
    "abuse",
    "log-flood",
];

const WORDS: &[&str] = &[
    "hello",
    "increment",
    "calc",
    "panic",
    "flaky",
    "huge-output",
    "abuse",
    "fan",
    "pick",
    "size",
    "sum-then-greet",
    "pipeline",
    "check-emails",
    "polyglot",
    "default",
    "acme",
    "s",
    "s1",
    "a/b",
    "..",
    "%00",
    "%2F",
    "%ZZ",
    "\u{0}",
    "é",
    "1",
    "-1",
    "18446744073709551616",
    "true",
    "null",
    "queued",
    "running",
    "completed",
    "failed",
    "weir-hello",
    "r1-0",
    "",
];

const QUERY_KEYS: &[&str] = &[
    "session",
    "timeout_ms",
    "tenant",
    "queue",
    "limit",
    "wait_ms",
    "status",
    "processor",
    "since_ms",
    "until_ms",
    "before",
    "unknown",
];

const BODY_WORDS: &[&str] = &[
    "processor",
    "state",
    "input",
    "session",
    "priority",
    "delayMs",
    "timeoutMs",
    "items",
    "metadata",
    "version",
    "count",
    "hello",
    "calc",
    "limits",
    "fuel",
    "memoryBytes",
    "kind",
    "inc",
    "greet",
    "needsReview",
    "user",
    "email",
    "text",
    "fail",
    "emit",
    "bytes",
];

const HEADERS: &[&str] = &[
    "content-type",
    "authorization",
    "origin",
    "host",
    "accept",
    "idempotency-key",
    "last-event-id",
    "x-forwarded-for",
];

const HEADER_VALUES: &[&str] = &[
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "multipart/form-data",
    "Bearer operator-token",
    "Bearer acme-token",
    "Bearer wrong",
    "Bearer ",
    "Basic YTpi",
    "http://evil.example",
    "null",
    "http://127.0.0.1:8080",
    "localhost",
    "127.0.0.1:8080",
    "evil.example",
    "[::1]:80",
    "*/*",
    "text/event-stream",
];

/// A request as generated.
#[derive(Debug, Clone)]
struct Fuzzed {
    /// Sent to the open-mode router (no tenants) rather than the configured one.
    open: bool,
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// `text` with every byte outside unreserved characters percent-encoded.
fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn path() -> impl Strategy<Value = String> {
    let templates: Vec<&'static str> = ROUTES.iter().map(|(_, path)| *path).collect();
    prop_oneof![
        4 => (prop::sample::select(templates), word(WORDS), word(WORDS), any::<bool>()).prop_map(
            |(template, a, b, raw)| {
                // A parameter percent-encoded as a client should, or raw (`%`, `/`, `..`).
                let fill = |w: &str| if raw { w.replace(['?', '#', ' '], "") } else { encode(w) };
                let mut values = [fill(&a), fill(&b)].into_iter().cycle();
                template
                    .split('/')
                    .map(|segment| match segment.starts_with('{') {
                        true => values.next().unwrap_or_default(),
                        false => segment.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            }
        ),
        1 => prop::collection::vec(word(WORDS), 0..5)
            .prop_map(|segments| format!("/{}", segments.iter().map(|s| encode(s)).collect::<Vec<_>>().join("/"))),
    ]
}

/// Any request: near the routes, its parts from the API's vocabulary or anything; and, a
/// third of the time, one meant to run something ([`execution`]), since few of the others
/// get as far as a sandbox.
fn request() -> impl Strategy<Value = Fuzzed> {
    prop_oneof![2 => any_request(), 1 => execution()]
}

/// The workflows of the example `workflows.toml`.
const WORKFLOWS: &[&str] = &[
    "calc",
    "fan",
    "pick",
    "size",
    "sum-both",
    "sum-then-greet",
    "check-emails",
    "pipeline",
    "polyglot",
];

/// A request a client means to run something with: `POST /v1/run/{name}` or `POST /v1/jobs`,
/// as JSON, with a token the router knows (or none, in open mode), and a body near a real
/// input.
fn execution() -> impl Strategy<Value = Fuzzed> {
    let names: Vec<&'static str> = FUZZ_PLUGINS.iter().chain(WORKFLOWS).copied().collect();
    let token = prop::sample::select(vec![
        None,
        Some("Bearer acme-token"),
        Some("Bearer operator-token"),
    ]);
    (
        prop::sample::select(names),
        any::<bool>(),
        token,
        json_near(seeds(), BODY_WORDS),
        prop::collection::vec((prop::sample::select(QUERY_KEYS), word(WORDS)), 0..2),
    )
        .prop_map(|(name, job, token, input, query)| {
            let (path, body) = match job {
                true => (
                    "/v1/jobs".to_string(),
                    json!({"processor": name, "input": input, "session": "s"}),
                ),
                false => (format!("/v1/run/{name}"), input),
            };
            let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
            if let Some(token) = token {
                headers.push(("authorization".to_string(), token.to_string()));
            }
            Fuzzed {
                open: token.is_none(),
                method: "POST".to_string(),
                path,
                query: query.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                headers,
                body: body.to_string().into_bytes(),
            }
        })
}

/// Inputs near the ones the API documents and the served processors read.
fn seeds() -> Vec<Value> {
    vec![
        json!({"count": 1}),
        json!({"processor": "hello", "state": {"count": 1}, "session": "s", "priority": 1}),
        json!({"items": [{"count": 1}, {"count": 2}]}),
        json!({"count": 1, "metadata": {"version": 2, "sessionId": "s"}}),
        json!({"user": "Ada"}),
        json!({"kind": "inc", "count": 1, "needsReview": true}),
        json!({"items": [{"email": "a@b.c"}, {"email": "x"}]}),
        json!({"fail": {"messageBytes": 10, "detailsBytes": 10}, "emit": {"count": 2, "bytes": 10}}),
    ]
}

fn any_request() -> impl Strategy<Value = Fuzzed> {
    let body = prop_oneof![
        3 => json_near(seeds(), BODY_WORDS).prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => Just(Vec::new()),
    ];
    let method = prop::sample::select(vec![
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
    ]);
    (
        any::<bool>(),
        method,
        path(),
        prop::collection::vec((prop::sample::select(QUERY_KEYS), word(WORDS)), 0..4),
        prop::collection::vec(
            (
                prop::sample::select(HEADERS),
                prop_oneof![3 => prop::sample::select(HEADER_VALUES).prop_map(str::to_string), 1 => word(WORDS)],
            ),
            0..5,
        ),
        body,
    )
        .prop_map(|(open, method, path, query, headers, body)| Fuzzed {
            open,
            method: method.to_string(),
            path,
            query: query.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            headers: headers.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            body,
        })
}

/// The target's plugins folder: [`FUZZ_PLUGINS`] and the example workflows copied from
/// `WEIR_FUZZ_PLUGINS`, or nothing without it. Returns it with the names it serves.
fn plugins_folder() -> (tempfile::TempDir, &'static [&'static str]) {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let Some(from) = std::env::var_os("WEIR_FUZZ_PLUGINS").map(std::path::PathBuf::from) else {
        return (folder, &[]);
    };
    for file in FUZZ_PLUGINS
        .iter()
        .map(|name| format!("{name}.wasm"))
        .chain(["workflows.toml".to_string()])
    {
        if let Err(e) = std::fs::copy(from.join(&file), folder.path().join(&file)) {
            panic!(
                "cannot copy {file} from WEIR_FUZZ_PLUGINS ({}): {e}",
                from.display()
            );
        }
    }
    (folder, FUZZ_PLUGINS)
}

#[test]
fn fuzz_http_requests() {
    let tokio = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(tokio) => tokio,
        Err(e) => panic!("cannot start tokio: {e}"),
    };
    let (folder, served) = plugins_folder();
    let config_text = format!(
        "[server]\noperator_token_sha256 = [\"{}\"]\n[tenants.acme]\ntoken_sha256 = [\"{}\"]\n\
         concurrent = 2\nexecutions_per_minute = 1000000\n",
        hex::encode(super::access::digest(OPERATOR_TOKEN)),
        hex::encode(super::access::digest(TENANT_TOKEN)),
    );
    let file = ServerFile::parse(&config_text, &[]).expect("the configuration parses");
    let shutdown = CancellationToken::new();
    let (runtime, open, configured) = tokio.block_on(async {
        let runtime = weir::Runtime::builder()
            .plugins_dir(folder.path())
            .cache_dir(std::env::var_os("WEIR_FUZZ_CACHE").map(std::path::PathBuf::from))
            .build()
            .await
            .expect("a runtime over the folder");
        runtime.start();
        let catalog = runtime.catalog();
        let loaded = catalog.names();
        for name in served {
            assert!(loaded.contains(name), "`{name}` did not load: {loaded:?}");
        }
        let open = router(runtime.clone(), ServerConfig::default(), shutdown.clone());
        let configured = router(
            runtime.clone(),
            ServerConfig {
                access: file.access,
                ..ServerConfig::default()
            },
            shutdown.clone(),
        );
        (runtime, open, configured)
    });
    fuzz("HTTP requests", request(), |fuzzed| {
        let mut uri = fuzzed.path.clone();
        let head = fuzzed.method == "HEAD";
        if !fuzzed.query.is_empty() {
            let pairs: Vec<String> = fuzzed
                .query
                .iter()
                .map(|(k, v)| format!("{k}={}", encode(v)))
                .collect();
            uri = format!("{uri}?{}", pairs.join("&"));
        }
        let Ok(method) = Method::from_bytes(fuzzed.method.as_bytes()) else {
            return Ok(());
        };
        let mut builder = Request::builder().method(method).uri(&uri);
        for (name, value) in &fuzzed.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                builder = builder.header(name, value);
            }
        }
        // A request hyper would not have parsed (an invalid URI) never reaches the router.
        let Ok(request) = builder.body(Body::from(fuzzed.body.clone())) else {
            return Ok(());
        };
        let app = if fuzzed.open {
            open.clone()
        } else {
            configured.clone()
        };
        let outcome = tokio.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                let response = app.oneshot(request).await.map_err(|e| e.to_string())?;
                let status = response.status();
                let streaming = response
                    .headers()
                    .get(http::header::CONTENT_TYPE)
                    .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
                if streaming {
                    return Ok((status, None));
                }
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                Ok::<_, String>((status, Some(body)))
            })
            .await
        });
        let (status, body) = match outcome {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(TestCaseError::fail(format!("no answer: {e}"))),
            Err(_) => return Err(TestCaseError::fail("no answer within 10 s")),
        };
        let uri = format!("{} {uri}", fuzzed.method);
        prop_assert!(status.as_u16() != 500, "500 for {uri}: {body:?}");
        // An answer to HEAD has no body.
        if !head && (status.is_client_error() || status.is_server_error()) {
            let body = body.unwrap_or_default();
            let document: Value = serde_json::from_slice(&body).map_err(|e| {
                TestCaseError::fail(format!(
                    "{status} for {uri} is not a JSON document ({e}): {:?}",
                    String::from_utf8_lossy(&body)
                ))
            })?;
            prop_assert!(
                document["error"]["code"].is_string() && document["error"]["message"].is_string(),
                "{status} for {uri}: {document}"
            );
        }
        Ok(())
    });
    let stats = runtime.stats();
    let (started, failed) = stats
        .processors
        .values()
        .fold((0, 0), |(s, f), p| (s + p.started, f + p.failed));
    eprintln!("fuzz target `HTTP requests`: {started} executions ran, {failed} of them failed");
    shutdown.cancel();
}

const SERVER_WORDS: &[&str] = &[
    "server",
    "tenants",
    "operator_token_sha256",
    "max_body_bytes",
    "token_sha256",
    "processors",
    "concurrent",
    "executions_per_minute",
    "fuel_per_minute",
    "memory_bytes",
    "timeout_ms",
    "event_stream_bytes",
    "event_stream_events",
    "max_event_streams",
    "max_event_streams_per_tenant",
    "max_connections",
    "header_read_timeout_ms",
    "body_read_timeout_ms",
    "allowed_hosts",
    "jobs_bytes_per_tenant",
    "jobs_kept_per_tenant",
    "job_step_bytes",
    "max_sessions_per_tenant",
    "session_idle_ms",
    "acme",
    "default",
    "billing-*",
    "hello",
    "*",
    "Acme",
    "a-",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
];

const SERVER_SEEDS: &[&str] = &[
    "[server]\noperator_token_sha256 = \
     [\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"]\n\
     max_body_bytes = 4194304\nevent_stream_bytes = 1048576\nmax_connections = 10\n\
     header_read_timeout_ms = 1000\nbody_read_timeout_ms = 1000\nallowed_hosts = [\"weir\"]\n\
     jobs_bytes_per_tenant = 1000\njobs_kept_per_tenant = 10\nmax_sessions_per_tenant = 3\n\
     session_idle_ms = 1000\n\n[tenants.acme]\ntoken_sha256 = \
     [\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"]\n\
     processors = [\"hello\", \"billing-*\"]\nconcurrent = 4\nexecutions_per_minute = 600\n\
     fuel_per_minute = 50000000000\nmemory_bytes = 67108864\ntimeout_ms = 5000\n",
    "[tenants.a]\n[tenants.b]\nconcurrent = 1\n",
];

#[test]
fn fuzz_weir_toml() {
    fuzz("weir.toml", toml_near(SERVER_SEEDS, SERVER_WORDS), |text| {
        let env = vec![("WEIR_TENANT_ACME_TOKEN".to_string(), "t".to_string())];
        let Ok(file) = crate::ServerFile::parse(&text, &env) else {
            return Ok(());
        };
        // What `weir serve` builds from it.
        let mut host = weir::HostConfig::default();
        file.settings.apply_host(&mut host);
        let mut config = crate::ServerConfig {
            max_body_bytes: file.max_body_bytes.unwrap_or(4 << 20),
            access: file.access,
            ..crate::ServerConfig::default()
        };
        file.settings.apply(&mut config);
        let _ = Instant::now().checked_add(host.sessions.idle_expiry);
        let _ = Instant::now().checked_add(config.header_read_timeout);
        let _ = Instant::now().checked_add(config.body_read_timeout);
        Ok(())
    });
}
