//! The local runtime's life and its sessions: start and stop, cancellation by id, session
//! state with compare-and-set, stopping a session, statistics, and many executions at once.

use std::time::{Duration, Instant};

use serde_json::json;
use weir::{ErrorKind, EventKind, ExecutionRequest, Notice, RuntimeError, RuntimeState, codes};
use weir_tests::{PluginFolder, builder, next_event, runtime};

/// Waits for the first progress event: proof a guest is running.
async fn until_progress(events: &mut weir::Subscription) {
    next_event(events, |e| e.event == EventKind::Progress).await;
}

#[tokio::test]
async fn executing_before_start_or_after_stop_is_refused() {
    let folder = PluginFolder::with(&["increment"]);
    let rt = builder(folder.path()).build().await.unwrap();
    assert_eq!(rt.state(), RuntimeState::Created);
    assert_eq!(
        rt.run("increment", json!({})).await.unwrap_err(),
        RuntimeError::NotStarted
    );
    rt.start();
    assert!(rt.run("increment", json!({})).await.unwrap().ok);
    let report = rt.stop(Duration::from_secs(1)).await;
    assert_eq!(report.cancelled, 0);
    assert_eq!(rt.state(), RuntimeState::Stopped);
    assert_eq!(
        rt.run("increment", json!({})).await.unwrap_err(),
        RuntimeError::Stopped
    );
    rt.start();
    assert!(
        rt.run("increment", json!({})).await.unwrap().ok,
        "a stopped runtime restarts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_cancels_what_outlives_the_grace_period() {
    let rt = runtime(PluginFolder::with(&["cooperative"]).path()).await;
    let mut events = rt.subscribe();
    let running = {
        let rt = rt.clone();
        tokio::spawn(async move { rt.run("cooperative", json!({})).await })
    };
    until_progress(&mut events).await;
    let started = Instant::now();
    let report = rt.stop(Duration::from_millis(200)).await;
    assert_eq!(report.cancelled, 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let result = running.await.unwrap().unwrap();
    let error = result.error.expect("cancelled");
    assert_eq!(error.kind, ErrorKind::Cancelled);
    assert_eq!(error.code.as_deref(), Some(codes::RUNTIME_STOPPED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_by_id_stops_a_running_execution() {
    let rt = runtime(PluginFolder::with(&["cooperative"]).path()).await;
    let mut events = rt.subscribe();
    let running = {
        let rt = rt.clone();
        let mut request = ExecutionRequest::new("cooperative", json!({}));
        request.id = Some("job-42".into());
        tokio::spawn(async move { rt.execute(request).await })
    };
    until_progress(&mut events).await;
    assert!(rt.cancel("job-42"));
    let result = running.await.unwrap().unwrap();
    assert_eq!(result.execution.id, "job-42");
    assert_eq!(
        result.error.unwrap().code.as_deref(),
        Some(codes::CANCELLED_BY_REQUEST)
    );
    assert!(!rt.cancel("job-42"), "nothing runs under that id any more");
}

#[tokio::test]
async fn a_session_keeps_its_state_and_two_sessions_never_share_it() {
    let rt = runtime(PluginFolder::with(&["increment"]).path()).await;
    for _ in 0..2 {
        let result = rt
            .execute_in_session("s1", "increment", json!({"count": 10}))
            .await
            .unwrap();
        assert!(result.ok, "{:?}", result.error);
    }
    rt.execute_in_session("s2", "increment", json!({"count": 100}))
        .await
        .unwrap();
    let s1 = rt
        .session_state("default", "s1")
        .await
        .expect("s1 has state");
    assert_eq!(
        s1["metadata"]["version"], 2,
        "revisions continue across executions"
    );
    assert_eq!(s1["metadata"]["sessionId"], "s1");
    let s2 = rt
        .session_state("default", "s2")
        .await
        .expect("s2 has state");
    assert_eq!(s2["count"], 101);
    assert_eq!(s2["metadata"]["version"], 1);
    let other_tenant = ExecutionRequest::new("increment", json!({}))
        .tenant("acme")
        .session("s1");
    rt.execute(other_tenant).await.unwrap();
    let acme = rt.session_state("acme", "s1").await.unwrap();
    assert_eq!(
        acme["metadata"]["version"], 1,
        "another tenant's s1 is another session"
    );
}

#[tokio::test]
async fn a_stale_writer_gets_a_conflict_not_a_silent_overwrite() {
    let rt = runtime(PluginFolder::with(&["increment"]).path()).await;
    let first = rt
        .execute_in_session("s", "increment", json!({"count": 1}))
        .await
        .unwrap();
    let base = first.state.clone();
    let winner = rt
        .execute_in_session("s", "increment", base.clone())
        .await
        .unwrap();
    assert!(winner.ok);
    let loser = rt.execute_in_session("s", "increment", base).await.unwrap();
    let error = loser.error.expect("a conflict");
    assert_eq!(error.kind, ErrorKind::Conflict);
    assert_eq!(error.code.as_deref(), Some(codes::STATE_CONFLICT));
    assert_eq!(error.details.unwrap()["current"], 2);
    let stored = rt.session_state("default", "s").await.unwrap();
    assert_eq!(stored["count"], 3, "the winner's state stands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_session_cancels_its_work_and_removes_its_state() {
    let rt = runtime(PluginFolder::with(&["cooperative", "tally"]).path()).await;
    rt.execute_in_session("doomed", "tally", json!({}))
        .await
        .unwrap();
    assert!(rt.session_state("default", "doomed").await.is_some());
    let mut events = rt.subscribe();
    // A guest that ignores cancellation: stopping the session must stop it for real.
    let running = {
        let rt = rt.clone();
        tokio::spawn(async move {
            rt.execute_in_session("doomed", "cooperative", json!({"stubborn": true}))
                .await
        })
    };
    until_progress(&mut events).await;
    let started = Instant::now();
    let report = rt.stop_session("default", "doomed").await;
    assert_eq!(report.cancelled, 1);
    assert!(report.removed_state);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let result = running.await.unwrap().unwrap();
    let error = result.error.expect("cancelled");
    assert_eq!(error.kind, ErrorKind::Cancelled);
    assert_eq!(error.code.as_deref(), Some(codes::SESSION_STOPPED));
    assert!(rt.session_state("default", "doomed").await.is_none());
    assert!(rt.session_stats("default", "doomed").is_none());
    // Its key-value data is gone too: the tally starts again.
    let again = rt
        .execute_in_session("doomed", "tally", json!({}))
        .await
        .unwrap();
    assert_eq!(again.state["tally"], 1);
    let mut stopped = false;
    while let Some(Notice::Event(e)) = events.try_recv() {
        if e.event == EventKind::SessionStopped {
            assert_eq!(e.data.as_ref().unwrap()["cancelled"], 1);
            stopped = true;
        }
    }
    assert!(stopped, "a session:stopped event");
}

#[tokio::test]
async fn stats_count_what_ran_and_sessions_are_listed() {
    let rt = runtime(PluginFolder::with(&["increment", "validate-email"]).path()).await;
    rt.run("increment", json!({})).await.unwrap();
    rt.execute_in_session("a", "increment", json!({}))
        .await
        .unwrap();
    rt.run("validate-email", json!({"email": "x"}))
        .await
        .unwrap();
    let stats = rt.stats();
    assert_eq!(stats.state, RuntimeState::Running);
    assert_eq!(stats.running, 0);
    let increment = &stats.processors["increment"];
    assert_eq!(
        (increment.started, increment.completed, increment.failed),
        (2, 2, 0)
    );
    assert_eq!(stats.processors["validate-email"].failed, 1);
    let sessions = rt.active_sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        (sessions[0].tenant.as_str(), sessions[0].session.as_str()),
        ("default", "a")
    );
    assert_eq!(sessions[0].executions, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_many_returns_results_in_request_order() {
    let rt = runtime(PluginFolder::with(&["increment"]).path()).await;
    let requests = (0..8)
        .map(|i| ExecutionRequest::new("increment", json!({ "count": i })))
        .chain([ExecutionRequest::new("nope", json!({}))])
        .collect();
    let results = rt.execute_many(requests).await;
    for (i, result) in results[..8].iter().enumerate() {
        assert_eq!(result.as_ref().unwrap().state["count"], i + 1);
    }
    assert!(matches!(results[8], Err(RuntimeError::NotFound { .. })));
}

/// A request's deadline bounds the whole execution, its retries included: a processor that
/// would sleep for two seconds is cut at the deadline with `timeout` / `deadline-exceeded`.
#[tokio::test]
async fn a_request_deadline_bounds_the_whole_execution() {
    let folder = PluginFolder::with(&["sleep"]);
    folder.manifest("sleep", "[limits]\ntimeout_ms = 20000\n");
    let rt = runtime(folder.path()).await;
    let started = Instant::now();
    let request =
        ExecutionRequest::new("sleep", json!({"ms": 2_000})).deadline(Duration::from_millis(300));
    let result = rt.execute(request).await.unwrap();
    let error = result.error.expect("cut at its deadline");
    assert_eq!(error.kind, ErrorKind::Timeout, "{error:?}");
    assert_eq!(error.code.as_deref(), Some(codes::DEADLINE_EXCEEDED));
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
}
