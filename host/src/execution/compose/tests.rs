//! The local composition driver against an in-process [`super::StepRunner`]: every rule of chain,
//! parallel, route, batch and graph, their failures and cancellation, with no plugin and no
//! sandbox (each "processor" is a Rust function of the state).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::fake::{FUEL, Fake, Step, scope};
use super::run;
use crate::contract::cancel::{CancelHandle, CancelReason};
use crate::contract::error::{ErrorKind, ExecutionError, codes};
use crate::contract::result::{ExecutionInfo, ExecutionResult};
use crate::contract::state::StateMetadata;
use crate::contract::workflow::{BatchPolicy, OnFailure, Workflow};

/// Runs `workflow` on `input` with `fake`'s processors, uncancelled.
async fn run_with(fake: &Fake, workflow: Workflow, input: Value) -> ExecutionResult {
    run_cancellable(fake, workflow, input, CancelHandle::new()).await
}

async fn run_cancellable(
    fake: &Fake,
    workflow: Workflow,
    input: Value,
    cancel: CancelHandle,
) -> ExecutionResult {
    let info = ExecutionInfo::new(None, workflow.name(), "acme", None);
    let workflow = Arc::new(workflow);
    let future = run(
        fake,
        &workflow,
        input,
        StateMetadata::new(None),
        scope(cancel),
        info,
    );
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("the workflow ends")
}

fn add(field: &'static str, by: i64) -> impl Fn(Value) -> Value {
    move |mut state| {
        let now = state.get(field).and_then(Value::as_i64).unwrap_or(0);
        state[field] = json!(now + by);
        state
    }
}

fn boom(_: Value) -> Result<Value, ExecutionError> {
    Err(ExecutionError::host(
        ErrorKind::Execution,
        "boom",
        "it went boom",
    ))
}

fn plus_one(state: Value) -> Result<Value, ExecutionError> {
    Ok(add("n", 1)(state))
}

fn times_ten(mut state: Value) -> Result<Value, ExecutionError> {
    let n = state.get("n").and_then(Value::as_i64).unwrap_or(0);
    state["n"] = json!(n * 10);
    Ok(state)
}

fn mark_a(mut state: Value) -> Result<Value, ExecutionError> {
    state["a"] = json!(true);
    Ok(state)
}

fn mark_b(mut state: Value) -> Result<Value, ExecutionError> {
    state["b"] = json!(true);
    Ok(state)
}

fn fail_odd(state: Value) -> Result<Value, ExecutionError> {
    match state.get("n").and_then(Value::as_i64) {
        Some(n) if n % 2 == 1 => boom(state),
        _ => plus_one(state),
    }
}

fn pick_b(mut state: Value) -> Result<Value, ExecutionError> {
    state["route"] = json!("b");
    Ok(state)
}

fn processors() -> Fake {
    Fake::new(&[
        ("plus-one", Step::Map(plus_one)),
        ("times-ten", Step::Map(times_ten)),
        ("mark-a", Step::Map(mark_a)),
        ("mark-b", Step::Map(mark_b)),
        ("boom", Step::Map(boom)),
        ("fail-odd", Step::Map(fail_odd)),
        ("pick-b", Step::Map(pick_b)),
        ("hang", Step::UntilCancelled),
    ])
}

fn failed_step(result: &ExecutionResult) -> Value {
    let error = result.error.as_ref().expect("an error");
    error.details.as_ref().expect("details")["failed"].clone()
}

#[tokio::test]
async fn a_chain_feeds_each_step_the_last_output_and_sums_their_cost() {
    let fake = processors();
    let workflow = Workflow::chain("c", ["plus-one", "times-ten", "plus-one"]);
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["n"], 21);
    assert_eq!(result.execution.fuel_consumed, 3 * FUEL);
    assert_eq!(fake.ran(), ["plus-one", "times-ten", "plus-one"]);
}

