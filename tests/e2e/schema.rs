//! The result document matches the JSON Schema checked into the repository, for successes
//! and every kind of failure.

use serde_json::{Value, json};
use weir_tests::{PluginFolder, runtime};

fn schema() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../schema/result.schema.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("the schema exists"))
        .expect("the schema is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&schema()).expect("the schema is a valid JSON Schema")
}

#[tokio::test]
async fn every_kind_of_result_matches_the_schema() {
    let folder = PluginFolder::with(&["hello", "validate-email", "panic", "huge-output", "relay"]);
    let rt = runtime(folder.path()).await;
    // A parallel that goes on past a failed branch lists it in `failures`.
    rt.register(
        weir::Workflow::parallel("tolerant", ["hello", "panic"])
            .on_failure("panic", weir::OnFailure::Ignore),
    )
    .expect("registers");
    let tolerant = rt.run("tolerant", json!({"user": "Ada"})).await.unwrap();
    assert!(tolerant.ok, "{:?}", tolerant.error);
    assert_eq!(tolerant.failures.len(), 1);
    let results = [
        tolerant,
        rt.run("hello", json!({"user": "Ada"})).await.unwrap(),
        rt.run("validate-email", json!({"email": "x"}))
            .await
            .unwrap(),
        rt.run("panic", json!({})).await.unwrap(),
        rt.run("huge-output", json!({})).await.unwrap(),
        // A nested call to a missing processor: a not-found result document.
        rt.run("relay", json!({"target": "missing"})).await.unwrap(),
        rt.run("hello", json!("not an object")).await.unwrap(),
    ];
    let validator = validator();
    for result in results {
        let doc = serde_json::to_value(&result).unwrap();
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{doc}\n{errors:#?}");
    }
}

#[test]
fn the_schema_rejects_documents_that_break_the_contract() {
    let validator = validator();
    let ok = json!({
        "ok": true,
        "state": {"metadata": {"version": 1, "sessionId": null, "createdAt": "t", "lastUpdated": "t"}},
        "error": null,
        "execution": {
            "id": "e", "processor": "p", "digest": null, "version": null, "tenant": "default",
            "session": null, "attempts": 1, "durationUs": 1, "fuelConsumed": 1, "peakMemoryBytes": 1
        }
    });
    assert!(validator.is_valid(&ok));
    let mut missing_execution = ok.clone();
    missing_execution
        .as_object_mut()
        .unwrap()
        .remove("execution");
    assert!(!validator.is_valid(&missing_execution));
    let mut unknown_kind = ok.clone();
    unknown_kind["ok"] = json!(false);
    unknown_kind["error"] = json!({
        "kind": "oops", "code": null, "message": "m", "retryable": false, "details": null
    });
    assert!(!validator.is_valid(&unknown_kind));
    let mut failed_without_error = ok.clone();
    failed_without_error["ok"] = json!(false);
    assert!(!validator.is_valid(&failed_without_error));
}

#[test]
fn the_schema_lists_exactly_the_contracts_error_kinds() {
    let schema = schema();
    let kinds: Vec<&str> = schema["$defs"]["error"]["properties"]["kind"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let contract: Vec<&str> = weir::ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(kinds, contract);
}
