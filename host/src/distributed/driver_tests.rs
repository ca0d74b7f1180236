//! The distributed composition driver without Redis, against fake processors that are Rust
//! functions of the state. Chains and routes advance the way a job's continuation does
//! (open the workflow, run the step it names, take the result back in: `advance.rs`);
//! fan-outs run the way workers drive a join record (open it, run the branches it starts,
//! record each one's result, start what that releases, end it once nothing runs:
//! `join.rs`), with the jobs finishing in different orders and some running twice. Each
//! workflow is also run by the local driver (`execution::compose`) over the same fakes, and
//! both must agree: same outcome, same state, same error.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::advance::{Cursor, Next, open, resume};
use super::join::{Ending, JoinState, Start, Status};
use super::wire::{At, Frame, WireScope};
use crate::contract::cancel::CancelHandle;
use crate::contract::error::{ErrorKind, ExecutionError};
use crate::contract::result::{ExecutionInfo, ExecutionResult};
use crate::contract::state::{self, StateMetadata, with_metadata};
use crate::contract::workflow::{BatchPolicy, OnFailure, Workflow};
use crate::execution::compose::fake::{FUEL, Fake, Step, scope};

/// The fake processors both drivers run: Rust functions of the state.
fn fake() -> Fake {
    Fake::new(&[
        (
            "plus-one",
            Step::Map(|mut s| {
                s["n"] = json!(s["n"].as_i64().unwrap_or(0) + 1);
                Ok(s)
            }),
        ),
        (
            "times-ten",
            Step::Map(|mut s| {
                s["n"] = json!(s["n"].as_i64().unwrap_or(0) * 10);
                Ok(s)
            }),
        ),
        (
            "mark-a",
            Step::Map(|mut s| {
                s["a"] = json!(true);
                Ok(s)
            }),
        ),
        (
            "mark-b",
            Step::Map(|mut s| {
                s["b"] = json!(true);
                Ok(s)
            }),
        ),
        ("boom", Step::Map(|_| Err(boom()))),
        ("pick", Step::Map(|s| Ok(json!({"route": s["kind"]})))),
        (
            "fail-on-two",
            Step::Map(|mut s| {
                if s["n"] == json!(2) {
                    return Err(boom());
                }
                s["n"] = json!(s["n"].as_i64().unwrap_or(0) * 10);
                Ok(s)
            }),
        ),
    ])
}

fn boom() -> ExecutionError {
    ExecutionError::host(ErrorKind::Execution, "boom", "it went boom")
}

/// One step, as a worker's job would run it.
fn run_step(name: &str, input: Value) -> ExecutionResult {
    fake().result_of(name, input, "acme")
}

/// Which of the started jobs finishes next.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// The one started first.
    Oldest,
    /// The one started last.
    Newest,
}

/// How a driven fan-out went.
struct Driven {
    state: JoinState,
    ending: Ending,
    /// The steps that ran, in the order they finished.
    ran: Vec<String>,
    /// Most jobs started and not finished at one time.
    most_running: usize,
}

/// `input` with metadata, as a fan-out receives it.
fn prepared(input: Value) -> (Value, StateMetadata) {
    let (input, metadata) = state::prepare_input(input, None).expect("a valid input");
    (with_metadata(input, &metadata), metadata)
}

/// Drives a fan-out of `workflow` on `input` to its end, as workers do: each finished
/// job's result goes into the record, which says what starts next. With `twice`, every
/// job's result is recorded a second time (its job ran twice: a worker died after its step
/// finished), which must change nothing.
fn drive(workflow: &Workflow, input: Value, order: Order, twice: bool) -> Driven {
    let (input, _) = prepared(input);
    let (mut state, starts) = JoinState::open(workflow, input, 100).expect("the input fits");
    let mut running: VecDeque<Start> = starts.into();
    let mut ran = Vec::new();
    let mut most_running = running.len();
    loop {
        let next = match order {
            Order::Oldest => running.pop_front(),
            Order::Newest => running.pop_back(),
        };
        let Some(start) = next else { break };
        assert_eq!(state.nodes[start.node].status, Status::Running);
        let result = run_step(&start.name, start.input.clone());
        ran.push(start.name.clone());
        let started = state.complete(workflow, start.node, result.clone());
        if twice {
            let fuel = state.fuel;
            let mut again = state.complete(workflow, start.node, result);
            // The same branches (in any order: their jobs' ids are fixed, so adding them
            // again adds nothing).
            let mut first = started.clone();
            first.sort_by_key(|s| s.node);
            again.sort_by_key(|s| s.node);
            assert_eq!(
                again, first,
                "a job that ran twice starts the same branches"
            );
            assert_eq!(state.fuel, fuel, "a job that ran twice is paid for once");
        }
        running.extend(started);
        most_running = most_running.max(running.len());
    }
    assert!(
        state.nodes.iter().all(|n| n.status != Status::Running),
        "every started branch has finished"
    );
    let ending = state.ending(workflow, "acme", &(None, None));
    Driven {
        state,
        ending,
        ran,
        most_running,
    }
}

