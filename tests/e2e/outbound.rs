//! Outbound HTTP: the `fetch` plugin sends `wasi:http` requests to a server on 127.0.0.1
//! started by each test. Only origins and methods granted in `[capabilities.http]` get
//! through; a denied request never reaches the server; a slow server hits the grant's
//! per-request timeout; a response over the grant's size cap fails instead of arriving cut.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method};
use axum::routing::{any, get};
use serde_json::{Value, json};
use weir::{ErrorKind, ExecutionRequest, ExecutionResult};
use weir_tests::{PluginFolder, runtime};

/// A server on a loopback port that counts the requests it receives.
struct TestServer {
    port: u16,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    async fn start() -> TestServer {
        let hits = Arc::new(AtomicUsize::new(0));
        let app = Router::new()
            .route("/greeting", get(|| async { "hello from 127.0.0.1" }))
            .route("/echo", any(echo))
            // Never answers: the response head never comes.
            .route("/slow", get(std::future::pending::<&'static str>))
            // Answers at once, then never finishes the body.
            .route("/trickle", get(trickle))
            // A byte every 100 ms, for ever: no single wait is long, the whole is endless.
            .route("/drip", get(drip))
            .route("/big", get(|| async { "x".repeat(5_000) }))
            // The same size without a `content-length`: streamed in chunks.
            .route("/big-stream", get(big_stream))
            .with_state(hits.clone())
            .layer(axum::middleware::from_fn_with_state(hits.clone(), count));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestServer { port, hits, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn count(
    State(hits): State<Arc<AtomicUsize>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    hits.fetch_add(1, Ordering::SeqCst);
    next.run(request).await
}

async fn echo(method: Method, headers: HeaderMap, body: Bytes) -> axum::Json<Value> {
    let header = headers
        .get("x-weir-test")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    axum::Json(json!({
        "method": method.as_str(),
        "body": String::from_utf8_lossy(&body),
        "header": header,
    }))
}

async fn trickle() -> Body {
    let first = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"a"))]);
    let stalled = futures_util::stream::pending();
    Body::from_stream(futures_util::StreamExt::chain(first, stalled))
}

async fn drip() -> Body {
    let drops = futures_util::stream::unfold((), |()| async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        Some((Ok::<_, std::io::Error>(Bytes::from_static(b"d")), ()))
    });
    Body::from_stream(drops)
}

async fn big_stream() -> Body {
    let chunks = (0..50).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'y'; 100])));
    Body::from_stream(futures_util::stream::iter(chunks))
}

/// Runs `fetch` with `input` in a folder whose `fetch.toml` is `manifest` (none if empty).
async fn fetch(manifest: &str, input: Value) -> ExecutionResult {
    let folder = PluginFolder::with(&["fetch"]);
    if !manifest.is_empty() {
        folder.manifest("fetch", manifest);
    }
    let rt = runtime(folder.path()).await;
    rt.execute(ExecutionRequest::new("fetch", input))
        .await
        .unwrap()
}

fn grant(server: &TestServer, extra: &str) -> String {
    format!(
        "[capabilities.http]\nallow = [\"http://127.0.0.1:{}\"]\n{extra}",
        server.port
    )
}

fn failure(result: &ExecutionResult, kind: ErrorKind, code: &str) -> String {
    let error = result
        .error
        .as_ref()
        .unwrap_or_else(|| panic!("expected a failure, got {result:?}"));
    assert_eq!(error.kind, kind, "{error}");
    assert_eq!(error.code.as_deref(), Some(code), "{error}");
    error.message.clone()
}