#[tokio::test]
async fn each_step_runs_at_its_own_place_even_where_two_run_one_processor() {
    let node = |name: &str, after: &[&str]| crate::contract::workflow::GraphNode {
        name: name.to_string(),
        run: "plus-one".to_string(),
        after: after.iter().map(|a| a.to_string()).collect(),
        condition: None,
        on_failure: Default::default(),
    };
    let cases = [
        (
            Workflow::chain("c", ["plus-one", "plus-one"]),
            json!({"n": 1}),
            vec!["step:0", "step:1"],
        ),
        (
            Workflow::parallel("p", ["plus-one", "plus-one"]).merge("mark-a"),
            json!({"n": 1}),
            vec!["branch:0", "branch:1", "merge"],
        ),
        (
            Workflow::route_by_processor("r", "pick-b").route("b", "plus-one"),
            json!({"n": 1}),
            vec!["route:b", "selector"],
        ),
        (
            Workflow::route_by_pointer("k", "/kind")
                .route("b", "plus-one")
                .fallback("plus-one"),
            json!({"kind": "z"}),
            vec!["fallback"],
        ),
        (
            Workflow::batch("b", "plus-one"),
            json!({"items": [{"n": 1}, {"n": 2}]}),
            vec!["item:0", "item:1"],
        ),
        (
            Workflow::graph("g")
                .add_node(node("first", &[]))
                .add_node(node("second", &["first"])),
            json!({"n": 1}),
            vec!["node:first", "node:second"],
        ),
    ];
    for (workflow, input, expected) in cases {
        let fake = processors();
        let name = workflow.name().to_string();
        let result = run_with(&fake, workflow, input).await;
        assert!(result.ok, "{name}: {:?}", result.error);
        let expected: Vec<Option<String>> =
            expected.into_iter().map(|p| Some(p.to_string())).collect();
        assert_eq!(fake.places(), expected, "{name}");
    }
}

#[tokio::test]
async fn a_chain_stops_at_its_first_failure_with_the_last_good_state() {
    let fake = processors();
    let workflow = Workflow::chain("c", ["plus-one", "boom", "times-ten"]);
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    assert!(!result.ok);
    assert_eq!(result.state["n"], 2, "the state the failing step got");
    let error = result.error.as_ref().expect("an error");
    assert!(error.has_code("boom"), "{error:?}");
    assert!(error.message.contains("step 2 (`boom`) of `c`"), "{error}");
    assert_eq!(
        failed_step(&result),
        json!({"role": "step", "name": "boom", "index": 1})
    );
    assert_eq!(fake.ran(), ["plus-one", "boom"], "nothing ran after it");
}

#[tokio::test]
async fn parallel_branches_run_on_the_same_input_and_merge_onto_it() {
    let fake = processors();
    let workflow = Workflow::parallel("p", ["mark-a", "mark-b", "plus-one"]);
    let result = run_with(&fake, workflow, json!({"n": 1, "kept": "yes"})).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["a"], true);
    assert_eq!(result.state["b"], true);
    assert_eq!(result.state["n"], 2);
    assert_eq!(result.state["kept"], "yes");
    assert_eq!(
        result.state["metadata"]["version"],
        StateMetadata::new(None).bumped().version,
        "the input's metadata, bumped once for the merge"
    );
    assert_eq!(result.execution.fuel_consumed, 3 * FUEL);
}

#[tokio::test]
async fn a_custom_merge_gets_the_input_and_every_branch_state() {
    fn count_results(state: Value) -> Result<Value, ExecutionError> {
        let branches = state["results"].as_array().map_or(0, Vec::len);
        Ok(json!({"branches": branches, "input": state["input"]}))
    }
    let mut fake = processors();
    Arc::make_mut(&mut fake.steps).insert("count", Step::Map(count_results));
    let workflow = Workflow::parallel("p", ["mark-a", "mark-b"]).merge("count");
    let result = run_with(&fake, workflow, json!({"n": 5})).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["branches"], 2);
    assert_eq!(result.state["input"]["n"], 5);
}

#[tokio::test]
async fn a_failing_branch_cancels_its_running_siblings_and_reports_every_branch() {
    let fake = processors();
    let workflow = Workflow::parallel("p", ["hang", "boom"]);
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    assert!(!result.ok);
    assert_eq!(
        result.state,
        json!({"n": 1}),
        "the input, as the last good state"
    );
    assert_eq!(
        fake.cancelled(),
        [("hang".to_string(), Some(CancelReason::Sibling))]
    );
    let error = result.error.as_ref().expect("an error");
    assert!(error.has_code("boom"), "{error:?}");
    let branches = &error.details.as_ref().expect("details")["branches"];
    assert_eq!(branches[0]["branch"], "hang");
    assert_eq!(branches[0]["ok"], false);
    assert_eq!(branches[1]["code"], "boom");
}

