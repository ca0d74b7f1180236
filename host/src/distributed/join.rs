//! A fan-out's join record: which branches of a parallel, batch or graph have finished,
//! which run, and which may start next, with the rules that advance it. Pure: the
//! workers that share it read it from Redis, advance it and write it back with
//! compare-and-set (`fanout.rs`), and the join computes the workflow's result from it with
//! the same rules as [`crate::execution::compose`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::trust::Seal;
use crate::contract::cancel::CancelReason;
use crate::contract::error::{ErrorKind, ExecutionError, codes};
use crate::contract::merge::merge_branches;
use crate::contract::result::{ExecutionInfo, ExecutionResult, StepFailure};
use crate::contract::state::{self, with_metadata};
use crate::contract::workflow::{Composition, GraphNode, Workflow};
use crate::execution::compose::rules::{
    batch_outcome, branch_states, check_batch_size, graph_dependencies, graph_dependents,
    merge_input, parallel_failed, set_aside, step_failed, truthy, verdict,
};
use crate::execution::executor::{cancelled_unstarted, failed};

/// Where a fan-out stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JoinState {
    /// The fan-out's input, with its metadata.
    pub input: Value,
    /// One per branch, item or node, in declared order.
    pub nodes: Vec<NodeState>,
    /// The first branch to fail the fan-out, and how.
    pub first_failure: Option<(usize, ExecutionError)>,
    /// Whether a failure has stopped the fan-out without failing it (`on_failure =
    /// "continue"`): what runs is cancelled, what waits never starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut_short: bool,
    /// A batch's next item to start.
    pub next_item: usize,
    /// What the finished branches cost.
    pub fuel: u64,
    pub peak_memory: u64,
}

/// One branch, item or node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeState {
    pub status: Status,
    /// Its result, once done.
    pub result: Option<ExecutionResult>,
    /// A graph node's output (for a skipped node: what reached it).
    pub output: Option<Value>,
    /// The node whose completion started it (`None`: started with the fan-out).
    pub started_by: Option<usize>,
}

/// Where a branch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Status {
    Waiting,
    Running,
    Done,
    Skipped,
}

/// A branch to start: which, what it runs, on what.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Start {
    pub node: usize,
    pub name: String,
    pub input: Value,
}

/// A processor's digest and declared version.
pub(crate) type Identity = (Option<String>, Option<String>);

/// How a fan-out ended, once every branch has.
pub(crate) enum Ending {
    /// The workflow's outcome (and, for a batch, every item's result).
    Outcome(
        Result<Value, (Value, ExecutionError)>,
        Option<Vec<ExecutionResult>>,
        Vec<StepFailure>,
    ),
    /// A parallel's custom merge must run on this input first; `failures` are those its
    /// branches went on past, for the parallel's result.
    Merge {
        merger: String,
        input: Value,
        failures: Vec<StepFailure>,
    },
}

impl JoinState {
    /// The state of a fan-out of `workflow` on `input` (with metadata), and the branches
    /// that start at once; `Err` when the input does not fit (a batch without items, or
    /// with more than `max_items`).
    pub(crate) fn open(
        workflow: &Workflow,
        input: Value,
        max_items: usize,
    ) -> Result<(JoinState, Vec<Start>), ExecutionError> {
        let count = match workflow.composition() {
            Composition::Parallel { branches, .. } => branches.len(),
            Composition::Batch { .. } => match input.get("items") {
                Some(Value::Array(items)) => {
                    check_batch_size(workflow, items.len(), max_items)?;
                    items.len()
                }
                _ => {
                    return Err(ExecutionError::host(
                        ErrorKind::Validation,
                        codes::INVALID_INPUT,
                        format!(
                            "batch `{}` takes {{\"items\": [state, ...]}}; the input has no \
                             `items` array",
                            workflow.name()
                        ),
                    ));
                }
            },
            Composition::Graph { nodes } => nodes.len(),
            _ => 0,
        };
        let mut state = JoinState {
            input,
            nodes: vec![
                NodeState {
                    status: Status::Waiting,
                    result: None,
                    output: None,
                    started_by: None,
                };
                count
            ],
            first_failure: None,
            cut_short: false,
            next_item: 0,
            fuel: 0,
            peak_memory: 0,
        };
        let starts = match workflow.composition() {
            Composition::Parallel { branches, .. } => (0..branches.len())
                .map(|i| state.start(i, &branches[i], state.input.clone(), None))
                .collect(),
            Composition::Batch {
                processor,
                concurrency,
                ..
            } => {
                let first = (*concurrency).max(1).min(count);
                (0..first)
                    .filter_map(|_| state.next_batch_item(processor, None))
                    .collect()
            }
            Composition::Graph { nodes } => {
                let ready = (0..nodes.len())
                    .filter(|&i| nodes[i].after.is_empty())
                    .collect();
                state.settle(nodes, ready, None)
            }
            _ => Vec::new(),
        };
        Ok((state, starts))
    }

