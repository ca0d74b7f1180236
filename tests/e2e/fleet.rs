//! Issue 23 (item 0): behind `weir serve --redis`, `/v1/stats`, `/v1/sessions`,
//! `/v1/sessions/{id}` and `/metrics` show the whole fleet's executions (every worker's and
//! every server's), from what the fleet keeps in Redis, with tenants kept apart.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest;
use weir_tests::{PluginFolder, RedisServer, WeirProcess};

use crate::distributed::two_workers;

const OPERATOR: &str = "operator-secret";
const ACME: &str = "acme-secret";
const BETA: &str = "beta-secret";

fn sha256(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Writes `weir.toml` into `folder` with an operator (token `operator-secret`) and two
/// tenants, `acme` and `beta` (tokens `acme-secret`, `beta-secret`); its path.
pub(crate) fn two_tenants(folder: &PluginFolder) -> String {
    folder.write(
        "weir.toml",
        format!(
            "[server]\noperator_token_sha256 = [\"{}\"]\n\n\
             [tenants.acme]\ntoken_sha256 = [\"{}\"]\n\n\
             [tenants.beta]\ntoken_sha256 = [\"{}\"]\n",
            sha256(OPERATOR),
            sha256(ACME),
            sha256(BETA),
        )
        .as_bytes(),
    );
    folder
        .path()
        .join("weir.toml")
        .to_string_lossy()
        .into_owned()
}

/// Asks `base` for `path` with `token`; the body as JSON (or as text in `"text"`).
async fn get(client: &reqwest::Client, base: &str, path: &str, token: &str) -> Value {
    let url = format!("{base}{path}");
    let (status, body) = send(client, reqwest::Method::GET, url, token, None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Asks both servers until `check` holds on both answers (up to 20 s); the answers.
async fn agreed(
    client: &reqwest::Client,
    servers: [&str; 2],
    path: &str,
    token: &str,
    check: impl Fn(&Value) -> bool,
) -> [Value; 2] {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = get(client, servers[0], path, token).await;
        let b = get(client, servers[1], path, token).await;
        if check(&a) && check(&b) {
            return [a, b];
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} did not show the fleet's work on both servers:\n{a}\n{b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn completed(stats: &Value, name: &str) -> u64 {
    stats["processors"][name]["completed"].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn stats_sessions_and_metrics_agree_on_two_servers_and_keep_tenants_apart() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment", "stamp"]);
    folder.write(
        "workflows.toml",
        b"[workflow.bump]\nchain = [\"stamp\", \"increment\"]\n",
    );
    let config = two_tenants(&folder);
    let config = config.as_str();
    let _workers = two_workers(&url, folder.path(), &["--config", config]);
    let serve = ["--redis", url.as_str(), "--config", config];
    let (_first, a) = WeirProcess::serve(folder.path(), &serve);
    let (_second, b) = WeirProcess::serve(folder.path(), &serve);
    let client = reqwest::Client::new();

    // acme runs the chain twice in one session, once through each server.
    for server in [&a, &b] {
        let (status, result) = send(
            &client,
            reqwest::Method::POST,
            format!("{server}/v1/run/bump?session=s1"),
            ACME,
            Some(json!({ "count": 0 })),
        )
        .await;
        assert_eq!(status, 200, "{result}");
        assert_eq!(result["ok"], true, "{result}");
        // Without `metadata` the input continues from the session's revision.
        assert_eq!(result["state"]["count"], 1, "{result}");
    }
    // beta submits three jobs through the second server and waits for each.
    for _ in 0..3 {
        let (_, job) = send(
            &client,
            reqwest::Method::POST,
            format!("{b}/v1/jobs"),
            BETA,
            Some(json!({ "processor": "increment", "input": { "count": 1 } })),
        )
        .await;
        let id = job["id"].as_str().unwrap_or_else(|| panic!("{job}"));
        let done = get(&client, &b, &format!("/v1/jobs/{id}?waitMs=20000"), BETA).await;
        assert_eq!(done["status"], "completed", "{done}");
    }
    let servers = [a.as_str(), b.as_str()];

    // Each tenant sees its own counts, the same on both servers, and nothing of the other's.
    // The counts arrive as each process writes them (every 250 ms): wait for all.
    let [acme, again] = agreed(&client, servers, "/v1/stats", ACME, |s| {
        ["bump", "stamp", "increment"]
            .iter()
            .all(|name| completed(s, name) == 2 && s["processors"][name]["started"] == 2)
    })
    .await;
    assert_eq!(acme["processors"], again["processors"]);
    assert_eq!(acme["processors"]["bump"]["failed"], 0, "{acme}");
    assert!(acme["processors"]["bump"]["p50Us"].is_u64(), "{acme}");
    // What the executions cost adds up across the fleet too.
    let fuel = |name: &str| {
        acme["processors"][name]["fuelConsumed"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(fuel("increment") > 0, "{acme}");
    assert!(fuel("bump") >= fuel("increment") + fuel("stamp"), "{acme}");
    assert!(
        acme["processors"]["increment"]["totalPeakMemoryBytes"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{acme}"
    );
    let [beta, _] = agreed(&client, servers, "/v1/stats", BETA, |s| {
        completed(s, "increment") == 3
    })
    .await;
    assert!(beta["processors"].get("bump").is_none(), "{beta}");
    assert!(beta["processors"].get("stamp").is_none(), "{beta}");
    // The charts' history, read every 2 s by each server, is the fleet's too: a tenant's own.
    let [history, _] = agreed(&client, servers, "/v1/stats/history", BETA, |h| {
        completed(&h["latest"]["stats"], "increment") == 3
    })
    .await;
    assert!(
        history["latest"]["stats"].get("tenants").is_none(),
        "{history}"
    );
    let changes = history["samples"].as_array().unwrap();
    assert!(
        changes
            .iter()
            .flat_map(|s| s["changes"].as_array().unwrap())
            .all(|c| c["processor"] == "increment" && c.get("tenant").is_none()),
        "{history}"
    );

    // The operator sees both tenants and their sum.
    let [fleet, other] = agreed(&client, servers, "/v1/stats", OPERATOR, |s| {
        completed(s, "increment") == 5
    })
    .await;
    assert_eq!(fleet["tenants"], other["tenants"]);
    assert_eq!(
        fleet["tenants"]["beta"]["increment"]["completed"], 3,
        "{fleet}"
    );
    assert_eq!(fleet["tenants"]["acme"]["bump"]["completed"], 2, "{fleet}");
    assert_eq!(fleet["running"], 0, "{fleet}");

    // acme's session, with its counts by processor, on both servers; beta has none.
    let [sessions, _] = agreed(&client, servers, "/v1/sessions", ACME, |s| {
        s["sessions"][0]["executions"] == 6
    })
    .await;
    let list = sessions["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{sessions}");
    let session = &list[0];
    assert_eq!(
        (&session["tenant"], &session["session"]),
        (&json!("acme"), &json!("s1"))
    );
    for name in ["bump", "stamp", "increment"] {
        assert_eq!(
            session["processors"][name]["executions"], 2,
            "{name}: {session}"
        );
    }
    assert_eq!(session["failed"], 0);
    let [one, _] = agreed(&client, servers, "/v1/sessions/s1", ACME, |s| {
        s["stats"]["executions"] == 6
    })
    .await;
    assert_eq!(one["state"]["count"], 1, "{one}");
    // Two runs of two steps each, the second continuing from the first.
    assert_eq!(one["state"]["metadata"]["version"], 4, "{one}");
    let beta_sessions = get(&client, &a, "/v1/sessions", BETA).await;
    assert_eq!(beta_sessions["sessions"], json!([]));
    let operator_sessions = get(&client, &b, "/v1/sessions", OPERATOR).await;
    assert_eq!(
        operator_sessions["sessions"].as_array().map(Vec::len),
        Some(1),
        "{operator_sessions}"
    );

    // The metrics count the fleet's executions on either server.
    let line = "weir_executions_total{tenant=\"beta\",processor=\"increment\",outcome=\"ok\"} 3";
    let [metrics, _] = agreed(&client, servers, "/metrics", OPERATOR, |m| {
        m["text"].as_str().is_some_and(|t| t.contains(line))
    })
    .await;
    let text = metrics["text"].as_str().unwrap();
    assert!(
        text.contains("weir_executions_total{tenant=\"acme\",processor=\"bump\",outcome=\"ok\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn what_runs_counts_while_its_worker_lives_and_stops_counting_when_it_dies() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["sleep"]);
    folder.manifest("sleep", "[limits]\ntimeout_ms = 60000\n");
    let mut worker = weir_tests::WorkerProcess::start(&url, folder.path(), &[]);
    let (_server, api) = WeirProcess::serve(folder.path(), &["--redis", &url]);
    let client = reqwest::Client::new();
    let (_, job) = send(
        &client,
        reqwest::Method::POST,
        format!("{api}/v1/jobs"),
        "",
        Some(json!({ "processor": "sleep", "session": "nap", "input": { "ms": 60000 } })),
    )
    .await;
    assert!(job["id"].is_string(), "{job}");
    let servers = [api.as_str(), api.as_str()];
    let [stats, _] = agreed(&client, servers, "/v1/stats", "", |s| s["running"] == 1).await;
    assert_eq!(stats["processors"]["sleep"]["running"], 1, "{stats}");
    let [sessions, _] = agreed(&client, servers, "/v1/sessions", "", |s| {
        s["sessions"][0]["running"] == 1
    })
    .await;
    assert_eq!(
        sessions["sessions"][0]["processors"]["sleep"]["running"], 1,
        "{sessions}"
    );
    // A worker that dies says nothing more: what it ran stops counting once its last
    // word expires (20 intervals of 250 ms).
    worker.kill();
    let [stats, _] = agreed(&client, servers, "/v1/stats", "", |s| s["running"] == 0).await;
    assert_eq!(stats["processors"]["sleep"]["running"], 0, "{stats}");
}

#[tokio::test]
async fn the_operator_sees_each_queues_counts_and_a_tenant_does_not() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["hello"]);
    let config = two_tenants(&folder);
    let config = config.as_str();
    let _worker = weir_tests::WorkerProcess::start(&url, folder.path(), &["--config", config]);
    let (_server, api) = WeirProcess::serve(folder.path(), &["--redis", &url, "--config", config]);
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let (_, result) = send(
            &client,
            reqwest::Method::POST,
            format!("{api}/v1/run/hello"),
            ACME,
            Some(json!({ "user": "queue" })),
        )
        .await;
        assert_eq!(result["ok"], true, "{result}");
    }
    // A run's outcome is announced before BullMQ files its job as completed: wait for it.
    let hello_completed = |q: &Value| {
        q["queues"].as_array().is_some_and(|l| {
            l.iter()
                .any(|q| q["queue"] == "hello" && q["completed"] == 2)
        })
    };
    let [queues, _] = agreed(
        &client,
        [&api, &api],
        "/v1/queues",
        OPERATOR,
        hello_completed,
    )
    .await;
    let list = queues["queues"]
        .as_array()
        .unwrap_or_else(|| panic!("{queues}"));
    let hello = list
        .iter()
        .find(|q| q["queue"] == "hello")
        .unwrap_or_else(|| panic!("no hello queue: {queues}"));
    assert_eq!(hello["completed"], 2, "{hello}");
    assert_eq!(
        (&hello["waiting"], &hello["active"]),
        (&json!(0), &json!(0))
    );
    assert!(list.iter().any(|q| q["queue"] == "_join"), "{queues}");
    let url = format!("{api}/v1/queues");
    let (status, refused) = send(&client, reqwest::Method::GET, url, ACME, None).await;
    assert_eq!(status, 403, "{refused}");
}

/// Sends `method url` with `token` and `body`; the status and the body as JSON (or as text
/// in `"text"`).
async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| json!({ "text": text })),
    )
}

fn ids(list: &Value) -> Vec<String> {
    list["jobs"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|j| j["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 23 (item 2): behind `serve --redis` the runs list and a run's page are the fleet's.
/// A run submitted through one server, as a job or with `/v1/run`, is listed, read and
/// cancelled through the other; a tenant sees only its own; the operator filters and pages.
#[tokio::test]
async fn runs_submitted_through_either_server_are_listed_read_and_cancelled_on_both() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment", "cooperative"]);
    let config = two_tenants(&folder);
    let config = config.as_str();
    let _worker = weir_tests::WorkerProcess::start(
        &url,
        folder.path(),
        &["--config", config, "--process-name", "worker-eu-1"],
    );
    let serve = ["--redis", url.as_str(), "--config", config];
    let (_first, a) = WeirProcess::serve(folder.path(), &serve);
    let (_second, b) = WeirProcess::serve(folder.path(), &serve);
    let client = reqwest::Client::new();
    let post = reqwest::Method::POST;

    // acme: a job through the first server, a synchronous run through the second.
    let (status, job) = send(
        &client,
        post.clone(),
        format!("{a}/v1/jobs"),
        ACME,
        Some(json!({ "processor": "increment", "session": "s1", "input": { "count": 1 } })),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let job_id = job["id"].as_str().unwrap().to_string();
    let done = get(
        &client,
        &a,
        &format!("/v1/jobs/{job_id}?waitMs=20000"),
        ACME,
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let (status, run) = send(
        &client,
        post.clone(),
        format!("{b}/v1/run/increment?session=s2"),
        ACME,
        Some(json!({ "count": 5 })),
    )
    .await;
    assert_eq!((status, &run["ok"]), (200, &json!(true)), "{run}");
    let run_id = run["execution"]["id"].as_str().unwrap().to_string();
    // beta: a job through the second server.
    let (_, beta_job) = send(
        &client,
        post.clone(),
        format!("{b}/v1/jobs"),
        BETA,
        Some(json!({ "processor": "increment", "input": { "count": 7 } })),
    )
    .await;
    let beta_id = beta_job["id"].as_str().unwrap().to_string();
    let done = get(
        &client,
        &b,
        &format!("/v1/jobs/{beta_id}?waitMs=20000"),
        BETA,
    )
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    let servers = [a.as_str(), b.as_str()];

    // Each server lists acme's two runs, newest first, and none of beta's.
    let [listed, _] = agreed(&client, servers, "/v1/jobs", ACME, |l| {
        ids(l) == [run_id.clone(), job_id.clone()]
    })
    .await;
    let rows = listed["jobs"].as_array().unwrap();
    assert_eq!(rows[0]["session"], "s2", "{listed}");
    assert_eq!(rows[1]["session"], "s1", "{listed}");
    for row in rows {
        assert_eq!(
            (&row["status"], &row["processor"], &row["tenant"]),
            (&json!("completed"), &json!("increment"), &json!("acme")),
            "{row}"
        );
        assert!(row["finishedAtMs"].is_u64(), "{row}");
    }
    let [beta_list, _] = agreed(&client, servers, "/v1/jobs", BETA, |l| {
        ids(l) == [beta_id.clone()]
    })
    .await;
    assert_eq!(beta_list["jobs"][0]["tenant"], "beta");

    // The job submitted through the first server, read through the second: its result,
    // input and timeline.
    let page = get(&client, &b, &format!("/v1/jobs/{job_id}"), ACME).await;
    assert_eq!(page["status"], "completed", "{page}");
    assert_eq!(page["result"]["state"]["count"], 2, "{page}");
    assert_eq!(page["input"], json!({ "count": 1 }), "{page}");
    let steps = page["steps"].as_array().unwrap_or_else(|| panic!("{page}"));
    // Each step says which worker ran it, by the name its operator gave it.
    let step = steps
        .iter()
        .find(|s| s["processor"] == "increment")
        .unwrap_or_else(|| panic!("{page}"));
    let origin = step["origin"].as_str().unwrap_or_default();
    assert!(origin.starts_with("worker-eu-1/"), "{step}");
    // The synchronous run, read through the first: its result (it kept no input).
    let page = get(&client, &a, &format!("/v1/jobs/{run_id}"), ACME).await;
    assert_eq!(page["result"]["state"]["count"], 6, "{page}");
    // Another tenant's run is not there for beta.
    let (status, _) = send(
        &client,
        reqwest::Method::GET,
        format!("{a}/v1/jobs/{job_id}"),
        BETA,
        None,
    )
    .await;
    assert_eq!(status, 404);

    // The operator sees all three, filters by tenant and pages through them one at a time.
    let all = get(&client, &a, "/v1/jobs", OPERATOR).await;
    assert_eq!(ids(&all), [beta_id.clone(), run_id.clone(), job_id.clone()]);
    let only_beta = get(&client, &a, "/v1/jobs?tenant=beta", OPERATOR).await;
    assert_eq!(ids(&only_beta), [beta_id.as_str()]);
    let by_session = get(&client, &b, "/v1/jobs?session=s1", OPERATOR).await;
    assert_eq!(ids(&by_session), [job_id.as_str()]);
    let mut paged = Vec::new();
    let mut path = "/v1/jobs?limit=1".to_string();
    loop {
        let page = get(&client, &b, &path, OPERATOR).await;
        paged.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/jobs?limit=1&before={next}"),
            None => break,
        }
    }
    assert_eq!(paged, [beta_id, run_id, job_id.clone()]);

    // A cursor that no page gave is refused, not read as an empty page.
    let (status, refused) = send(
        &client,
        reqwest::Method::GET,
        format!("{a}/v1/jobs?before={job_id}"),
        OPERATOR,
        None,
    )
    .await;
    assert_eq!(status, 400, "{refused}");

    // A job running through the first server is cancelled through the second.
    let (_, long) = send(
        &client,
        post,
        format!("{a}/v1/jobs"),
        ACME,
        Some(json!({ "processor": "cooperative" })),
    )
    .await;
    let long_id = long["id"].as_str().unwrap().to_string();
    agreed(&client, servers, "/v1/jobs?status=running", ACME, |l| {
        ids(l) == [long_id.clone()]
    })
    .await;
    let (status, cancelled) = send(
        &client,
        reqwest::Method::DELETE,
        format!("{b}/v1/jobs/{long_id}"),
        ACME,
        None,
    )
    .await;
    assert_eq!(
        (status, &cancelled["cancelled"]),
        (202, &json!(true)),
        "{cancelled}"
    );
    let done = get(
        &client,
        &a,
        &format!("/v1/jobs/{long_id}?waitMs=20000"),
        ACME,
    )
    .await;
    assert_eq!(done["status"], "cancelled", "{done}");
    agreed(&client, servers, "/v1/jobs?status=cancelled", ACME, |l| {
        ids(l) == [long_id.clone()]
    })
    .await;
    // A finished job, cancelled again, says so.
    let (status, again) = send(
        &client,
        reqwest::Method::DELETE,
        format!("{b}/v1/jobs/{job_id}"),
        ACME,
        None,
    )
    .await;
    assert_eq!(
        (status, &again["cancelled"]),
        (200, &json!(false)),
        "{again}"
    );
}

/// The fleet's run index keeps its bounds (runs per tenant, in all, and tenants) and lists
/// only what the fleet signed: an entry a Redis writer adds to a tenant's index, naming
/// another tenant's run or none, is not listed.
#[tokio::test]
async fn the_run_index_keeps_its_bounds_and_lists_only_the_fleets_own_runs() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment"]);
    let mut config = weir::RedisConfig::new(&url);
    config.run_index_per_tenant = 3;
    config.run_index_total = 5;
    config.activity_tenants = 2;
    let runtime = weir::Runtime::redis(&url)
        .trust(weir_tests::fleet())
        .redis_config(config)
        .plugins_dir(folder.path())
        .engine_config(weir_tests::engine_config())
        .build()
        .await
        .expect("the distributed runtime connects");
    runtime.start();
    let fleet = runtime.fleet().expect("a distributed runtime");
    // No worker runs: the runs stay submitted, which is all the index lists.
    let submit = |tenant: &'static str| {
        let fleet = fleet.clone();
        async move {
            fleet
                .submit(weir::ExecutionRequest::new("increment", json!({})).tenant(tenant))
                .await
                .unwrap()
        }
    };
    let list = |tenant: Option<&str>, limit: usize, before: Option<String>| weir::RunQuery {
        tenant: tenant.map(String::from),
        before,
        limit,
        ..weir::RunQuery::default()
    };
    let ids =
        |page: &weir::RunPage| -> Vec<String> { page.runs.iter().map(|r| r.id.clone()).collect() };
    let mut acme = Vec::new();
    for _ in 0..4 {
        acme.push(submit("acme").await);
    }
    // A tenant's newest three are listed, newest first.
    let page = fleet.runs(&list(Some("acme"), 10, None)).await.unwrap();
    assert_eq!(ids(&page), [acme[3].as_str(), &acme[2], &acme[1]]);
    assert!(page.runs.iter().all(|r| r.state == weir::RunState::Running));
    assert_eq!(page.next, None);

    // A Redis writer lists acme's run in beta's index, and a run that never was.
    let beta = submit("beta").await;
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let now = weir::now_ms();
    let _: () = redis::cmd("ZADD")
        .arg("weir:_:runs:t:beta")
        .arg(0)
        .arg(format!("{:013}:{}", now + 10, acme[3]))
        .arg(0)
        .arg(format!("{:013}:forged", now + 20))
        .query_async(&mut conn)
        .await
        .unwrap();
    let page = fleet.runs(&list(Some("beta"), 10, None)).await.unwrap();
    assert_eq!(ids(&page), [beta.as_str()]);
    // The entry naming no run is removed once met.
    let left: u64 = redis::cmd("ZCARD")
        .arg("weir:_:runs:t:beta")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        left, 2,
        "the forged entry stays only while it names a real run"
    );

    // A third tenant past the cap of two: the one idle longest (acme) loses its index.
    let gamma = submit("gamma").await;
    let page = fleet.runs(&list(Some("acme"), 10, None)).await.unwrap();
    assert_eq!(ids(&page), Vec::<String>::new());
    // The fleet's index keeps its newest five, paged two at a time.
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = fleet.runs(&list(None, 2, before)).await.unwrap();
        assert!(page.runs.len() <= 2);
        paged.extend(ids(&page));
        match page.next {
            Some(next) => before = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, [gamma.as_str(), &beta, &acme[3], &acme[2], &acme[1]]);
    // `weir runs list` reads the same index, a page at a time.
    let listed =
        crate::distributed::weir_json(&["runs", "list", "--redis", &url, "--limit", "2", "--json"]);
    let run_ids = |list: &Value| -> Vec<String> {
        list["runs"]
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|r| r["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(run_ids(&listed), [gamma.as_str(), &beta], "{listed}");
    let next = listed["next"]
        .as_str()
        .unwrap_or_else(|| panic!("{listed}"));
    let older = crate::distributed::weir_json(&[
        "runs", "list", "--redis", &url, "--before", next, "--limit", "2", "--json",
    ]);
    assert_eq!(run_ids(&older), [acme[3].as_str(), &acme[2]], "{older}");
    assert_eq!(older["runs"][0]["status"], "running");
    let only_beta = crate::distributed::weir_json(&[
        "runs", "list", "--redis", &url, "--tenant", "beta", "--json",
    ]);
    assert_eq!(run_ids(&only_beta), [beta.as_str()], "{only_beta}");

    // A run of a name nothing publishes never starts, and is listed as failed.
    let refused = fleet
        .submit(weir::ExecutionRequest::new("nope", json!({})).tenant("beta"))
        .await;
    assert!(refused.is_err(), "{refused:?}");
    let page = fleet.runs(&list(Some("beta"), 10, None)).await.unwrap();
    let first = &page.runs[0];
    assert_eq!(
        (first.target.as_str(), first.state),
        ("nope", weir::RunState::Failed),
        "{page:?}"
    );

    // A run's priority is in its signed record: listed, and filtered by a range.
    let urgent = fleet
        .submit(
            weir::ExecutionRequest::new("increment", json!({}))
                .tenant("beta")
                .priority(2),
        )
        .await
        .unwrap();
    let ranged = |min: Option<u32>, max: Option<u32>| weir::RunQuery {
        min_priority: min,
        max_priority: max,
        ..list(Some("beta"), 10, None)
    };
    let page = fleet.runs(&ranged(Some(1), Some(2))).await.unwrap();
    assert_eq!(ids(&page), [urgent.as_str()], "{page:?}");
    assert_eq!(page.runs[0].priority, Some(2));
    let page = fleet.runs(&ranged(Some(3), None)).await.unwrap();
    assert_eq!(ids(&page), Vec::<String>::new(), "{page:?}");
    let listed = crate::distributed::weir_json(&[
        "runs",
        "list",
        "--redis",
        &url,
        "--tenant",
        "beta",
        "--max-priority",
        "2",
        "--json",
    ]);
    assert_eq!(run_ids(&listed), [urgent.as_str()], "{listed}");
    assert_eq!(listed["runs"][0]["priority"], 2, "{listed}");
    runtime.stop(Duration::from_secs(1)).await;
}

/// A stopped session stays gone from the fleet's counters: the end of the work the stop
/// cancelled, which its worker writes after the stop, does not bring it back.
#[tokio::test]
async fn a_stopped_session_is_not_brought_back_by_the_end_of_the_work_it_cancelled() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["cooperative"]);
    let _worker = weir_tests::WorkerProcess::start(&url, folder.path(), &[]);
    let (_server, api) = WeirProcess::serve(folder.path(), &["--redis", &url]);
    let client = reqwest::Client::new();
    let (status, job) = send(
        &client,
        reqwest::Method::POST,
        format!("{api}/v1/jobs"),
        "",
        Some(json!({ "processor": "cooperative", "session": "doomed" })),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let servers = [api.as_str(), api.as_str()];
    agreed(&client, servers, "/v1/sessions", "", |s| {
        s["sessions"][0]["running"] == 1
    })
    .await;
    let (status, stopped) = send(
        &client,
        reqwest::Method::DELETE,
        format!("{api}/v1/sessions/doomed"),
        "",
        None,
    )
    .await;
    assert_eq!(status, 200, "{stopped}");
    let done = get(&client, &api, &format!("/v1/jobs/{id}?waitMs=20000"), "").await;
    assert_eq!(done["status"], "cancelled", "{done}");
    // The worker has written the cancelled execution's end once the fleet's counters show
    // it: the session's counters were written (or not) in the same call.
    agreed(&client, servers, "/v1/stats", "", |s| {
        s["processors"]["cooperative"]["failed"] == 1 && s["running"] == 0
    })
    .await;
    let sessions = get(&client, &api, "/v1/sessions", "").await;
    assert_eq!(sessions["sessions"], json!([]), "{sessions}");
}