/// The outcome of a driven fan-out: its state, or its last good state and error.
fn outcome(driven: &Driven) -> Result<Value, (Value, ExecutionError)> {
    match &driven.ending {
        Ending::Outcome(outcome, _, _) => outcome.clone(),
        Ending::Merge { merger, .. } => panic!("expected an outcome, got a merge by {merger}"),
    }
}

/// Runs a chain or route of `workflow` on `input` the way its run advances between jobs:
/// each `Enter` is a step's job (run here by the fakes), each `Done` goes back into the
/// workflow its frame tracks. Returns the workflow's result and the jobs' paths, in order.
fn advance(workflow: &Workflow, input: Value) -> (ExecutionResult, Vec<(String, String)>) {
    let (input, _) = prepared(input);
    let mut cursor = Cursor {
        run: "run".to_string(),
        scope: WireScope {
            tenant: "acme".to_string(),
            ..WireScope::default()
        },
        bindings: BTreeMap::new(),
        frames: Vec::new(),
    };
    let mut frame = frame_of(workflow, At::Chain { index: 0 });
    let mut next = open(&mut cursor, workflow, &mut frame, input);
    let mut jobs = Vec::new();
    loop {
        next = match next {
            Next::Enter { name, state, path } => {
                jobs.push((path, name.clone()));
                Next::Done(Box::new(run_step(&name, state)))
            }
            Next::Done(result) => match cursor.frames.pop() {
                None => return (*result, jobs),
                Some(frame) => resume(&mut cursor, workflow, frame, *result),
            },
        };
    }
}

/// The frame of run `run`'s top workflow `workflow`, at `at`.
fn frame_of(workflow: &Workflow, at: At) -> Frame {
    Frame {
        workflow: workflow.name().to_string(),
        digest: workflow.digest().to_string(),
        execution: "run".to_string(),
        path: "0".to_string(),
        started_us: 0,
        fuel: 0,
        peak_memory: 0,
        outer_deadline_ms: None,
        outer_parent: None,
        at,
        produced: Vec::new(),
    }
}

/// Both drivers agree on a chain's or route's result for `input`; returns the
/// distributed one and its jobs.
async fn both_advance_alike(
    workflow: &Workflow,
    input: Value,
) -> (ExecutionResult, Vec<(String, String)>) {
    let input = with_created(input);
    let local = run_locally(workflow, input.clone()).await;
    let (distributed, jobs) = advance(workflow, input);
    assert_eq!(distributed.ok, local.ok);
    assert_eq!(comparable(&distributed.state), comparable(&local.state));
    assert_eq!(
        distributed
            .error
            .as_ref()
            .map(|e| (e.kind, &e.code, &e.message)),
        local.error.as_ref().map(|e| (e.kind, &e.code, &e.message))
    );
    assert_eq!(
        distributed.execution.fuel_consumed,
        local.execution.fuel_consumed
    );
    (distributed, jobs)
}

fn paths(jobs: &[(String, String)]) -> Vec<(&str, &str)> {
    jobs.iter().map(|(p, n)| (p.as_str(), n.as_str())).collect()
}

/// `workflow` on `input` through the local driver.
async fn run_locally(workflow: &Workflow, input: Value) -> ExecutionResult {
    let (input, metadata) = prepared(input);
    let scope = scope(CancelHandle::new());
    let info = ExecutionInfo::new(None, workflow.name(), "acme", None);
    let (local, workflow) = (fake(), Arc::new(workflow.clone()));
    let future = crate::execution::compose::run(&local, &workflow, input, metadata, scope, info);
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("the workflow ends")
}

