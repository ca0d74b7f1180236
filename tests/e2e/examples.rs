//! Each example plugin gives its expected state.

use serde_json::json;
use weir::ErrorKind;
use weir_tests::{PluginFolder, run_alone as run, runtime};

#[tokio::test]
async fn hello_greets_the_user_and_keeps_the_rest_of_the_state() {
    let result = run("hello", json!({"user": "Ada", "extra": [1, 2]})).await;
    assert!(result.ok, "{result:?}");
    assert_eq!(result.state["greeting"], "Hello Ada!");
    assert_eq!(result.state["user"], "Ada");
    assert_eq!(result.state["extra"], json!([1, 2]));
    assert_eq!(result.state["metadata"]["version"], 1);
    assert_eq!(result.execution.version.as_deref(), Some("1.0.0"));
}

#[tokio::test]
async fn hello_without_a_user_greets_the_world() {
    let result = run("hello", json!({})).await;
    assert_eq!(result.state["greeting"], "Hello world!");
}

#[tokio::test]
async fn counters_update_count() {
    for (name, input, expected) in [
        ("increment", 41, 42),
        ("double", 21, 42),
        ("add-ten", 32, 42),
    ] {
        let result = run(name, json!({ "count": input })).await;
        assert!(result.ok, "{name}: {result:?}");
        assert_eq!(result.state["count"], expected, "{name}");
    }
    let result = run("increment", json!({})).await;
    assert_eq!(result.state["count"], 1, "a missing count counts as 0");
}

#[tokio::test]
async fn a_counter_refuses_to_overflow() {
    let result = run("increment", json!({ "count": i64::MAX })).await;
    let error = result.error.expect("overflow is an error");
    assert_eq!(error.kind, ErrorKind::Validation);
    assert_eq!(error.code.as_deref(), Some("overflow"));
}

#[tokio::test]
async fn validate_email_accepts_a_plausible_address() {
    let result = run("validate-email", json!({"email": "ada@example.com"})).await;
    assert!(result.ok, "{result:?}");
    assert_eq!(result.state["emailValid"], true);
}

#[tokio::test]
async fn validate_email_rejects_a_bad_address_with_a_validation_error() {
    let result = run("validate-email", json!({"email": "not-an-email"})).await;
    assert!(!result.ok);
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Validation);
    assert_eq!(error.code.as_deref(), Some("invalid-email"));
    assert!(error.message.contains("not-an-email"), "{}", error.message);
    assert_eq!(error.details, Some(json!({"field": "email"})));
    // On failure the state is the last good one: the input, unchanged.
    assert_eq!(result.state["email"], "not-an-email");
    assert_eq!(result.state["metadata"]["version"], 0);
}

#[tokio::test]
async fn a_state_of_the_wrong_shape_is_a_validation_error_from_the_sdk() {
    let result = run("word-count", json!({"text": 5})).await;
    let error = result.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Validation);
    assert_eq!(error.code.as_deref(), Some("invalid-input"));
}

#[tokio::test]
async fn word_count_counts_words() {
    let result = run("word-count", json!({"text": "  the quick\nbrown\tfox "})).await;
    assert!(result.ok, "{result:?}");
    assert_eq!(result.state["words"], 4);
}

#[tokio::test]
async fn each_step_bumps_the_revision_and_keeps_the_creation_time() {
    let folder = PluginFolder::with(&["increment", "double"]);
    let rt = runtime(folder.path()).await;
    let first = rt.run("increment", json!({"count": 1})).await.unwrap();
    let second = rt.run("double", first.state.clone()).await.unwrap();
    assert!(second.ok, "{second:?}");
    assert_eq!(second.state["count"], 4);
    assert_eq!(second.state["metadata"]["version"], 2);
    assert_eq!(
        second.state["metadata"]["createdAt"],
        first.state["metadata"]["createdAt"]
    );
}
