//! The abuse suite: each test runs one attack from the host's security review
//! (`shared/AUDIT.md`; its finding's id opens the test's comment) against the real host and
//! the `abuse` plugin, and asserts the bound that holds it (`docs/bounds.md` lists them).

use serde_json::{Value, json};
use weir::EventKind;
use weir_tests::{PluginFolder, next_event, run_alone as run, runtime};

/// The documented defaults the attacks meet (`docs/bounds.md`, `weir::GuestBounds`).
const EVENT_NAME_BYTES: usize = 256;
const EVENT_DATA_BYTES: usize = 64 << 10;
const EVENT_BURST: u64 = 100;
const ERROR_MESSAGE_BYTES: usize = 4 << 10;
const ERROR_DETAILS_BYTES: usize = 64 << 10;
const LOG_MESSAGE_BYTES: usize = 8 << 10;

/// C1: an event whose data or name is over its bound is refused, and the guest is told why
/// with a typed error; one just under the bound goes through.
#[tokio::test]
async fn an_event_over_its_size_bound_is_refused_with_a_typed_error() {
    // The data is a JSON string: its text is two bytes longer than its content.
    let over = run(
        "abuse",
        json!({"emit": {"count": 1, "bytes": EVENT_DATA_BYTES - 1}}),
    )
    .await;
    assert!(over.ok, "{over:?}");
    assert_eq!(over.state["emitted"], 0);
    assert_eq!(
        over.state["emitError"]["kind"], "resource",
        "{}",
        over.state
    );
    assert_eq!(over.state["emitError"]["code"], "event-too-large");
    let under = run(
        "abuse",
        json!({"emit": {"count": 1, "bytes": EVENT_DATA_BYTES - 2}}),
    )
    .await;
    assert_eq!(under.state["emitted"], 1, "{}", under.state);
    assert!(under.state.get("emitError").is_none());
    let long_name = run(
        "abuse",
        json!({"emit": {"count": 1, "bytes": 1, "nameBytes": EVENT_NAME_BYTES + 1}}),
    )
    .await;
    assert_eq!(long_name.state["emitError"]["code"], "event-too-large");
}

/// C1: one execution cannot flood the event bus: past its burst (and the refill while it
/// runs), `emit` is refused with a typed error.
#[tokio::test]
async fn an_event_flood_is_refused_past_the_execution_rate() {
    let result = run("abuse", json!({"emit": {"count": 100_000, "bytes": 10}})).await;
    assert!(result.ok, "{result:?}");
    let emitted = result.state["emitted"].as_u64().unwrap();
    let burst = EVENT_BURST;
    // The loop takes well under a second, so the refill adds at most a few tens.
    assert!(
        (burst..burst + 200).contains(&emitted),
        "{emitted} events went through"
    );
    assert_eq!(result.state["emitError"]["code"], "rate-limited");
}

/// H1: a guest error of 16 MiB with 8 MiB of details reaches the caller, and the
/// `processor:failed` event, clipped: its kind and code intact, its message cut, its details
/// replaced by a note of their size.
#[tokio::test]
async fn a_huge_guest_error_is_clipped_in_the_result_and_its_event() {
    let folder = PluginFolder::with(&["abuse"]);
    let rt = runtime(folder.path()).await;
    let mut events = rt.subscribe();
    let input = json!({"fail": {"messageBytes": 16 << 20, "detailsBytes": 8 << 20}});
    let result = rt.run("abuse", input).await.unwrap();
    let error = result.error.as_ref().expect("abuse fails");
    assert_eq!(error.code.as_deref(), Some("abuse"));
    assert!(
        error.message.len() <= ERROR_MESSAGE_BYTES,
        "{} bytes",
        error.message.len()
    );
    assert!(error.message.starts_with("eee") && error.message.ends_with('…'));
    let details = error.details.as_ref().expect("a note of the details' size");
    assert!(details["detailsTooLarge"]["bytes"].as_u64() > Some(8 << 20));
    assert_eq!(
        details["detailsTooLarge"]["limit"],
        json!(ERROR_DETAILS_BYTES)
    );
    let document = serde_json::to_string(&result).unwrap();
    assert!(document.len() < 8 << 10, "{} bytes", document.len());
    let failed = next_event(&mut events, |e| e.event == EventKind::ProcessorFailed).await;
    let event_error = failed.error.as_ref().expect("the event carries the error");
    assert_eq!(event_error, error);
}

/// H4: nested calls to names that do not exist, even long ones, fail as not found and leave
/// no stats row behind (so `/v1/stats` and `/metrics` cannot be grown by a guest).
#[tokio::test]
async fn nested_calls_to_made_up_names_leave_no_stats_rows() {
    let folder = PluginFolder::with(&["abuse"]);
    let rt = runtime(folder.path()).await;
    for name_bytes in [20, 4096] {
        let input = json!({"call": {"count": 300, "nameBytes": name_bytes}});
        let result = rt.run("abuse", input).await.unwrap();
        assert!(result.ok, "{result:?}");
        let codes = result.state["callErrors"].as_array().unwrap();
        assert_eq!(codes.len(), 300);
        assert!(
            codes
                .iter()
                .all(|c| c == &Value::from("processor-not-found")),
            "{codes:?}"
        );
    }
    // Names cut for the message: a failure must not print megabytes.
    let shown = |names: Vec<&String>| -> Vec<String> {
        names.iter().map(|n| n.chars().take(24).collect()).collect()
    };
    let stats = rt.stats();
    let names: Vec<&String> = stats.processors.keys().collect();
    assert_eq!(names.len(), 1, "stats rows: {:?}", shown(names));
    assert_eq!(names, ["abuse"]);
    let tenant_rows: Vec<&String> = stats.tenants["default"].keys().collect();
    assert_eq!(tenant_rows.len(), 1, "stats rows: {:?}", shown(tenant_rows));
}

