//! Tenants on the HTTP API, against the real `weir serve` with a `weir.toml`: tokens
//! (stored as digests), what each tenant may run and see, the operator's fleet-wide views,
//! and quotas (`429` with `Retry-After`) that keep one tenant from starving another.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use weir_tests::{PluginFolder, WeirProcess};

use crate::http::{answer, wait_for_text};

const OPERATOR: &str = "operator-secret";
const ACME: &str = "acme-secret";
const GLOBEX: &str = "globex-secret";
const INITECH: &str = "initech-secret";

fn sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

struct Fleet {
    _folder: PluginFolder,
    _process: WeirProcess,
    url: String,
    client: reqwest::Client,
}

impl Fleet {
    /// A server with three tenants and an operator:
    /// - acme runs hello, increment, sleep and counter (when it is installed), one execution
    ///   at a time, and may ask for priority 5 or a larger number;
    /// - globex runs hello and increment, three executions a minute;
    /// - initech runs sleep with a 300 ms ceiling on every execution.
    fn start() -> Fleet {
        let folder = PluginFolder::with(&["hello", "increment", "sleep"]);
        folder.write("broken.wasm", b"not a component");
        let config = format!(
            r#"
[server]
operator_token_sha256 = ["{operator}"]

[tenants.acme]
token_sha256 = ["{acme}"]
processors = ["hello", "increment", "sle*", "counter"]
concurrent = 1
min_priority = 5

[tenants.globex]
token_sha256 = ["{globex}"]
processors = ["hello", "increment"]
executions_per_minute = 3

[tenants.initech]
token_sha256 = ["{initech}"]
processors = ["sleep"]
timeout_ms = 300
"#,
            operator = sha256(OPERATOR),
            acme = sha256(ACME),
            globex = sha256(GLOBEX),
            initech = sha256(INITECH),
        );
        let config_file = folder.path().join("weir.toml");
        std::fs::write(&config_file, config).unwrap();
        let config_arg = config_file.to_string_lossy().into_owned();
        let (process, url) = WeirProcess::serve(folder.path(), &["--config", &config_arg]);
        Fleet {
            _folder: folder,
            _process: process,
            url,
            client: reqwest::Client::new(),
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.url));
        match token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// The event stream `path` (with its query) as `token` sees it.
    async fn events(
        &self,
        path: &str,
        token: &str,
    ) -> impl futures_util::Stream<Item = reqwest::Result<impl AsRef<[u8]>>> + Unpin {
        let response = self
            .request(reqwest::Method::GET, path, Some(token))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.bytes_stream()
    }

    /// Runs `name` as `token`, expecting a refusal over quota: its `Retry-After` and body.
    async fn refused(&self, name: &str, token: &str) -> (u64, Value) {
        let response = self
            .request(
                reqwest::Method::POST,
                &format!("/v1/run/{name}"),
                Some(token),
            )
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 429);
        let retry_after = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let (_, body) = answer(response).await;
        assert_eq!(body["error"]["code"], "quota-exceeded", "{body}");
        (retry_after, body)
    }

    async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        answer(
            self.request(reqwest::Method::GET, path, Some(token))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn run(&self, name: &str, body: Value, token: &str) -> (u16, Value) {
        let response = self
            .request(
                reqwest::Method::POST,
                &format!("/v1/run/{name}"),
                Some(token),
            )
            .json(&body)
            .send()
            .await
            .unwrap();
        answer(response).await
    }
}