#[tokio::test]
async fn a_route_picks_its_key_s_target_else_the_fallback_else_fails() {
    let fake = processors();
    let route = || {
        Workflow::route_by_pointer("r", "/kind")
            .route("a", "mark-a")
            .route("b", "mark-b")
    };
    let result = run_with(&fake, route(), json!({"kind": "b"})).await;
    assert_eq!(result.state["b"], true);
    let result = run_with(&fake, route().fallback("plus-one"), json!({"kind": "z"})).await;
    assert_eq!(result.state["n"], 1, "the fallback ran");
    let result = run_with(&fake, route(), json!({"kind": "z"})).await;
    let error = result.error.as_ref().expect("no route");
    assert!(error.has_code(codes::NO_ROUTE), "{error:?}");
    assert!(error.message.contains("no route for key `z`"), "{error}");
    assert_eq!(
        fake.ran(),
        ["mark-b", "plus-one"],
        "nothing ran without a route"
    );
}

#[tokio::test]
async fn a_route_by_processor_asks_its_selector_for_the_key() {
    let fake = processors();
    let workflow = Workflow::route_by_processor("r", "pick-b")
        .route("a", "mark-a")
        .route("b", "mark-b");
    let result = run_with(&fake, workflow, json!({})).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["b"], true);
    assert!(
        result.state.get("route").is_none(),
        "the target got the input"
    );
    assert_eq!(fake.ran(), ["pick-b", "mark-b"]);
}

#[tokio::test]
async fn a_collecting_batch_runs_every_item_and_reports_each() {
    let fake = processors();
    let workflow = Workflow::batch("b", "fail-odd").concurrency(2);
    let input = json!({"items": [{"n": 2}, {"n": 3}, {"n": 4}]});
    let result = run_with(&fake, workflow, input).await;
    assert!(result.ok, "a collecting batch succeeds: {:?}", result.error);
    let items = result.items.as_ref().expect("item results");
    let oks: Vec<bool> = items.iter().map(|r| r.ok).collect();
    assert_eq!(oks, [true, false, true]);
    assert_eq!(result.state["items"][0]["n"], 3);
    assert_eq!(result.state["items"][2]["n"], 5);
    assert_eq!(result.execution.fuel_consumed, 3 * FUEL);
}

#[tokio::test]
async fn an_all_or_nothing_batch_fails_with_its_first_failing_item() {
    let fake = processors();
    let workflow = Workflow::batch("b", "fail-odd")
        .concurrency(1)
        .policy(BatchPolicy::AllOrNothing);
    let input = json!({"items": [{"n": 2}, {"n": 3}, {"n": 4}, {"n": 6}]});
    let result = run_with(&fake, workflow, input.clone()).await;
    assert!(!result.ok);
    assert_eq!(
        result.state, input,
        "the batch's input, as the last good state"
    );
    assert_eq!(
        failed_step(&result),
        json!({"role": "item", "name": "fail-odd", "index": 1})
    );
    assert_eq!(
        fake.ran(),
        ["fail-odd", "fail-odd"],
        "one at a time: no item started after the failure"
    );
}

#[tokio::test]
async fn a_batch_over_its_bound_or_without_items_runs_nothing() {
    let mut fake = processors();
    fake.max_items = 2;
    let workflow = || Workflow::batch("b", "plus-one");
    let result = run_with(&fake, workflow(), json!({"items": [{}, {}, {}]})).await;
    let error = result.error.as_ref().expect("too large");
    assert!(error.has_code(codes::BATCH_TOO_LARGE), "{error:?}");
    let result = run_with(&fake, workflow(), json!({"item": []})).await;
    let error = result.error.as_ref().expect("no items");
    assert!(error.has_code(codes::INVALID_INPUT), "{error:?}");
    assert!(fake.ran().is_empty());
}

