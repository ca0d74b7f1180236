//! The composition rules both drivers share: the local one (`compose/mod.rs`, futures in
//! one process) and the distributed one (`distributed/advance.rs` and `join.rs`, jobs
//! across workers). Which route a state takes, what a failed step or branch makes of the
//! workflow, how branches' states merge, what a batch returns, when a graph node may run,
//! and the result a workflow hands back. Pure functions, so both drivers agree by
//! construction, and tested here once.

use serde_json::{Map, Value, json};

use crate::contract::error::{ErrorKind, ExecutionError, codes};
use crate::contract::result::{ExecutionInfo, ExecutionResult, StepFailure};
use crate::contract::state::{StateMetadata, with_metadata};
use crate::contract::workflow::{
    BatchPolicy, Composition, GraphNode, OnFailure, Selector, Workflow,
};
use crate::execution::executor::failed;

/// A failed workflow: the last good state and the error.
pub(crate) type Failure = (Value, ExecutionError);

/// Where a step runs in its workflow, as its events name it (`Event::step`): what tells two
/// steps of one processor apart. Both drivers name places with these.
pub(crate) mod place {
    use crate::contract::workflow::Composition;

    /// Step `index` of a chain (from 0).
    pub(crate) fn chain(index: usize) -> String {
        format!("step:{index}")
    }

    /// Branch `index` of a parallel (from 0).
    pub(crate) fn branch(index: usize) -> String {
        format!("branch:{index}")
    }

    /// Item `index` of a batch (from 0).
    pub(crate) fn item(index: usize) -> String {
        format!("item:{index}")
    }

    /// The graph node `name`.
    pub(crate) fn node(name: &str) -> String {
        format!("node:{name}")
    }

    /// Fan-out `index` of `composition`: a parallel's branch, a batch's item or a graph's
    /// node (by name); `None` for an index the composition does not have. (The distributed
    /// driver knows a branch by its index only.)
    pub(crate) fn fan_out(composition: &Composition, index: usize) -> Option<String> {
        match composition {
            Composition::Parallel { .. } => Some(branch(index)),
            Composition::Batch { .. } => Some(item(index)),
            Composition::Graph { nodes } => nodes.get(index).map(|n| node(&n.name)),
            Composition::Chain { .. } | Composition::Route { .. } => None,
        }
    }

    /// The compensation of chain step `index` (from 0).
    pub(crate) fn compensate(index: usize) -> String {
        format!("compensate:{index}")
    }

    /// A chain's failure handler.
    pub(crate) const ON_FAILURE: &str = "on-failure";

    /// A parallel's custom merge.
    pub(crate) const MERGE: &str = "merge";

    /// A route's selector processor.
    pub(crate) const SELECTOR: &str = "selector";

    /// The target a route chose for `key`: its route, or the fallback.
    pub(crate) fn route(
        routes: &std::collections::BTreeMap<String, String>,
        key: Option<&str>,
    ) -> String {
        match key {
            Some(key) if routes.contains_key(key) => format!("route:{key}"),
            _ => "fallback".to_string(),
        }
    }
}

/// A workflow's result: its output (or last good state and error), what ran, for a
/// batch every item's result, and for a fan-out that succeeded the failures it went on
/// past.
pub(crate) fn workflow_result(
    outcome: Result<Value, Failure>,
    info: ExecutionInfo,
    items: Option<Vec<ExecutionResult>>,
    failures: Vec<StepFailure>,
) -> ExecutionResult {
    let mut result = match outcome {
        Ok(state) => ExecutionResult {
            ok: true,
            state,
            error: None,
            execution: info,
            items: None,
            failures,
        },
        Err((state, error)) => failed(state, error, info),
    };
    result.items = items;
    result
}

/// How one compensation of a failed chain ended, as the chain's error reports it:
/// `{step, name, compensate, ok, state | error}` (`step` the index of the step it undid).
pub(crate) fn compensation_outcome(
    index: usize,
    step: &str,
    compensation: &str,
    result: &ExecutionResult,
) -> Value {
    let mut outcome = json!({
        "step": index,
        "name": step,
        "compensate": compensation,
        "ok": result.ok,
    });
    match &result.error {
        None => outcome["state"] = result.state.clone(),
        Some(error) => outcome["error"] = json!(error),
    }
    outcome
}

