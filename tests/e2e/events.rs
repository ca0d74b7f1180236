//! Events: every execution announces itself, in order, with its payload; guests' custom
//! events and progress arrive too; a slow subscriber is told what it missed and slows nothing.

use serde_json::json;
use weir::{EventKind, Notice, Workflow};
use weir_tests::{PluginFolder, builder, runtime};

/// Every event already published, in order.
fn drain(sub: &mut weir::Subscription) -> Vec<weir::Event> {
    let mut events = Vec::new();
    while let Some(notice) = sub.try_recv() {
        match notice {
            Notice::Event(e) => events.push((*e).clone()),
            Notice::Lagged { missed } => panic!("lagged by {missed}"),
        }
    }
    events
}

#[tokio::test]
async fn a_chain_announces_itself_and_each_step_in_order() {
    let rt = runtime(PluginFolder::with(&["increment", "double"]).path()).await;
    rt.register(Workflow::chain("calc", ["increment", "double"]))
        .unwrap();
    let mut sub = rt.subscribe();
    let request = weir::ExecutionRequest::new("calc", json!({"count": 1})).session("s1");
    let result = rt.execute(request).await.unwrap();
    assert!(result.ok);
    let events = drain(&mut sub);
    let seen: Vec<(EventKind, &str)> = events
        .iter()
        .map(|e| (e.event, e.processor.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        seen,
        [
            (EventKind::SessionCreated, ""),
            (EventKind::ProcessorStarted, "calc"),
            (EventKind::ProcessorStarted, "increment"),
            (EventKind::ProcessorCompleted, "increment"),
            (EventKind::ProcessorStarted, "double"),
            (EventKind::ProcessorCompleted, "double"),
            (EventKind::ProcessorCompleted, "calc"),
        ]
    );
    let workflow_id = result.execution.id.clone();
    assert_eq!(
        events[0].session.as_deref(),
        Some("s1"),
        "the session opened first"
    );
    assert_eq!(
        events[1].execution_id.as_deref(),
        Some(workflow_id.as_str())
    );
    assert_eq!(events[2].parent_id.as_deref(), Some(workflow_id.as_str()));
    assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
    let done = events.last().unwrap();
    assert_eq!(done.attempts, Some(1));
    assert_eq!(done.duration_us, Some(result.execution.duration_us));
    assert!(
        events
            .iter()
            .all(|e| e.session.as_deref() == Some("s1") && e.tenant == "default")
    );
}

#[tokio::test]
async fn steps_of_one_processor_are_told_apart_by_their_place_in_the_workflow() {
    let rt = runtime(PluginFolder::with(&["increment"]).path()).await;
    weir_tests::assert_steps_name_their_places(&rt).await;
}

#[tokio::test]
async fn failures_and_retries_carry_their_errors() {
    let rt = runtime(PluginFolder::with(&["flaky"]).path()).await;
    let mut sub = rt.subscribe();
    let result = rt.run("flaky", json!({"succeedOn": 3})).await.unwrap();
    assert!(result.ok);
    let events = drain(&mut sub);
    let retries: Vec<_> = events
        .iter()
        .filter(|e| e.event == EventKind::ProcessorRetrying)
        .collect();
    assert_eq!(retries.len(), 2);
    assert_eq!(retries[0].attempt, Some(1));
    assert_eq!(retries[1].attempt, Some(2));
    assert_eq!(
        retries[0].error.as_ref().unwrap().kind,
        weir::ErrorKind::Network
    );
    assert!(retries[0].data.as_ref().unwrap()["delayMs"].is_u64());
    assert_eq!(events.last().unwrap().attempts, Some(3));

    let failed = rt.run("flaky", json!({"succeedOn": 99})).await.unwrap();
    let last = drain(&mut sub).pop().unwrap();
    assert_eq!(last.event, EventKind::ProcessorFailed);
    assert_eq!(last.error, failed.error);
}

#[tokio::test]
async fn guests_custom_events_arrive_with_their_data() {
    let rt = runtime(PluginFolder::with(&["word-count"]).path()).await;
    let mut sub = rt.subscribe();
    let result = rt
        .run("word-count", json!({"text": "a b c"}))
        .await
        .unwrap();
    let custom: Vec<_> = drain(&mut sub)
        .into_iter()
        .filter(|e| e.event == EventKind::Custom)
        .collect();
    assert_eq!(custom.len(), 1);
    assert_eq!(custom[0].name.as_deref(), Some("counted"));
    assert_eq!(custom[0].data, Some(json!({"words": 3})));
    assert_eq!(
        custom[0].execution_id.as_deref(),
        Some(result.execution.id.as_str())
    );
    assert_eq!(custom[0].processor.as_deref(), Some("word-count"));
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_and_slows_nothing() {
    let folder = PluginFolder::with(&["increment"]);
    let rt = builder(folder.path())
        .host_config(weir::HostConfig {
            event_capacity: 8,
            ..Default::default()
        })
        .build()
        .await
        .unwrap();
    rt.start();
    let mut slow = rt.subscribe();
    for i in 0..20 {
        assert!(rt.run("increment", json!({"count": i})).await.unwrap().ok);
    }
    // 20 executions made 40 events; only the last 8 were kept for this subscriber.
    match slow.try_recv() {
        Some(Notice::Lagged { missed }) => assert_eq!(missed, 32),
        other => panic!("expected a lag notice, got {other:?}"),
    }
    let rest = drain(&mut slow);
    assert_eq!(rest.len(), 8);
    assert_eq!(rest.last().unwrap().event, EventKind::ProcessorCompleted);
}
