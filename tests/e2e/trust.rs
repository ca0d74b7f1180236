//! Redis is not authority (issue 21): with write access to the fleet's Redis, and without
//! its fleet key, one can neither run code as another tenant, nor give a component another
//! processor's grants, nor hand a waiting caller a result. Each attack runs against a real
//! `redis-server` and two `weir worker` processes.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::{Value, json};
use weir_tests::{PluginFolder, RedisServer, WorkerProcess, engine_config, plugin_bytes};

use crate::distributed::{connection, submitter, two_workers};

/// The secret the operator grants the processor `escape` (as an environment variable).
const GRANTED: &str = "k-7f3a-operator-only";

/// Adds a job with `data` and id `id` to the BullMQ queue `queue`, as anyone with write
/// access to Redis can.
pub(crate) async fn add_job(url: &str, queue: &str, id: &str, data: &Value) {
    let options = bullmq::QueueOptions::new()
        .connection(bullmq::options::RedisConnectionOptions::new().url(url.to_string()))
        .prefix("weir".to_string())
        .skip_version_check();
    let queue = bullmq::Queue::with_options(queue, options).await.unwrap();
    let mut job = bullmq::JobOptions::new();
    job.job_id = Some(id.to_string());
    queue.add("forged", data).options(job).await.unwrap();
}

