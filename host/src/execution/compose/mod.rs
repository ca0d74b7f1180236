//! Running workflows. Every step is a full execution of a processor or workflow — its own
//! sandbox, limits, retries and metadata bump — run under the workflow's scope: the same
//! tenant and session, the workflow's deadline, cancelled with the workflow. A workflow's
//! result is a result document like a processor's, with the steps' fuel summed and their
//! peak memory maximised; on failure the error names the step, branch or route that failed
//! and the state is the last good one.
//!
//! The steps themselves are run by a [`StepRunner`]: the runtime's context in production
//! (each step through the executor), an in-process fake in tests (`fake.rs`), which check
//! every composition rule without compiling a plugin. The rules themselves (which route,
//! what a failure makes of the workflow, how branches merge) are [`rules`], which the
//! distributed driver shares.

pub(crate) mod rules;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::contract::cancel::CancelReason;
use crate::contract::error::{ErrorKind, ExecutionError, codes};
use crate::contract::merge::merge_branches;
use crate::contract::result::{ExecutionInfo, ExecutionResult, StepFailure};
use crate::contract::state::{StateMetadata, with_metadata};
use crate::contract::workflow::{BatchPolicy, Composition, GraphNode, Selector, Workflow};
use crate::execution::context::Context;
use crate::execution::executor::{Scope, failed, run_boxed};
use rules::{
    Failure, as_object, batch_outcome, branch_states, check_batch_size, choose_route,
    graph_dependencies, graph_dependents, key_of, merge_input, missing_key, parallel_failed, place,
    release, route_failed, set_aside, step_failed, truthy, verdict, workflow_result,
};

/// What runs a workflow's steps: each a full execution of the processor or workflow `name`
/// in the step's scope. Implemented by the runtime's context, through the executor.
pub(crate) trait StepRunner: Clone + Send + Sync + 'static {
    /// Runs `name` on `input` in `scope`.
    fn run_step<'a>(
        &'a self,
        name: &'a str,
        input: Value,
        scope: Scope,
    ) -> Pin<Box<dyn Future<Output = ExecutionResult> + Send + 'a>>;

    /// The most items one batch takes.
    fn max_batch_items(&self) -> usize;
}

impl StepRunner for Arc<Context> {
    fn run_step<'a>(
        &'a self,
        name: &'a str,
        input: Value,
        scope: Scope,
    ) -> Pin<Box<dyn Future<Output = ExecutionResult> + Send + 'a>> {
        run_boxed(self, name, input, scope)
    }

    fn max_batch_items(&self) -> usize {
        self.config().max_batch_items
    }
}

/// What the steps of one workflow run cost, and the failures it went on past.
#[derive(Default)]
struct Cost {
    fuel: u64,
    peak_memory: u64,
    /// A fan-out's failures set aside by `on_failure` (only kept if it succeeds).
    failures: Vec<StepFailure>,
}

impl Cost {
    fn absorb(&mut self, step: &ExecutionResult) {
        self.fuel = self.fuel.saturating_add(step.execution.fuel_consumed);
        self.peak_memory = self.peak_memory.max(step.execution.peak_memory_bytes);
    }
}

