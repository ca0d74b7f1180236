//! The HTTP API of `weir serve --listen`, with a real HTTP client against the real binary:
//! every route, the result document, JSON errors for refused requests, sessions, live events
//! over SSE, Prometheus metrics, the OpenAPI document, and a graceful stop.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use weir_tests::{PluginFolder, WeirProcess};

use crate::http::answer;

/// A `weir serve` over `plugins` (plus a file that is not a component and a workflow),
/// with `extra` arguments, and a client for it.
struct Api {
    _folder: PluginFolder,
    process: WeirProcess,
    url: String,
    client: reqwest::Client,
}

impl Api {
    fn start(plugins: &[&str], extra: &[&str]) -> Api {
        let folder = PluginFolder::with(plugins);
        folder.write("broken.wasm", b"not a component");
        folder.write(
            "workflows.toml",
            b"[workflow.twice]\nchain = [\"increment\", \"increment\"]\n",
        );
        let (process, url) = WeirProcess::serve(folder.path(), extra);
        Api {
            _folder: folder,
            process,
            url,
            client: reqwest::Client::new(),
        }
    }

    /// Sends `method path` with no body; the raw response.
    async fn send(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.client
            .request(method, format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        answer(self.send(reqwest::Method::GET, path).await).await
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        answer(response).await
    }
}

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(body["error"]["kind"].is_string(), "{body}");
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{body}"
    );
}

fn result_schema() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/result.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[tokio::test]
async fn serve_answers_probes_and_lists_plugins_workflows_and_rejections() {
    let api = Api::start(&["hello", "increment"], &[]);
    assert_eq!(api.get("/healthz").await, (200, json!({ "status": "ok" })));
    let (status, ready) = api.get("/readyz").await;
    assert_eq!((status, &ready["status"]), (200, &json!("ready")));
    assert_eq!(ready["plugins"], 2);

    let (status, plugins) = api.get("/v1/plugins").await;
    assert_eq!(status, 200);
    let rows = plugins["plugins"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["broken", "hello", "increment"]);
    assert_eq!(rows[0]["status"], "rejected");
    assert!(!rows[0]["reason"].as_str().unwrap().is_empty());
    assert_eq!(rows[1]["status"], "loaded");
    assert_eq!(rows[1]["digest"].as_str().unwrap().len(), 64);

    let (status, hello) = api.get("/v1/plugins/hello").await;
    assert_eq!(status, 200);
    assert_eq!(hello["limits"]["timeoutMs"], 1000, "{hello}");
    let (status, broken) = api.get("/v1/plugins/broken").await;
    assert_eq!((status, &broken["status"]), (200, &json!("rejected")));
    let (status, missing) = api.get("/v1/plugins/nope").await;
    assert_error(status, &missing, 404, "plugin-not-found");
    assert_eq!(missing["error"]["available"], json!(["hello", "increment"]));

    let (status, workflows) = api.get("/v1/workflows").await;
    assert_eq!(status, 200);
    assert_eq!(workflows["workflows"][0]["name"], "twice");
    assert_eq!(workflows["workflows"][0]["status"], "valid");
}

#[tokio::test]
async fn run_returns_the_result_document_for_successes_and_failures() {
    let api = Api::start(&["hello", "increment", "panic"], &[]);
    let validator = result_schema();

    let response = api
        .client
        .post(format!("{}/v1/run/hello", api.url))
        .json(&json!({ "user": "Ada" }))
        .send()
        .await
        .unwrap();
    let id = response.headers()["weir-execution-id"]
        .to_str()
        .unwrap()
        .to_string();
    let (status, doc) = answer(response).await;
    assert_eq!(status, 200);
    assert_eq!(doc["ok"], true, "{doc}");
    assert_eq!(doc["state"]["greeting"], "Hello Ada!");
    assert_eq!(doc["execution"]["id"], id);
    assert_eq!(doc["execution"]["tenant"], "default");
    assert!(validator.is_valid(&doc), "{doc}");

    // An empty body is the empty state.
    let (status, doc) = api.post("/v1/run/hello", "").await;
    assert_eq!(
        (status, &doc["state"]["greeting"]),
        (200, &json!("Hello world!"))
    );

    // A workflow runs the same way.
    let (status, doc) = api.post("/v1/run/twice", r#"{"count": 5}"#).await;
    assert_eq!((status, &doc["state"]["count"]), (200, &json!(7)), "{doc}");

    // A failed execution ran: 200, with `ok: false` and the error.
    let (status, doc) = api.post("/v1/run/panic", "{}").await;
    assert_eq!(status, 200);
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["error"]["kind"], "execution");
    assert!(validator.is_valid(&doc), "{doc}");

    // A lower timeout is honoured (and a zero one refused).
    let (status, _) = api.post("/v1/run/hello?timeoutMs=500", "{}").await;
    assert_eq!(status, 200);
    let (status, body) = api.post("/v1/run/hello?timeoutMs=0", "{}").await;
    assert_error(status, &body, 400, "invalid-query");
}