/// Waits (up to 60 s) until the job `id` of `queue` has finished; returns its hash.
pub(crate) async fn until_finished(
    conn: &mut redis::aio::MultiplexedConnection,
    queue: &str,
    id: &str,
) -> std::collections::HashMap<String, String> {
    let key = format!("weir:{queue}:{id}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let job: std::collections::HashMap<String, String> = conn.hgetall(&key).await.unwrap();
        if job.contains_key("finishedOn") {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "the job {key} never finished: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The data of the step job `{run}-0` that the fleet wrote on `queue`.
async fn job_data(conn: &mut redis::aio::MultiplexedConnection, queue: &str, run: &str) -> Value {
    let data: String = conn
        .hget(format!("weir:{queue}:{run}-0"), "data")
        .await
        .unwrap();
    serde_json::from_str(&data).unwrap()
}

/// `request` with the execution id `id`.
fn with_id(mut request: weir::ExecutionRequest, id: &str) -> weir::ExecutionRequest {
    request.id = Some(id.to_string());
    request
}

/// `job` moved to another run, so that it is a new job: `run` and `execution` changed.
fn as_run(mut job: Value, run: &str) -> Value {
    job["run"] = json!(run);
    job["execution"] = json!(run);
    job
}

#[tokio::test]
async fn a_forged_step_job_claiming_another_tenants_session_is_refused() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment"]);
    let _workers = two_workers(&url, folder.path(), &[]);
    let fleet = submitter(&url, folder.path()).await;
    // Another tenant's session, and one of its own jobs: the model of the forgeries.
    let request = weir::ExecutionRequest::new("increment", json!({"count": 1}))
        .tenant("victim")
        .session("s");
    let result = fleet.execute(with_id(request, "victim-run")).await.unwrap();
    assert!(result.ok, "{result:?}");
    let mut conn = connection(&url).await;
    let model = job_data(&mut conn, "increment", "victim-run").await;
    assert_eq!(model["scope"]["tenant"], "victim");
    // 1. A job written from scratch, unsigned, claiming the victim's session.
    let mut unsigned = as_run(model.clone(), "forged-1");
    unsigned.as_object_mut().unwrap().remove("mac");
    unsigned["state"] = json!({"count": 100});
    // 2. The victim's own signed job, moved to a run of the forger's.
    let mut moved = as_run(model.clone(), "forged-2");
    moved["state"] = json!({"count": 200});
    // 3. A job of the forger's own tenant relabelled as the victim's: the same signature.
    let mut relabelled = model.clone();
    relabelled["scope"]["tenant"] = json!("mallory");
    relabelled["run"] = json!("victim-run");
    for (run, job) in [
        ("forged-1", unsigned),
        ("forged-2", moved),
        ("forged-3", relabelled),
    ] {
        let id = format!("{run}-0");
        add_job(&url, "increment", &id, &job).await;
        let finished = until_finished(&mut conn, "increment", &id).await;
        let reason = finished.get("failedReason").cloned().unwrap_or_default();
        assert!(
            reason.contains("refused by the worker") && reason.contains("sign"),
            "{run}: the worker ran a forged job: {finished:?}"
        );
        // Nothing of the run it claims was written: no record, no outcome.
        let record: std::collections::HashMap<String, String> =
            conn.hgetall(format!("weir:_:run:{run}")).await.unwrap();
        assert!(record.is_empty(), "{run}: {record:?}");
    }
    // The victim's own record is as its run left it.
    let status = fleet
        .fleet()
        .expect("a distributed runtime")
        .run_status("victim-run")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.tenant, "victim");
    assert_eq!(status.result.unwrap().state["count"], 2);
}

#[tokio::test]
async fn a_component_pushed_under_another_names_manifest_gets_none_of_its_grants() {
    let redis = RedisServer::start();
    let url = redis.url();
    // The operator grants `escape` a secret, for the `escape` they would publish. Nobody in
    // the fleet has published one.
    let folder = PluginFolder::with(&["increment"]);
    folder.manifest(
        "escape",
        &format!("[capabilities]\nenv = {{ BILLING_KEY = \"{GRANTED}\" }}\n"),
    );
    let _workers = two_workers(&url, folder.path(), &[]);
    let fleet = submitter(&url, folder.path()).await;
    let result = fleet
        .execute(with_id(
            weir::ExecutionRequest::new("increment", json!({"count": 1})),
            "model",
        ))
        .await
        .unwrap();
    assert!(result.ok, "{result:?}");
    let mut conn = connection(&url).await;
    let model = job_data(&mut conn, "increment", "model").await;
    // Someone with write access to Redis stores a component that calls itself `escape` and
    // reports its environment, and says the name `escape` means it.
    let bytes = plugin_bytes("escape");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let _: () = redis::pipe()
        .set(format!("weir:_:blob:{digest}"), bytes)
        .hset("weir:_:versions", &digest, "0.1.0")
        .hset("weir:_:plugins", "escape", &digest)
        .query_async(&mut conn)
        .await
        .unwrap();
    // 1. A fleet member runs `escape`: the name means nothing this fleet published.
    match fleet
        .execute(weir::ExecutionRequest::new("escape", json!({})))
        .await
    {
        Err(weir::RuntimeError::NotFound { name, .. }) => assert_eq!(name, "escape"),
        other => panic!("`escape` ran: {other:?}"),
    }
    // 2. A job for those bytes, on a queue the workers serve.
    let mut job = as_run(model, "forged-escape");
    job["processor"] = json!("escape");
    job["digest"] = json!(digest);
    job.as_object_mut().unwrap().remove("mac");
    add_job(&url, "increment", "forged-escape-0", &job).await;
    let finished = until_finished(&mut conn, "increment", "forged-escape-0").await;
    let shown = serde_json::to_string(&finished).unwrap();
    assert!(
        !shown.contains(GRANTED),
        "the granted secret leaked: {shown}"
    );
    assert!(
        finished
            .get("failedReason")
            .is_some_and(|r| r.contains("refused by the worker")),
        "{shown}"
    );
    let record: std::collections::HashMap<String, String> =
        conn.hgetall("weir:_:run:forged-escape").await.unwrap();
    assert!(record.is_empty(), "{record:?}");
}

#[tokio::test]
async fn a_forged_outcome_announcement_does_not_reach_a_waiting_caller() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["sleep"]);
    let _workers = two_workers(&url, folder.path(), &[]);
    let fleet = submitter(&url, folder.path()).await;
    // A real outcome document, to forge from.
    let first = fleet
        .execute(with_id(
            weir::ExecutionRequest::new("sleep", json!({"ms": 1})),
            "first",
        ))
        .await
        .unwrap();
    assert!(first.ok, "{first:?}");
    let mut conn = connection(&url).await;
    let document: String = conn.hget("weir:_:run:first", "result").await.unwrap();
    let mut forged: Value = serde_json::from_str(&document).unwrap();
    forged["state"] = json!({"forged": true});
    forged["execution"]["id"] = json!("waited");
    let forged = forged.to_string();
    // The caller waits for a run that takes a quarter of a second; meanwhile its outcome is announced,
    // forged, again and again.
    let waiting = tokio::spawn(async move {
        fleet
            .execute(with_id(
                weir::ExecutionRequest::new("sleep", json!({"ms": 250})),
                "waited",
            ))
            .await
    });
    while !waiting.is_finished() {
        let _: String = redis::cmd("XADD")
            .arg("weir:_:events")
            .arg("*")
            .arg(&[
                ("type", "run"),
                ("run", "waited"),
                ("status", "ok"),
                ("result", forged.as_str()),
                ("mac", &"00".repeat(32)),
            ])
            .query_async(&mut conn)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = waiting.await.unwrap().unwrap();
    assert!(result.ok, "{result:?}");
    assert_eq!(
        result.state.get("forged"),
        None,
        "the forged outcome reached the caller"
    );
    assert_eq!(result.state["slept_ms"], 250, "{:?}", result.state);
}