/// `weir run abuse` with `input`, in the pretty log format at info; returns its stderr.
fn logged_by(input: &Value) -> String {
    let folder = PluginFolder::with(&["abuse"]);
    let output = std::process::Command::new(weir_tests::weir_bin())
        .args(["run", "abuse", "--no-cache", "--log-format", "pretty"])
        .args(["--log-level", "warn,weir::guest=info"])
        .arg("--plugins")
        .arg(folder.path())
        .arg("--input")
        .arg(input.to_string())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// M3: a guest's log line is bounded (a 4 MiB message is cut), cannot forge a line of the
/// host's (its newline is escaped), and its fields must be a JSON object within their bound.
#[test]
fn a_guest_log_line_is_cut_escaped_and_its_fields_checked() {
    let huge = logged_by(&json!({"log": {"count": 1, "messageBytes": 4 << 20}}));
    assert!(
        huge.len() < LOG_MESSAGE_BYTES + 1024,
        "{} bytes of log for one line",
        huge.len()
    );
    assert_eq!(huge.lines().count(), 1, "{huge}");
    let forged = "ok\n2026-01-01T00:00:00Z  WARN weir::server: operator token rotated";
    let stderr = logged_by(&json!({"log": {"count": 1, "text": forged}}));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("ok\\n2026-01-01"), "{stderr}");
    let stderr = logged_by(&json!({"log": {"count": 1, "text": "hi", "rawFields": "not json"}}));
    assert!(stderr.contains("fieldsNotAnObject"), "{stderr}");
    assert!(!stderr.contains("not json"), "{stderr}");
}

/// Bytes Redis at `url` uses (`INFO memory`'s `used_memory`).
async fn redis_used_memory(url: &str) -> u64 {
    redis_info(url, "memory", "used_memory").await
}

/// One figure of Redis's `INFO section`.
async fn redis_info(url: &str, section: &str, name: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO {section} has {name}"))
}

/// A Redis, one `weir worker` over a folder of `plugins`, and a started runtime that
/// submits to them.
struct Fleet {
    url: String,
    submitter: weir::Runtime,
    _worker: weir_tests::WorkerProcess,
    _folder: PluginFolder,
    _redis: weir_tests::RedisServer,
}

impl Fleet {
    async fn start(plugins: &[&str]) -> Fleet {
        Fleet::start_with(plugins, &[]).await
    }

    /// A fleet whose worker takes `worker_args` too.
    async fn start_with(plugins: &[&str], worker_args: &[&str]) -> Fleet {
        let redis = weir_tests::RedisServer::start();
        let url = redis.url();
        let folder = PluginFolder::with(plugins);
        let worker = weir_tests::WorkerProcess::start(&url, folder.path(), worker_args);
        let submitter = crate::distributed::submitter(&url, folder.path()).await;
        Fleet {
            url,
            submitter,
            _worker: worker,
            _folder: folder,
            _redis: redis,
        }
    }
}

/// H1 on the distributed runtime: the same error, failed on a worker, travels clipped, so
/// BullMQ's `failedReason`, the run record and the event streams leave Redis small.
#[tokio::test]
async fn a_huge_guest_error_on_a_worker_leaves_redis_small() {
    let fleet = Fleet::start(&["abuse"]).await;
    let (url, submitter) = (fleet.url.clone(), &fleet.submitter);
    let input = json!({"fail": {"messageBytes": 16 << 20, "detailsBytes": 8 << 20}});
    let result = submitter.run("abuse", input).await.unwrap();
    let error = result.error.expect("abuse fails");
    assert_eq!(error.code.as_deref(), Some("abuse"));
    assert!(error.message.len() <= ERROR_MESSAGE_BYTES);
    let used = redis_used_memory(&url).await;
    assert!(
        used < 8 << 20,
        "Redis holds {used} bytes after one failed run"
    );
}

/// C1 on a worker: the worker shares its guests' events through Redis at Redis's pace, but
/// that pace never holds up its event bus: run after run, each execution may emit its whole
/// burst.
#[tokio::test]
async fn a_workers_event_bus_lets_go_of_shared_events() {
    let fleet = Fleet::start(&["abuse"]).await;
    // 100 events of ~60 KB: 6 MB a run, so the 16 MiB bus bound is crossed within three
    // runs if the worker keeps what it has shared.
    let input = json!({"emit": {"count": EVENT_BURST, "bytes": 60_000}});
    for run in 1..=8 {
        let result = fleet.submitter.run("abuse", input.clone()).await.unwrap();
        assert!(result.ok, "run {run}: {result:?}");
        assert_eq!(
            result.state["emitted"], EVENT_BURST,
            "run {run}: {}",
            result.state
        );
    }
}

/// M9 on the distributed runtime: a tenant that floods a processor's queue does not hold back
/// another tenant's run on it. The worker runs one job at a time; the victim's run, submitted
/// after six of the flood's, finishes right after the one that was running and the one whose
/// turn came first, not after all six.
#[tokio::test]
async fn a_flooding_tenant_does_not_starve_another_on_a_shared_queue() {
    let fleet = Fleet::start_with(&["sleep"], &["--concurrency", "1"]).await;
    let submitter = &fleet.submitter;
    let runs_api = submitter.fleet().expect("a distributed runtime");
    let submit = |tenant: &str| {
        let request =
            weir::ExecutionRequest::new("sleep", json!({"ms": 100})).tenant(tenant.to_string());
        runs_api.submit(request)
    };
    let mut runs = Vec::new();
    for _ in 0..6 {
        runs.push(("flood", submit("flood").await.unwrap()));
    }
    runs.push(("victim", submit("victim").await.unwrap()));
    let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let waits = runs.into_iter().map(|(tenant, run)| {
        let finished = finished.clone();
        async move {
            let result = submitter
                .fleet()
                .expect("a distributed runtime")
                .wait_run(&run)
                .await
                .unwrap();
            assert!(result.ok, "{result:?}");
            finished.lock().unwrap().push(tenant);
        }
    });
    futures_util::future::join_all(waits).await;
    let order = finished.lock().unwrap().clone();
    let victim = order.iter().position(|t| *t == "victim").unwrap();
    assert!(
        victim <= 2,
        "the victim finished after {victim} of the flood: {order:?}"
    );
}

