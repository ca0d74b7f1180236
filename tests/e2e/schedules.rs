//! Issue 24: schedules. A cron schedule fires once per tick, on the local runtime and
//! across a fleet of two workers and two servers; it outlives every process of the fleet; a
//! tick while the previous tick's run goes is skipped; the library, the HTTP API and the
//! command line add, list and remove schedules within their bounds.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir::{EventKind, Notice, RunQuery, ScheduleRefused, ScheduleSpec};
use weir_tests::{PluginFolder, RedisServer, WeirProcess, WorkerProcess, runtime, weir_bin};

use crate::distributed::submitter;

/// The events of `events` until `enough` says so (or a panic after 30 s).
async fn events_until(
    events: &mut weir::Subscription,
    enough: impl Fn(&[std::sync::Arc<weir::Event>]) -> bool,
) -> Vec<std::sync::Arc<weir::Event>> {
    let mut seen = Vec::new();
    let wait = async {
        while !enough(&seen) {
            match events.recv().await {
                Some(Notice::Event(event)) => seen.push(event),
                Some(_) => {}
                None => panic!("the event stream closed"),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .is_err()
    {
        panic!("not enough events within 30 s: {seen:#?}");
    }
    seen
}

fn count(events: &[std::sync::Arc<weir::Event>], kind: EventKind) -> usize {
    events.iter().filter(|e| e.event == kind).count()
}

#[tokio::test]
async fn a_local_cron_schedule_fires_once_on_each_of_its_ticks() {
    let folder = PluginFolder::with(&["tally"]);
    folder.write(
        "workflows.toml",
        b"[schedule.beat]\nrun = \"tally\"\nsession = \"beats\"\ncron = \"* * * * * *\"\n",
    );
    let rt = runtime(folder.path()).await;
    let mut events = rt.subscribe();
    let seen = events_until(&mut events, |seen| {
        let fired: BTreeSet<_> = seen
            .iter()
            .filter(|e| e.event == EventKind::ScheduleFired)
            .filter_map(|e| e.execution_id.clone())
            .collect();
        let done = seen
            .iter()
            .filter(|e| e.event == EventKind::ProcessorCompleted)
            .filter(|e| e.execution_id.as_ref().is_some_and(|id| fired.contains(id)))
            .count();
        fired.len() >= 3 && done >= 3
    })
    .await;
    let ticks: Vec<u64> = seen
        .iter()
        .filter(|e| e.event == EventKind::ScheduleFired)
        .map(|e| e.data.as_ref().unwrap()["tickMs"].as_u64().unwrap())
        .collect();
    for pair in ticks.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "one run per second: {ticks:?}");
    }
    assert!(ticks.iter().all(|t| t % 1000 == 0), "{ticks:?}");
    assert_eq!(count(&seen, EventKind::ScheduleSkipped), 0, "{seen:#?}");
    assert_eq!(count(&seen, EventKind::ProcessorFailed), 0, "{seen:#?}");
    let fired = seen
        .iter()
        .find(|e| e.event == EventKind::ScheduleFired)
        .unwrap();
    assert_eq!(fired.tenant, "default");
    assert_eq!(fired.session.as_deref(), Some("beats"));
    assert_eq!(fired.processor.as_deref(), Some("tally"));
    let listed = rt.schedules(None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "beat");
    assert!(listed[0].ticks >= 3, "{listed:?}");
    assert!(listed[0].next_ms.is_some(), "{listed:?}");
    assert!(listed[0].last.as_ref().unwrap().run.is_some(), "{listed:?}");
}

#[tokio::test]
async fn a_tick_while_the_previous_ticks_run_goes_is_skipped() {
    let folder = PluginFolder::with(&["sleep"]);
    folder.write(
        "workflows.toml",
        b"[schedule.slow]\nrun = \"sleep\"\ninput = { ms = 200 }\nevery_ms = 100\n",
    );
    let mut host = weir::HostConfig::default();
    host.schedules.min_interval = Duration::from_millis(50);
    let rt = weir_tests::builder(folder.path())
        .host_config(host)
        .build()
        .await
        .unwrap();
    let mut events = rt.subscribe();
    rt.start();
    let seen = events_until(&mut events, |seen| {
        count(seen, EventKind::ScheduleFired) >= 3 && count(seen, EventKind::ScheduleSkipped) >= 1
    })
    .await;
    // Never two runs at once: a tick fires only once the previous tick's run has ended.
    let mut going: Option<String> = None;
    for event in &seen {
        match event.event {
            EventKind::ScheduleFired => {
                assert!(
                    going.is_none(),
                    "a tick fired while {going:?} went: {seen:#?}"
                );
                going = event.execution_id.clone();
            }
            EventKind::ScheduleSkipped => {
                let reason = event.data.as_ref().unwrap()["reason"].as_str().unwrap();
                assert!(reason.contains("still going"), "{reason}");
            }
            EventKind::ProcessorCompleted | EventKind::ProcessorFailed
                if event.execution_id == going =>
            {
                going = None;
            }
            _ => {}
        }
    }
    let listed = rt.schedules(None).await.unwrap();
    assert_eq!(listed[0].spec.overlap, None, "skip is the default");
}

#[tokio::test]
async fn the_library_adds_and_removes_schedules_within_their_bounds() {
    let folder = PluginFolder::with(&["increment"]);
    folder.write(
        "workflows.toml",
        b"[schedule.nightly]\nrun = \"increment\"\ncron = \"0 2 * * *\"\n",
    );
    let mut host = weir::HostConfig::default();
    host.schedules.max_per_tenant = 2;
    let rt = weir_tests::builder(folder.path())
        .host_config(host)
        .build()
        .await
        .unwrap();
    rt.start();
    let bounds = rt.config().schedules;
    let spec = |tenant: &str| ScheduleSpec {
        run: "increment".into(),
        cron: Some("0 3 * * *".into()),
        tz: Some("Asia/Tokyo".into()),
        tenant: Some(tenant.into()),
        ..ScheduleSpec::default()
    };
    let schedule =
        |name: &str, tenant: &str| weir::Schedule::new(name, spec(tenant), &bounds).unwrap();
    // The folder's counts against its tenant: one more fits, and may be replaced.
    let added = rt
        .add_schedule(schedule("backup", "default"))
        .await
        .unwrap();
    assert_eq!(added.origin, weir::ScheduleOrigin::Api);
    // 03:00 in Tokyo is 18:00 UTC.
    assert_eq!(added.next_ms.unwrap() % 86_400_000, 18 * 3_600_000);
    rt.add_schedule(schedule("backup", "default"))
        .await
        .unwrap();
    let refused = rt.add_schedule(schedule("another", "default")).await;
    assert!(
        matches!(refused, Err(ScheduleRefused::TooMany(_))),
        "{refused:?}"
    );
    // A schedule made with looser bounds than the runtime's is checked against its own.
    let loose = weir::ScheduleBounds {
        min_interval: Duration::from_millis(1),
        ..bounds
    };
    let fast = ScheduleSpec {
        run: "increment".into(),
        every_ms: Some(10),
        ..ScheduleSpec::default()
    };
    let fast = weir::Schedule::new("backup", fast, &loose).unwrap();
    let refused = rt.add_schedule(fast).await;
    assert!(
        matches!(refused, Err(ScheduleRefused::Invalid(_))),
        "{refused:?}"
    );
    // Another tenant has its own.
    rt.add_schedule(schedule("another", "acme")).await.unwrap();
    assert_eq!(rt.schedules(Some("acme")).await.unwrap().len(), 1);
    assert_eq!(rt.schedules(None).await.unwrap().len(), 3);
    // The folder's is changed in the folder.
    let clash = rt.add_schedule(schedule("nightly", "default")).await;
    assert!(
        matches!(clash, Err(ScheduleRefused::Declared(_))),
        "{clash:?}"
    );
    let clash = rt.remove_schedule("default", "nightly").await;
    assert!(
        matches!(clash, Err(ScheduleRefused::Declared(_))),
        "{clash:?}"
    );
    assert!(rt.remove_schedule("default", "backup").await.unwrap());
    assert!(!rt.remove_schedule("default", "backup").await.unwrap());
    assert_eq!(rt.schedules(Some("default")).await.unwrap().len(), 1);
}

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_api_adds_lists_and_removes_schedules_and_says_what_it_refuses() {
    let folder = PluginFolder::with(&["increment"]);
    folder.write(
        "workflows.toml",
        b"[schedule.nightly]\nrun = \"increment\"\ncron = \"0 2 * * *\"\n",
    );
    let (_server, url) = WeirProcess::serve(folder.path(), &[]);
    let client = reqwest::Client::new();
    use reqwest::Method;
    let at = |name: &str| format!("{url}/v1/schedules/{name}");
    let body = json!({ "run": "increment", "input": { "count": 1 }, "everyMs": 3_600_000 });
    let (status, added) = send(&client, Method::PUT, &at("hourly"), Some(body.clone())).await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["origin"], "api");
    assert_eq!(added["everyMs"], 3_600_000);
    let (status, listed) = send(&client, Method::GET, &format!("{url}/v1/schedules"), None).await;
    assert_eq!(status, 200, "{listed}");
    let names: Vec<&str> = listed["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hourly", "nightly"], "{listed}");
    let (status, one) = send(&client, Method::GET, &at("nightly"), None).await;
    assert_eq!(
        (status, one["origin"].as_str()),
        (200, Some("folder")),
        "{one}"
    );
    assert!(one["nextMs"].as_u64().is_some(), "{one}");

    let bad = json!({ "run": "increment", "cron": "99 * * * *" });
    let (status, refused) = send(&client, Method::PUT, &at("bad"), Some(bad)).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid-schedule");
    let (status, refused) = send(&client, Method::PUT, &at("nightly"), Some(body.clone())).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "schedule-declared-in-folder");
    let unknown = json!({ "run": "incremnt", "everyMs": 1000 });
    let (status, refused) = send(&client, Method::PUT, &at("typo"), Some(unknown)).await;
    assert_eq!(status, 404, "{refused}");
    let too_often = json!({ "run": "increment", "everyMs": 10 });
    let (status, refused) = send(&client, Method::PUT, &at("fast"), Some(too_often)).await;
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shortest"),
        "{refused}"
    );

    let (status, removed) = send(&client, Method::DELETE, &at("hourly"), None).await;
    assert_eq!(status, 200, "{removed}");
    let (status, gone) = send(&client, Method::DELETE, &at("hourly"), None).await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["error"]["code"], "schedule-not-found");
}