    /// Records that `node` finished with `result`; returns the branches that start now.
    /// A node already recorded (its job ran twice) changes nothing: the branches it started
    /// then are returned again, to be enqueued again (harmlessly).
    pub(crate) fn complete(
        &mut self,
        workflow: &Workflow,
        node: usize,
        result: ExecutionResult,
    ) -> Vec<Start> {
        if node >= self.nodes.len() {
            return Vec::new();
        }
        if self.nodes[node].status == Status::Done {
            return self.started_by(workflow, node);
        }
        self.fuel = self.fuel.saturating_add(result.execution.fuel_consumed);
        self.peak_memory = self.peak_memory.max(result.execution.peak_memory_bytes);
        let verdict = result
            .error
            .as_ref()
            .map(|_| verdict(workflow.on_failure_of(node), self.doomed()));
        if let (Some(verdict), Some(error)) = (verdict, &result.error) {
            if verdict.fails {
                self.first_failure = Some((node, error.clone()));
            } else if verdict.stops {
                self.cut_short = true;
            }
        }
        let entry = &mut self.nodes[node];
        entry.status = Status::Done;
        // A graph node passes on its output, or (its failure set aside) its last good state.
        let graph = matches!(workflow.composition(), Composition::Graph { .. });
        if verdict.is_none_or(|v| graph && v.passes_on) {
            entry.output = Some(result.state.clone());
        }
        entry.result = Some(result);
        match workflow.composition() {
            Composition::Batch { processor, .. } => self
                .next_batch_item(processor, Some(node))
                .into_iter()
                .collect(),
            Composition::Graph { nodes } => {
                let ready = self.released(nodes, node);
                self.settle(nodes, ready, Some(node))
            }
            _ => Vec::new(),
        }
    }