#[tokio::test]
async fn a_fleet_without_a_key_refuses_to_start_unless_told_it_is_insecure() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment"]);
    let refused = weir::Runtime::redis(&url)
        .plugins_dir(folder.path())
        .engine_config(engine_config())
        .build()
        .await
        .expect_err("no fleet key");
    assert!(refused.to_string().contains("weir fleet-key"), "{refused}");
    let output = std::process::Command::new(weir_tests::weir_bin())
        .args(["worker", "--redis", &url, "--plugins"])
        .arg(folder.path())
        .env_remove("WEIR_FLEET_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("WEIR_FLEET_KEY") && said.contains("--insecure-redis"),
        "{said}"
    );
    // A key that is not one is said so.
    let output = std::process::Command::new(weir_tests::weir_bin())
        .args(["runs", "get", "x", "--redis", &url])
        .env("WEIR_FLEET_KEY", "not-a-key")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("64 hexadecimal digits"));
    // Insecure, said explicitly: it runs.
    let insecure = weir::Runtime::redis(&url)
        .trust(weir::Trust::Insecure)
        .plugins_dir(folder.path())
        .engine_config(engine_config())
        .build()
        .await;
    assert!(insecure.is_ok(), "{:?}", insecure.err());
}

#[tokio::test]
async fn a_fleet_rotating_its_key_keeps_running() {
    let redis = RedisServer::start();
    let url = redis.url();
    let folder = PluginFolder::with(&["increment"]);
    let old = weir::FleetKey::from_text(weir_tests::FLEET_KEY).unwrap();
    let new = weir::FleetKey::generate().unwrap();
    // Half-way: this worker signs with the new key and still accepts the old one...
    let key_file = folder.path().join("fleet.key");
    std::fs::write(&key_file, format!("{}\n{}\n", new.to_text(), old.to_text())).unwrap();
    let key_arg = key_file.to_str().unwrap().to_string();
    let _worker = WorkerProcess::spawn(
        weir_tests::weir_bin(),
        &[
            "worker".as_ref(),
            "--redis".as_ref(),
            url.as_ref(),
            "--plugins".as_ref(),
            folder.path().as_os_str(),
            "--fleet-key-file".as_ref(),
            key_arg.as_ref(),
        ],
        "worker serving",
    );
    // ...while this submitter still signs with the old one, already accepting the new one.
    let submitter = weir::Runtime::redis(&url)
        .trust(weir::Trust::Keyed {
            key: old,
            accepted: vec![new],
        })
        .plugins_dir(folder.path())
        .engine_config(engine_config())
        .build()
        .await
        .unwrap();
    submitter.start();
    let result = submitter
        .execute(weir::ExecutionRequest::new(
            "increment",
            json!({"count": 1}),
        ))
        .await
        .unwrap();
    assert!(result.ok, "{result:?}");
    assert_eq!(result.state["count"], 2);
}