/// What a chain's failure handler receives: the failed step, its error (as the chain
/// reports it) and the last good state.
pub(crate) fn handler_input(
    index: usize,
    step: &str,
    error: &ExecutionError,
    state: &Value,
) -> Value {
    json!({
        "failed": { "index": index, "name": step },
        "error": error,
        "state": state,
    })
}

/// How a chain's failure handler ended: `{name, ok, state | error}`.
pub(crate) fn handler_outcome(handler: &str, result: &ExecutionResult) -> Value {
    let mut outcome = json!({ "name": handler, "ok": result.ok });
    match &result.error {
        None => outcome["state"] = result.state.clone(),
        Some(error) => outcome["error"] = json!(error),
    }
    outcome
}

/// A failed chain's error once it has been undone: the step's error (`error`, already
/// naming the step), with each compensation's outcome in the order they ran (the last
/// completed step's first) and the failure handler's, in its details.
pub(crate) fn undone(
    mut error: ExecutionError,
    compensations: Vec<Value>,
    handler: Option<Value>,
) -> ExecutionError {
    if compensations.is_empty() && handler.is_none() {
        return error;
    }
    if let Some(Value::Object(details)) = &mut error.details {
        if !compensations.is_empty() {
            details.insert("compensations".into(), Value::Array(compensations));
        }
        if let Some(handler) = handler {
            details.insert("onFailure".into(), handler);
        }
    }
    error
}

/// The result of a chain's delay step `step`: the state passed on unchanged, or (`error`)
/// the wait cut short, with the state as the last good one. No sandbox ran: no cost.
pub(crate) fn delay_result(
    step: &str,
    state: Value,
    info: ExecutionInfo,
    error: Option<ExecutionError>,
) -> ExecutionResult {
    let info = ExecutionInfo {
        processor: step.to_string(),
        digest: None,
        attempts: 1,
        ..info
    };
    match error {
        None => workflow_result(Ok(state), info, None, Vec::new()),
        Some(error) => failed(state, error, info),
    }
}

/// Why a delay step ended before its time: its run's deadline came first.
pub(crate) fn delay_past_deadline(step: &str) -> ExecutionError {
    ExecutionError::host(
        ErrorKind::Timeout,
        codes::DEADLINE_EXCEEDED,
        format!(
            "the run's deadline came before `{step}` ended (give the run a longer deadline: \
             `deadline_ms`)"
        ),
    )
    .retryable(true)
}

/// What a failed branch or node does to its fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// It fails the workflow (it is the first failure that may).
    pub fails: bool,
    /// The branches still running stop, and those not started never start.
    pub stops: bool,
    /// A graph node passes its last good state on, as if it had succeeded with it.
    pub passes_on: bool,
}

/// What the failure of a branch or node under `policy` does, `stopped` saying whether an
/// earlier failure already stopped the fan-out (then nothing fails or stops it again).
pub(crate) fn verdict(policy: OnFailure, stopped: bool) -> Verdict {
    match policy {
        OnFailure::Fail => Verdict {
            fails: !stopped,
            stops: !stopped,
            passes_on: false,
        },
        OnFailure::Ignore => Verdict {
            fails: false,
            stops: false,
            passes_on: true,
        },
        OnFailure::Continue => Verdict {
            fails: false,
            stops: !stopped,
            passes_on: true,
        },
    }
}

/// The failures a parallel or graph that succeeded went on past: each of `results` (one
/// per branch or node, in declared order; `None` for one without a result) that failed,
/// with its place.
pub(crate) fn set_aside<'a>(
    composition: &Composition,
    results: impl IntoIterator<Item = Option<&'a ExecutionResult>>,
) -> Vec<StepFailure> {
    results
        .into_iter()
        .enumerate()
        .filter_map(|(index, result)| {
            let result = result?;
            let error = result.error.as_ref()?;
            Some(StepFailure {
                place: place::fan_out(composition, index)?,
                name: result.execution.processor.clone(),
                error: error.clone(),
            })
        })
        .collect()
}