/// The names in a `/v1/plugins` answer.
fn names(body: &Value) -> Vec<String> {
    body["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// Submits a `hello` job as `token` with `priority` (none if `None`) and waits for its end;
/// the job, or the refusal's status and body.
async fn priority_job(fleet: &Fleet, token: &str, priority: Option<u32>) -> (u16, Value) {
    let mut body = json!({"processor": "hello", "input": {"user": "p"}});
    if let Some(priority) = priority {
        body["priority"] = json!(priority);
    }
    let response = fleet
        .request(reqwest::Method::POST, "/v1/jobs", Some(token))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, job) = answer(response).await;
    if status != 202 {
        return (status, job);
    }
    let id = job["id"].as_str().unwrap();
    fleet
        .get(&format!("/v1/jobs/{id}?waitMs=20000"), token)
        .await
}

/// A tenant chooses its work's priority only as far as the operator's `min_priority` grant
/// goes (a tenant without one, not at all), before anything runs; jobs carry it, and their
/// list filters and orders by it.
#[tokio::test]
async fn a_tenant_asks_for_a_priority_within_its_grant_and_lists_its_jobs_by_it() {
    let fleet = Fleet::start();
    let mut ids = Vec::new();
    for priority in [Some(9), Some(5), None] {
        let (status, job) = priority_job(&fleet, ACME, priority).await;
        assert_eq!(
            (status, &job["status"]),
            (200, &json!("completed")),
            "{job}"
        );
        assert_eq!(job["priority"], json!(priority));
        ids.push(job["id"].as_str().unwrap().to_string());
    }
    // More urgent than the grant: refused, naming the key; so is any priority for globex.
    let (status, body) = priority_job(&fleet, ACME, Some(4)).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("priority-not-allowed"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("min_priority"),
        "{body}"
    );
    let (status, body) = fleet.run("hello?priority=4", json!({}), ACME).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("priority-not-allowed"))
    );
    let (status, body) = fleet.run("hello?priority=9", json!({}), GLOBEX).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("priority-not-allowed"))
    );
    let (status, body) = fleet
        .run("hello?priority=6", json!({"user": "p"}), ACME)
        .await;
    assert_eq!((status, &body["ok"]), (200, &json!(true)), "{body}");
    // Filtered by a range (a job that asked for none is in none), ordered by priority.
    let fleet = &fleet;
    let listed = |query: &'static str| async move {
        let (status, body) = fleet.get(&format!("/v1/jobs?{query}"), ACME).await;
        assert_eq!(status, 200, "{body}");
        body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|job| job["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed("minPriority=5&maxPriority=6").await,
        [ids[1].clone()]
    );
    assert_eq!(listed("minPriority=6").await, [ids[0].clone()]);
    assert_eq!(
        listed("sort=priority").await,
        [ids[1].clone(), ids[0].clone(), ids[2].clone()]
    );
    assert_eq!(
        listed("").await,
        [ids[2].clone(), ids[1].clone(), ids[0].clone()]
    );
}

#[tokio::test]
async fn calls_without_a_valid_token_get_401_and_health_stays_open() {
    let fleet = Fleet::start();
    for token in [None, Some("wrong"), Some("")] {
        let response = fleet
            .request(reqwest::Method::GET, "/v1/plugins", token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 401, "{token:?}");
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let (_, body) = answer(response).await;
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let basic = fleet
        .client
        .get(format!("{}/v1/plugins", fleet.url))
        .basic_auth("acme", Some(ACME))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status().as_u16(), 401);
    let (status, _) = answer(
        fleet
            .request(reqwest::Method::POST, "/v1/run/hello", None)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "running needs a token too");
    for open in ["/", "/healthz", "/readyz"] {
        let response = fleet
            .request(reqwest::Method::GET, open, None)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{open}");
    }
}

#[tokio::test]
async fn a_tenant_sees_and_runs_only_what_it_is_granted() {
    let fleet = Fleet::start();
    let (status, globex) = fleet.get("/v1/plugins", GLOBEX).await;
    assert_eq!(status, 200);
    assert_eq!(
        names(&globex),
        ["hello", "increment"],
        "no sleep, no rejected file"
    );
    let (_, acme) = fleet.get("/v1/plugins", ACME).await;
    assert_eq!(names(&acme), ["hello", "increment", "sleep"]);

    // A processor that exists but is not granted looks exactly like one that does not
    // exist: same status, same code, same list of what the tenant can run.
    let (hidden_status, hidden) = fleet.run("sleep", json!({ "ms": 1 }), GLOBEX).await;
    let (missing_status, missing) = fleet.run("nope", json!({}), GLOBEX).await;
    assert_eq!((hidden_status, missing_status), (404, 404));
    assert_eq!(hidden["error"]["code"], missing["error"]["code"]);
    assert_eq!(hidden["error"]["available"], json!(["hello", "increment"]));
    assert_eq!(hidden["error"]["available"], missing["error"]["available"]);
    let (status, _) = fleet.get("/v1/plugins/sleep", GLOBEX).await;
    assert_eq!(status, 404);
    let (status, _) = fleet.get("/v1/plugins/broken", ACME).await;
    assert_eq!(status, 404, "rejected files are the operator's to see");

    let (status, done) = fleet.run("sleep", json!({ "ms": 1 }), ACME).await;
    assert_eq!((status, &done["ok"]), (200, &json!(true)), "{done}");
    assert_eq!(done["execution"]["tenant"], "acme");

    // A tenant reads a plugin's limits, not the operator's manifest or the file's path.
    let (status, hello) = fleet.get("/v1/plugins/hello", ACME).await;
    assert_eq!(status, 200);
    assert!(
        hello.get("manifest").is_none() && hello.get("path").is_none(),
        "{hello}"
    );
    assert!(hello["limits"].is_object());
    let (_, hello) = fleet.get("/v1/plugins/hello", OPERATOR).await;
    assert!(hello["manifest"].is_object(), "{hello}");
}

