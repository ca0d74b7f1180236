//! Host features a processor uses: retries, nested calls, the session store, operator
//! configuration and cancellation.

use std::time::{Duration, Instant};

use serde_json::json;
use weir::{CancelHandle, ErrorKind, ExecutionRequest, codes};
use weir_tests::{PluginFolder, next_event, runtime};

#[tokio::test]
async fn a_retryable_failure_is_retried_until_it_succeeds() {
    let folder = PluginFolder::with(&["flaky"]);
    let result = runtime(folder.path())
        .await
        .run("flaky", json!({"succeedOn": 3}))
        .await
        .unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["succeededOn"], 3);
    assert_eq!(result.execution.attempts, 3);
}

#[tokio::test]
async fn retries_wait_the_backoff_between_attempts() {
    let folder = PluginFolder::with(&["flaky"]);
    folder.manifest(
        "flaky",
        "[retry]\nmax_attempts = 3\nbackoff = \"fixed\"\nbackoff_ms = 100\njitter = false\n",
    );
    let rt = runtime(folder.path()).await;
    let started = Instant::now();
    let result = rt.run("flaky", json!({"succeedOn": 3})).await.unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.execution.attempts, 3);
    // Two waits of 100 ms between three attempts.
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_caller_can_lower_but_not_raise_the_attempts() {
    let rt = runtime(PluginFolder::with(&["flaky"]).path()).await;
    let lowered = rt
        .execute(ExecutionRequest::new("flaky", json!({"succeedOn": 3})).max_attempts(2))
        .await
        .unwrap();
    assert_eq!(lowered.execution.attempts, 2);
    assert!(!lowered.ok);
    let raised = rt
        .execute(ExecutionRequest::new("flaky", json!({"succeedOn": 99})).max_attempts(50))
        .await
        .unwrap();
    assert_eq!(raised.execution.attempts, 5, "flaky declares five");
}

#[tokio::test]
async fn retries_stop_at_the_policys_maximum_with_the_last_error() {
    let folder = PluginFolder::with(&["flaky"]);
    let result = runtime(folder.path())
        .await
        .run("flaky", json!({"succeedOn": 99}))
        .await
        .unwrap();
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Network);
    assert!(error.message.contains("attempt 5"), "{}", error.message);
    assert_eq!(result.execution.attempts, 5);
}

#[tokio::test]
async fn the_operator_manifest_overrides_the_retry_policy() {
    let folder = PluginFolder::with(&["flaky"]);
    folder.manifest(
        "flaky",
        "[retry]\nmax_attempts = 2\nbackoff = \"fixed\"\nbackoff_ms = 1\n",
    );
    let result = runtime(folder.path())
        .await
        .run("flaky", json!({"succeedOn": 3}))
        .await
        .unwrap();
    assert!(!result.ok);
    assert_eq!(result.execution.attempts, 2);
}

#[tokio::test]
async fn a_non_retryable_failure_is_not_retried() {
    let folder = PluginFolder::with(&["flaky"]);
    // flaky declares five attempts, but a validation error is never worth another.
    let result = runtime(folder.path())
        .await
        .run("flaky", json!({"succeedOn": "soon"}))
        .await
        .unwrap();
    assert_eq!(result.error.expect("an error").kind, ErrorKind::Validation);
    assert_eq!(result.execution.attempts, 1);
}

#[tokio::test]
async fn a_guest_can_call_another_processor() {
    let folder = PluginFolder::with(&["relay", "increment"]);
    let result = runtime(folder.path())
        .await
        .run("relay", json!({"target": "increment", "count": 1}))
        .await
        .unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["count"], 2);
    assert_eq!(result.state["relayedAt"], 0);
}

#[tokio::test]
async fn nested_calls_count_depth_and_stop_past_the_maximum() {
    let folder = PluginFolder::with(&["relay", "increment"]);
    let rt = runtime(folder.path()).await;
    let chain = |relays: usize| {
        let mut forward = vec![json!("relay"); relays];
        forward.push(json!("increment"));
        json!({"target": "relay", "forward": forward, "count": 0})
    };
    // The top relay calls a relay (depth 1), which calls the eight forwarded relays (depths
    // 2 to 9), the last of which calls increment at depth 10: exactly the default maximum.
    let ok = rt.run("relay", chain(8)).await.unwrap();
    assert!(ok.ok, "{:?}", ok.error);
    assert_eq!(ok.state["count"], 1);
    // One more relay: the call to increment would be 11 deep, and fails before it runs.
    let too_deep = rt.run("relay", chain(9)).await.unwrap();
    let error = too_deep.error.expect("an error");
    assert_eq!(
        error.code.as_deref(),
        Some(codes::CALL_DEPTH_EXCEEDED),
        "{error}"
    );
}