/// A parallel's error: the first failing branch's (`index`), reworded, with how every branch
/// ended (its result, or `None` if it has none).
pub(crate) fn parallel_failed<'a>(
    workflow: &Workflow,
    branches: &[String],
    results: impl IntoIterator<Item = Option<&'a ExecutionResult>>,
    index: usize,
    error: ExecutionError,
) -> ExecutionError {
    let mut error = step_failed(workflow, "branch", &branches[index], Some(index), error);
    let outcomes: Vec<Value> = branches
        .iter()
        .zip(results)
        .map(|(branch, result)| match result {
            Some(r) => json!({
                "branch": branch,
                "ok": r.ok,
                "kind": r.error.as_ref().map(|e| e.kind),
                "code": r.error.as_ref().and_then(|e| e.code.clone()),
            }),
            None => json!({ "branch": branch, "ok": false }),
        })
        .collect();
    if let Some(Value::Object(details)) = &mut error.details {
        details.insert("branches".into(), Value::Array(outcomes));
    }
    error
}

/// Each branch's state, for the merge: its output, or `null` for a branch without one
/// (failed and set aside, or cut short).
pub(crate) fn branch_states<'a>(
    results: impl IntoIterator<Item = Option<&'a ExecutionResult>>,
) -> Vec<Value> {
    results
        .into_iter()
        .map(|result| match result {
            Some(result) if result.error.is_none() => result.state.clone(),
            _ => Value::Null,
        })
        .collect()
}

/// What a parallel's custom merge processor receives: `{input, results: [{branch, state}]}`,
/// where a branch that failed (set aside by its `on_failure`) has a `null` state and its
/// `error`.
pub(crate) fn merge_input<'a>(
    input: &Value,
    branches: &[String],
    results: impl IntoIterator<Item = Option<&'a ExecutionResult>>,
) -> Value {
    json!({
        "input": input,
        "results": branches
            .iter()
            .zip(results)
            .map(|(branch, result)| match result.and_then(|r| r.error.as_ref()) {
                Some(error) => json!({ "branch": branch, "state": null, "error": error }),
                None => json!({
                    "branch": branch,
                    "state": result.map_or(Value::Null, |r| r.state.clone()),
                }),
            })
            .collect::<Vec<_>>(),
    })
}

/// A batch's outcome from every item's result: `{items: [state, …]}`, or for an
/// all-or-nothing batch with a failed item, the first failure.
pub(crate) fn batch_outcome(
    workflow: &Workflow,
    processor: &str,
    policy: BatchPolicy,
    input: Value,
    results: &[ExecutionResult],
    first_failure: Option<(usize, ExecutionError)>,
    metadata: &StateMetadata,
) -> Result<Value, Failure> {
    let states: Vec<Value> = results.iter().map(|r| r.state.clone()).collect();
    let mut state = Map::new();
    state.insert("items".into(), Value::Array(states));
    match (policy, first_failure) {
        (BatchPolicy::AllOrNothing, Some((index, error))) => Err((
            input,
            step_failed(workflow, "item", processor, Some(index), error),
        )),
        _ => Ok(with_metadata(state, &metadata.bumped())),
    }
}

/// Each graph node's dependents, by index.
pub(crate) fn graph_dependents(nodes: &[GraphNode]) -> Vec<Vec<usize>> {
    let mut dependents = vec![Vec::new(); nodes.len()];
    for i in 0..nodes.len() {
        for d in graph_dependencies(nodes, i) {
            dependents[d].push(i);
        }
    }
    dependents
}

/// A graph node's dependencies, by index, in declared order.
pub(crate) fn graph_dependencies(nodes: &[GraphNode], node: usize) -> Vec<usize> {
    nodes[node]
        .after
        .iter()
        .filter_map(|d| nodes.iter().position(|n| &n.name == d))
        .collect()
}