#[tokio::test]
async fn an_allowed_plugin_gets_the_response() {
    let server = TestServer::start().await;
    let result = fetch(
        &grant(&server, ""),
        json!({ "url": server.url("/greeting"), "keep": 1 }),
    )
    .await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["status"], 200);
    assert_eq!(result.state["body"], "hello from 127.0.0.1");
    assert_eq!(result.state["keep"], 1, "the output merges into the input");
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn a_post_with_a_body_and_headers_reaches_the_server() {
    let server = TestServer::start().await;
    let result = fetch(
        &grant(&server, ""),
        json!({
            "url": server.url("/echo"),
            "method": "POST",
            "body": "{\"n\":42}",
            "headers": { "x-weir-test": "yes", "content-type": "application/json" },
        }),
    )
    .await;
    assert!(result.ok, "{:?}", result.error);
    let echoed: Value = serde_json::from_str(result.state["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        echoed,
        json!({ "method": "POST", "body": "{\"n\":42}", "header": "yes" })
    );
}

#[tokio::test]
async fn a_plugin_without_the_grant_is_denied_and_nothing_is_sent() {
    let server = TestServer::start().await;
    let result = fetch("", json!({ "url": server.url("/greeting") })).await;
    let message = failure(&result, ErrorKind::Configuration, "capability-denied");
    assert!(message.contains("denied"), "{message}");
    assert!(message.contains(&server.url("/greeting")), "{message}");
    assert_eq!(server.hits(), 0, "the request must not leave the host");
}

#[tokio::test]
async fn another_host_port_or_method_is_denied() {
    let server = TestServer::start().await;
    let other = TestServer::start().await;
    let manifest = format!(
        "[capabilities.http]\nallow = [{{ origin = \"http://127.0.0.1:{}\", methods = [\"GET\"] }}]\n",
        server.port
    );
    for input in [
        // Another host name for the same server.
        json!({ "url": format!("http://localhost:{}/greeting", server.port) }),
        // Another port on the same host.
        json!({ "url": other.url("/greeting") }),
        // Another scheme.
        json!({ "url": format!("https://127.0.0.1:{}/greeting", server.port) }),
        // A method the grant leaves out.
        json!({ "url": server.url("/echo"), "method": "DELETE" }),
    ] {
        let result = fetch(&manifest, input.clone()).await;
        failure(&result, ErrorKind::Configuration, "capability-denied");
    }
    assert_eq!(server.hits() + other.hits(), 0);
    // The grant itself works.
    let result = fetch(&manifest, json!({ "url": server.url("/greeting") })).await;
    assert!(result.ok, "{:?}", result.error);
}

/// M2: a granted *name* that resolves to an internal address (here `localhost`, to
/// 127.0.0.1) is refused before anything connects: only a grant that names the internal
/// address itself reaches it. Checked on the address the connection then goes to, so a name
/// that resolves elsewhere a moment later changes nothing.
#[tokio::test]
async fn a_granted_name_that_resolves_to_an_internal_address_is_refused() {
    let server = TestServer::start().await;
    let url = format!("http://localhost:{}/greeting", server.port);
    let by_name = format!(
        "[capabilities.http]\nallow = [\"http://localhost:{}\"]\n",
        server.port
    );
    let result = fetch(&by_name, json!({ "url": url })).await;
    let message = failure(&result, ErrorKind::Configuration, "capability-denied");
    assert!(message.contains("internal address"), "{message}");
    assert_eq!(server.hits(), 0, "nothing may reach the internal server");
    // Naming the literal address (as well) lets the plugin reach it, by either spelling.
    let both = format!(
        "[capabilities.http]\nallow = [\"http://localhost:{0}\", \"http://127.0.0.1:{0}\"]\n",
        server.port
    );
    let result = fetch(&both, json!({ "url": url })).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["body"], "hello from 127.0.0.1");
}

/// An `https` grant speaks TLS: a server that answers in plain HTTP fails the handshake with
/// a network error, and the guest never sees its plain answer.
#[tokio::test]
async fn https_is_tls_and_a_plain_server_fails_the_handshake() {
    let server = TestServer::start().await;
    let manifest = format!(
        "[capabilities.http]\nallow = [\"https://127.0.0.1:{}\"]\n",
        server.port
    );
    let url = format!("https://127.0.0.1:{}/greeting", server.port);
    let result = fetch(&manifest, json!({ "url": url })).await;
    let message = failure(&result, ErrorKind::Network, "http-error");
    assert!(message.to_lowercase().contains("tls"), "{message}");
    assert_eq!(server.hits(), 0, "no HTTP request was made in the clear");
}

#[tokio::test]
async fn a_slow_server_hits_the_per_request_timeout() {
    let server = TestServer::start().await;
    // The plugin's own timeout is 10 s: a `deadline-exceeded` here would mean the grant's
    // timeout did not stop the request.
    let manifest = grant(&server, "timeout_ms = 300\n");
    let result = fetch(&manifest, json!({ "url": server.url("/slow") })).await;
    let message = failure(&result, ErrorKind::Timeout, "http-timeout");
    assert!(message.contains("/slow"), "{message}");
    let result = fetch(&manifest, json!({ "url": server.url("/trickle") })).await;
    failure(&result, ErrorKind::Timeout, "http-timeout");
    assert!(result.error.as_ref().unwrap().retryable);
    // The timeout bounds the whole request, not each wait for a byte.
    let result = fetch(&manifest, json!({ "url": server.url("/drip") })).await;
    failure(&result, ErrorKind::Timeout, "http-timeout");
}

#[tokio::test]
async fn a_response_over_the_size_cap_fails_instead_of_arriving_cut() {
    let server = TestServer::start().await;
    let manifest = grant(&server, "max_response_bytes = 1000\n");
    for path in ["/big", "/big-stream"] {
        let result = fetch(&manifest, json!({ "url": server.url(path) })).await;
        let message = failure(&result, ErrorKind::Resource, "http-response-too-large");
        assert!(message.contains("1000"), "{path}: {message}");
    }
    let roomy = grant(&server, "max_response_bytes = 5000\n");
    let result = fetch(&roomy, json!({ "url": server.url("/big-stream") })).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["body"].as_str().unwrap().len(), 5_000);
}

#[tokio::test]
async fn a_bad_http_grant_rejects_the_plugin_with_the_reason() {
    let folder = PluginFolder::with(&["fetch"]);
    folder.manifest(
        "fetch",
        "[capabilities.http]\nallow = [\"127.0.0.1:8080\"]\n",
    );
    let rt = runtime(folder.path()).await;
    assert!(rt.plugin("fetch").is_none());
    let catalog = rt.catalog();
    let reason = &catalog.rejected.get("fetch").expect("rejected").reason;
    assert!(reason.contains("[capabilities.http]"), "{reason}");
    assert!(reason.contains("SCHEME://HOST"), "{reason}");
}