#[tokio::test]
async fn a_graph_runs_nodes_after_their_dependencies_and_merges_its_sinks() {
    let fake = processors();
    let workflow = Workflow::graph("g")
        .node("plus-one", [] as [&str; 0])
        .node("mark-a", ["plus-one"])
        .node("mark-b", ["plus-one"])
        .node("times-ten", ["mark-a", "mark-b"]);
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["n"], 20);
    assert_eq!(result.state["a"], true);
    assert_eq!(result.state["b"], true);
    let ran = fake.ran();
    assert_eq!(ran.first().map(String::as_str), Some("plus-one"));
    assert_eq!(ran.last().map(String::as_str), Some("times-ten"));
}

#[tokio::test]
async fn a_false_condition_skips_a_node_and_everything_after_it() {
    let fake = processors();
    let workflow = Workflow::graph("g")
        .node("mark-a", [] as [&str; 0])
        .node_if("mark-b", ["mark-a"], "/go")
        .node("plus-one", ["mark-b"]);
    let result = run_with(&fake, workflow, json!({"go": false})).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["a"], true, "the work before the skip is kept");
    assert!(result.state.get("b").is_none());
    assert!(result.state.get("n").is_none());
    assert_eq!(fake.ran(), ["mark-a"]);
}

#[tokio::test]
async fn a_failing_node_cancels_running_ones_and_skips_the_rest() {
    let fake = processors();
    let workflow = Workflow::graph("g")
        .node("hang", [] as [&str; 0])
        .node("boom", [] as [&str; 0])
        .node("plus-one", ["boom"]);
    let result = run_with(&fake, workflow, json!({})).await;
    assert!(!result.ok);
    assert_eq!(
        failed_step(&result),
        json!({"role": "node", "name": "boom"})
    );
    assert_eq!(
        fake.cancelled(),
        [("hang".to_string(), Some(CancelReason::Sibling))]
    );
    assert!(!fake.ran().contains(&"plus-one".to_string()));
}

#[tokio::test]
async fn cancelling_a_workflow_cancels_the_step_it_is_running() {
    let fake = processors();
    let cancel = CancelHandle::new();
    let workflow = Workflow::chain("c", ["plus-one", "hang", "times-ten"]);
    let running = {
        let fake = fake.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { run_cancellable(&fake, workflow, json!({}), cancel).await })
    };
    // Cancelled once the chain's second step is running.
    let mut started = fake.started.subscribe();
    tokio::time::timeout(Duration::from_secs(10), started.wait_for(|n| *n >= 2))
        .await
        .expect("the second step starts")
        .expect("the fake is alive");
    cancel.cancel_with(CancelReason::Request);
    let result = running.await.expect("the workflow's task ends");
    assert!(!result.ok);
    assert_eq!(
        fake.cancelled(),
        [("hang".to_string(), Some(CancelReason::Request))]
    );
    assert_eq!(fake.ran(), ["plus-one", "hang"], "nothing ran after it");
}

/// The places and codes of a result's failures set aside.
fn set_aside(result: &ExecutionResult) -> Vec<(String, String, Option<String>)> {
    result
        .failures
        .iter()
        .map(|f| (f.place.clone(), f.name.clone(), f.error.code.clone()))
        .collect()
}

#[tokio::test]
async fn an_ignored_branch_failure_leaves_the_others_running_and_merging() {
    let fake = processors();
    let workflow = Workflow::parallel("p", ["plus-one", "boom", "mark-a"])
        .on_failure("boom", OnFailure::Ignore);
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(
        result.state["n"], 2,
        "the failed branch's input undoes nothing"
    );
    assert_eq!(result.state["a"], true);
    assert!(fake.cancelled().is_empty(), "{:?}", fake.cancelled());
    assert_eq!(
        set_aside(&result),
        [("branch:1".into(), "boom".into(), Some("boom".into()))]
    );
    // In the document, beside the state.
    let document = serde_json::to_value(result.document()).unwrap();
    assert_eq!(document["failures"][0]["place"], "branch:1");
    assert_eq!(document["failures"][0]["error"]["message"], "it went boom");
}

