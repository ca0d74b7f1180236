//! Per-processor admission: concurrency limits, rate limits, delays, and queued work that
//! a stopped session drops.

use std::time::{Duration, Instant};

use serde_json::json;
use weir::{CancelHandle, ErrorKind, EventKind, ExecutionRequest, Notice, codes};
use weir_tests::{PluginFolder, runtime};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_runs_attempts_one_at_a_time() {
    let folder = PluginFolder::with(&["sleep"]);
    folder.manifest("sleep", "[queue]\nconcurrency = 1\n");
    let rt = runtime(folder.path()).await;
    assert_eq!(rt.plugin("sleep").unwrap().queue().concurrency, Some(1));
    let started = Instant::now();
    let results = rt
        .execute_many(vec![
            ExecutionRequest::new("sleep", json!({"ms": 200})),
            ExecutionRequest::new("sleep", json!({"ms": 200})),
        ])
        .await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().ok));
    // Run together they would take 200 ms; one at a time, at least 400.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_rate_limit_spaces_executions_out() {
    let folder = PluginFolder::with(&["increment"]);
    folder.manifest(
        "increment",
        "[queue]\nrate_limit = { max = 2, per_ms = 1000 }\n",
    );
    let rt = runtime(folder.path()).await;
    let started = Instant::now();
    for _ in 0..3 {
        assert!(rt.run("increment", json!({})).await.unwrap().ok);
    }
    // Two at once, the third once a token has come back (500 ms later).
    assert!(
        started.elapsed() >= Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_delayed_execution_starts_later_and_can_be_cancelled_while_it_waits() {
    let rt = runtime(PluginFolder::with(&["increment"]).path()).await;
    let started = Instant::now();
    let request = ExecutionRequest::new("increment", json!({})).delay(Duration::from_millis(300));
    assert!(rt.execute(request).await.unwrap().ok);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let cancel = CancelHandle::new();
    cancel.cancel();
    let request = ExecutionRequest::new("increment", json!({}))
        .delay(Duration::from_secs(60))
        .cancel_handle(cancel);
    let result = rt.execute(request).await.unwrap();
    assert_eq!(result.error.unwrap().kind, ErrorKind::Cancelled);
    assert_eq!(result.execution.attempts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_session_drops_its_queued_work() {
    let folder = PluginFolder::with(&["cooperative"]);
    folder.manifest("cooperative", "[queue]\nconcurrency = 1\n");
    let rt = runtime(folder.path()).await;
    let mut events = rt.subscribe();
    let spawn = |id: &str| {
        let rt = rt.clone();
        let mut request = ExecutionRequest::new("cooperative", json!({})).session("busy");
        request.id = Some(id.to_string());
        tokio::spawn(async move { rt.execute(request).await })
    };
    let running = spawn("running");
    let queued = spawn("queued");
    // Wait until the first runs and the second has started (and so is queued behind it).
    let (mut progressed, mut second_started) = (false, false);
    while !(progressed && second_started) {
        match events.recv().await {
            Some(Notice::Event(e)) if e.event == EventKind::Progress => progressed = true,
            Some(Notice::Event(e))
                if e.event == EventKind::ProcessorStarted
                    && e.execution_id.as_deref() == Some("queued") =>
            {
                second_started = true
            }
            Some(_) => {}
            None => panic!("the event stream closed"),
        }
    }
    let report = rt.stop_session("default", "busy").await;
    assert_eq!(report.cancelled, 2);
    for task in [running, queued] {
        let result = task.await.unwrap().unwrap();
        assert_eq!(
            result.error.unwrap().code.as_deref(),
            Some(codes::SESSION_STOPPED)
        );
    }
    assert_eq!(rt.stats().running, 0);
}

/// M9: a tenant that floods a processor's queue does not hold back another tenant's work on
/// it: the victim's one execution starts at the flood's next turn, not after all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_tenant_does_not_starve_another_on_a_shared_processor() {
    let folder = PluginFolder::with(&["sleep"]);
    folder.manifest("sleep", "[queue]\nconcurrency = 1\n");
    let rt = runtime(folder.path()).await;
    let mut events = rt.subscribe();
    let finished = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let spawn = |tenant: &'static str| {
        let rt = rt.clone();
        let finished = finished.clone();
        tokio::spawn(async move {
            let request = ExecutionRequest::new("sleep", json!({"ms": 20})).tenant(tenant);
            let result = rt.execute(request).await.unwrap();
            assert!(result.ok, "{result:?}");
            finished.lock().unwrap().push(tenant);
        })
    };
    let flood: Vec<_> = (0..6).map(|_| spawn("flood")).collect();
    // Every flood execution has started (the first runs, the rest wait in the queue).
    let mut started = 0;
    while started < 6 {
        match events.recv().await {
            Some(Notice::Event(e))
                if e.event == EventKind::ProcessorStarted && e.tenant == "flood" =>
            {
                started += 1
            }
            Some(_) => {}
            None => panic!("the event stream closed"),
        }
    }
    spawn("victim").await.unwrap();
    for task in flood {
        task.await.unwrap();
    }
    let order = finished.lock().unwrap().clone();
    let victim = order.iter().position(|t| *t == "victim").unwrap();
    // The running one, the one whose turn came first, then the victim's.
    assert!(
        victim <= 2,
        "the victim finished after {victim} of the flood: {order:?}"
    );
}
