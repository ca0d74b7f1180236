//! Workflows: chain, parallel, route, nesting and deadlines, defined in Rust or in
//! `workflows.toml`, run like processors.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weir::{ErrorKind, Workflow, codes};
use weir_tests::{PluginFolder, runtime};

/// A folder with `plugins` and a `workflows.toml` holding `workflows`.
async fn with_workflows(plugins: &[&str], workflows: &str) -> (PluginFolder, weir::Runtime) {
    let folder = PluginFolder::with(plugins);
    folder.write("workflows.toml", workflows.as_bytes());
    let rt = runtime(folder.path()).await;
    (folder, rt)
}

fn invalid_reason(rt: &weir::Runtime, name: &str) -> String {
    let catalog = rt.catalog();
    match catalog.invalid_workflows.get(name) {
        Some(invalid) => invalid.reason.clone(),
        None => panic!(
            "`{name}` should be invalid; catalog: {:?}",
            catalog.invalid_workflows
        ),
    }
}

#[tokio::test]
async fn a_chain_passes_each_output_to_the_next_step() {
    let (_f, rt) = with_workflows(
        &["increment", "double", "add-ten"],
        "[workflow.calc]\nchain = [\"increment\", \"double\", \"add-ten\"]\n",
    )
    .await;
    let result = rt.run("calc", json!({"count": 5})).await.unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["count"], 22);
    assert_eq!(
        result.state["metadata"]["version"], 3,
        "one revision per step"
    );
    assert_eq!(result.execution.processor, "calc");
    assert_eq!(result.execution.digest.as_ref().map(String::len), Some(64));
    assert!(result.execution.fuel_consumed > 0);
}

#[tokio::test]
async fn a_failing_chain_names_the_step_and_keeps_the_last_good_state() {
    let (_f, rt) = with_workflows(
        &["increment", "validate-email", "double"],
        "[workflow.signup]\nchain = [\"increment\", \"validate-email\", \"double\"]\n",
    )
    .await;
    let result = rt
        .run("signup", json!({"count": 1, "email": "nope"}))
        .await
        .unwrap();
    let error = result.error.expect("the chain fails");
    assert_eq!(error.kind, ErrorKind::Validation, "the step's kind is kept");
    assert_eq!(error.code.as_deref(), Some("invalid-email"));
    assert!(
        error
            .message
            .contains("step 2 (`validate-email`) of `signup`"),
        "{}",
        error.message
    );
    let details = error.details.expect("details");
    assert_eq!(details["failed"]["index"], 1);
    assert_eq!(details["failed"]["name"], "validate-email");
    // The state after step 1: incremented once, never doubled.
    assert_eq!(result.state["count"], 2);
    assert_eq!(result.state["metadata"]["version"], 1);
}

#[tokio::test]
async fn parallel_branches_that_each_append_keep_every_item() {
    let rt = runtime(PluginFolder::with(&["stamp"]).path()).await;
    rt.register(Workflow::parallel("stamps", ["stamp", "stamp", "stamp"]))
        .expect("valid");
    let result = rt
        .run("stamps", json!({"items": ["original"]}))
        .await
        .unwrap();
    assert!(result.ok, "{:?}", result.error);
    let items = result.state["items"].as_array().expect("items");
    assert_eq!(items.len(), 4, "{items:?}");
    assert_eq!(items[0], "original");
    let mut stamped: Vec<&Value> = items[1..].iter().collect();
    stamped.sort_by_key(|v| v.as_str());
    stamped.dedup();
    assert_eq!(stamped.len(), 3, "three distinct items: {items:?}");
    assert_eq!(result.state["metadata"]["version"], 1);
}

#[tokio::test]
async fn parallel_results_merge_across_fields() {
    let (_f, rt) = with_workflows(
        &["increment", "hello"],
        "[workflow.fan]\nparallel = [\"increment\", \"hello\"]\n",
    )
    .await;
    let result = rt
        .run("fan", json!({"count": 5, "user": "Ada"}))
        .await
        .unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["count"], 6);
    assert_eq!(result.state["greeting"], "Hello Ada!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_branch_stops_a_sibling_that_loops_forever() {
    let folder = PluginFolder::with(&["validate-email", "spin"]);
    // Give the looping sibling a long timeout: only cancellation can stop it in time.
    folder.manifest("spin", "[limits]\ntimeout_ms = 60000\n");
    let rt = runtime(folder.path()).await;
    rt.register(Workflow::parallel("race", ["spin", "validate-email"]))
        .expect("valid");
    let started = Instant::now();
    let result = rt.run("race", json!({"email": "nope"})).await.unwrap();
    let elapsed = started.elapsed();
    let error = result.error.expect("the parallel fails");
    assert!(
        error.message.contains("branch 2 (`validate-email`)"),
        "{}",
        error.message
    );
    let branches = &error.details.as_ref().expect("details")["branches"];
    assert_eq!(branches[0]["branch"], "spin");
    assert_eq!(branches[0]["kind"], "cancelled");
    assert_eq!(branches[0]["code"], codes::CANCELLED_BY_SIBLING);
    // The sibling was interrupted (its result is in), not abandoned, and long before its
    // own timeout.
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(
        result.state["email"], "nope",
        "the last good state is the input"
    );
}