#[tokio::test]
async fn a_merger_sees_an_ignored_branch_as_its_error() {
    fn describe(state: Value) -> Result<Value, ExecutionError> {
        Ok(json!({"seen": state["results"]}))
    }
    let mut fake = processors();
    Arc::make_mut(&mut fake.steps).insert("describe", Step::Map(describe));
    let workflow = Workflow::parallel("p", ["mark-a", "boom"])
        .merge("describe")
        .on_failure("boom", OnFailure::Ignore);
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    assert!(result.ok, "{:?}", result.error);
    let seen = &result.state["seen"];
    assert_eq!(seen[0]["state"]["a"], true);
    assert_eq!(seen[1]["state"], Value::Null);
    assert_eq!(seen[1]["error"]["code"], "boom");
    assert_eq!(
        set_aside(&result).len(),
        1,
        "the merged result still lists it"
    );
}

#[tokio::test]
async fn a_continued_branch_failure_cancels_the_others_and_ends_with_what_finished() {
    let fake = processors();
    let workflow =
        Workflow::parallel("p", ["mark-a", "hang", "boom"]).on_failure("boom", OnFailure::Continue);
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(
        fake.cancelled(),
        [("hang".to_string(), Some(CancelReason::Sibling))]
    );
    assert_eq!(result.state["n"], 1);
    let failures = set_aside(&result);
    assert!(
        failures.contains(&("branch:1".into(), "hang".into(), Some("cancelled".into()))),
        "{failures:?}"
    );
    assert!(
        failures.contains(&("branch:2".into(), "boom".into(), Some("boom".into()))),
        "{failures:?}"
    );
}

#[tokio::test]
async fn a_failing_branch_still_fails_a_parallel_whose_other_branches_are_ignored() {
    let fake = processors();
    let workflow = Workflow::parallel("p", ["hang", "boom"]).on_failure("hang", OnFailure::Ignore);
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    assert!(!result.ok);
    assert_eq!(failed_step(&result)["name"], "boom");
    assert!(
        result.failures.is_empty(),
        "a failed workflow lists nothing set aside"
    );
}

#[tokio::test]
async fn an_ignored_node_failure_passes_its_state_on_to_the_nodes_after_it() {
    let fake = processors();
    let workflow = Workflow::graph("g")
        .node("plus-one", [] as [&str; 0])
        .node("boom", ["plus-one"])
        .node("times-ten", ["boom"])
        .on_failure("boom", OnFailure::Ignore);
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(result.state["n"], 20, "times-ten ran on what reached boom");
    assert_eq!(fake.ran(), ["plus-one", "boom", "times-ten"]);
    assert_eq!(
        set_aside(&result),
        [("node:boom".into(), "boom".into(), Some("boom".into()))]
    );
}

#[tokio::test]
async fn a_continued_node_failure_stops_the_graph_and_ends_it_with_what_reached_the_sinks() {
    let fake = processors();
    let workflow = Workflow::graph("g")
        .node("hang", [] as [&str; 0])
        .node("plus-one", [] as [&str; 0])
        .node("boom", ["plus-one"])
        .node("times-ten", ["boom"])
        .on_failure("boom", OnFailure::Continue);
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(
        fake.cancelled(),
        [("hang".to_string(), Some(CancelReason::Sibling))]
    );
    assert!(
        !fake.ran().contains(&"times-ten".to_string()),
        "{:?}",
        fake.ran()
    );
    assert_eq!(
        result.state["n"], 2,
        "the skipped sink passes on what reached it"
    );
    let places: Vec<String> = set_aside(&result).into_iter().map(|f| f.0).collect();
    assert_eq!(places, ["node:hang", "node:boom"]);
}

#[tokio::test]
async fn a_delay_step_waits_then_passes_the_state_on_without_running_anything() {
    let fake = processors();
    let workflow = Workflow::chain("c", ["plus-one", "delay:60ms", "times-ten"]);
    let started = std::time::Instant::now();
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    assert!(result.ok, "{:?}", result.error);
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert_eq!(result.state["n"], 20);
    assert_eq!(
        fake.ran(),
        ["plus-one", "times-ten"],
        "a delay runs no processor"
    );
    assert_eq!(result.execution.fuel_consumed, 2 * FUEL);
}