/// Issue 21, part 4: a caller sets the deadline of the whole execution, over HTTP and on
/// the command line (on the distributed runtime it replaces the run deadline).
#[tokio::test]
async fn a_deadline_bounds_the_whole_execution_over_http_and_the_command_line() {
    let api = Api::start(&["sleep"], &[]);
    let (status, doc) = api
        .post("/v1/run/sleep?deadlineMs=100", r#"{"ms": 250}"#)
        .await;
    assert_eq!(status, 200);
    assert_eq!(doc["error"]["kind"], "timeout", "{doc}");
    let (status, body) = api.post("/v1/run/sleep?deadlineMs=0", "{}").await;
    assert_error(status, &body, 400, "invalid-query");
    let folder = PluginFolder::with(&["sleep"]);
    let output = std::process::Command::new(weir_tests::weir_bin())
        .args([
            "run",
            "sleep",
            "--deadline-ms",
            "100",
            "--input",
            r#"{"ms": 250}"#,
        ])
        .arg("--plugins")
        .arg(folder.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(doc["error"]["kind"], "timeout", "{doc}");
}

#[tokio::test]
async fn refused_requests_get_json_errors_and_the_right_status() {
    let api = Api::start(&["hello"], &["--max-body-bytes", "1024"]);
    let (status, body) = api.post("/v1/run/hello", "{not json").await;
    assert_error(status, &body, 400, "invalid-input");
    let (status, body) = api.post("/v1/run/hello", "[1, 2]").await;
    assert_error(status, &body, 400, "invalid-input");
    let (status, body) = api.post("/v1/run/hello?sesion=typo", "{}").await;
    assert_error(status, &body, 400, "invalid-query");

    let (status, body) = api.post("/v1/run/nope", "{}").await;
    assert_error(status, &body, 404, "processor-not-found");
    assert_eq!(body["error"]["available"], json!(["hello"]));

    let big = format!(r#"{{"user": "{}"}}"#, "x".repeat(2048));
    let (status, body) = api.post("/v1/run/hello", big).await;
    assert_error(status, &body, 413, "body-too-large");

    let (status, body) = api.get("/v1/run/hello").await;
    assert_error(status, &body, 405, "method-not-allowed");
    assert_eq!(body["error"]["allowed"], json!(["POST"]));
    let (status, body) = api.get("/v2/anything").await;
    assert_error(status, &body, 404, "no-route");
}

#[tokio::test]
async fn sessions_keep_state_across_requests_and_stop_over_http() {
    let api = Api::start(&["increment"], &[]);
    let (status, first) = api
        .post("/v1/run/increment?session=cart-1", r#"{"count": 10}"#)
        .await;
    assert_eq!((status, &first["state"]["count"]), (200, &json!(11)));
    // The next input continues from the stored revision.
    let (_, second) = api
        .post("/v1/run/increment?session=cart-1", r#"{"count": 11}"#)
        .await;
    assert_eq!(second["state"]["count"], 12, "{second}");
    assert_eq!(second["state"]["metadata"]["version"], 2, "{second}");

    let (status, list) = api.get("/v1/sessions").await;
    assert_eq!(status, 200);
    assert_eq!(list["sessions"][0]["session"], "cart-1", "{list}");
    let (status, session) = api.get("/v1/sessions/cart-1").await;
    assert_eq!(status, 200);
    assert_eq!(session["state"]["count"], 12);
    assert_eq!(session["stats"]["executions"], 2);
    // Broken down by processor, as AM2Z's getSessionStats is.
    assert_eq!(
        session["stats"]["processors"]["increment"],
        json!({"executions": 2, "running": 0, "failed": 0}),
        "{session}"
    );

    let response = api
        .send(reqwest::Method::DELETE, "/v1/sessions/cart-1")
        .await;
    let (status, stopped) = answer(response).await;
    assert_eq!((status, &stopped["removedState"]), (200, &json!(true)));
    let (status, gone) = api.get("/v1/sessions/cart-1").await;
    assert_error(status, &gone, 404, "session-not-found");
}

#[tokio::test]
async fn events_arrive_live_over_server_sent_events() {
    let api = Api::start(&["hello", "increment"], &[]);
    let response = api
        .send(reqwest::Method::GET, "/v1/events?processor=hello")
        .await;
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = response.bytes_stream();
    // Another processor's events are filtered out; hello's arrive.
    api.post("/v1/run/increment", "{}").await;
    let (_, done) = api.post("/v1/run/hello", r#"{"user": "SSE"}"#).await;
    let id = done["execution"]["id"].as_str().unwrap().to_string();
    let mut text = String::new();
    let completed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let chunk = stream.next().await.expect("the stream stays open").unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
            // Frames end with a blank line.
            while let Some(end) = text.find("\n\n") {
                let frame: String = text.drain(..end + 2).collect();
                let kind = frame.lines().find_map(|l| l.strip_prefix("event: "));
                let data = frame.lines().find_map(|l| l.strip_prefix("data: "));
                if let (Some(kind), Some(data)) = (kind, data) {
                    let event: Value = serde_json::from_str(data).unwrap();
                    assert_eq!(event["processor"], "hello", "{frame}");
                    if kind == "processor:completed" {
                        return event;
                    }
                }
            }
        }
    })
    .await
    .expect("processor:completed arrived within 30 s");
    assert_eq!(completed["executionId"], id.as_str(), "{completed}");
}

#[tokio::test]
async fn metrics_count_executions_in_the_prometheus_text_format() {
    let api = Api::start(&["hello", "panic"], &[]);
    for _ in 0..3 {
        api.post("/v1/run/hello", "{}").await;
    }
    api.post("/v1/run/panic", "{}").await;
    let response = api.send(reqwest::Method::GET, "/metrics").await;
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("`{line}`"));
        assert!(value.parse::<f64>().is_ok(), "not a sample: `{line}`");
    }
    for expected in [
        "weir_up 1",
        "weir_plugins_loaded 2",
        "weir_plugins_rejected 1",
        "weir_executions_total{tenant=\"default\",processor=\"hello\",outcome=\"ok\"} 3",
        "weir_executions_total{tenant=\"default\",processor=\"panic\",outcome=\"failed\"} 1",
        "weir_execution_duration_seconds_count{tenant=\"default\",processor=\"hello\"} 3",
        "weir_execution_duration_seconds_bucket{tenant=\"default\",processor=\"hello\",le=\"+Inf\"} 3",
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "no `{expected}` in:\n{text}"
        );
    }
    let (_, stats) = api.get("/v1/stats").await;
    assert_eq!(stats["processors"]["hello"]["completed"], 3);
    assert!(stats["processors"]["hello"]["p50Us"].as_u64().unwrap() > 0);
    assert_eq!(stats["processors"]["panic"]["failureRate"], 1.0);
}