#[tokio::test]
async fn a_custom_merge_receives_the_input_and_every_result() {
    let folder = PluginFolder::with(&["increment", "double", "sum-counts"]);
    let rt = runtime(folder.path()).await;
    rt.register(Workflow::parallel("both", ["increment", "double"]).merge("sum-counts"))
        .expect("valid");
    let result = rt
        .run("both", json!({"count": 3, "note": "kept"}))
        .await
        .unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["count"], 4 + 6);
    assert_eq!(result.state["branches"], json!(["increment", "double"]));
    assert_eq!(result.state["note"], "kept");
    assert_eq!(
        result.state["metadata"]["version"], 1,
        "the host owns metadata"
    );
}

#[tokio::test]
async fn a_route_picks_its_target_by_pointer_with_and_without_fallback() {
    let (_f, rt) = with_workflows(
        &["increment", "hello", "double"],
        r#"
[workflow.pick]
route = "/kind"
routes = { inc = "increment", greet = "hello" }
fallback = "double"

[workflow.strict]
route = "/kind"
routes = { inc = "increment" }
"#,
    )
    .await;
    let inc = rt
        .run("pick", json!({"kind": "inc", "count": 1}))
        .await
        .unwrap();
    assert_eq!(inc.state["count"], 2);
    let greet = rt
        .run("pick", json!({"kind": "greet", "user": "Ada"}))
        .await
        .unwrap();
    assert_eq!(greet.state["greeting"], "Hello Ada!");
    let other = rt
        .run("pick", json!({"kind": "other", "count": 4}))
        .await
        .unwrap();
    assert_eq!(other.state["count"], 8, "the fallback doubles");
    let missing = rt.run("strict", json!({"kind": "other"})).await.unwrap();
    let error = missing.error.expect("no route");
    assert_eq!(error.kind, ErrorKind::NotFound);
    assert_eq!(error.code.as_deref(), Some(codes::NO_ROUTE));
    assert!(
        error.message.contains("`other`") && error.message.contains("`strict`"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_route_can_ask_a_selector_processor_for_its_key() {
    let folder = PluginFolder::with(&["classify", "increment", "double"]);
    let rt = runtime(folder.path()).await;
    rt.register(
        Workflow::route_by_processor("size", "classify")
            .route("small", "increment")
            .route("big", "double"),
    )
    .expect("valid");
    assert_eq!(
        rt.run("size", json!({"count": 3})).await.unwrap().state["count"],
        4
    );
    assert_eq!(
        rt.run("size", json!({"count": 30})).await.unwrap().state["count"],
        60
    );
}

#[tokio::test]
async fn workflows_nest_and_guests_can_call_them() {
    let folder = PluginFolder::with(&["increment", "double", "relay"]);
    let rt = runtime(folder.path()).await;
    rt.register(Workflow::chain("inc-twice", ["increment", "increment"]))
        .expect("valid");
    rt.register(Workflow::chain("outer", ["inc-twice", "double"]))
        .expect("valid");
    assert_eq!(
        rt.run("outer", json!({"count": 1})).await.unwrap().state["count"],
        6
    );
    let called = rt
        .run("relay", json!({"target": "outer", "count": 1}))
        .await
        .unwrap();
    assert!(called.ok, "{:?}", called.error);
    assert_eq!(called.state["count"], 6);
}

#[tokio::test]
async fn a_workflow_timeout_bounds_its_steps() {
    let folder = PluginFolder::with(&["increment", "spin"]);
    folder.manifest("spin", "[limits]\ntimeout_ms = 60000\n");
    let rt = runtime(folder.path()).await;
    rt.register(Workflow::chain("slow", ["increment", "spin"]).timeout(Duration::from_millis(300)))
        .expect("valid");
    let started = Instant::now();
    let result = rt.run("slow", json!({"count": 0})).await.unwrap();
    let error = result.error.expect("it times out");
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert!(
        error.message.contains("step 2 (`spin`)"),
        "{}",
        error.message
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(result.state["count"], 1);
}

#[tokio::test]
async fn an_unknown_name_in_the_file_is_rejected_with_its_line() {
    let (_f, rt) = with_workflows(
        &["increment"],
        "[workflow.good]\nchain = [\"increment\"]\n\n[workflow.typo]\nchain = [\n  \"increment\",\n  \"incremnt\",\n]\n",
    )
    .await;
    let reason = invalid_reason(&rt, "typo");
    assert!(
        reason.contains("workflows.toml:7: step 2 refers to `incremnt`"),
        "{reason}"
    );
    assert!(reason.contains("did you mean `increment`?"), "{reason}");
    assert!(
        rt.run("good", json!({})).await.unwrap().ok,
        "the others keep serving"
    );
    let refused = rt.run("typo", json!({})).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("the workflow `typo` is invalid"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_cycle_in_the_file_is_rejected_with_its_line() {
    let (_f, rt) = with_workflows(
        &["increment"],
        "[workflow.a]\nchain = [\"b\"]\n\n[workflow.b]\nchain = [\"increment\", \"a\"]\n",
    )
    .await;
    assert!(invalid_reason(&rt, "a").contains("workflows.toml:1: it contains itself: a → b → a"));
    assert!(invalid_reason(&rt, "b").contains("workflows.toml:4: it contains itself"));
}

#[tokio::test]
async fn an_unreadable_workflows_file_leaves_the_processors_serving() {
    let (_f, rt) = with_workflows(&["increment"], "[workflow.a\nchain = 3\n").await;
    let error = rt
        .catalog()
        .workflows_file_error
        .clone()
        .expect("a file error");
    assert!(error.contains("workflows.toml:1:"), "{error}");
    assert!(rt.run("increment", json!({})).await.unwrap().ok);
}

#[tokio::test]
async fn registering_checks_the_definition_and_unregistering_invalidates_users() {
    let rt = runtime(PluginFolder::with(&["increment"]).path()).await;
    let err = rt.register(Workflow::chain("bad", ["nope"])).unwrap_err();
    assert!(err.reason.contains("refers to `nope`"), "{}", err.reason);
    assert!(
        rt.workflow("bad").is_none(),
        "a failed registration changes nothing"
    );
    rt.register(Workflow::chain("base", ["increment"]))
        .expect("valid");
    rt.register(Workflow::chain("user", ["base"]))
        .expect("valid");
    assert!(rt.unregister("base"));
    assert!(invalid_reason(&rt, "user").contains("refers to `base`"));
    rt.register(Workflow::chain("base", ["increment"]))
        .expect("valid again");
    assert!(
        rt.workflow("user").is_some(),
        "users come back when the name resolves"
    );
}

fn emails(bad: &[usize]) -> Value {
    let items: Vec<Value> = (0..10)
        .map(|i| {
            if bad.contains(&i) {
                json!({ "email": format!("broken-{i}") })
            } else {
                json!({ "email": format!("user{i}@example.com") })
            }
        })
        .collect();
    json!({ "items": items })
}

#[tokio::test]
async fn a_batch_reports_every_failure_under_collect() {
    let (_f, rt) = with_workflows(
        &["validate-email"],
        "[workflow.check-all]\nbatch = \"validate-email\"\nconcurrency = 3\npolicy = \"collect\"\n",
    )
    .await;
    let result = rt.run("check-all", emails(&[2, 5, 9])).await.unwrap();
    assert!(result.ok, "collect: the batch itself succeeds");
    let items = result.items.as_ref().expect("per-item results");
    assert_eq!(items.len(), 10);
    let failed: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.ok)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(failed, [2, 5, 9], "all three failures, in input order");
    for i in failed {
        assert_eq!(
            items[i].error.as_ref().unwrap().code.as_deref(),
            Some("invalid-email")
        );
    }
    assert_eq!(items[0].state["emailValid"], true);
    // The document is {ok, items}; the state (for a chain to continue with) is the items.
    let document = serde_json::to_value(result.document()).unwrap();
    assert_eq!(document["ok"], true);
    assert_eq!(document["items"].as_array().map(Vec::len), Some(10));
    assert!(document.get("state").is_none());
    assert_eq!(result.state["items"][0]["emailValid"], true);
}

#[tokio::test]
async fn an_all_or_nothing_batch_fails_with_its_first_failure() {
    let rt = runtime(PluginFolder::with(&["validate-email"]).path()).await;
    rt.register(
        Workflow::batch("strict", "validate-email")
            .concurrency(1)
            .policy(weir::BatchPolicy::AllOrNothing),
    )
    .expect("valid");
    let result = rt.run("strict", emails(&[3])).await.unwrap();
    assert!(!result.ok);
    let error = result.error.as_ref().expect("an error");
    assert!(
        error.message.contains("item 4 (`validate-email`)"),
        "{}",
        error.message
    );
    let items = result.items.as_ref().expect("per-item results");
    assert!(items[..3].iter().all(|r| r.ok));
    // With one item at a time, nothing after the failure ever ran.
    for later in &items[4..] {
        assert_eq!(
            later.error.as_ref().map(|e| e.kind),
            Some(ErrorKind::Cancelled)
        );
        assert_eq!(later.execution.attempts, 0);
    }
}

#[tokio::test]
async fn a_batch_without_items_is_a_validation_error() {
    let rt = runtime(PluginFolder::with(&["increment"]).path()).await;
    rt.register(Workflow::batch("many", "increment"))
        .expect("valid");
    let error = rt
        .run("many", json!({"count": 1}))
        .await
        .unwrap()
        .error
        .expect("an error");
    assert_eq!(error.kind, ErrorKind::Validation);
    assert!(
        error.message.contains("{\"items\": [state, ...]}"),
        "{}",
        error.message
    );
}

const PIPELINE: &str = r#"
[workflow.pipeline]
graph = { fetch = { run = "increment" }, parse = { after = ["fetch"], run = "double" }, review = { after = ["parse"], if = "/needsReview", run = "hello" }, store = { after = ["parse"], run = "add-ten" } }
"#;

#[tokio::test]
async fn a_graph_runs_nodes_after_their_dependencies_and_merges_its_sinks() {
    let (_f, rt) = with_workflows(&["increment", "double", "hello", "add-ten"], PIPELINE).await;
    let reviewed = rt
        .run(
            "pipeline",
            json!({"count": 1, "needsReview": true, "user": "Ada"}),
        )
        .await
        .unwrap();
    assert!(reviewed.ok, "{:?}", reviewed.error);
    // fetch: 2, parse: 4, then review (greets) and store (14) both after parse.
    assert_eq!(reviewed.state["count"], 14);
    assert_eq!(reviewed.state["greeting"], "Hello Ada!");
    assert_eq!(reviewed.state["metadata"]["version"], 1);
}

#[tokio::test]
async fn a_graph_node_whose_condition_is_false_is_skipped() {
    let (_f, rt) = with_workflows(&["increment", "double", "hello", "add-ten"], PIPELINE).await;
    let skipped = rt
        .run(
            "pipeline",
            json!({"count": 1, "needsReview": false, "user": "Ada"}),
        )
        .await
        .unwrap();
    assert!(skipped.ok, "{:?}", skipped.error);
    assert_eq!(skipped.state["count"], 14);
    assert!(
        skipped.state.get("greeting").is_none(),
        "review was skipped"
    );
}

#[tokio::test]
async fn a_graph_skips_the_dependents_of_a_skipped_node_and_names_a_failed_one() {
    let rt = runtime(PluginFolder::with(&["increment", "hello", "validate-email"]).path()).await;
    rt.register(
        Workflow::graph("gated")
            .node("increment", Vec::<String>::new())
            .node_if("hello", ["increment"], "/go")
            .node("validate-email", ["hello"]),
    )
    .expect("valid");
    // `hello` is skipped, so `validate-email` (which would fail) never runs.
    let result = rt
        .run("gated", json!({"count": 0, "go": false}))
        .await
        .unwrap();
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["count"], 1);
    let failing = rt
        .run("gated", json!({"count": 0, "go": true}))
        .await
        .unwrap();
    let error = failing.error.expect("validate-email fails");
    assert!(
        error.message.contains("node `validate-email` of `gated`"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn a_graph_cycle_is_rejected_with_its_line() {
    let (_f, rt) = with_workflows(
        &["increment"],
        "[workflow.ok]\nchain = [\"increment\"]\n\n[workflow.loop]\ngraph = { a = [\"b\"], b = [\"a\"] }\n",
    )
    .await;
    let reason = invalid_reason(&rt, "loop");
    assert!(
        reason.contains("workflows.toml:4: the graph has a cycle through `a`, `b`"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_policy_fails_ignores_or_continues_past_a_failed_branch() {
    let (_folder, rt) = with_workflows(
        &weir_tests::FAILURE_POLICY_PLUGINS,
        weir_tests::FAILURE_POLICY_WORKFLOWS,
    )
    .await;
    weir_tests::assert_failure_policies(&rt).await;
}

#[tokio::test]
async fn a_failed_saga_undoes_its_steps_last_first_and_runs_its_handler() {
    let (_folder, rt) = with_workflows(&weir_tests::SAGA_PLUGINS, weir_tests::SAGA_WORKFLOWS).await;
    weir_tests::assert_saga(&rt).await;
}