/// `state` without the time its metadata was last updated (each driver stamps its own
/// clock's now).
fn comparable(state: &Value) -> Value {
    let mut state = state.clone();
    if let Some(metadata) = state.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("lastUpdated");
    }
    state
}

/// The same input with metadata for every run, so that both drivers see one creation time.
fn with_created(mut input: Value) -> Value {
    input["metadata"] = json!({"version": 3, "createdAt": "2026-01-01T00:00:00Z"});
    input
}

/// Both drivers, in both orders, agree on `workflow`'s outcome for `input`; returns the
/// distributed outcome.
async fn both_agree(workflow: &Workflow, input: Value) -> Result<Value, (Value, ExecutionError)> {
    let input = with_created(input);
    let local = run_locally(workflow, input.clone()).await;
    let mut outcomes = Vec::new();
    for order in [Order::Oldest, Order::Newest] {
        for twice in [false, true] {
            let driven = drive(workflow, input.clone(), order, twice);
            let distributed = outcome(&driven);
            match (&distributed, &local.error) {
                (Ok(state), None) => {
                    assert_eq!(comparable(state), comparable(&local.state), "{order:?}");
                }
                (Err((state, error)), Some(local_error)) => {
                    assert_eq!(comparable(state), comparable(&local.state), "{order:?}");
                    assert_eq!(error.kind, local_error.kind, "{order:?}");
                    assert_eq!(error.code, local_error.code, "{order:?}");
                    assert_eq!(error.message, local_error.message, "{order:?}");
                }
                _ => panic!(
                    "{order:?}: the drivers disagree: distributed {distributed:?}, local {:?}",
                    local.error
                ),
            }
            outcomes.push(distributed);
        }
    }
    outcomes.remove(0)
}

#[tokio::test]
async fn a_parallel_runs_every_branch_on_the_input_and_merges_them_in_any_order() {
    let workflow = Workflow::parallel("p", ["plus-one", "mark-a", "mark-b"]);
    let state = both_agree(&workflow, json!({"n": 1}))
        .await
        .expect("succeeds");
    assert_eq!(state["n"], 2);
    assert_eq!(state["a"], true);
    assert_eq!(state["b"], true);
    let driven = drive(&workflow, json!({"n": 1}), Order::Newest, false);
    assert_eq!(driven.most_running, 3, "every branch starts at once");
    assert_eq!(driven.state.fuel, 3 * FUEL);
}

#[tokio::test]
async fn a_failed_branch_fails_the_parallel_with_its_error_and_the_input_as_state() {
    let workflow = Workflow::parallel("p", ["plus-one", "boom", "mark-a"]);
    let (state, error) = both_agree(&workflow, json!({"n": 1}))
        .await
        .expect_err("a branch failed");
    assert_eq!(state["n"], 1, "the last good state is the input");
    assert_eq!(error.code.as_deref(), Some("boom"));
    let driven = drive(&workflow, json!({"n": 1}), Order::Oldest, false);
    assert!(driven.state.doomed());
    assert_eq!(
        driven.state.first_failure.as_ref().map(|(i, _)| *i),
        Some(1)
    );
}