/// The runs of `target` in `session` the fleet knows of, oldest first.
/// (Every session's, when `session` is empty.)
async fn runs_of(fleet: &weir::Fleet, target: &str, session: &str) -> Vec<weir::RunSummary> {
    let query = RunQuery {
        target: Some(target.into()),
        session: (!session.is_empty()).then(|| session.into()),
        limit: 500,
        ..RunQuery::default()
    };
    let mut runs = fleet.runs(&query).await.unwrap().runs;
    runs.sort_by_key(|r| r.submitted_ms);
    runs
}

/// Waits until the fleet knows of at least `n` runs of `target` in `session` submitted
/// after `since`; returns every run of it.
async fn until_runs(
    fleet: &weir::Fleet,
    target: &str,
    session: &str,
    since: u64,
    n: usize,
) -> Vec<weir::RunSummary> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = runs_of(fleet, target, session).await;
        if runs.iter().filter(|r| r.submitted_ms >= since).count() >= n {
            return runs;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} runs of {session} after {since} within 60 s: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One run per tick: consecutive runs at least a second apart (two runs of one tick would
/// be milliseconds apart), each tally counted once.
async fn assert_one_run_per_tick(fleet: &weir::Fleet, runs: &[weir::RunSummary], every_ms: u64) {
    for pair in runs.windows(2) {
        let gap = pair[1].submitted_ms - pair[0].submitted_ms;
        assert!(gap >= every_ms / 2, "two runs {gap} ms apart: {runs:#?}");
    }
    let mut tallies = BTreeSet::new();
    for run in runs {
        let Some(status) = fleet.run_status(&run.id).await.unwrap() else {
            continue;
        };
        if let Some(result) = status.result.filter(|r| r.ok) {
            let tally = result.state["tally"].as_u64().unwrap();
            assert!(
                tallies.insert(tally),
                "tally {tally} counted twice: {runs:#?}"
            );
        }
    }
}

/// The issue's checks: a cron schedule fires once per tick with two workers and two
/// servers running (over more than three ticks), and a schedule survives a restart of
/// every weir process; schedules are added, listed and removed from the command line.
#[tokio::test]
async fn a_cron_schedule_fires_once_per_tick_across_the_fleet_and_survives_its_restart() {
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let folder = PluginFolder::with(&["tally"]);
    folder.write(
        "workflows.toml",
        b"[schedule.beat]\nrun = \"tally\"\nsession = \"beats\"\ncron = \"*/2 * * * * *\"\n",
    );
    // A tick held by a killed worker is taken again within seconds.
    let quick = ["--lock-ms", "2000", "--stalled-interval-ms", "1000"];
    let mut workers = [
        WorkerProcess::start(&redis_url, folder.path(), &quick),
        WorkerProcess::start(&redis_url, folder.path(), &quick),
    ];
    let serve = ["--redis", redis_url.as_str()];
    let (mut first, _a) = WeirProcess::serve(folder.path(), &serve);
    let (mut second, _b) = WeirProcess::serve(folder.path(), &serve);
    let nothing = PluginFolder::new();
    let observer = submitter(&redis_url, nothing.path()).await;
    let fleet = observer.fleet().unwrap();

    let runs = until_runs(&fleet, "tally", "beats", 0, 4).await;
    assert_one_run_per_tick(&fleet, &runs, 2000).await;

    // One added from the command line, on a fixed interval.
    let cli = |args: &[&str]| {
        let output = std::process::Command::new(weir_bin())
            .args(args)
            .args(["--redis", &redis_url])
            .env("WEIR_FLEET_KEY", weir_tests::FLEET_KEY)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "weir {args:?}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let added = cli(&[
        "schedules",
        "add",
        "pulse",
        "--run",
        "tally",
        "--session",
        "pulses",
        "--every-ms",
        "2000",
    ]);
    let added: Value = serde_json::from_str(&added).unwrap();
    assert_eq!(added["origin"], "api", "{added}");
    let listed: Value = serde_json::from_str(&cli(&["schedules", "list", "--json"])).unwrap();
    let names: Vec<&str> = listed["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["beat", "pulse"], "{listed}");
    let table = cli(&["schedules", "list"]);
    assert!(
        table.contains("*/2 * * * * *") && table.contains("every 2000 ms"),
        "{table}"
    );
    until_runs(&fleet, "tally", "pulses", 0, 2).await;

    // Every weir process goes; new workers, whose folder is empty, find both schedules in
    // Redis and go on with them (the code they run is published there too).
    for worker in &mut workers {
        worker.kill();
    }
    first.kill();
    second.kill();
    let restarted = weir::now_ms();
    let empty = PluginFolder::new();
    let _again = [
        WorkerProcess::start(&redis_url, empty.path(), &quick),
        WorkerProcess::start(&redis_url, empty.path(), &quick),
    ];
    let beats = until_runs(&fleet, "tally", "beats", restarted, 2).await;
    let pulses = until_runs(&fleet, "tally", "pulses", restarted, 2).await;
    assert_one_run_per_tick(&fleet, &beats, 2000).await;
    assert_one_run_per_tick(&fleet, &pulses, 2000).await;

    cli(&["schedules", "remove", "pulse"]);
    let listed: Value = serde_json::from_str(&cli(&["schedules", "list", "--json"])).unwrap();
    assert_eq!(listed["schedules"].as_array().unwrap().len(), 1, "{listed}");
}

fn sha256(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Through `weir serve --config`: a tenant adds schedules for itself only, of what it may
/// run, up to its bound; other tenants neither see nor remove them; and each tick is
/// charged to the tenant's quotas, skipped once they are spent.
#[tokio::test]
async fn a_tenants_schedules_are_its_own_and_their_ticks_spend_its_quotas() {
    let folder = PluginFolder::with(&["increment", "hello"]);
    let config = format!(
        r#"
[server]
operator_token_sha256 = ["{operator}"]

[host]
max_schedules_per_tenant = 1

[tenants.acme]
token_sha256 = ["{acme}"]
processors = ["increment"]
executions_per_minute = 6

[tenants.globex]
token_sha256 = ["{globex}"]
processors = ["increment", "hello"]
"#,
        operator = sha256("operator"),
        acme = sha256("acme"),
        globex = sha256("globex"),
    );
    let file = folder.path().join("weir.toml");
    std::fs::write(&file, config).unwrap();
    let file = file.to_string_lossy().into_owned();
    let (_server, url) = WeirProcess::serve(folder.path(), &["--config", &file]);
    let client = reqwest::Client::new();
    let call = |token: &'static str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut request = client
            .request(method, format!("{url}{path}"))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    use reqwest::Method;
    let every_second = json!({ "run": "increment", "input": { "count": 1 }, "everyMs": 1000 });
    let (status, added) = call(
        "acme",
        Method::PUT,
        "/v1/schedules/beat",
        Some(every_second.clone()),
    )
    .await;
    assert_eq!(status, 200, "{added}");
    assert_eq!(added["tenant"], "acme");
    let (status, refused) = call(
        "acme",
        Method::PUT,
        "/v1/schedules/more",
        Some(every_second.clone()),
    )
    .await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"]["code"], "too-many-schedules");
    let hello = json!({ "run": "hello", "everyMs": 1000 });
    let (status, refused) = call("acme", Method::PUT, "/v1/schedules/beat", Some(hello)).await;
    assert_eq!(status, 404, "acme may not run hello: {refused}");
    let theirs = json!({ "run": "increment", "everyMs": 1000, "tenant": "globex" });
    let (status, refused) = call("acme", Method::PUT, "/v1/schedules/beat", Some(theirs)).await;
    assert_eq!(status, 403, "{refused}");

    let (_, listed) = call("globex", Method::GET, "/v1/schedules", None).await;
    assert_eq!(listed["schedules"], json!([]), "{listed}");
    let (status, _) = call("globex", Method::DELETE, "/v1/schedules/beat", None).await;
    assert_eq!(status, 404);
    let (_, listed) = call("operator", Method::GET, "/v1/schedules", None).await;
    assert_eq!(listed["schedules"][0]["tenant"], "acme", "{listed}");

    // Four of acme's six executions a minute went to its requests: the ticks get the rest.
    let deadline = Instant::now() + Duration::from_secs(30);
    let beat = loop {
        let (_, beat) = call("acme", Method::GET, "/v1/schedules/beat", None).await;
        let skipped = beat["last"]["skipped"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if skipped.contains("executions_per_minute") {
            break beat;
        }
        assert!(
            Instant::now() < deadline,
            "no tick refused by the quota: {beat}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, stats) = call("acme", Method::GET, "/v1/stats", None).await;
    let ran = stats["processors"]["increment"]["completed"]
        .as_u64()
        .unwrap_or(0);
    assert!((1..=2).contains(&ran), "{ran} ticks ran: {stats} {beat}");
}

/// A schedule follows its table in a watched folder: it starts ticking when the table is
/// written, and stops when it is removed.
#[tokio::test]
async fn a_folders_schedule_comes_and_goes_with_its_table() {
    let folder = PluginFolder::with(&["increment"]);
    let rt = runtime(folder.path()).await;
    let _watcher = rt.watch(folder.path(), Duration::from_millis(50)).unwrap();
    let mut events = rt.subscribe();
    folder.write(
        "workflows.toml",
        b"[schedule.beat]\nrun = \"increment\"\nevery_ms = 1000\n",
    );
    events_until(&mut events, |seen| {
        count(seen, EventKind::ScheduleFired) >= 1
    })
    .await;
    assert_eq!(rt.schedules(None).await.unwrap().len(), 1);
    folder.write("workflows.toml", b"# no schedules\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rt.schedules(None).await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the schedule stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Gone for good: no tick after its removal in the next interval and a half (nothing
    // can be awaited for an event that must not come).
    let removed = weir::now_ms();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while let Some(notice) = events.try_recv() {
        if let Notice::Event(e) = &notice
            && e.event == EventKind::ScheduleFired
        {
            let tick = e.data.as_ref().unwrap()["tickMs"].as_u64().unwrap();
            assert!(tick <= removed, "a removed schedule fired at {tick}");
        }
    }
}

/// Across the fleet, a tick while the previous tick's run goes is skipped, however many
/// ticks have been skipped since that run started: runs never overlap.
#[tokio::test]
async fn the_fleets_ticks_never_start_a_run_while_the_last_run_goes() {
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let folder = PluginFolder::with(&["sleep"]);
    folder.write(
        "workflows.toml",
        b"[schedule.slow]\nrun = \"sleep\"\ninput = { ms = 250 }\nevery_ms = 100\n",
    );
    // Ticks a tenth of a second apart, so that each run outlasts two of them.
    let config = folder.path().join("weir.toml");
    std::fs::write(&config, "[host]\nmin_schedule_interval_ms = 50\n").unwrap();
    let config = config.to_string_lossy().into_owned();
    let _worker = WorkerProcess::start(&redis_url, folder.path(), &["--config", &config]);
    let nothing = PluginFolder::new();
    let observer = submitter(&redis_url, nothing.path()).await;
    let fleet = observer.fleet().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let runs = loop {
        let runs = runs_of(&fleet, "sleep", "").await;
        let done: Vec<_> = runs
            .iter()
            .filter(|r| r.finished_ms.is_some())
            .cloned()
            .collect();
        if done.len() >= 4 {
            break done;
        }
        assert!(
            Instant::now() < deadline,
            "fewer than 4 runs within 60 s: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for pair in runs.windows(2) {
        let ended = pair[0].finished_ms.unwrap();
        assert!(
            pair[1].submitted_ms >= ended,
            "a run started {} ms before the one before it ended: {runs:#?}",
            ended - pair[1].submitted_ms
        );
    }
}

/// A fleet's schedule follows its table in a worker's watched folder: put in Redis when the
/// table is written, removed from it when the table goes.
#[tokio::test]
async fn a_fleets_folder_schedule_comes_and_goes_with_its_table() {
    let redis = RedisServer::start();
    let redis_url = redis.url();
    let folder = PluginFolder::with(&["increment"]);
    let _worker = WorkerProcess::start(&redis_url, folder.path(), &[]);
    let nothing = PluginFolder::new();
    let observer = submitter(&redis_url, nothing.path()).await;
    let listed = || async { observer.schedules(None).await.unwrap() };
    assert!(listed().await.is_empty());
    folder.write(
        "workflows.toml",
        b"[schedule.hourly]\nrun = \"increment\"\ncron = \"0 * * * *\"\n",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while listed().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the schedule never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hourly = listed().await;
    assert_eq!(hourly[0].origin, weir::ScheduleOrigin::Folder);
    assert_eq!(hourly[0].next_ms.unwrap() % 3_600_000, 0, "{hourly:?}");
    folder.write("workflows.toml", b"# none\n");
    while !listed().await.is_empty() {
        assert!(Instant::now() < deadline, "the schedule stayed in Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
