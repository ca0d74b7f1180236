//! Running workflows. Every step is a full execution of a processor or workflow — its own
//! sandbox, limits, retries and metadata bump — run under the workflow's scope: the same
//! tenant and session, the workflow's deadline, cancelled with the workflow. A workflow's
//! result is a result document like a processor's, with the steps' fuel summed and their
//! peak memory maximised; on failure the error names the step, branch or route that failed
//! and the state is the last good one.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::cancel::CancelReason;
use crate::error::{ErrorKind, ExecutionError, codes};
use crate::executor::{Scope, failed, run_boxed};
use crate::merge::merge_branches;
use crate::result::{ExecutionInfo, ExecutionResult};
use crate::runtime::Shared;
use crate::state::{StateMetadata, with_metadata};
use crate::workflow::{Composition, Selector, Workflow};

/// What the steps of one workflow run cost.
#[derive(Default)]
struct Cost {
    fuel: u64,
    peak_memory: u64,
}

impl Cost {
    fn absorb(&mut self, step: &ExecutionResult) {
        self.fuel = self.fuel.saturating_add(step.execution.fuel_consumed);
        self.peak_memory = self.peak_memory.max(step.execution.peak_memory_bytes);
    }
}

/// A failed workflow: the last good state and the error.
type Failure = (Value, ExecutionError);

/// Runs `workflow` on `input` (a state carrying `metadata`).
pub(crate) async fn run(
    shared: &Arc<Shared>,
    workflow: &Arc<Workflow>,
    input: Value,
    metadata: StateMetadata,
    scope: Scope,
    mut info: ExecutionInfo,
) -> ExecutionResult {
    info.attempts = 1;
    let timeout = workflow.timeout_ms().map(Duration::from_millis);
    let scope = scope.step(timeout, scope.cancel.clone());
    let mut cost = Cost::default();
    let outcome = match workflow.composition() {
        Composition::Chain { steps } => {
            chain(shared, workflow, steps, input, &scope, &mut cost).await
        }
        Composition::Parallel { branches, merge } => {
            parallel(
                shared,
                workflow,
                branches,
                merge.as_deref(),
                input,
                &metadata,
                &scope,
                &mut cost,
            )
            .await
        }
        Composition::Route {
            selector,
            routes,
            fallback,
        } => {
            let route = Route {
                selector,
                routes,
                fallback: fallback.as_deref(),
            };
            route.run(shared, workflow, input, &scope, &mut cost).await
        }
    };
    info.fuel_consumed = cost.fuel;
    info.peak_memory_bytes = cost.peak_memory;
    match outcome {
        Ok(state) => ExecutionResult {
            ok: true,
            state,
            error: None,
            execution: info,
        },
        Err((state, error)) => failed(state, error, info),
    }
}