#[tokio::test]
async fn tenants_never_see_each_others_sessions_or_events() {
    let fleet = Fleet::start();
    let response = fleet
        .request(reqwest::Method::GET, "/v1/events", Some(GLOBEX))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut events = response.bytes_stream();

    let response = fleet
        .request(
            reqwest::Method::POST,
            "/v1/run/increment?session=s1",
            Some(ACME),
        )
        .json(&json!({ "count": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.0, 200);

    let (_, listed) = fleet.get("/v1/sessions", GLOBEX).await;
    assert_eq!(
        listed["sessions"],
        json!([]),
        "globex sees none of acme's sessions"
    );
    let (status, _) = fleet.get("/v1/sessions/s1", GLOBEX).await;
    assert_eq!(status, 404);
    let (status, _) = fleet.get("/v1/sessions/s1?tenant=acme", GLOBEX).await;
    assert_eq!(status, 403);
    // Stopping "s1" as globex stops globex's own (empty) session, never acme's.
    let response = fleet
        .request(reqwest::Method::DELETE, "/v1/sessions/s1", Some(GLOBEX))
        .send()
        .await
        .unwrap();
    let (_, stopped) = answer(response).await;
    assert_eq!(stopped["removedState"], false);
    let (status, session) = fleet.get("/v1/sessions/s1", ACME).await;
    assert_eq!((status, &session["state"]["count"]), (200, &json!(2)));

    // Jobs, too, are the tenant's own.
    let response = fleet
        .request(reqwest::Method::POST, "/v1/jobs", Some(ACME))
        .json(&json!({ "processor": "hello" }))
        .send()
        .await
        .unwrap();
    let (status, job) = answer(response).await;
    assert_eq!(status, 202, "{job}");
    let job_path = format!("/v1/jobs/{}", job["id"].as_str().unwrap());
    assert_eq!(fleet.get(&job_path, GLOBEX).await.0, 404);
    let (_, listed) = fleet.get("/v1/jobs", GLOBEX).await;
    assert_eq!(listed["jobs"], json!([]));
    assert_eq!(fleet.get("/v1/jobs?tenant=acme", GLOBEX).await.0, 403);
    let response = fleet
        .request(reqwest::Method::DELETE, &job_path, Some(GLOBEX))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(fleet.get(&job_path, ACME).await.0, 200);
    let (_, everyone) = fleet.get("/v1/jobs", OPERATOR).await;
    assert_eq!(everyone["jobs"][0]["tenant"], "acme");

    // globex's stream carries its own events only: acme's run above and this one of
    // acme's never show; globex's own run does.
    fleet.run("hello", json!({}), ACME).await;
    let (_, own) = fleet
        .run("hello", json!({ "user": "globex" }), GLOBEX)
        .await;
    let own_id = own["execution"]["id"].as_str().unwrap().to_string();
    // Every event on globex's stream is globex's (its session stop above, then its run),
    // up to its own execution's.
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let chunk = events.next().await.expect("the stream stays open").unwrap();
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let frame: String = text.drain(..end + 2).collect();
                let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let event: Value = serde_json::from_str(data).unwrap();
                assert_eq!(event["tenant"], "globex", "{event}");
                if event["executionId"] == own_id.as_str() {
                    return;
                }
            }
        }
    })
    .await
    .expect("globex's own event arrived");
}