#[tokio::test]
async fn a_delay_ends_at_once_when_its_workflow_is_cancelled_or_out_of_time() {
    let fake = processors();
    let cancel = CancelHandle::new();
    let workflow = Workflow::chain("c", ["plus-one", "delay:1h", "times-ten"]);
    let running = tokio::spawn({
        let fake = fake.clone();
        let cancel = cancel.clone();
        async move { run_cancellable(&fake, workflow, json!({"n": 1}), cancel).await }
    });
    // Once plus-one has run, the chain is in its delay.
    let mut started = fake.started.subscribe();
    started.wait_for(|n| *n == 1).await.unwrap();
    cancel.cancel_with(CancelReason::Request);
    let result = running.await.unwrap();
    let error = result.error.as_ref().expect("cancelled");
    assert_eq!(error.kind, ErrorKind::Cancelled);
    assert_eq!(failed_step(&result)["name"], "delay:1h");
    assert_eq!(
        result.state["n"], 2,
        "the last good state is the delay's input"
    );

    let workflow =
        Workflow::chain("c", ["delay:1h", "plus-one"]).timeout(Duration::from_millis(50));
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    let error = result.error.expect("out of time");
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert!(error.has_code(codes::DEADLINE_EXCEEDED), "{error:?}");
}

#[tokio::test]
async fn a_failed_chain_undoes_its_completed_steps_last_first_then_runs_its_handler() {
    fn undo(mut state: Value) -> Result<Value, ExecutionError> {
        state["undone"] = json!(true);
        Ok(state)
    }
    fn notify(input: Value) -> Result<Value, ExecutionError> {
        Ok(json!({"told": input}))
    }
    let mut fake = processors();
    Arc::make_mut(&mut fake.steps).insert("undo-a", Step::Map(undo));
    Arc::make_mut(&mut fake.steps).insert("undo-b", Step::Map(undo));
    Arc::make_mut(&mut fake.steps).insert("notify", Step::Map(notify));
    let workflow = Workflow::chain("saga", ["mark-a", "plus-one", "mark-b", "boom"])
        .compensate("mark-a", "undo-a")
        .compensate("mark-b", "undo-b")
        .on_failure_run("notify");
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    assert!(!result.ok);
    assert_eq!(
        fake.ran(),
        [
            "mark-a", "plus-one", "mark-b", "boom", "undo-b", "undo-a", "notify"
        ]
    );
    let error = result.error.as_ref().expect("the original failure");
    assert!(error.has_code("boom"), "{error:?}");
    assert!(
        error.message.starts_with("step 4 (`boom`)"),
        "{}",
        error.message
    );
    let details = error.details.as_ref().expect("details");
    let undone = details["compensations"].as_array().expect("compensations");
    assert_eq!(undone.len(), 2);
    // Each compensation ran on the state its step produced.
    assert_eq!(
        (undone[0]["step"].clone(), undone[0]["compensate"].clone()),
        (json!(2), json!("undo-b"))
    );
    assert_eq!(undone[0]["state"]["b"], true);
    assert_eq!(undone[0]["state"]["n"], 2);
    assert_eq!(
        (undone[1]["step"].clone(), undone[1]["compensate"].clone()),
        (json!(0), json!("undo-a"))
    );
    assert_eq!(
        undone[1]["state"]["n"], 1,
        "step 1's output, before plus-one"
    );
    let told = &details["onFailure"]["state"]["told"];
    assert_eq!(told["failed"], json!({"index": 3, "name": "boom"}));
    assert_eq!(told["state"]["b"], true, "the last good state");
    assert_eq!(told["error"]["code"], "boom");
    assert_eq!(
        result.state["b"], true,
        "the chain's state is still the last good one"
    );
    assert_eq!(result.execution.fuel_consumed, 7 * FUEL);
}

#[tokio::test]
async fn a_failing_compensation_does_not_stop_the_others() {
    let fake = processors();
    let workflow = Workflow::chain("saga", ["mark-a", "mark-b", "boom"])
        .compensate("mark-a", "plus-one")
        .compensate("mark-b", "boom");
    let result = run_with(&fake, workflow, json!({"n": 1})).await;
    let details = result.error.expect("failed").details.expect("details");
    let undone = &details["compensations"];
    assert_eq!(undone[0]["ok"], false);
    assert_eq!(undone[0]["error"]["code"], "boom");
    assert_eq!(undone[1]["ok"], true);
    assert_eq!(fake.ran(), ["mark-a", "mark-b", "boom", "boom", "plus-one"]);
}