/// A distributed batch's record grows with its items, but an item's end writes only its own
/// result: the bytes sent to Redis grow linearly with the items, not quadratically (each end
/// used to rewrite the whole record, input and every result so far).
#[tokio::test]
async fn a_distributed_batch_writes_each_items_result_once() {
    let fleet = Fleet::start(&["increment"]).await;
    let workflow = weir::Workflow::batch("each", "increment").concurrency(4);
    fleet.submitter.register(workflow).unwrap();
    let pad = "p".repeat(2_000);
    let items: Vec<Value> = (0..400).map(|i| json!({"count": i, "pad": pad})).collect();
    let before = redis_info(&fleet.url, "stats", "total_net_input_bytes").await;
    let result = fleet
        .submitter
        .run("each", json!({"items": items}))
        .await
        .unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.items.as_ref().map(Vec::len), Some(400));
    let sent = redis_info(&fleet.url, "stats", "total_net_input_bytes").await - before;
    eprintln!("a batch of 400 items of 2 KB: {sent} bytes sent to Redis");
    // About 2 KB an item is written a few times over (its job, its result, the outcome);
    // rewriting the record at each end would be about 400 × 1.2 MB.
    assert!(
        sent < 40 << 20,
        "{sent} bytes sent to Redis for a batch of 400 items of 2 KB"
    );
}

/// L7: a fan-out's record that a Redis writer rewrote so that it no longer fits its workflow
/// (more branches than the parallel has) ends the run with a typed error; the worker never
/// indexes the definition with it (it used to panic, and the run never ended).
#[tokio::test]
async fn a_fan_out_record_that_does_not_fit_its_workflow_ends_the_run() {
    // No worker yet: the record (written when the run is submitted) is rewritten before
    // any branch can end, whatever the machine's load.
    let redis = weir_tests::RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["sleep", "increment"]);
    let submitter = crate::distributed::submitter(&url, folder.path()).await;
    let workflow = weir::Workflow::parallel("both", ["sleep", "increment"]);
    submitter.register(workflow).unwrap();
    let run = submitter
        .fleet()
        .expect("a distributed runtime")
        .submit(weir::ExecutionRequest::new("both", json!({"ms": 10})))
        .await
        .unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("weir:_:join:{run}-0.j");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text: Option<String> = redis::cmd("HGET")
            .arg(&key)
            .arg("state")
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(text) = text {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no join record");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    // The record is sealed with the fleet key (its MAC, then the JSON): a writer without
    // the key writes it back bare, and is refused before the record is even read; the
    // rewrite is checked against the workflow all the same (unit-tested in fanout.rs).
    let json_text = text.trim_start_matches(|c: char| c.is_ascii_hexdigit());
    let mut state: Value = serde_json::from_str(json_text).unwrap();
    let mut extra = state["nodes"][0].clone();
    extra["status"] = json!("running");
    extra["result"] = Value::Null;
    state["nodes"].as_array_mut().unwrap().push(extra);
    let () = redis::cmd("HSET")
        .arg(&key)
        .arg("state")
        .arg(state.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let _worker = weir_tests::WorkerProcess::start(&url, folder.path(), &[]);
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        submitter
            .fleet()
            .expect("a distributed runtime")
            .wait_run(&run),
    )
    .await
    .expect("the run ends")
    .unwrap();
    let error = result.error.expect("the run fails");
    assert_eq!(error.code.as_deref(), Some("not-available"), "{error:?}");
    assert!(error.message.contains("unreadable"), "{}", error.message);
}

/// Resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> u64 {
    weir_tests::rss_of(pid).expect("VmRSS in /proc/PID/status")
}

/// Everyone else is still served: `hello` runs on the server at `url`.
async fn assert_still_serves(client: &reqwest::Client, url: &str) {
    let hello = client
        .post(format!("{url}/v1/run/hello"))
        .header("content-type", "application/json")
        .body(r#"{"user":"Ada"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(hello.status(), 200);
}

/// A `GET /v1/events` client that never reads what it is sent.
fn stalled_event_client(url: &str) -> std::net::TcpStream {
    use std::io::Write;
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET /v1/events HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    stream
}

/// C1: a guest floods events while a `/v1/events` client holds its stream open and never
/// reads. The server keeps what that client has not read within the stream's bound, so its
/// memory stays flat (the runtime never keeps events for the stalled client), and everyone
/// else is still served.
#[tokio::test]
async fn a_stalled_event_stream_does_not_make_the_server_hold_a_guests_events() {
    let folder = PluginFolder::with(&["abuse", "hello"]);
    let (server, url) = weir_tests::WeirProcess::serve(folder.path(), &[]);
    let client = reqwest::Client::new();
    let run = |input: Value| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let response = client
                .post(format!("{url}/v1/run/abuse"))
                .header("content-type", "application/json")
                .body(input.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()
        }
    };
    // Warm up (compile, first sandbox), then take the baseline.
    run(json!({"emit": {"count": 1, "bytes": 10}})).await;
    let before = rss_of(server.pid());
    let _stalled = stalled_event_client(&url);
    // 30 executions, each publishing 100 events of 60 KB: 180 MB of events.
    for _ in 0..30 {
        let result = run(json!({"emit": {"count": 100, "bytes": 60_000}})).await;
        assert!(result["ok"] == true, "{result}");
    }
    let after = rss_of(server.pid());
    let grown = after.saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "the server grew by {} MiB ({} -> {} MiB)",
        grown >> 20,
        before >> 20,
        after >> 20
    );
    assert_still_serves(&client, &url).await;
}