#[tokio::test]
async fn the_operator_token_opens_fleet_views_that_tenants_cannot_reach() {
    let fleet = Fleet::start();
    fleet.run("hello", json!({}), ACME).await;
    let response = fleet
        .request(
            reqwest::Method::POST,
            "/v1/run/increment?session=cart",
            Some(GLOBEX),
        )
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.0, 200);

    let (status, body) = fleet.get("/metrics", ACME).await;
    assert_eq!(status, 403, "{body}");
    let metrics = fleet
        .request(reqwest::Method::GET, "/metrics", Some(OPERATOR))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "weir_executions_total{tenant=\"acme\",processor=\"hello\",outcome=\"ok\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("tenant=\"globex\",processor=\"increment\""));

    let (status, body) = fleet.run("hello", json!({}), OPERATOR).await;
    assert_eq!(status, 403, "the operator runs nothing itself: {body}");
    let (_, plugins) = fleet.get("/v1/plugins", OPERATOR).await;
    assert!(names(&plugins).contains(&"broken".to_string()));
    let (_, sessions) = fleet.get("/v1/sessions", OPERATOR).await;
    assert_eq!(sessions["sessions"][0]["tenant"], "globex", "{sessions}");
    let (status, _) = fleet.get("/v1/sessions/cart", OPERATOR).await;
    assert_eq!(status, 400, "the operator must say whose session");
    let (status, session) = fleet.get("/v1/sessions/cart?tenant=globex", OPERATOR).await;
    assert_eq!((status, &session["tenant"]), (200, &json!("globex")));

    // Stats: a tenant gets its own counters; the operator every tenant's.
    let (_, acme) = fleet.get("/v1/stats", ACME).await;
    assert_eq!(acme["tenant"], "acme");
    assert!(acme["processors"].get("increment").is_none(), "{acme}");
    let (_, all) = fleet.get("/v1/stats", OPERATOR).await;
    assert_eq!(
        all["tenants"]["globex"]["increment"]["completed"], 1,
        "{all}"
    );
}

#[tokio::test]
async fn over_quota_is_429_with_retry_after_and_other_tenants_are_unaffected() {
    let fleet = Fleet::start();
    // acme may run one execution at a time: hold its place with a long sleep in a
    // session, and wait until it runs.
    let mut events = fleet.events("/v1/events?processor=sleep", ACME).await;
    let holder = {
        let request = fleet
            .request(
                reqwest::Method::POST,
                "/v1/run/sleep?session=long",
                Some(ACME),
            )
            .json(&json!({ "ms": 30_000 }));
        tokio::spawn(async move { answer(request.send().await.unwrap()).await })
    };
    wait_for_text(&mut events, &mut String::new(), "event: processor:started").await;

    let (retry_after, body) = fleet.refused("hello", ACME).await;
    assert!(retry_after >= 1);
    assert_eq!(body["error"]["quota"], "concurrent");

    // Another tenant is not held back by acme's flood.
    let (status, _) = fleet.run("hello", json!({}), GLOBEX).await;
    assert_eq!(status, 200);

    // Stopping the session ends the sleep and frees acme's place.
    let response = fleet
        .request(reqwest::Method::DELETE, "/v1/sessions/long", Some(ACME))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.1["cancelled"], 1);
    let (status, held) = holder.await.unwrap();
    assert_eq!(
        (status, &held["error"]["kind"]),
        (200, &json!("cancelled")),
        "{held}"
    );
    let (status, _) = fleet.run("hello", json!({}), ACME).await;
    assert_eq!(status, 200, "the place came back");

    // globex may start three executions a minute (one was used above).
    for _ in 0..2 {
        assert_eq!(fleet.run("hello", json!({}), GLOBEX).await.0, 200);
    }
    let (retry_after, body) = fleet.refused("hello", GLOBEX).await;
    assert!(
        (1..=20).contains(&retry_after),
        "one comes back every 20 s: {retry_after}"
    );
    assert_eq!(body["error"]["quota"], "executions_per_minute");
}