#[tokio::test]
async fn calling_an_unknown_processor_fails_with_not_found() {
    let folder = PluginFolder::with(&["relay"]);
    let result = runtime(folder.path())
        .await
        .run("relay", json!({"target": "ghost"}))
        .await
        .unwrap();
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::NotFound);
    assert_eq!(error.code.as_deref(), Some(codes::PROCESSOR_NOT_FOUND));
}

#[tokio::test]
async fn session_data_persists_within_a_session_and_nowhere_else() {
    let folder = PluginFolder::with(&["tally"]);
    let rt = runtime(folder.path()).await;
    let tally = |tenant: &str, session: &str| {
        let request = ExecutionRequest::new("tally", json!({}))
            .tenant(tenant)
            .session(session);
        let rt = rt.clone();
        async move { rt.execute(request).await.unwrap().state["tally"].clone() }
    };
    assert_eq!(tally("acme", "s1").await, 1);
    assert_eq!(tally("acme", "s1").await, 2);
    assert_eq!(tally("acme", "s2").await, 1);
    assert_eq!(
        tally("globex", "s1").await,
        1,
        "another tenant's s1 is another session"
    );
    assert_eq!(tally("acme", "s1").await, 3);
}

#[tokio::test]
async fn the_session_store_needs_a_session() {
    let folder = PluginFolder::with(&["tally"]);
    let result = runtime(folder.path())
        .await
        .run("tally", json!({}))
        .await
        .unwrap();
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Configuration);
    assert_eq!(error.code.as_deref(), Some("no-session"));
}

#[tokio::test]
async fn a_plugin_reads_the_operators_configuration() {
    let folder = PluginFolder::with(&["hello"]);
    folder.manifest("hello", "[config]\ngreeting = \"Hi\"\n");
    let result = runtime(folder.path())
        .await
        .run("hello", json!({"user": "Ada"}))
        .await
        .unwrap();
    assert_eq!(result.state["greeting"], "Hi Ada!");
}

/// Runs `cooperative` until it reports progress (so it is demonstrably running), cancels
/// it, and returns the result and how long the cancellation took to end it.
async fn cancel_cooperative(input: serde_json::Value) -> (weir::ExecutionResult, Duration) {
    let folder = PluginFolder::with(&["cooperative"]);
    let rt = runtime(folder.path()).await;
    let mut events = rt.subscribe();
    let cancel = CancelHandle::new();
    let request = ExecutionRequest::new("cooperative", input).cancel_handle(cancel.clone());
    let execution = rt.execute(request);
    tokio::pin!(execution);
    let progressed = next_event(&mut events, |e| e.event == weir::EventKind::Progress);
    tokio::select! {
        _ = progressed => {}
        result = &mut execution => panic!("finished before it was cancelled: {result:?}"),
    }
    let cancelled_at = Instant::now();
    cancel.cancel();
    let result = execution.await;
    (result.unwrap(), cancelled_at.elapsed())
}

#[tokio::test]
async fn cancellation_reaches_a_cooperative_guest_softly() {
    let (result, took) = cancel_cooperative(json!({})).await;
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Cancelled);
    assert_eq!(error.code.as_deref(), Some(codes::CANCELLED_BY_REQUEST));
    // The guest's own message: it noticed and stopped itself.
    assert!(
        error.message.contains("the guest stopped itself"),
        "{}",
        error.message
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn a_guest_that_ignores_cancellation_is_stopped_after_the_grace_period() {
    let (result, took) = cancel_cooperative(json!({"stubborn": true})).await;
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Cancelled);
    assert_eq!(error.code.as_deref(), Some(codes::CANCELLED_BY_REQUEST));
    assert!(error.message.contains("grace period"), "{}", error.message);
    // The default grace period is 100 ms; the guest's own timeout is 10 s.
    assert!(took >= Duration::from_millis(100), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
}

#[tokio::test]
async fn an_execution_cancelled_before_it_starts_never_runs() {
    let folder = PluginFolder::with(&["increment"]);
    let rt = runtime(folder.path()).await;
    let cancel = CancelHandle::new();
    cancel.cancel();
    let result = rt
        .execute(ExecutionRequest::new("increment", json!({})).cancel_handle(cancel))
        .await
        .unwrap();
    assert_eq!(result.error.expect("an error").kind, ErrorKind::Cancelled);
    assert_eq!(result.execution.attempts, 0);
}