    /// Ends, as failed, branches that never reported (their job failed before its step
    /// could: its worker died more often than BullMQ allows). Called by the join, which
    /// runs only once every job of the fan-out has ended.
    pub(crate) fn lose_unfinished(&mut self, workflow: &Workflow, tenant: &str) {
        let lost: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].status == Status::Running)
            .collect();
        for node in lost {
            let name = match workflow.composition() {
                Composition::Parallel { branches, .. } => branches[node].clone(),
                Composition::Batch { processor, .. } => processor.clone(),
                Composition::Graph { nodes } => nodes[node].run.clone(),
                _ => continue,
            };
            let error = ExecutionError::host(
                ErrorKind::Execution,
                codes::TRAP,
                format!(
                    "`{name}`'s job ended without a result (its worker stopped while running it \
                     more often than allowed); see `weir dlq list`"
                ),
            );
            let info = ExecutionInfo::new(None, name, tenant, None);
            let input = self.input.clone();
            // What it would start is moot: the join is computing the end.
            let _ = self.complete(workflow, node, failed(input, error, info));
        }
    }

    /// `Ok` when this state (as read from Redis, which anyone with write access can change)
    /// fits `workflow`: one node per branch, item or graph node, and every index it holds
    /// within them. Otherwise what does not fit; nothing indexes the definition with it.
    pub(crate) fn fits(&self, workflow: &Workflow) -> Result<(), String> {
        let count = self.nodes.len();
        let expected = match workflow.composition() {
            Composition::Parallel { branches, .. } => Some(branches.len()),
            Composition::Graph { nodes } => Some(nodes.len()),
            Composition::Batch { .. } => match self.input.get("items") {
                Some(Value::Array(items)) => Some(items.len()),
                _ => None,
            },
            _ => Some(0),
        };
        if expected != Some(count) {
            return Err(format!(
                "it has {count} branches where `{}` has {}",
                workflow.name(),
                expected.map_or_else(|| "an input without items".to_string(), |n| n.to_string())
            ));
        }
        if let Some((index, _)) = &self.first_failure
            && *index >= count
        {
            return Err(format!("its first failure is at branch {index} of {count}"));
        }
        if let Some(by) = self
            .nodes
            .iter()
            .filter_map(|n| n.started_by)
            .find(|&by| by >= count)
        {
            return Err(format!("a branch was started by branch {by} of {count}"));
        }
        Ok(())
    }

    /// Whether the workflow should stop its running branches and start no more: a failure
    /// doomed it, or continued it at once.
    pub(crate) fn doomed(&self) -> bool {
        self.first_failure.is_some() || self.cut_short
    }

    /// The failures a fan-out that succeeded went on past.
    fn set_aside(&self, workflow: &Workflow) -> Vec<StepFailure> {
        set_aside(
            workflow.composition(),
            self.nodes.iter().map(|n| n.result.as_ref()),
        )
    }

    /// How the fan-out ended. Call once every started branch is done.
    /// `item` is what a batch's processor is (digest and version), for items that never
    /// started.
    pub(crate) fn ending(&self, workflow: &Workflow, tenant: &str, item: &Identity) -> Ending {
        let metadata = match state::prepare_input(self.input.clone(), None) {
            Ok((_, metadata)) => metadata,
            Err(error) => {
                return Ending::Outcome(Err((self.input.clone(), error)), None, Vec::new());
            }
        };
        let session_metadata = state::StateMetadata {
            session_id: self.input["metadata"]["sessionId"]
                .as_str()
                .map(str::to_string),
            ..metadata
        };
        let base = self.input.as_object().cloned().unwrap_or_default();
        match workflow.composition() {
            Composition::Parallel {
                branches, merge, ..
            } => {
                if let Some((index, error)) = &self.first_failure {
                    let results = self.nodes.iter().map(|n| n.result.as_ref());
                    let error = parallel_failed(workflow, branches, results, *index, error.clone());
                    return Ending::Outcome(Err((self.input.clone(), error)), None, Vec::new());
                }
                let failures = self.set_aside(workflow);
                let results = || self.nodes.iter().map(|n| n.result.as_ref());
                match merge {
                    None => {
                        let states = branch_states(results());
                        let objects = states.iter().filter_map(Value::as_object);
                        let merged = merge_branches(&base, objects);
                        let state = with_metadata(merged, &session_metadata.bumped());
                        Ending::Outcome(Ok(state), None, failures)
                    }
                    Some(merger) => Ending::Merge {
                        merger: merger.clone(),
                        input: merge_input(&self.input, branches, results()),
                        failures,
                    },
                }
            }
            Composition::Batch {
                processor, policy, ..
            } => {
                let results: Vec<ExecutionResult> = self
                    .nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| match &n.result {
                        Some(result) => result.clone(),
                        None => self.never_started(processor, i, tenant, item),
                    })
                    .collect();
                let outcome = batch_outcome(
                    workflow,
                    processor,
                    *policy,
                    self.input.clone(),
                    &results,
                    self.first_failure.clone(),
                    &session_metadata,
                );
                Ending::Outcome(outcome, Some(results), Vec::new())
            }
            Composition::Graph { nodes } => {
                if let Some((i, error)) = &self.first_failure {
                    let error = step_failed(workflow, "node", &nodes[*i].name, None, error.clone());
                    return Ending::Outcome(Err((self.input.clone(), error)), None, Vec::new());
                }
                let dependents = graph_dependents(nodes);
                let sinks = (0..nodes.len())
                    .filter(|&i| dependents[i].is_empty())
                    .filter_map(|i| self.nodes[i].output.as_ref().and_then(Value::as_object));
                let merged = merge_branches(&base, sinks);
                let state = with_metadata(merged, &session_metadata.bumped());
                Ending::Outcome(Ok(state), None, self.set_aside(workflow))
            }
            _ => Ending::Outcome(Ok(self.input.clone()), None, Vec::new()),
        }
    }

    /// The result of a batch item that never started because the batch was doomed.
    fn never_started(
        &self,
        processor: &str,
        index: usize,
        tenant: &str,
        identity: &Identity,
    ) -> ExecutionResult {
        let item = self.input["items"][index].clone();
        let session = self.input["metadata"]["sessionId"].as_str();
        let state = match state::prepare_input(item.clone(), session) {
            Ok((input, metadata)) => with_metadata(input, &metadata),
            Err(_) => item,
        };
        let mut info = ExecutionInfo::new(None, processor, tenant, session.map(str::to_string));
        info.digest.clone_from(&identity.0);
        info.version.clone_from(&identity.1);
        cancelled_unstarted(state, CancelReason::Sibling, info)
    }

    fn start(&mut self, node: usize, name: &str, input: Value, by: Option<usize>) -> Start {
        self.nodes[node].status = Status::Running;
        self.nodes[node].started_by = by;
        Start {
            node,
            name: name.to_string(),
            input,
        }
    }

    /// The next batch item, unless the batch is doomed or has started them all.
    fn next_batch_item(&mut self, processor: &str, by: Option<usize>) -> Option<Start> {
        if self.doomed() || self.next_item >= self.nodes.len() {
            return None;
        }
        let index = self.next_item;
        self.next_item += 1;
        let item = self.input["items"][index].clone();
        Some(self.start(index, processor, item, by))
    }

    /// Branches `node`'s completion started, as they were started.
    fn started_by(&self, workflow: &Workflow, node: usize) -> Vec<Start> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].started_by == Some(node))
            .filter(|&i| self.nodes[i].status == Status::Running)
            .filter_map(|i| {
                let (name, input) = match workflow.composition() {
                    Composition::Batch { processor, .. } => {
                        (processor.clone(), self.input["items"][i].clone())
                    }
                    Composition::Graph { nodes } => {
                        (nodes[i].run.clone(), self.node_input(nodes, i))
                    }
                    _ => return None,
                };
                Some(Start {
                    node: i,
                    name,
                    input,
                })
            })
            .collect()
    }

    /// The graph nodes whose every dependency has settled, now that `node` has.
    fn released(&self, nodes: &[GraphNode], node: usize) -> Vec<usize> {
        let dependents = graph_dependents(nodes);
        dependents[node]
            .iter()
            .copied()
            .filter(|&e| self.nodes[e].status == Status::Waiting && self.deps_settled(nodes, e))
            .collect()
    }

    fn deps_settled(&self, nodes: &[GraphNode], node: usize) -> bool {
        graph_dependencies(nodes, node)
            .iter()
            .all(|&d| matches!(self.nodes[d].status, Status::Done | Status::Skipped))
    }

    /// A graph node's input: the merge of its dependencies' outputs onto the graph's input.
    fn node_input(&self, nodes: &[GraphNode], node: usize) -> Value {
        let base = self.input.as_object().cloned().unwrap_or_default();
        let outputs: Vec<&Map<String, Value>> = graph_dependencies(nodes, node)
            .iter()
            .filter_map(|&d| self.nodes[d].output.as_ref().and_then(Value::as_object))
            .collect();
        Value::Object(if outputs.is_empty() {
            base
        } else {
            merge_branches(&base, outputs)
        })
    }

    /// Starts or skips the `ready` graph nodes (and, for skips, what they release in turn).
    pub(super) fn settle(
        &mut self,
        nodes: &[GraphNode],
        mut ready: Vec<usize>,
        by: Option<usize>,
    ) -> Vec<Start> {
        let mut starts = Vec::new();
        while let Some(i) = ready.pop() {
            let node = &nodes[i];
            let deps = graph_dependencies(nodes, i);
            let input = self.node_input(nodes, i);
            let skip = self.doomed()
                || deps
                    .iter()
                    .any(|&d| self.nodes[d].status == Status::Skipped)
                || node
                    .condition
                    .as_ref()
                    .is_some_and(|pointer| !truthy(input.pointer(pointer)));
            if skip {
                self.nodes[i].status = Status::Skipped;
                self.nodes[i].output = Some(input);
                ready.extend(self.released(nodes, i));
            } else {
                starts.push(self.start(i, &node.run, input, by));
            }
        }
        starts
    }

    /// The fields of batch `join`'s record for this state, its results and first failure
    /// sealed by `seal`.
    pub(crate) fn batch_fields(
        &self,
        seal: &Seal,
        join: &str,
    ) -> Result<Vec<(String, String)>, serde_json::Error> {
        let mut base = self.input.clone();
        let items = match base.as_object_mut().and_then(|o| o.remove("items")) {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        let mut fields = vec![
            ("base".to_string(), serde_json::to_string(&base)?),
            ("n".to_string(), self.nodes.len().to_string()),
            ("next".to_string(), self.next_item.to_string()),
            ("fuel".to_string(), self.fuel.to_string()),
            ("peak".to_string(), self.peak_memory.to_string()),
        ];
        for (i, item) in items.iter().enumerate().take(self.nodes.len()) {
            fields.push((format!("item:{i}"), serde_json::to_string(item)?));
        }
        if let Some(failure) = &self.first_failure {
            let text = serde_json::to_string(failure)?;
            fields.push(("fail".to_string(), seal.seal_text(&[join, "fail"], &text)));
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(result) = &node.result {
                let name = format!("r:{i}");
                let text = serde_json::to_string(result)?;
                let sealed = seal.seal_text(&[join, &name], &text);
                fields.push((name, sealed));
            }
            if let Some(by) = node.started_by {
                fields.push((format!("s:{by}"), i.to_string()));
            }
        }
        Ok(fields)
    }

    /// The state batch `join`'s record holds; `Err` says what is wrong with it (a result
    /// or failure `seal` does not verify among it). `max_items` bounds what the record may
    /// claim (it is Redis's, not ours).
    pub(crate) fn from_batch_fields(
        mut fields: std::collections::HashMap<String, String>,
        max_items: usize,
        seal: &Seal,
        join: &str,
    ) -> Result<JoinState, String> {
        fn take(
            fields: &mut std::collections::HashMap<String, String>,
            name: &str,
        ) -> Result<String, String> {
            fields
                .remove(name)
                .ok_or_else(|| format!("its field `{name}` is missing"))
        }
        let number = |text: String, name: &str| {
            text.parse::<u64>()
                .map_err(|_| format!("its field `{name}` is not a count: {text:.40}"))
        };
        let json = |text: String, name: &str| {
            serde_json::from_str::<Value>(&text).map_err(|e| format!("its field `{name}`: {e}"))
        };
        let count = usize::try_from(number(take(&mut fields, "n")?, "n")?).unwrap_or(usize::MAX);
        if count > max_items {
            return Err(format!(
                "it claims {count} items, more than a batch takes ({max_items})"
            ));
        }
        let mut input = json(take(&mut fields, "base")?, "base")?;
        let next_item =
            usize::try_from(number(take(&mut fields, "next")?, "next")?).unwrap_or(usize::MAX);
        let fuel = number(take(&mut fields, "fuel")?, "fuel")?;
        let peak_memory = number(take(&mut fields, "peak")?, "peak")?;
        let first_failure = match fields.remove("fail") {
            Some(stored) => {
                let text = seal
                    .open_text(&[join, "fail"], &stored)
                    .map_err(|refused| format!("its field `fail`: {refused}"))?;
                Some(serde_json::from_str(text).map_err(|e| format!("its field `fail`: {e}"))?)
            }
            None => None,
        };
        let mut items = Vec::with_capacity(count);
        let mut nodes = Vec::with_capacity(count);
        for i in 0..count {
            let name = format!("item:{i}");
            items.push(json(take(&mut fields, &name)?, &name)?);
            let field = format!("r:{i}");
            let result: Option<ExecutionResult> = match fields.remove(&field) {
                Some(stored) => {
                    let text = seal
                        .open_text(&[join, &field], &stored)
                        .map_err(|refused| format!("the result of item {i}: {refused}"))?;
                    Some(
                        serde_json::from_str(text)
                            .map_err(|e| format!("the result of item {i}: {e}"))?,
                    )
                }
                None => None,
            };
            let status = match &result {
                Some(_) => Status::Done,
                None if i < next_item => Status::Running,
                None => Status::Waiting,
            };
            let output = result
                .as_ref()
                .filter(|r| r.error.is_none())
                .map(|r| r.state.clone());
            nodes.push(NodeState {
                status,
                result,
                output,
                started_by: None,
            });
        }
        for by in 0..count {
            if let Some(started) = fields.remove(&format!("s:{by}"))
                && let Ok(started) = started.parse::<usize>()
                && let Some(node) = nodes.get_mut(started)
            {
                node.started_by = Some(by);
            }
        }
        match input.as_object_mut() {
            Some(object) => {
                object.insert("items".to_string(), Value::Array(items));
            }
            None => return Err("its field `base` is not an object".to_string()),
        }
        Ok(JoinState {
            input,
            nodes,
            first_failure,
            cut_short: false,
            next_item,
            fuel,
            peak_memory,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::workflow::BatchPolicy;
    use serde_json::json;

    fn result(state: Value, error: Option<ExecutionError>) -> ExecutionResult {
        let info = ExecutionInfo::new(None, "p", "t", None);
        match error {
            Some(error) => failed(state, error, info),
            None => ExecutionResult {
                ok: true,
                state,
                error: None,
                execution: info,
                items: None,
                failures: Vec::new(),
            },
        }
    }

    /// A batch of four items, two at a time, whose first item has ended (starting the
    /// third) and whose second has failed in a way that dooms the batch.
    fn batch_in_progress() -> (Workflow, JoinState) {
        let workflow = Workflow::batch("each", "p")
            .concurrency(2)
            .policy(BatchPolicy::AllOrNothing);
        let input =
            json!({"items": [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}], "metadata": {"version": 1}});
        let (mut state, starts) = JoinState::open(&workflow, input, 100).unwrap();
        assert_eq!(starts.len(), 2);
        let started = state.complete(&workflow, 0, result(json!({"n": 10}), None));
        assert_eq!(started[0].node, 2);
        let error = ExecutionError::host(ErrorKind::Validation, codes::INVALID_INPUT, "no");
        state.complete(&workflow, 1, result(json!({"n": 1}), Some(error)));
        (workflow, state)
    }

    #[test]
    fn a_record_that_does_not_fit_its_definition_is_refused() {
        let parallel = Workflow::parallel("both", ["a", "b"]);
        let (state, _) = JoinState::open(&parallel, json!({}), 100).unwrap();
        assert!(state.fits(&parallel).is_ok());
        let mut more = state.clone();
        more.nodes.push(more.nodes[0].clone());
        let why = more.fits(&parallel).unwrap_err();
        assert!(why.contains("3 branches"), "{why}");
        let mut failed_elsewhere = state.clone();
        let error = ExecutionError::host(ErrorKind::Validation, codes::INVALID_INPUT, "no");
        failed_elsewhere.first_failure = Some((7, error));
        assert!(failed_elsewhere.fits(&parallel).is_err());
        let mut started_elsewhere = state;
        started_elsewhere.nodes[1].started_by = Some(9);
        assert!(started_elsewhere.fits(&parallel).is_err());
        // A record read whole for a parallel never indexes its definition past its end.
        let mut lost = more;
        lost.nodes[2].status = Status::Running;
        assert!(lost.fits(&parallel).is_err());
    }

    /// Batch `j`'s record for `state`, as Redis hands it back.
    fn record(state: &JoinState, seal: &Seal) -> std::collections::HashMap<String, String> {
        state.batch_fields(seal, "j").unwrap().into_iter().collect()
    }

    #[test]
    fn a_batchs_record_reads_back_as_the_state_it_was_written_from() {
        let (_, state) = batch_in_progress();
        let fields = record(&state, &Seal::insecure());
        let read = JoinState::from_batch_fields(fields, 100, &Seal::insecure(), "j").unwrap();
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::to_value(&state).unwrap()
        );
    }

    #[test]
    fn a_batchs_record_gives_each_item_and_result_a_field_of_its_own() {
        let (_, state) = batch_in_progress();
        let fields = state.batch_fields(&Seal::insecure(), "j").unwrap();
        let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
        for name in ["item:0", "item:3", "r:0", "r:1", "s:0", "fail"] {
            assert!(names.contains(&name), "{name} in {names:?}");
        }
        assert!(!names.contains(&"r:2"));
        // The base is the input without its items: what an item's end never rewrites.
        let base = &fields.iter().find(|(name, _)| name == "base").unwrap().1;
        assert!(!base.contains("items"), "{base}");
    }

    #[test]
    fn a_batchs_record_from_redis_is_checked_before_it_is_trusted() {
        let (_, state) = batch_in_progress();
        let fields = record(&state, &Seal::insecure());
        let mut huge = fields.clone();
        huge.insert("n".into(), "100000000000".into());
        let why = JoinState::from_batch_fields(huge, 100, &Seal::insecure(), "j").unwrap_err();
        assert!(why.contains("more than a batch takes"), "{why}");
        let mut missing = fields.clone();
        missing.remove("item:2");
        let why = JoinState::from_batch_fields(missing, 100, &Seal::insecure(), "j").unwrap_err();
        assert!(why.contains("item:2"), "{why}");
        let mut garbled = fields;
        garbled.insert("r:3".into(), "{".into());
        assert!(JoinState::from_batch_fields(garbled, 100, &Seal::insecure(), "j").is_err());
    }

    #[test]
    fn a_batchs_results_are_sealed_and_a_forged_one_is_refused() {
        let (_, state) = batch_in_progress();
        let key = crate::distributed::trust::FleetKey::generate().unwrap();
        let seal = Seal::new(&crate::distributed::trust::Trust::key(key)).unwrap();
        let fields = record(&state, &seal);
        let read = JoinState::from_batch_fields(fields.clone(), 100, &seal, "j").unwrap();
        assert_eq!(read.nodes[0].output, state.nodes[0].output);
        // A result written by someone else, bare or with a made-up seal, or another item's
        // result moved over it: refused.
        let forged = serde_json::to_string(&result(json!({"forged": true}), None)).unwrap();
        let moved = fields["r:1"].clone();
        for stored in [
            forged.clone(),
            format!("{}{forged}", "00".repeat(32)),
            moved,
        ] {
            let mut altered = fields.clone();
            altered.insert("r:0".into(), stored);
            let why = JoinState::from_batch_fields(altered, 100, &seal, "j").unwrap_err();
            assert!(why.contains("the result of item 0"), "{why}");
        }
        // The same record read as another batch's: refused.
        assert!(JoinState::from_batch_fields(fields, 100, &seal, "other").is_err());
    }
}