/// M6: stopping a session reaches every worker of a fleet, so a tenant pays for it from its
/// rate like an execution (globex: three a minute), and an id that could never have been
/// opened is refused before it costs anything.
#[tokio::test]
async fn stopping_sessions_is_charged_to_the_tenants_rate_and_ids_are_checked() {
    let fleet = Fleet::start();
    let stop = |id: String| {
        let request = fleet.request(
            reqwest::Method::DELETE,
            &format!("/v1/sessions/{id}"),
            Some(GLOBEX),
        );
        async move { answer(request.send().await.unwrap()).await }
    };
    let (status, body) = stop("x".repeat(4096)).await;
    assert_eq!(status, 400, "{}", body["error"]);
    assert_eq!(body["error"]["code"], "invalid-session");
    for i in 0..3 {
        let (status, body) = stop(format!("never-{i}")).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = stop("never-3".into()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["quota"], "executions_per_minute");
    // Another tenant is not held back.
    let (status, _) = fleet.run("hello", json!({}), ACME).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_tenant_ceiling_bounds_every_execution_and_callers_may_go_lower() {
    let fleet = Fleet::start();
    let (status, done) = fleet.run("sleep", json!({ "ms": 10_000 }), INITECH).await;
    assert_eq!(status, 200);
    assert_eq!(done["ok"], false);
    assert_eq!(done["error"]["kind"], "timeout", "{done}");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("300 ms"),
        "{done}"
    );
    // The caller's own timeout lowers the ceiling further (never raises it).
    for (asked, expected) in [(100, "100 ms"), (60_000, "300 ms")] {
        let response = fleet
            .request(
                reqwest::Method::POST,
                &format!("/v1/run/sleep?timeoutMs={asked}"),
                Some(INITECH),
            )
            .json(&json!({ "ms": 10_000 }))
            .send()
            .await
            .unwrap();
        let (_, done) = answer(response).await;
        let message = done["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{asked}: {message}");
    }
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_execution_and_frees_its_place() {
    let fleet = Fleet::start();
    let mut events = fleet.events("/v1/events?processor=sleep", ACME).await;
    let request = fleet
        .request(reqwest::Method::POST, "/v1/run/sleep", Some(ACME))
        .json(&json!({ "ms": 60_000 }));
    let client = tokio::spawn(async move { request.send().await });
    let mut text = String::new();
    wait_for_text(&mut events, &mut text, "event: processor:started").await;
    // acme's one place is taken...
    assert_eq!(fleet.run("hello", json!({}), ACME).await.0, 429);
    // ...until the client goes away: the execution is cancelled and the place comes back.
    client.abort();
    wait_for_text(&mut events, &mut text, "event: processor:failed").await;
    assert!(text.contains("cancelled-by-request"), "{text}");
    // The event is published as the execution ends; the place comes back a moment later,
    // when its task settles the account. Each refusal is immediate: try until it is back.
    let freed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (status, body) = fleet.run("hello", json!({}), ACME).await;
            if status != 429 {
                return (status, body);
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the place came back");
    assert_eq!(freed.0, 200, "{}", freed.1);
}

#[tokio::test]
async fn the_operator_reads_each_plugin_versions_latency_and_failures_apart() {
    let fleet = Fleet::start();
    let install = |bytes: Vec<u8>| {
        fleet
            .request(reqwest::Method::PUT, "/v1/plugins/counter", Some(OPERATOR))
            .header("content-type", "application/wasm")
            .body(bytes)
            .send()
    };
    let (one, two) = (
        weir_tests::fixture_bytes("counter-one"),
        weir_tests::fixture_bytes("counter-two"),
    );
    let (status, body) = answer(install(one.clone()).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = fleet.run("counter", json!({}), ACME).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = answer(install(two.clone()).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..2 {
        let (status, body) = fleet.run("counter", json!({}), ACME).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, detail) = fleet.get("/v1/plugins/counter", OPERATOR).await;
    assert_eq!(status, 200, "{detail}");
    let versions: Vec<(String, String, u64)> = detail["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no versions: {detail}"))
        .iter()
        .map(|v| {
            assert!(v["p50Us"].as_u64().is_some_and(|us| us > 0), "{v}");
            assert_eq!(v["failureRate"], 0.0, "{v}");
            (
                v["digest"].as_str().unwrap_or("").to_string(),
                v["version"].as_str().unwrap_or("").to_string(),
                v["completed"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    // Newest first, each with its own executions.
    assert_eq!(
        versions,
        [
            (body_digest(&two), "2.0.0".to_string(), 2),
            (body_digest(&one), "1.0.0".to_string(), 1),
        ],
        "{detail}"
    );
    // Counted over every tenant: a tenant's view of a plugin it runs has none.
    let (status, hello) = fleet.run("hello", json!({"user": "Ada"}), ACME).await;
    assert_eq!(status, 200, "{hello}");
    let (_, tenant) = fleet.get("/v1/plugins/hello", ACME).await;
    assert!(tenant.get("versions").is_none(), "{tenant}");
    let (_, operator) = fleet.get("/v1/plugins/hello", OPERATOR).await;
    assert_eq!(operator["versions"][0]["completed"], 1, "{operator}");
}

#[tokio::test]
async fn the_operator_installs_a_plugin_over_the_api_and_a_bad_one_changes_nothing() {
    let fleet = Fleet::start();
    let put = |token: &str, body: Vec<u8>| {
        fleet
            .request(reqwest::Method::PUT, "/v1/plugins/double", Some(token))
            .header("content-type", "application/wasm")
            .body(body)
            .send()
    };
    let component = weir_tests::plugin_bytes("double");
    // A tenant may not install code, whatever it may run.
    let (status, body) = answer(put(ACME, component.clone()).await.unwrap()).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("forbidden")),
        "{body}"
    );
    // The operator may: the plugin serves at once, and its file is in the folder.
    let (status, body) = answer(put(OPERATOR, component.clone()).await.unwrap()).await;
    assert_eq!((status, &body["name"]), (200, &json!("double")), "{body}");
    assert_eq!(body["digest"], body_digest(&component), "{body}");
    assert!(fleet._folder.path().join("double.wasm").exists());
    let (status, listed) = fleet.get("/v1/plugins/double", OPERATOR).await;
    assert_eq!(
        (status, &listed["name"]),
        (200, &json!("double")),
        "{listed}"
    );
    // Something that is not a component is refused with the reason; the installed version
    // stays, file and all.
    let (status, body) = answer(put(OPERATOR, b"not a component".to_vec()).await.unwrap()).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &json!("invalid-plugin")),
        "{body}"
    );
    assert_eq!(
        std::fs::read(fleet._folder.path().join("double.wasm")).unwrap(),
        component
    );
    let (status, listed) = fleet.get("/v1/plugins/double", OPERATOR).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["digest"], body_digest(&component), "{listed}");
    // Its history says so, with the reason; a tenant's view of a name's history leaves the
    // operator's rejections out.
    let changes = |detail: &Value| -> Vec<String> {
        detail["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|c| c["change"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    // (The folder's watcher may note the refused file too, before it is restored.)
    assert_eq!(changes(&listed)[..2], ["loaded", "rejected"], "{listed}");
    let rejected = &listed["history"][1];
    assert!(
        rejected["reason"]
            .as_str()
            .unwrap_or("")
            .contains("not a valid WebAssembly"),
        "{rejected}"
    );
    let hello = fleet
        .request(reqwest::Method::PUT, "/v1/plugins/hello", Some(OPERATOR))
        .header("content-type", "application/wasm")
        .body(b"not a component".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(hello.status().as_u16(), 422);
    let (_, operator) = fleet.get("/v1/plugins/hello", OPERATOR).await;
    assert_eq!(
        changes(&operator)[..2],
        ["loaded", "rejected"],
        "{operator}"
    );
    let (_, tenant) = fleet.get("/v1/plugins/hello", ACME).await;
    assert_eq!(changes(&tenant), ["loaded"], "{tenant}");
    // A name that cannot be a processor's is refused before anything is written.
    let response = fleet
        .request(reqwest::Method::PUT, "/v1/plugins/Bad_Name", Some(OPERATOR))
        .body(component)
        .send()
        .await
        .unwrap();
    let (status, body) = answer(response).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid-name")),
        "{body}"
    );
}

/// The digest weir gives a component: the SHA-256 of its bytes, in hex.
fn body_digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