/// An error of a step, reworded to say which step of which workflow it was.
pub(crate) fn step_failed(
    workflow: &Workflow,
    what: &str,
    name: &str,
    index: Option<usize>,
    error: ExecutionError,
) -> ExecutionError {
    let mut failed_step = Map::new();
    failed_step.insert("role".into(), Value::String(what.to_string()));
    failed_step.insert("name".into(), Value::String(name.to_string()));
    if let Some(index) = index {
        failed_step.insert("index".into(), Value::from(index));
    }
    let place = match index {
        Some(index) => format!("{what} {} (`{name}`)", index + 1),
        None => format!("{what} `{name}`"),
    };
    ExecutionError {
        message: format!("{place} of `{}` failed: {}", workflow.name(), error.message),
        details: Some(json!({
            "workflow": workflow.name(),
            "failed": failed_step,
            "cause": error.details,
        })),
        ..error
    }
}

pub(super) fn as_object(state: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    state
        .as_object()
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

/// The target a route's `key` picks (or its fallback); `missing` says why there is no key.
pub(crate) fn choose_route<'a>(
    workflow: &Workflow,
    routes: &'a std::collections::BTreeMap<String, String>,
    fallback: Option<&'a str>,
    key: &Option<String>,
    missing: String,
) -> Result<&'a str, ExecutionError> {
    let target = key
        .as_ref()
        .and_then(|k| routes.get(k))
        .map(String::as_str)
        .or(fallback);
    target.ok_or_else(|| {
        let known: Vec<&str> = routes.keys().map(String::as_str).collect();
        let why = match key {
            Some(key) => format!("no route for key `{key}`"),
            None => missing,
        };
        ExecutionError::host(
            ErrorKind::NotFound,
            codes::NO_ROUTE,
            format!(
                "route `{}`: {why} (routes: {}) and no fallback",
                workflow.name(),
                known.join(", ")
            ),
        )
        .with_details(json!({ "workflow": workflow.name(), "key": key, "routes": known }))
    })
}

/// The error of a route whose chosen `target` failed.
pub(crate) fn route_failed(
    workflow: &Workflow,
    routes: &std::collections::BTreeMap<String, String>,
    key: &Option<String>,
    target: &str,
    error: ExecutionError,
) -> ExecutionError {
    let role = match key {
        Some(key) if routes.contains_key(key) => format!("route `{key}` →"),
        _ => "fallback".to_string(),
    };
    step_failed(workflow, &role, target, None, error)
}

/// Why a route's selector gave no key.
pub(crate) fn missing_key(selector: &Selector) -> String {
    match selector {
        Selector::Pointer(pointer) => {
            format!("the state has no string, number or boolean at `{pointer}`")
        }
        Selector::Processor(selector) => {
            format!("the selector `{selector}` returned no `route` key")
        }
    }
}

/// A route key from a JSON value: strings as they are, numbers and booleans as text.
pub(crate) fn key_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Refuses a batch of `count` items past `max` (a validation error naming both), before
/// anything is spawned or recorded for its items.
pub(crate) fn check_batch_size(
    workflow: &Workflow,
    count: usize,
    max: usize,
) -> Result<(), ExecutionError> {
    if count <= max {
        return Ok(());
    }
    Err(ExecutionError::host(
        ErrorKind::Validation,
        codes::BATCH_TOO_LARGE,
        format!(
            "batch `{}` got {count} items; a batch takes at most {max} (split the input, or \
             raise `max_batch_items`)",
            workflow.name()
        ),
    )
    .with_details(serde_json::json!({ "items": count, "limit": max })))
}

/// Whether a JSON value counts as true for a graph condition.
pub(crate) fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