/// An error of a step, reworded to say which step of which workflow it was.
fn step_failed(
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

async fn chain(
    shared: &Arc<Shared>,
    workflow: &Workflow,
    steps: &[String],
    input: Value,
    scope: &Scope,
    cost: &mut Cost,
) -> Result<Value, Failure> {
    let mut state = input;
    for (index, step) in steps.iter().enumerate() {
        let result = run_boxed(shared, step, state, scope.clone()).await;
        cost.absorb(&result);
        // A failed step's state is its input: the chain's last good state.
        state = result.state;
        if let Some(error) = result.error {
            return Err((
                state,
                step_failed(workflow, "step", step, Some(index), error),
            ));
        }
    }
    Ok(state)
}

#[allow(clippy::too_many_arguments)]
async fn parallel(
    shared: &Arc<Shared>,
    workflow: &Workflow,
    branches: &[String],
    merge: Option<&str>,
    input: Value,
    metadata: &StateMetadata,
    scope: &Scope,
    cost: &mut Cost,
) -> Result<Value, Failure> {
    // Every branch runs as its own task, so branches use every core; cancelling `siblings`
    // stops them all (softly, then for real after the grace period).
    let siblings = scope.cancel.child();
    let mut tasks = JoinSet::new();
    for (index, branch) in branches.iter().enumerate() {
        let shared = shared.clone();
        let branch = branch.clone();
        let input = input.clone();
        let step = scope.step(None, siblings.child());
        tasks.spawn(
            async move {
                let result = run_boxed(&shared, &branch, input, step).await;
                (index, result)
            }
            .instrument(tracing::Span::current()),
        );
    }
    let mut results: Vec<Option<ExecutionResult>> = vec![None; branches.len()];
    let mut first_failure: Option<(usize, ExecutionError)> = None;
    while let Some(joined) = tasks.join_next().await {
        let (index, result) = match joined {
            Ok(done) => done,
            Err(join_error) => {
                // A branch task cannot panic unless the host has a bug; report, don't hide.
                let error = ExecutionError::host(
                    ErrorKind::Execution,
                    codes::TRAP,
                    format!(
                        "a branch of `{}` stopped abnormally: {join_error}",
                        workflow.name()
                    ),
                );
                first_failure.get_or_insert((0, error));
                siblings.cancel_with(CancelReason::Sibling);
                continue;
            }
        };
        cost.absorb(&result);
        if let Some(error) = &result.error
            && first_failure.is_none()
        {
            first_failure = Some((index, error.clone()));
            siblings.cancel_with(CancelReason::Sibling);
        }
        results[index] = Some(result);
    }
    if let Some((index, error)) = first_failure {
        let name = &branches[index];
        let mut error = step_failed(workflow, "branch", name, Some(index), error);
        // How every branch ended: the failure, and the siblings it cancelled.
        let outcomes: Vec<Value> = branches
            .iter()
            .zip(&results)
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
        return Err((input, error));
    }
    let states: Vec<Value> = results
        .into_iter()
        .map(|r| r.map_or(Value::Null, |r| r.state))
        .collect();
    let merged = match merge {
        None => {
            let objects: Vec<&Map<String, Value>> =
                states.iter().filter_map(Value::as_object).collect();
            merge_branches(as_object(&input), objects)
        }
        Some(merger) => {
            let merge_input = json!({
                "input": input,
                "results": branches
                    .iter()
                    .zip(&states)
                    .map(|(branch, state)| json!({ "branch": branch, "state": state }))
                    .collect::<Vec<_>>(),
            });
            let result = run_boxed(shared, merger, merge_input, scope.clone()).await;
            cost.absorb(&result);
            if let Some(error) = result.error {
                return Err((input, step_failed(workflow, "merge", merger, None, error)));
            }
            match result.state {
                Value::Object(merged) => merged,
                _ => Map::new(),
            }
        }
    };
    Ok(with_metadata(merged, &metadata.bumped()))
}

fn as_object(state: &Value) -> &Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    state
        .as_object()
        .unwrap_or_else(|| EMPTY.get_or_init(Map::new))
}

struct Route<'a> {
    selector: &'a Selector,
    routes: &'a std::collections::BTreeMap<String, String>,
    fallback: Option<&'a str>,
}

impl Route<'_> {
    async fn run(
        &self,
        shared: &Arc<Shared>,
        workflow: &Workflow,
        input: Value,
        scope: &Scope,
        cost: &mut Cost,
    ) -> Result<Value, Failure> {
        let (key, missing) = match self.selector {
            Selector::Pointer(pointer) => (
                input.pointer(pointer).and_then(key_of),
                format!("the state has no string, number or boolean at `{pointer}`"),
            ),
            Selector::Processor(selector) => {
                let result = run_boxed(shared, selector, input.clone(), scope.clone()).await;
                cost.absorb(&result);
                if let Some(error) = result.error {
                    return Err((
                        input,
                        step_failed(workflow, "selector", selector, None, error),
                    ));
                }
                (
                    result.state.get("route").and_then(key_of),
                    format!("the selector `{selector}` returned no `route` key"),
                )
            }
        };
        let target = key
            .as_ref()
            .and_then(|k| self.routes.get(k))
            .map(String::as_str)
            .or(self.fallback);
        let Some(target) = target else {
            let known: Vec<&str> = self.routes.keys().map(String::as_str).collect();
            let why = match &key {
                Some(key) => format!("no route for key `{key}`"),
                None => missing,
            };
            let error = ExecutionError::host(
                ErrorKind::NotFound,
                codes::NO_ROUTE,
                format!(
                    "route `{}`: {why} (routes: {}) and no fallback",
                    workflow.name(),
                    known.join(", ")
                ),
            )
            .with_details(json!({ "workflow": workflow.name(), "key": key, "routes": known }));
            return Err((input, error));
        };
        let result = run_boxed(shared, target, input, scope.clone()).await;
        cost.absorb(&result);
        match result.error {
            None => Ok(result.state),
            Some(error) => {
                let role = match &key {
                    Some(key) if self.routes.contains_key(key) => format!("route `{key}` →"),
                    _ => "fallback".to_string(),
                };
                Err((
                    result.state,
                    step_failed(workflow, &role, target, None, error),
                ))
            }
        }
    }
}

/// A route key from a JSON value: strings as they are, numbers and booleans as text.
fn key_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}