#[tokio::test]
async fn the_openapi_document_describes_exactly_the_routes_served() {
    let api = Api::start(&["hello"], &[]);
    let (status, doc) = api.get("/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = weir_server::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
    for (method, path) in &served {
        let operation = &doc["paths"][path][method.to_lowercase()];
        assert!(operation["responses"].is_object(), "{method} {path}");
        // Every `$ref` resolves inside the document.
        for reference in refs(operation) {
            let pointer = reference.trim_start_matches('#');
            assert!(
                doc.pointer(pointer).is_some(),
                "{method} {path}: {reference}"
            );
        }
        // And every route is really served (not the no-route fallback).
        let concrete = path.replace("{name}", "hello").replace("{id}", "s");
        if method == "GET" && path != "/v1/events" {
            let response = api.send(reqwest::Method::GET, &concrete).await;
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_ne!(body["error"]["code"], "no-route", "{method} {path}");
        }
    }
}

fn refs(value: &Value) -> Vec<String> {
    match value {
        Value::Object(map) => map
            .iter()
            .flat_map(|(key, v)| match (key.as_str(), v) {
                ("$ref", Value::String(r)) => vec![r.clone()],
                _ => refs(v),
            })
            .collect(),
        Value::Array(items) => items.iter().flat_map(refs).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test]
async fn sigterm_stops_the_server_even_with_an_event_stream_open() {
    let mut api = Api::start(&["hello"], &[]);
    let response = api.send(reqwest::Method::GET, "/v1/events").await;
    assert_eq!(response.status().as_u16(), 200);
    let code = tokio::task::spawn_blocking(move || {
        let code = api.process.terminate_within(Duration::from_secs(30));
        (code, api)
    })
    .await
    .unwrap()
    .0;
    assert_eq!(code, Some(0), "weir serve did not exit cleanly within 30 s");
    drop(response);
}

#[tokio::test]
async fn jobs_run_in_the_background_and_are_read_listed_and_cancelled() {
    let api = Api::start(&["hello", "sleep"], &[]);
    let submit = |body: Value| {
        let request = api.client.post(format!("{}/v1/jobs", api.url)).json(&body);
        async move { answer(request.send().await.unwrap()).await }
    };
    let (status, job) = submit(json!({ "processor": "hello", "input": { "user": "Job" } })).await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let mut events = api
        .send(reqwest::Method::GET, "/v1/events?processor=sleep")
        .await
        .bytes_stream();
    // `waitMs` answers as soon as the job has finished.
    let (_, finished) = api.get(&format!("/v1/jobs/{id}?waitMs=30000")).await;
    assert_eq!(finished["status"], "completed", "{finished}");
    assert_eq!(finished["result"]["state"]["greeting"], "Hello Job!");
    assert_eq!(finished["result"]["execution"]["id"], id.as_str());

    // A long job, cancelled while it runs.
    let (_, long) = submit(json!({ "processor": "sleep", "input": { "ms": 60_000 } })).await;
    let long_id = long["id"].as_str().unwrap().to_string();
    let mut text = String::new();
    crate::http::wait_for_text(&mut events, &mut text, "event: processor:started").await;
    let response = api
        .send(reqwest::Method::DELETE, &format!("/v1/jobs/{long_id}"))
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let (_, cancelled) = api.get(&format!("/v1/jobs/{long_id}?waitMs=30000")).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    // Cancelling a finished job changes nothing.
    let response = api
        .send(reqwest::Method::DELETE, &format!("/v1/jobs/{id}"))
        .await;
    let (status, body) = answer(response).await;
    assert_eq!((status, &body["cancelled"]), (200, &json!(false)));

    // Lists: newest first, filtered, in pages.
    let (_, all) = api.get("/v1/jobs").await;
    let ids: Vec<&str> = all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [long_id.as_str(), id.as_str()]);
    let (_, hello) = api.get("/v1/jobs?processor=hello&status=completed").await;
    assert_eq!(hello["jobs"].as_array().unwrap().len(), 1);
    let (_, page) = api.get("/v1/jobs?limit=1").await;
    assert_eq!(page["jobs"][0]["id"], long_id.as_str());
    let next = page["next"].as_str().unwrap();
    let (_, page) = api.get(&format!("/v1/jobs?limit=1&before={next}")).await;
    assert_eq!(page["jobs"][0]["id"], id.as_str());
    assert_eq!(page["next"], Value::Null);

    // Refusals: unknown processor, malformed body, unknown job, bad filter.
    let (status, body) = submit(json!({ "processor": "nope" })).await;
    assert_error(status, &body, 404, "processor-not-found");
    let (status, body) = submit(json!({ "processor": "hello", "extra": 1 })).await;
    assert_error(status, &body, 400, "invalid-input");
    let (status, body) = api.get("/v1/jobs/not-a-job").await;
    assert_error(status, &body, 404, "job-not-found");
    let (status, body) = api.get("/v1/jobs?status=lost").await;
    assert_error(status, &body, 400, "invalid-query");
}

#[tokio::test]
async fn a_job_shows_the_progress_its_guest_reports() {
    let api = Api::start(&["cooperative"], &[]);
    let mut events = api
        .send(reqwest::Method::GET, "/v1/events?processor=cooperative")
        .await
        .bytes_stream();
    let (status, job) = api
        .post("/v1/jobs", r#"{"processor": "cooperative"}"#)
        .await;
    assert_eq!(status, 202, "{job}");
    let path = format!("/v1/jobs/{}", job["id"].as_str().unwrap());
    // The guest reports progress as it loops. The server's tracker is another subscriber of
    // the same events, so once a report has reached this stream, read the job until the
    // tracker has recorded one too (a bounded wait: the reports keep coming).
    let mut text = String::new();
    crate::http::wait_for_text(&mut events, &mut text, "event: progress").await;
    let running = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (_, job) = api.get(&path).await;
            if !job["progress"].is_null() {
                return job;
            }
            // The next report, then look again.
            text.clear();
            crate::http::wait_for_text(&mut events, &mut text, "event: progress").await;
        }
    })
    .await
    .expect("the job recorded its progress");
    let progress = &running["progress"];
    assert_eq!(progress["message"], "still working", "{running}");
    assert!(progress["percent"].as_u64().unwrap() <= 100);
    let response = api.send(reqwest::Method::DELETE, &path).await;
    assert_eq!(response.status().as_u16(), 202);
    let (_, done) = api.get(&format!("{path}?waitMs=30000")).await;
    assert_eq!(done["status"], "cancelled", "{done}");
}