/// A node settled: each of its dependents waits for one node fewer, and those waiting for
/// none are ready to settle in turn.
pub(super) fn release(dependents: &[usize], waiting_on: &mut [usize], settled: &mut Vec<usize>) {
    for &e in dependents {
        waiting_on[e] -= 1;
        if waiting_on[e] == 0 {
            settled.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::contract::workflow::Composition;

    fn boom() -> ExecutionError {
        ExecutionError::host(ErrorKind::Execution, "boom", "it went boom")
            .with_details(json!({"why": "a test"}))
    }

    fn routes() -> BTreeMap<String, String> {
        [("a", "mark-a"), ("b", "mark-b")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_route_takes_its_keys_target_then_the_fallback_then_fails_naming_the_routes() {
        let workflow = Workflow::route_by_pointer("r", "/kind");
        let routes = routes();
        let key = |k: &str| Some(k.to_string());
        let pick = |key: &Option<String>, fallback| {
            choose_route(&workflow, &routes, fallback, key, "no key".into())
        };
        assert_eq!(pick(&key("b"), None).ok(), Some("mark-b"));
        assert_eq!(pick(&key("z"), Some("other")).ok(), Some("other"));
        assert_eq!(pick(&None, Some("other")).ok(), Some("other"));
        let error = pick(&key("z"), None).expect_err("no route");
        assert!(error.has_code(codes::NO_ROUTE));
        assert!(error.message.contains("`z`") && error.message.contains("a, b"));
        let error = pick(&None, None).expect_err("no key");
        assert!(error.message.contains("no key"), "{}", error.message);
    }

    #[test]
    fn route_keys_are_strings_numbers_and_booleans_as_text() {
        assert_eq!(key_of(&json!("x")).as_deref(), Some("x"));
        assert_eq!(key_of(&json!(3)).as_deref(), Some("3"));
        assert_eq!(key_of(&json!(true)).as_deref(), Some("true"));
        for none in [json!(null), json!([1]), json!({"a": 1})] {
            assert_eq!(key_of(&none), None, "{none}");
        }
    }

    #[test]
    fn a_failed_route_names_its_key_or_the_fallback() {
        let workflow = Workflow::route_by_pointer("r", "/kind");
        let routes = routes();
        let error = route_failed(&workflow, &routes, &Some("a".into()), "mark-a", boom());
        assert!(
            error
                .message
                .starts_with("route `a` → `mark-a` of `r` failed")
        );
        let error = route_failed(&workflow, &routes, &Some("z".into()), "other", boom());
        assert!(error.message.starts_with("fallback `other` of `r` failed"));
    }

    #[test]
    fn a_failed_step_keeps_its_kind_and_code_and_says_where_it_was() {
        let workflow = Workflow::chain("c", ["x", "y"]);
        let error = step_failed(&workflow, "step", "y", Some(1), boom());
        assert_eq!(error.kind, ErrorKind::Execution);
        assert!(error.has_code("boom"));
        assert_eq!(error.message, "step 2 (`y`) of `c` failed: it went boom");
        let details = error.details.expect("details");
        assert_eq!(
            details["failed"],
            json!({"role": "step", "name": "y", "index": 1})
        );
        assert_eq!(details["cause"], json!({"why": "a test"}));
    }

    #[test]
    fn a_failed_parallel_reports_how_every_branch_ended() {
        let workflow = Workflow::parallel("p", ["x", "y", "z"]);
        let branches = ["x", "y", "z"].map(String::from);
        let info = ExecutionInfo::new(None, "x", "t", None);
        let ok = workflow_result(Ok(json!({})), info.clone(), None, Vec::new());
        let bad = failed(json!({}), boom(), info);
        let error = parallel_failed(
            &workflow,
            &branches,
            [Some(&ok), Some(&bad), None],
            1,
            boom(),
        );
        assert!(error.message.starts_with("branch 2 (`y`) of `p` failed"));
        let outcomes = &error.details.expect("details")["branches"];
        assert_eq!(outcomes[0]["ok"], true);
        assert_eq!(outcomes[1]["code"], "boom");
        assert_eq!(outcomes[2], json!({"branch": "z", "ok": false}));
    }

    #[test]
    fn a_merger_gets_the_input_and_each_branch_state_in_declared_order() {
        let branches = ["x", "y", "z"].map(String::from);
        let info = ExecutionInfo::new(None, "p", "t", None);
        let x = workflow_result(Ok(json!({"a": 1})), info.clone(), None, Vec::new());
        let y = failed(json!({"n": 1}), boom(), info);
        let input = merge_input(&json!({"n": 1}), &branches, [Some(&x), Some(&y), None]);
        let error = serde_json::to_value(boom()).unwrap();
        assert_eq!(
            input,
            json!({"input": {"n": 1}, "results": [
                {"branch": "x", "state": {"a": 1}},
                {"branch": "y", "state": null, "error": error},
                {"branch": "z", "state": null}
            ]})
        );
        // The default merge sees no state from a failed branch: its input would undo the
        // others' changes.
        assert_eq!(
            branch_states([Some(&x), Some(&y), None]),
            [json!({"a": 1}), json!(null), json!(null)]
        );
    }

    #[test]
    fn a_failure_under_each_policy_fails_stops_or_passes_on_its_state() {
        let v = |fails, stops, passes_on| Verdict {
            fails,
            stops,
            passes_on,
        };
        assert_eq!(verdict(OnFailure::Fail, false), v(true, true, false));
        assert_eq!(verdict(OnFailure::Ignore, false), v(false, false, true));
        assert_eq!(verdict(OnFailure::Continue, false), v(false, true, true));
        // Once the fan-out has stopped, no failure fails or stops it again.
        assert_eq!(verdict(OnFailure::Fail, true), v(false, false, false));
        assert_eq!(verdict(OnFailure::Continue, true), v(false, false, true));
    }

    #[test]
    fn a_batch_returns_every_items_state_unless_all_or_nothing_lost_one() {
        let workflow = Workflow::batch("b", "p");
        let info = ExecutionInfo::new(None, "p", "t", None);
        let results = [
            workflow_result(Ok(json!({"n": 1})), info.clone(), None, Vec::new()),
            failed(json!({"n": 2}), boom(), info),
        ];
        let metadata = StateMetadata::new(None);
        let failure = Some((1, boom()));
        let collected = batch_outcome(
            &workflow,
            "p",
            BatchPolicy::Collect,
            json!({"items": []}),
            &results,
            failure.clone(),
            &metadata,
        )
        .expect("collect keeps going");
        assert_eq!(collected["items"], json!([{"n": 1}, {"n": 2}]));
        assert_eq!(collected["metadata"]["version"], metadata.version + 1);
        let (state, error) = batch_outcome(
            &workflow,
            "p",
            BatchPolicy::AllOrNothing,
            json!({"items": ["in"]}),
            &results,
            failure,
            &metadata,
        )
        .expect_err("all or nothing fails");
        assert_eq!(
            state,
            json!({"items": ["in"]}),
            "the input is the last good state"
        );
        assert!(error.message.starts_with("item 2 (`p`) of `b` failed"));
    }

    #[test]
    fn a_batch_over_its_limit_is_refused_naming_both() {
        let workflow = Workflow::batch("b", "p");
        assert!(check_batch_size(&workflow, 3, 3).is_ok());
        let error = check_batch_size(&workflow, 4, 3).expect_err("too many");
        assert!(error.has_code(codes::BATCH_TOO_LARGE));
        assert_eq!(error.details, Some(json!({"items": 4, "limit": 3})));
    }

    #[test]
    fn graph_edges_are_found_both_ways_and_released_nodes_become_ready() {
        let workflow = Workflow::graph("g")
            .node("a", [] as [&str; 0])
            .node("b", ["a"])
            .node("c", ["a", "b"]);
        let Composition::Graph { nodes } = workflow.composition() else {
            panic!("a graph");
        };
        assert_eq!(graph_dependencies(nodes, 2), [0, 1]);
        assert_eq!(graph_dependents(nodes), [vec![1, 2], vec![2], vec![]]);
        let mut waiting_on = vec![0, 1, 2];
        let mut ready = Vec::new();
        release(&[1, 2], &mut waiting_on, &mut ready);
        assert_eq!(
            (waiting_on.as_slice(), ready.as_slice()),
            (&[0, 0, 1][..], &[1][..])
        );
        release(&[2], &mut waiting_on, &mut ready);
        assert_eq!(ready, [1, 2]);
    }

    #[test]
    fn a_condition_is_false_only_for_nothing_null_false_zero_and_empty_text() {
        for falsy in [
            None,
            Some(json!(null)),
            Some(json!(false)),
            Some(json!(0)),
            Some(json!("")),
        ] {
            assert!(!truthy(falsy.as_ref()), "{falsy:?}");
        }
        for true_ in [json!(true), json!(1), json!("x"), json!([]), json!({})] {
            assert!(truthy(Some(&true_)), "{true_}");
        }
    }
}