/// C1: a tenant cannot open event streams without end: past its maximum (8 by default)
/// one more is refused with `429`, and closing one makes room again.
#[tokio::test]
async fn a_tenants_event_streams_are_capped() {
    let folder = PluginFolder::with(&["hello"]);
    let (_server, url) = weir_tests::WeirProcess::serve(folder.path(), &[]);
    let client = reqwest::Client::new();
    let open = || client.get(format!("{url}/v1/events")).send();
    let mut streams = Vec::new();
    for _ in 0..8 {
        let response = open().await.unwrap();
        assert_eq!(response.status(), 200);
        streams.push(response);
    }
    let refused = open().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "capacity-exceeded", "{body}");
    drop(streams.pop());
    // The server notices the closed stream once its forwarder wakes: wait for that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let response = open().await.unwrap();
        if response.status() == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no room after closing a stream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Sends `request` (raw HTTP/1.1) on a fresh connection to the server at `url` and returns
/// the status of its answer.
fn raw_status(url: &str, request: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    String::from_utf8_lossy(&head[9..12]).parse().unwrap()
}

/// H6: without tenants the API is open, but not to the web: a page on another site cannot
/// run work with a simple cross-site POST, a page that rebinds its own name to the server's
/// address is refused, a posted body must be JSON, and an open API installs no plugins.
/// Nothing the refused requests asked for runs.
#[tokio::test]
async fn an_open_api_refuses_cross_site_and_rebound_requests_before_anything_runs() {
    let folder = PluginFolder::with(&["hello"]);
    let (_server, url) = weir_tests::WeirProcess::serve(folder.path(), &[]);
    let address = url.trim_start_matches("http://");
    let body = r#"{"user":"csrf"}"#;
    let len = body.len();
    let cross_site = format!(
        "POST /v1/run/hello HTTP/1.1\r\nHost: {address}\r\nOrigin: http://evil.example\r\n\
         Content-Type: text/plain\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    );
    assert_eq!(raw_status(&url, &cross_site), 403, "a cross-site POST");
    let rebound = format!(
        "POST /v1/run/hello HTTP/1.1\r\nHost: evil.example:8080\r\nOrigin: http://evil.example:8080\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    );
    assert_eq!(raw_status(&url, &rebound), 403, "a rebound name");
    let plain = format!(
        "POST /v1/run/hello HTTP/1.1\r\nHost: {address}\r\nContent-Type: text/plain\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    );
    assert_eq!(raw_status(&url, &plain), 415, "a body that is not JSON");
    let install = format!(
        "PUT /v1/plugins/hello HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/wasm\r\n\
         Content-Length: 4\r\nConnection: close\r\n\r\n\0asm"
    );
    assert_eq!(raw_status(&url, &install), 403, "installing a plugin");
    // Nothing ran.
    let stats: Value = reqwest::get(format!("{url}/v1/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["processors"], json!({}), "{stats}");
    // The server's own page and a JSON request from its own origin still work.
    let own = format!(
        "POST /v1/run/hello HTTP/1.1\r\nHost: {address}\r\nOrigin: http://{address}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    );
    assert_eq!(raw_status(&url, &own), 200);
    let page = reqwest::get(format!("{url}/")).await.unwrap();
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
}

/// Whether the server closed `stream` (a read ends, or fails as reset) within `within`.
fn closed_within(stream: &mut std::net::TcpStream, within: std::time::Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            // A 408 the server sends before closing is fine: keep reading to the end.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

/// M5: connections that send half a request line and stall, or nothing at all, are closed
/// once the header-read timeout (10 s by default) has passed, and the server keeps serving.
#[tokio::test]
async fn stalled_connections_are_closed_after_the_header_read_timeout() {
    use std::io::Write;
    let folder = PluginFolder::with(&["hello"]);
    let (_server, url) = weir_tests::WeirProcess::serve(folder.path(), &[]);
    let address = url.trim_start_matches("http://");
    let mut stalled: Vec<std::net::TcpStream> = (0..100)
        .map(|i| {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            if i % 2 == 0 {
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ")
                    .unwrap();
            }
            stream
        })
        .collect();
    let started = std::time::Instant::now();
    for (i, stream) in stalled.iter_mut().enumerate() {
        let left = std::time::Duration::from_secs(40).saturating_sub(started.elapsed());
        assert!(
            closed_within(stream, left),
            "connection {i} was still open after {:?}",
            started.elapsed()
        );
    }
    let healthy = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(healthy.status(), 200);
}

/// M5: past `max_connections` the server takes no more connections until one closes (they
/// wait in the listen backlog), and the ones it serves are unaffected.
#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    use std::io::{Read, Write};
    let folder = PluginFolder::with(&["hello"]);
    folder.write(
        "weir.toml",
        b"[server]\nmax_connections = 4\nheader_read_timeout_ms = 60000\n",
    );
    let config = folder.path().join("weir.toml");
    let (_server, url) =
        weir_tests::WeirProcess::serve(folder.path(), &["--config", config.to_str().unwrap()]);
    let address = url.trim_start_matches("http://").to_string();
    // Four idle connections take every place. (Their headers never come.)
    let mut held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(&address).unwrap())
        .collect();
    // The fifth connects (the kernel's backlog) but is not answered...
    let mut fifth = std::net::TcpStream::connect(&address).unwrap();
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    fifth
        .set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut buffer = [0u8; 64];
    assert!(
        fifth.read(&mut buffer).is_err(),
        "the fifth connection was answered while four held every place"
    );
    // ... until one of the four goes.
    drop(held.pop());
    fifth
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let read = fifth.read(&mut buffer).unwrap();
    assert!(
        String::from_utf8_lossy(&buffer[..read]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buffer[..read])
    );
}

/// M5: a body that trickles in is cut off at the body-read timeout with `408`.
#[test]
fn a_body_that_does_not_arrive_in_time_gets_408() {
    use std::io::Write;
    let folder = PluginFolder::with(&["hello"]);
    folder.write("weir.toml", b"[server]\nbody_read_timeout_ms = 500\n");
    let config = folder.path().join("weir.toml");
    let (_server, url) =
        weir_tests::WeirProcess::serve(folder.path(), &["--config", config.to_str().unwrap()]);
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST /v1/run/hello HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"user\":"
    )
    .unwrap();
    use std::io::Read;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head[9..12], b"408", "{}", String::from_utf8_lossy(&head));
}

/// `POST /v1/jobs` with `body` (JSON) on the server at `url`; returns the status and answer.
async fn submit_job(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = client
        .post(format!("{url}/v1/jobs"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// `GET url`; returns the status and the answer as JSON.
async fn get_json(client: &reqwest::Client, url: &str) -> (u16, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// H2: a tenant's finished jobs are kept within a byte budget, oldest forgotten first: 40
/// jobs that fail at once with a 3 MB input (which a failure echoes) leave the server holding
/// the budget's worth (8 MiB here), not 120 MB. The newest job's result is whole; the list
/// gives summaries without results.
#[tokio::test]
async fn finished_jobs_are_kept_within_a_byte_budget_and_listed_without_results() {
    let folder = PluginFolder::with(&["abuse"]);
    folder.write("weir.toml", b"[server]\njobs_bytes_per_tenant = 8388608\n");
    let config = folder.path().join("weir.toml");
    let (server, url) =
        weir_tests::WeirProcess::serve(folder.path(), &["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let job = |pad: usize| {
        json!({"processor": "abuse", "input": {"fail": {"messageBytes": 10}, "pad": "p".repeat(pad)}})
            .to_string()
    };
    // Waits for job `id` to fail; its answer is read as text, unparsed (3 MB each).
    let finish = |id: String| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let response = client
                .get(format!("{url}/v1/jobs/{id}?waitMs=30000"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let text = response.text().await.unwrap();
            let head: String = text.chars().take(300).collect();
            assert!(text.contains(r#""status":"failed""#), "{head}");
            text
        }
    };
    let submit = |body: String| {
        let request = client
            .post(format!("{url}/v1/jobs"))
            .header("content-type", "application/json")
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 202);
            let accepted: Value = response.json().await.unwrap();
            accepted["id"].as_str().unwrap().to_string()
        }
    };
    // Warm up (compile, first sandbox), then take the baseline.
    finish(submit(job(10)).await).await;
    let before = rss_of(server.pid());
    let big = job(3_000_000);
    let mut ids = Vec::new();
    for _ in 0..40 {
        let id = submit(big.clone()).await;
        finish(id.clone()).await;
        ids.push(id);
    }
    let grown = rss_of(server.pid()).saturating_sub(before);
    assert!(grown < 64 << 20, "the server grew by {} MiB", grown >> 20);
    // The newest is whole; the oldest are forgotten.
    let newest: Value = serde_json::from_str(&finish(ids[39].clone()).await).unwrap();
    assert_eq!(
        newest["result"]["state"]["pad"].as_str().map(str::len),
        Some(3_000_000)
    );
    let (status, forgotten) = get_json(&client, &format!("{url}/v1/jobs/{}", ids[0])).await;
    assert_eq!(status, 404, "{forgotten}");
    assert_eq!(forgotten["error"]["code"], "job-not-found");
    // The list is of summaries: small, with each result's size but not the result.
    let response = client
        .get(format!("{url}/v1/jobs?limit=500"))
        .send()
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    assert!(text.len() < 64 << 10, "the list is {} bytes", text.len());
    let list: Value = serde_json::from_str(&text).unwrap();
    let rows = list["jobs"].as_array().unwrap();
    assert!(!rows.is_empty() && rows.len() < 10, "{} rows", rows.len());
    assert_eq!(rows[0]["id"], ids[39].as_str());
    assert!(rows.iter().all(|row| row.get("result").is_none()));
    assert!(
        rows[0]["resultBytes"].as_u64() > Some(3_000_000),
        "{}",
        rows[0]
    );
}

/// H3: a session id is short and plain: one of 60 KiB, or with a `/`, is refused with `400`
/// before anything runs or is stored; a plain one is taken.
#[tokio::test]
async fn session_ids_that_are_long_or_not_plain_are_refused() {
    let folder = PluginFolder::with(&["hello"]);
    let (_server, url) = weir_tests::WeirProcess::serve(folder.path(), &[]);
    let client = reqwest::Client::new();
    for bad in ["s".repeat(60 << 10), "a/b".to_string(), String::new()] {
        let body = json!({"processor": "hello", "input": {"user": "x"}, "session": bad});
        let (status, answer) = submit_job(&client, &url, &body).await;
        // The answer may echo the id: show its error only.
        assert_eq!(status, 400, "{}", answer["error"]);
        assert_eq!(
            answer["error"]["code"], "invalid-session",
            "{}",
            answer["error"]
        );
    }
    let long = "s".repeat(129);
    let response = client
        .post(format!("{url}/v1/run/hello?session={long}"))
        .header("content-type", "application/json")
        .body(r#"{"user":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let (status, _) = get_json(&client, &format!("{url}/v1/sessions/{long}")).await;
    assert_eq!(status, 400);
    let (_, sessions) = get_json(&client, &format!("{url}/v1/sessions")).await;
    assert_eq!(sessions["sessions"], json!([]), "{sessions}");
    let plain = "user-42.cart_7:eu";
    let body = json!({"processor": "hello", "input": {"user": "x"}, "session": plain});
    let (status, answer) = submit_job(&client, &url, &body).await;
    assert_eq!(status, 202, "{answer}");
}

/// H3: a tenant's sessions are capped (3 here): one more new session is refused with `429`
/// and `too-many-sessions` while the others keep working; once the idle ones expire (after
/// 1 s here), new sessions are taken again, and the expired ones' state is gone.
#[tokio::test]
async fn a_tenants_sessions_are_capped_and_idle_ones_expire() {
    let folder = PluginFolder::with(&["hello"]);
    folder.write(
        "weir.toml",
        b"[server]\nmax_sessions_per_tenant = 3\nsession_idle_ms = 1000\n",
    );
    let config = folder.path().join("weir.toml");
    let (_server, url) =
        weir_tests::WeirProcess::serve(folder.path(), &["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let run_in = |session: &str| {
        let request = client
            .post(format!("{url}/v1/run/hello?session={session}"))
            .header("content-type", "application/json")
            .body(r#"{"user":"x"}"#);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    for session in ["a", "b", "c"] {
        let (status, answer) = run_in(session).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, refused) = run_in("d").await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"]["code"], "too-many-sessions", "{refused}");
    // The existing ones still run.
    let (status, answer) = run_in("a").await;
    assert_eq!(
        (status, answer["ok"].clone()),
        (200, json!(true)),
        "{answer}"
    );
    // Once they have been idle past the expiry, a new one is taken, and the old state is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, answer) = run_in("d").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{answer}");
        assert!(std::time::Instant::now() < deadline, "no room after 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (status, gone) = get_json(&client, &format!("{url}/v1/sessions/b")).await;
    assert_eq!(status, 404, "{gone}");
}

/// M1: a batch takes at most 10,000 items by default: one of 200,000 is refused as a
/// validation error before any item runs, and the host holds nothing for it.
#[tokio::test]
async fn a_batch_over_its_item_cap_is_refused_before_any_item_runs() {
    let folder = PluginFolder::with(&["increment"]);
    folder.write(
        "workflows.toml",
        b"[workflow.many]\nbatch = \"increment\"\n",
    );
    let rt = runtime(folder.path()).await;
    let items: Vec<Value> = (0..200_000).map(|_| json!({})).collect();
    let result = rt.run("many", json!({ "items": items })).await.unwrap();
    let error = result.error.as_ref().expect("refused");
    assert_eq!(error.kind, weir::ErrorKind::Validation);
    assert_eq!(error.code.as_deref(), Some("batch-too-large"), "{error:?}");
    assert!(error.message.contains("10000"), "{}", error.message);
    assert!(
        !rt.stats().processors.contains_key("increment"),
        "an item ran"
    );
    // At the cap, it runs.
    let items: Vec<Value> = (0..10_000).map(|_| json!({"count": 1})).collect();
    let result = rt.run("many", json!({ "items": items })).await.unwrap();
    assert!(result.ok, "{:?}", result.error);
}

/// M1: each item of a batch is charged to the tenant's quotas: a tenant allowed ten
/// executions a minute cannot run fifty items as one request; the batch fails with the
/// quota's error before any item runs, and a batch within the quota runs.
#[tokio::test]
async fn each_batch_item_is_charged_to_the_tenants_quota() {
    use sha2::Digest;
    let folder = PluginFolder::with(&["increment"]);
    folder.write(
        "workflows.toml",
        b"[workflow.many]\nbatch = \"increment\"\n",
    );
    let token_digest = hex::encode(sha2::Sha256::digest(b"acme-secret"));
    folder.write(
        "weir.toml",
        format!(
            "[tenants.acme]\ntoken_sha256 = [\"{token_digest}\"]\nconcurrent = 1\n\
             executions_per_minute = 10\n"
        )
        .as_bytes(),
    );
    let config = folder.path().join("weir.toml");
    let (_server, url) =
        weir_tests::WeirProcess::serve(folder.path(), &["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let batch = |count: usize| {
        let items: Vec<Value> = (0..count).map(|_| json!({"count": 1})).collect();
        client
            .post(format!("{url}/v1/run/many"))
            .bearer_auth("acme-secret")
            .header("content-type", "application/json")
            .body(json!({ "items": items }).to_string())
            .send()
    };
    let response = batch(50).await.unwrap();
    assert_eq!(response.status(), 200);
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["error"]["code"], "quota-exceeded", "{result}");
    assert_eq!(result["error"]["details"]["quota"], "executions_per_minute");
    let stats: Value = client
        .get(format!("{url}/v1/stats"))
        .bearer_auth("acme-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(stats["processors"].get("increment").is_none(), "{stats}");
    // Five items fit in what is left (ten a minute, one spent on the refused batch).
    let response = batch(5).await.unwrap();
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["ok"], true, "{result}");
}

/// The rejection reason of `name` in `rt`'s catalog.
fn rejection_of(rt: &weir::Runtime, name: &str) -> String {
    let catalog = rt.catalog();
    match catalog.rejected.get(name) {
        Some(rejected) => rejected.reason.clone(),
        None => panic!("`{name}` should be rejected; loaded: {:?}", catalog.names()),
    }
}

/// L6: a plugin file that is a symlink leading out of the plugins folder is refused without
/// being read (so nothing of the file it points at shows in the reason), and so is its
/// manifest; a symlink that stays inside the folder is followed.
#[tokio::test]
async fn symlinks_out_of_the_plugins_folder_are_not_followed() {
    let folder = PluginFolder::with(&["hello"]);
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.wasm");
    std::fs::write(&secret, b"TOP-SECRET-BYTES").unwrap();
    std::os::unix::fs::symlink(&secret, folder.path().join("leak.wasm")).unwrap();
    // A manifest that leads out, beside a real plugin.
    std::fs::write(outside.path().join("grant.toml"), b"[limits]\nfuel = 1\n").unwrap();
    folder.add("increment");
    std::os::unix::fs::symlink(
        outside.path().join("grant.toml"),
        folder.path().join("increment.toml"),
    )
    .unwrap();
    // Inside the folder: followed.
    std::fs::create_dir(folder.path().join("store")).unwrap();
    std::fs::write(
        folder.path().join("store").join("double.wasm"),
        weir_tests::plugin_bytes("double"),
    )
    .unwrap();
    std::os::unix::fs::symlink("store/double.wasm", folder.path().join("double.wasm")).unwrap();
    let rt = runtime(folder.path()).await;
    let reason = rejection_of(&rt, "leak");
    assert!(reason.contains("outside the plugins folder"), "{reason}");
    assert!(!reason.contains("TOP-SECRET"), "{reason}");
    let reason = rejection_of(&rt, "increment");
    assert!(reason.contains("outside the plugins folder"), "{reason}");
    assert!(
        rt.plugin("double").is_some(),
        "a symlink inside the folder is followed"
    );
}

/// M7: a plugin file over the component size cap (64 MiB) is refused from its size alone,
/// without being read or compiled.
#[tokio::test]
async fn a_plugin_file_over_the_size_cap_is_refused_unread() {
    let folder = PluginFolder::with(&["hello"]);
    let huge = std::fs::File::create(folder.path().join("huge.wasm")).unwrap();
    // Sparse: nothing is written, the size is all there is.
    huge.set_len((64 << 20) + 1).unwrap();
    let rt = runtime(folder.path()).await;
    let reason = rejection_of(&rt, "huge");
    assert!(reason.contains("67108865 bytes"), "{reason}");
    assert!(reason.contains("at most 67108864"), "{reason}");
}

/// A component that is cheap to send and slow to compile: `functions` functions of 2,000
/// nested `if`s each (about 0.1 s of compiling apiece), with a constant of its own so that no
/// compile cache holds it.
fn slow_to_compile(functions: usize) -> Vec<u8> {
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let body = format!("{}{}", "i32.const 0 if ".repeat(2000), "end ".repeat(2000));
    let functions = format!("(func {body})").repeat(functions);
    let wat = format!(
        "(component (core module {functions} (func (export \"nonce\") (result i64) i64.const {nonce})))"
    );
    wat::parse_str(&wat).unwrap()
}

/// The processes `pid` started that are still running.
fn children_of(pid: u32) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .map(|child| {
            let command = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            format!(
                "{child}: {}",
                String::from_utf8_lossy(&command).replace('\0', " ")
            )
        })
        .collect()
}

/// M7: an uploaded component whose compile runs past the compile clock is stopped: the
/// process compiling it is killed, the upload refused with the bound in its reason (`422`),
/// and the server keeps serving its other plugins.
#[tokio::test]
async fn a_compile_past_its_clock_is_stopped_and_the_upload_refused() {
    let folder = PluginFolder::with(&["hello"]);
    // `hello` compiles into the tests' compile cache under the default clock first: only
    // the upload is to meet the tight one (a debug build's compile of `hello` can take more).
    let warmed = std::process::Command::new(weir_tests::weir_bin())
        .args(["plugins", "list", "--plugins"])
        .arg(folder.path())
        .arg("--cache-dir")
        .arg(weir_tests::cache_dir())
        .output()
        .unwrap();
    assert!(
        warmed.status.success(),
        "{}",
        String::from_utf8_lossy(&warmed.stderr)
    );
    let (server, url) = weir_tests::WeirProcess::serve(
        folder.path(),
        &["--allow-plugin-install", "--compile-timeout-ms", "300"],
    );
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let response = client
        .put(format!("{url}/v1/plugins/slow"))
        .body(slow_to_compile(40))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("longer than 300 ms") && message.contains("--compile-timeout-ms"),
        "{body}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "refused after {:?}",
        started.elapsed()
    );
    // The process compiling it is gone, and a second load of the same bytes (the folder's
    // watcher sees the upload's file before it is removed) compiles nothing.
    assert_eq!(children_of(server.pid()), Vec::<String>::new());
    assert_still_serves(&client, &url).await;
}

/// M10: a file grant that covers the plugins folder (a plugin could rewrite its own
/// manifest) or lies inside it is refused when the manifest loads, and the plugin with it.
#[tokio::test]
async fn a_file_grant_over_the_plugins_folder_is_refused() {
    let folder = PluginFolder::with(&["hello", "increment"]);
    let plugins = folder.path().canonicalize().unwrap();
    let parent = plugins.parent().unwrap().to_path_buf();
    folder.manifest(
        "hello",
        &format!(
            "[capabilities]\nfiles = [{{ host = \"{}\", guest = \"/p\", writable = true }}]\n",
            parent.display()
        ),
    );
    folder.manifest(
        "increment",
        &format!(
            "[capabilities]\nfiles = [{{ host = \"{}\", guest = \"/p\" }}]\n",
            plugins.display()
        ),
    );
    let rt = runtime(folder.path()).await;
    for name in ["hello", "increment"] {
        let reason = rejection_of(&rt, name);
        assert!(reason.contains("plugins folder"), "{reason}");
    }
}

/// H2: a tenant at its `concurrent` quota is refused before its body is read: a tenant's
/// large bodies are read and parsed no faster than it may run executions.
#[tokio::test]
async fn a_tenant_at_its_concurrency_quota_is_refused_before_its_body_is_read() {
    use sha2::Digest;
    let folder = PluginFolder::with(&["hello", "sleep"]);
    folder.write("sleep.toml", b"[limits]\ntimeout_ms = 20000\n");
    let token_digest = hex::encode(sha2::Sha256::digest(b"acme-secret"));
    folder.write(
        "weir.toml",
        format!("[tenants.acme]\ntoken_sha256 = [\"{token_digest}\"]\nconcurrent = 1\n").as_bytes(),
    );
    let config = folder.path().join("weir.toml");
    let (_server, url) =
        weir_tests::WeirProcess::serve(folder.path(), &["--config", config.to_str().unwrap()]);
    // The tenant's one place, held by a job that sleeps.
    let held = reqwest::Client::new()
        .post(format!("{url}/v1/jobs"))
        .bearer_auth("acme-secret")
        .header("content-type", "application/json")
        .body(json!({"processor": "sleep", "input": {"ms": 15000}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 202);
    // Headers announcing 3 MB, and only the body's first bytes.
    let head = tokio::task::spawn_blocking(move || partial_body_answer(&url))
        .await
        .unwrap();
    assert_eq!(&head[9..12], b"429", "{}", String::from_utf8_lossy(&head));
}

/// The first bytes of the answer to a run whose body announces 3 MB and sends a few.
fn partial_body_answer(url: &str) -> [u8; 12] {
    use std::io::{Read, Write};
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST /v1/run/hello HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer acme-secret\r\n\
         Content-Type: application/json\r\nContent-Length: 3000000\r\n\r\n{{\"user\":\""
    )
    .unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    head
}

/// H2: the bytes of a tenant's request bodies are charged to its `bytes_per_minute`.
#[tokio::test]
async fn request_bodies_are_charged_to_the_tenants_bytes_per_minute() {
    use sha2::Digest;
    let folder = PluginFolder::with(&["hello"]);
    let token_digest = hex::encode(sha2::Sha256::digest(b"acme-secret"));
    folder.write(
        "weir.toml",
        format!(
            "[tenants.acme]\ntoken_sha256 = [\"{token_digest}\"]\nbytes_per_minute = 1000000\n"
        )
        .as_bytes(),
    );
    let config = folder.path().join("weir.toml");
    let (_server, url) =
        weir_tests::WeirProcess::serve(folder.path(), &["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let body = json!({"user": "a", "padding": "x".repeat(700_000)}).to_string();
    let send = || {
        client
            .post(format!("{url}/v1/run/hello"))
            .bearer_auth("acme-secret")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    };
    // 1 MB a minute: the first body fits, the second overdraws, the third waits.
    assert_eq!(send().await.unwrap().status(), 200);
    assert_eq!(send().await.unwrap().status(), 200);
    let refused = send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let answer: Value = refused.json().await.unwrap();
    assert_eq!(answer["error"]["quota"], "bytes_per_minute", "{answer}");
}

/// A stream entry as `XRANGE` returns it: its id and its fields.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// C1 on the distributed runtime: the event stream in Redis holds entries of bounded size
/// (events are split to fit), and a run whose result is too large to announce inline still
/// reaches its waiter, from the run's record.
#[tokio::test]
async fn the_event_streams_entries_in_redis_are_bounded_in_bytes() {
    let fleet = Fleet::start(&["abuse", "hello"]).await;
    let (url, submitter) = (fleet.url.clone(), &fleet.submitter);
    // 100 events of 60 KB, shared with other processes through the stream.
    let input = json!({"emit": {"count": 100, "bytes": 60_000}});
    let result = submitter.run("abuse", input).await.unwrap();
    assert_eq!(result.state["emitted"], 100, "{}", result.state);
    let padding = "p".repeat(200_000);
    let result = submitter
        .run("hello", json!({"user": "big", "padding": padding}))
        .await
        .unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(
        result.state["padding"].as_str().map(str::len),
        Some(200_000)
    );
    // Every entry of the stream: at most 64 KiB, or one event of 60 KB and its fields.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg("weir:_:events")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!entries.is_empty());
    let largest = entries
        .iter()
        .map(|(_, fields)| fields.iter().map(|(_, v)| v.len()).sum::<usize>())
        .max()
        .unwrap_or(0);
    assert!(largest <= 64 << 10, "an entry of {largest} bytes");
}

/// The runtime's own bounds are the operator's to set, in `weir.toml`'s `[host]` table:
/// `weir serve --config` applies them (here: batches of at most three items, and no nested
/// calls).
#[tokio::test]
async fn the_operator_sets_the_hosts_bounds_in_the_config_file() {
    let folder = PluginFolder::with(&["increment", "relay"]);
    folder.write(
        "workflows.toml",
        b"[workflow.many]\nbatch = \"increment\"\n",
    );
    folder.write(
        "weir.toml",
        b"[host]\nmax_batch_items = 3\nmax_call_depth = 0\n",
    );
    let config = folder.path().join("weir.toml");
    let (_server, url) =
        weir_tests::WeirProcess::serve(folder.path(), &["--config", config.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let post = |name: &str, body: Value| {
        client
            .post(format!("{url}/v1/run/{name}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
    };
    let four: Vec<Value> = (0..4).map(|_| json!({"count": 1})).collect();
    let result: Value = post("many", json!({ "items": four }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(result["error"]["code"], "batch-too-large", "{result}");
    let three: Vec<Value> = (0..3).map(|_| json!({"count": 1})).collect();
    let result: Value = post("many", json!({ "items": three }))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(result["ok"], true, "{result}");
    let result: Value = post("relay", json!({"target": "increment", "count": 1}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(result["error"]["code"], "call-depth-exceeded", "{result}");
}