/// Runs `workflow` on `input` (a state carrying `metadata`).
pub(crate) async fn run<R: StepRunner>(
    shared: &R,
    workflow: &Arc<Workflow>,
    input: Value,
    metadata: StateMetadata,
    scope: Scope,
    mut info: ExecutionInfo,
) -> ExecutionResult {
    info.attempts = 1;
    let timeout = workflow.timeout_ms().map(Duration::from_millis);
    // Steps are children of this workflow's execution, each at its own place in it.
    let scope = Scope {
        parent: Some(Arc::from(info.id.as_str())),
        step: None,
        ..scope.step(timeout, scope.cancel.clone())
    };
    let mut cost = Cost::default();
    let mut items = None;
    let outcome = match workflow.composition() {
        Composition::Chain { steps, .. } => {
            chain(shared, workflow, steps, input, &scope, &mut cost).await
        }
        Composition::Parallel {
            branches, merge, ..
        } => {
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
        Composition::Batch {
            processor,
            concurrency,
            policy,
        } => {
            let batch = Batch {
                processor,
                concurrency: *concurrency,
                policy: *policy,
            };
            let (outcome, results) = batch
                .run(shared, workflow, input, &metadata, &scope, &mut cost)
                .await;
            items = results;
            outcome
        }
        Composition::Graph { nodes } => {
            graph(shared, workflow, nodes, input, &metadata, &scope, &mut cost).await
        }
    };
    info.fuel_consumed = cost.fuel;
    info.peak_memory_bytes = cost.peak_memory;
    workflow_result(outcome, info, items, cost.failures)
}

/// Steps running as tasks, each known by its index, so that a step whose task died (which
/// only a bug in the host can cause) is still reported against the right step instead of
/// vanishing from the results.
struct Steps {
    tasks: JoinSet<ExecutionResult>,
    index_of: HashMap<tokio::task::Id, usize>,
}

impl Steps {
    fn new() -> Self {
        Steps {
            tasks: JoinSet::new(),
            index_of: HashMap::new(),
        }
    }

    fn spawn(
        &mut self,
        index: usize,
        step: impl std::future::Future<Output = ExecutionResult> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(step.instrument(tracing::Span::current()));
        self.index_of.insert(handle.id(), index);
    }

    /// The next step to finish: its index, and its result or why its task died.
    async fn next(&mut self) -> Option<(usize, Result<ExecutionResult, String>)> {
        loop {
            let (id, outcome) = match self.tasks.join_next_with_id().await? {
                Ok((id, result)) => (id, Ok(result)),
                Err(error) => (error.id(), Err(error.to_string())),
            };
            if let Some(index) = self.index_of.remove(&id) {
                return Some((index, outcome));
            }
        }
    }
}

/// The result of a step whose task died.
fn abnormal(scope: &Scope, name: &str, why: String) -> ExecutionResult {
    let info = ExecutionInfo::new(
        None,
        name,
        &*scope.tenant,
        scope.session.as_deref().map(str::to_string),
    );
    let error = ExecutionError::host(
        ErrorKind::Execution,
        codes::TRAP,
        format!("the step `{name}` stopped abnormally: {why}"),
    );
    failed(Value::Null, error, info)
}

async fn chain<R: StepRunner>(
    shared: &R,
    workflow: &Workflow,
    steps: &[String],
    input: Value,
    scope: &Scope,
    cost: &mut Cost,
) -> Result<Value, Failure> {
    let compensate = match workflow.composition() {
        Composition::Chain { compensate, .. } => compensate,
        _ => &std::collections::BTreeMap::new(),
    };
    // The completed steps that name a compensation, with the state each produced.
    let mut done: Vec<(usize, Value)> = Vec::new();
    let mut state = input;
    for (index, step) in steps.iter().enumerate() {
        let result = match crate::contract::workflow::delay_of(step) {
            Some(wait) => wait_out(step, wait, state, scope).await,
            None => {
                shared
                    .run_step(step, state, scope.clone().at(place::chain(index)))
                    .await
            }
        };
        cost.absorb(&result);
        // A failed step's state is its input: the chain's last good state.
        state = result.state;
        if let Some(error) = result.error {
            let error = step_failed(workflow, "step", step, Some(index), error);
            let error = undo(
                shared,
                workflow,
                steps,
                done,
                (index, error),
                &state,
                scope,
                cost,
            )
            .await;
            return Err((state, error));
        }
        if compensate.contains_key(step) {
            done.push((index, state.clone()));
        }
    }
    Ok(state)
}

/// Undoes a failed chain (a saga): runs the compensations of its completed steps (`done`,
/// each with the state it produced), the last first, then its failure handler on the
/// failed step, `error` and the last good `state`. Every one runs whatever the others do;
/// the chain's error reports how each ended.
#[allow(clippy::too_many_arguments)]
async fn undo<R: StepRunner>(
    shared: &R,
    workflow: &Workflow,
    steps: &[String],
    done: Vec<(usize, Value)>,
    (failed_at, error): (usize, ExecutionError),
    state: &Value,
    scope: &Scope,
    cost: &mut Cost,
) -> ExecutionError {
    let Composition::Chain {
        compensate,
        on_failure,
        ..
    } = workflow.composition()
    else {
        return error;
    };
    let mut outcomes = Vec::new();
    for (index, produced) in done.into_iter().rev() {
        let step = &steps[index];
        let Some(compensation) = compensate.get(step) else {
            continue;
        };
        let result = shared
            .run_step(
                compensation,
                produced,
                scope.clone().at(place::compensate(index)),
            )
            .await;
        cost.absorb(&result);
        outcomes.push(rules::compensation_outcome(
            index,
            step,
            compensation,
            &result,
        ));
    }
    let handled = match on_failure {
        Some(handler) => {
            let input = rules::handler_input(failed_at, &steps[failed_at], &error, state);
            let result = shared
                .run_step(handler, input, scope.clone().at(place::ON_FAILURE))
                .await;
            cost.absorb(&result);
            Some(rules::handler_outcome(handler, &result))
        }
        None => None,
    };
    rules::undone(error, outcomes, handled)
}

/// A chain's delay step: waits `wait` (holding no sandbox), unless the workflow is
/// cancelled or its deadline comes first.
async fn wait_out(step: &str, wait: Duration, state: Value, scope: &Scope) -> ExecutionResult {
    let info = ExecutionInfo::new(
        None,
        step,
        &*scope.tenant,
        scope.session.as_deref().map(str::to_string),
    );
    let now = tokio::time::Instant::now();
    let until = now + wait;
    let deadline = scope
        .deadline
        .map(tokio::time::Instant::from_std)
        .filter(|deadline| *deadline < until);
    let error = tokio::select! {
        () = tokio::time::sleep_until(deadline.unwrap_or(until)) => {
            deadline.map(|_| rules::delay_past_deadline(step))
        }
        () = scope.cancel.cancelled() => Some(crate::execution::executor::cancelled_error(
            &scope.cancel,
            "while it waited",
        )),
    };
    rules::delay_result(step, state, info, error)
}

#[allow(clippy::too_many_arguments)]
async fn parallel<R: StepRunner>(
    shared: &R,
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
    let mut steps = Steps::new();
    for (index, branch) in branches.iter().enumerate() {
        let shared = shared.clone();
        let branch = branch.clone();
        let input = input.clone();
        let step = scope.step(None, siblings.child()).at(place::branch(index));
        steps.spawn(
            index,
            async move { shared.run_step(&branch, input, step).await },
        );
    }
    let mut results: Vec<Option<ExecutionResult>> = vec![None; branches.len()];
    let mut first_failure: Option<(usize, ExecutionError)> = None;
    // Whether a failure has stopped the others (failing the parallel, or continuing it).
    let mut stopped = false;
    while let Some((index, outcome)) = steps.next().await {
        let result = outcome.unwrap_or_else(|why| abnormal(scope, &branches[index], why));
        cost.absorb(&result);
        if let Some(error) = &result.error {
            let verdict = verdict(workflow.on_failure_of(index), stopped);
            if verdict.fails {
                first_failure = Some((index, error.clone()));
            }
            if verdict.stops {
                stopped = true;
                siblings.cancel_with(CancelReason::Sibling);
            }
        }
        results[index] = Some(result);
    }
    if let Some((index, error)) = first_failure {
        // How every branch ended: the failure, and the siblings it cancelled.
        let error = parallel_failed(
            workflow,
            branches,
            results.iter().map(Option::as_ref),
            index,
            error,
        );
        return Err((input, error));
    }
    cost.failures = set_aside(workflow.composition(), results.iter().map(Option::as_ref));
    let states = branch_states(results.iter().map(Option::as_ref));
    let merged = match merge {
        None => {
            let objects: Vec<&Map<String, Value>> =
                states.iter().filter_map(Value::as_object).collect();
            merge_branches(as_object(&input), objects)
        }
        Some(merger) => {
            let merge_input = merge_input(&input, branches, results.iter().map(Option::as_ref));
            let result = shared
                .run_step(merger, merge_input, scope.clone().at(place::MERGE))
                .await;
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

struct Route<'a> {
    selector: &'a Selector,
    routes: &'a std::collections::BTreeMap<String, String>,
    fallback: Option<&'a str>,
}

impl Route<'_> {
    async fn run<R: StepRunner>(
        &self,
        shared: &R,
        workflow: &Workflow,
        input: Value,
        scope: &Scope,
        cost: &mut Cost,
    ) -> Result<Value, Failure> {
        let (key, missing) = match self.selector {
            Selector::Pointer(pointer) => (
                input.pointer(pointer).and_then(key_of),
                missing_key(self.selector),
            ),
            Selector::Processor(selector) => {
                let result = shared
                    .run_step(selector, input.clone(), scope.clone().at(place::SELECTOR))
                    .await;
                cost.absorb(&result);
                if let Some(error) = result.error {
                    return Err((
                        input,
                        step_failed(workflow, "selector", selector, None, error),
                    ));
                }
                (
                    result.state.get("route").and_then(key_of),
                    missing_key(self.selector),
                )
            }
        };
        let target = match choose_route(workflow, self.routes, self.fallback, &key, missing) {
            Ok(target) => target,
            Err(error) => return Err((input, error)),
        };
        let at = place::route(self.routes, key.as_deref());
        let result = shared.run_step(target, input, scope.clone().at(at)).await;
        cost.absorb(&result);
        match result.error {
            None => Ok(result.state),
            Some(error) => Err((
                result.state,
                route_failed(workflow, self.routes, &key, target, error),
            )),
        }
    }
}

struct Batch<'a> {
    processor: &'a str,
    concurrency: usize,
    policy: BatchPolicy,
}

impl Batch<'_> {
    /// Runs the batch; returns the outcome and, when the input was a batch at all, one
    /// result per item.
    async fn run<R: StepRunner>(
        &self,
        shared: &R,
        workflow: &Workflow,
        input: Value,
        metadata: &StateMetadata,
        scope: &Scope,
        cost: &mut Cost,
    ) -> (Result<Value, Failure>, Option<Vec<ExecutionResult>>) {
        let Some(Value::Array(items)) = input.get("items") else {
            let error = ExecutionError::host(
                ErrorKind::Validation,
                codes::INVALID_INPUT,
                format!(
                    "batch `{}` takes {{\"items\": [state, ...]}}; the input has no `items` array",
                    workflow.name()
                ),
            );
            return (Err((input, error)), None);
        };
        let count = items.len();
        if let Err(error) = check_batch_size(workflow, count, shared.max_batch_items()) {
            return (Err((input, error)), None);
        }
        // The submitter pays for every item before any starts.
        if let Some(admission) = &scope.admission
            && let Err(error) = admission.admit_items(count).await
        {
            return (Err((input, error)), None);
        }
        let items = items.clone();
        // Cancelled when an all-or-nothing batch loses an item: running items stop, waiting
        // ones never start.
        let siblings = scope.cancel.child();
        let slots = Arc::new(tokio::sync::Semaphore::new(self.concurrency.max(1)));
        let mut steps = Steps::new();
        for (index, item) in items.into_iter().enumerate() {
            let shared = shared.clone();
            let processor = self.processor.to_string();
            let step = scope.step(None, siblings.child()).at(place::item(index));
            let slots = slots.clone();
            let stop_others = (self.policy == BatchPolicy::AllOrNothing).then(|| siblings.clone());
            steps.spawn(index, async move {
                // The semaphore is never closed, so acquiring only waits.
                let slot = slots.acquire_owned().await.ok();
                let result = shared.run_step(&processor, item, step).await;
                // Cancel before giving up the slot, so no later item starts after a
                // failure that dooms the batch.
                if let Some(siblings) = stop_others
                    && !result.ok
                {
                    siblings.cancel_with(CancelReason::Sibling);
                }
                drop(slot);
                result
            });
        }
        let mut results: Vec<Option<ExecutionResult>> = vec![None; count];
        let mut first_failure: Option<(usize, ExecutionError)> = None;
        while let Some((index, outcome)) = steps.next().await {
            let result = outcome.unwrap_or_else(|why| abnormal(scope, self.processor, why));
            cost.absorb(&result);
            if let Some(error) = &result.error
                && first_failure.is_none()
            {
                first_failure = Some((index, error.clone()));
                if self.policy == BatchPolicy::AllOrNothing {
                    siblings.cancel_with(CancelReason::Sibling);
                }
            }
            results[index] = Some(result);
        }
        let results: Vec<ExecutionResult> = results.into_iter().flatten().collect();
        let outcome = batch_outcome(
            workflow,
            self.processor,
            self.policy,
            input,
            &results,
            first_failure,
            metadata,
        );
        (outcome, Some(results))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum NodeState {
    Waiting,
    Running,
    Done,
    Skipped,
}

async fn graph<R: StepRunner>(
    shared: &R,
    workflow: &Workflow,
    nodes: &[GraphNode],
    input: Value,
    metadata: &StateMetadata,
    scope: &Scope,
    cost: &mut Cost,
) -> Result<Value, Failure> {
    let dependents = graph_dependents(nodes);
    let mut waiting_on: Vec<usize> = nodes.iter().map(|n| n.after.len()).collect();
    let mut states = vec![NodeState::Waiting; nodes.len()];
    let mut outputs: Vec<Option<Value>> = vec![None; nodes.len()];
    let siblings = scope.cancel.child();
    let mut steps = Steps::new();
    let mut first_failure: Option<(usize, ExecutionError)> = None;
    // Whether a failure has stopped the graph (failing it, or continuing it at once).
    let mut stopped = false;
    let mut results: Vec<Option<ExecutionResult>> = vec![None; nodes.len()];
    let empty = Map::new();
    let base = input.as_object().unwrap_or(&empty);

    // Nodes whose dependencies are all settled: start them, or skip them (and settle
    // their dependents in turn).
    let mut settled: Vec<usize> = (0..nodes.len()).filter(|&i| waiting_on[i] == 0).collect();
    loop {
        while let Some(i) = settled.pop() {
            let node = &nodes[i];
            let deps = graph_dependencies(nodes, i);
            let failed_before = stopped;
            // Every settled dependency has an output: its result, or for a skipped node
            // its input passed through unchanged, so the work before a skip is kept.
            let dep_outputs: Vec<&Map<String, Value>> = deps
                .iter()
                .filter_map(|&d| outputs[d].as_ref().and_then(Value::as_object))
                .collect();
            let node_input = Value::Object(if dep_outputs.is_empty() {
                base.clone()
            } else {
                merge_branches(base, dep_outputs)
            });
            let skip_reason = if failed_before {
                Some("an earlier node's failure stopped the graph")
            } else if deps.iter().any(|&d| states[d] == NodeState::Skipped) {
                Some("a node it runs after was skipped")
            } else if node
                .condition
                .as_ref()
                .is_some_and(|pointer| !truthy(node_input.pointer(pointer)))
            {
                Some("its condition is false")
            } else {
                None
            };
            match skip_reason {
                None => {
                    states[i] = NodeState::Running;
                    let shared = shared.clone();
                    let run = node.run.clone();
                    let step = scope
                        .step(None, siblings.child())
                        .at(place::node(&node.name));
                    steps.spawn(
                        i,
                        async move { shared.run_step(&run, node_input, step).await },
                    );
                }
                Some(reason) => {
                    tracing::debug!(node = %node.name, reason, "graph node skipped");
                    states[i] = NodeState::Skipped;
                    outputs[i] = Some(node_input);
                    release(&dependents[i], &mut waiting_on, &mut settled);
                }
            }
        }
        let Some((i, outcome)) = steps.next().await else {
            break;
        };
        let result = outcome.unwrap_or_else(|why| abnormal(scope, &nodes[i].run, why));
        cost.absorb(&result);
        states[i] = NodeState::Done;
        match &result.error {
            Some(error) => {
                let verdict = verdict(nodes[i].on_failure, stopped);
                if verdict.fails {
                    first_failure = Some((i, error.clone()));
                }
                if verdict.stops {
                    stopped = true;
                    siblings.cancel_with(CancelReason::Sibling);
                }
                if verdict.passes_on {
                    outputs[i] = Some(result.state.clone());
                }
            }
            None => outputs[i] = Some(result.state.clone()),
        }
        results[i] = Some(result);
        release(&dependents[i], &mut waiting_on, &mut settled);
    }
    if let Some((i, error)) = first_failure {
        return Err((
            input,
            step_failed(workflow, "node", &nodes[i].name, None, error),
        ));
    }
    cost.failures = set_aside(workflow.composition(), results.iter().map(Option::as_ref));
    // Sinks, in declared order; a skipped sink contributes what reached it.
    let sinks: Vec<&Map<String, Value>> = (0..nodes.len())
        .filter(|&i| dependents[i].is_empty())
        .filter_map(|i| outputs[i].as_ref().and_then(Value::as_object))
        .collect();
    Ok(with_metadata(
        merge_branches(base, sinks),
        &metadata.bumped(),
    ))
}

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;