#[test]
fn a_parallel_with_a_merger_hands_it_every_branch_state_in_declared_order() {
    let workflow = Workflow::parallel("p", ["mark-a", "mark-b"]).merge("plus-one");
    for order in [Order::Oldest, Order::Newest] {
        let driven = drive(&workflow, json!({"n": 1}), order, false);
        let Ending::Merge { merger, input, .. } = &driven.ending else {
            panic!("expected the merger to run");
        };
        assert_eq!(merger, "plus-one");
        let branches: Vec<&Value> = input["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| &r["branch"])
            .collect();
        assert_eq!(branches, [&json!("mark-a"), &json!("mark-b")]);
        assert_eq!(input["results"][0]["state"]["a"], true);
        assert_eq!(input["results"][1]["state"]["b"], true);
    }
}

#[tokio::test]
async fn a_batch_runs_every_item_at_most_concurrency_at_a_time_and_keeps_item_order() {
    let workflow = Workflow::batch("each", "times-ten").concurrency(2);
    let items = json!({"items": [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}, {"n": 5}]});
    let state = both_agree(&workflow, items.clone())
        .await
        .expect("succeeds");
    let ns: Vec<&Value> = state["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| &i["n"])
        .collect();
    assert_eq!(
        ns,
        [&json!(10), &json!(20), &json!(30), &json!(40), &json!(50)]
    );
    for order in [Order::Oldest, Order::Newest] {
        let driven = drive(&workflow, items.clone(), order, true);
        assert_eq!(driven.most_running, 2, "{order:?}: two at a time");
        assert_eq!(driven.ran.len(), 5, "{order:?}: every item ran once");
        let Ending::Outcome(_, Some(results), _) = &driven.ending else {
            panic!("a batch reports every item");
        };
        assert!(results.iter().all(|r| r.ok));
    }
}

#[tokio::test]
async fn an_all_or_nothing_batch_stops_starting_items_after_a_failure() {
    let workflow = Workflow::batch("each", "fail-on-two")
        .concurrency(1)
        .policy(BatchPolicy::AllOrNothing);
    let items = json!({"items": [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]});
    let (_, error) = both_agree(&workflow, items.clone())
        .await
        .expect_err("an item failed");
    assert_eq!(error.code.as_deref(), Some("boom"));
    let driven = drive(&workflow, items, Order::Oldest, false);
    assert_eq!(driven.ran.len(), 2, "items after the failure never start");
    let Ending::Outcome(_, Some(results), _) = &driven.ending else {
        panic!("a batch reports every item");
    };
    let kinds: Vec<Option<ErrorKind>> = results
        .iter()
        .map(|r| r.error.as_ref().map(|e| e.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            None,
            Some(ErrorKind::Execution),
            Some(ErrorKind::Cancelled),
            Some(ErrorKind::Cancelled)
        ]
    );
}

#[tokio::test]
async fn a_batch_that_collects_runs_every_item_whatever_fails() {
    let workflow = Workflow::batch("each", "fail-on-two")
        .concurrency(2)
        .policy(BatchPolicy::Collect);
    let items = json!({"items": [{"n": 1}, {"n": 2}, {"n": 3}]});
    both_agree(&workflow, items.clone()).await.ok();
    for order in [Order::Oldest, Order::Newest] {
        let driven = drive(&workflow, items.clone(), order, false);
        assert_eq!(driven.ran.len(), 3, "{order:?}");
        assert!(!driven.state.doomed(), "{order:?}: a failure dooms nothing");
    }
}

#[test]
fn a_batch_input_without_items_or_with_too_many_is_refused_before_anything_starts() {
    let workflow = Workflow::batch("each", "plus-one");
    let (input, _) = prepared(json!({"n": 1}));
    let error = JoinState::open(&workflow, input, 100)
        .map(|_| ())
        .expect_err("no items");
    assert_eq!(error.kind, ErrorKind::Validation);
    let (input, _) = prepared(json!({"items": [{}, {}, {}]}));
    let error = JoinState::open(&workflow, input, 2)
        .map(|_| ())
        .expect_err("too many items");
    assert_eq!(error.kind, ErrorKind::Validation);
}

#[tokio::test]
async fn a_graph_runs_each_node_after_its_dependencies_on_their_merged_outputs() {
    let workflow = Workflow::graph("g")
        .node("plus-one", [] as [&str; 0])
        .node("mark-a", ["plus-one"])
        .node("mark-b", ["plus-one"])
        .node("times-ten", ["mark-a", "mark-b"]);
    let state = both_agree(&workflow, json!({"n": 1}))
        .await
        .expect("succeeds");
    assert_eq!(state["n"], 20);
    assert_eq!(state["a"], true);
    assert_eq!(state["b"], true);
    for order in [Order::Oldest, Order::Newest] {
        let driven = drive(&workflow, json!({"n": 1}), order, true);
        assert_eq!(driven.ran.first().map(String::as_str), Some("plus-one"));
        assert_eq!(driven.ran.last().map(String::as_str), Some("times-ten"));
        assert_eq!(
            driven.most_running, 2,
            "{order:?}: the two middle nodes at once"
        );
    }
}

#[tokio::test]
async fn a_node_whose_condition_is_false_is_skipped_and_so_are_the_nodes_after_it() {
    let workflow = Workflow::graph("g")
        .node("plus-one", [] as [&str; 0])
        .node_if("mark-a", ["plus-one"], "/go")
        .node("times-ten", ["mark-a"])
        .node("mark-b", ["plus-one"]);
    let state = both_agree(&workflow, json!({"n": 1}))
        .await
        .expect("succeeds");
    assert_eq!(state["n"], 2, "what reached the skipped nodes is kept");
    assert!(state.get("a").is_none());
    assert_eq!(state["b"], true);
    let driven = drive(&workflow, json!({"n": 1}), Order::Oldest, false);
    assert_eq!(driven.state.nodes[1].status, Status::Skipped);
    assert_eq!(driven.state.nodes[2].status, Status::Skipped);
    assert_eq!(driven.ran, ["plus-one", "mark-b"]);
    let state = both_agree(&workflow, json!({"n": 1, "go": true}))
        .await
        .expect("succeeds");
    assert_eq!(state["a"], true, "with its condition true the node runs");
}

#[tokio::test]
async fn a_failed_node_fails_the_graph_and_nothing_after_it_starts() {
    let workflow = Workflow::graph("g")
        .node("plus-one", [] as [&str; 0])
        .node("boom", ["plus-one"])
        .node("times-ten", ["boom"]);
    let (state, error) = both_agree(&workflow, json!({"n": 1}))
        .await
        .expect_err("a node failed");
    assert_eq!(state["n"], 1, "the last good state is the input");
    assert!(error.message.contains("boom"), "{}", error.message);
    let driven = drive(&workflow, json!({"n": 1}), Order::Oldest, false);
    assert_eq!(driven.ran, ["plus-one", "boom"]);
    assert_eq!(driven.state.nodes[2].status, Status::Skipped);
}

#[test]
fn branches_whose_jobs_ended_without_a_result_fail_the_fan_out_when_it_joins() {
    let workflow = Workflow::parallel("p", ["plus-one", "mark-a"]);
    let (input, _) = prepared(json!({"n": 1}));
    let (mut state, starts) = JoinState::open(&workflow, input, 100).expect("opens");
    assert_eq!(starts.len(), 2);
    state.complete(&workflow, 0, run_step("plus-one", starts[0].input.clone()));
    // `mark-a`'s worker died more often than BullMQ allows: its job failed for good.
    state.lose_unfinished(&workflow, "acme");
    assert!(state.doomed());
    let Ending::Outcome(Err((_, error)), _, _) = state.ending(&workflow, "acme", &(None, None))
    else {
        panic!("the fan-out fails");
    };
    assert_eq!(error.kind, ErrorKind::Execution);
    assert!(error.message.contains("mark-a"), "{}", error.message);
}

#[test]
fn a_result_for_a_branch_that_does_not_exist_changes_nothing() {
    let workflow = Workflow::parallel("p", ["plus-one"]);
    let (input, _) = prepared(json!({"n": 1}));
    let (mut state, _) = JoinState::open(&workflow, input, 100).expect("opens");
    let started = state.complete(&workflow, 7, run_step("plus-one", json!({})));
    assert!(started.is_empty());
    assert_eq!(state.nodes[0].status, Status::Running);
    assert_eq!(state.fuel, 0);
}

#[tokio::test]
async fn a_chain_runs_its_steps_in_order_each_on_the_last_ones_state() {
    let workflow = Workflow::chain("c", ["plus-one", "times-ten", "mark-a"]);
    let (result, jobs) = both_advance_alike(&workflow, json!({"n": 1})).await;
    assert!(result.ok);
    assert_eq!(result.state["n"], 20);
    assert_eq!(result.state["a"], true);
    assert_eq!(result.execution.fuel_consumed, 3 * FUEL);
    // Each step's job has a fixed place in the run, so a step run twice adds nothing.
    assert_eq!(
        paths(&jobs),
        [("0.0", "plus-one"), ("0.1", "times-ten"), ("0.2", "mark-a")]
    );
}

#[tokio::test]
async fn a_chain_stops_at_its_first_failed_step_with_the_last_good_state() {
    let workflow = Workflow::chain("c", ["plus-one", "boom", "mark-a"]);
    let (result, jobs) = both_advance_alike(&workflow, json!({"n": 1})).await;
    assert!(!result.ok);
    assert_eq!(result.state["n"], 2, "the state before the failed step");
    let error = result.error.expect("an error");
    assert!(error.message.contains("boom"), "{}", error.message);
    assert_eq!(jobs.len(), 2, "nothing after the failure runs");
}

#[tokio::test]
async fn a_route_by_pointer_runs_the_target_its_key_names_or_the_fallback() {
    let workflow = Workflow::route_by_pointer("r", "/kind")
        .route("a", "mark-a")
        .route("b", "mark-b")
        .fallback("plus-one");
    let (result, jobs) = both_advance_alike(&workflow, json!({"kind": "b"})).await;
    assert_eq!(result.state["b"], true);
    assert_eq!(paths(&jobs), [("0.r", "mark-b")]);
    let (result, _) = both_advance_alike(&workflow, json!({"kind": "z", "n": 1})).await;
    assert_eq!(result.state["n"], 2, "an unknown key takes the fallback");
}

#[tokio::test]
async fn a_route_with_no_target_for_its_key_fails_without_running_anything() {
    let workflow = Workflow::route_by_pointer("r", "/kind").route("a", "mark-a");
    let (result, jobs) = both_advance_alike(&workflow, json!({"kind": "z"})).await;
    assert!(!result.ok);
    assert!(jobs.is_empty());
    let (result, _) = both_advance_alike(&workflow, json!({"other": 1})).await;
    assert!(!result.ok, "a missing key without a fallback fails");
}

#[tokio::test]
async fn a_route_by_processor_runs_the_selector_then_the_target_on_the_routes_input() {
    let workflow = Workflow::route_by_processor("r", "pick")
        .route("a", "mark-a")
        .route("b", "mark-b");
    let (result, jobs) = both_advance_alike(&workflow, json!({"kind": "a", "n": 5})).await;
    assert!(result.ok);
    assert_eq!(result.state["a"], true);
    assert_eq!(result.state["n"], 5, "the target runs on the route's input");
    assert!(
        result.state.get("route").is_none(),
        "not on the selector's output"
    );
    assert_eq!(paths(&jobs), [("0.s", "pick"), ("0.r", "mark-a")]);
}

#[tokio::test]
async fn a_failed_route_target_fails_the_route_naming_its_key() {
    let workflow = Workflow::route_by_pointer("r", "/kind").route("x", "boom");
    let (result, _) = both_advance_alike(&workflow, json!({"kind": "x"})).await;
    assert!(!result.ok);
    let error = result.error.expect("an error");
    assert!(error.message.contains('x'), "{}", error.message);
}

/// Where and how each failure a result went on past failed: place, name and code.
type SetAside = Vec<(String, String, Option<String>)>;

fn places_of(failures: &[crate::contract::result::StepFailure]) -> SetAside {
    failures
        .iter()
        .map(|f| (f.place.clone(), f.name.clone(), f.error.code.clone()))
        .collect()
}

/// Both drivers, in both orders and with jobs run twice, agree on `workflow`'s outcome and
/// on the failures it went on past; returns the distributed outcome and failures.
async fn both_set_aside(workflow: &Workflow, input: Value) -> (Value, SetAside) {
    let state = both_agree(workflow, input.clone())
        .await
        .expect("the fan-out succeeds");
    let local = run_locally(workflow, with_created(input.clone())).await;
    let expected = places_of(&local.failures);
    for order in [Order::Oldest, Order::Newest] {
        for twice in [false, true] {
            let driven = drive(workflow, with_created(input.clone()), order, twice);
            let Ending::Outcome(_, _, failures) = &driven.ending else {
                panic!("expected an outcome");
            };
            assert_eq!(places_of(failures), expected, "{order:?}, twice: {twice}");
        }
    }
    (state, expected)
}

#[tokio::test]
async fn an_ignored_branch_failure_is_set_aside_alike_by_both_drivers() {
    let workflow = Workflow::parallel("p", ["plus-one", "boom", "mark-a"])
        .on_failure("boom", OnFailure::Ignore);
    let (state, failures) = both_set_aside(&workflow, json!({"n": 1})).await;
    assert_eq!(state["n"], 2);
    assert_eq!(state["a"], true);
    assert_eq!(
        failures,
        [("branch:1".into(), "boom".into(), Some("boom".into()))]
    );
    let driven = drive(&workflow, json!({"n": 1}), Order::Oldest, false);
    assert!(!driven.state.doomed(), "an ignored failure stops nothing");
    assert_eq!(driven.ran.len(), 3);
}

#[tokio::test]
async fn an_ignored_node_passes_its_state_on_alike_in_both_drivers() {
    let workflow = Workflow::graph("g")
        .node("plus-one", [] as [&str; 0])
        .node("boom", ["plus-one"])
        .node("times-ten", ["boom"])
        .node("mark-a", [] as [&str; 0])
        .on_failure("boom", OnFailure::Ignore);
    let (state, failures) = both_set_aside(&workflow, json!({"n": 1})).await;
    assert_eq!(state["n"], 20);
    assert_eq!(state["a"], true);
    assert_eq!(
        failures,
        [("node:boom".into(), "boom".into(), Some("boom".into()))]
    );
}

#[tokio::test]
async fn a_continued_node_failure_ends_the_graph_early_alike_in_both_drivers() {
    let workflow = Workflow::graph("g")
        .node("plus-one", [] as [&str; 0])
        .node("boom", ["plus-one"])
        .node("times-ten", ["boom"])
        .on_failure("boom", OnFailure::Continue);
    let (state, failures) = both_set_aside(&workflow, json!({"n": 1})).await;
    assert_eq!(state["n"], 2, "what reached the skipped sink");
    assert_eq!(failures.len(), 1);
    let driven = drive(&workflow, json!({"n": 1}), Order::Oldest, false);
    assert!(driven.state.doomed(), "the others stop");
    assert!(driven.state.first_failure.is_none(), "without failing it");
    assert_eq!(driven.state.nodes[2].status, Status::Skipped);
    assert_eq!(driven.ran, ["plus-one", "boom"]);
}

#[test]
fn a_merger_after_an_ignored_branch_hands_its_failures_to_the_parallels_result() {
    let workflow = Workflow::parallel("p", ["mark-a", "boom"])
        .merge("plus-one")
        .on_failure("boom", OnFailure::Ignore);
    let driven = drive(&workflow, json!({"n": 1}), Order::Newest, false);
    let Ending::Merge {
        merger,
        input,
        failures,
    } = driven.ending
    else {
        panic!("expected the merger to run");
    };
    assert_eq!(input["results"][1]["error"]["code"], "boom");
    // The merge step runs as a job; the parallel's frame carries the failures to its end.
    let mut cursor = Cursor {
        run: "run".to_string(),
        scope: WireScope::default(),
        bindings: BTreeMap::new(),
        frames: Vec::new(),
    };
    let at = At::Merge {
        input: driven.state.input.clone(),
        failures,
    };
    let frame = frame_of(&workflow, at);
    let merged = run_step(&merger, input);
    let Next::Done(result) = resume(&mut cursor, &workflow, frame, merged) else {
        panic!("the parallel ends with its merge");
    };
    assert!(result.ok, "{:?}", result.error);
    assert_eq!(
        places_of(&result.failures),
        [("branch:1".into(), "boom".into(), Some("boom".into()))]
    );
}

#[tokio::test]
async fn a_failed_chain_is_undone_alike_by_both_drivers() {
    let workflow = Workflow::chain("saga", ["mark-a", "plus-one", "mark-b", "boom"])
        .compensate("mark-a", "times-ten")
        .compensate("mark-b", "plus-one")
        .on_failure_run("mark-a");
    let (result, jobs) = both_advance_alike(&workflow, json!({"n": 1})).await;
    assert_eq!(
        paths(&jobs),
        [
            ("0.0", "mark-a"),
            ("0.1", "plus-one"),
            ("0.2", "mark-b"),
            ("0.3", "boom"),
            ("0.c2", "plus-one"),
            ("0.c0", "times-ten"),
            ("0.f", "mark-a"),
        ]
    );
    let error = result.error.expect("failed");
    let details = error.details.expect("details");
    assert_eq!(details["compensations"][0]["state"]["n"], 3);
    assert_eq!(details["compensations"][1]["state"]["n"], 10);
    assert_eq!(details["onFailure"]["state"]["failed"]["index"], 3);
    // A chain that succeeds undoes nothing and carries no states past its end.
    let fine = Workflow::chain("fine", ["mark-a", "plus-one"]).compensate("mark-a", "boom");
    let (result, jobs) = both_advance_alike(&fine, json!({"n": 1})).await;
    assert!(result.ok);
    assert_eq!(jobs.len(), 2);
}
