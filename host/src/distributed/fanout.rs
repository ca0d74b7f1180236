//! Fan-outs across workers: a parallel, batch or graph runs as a BullMQ flow whose parent
//! is a join job (on weir's own `_join` queue) and whose children are its branches' jobs.
//! What has finished, what runs, and what may start next live in one record in Redis,
//! updated with compare-and-set by whichever worker finishes a branch; that worker starts
//! the branches that became ready (as further children of the join) before its own job
//! completes, so the join runs only once every branch has ended. The join then computes the
//! workflow's result with the same rules as [`crate::execution::compose`] and carries the run on.

use std::collections::VecDeque;

use bullmq::FlowJob;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::client::Distributed;
use super::control::Target;
use super::flow::{Cursor, Entered, Next, Plan, Settled};
use super::trust::{Kind, Seal};
use super::wire::{At, FORMAT, Frame, JoinJob, enclosing_join, job_id};
use crate::contract::cancel::CancelReason;
use crate::contract::error::Error;
use crate::contract::error::{ErrorKind, ExecutionError, codes};
use crate::contract::merge::merge_branches;
use crate::contract::result::{ExecutionInfo, ExecutionResult};
use crate::contract::state::{self, with_metadata};
use crate::contract::workflow::{BatchPolicy, Composition, GraphNode, Workflow};
use crate::execution::compose::{
    batch_outcome, graph_dependencies, graph_dependents, merge_input, parallel_failed, step_failed,
    truthy,
};
use crate::execution::executor::{cancelled_unstarted, failed};

/// The name of weir's queue of join jobs (never a processor's: names start with a letter).
pub(crate) const JOIN_QUEUE: &str = "_join";

/// Where a fan-out stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JoinState {
    /// The fan-out's input, with its metadata.
    pub input: Value,
    /// One per branch, item or node, in declared order.
    pub nodes: Vec<NodeState>,
    /// The first branch to fail, and how.
    pub first_failure: Option<(usize, ExecutionError)>,
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
    ),
    /// A parallel's custom merge must run on this input first.
    Merge { merger: String, input: Value },
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
                    crate::execution::compose::check_batch_size(workflow, items.len(), max_items)?;
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
        let failed = result.error.clone();
        let entry = &mut self.nodes[node];
        entry.status = Status::Done;
        if failed.is_none() {
            entry.output = Some(result.state.clone());
        }
        entry.result = Some(result);
        let stops_others = match workflow.composition() {
            Composition::Batch { policy, .. } => *policy == BatchPolicy::AllOrNothing,
            _ => true,
        };
        if let Some(error) = failed
            && self.first_failure.is_none()
            && stops_others
        {
            self.first_failure = Some((node, error));
        }
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

    /// Whether the workflow should stop its running branches (the first failure dooms it).
    pub(crate) fn doomed(&self) -> bool {
        self.first_failure.is_some()
    }

    /// How the fan-out ended. Call once every started branch is done.
    /// `item` is what a batch's processor is (digest and version), for items that never
    /// started.
    pub(crate) fn ending(&self, workflow: &Workflow, tenant: &str, item: &Identity) -> Ending {
        let metadata = match state::prepare_input(self.input.clone(), None) {
            Ok((_, metadata)) => metadata,
            Err(error) => return Ending::Outcome(Err((self.input.clone(), error)), None),
        };
        let session_metadata = state::StateMetadata {
            session_id: self.input["metadata"]["sessionId"]
                .as_str()
                .map(str::to_string),
            ..metadata
        };
        let base = self.input.as_object().cloned().unwrap_or_default();
        match workflow.composition() {
            Composition::Parallel { branches, merge } => {
                if let Some((index, error)) = &self.first_failure {
                    let results = self.nodes.iter().map(|n| n.result.as_ref());
                    let error = parallel_failed(workflow, branches, results, *index, error.clone());
                    return Ending::Outcome(Err((self.input.clone(), error)), None);
                }
                let states: Vec<Value> = self
                    .nodes
                    .iter()
                    .map(|n| n.result.as_ref().map_or(Value::Null, |r| r.state.clone()))
                    .collect();
                match merge {
                    None => {
                        let objects = states.iter().filter_map(Value::as_object);
                        let merged = merge_branches(&base, objects);
                        Ending::Outcome(Ok(with_metadata(merged, &session_metadata.bumped())), None)
                    }
                    Some(merger) => Ending::Merge {
                        merger: merger.clone(),
                        input: merge_input(&self.input, branches, &states),
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
                Ending::Outcome(outcome, Some(results))
            }
            Composition::Graph { nodes } => {
                if let Some((i, error)) = &self.first_failure {
                    let error = step_failed(workflow, "node", &nodes[*i].name, None, error.clone());
                    return Ending::Outcome(Err((self.input.clone(), error)), None);
                }
                let dependents = graph_dependents(nodes);
                let sinks = (0..nodes.len())
                    .filter(|&i| dependents[i].is_empty())
                    .filter_map(|i| self.nodes[i].output.as_ref().and_then(Value::as_object));
                let merged = merge_branches(&base, sinks);
                Ending::Outcome(Ok(with_metadata(merged, &session_metadata.bumped())), None)
            }
            _ => Ending::Outcome(Ok(self.input.clone()), None),
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
    fn settle(
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
}

/// A batch's record in Redis, as hash fields (see `lua/batch_open.lua`): the items and each
/// ended item's result have fields of their own, so that an item's end writes only its own
/// result and a few counters (`lua/batch_done.lua`), and a batch of N items costs O(N).
/// Parallels and graphs, whose branches a definition bounds, keep one record.
impl JoinState {
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
            next_item,
            fuel,
            peak_memory,
        })
    }
}

impl Distributed {
    /// Opens a fan-out: records it and settles its first branches into the children of its
    /// join job (a branch that ends at once is recorded at once, and may start others).
    pub(super) async fn open_fan_out(
        &self,
        cursor: &mut Cursor,
        workflow: &Workflow,
        mut frame: Frame,
        input: Value,
    ) -> Result<Entered, Error> {
        let join = job_id(&cursor.run, &format!("{}.j", frame.path));
        let (mut state, starts) =
            match JoinState::open(workflow, input.clone(), self.max_batch_items) {
                Ok(opened) => opened,
                Err(error) => {
                    return Ok(Entered::Next(self.close(
                        cursor,
                        frame,
                        Err((input, error)),
                    )));
                }
            };
        frame.at = At::Join;
        let mut children = Vec::new();
        let mut pending: VecDeque<Start> = starts.into();
        while let Some(start) = pending.pop_front() {
            let (mut branch, next) = self.branch(cursor, &frame, &join, start);
            match self.settle(&mut branch, next).await? {
                Settled::Plan(plan) => children.push(self.child(plan)?),
                Settled::Branch { frame, result } => {
                    if let At::Branch { node, .. } = frame.at {
                        pending.extend(state.complete(workflow, node, *result));
                    }
                }
                // A branch's bottom frame is its own: it never reaches the run's end.
                Settled::Run(_) => {}
            }
        }
        self.create_join(&join, &state, workflow).await?;
        let mut data = JoinJob {
            weir: FORMAT,
            join: join.clone(),
            run: cursor.run.clone(),
            frame,
            scope: cursor.scope.clone(),
            bindings: cursor.bindings.clone(),
            frames: cursor.frames.clone(),
            mac: String::new(),
        };
        if self.seal.keyed() {
            data.mac = self.seal.sign(Kind::Join, &data.authority());
        }
        let mut root = FlowJob::new("join", JOIN_QUEUE, &data).map_err(|e| self.redis_error(e))?;
        root.opts = Some(self.join_options(&join, enclosing_join(&cursor.frames)));
        if !children.is_empty() {
            root.children = Some(children);
        }
        Ok(Entered::Plan(Plan::Flow(Box::new(root))))
    }

    /// The cursor and first move of branch `start` of the fan-out of `frame`.
    fn branch(&self, cursor: &Cursor, frame: &Frame, join: &str, start: Start) -> (Cursor, Next) {
        let mut bottom = frame.clone();
        bottom.at = At::Branch {
            join: join.to_string(),
            node: start.node,
        };
        let branch = Cursor {
            run: cursor.run.clone(),
            scope: cursor.scope.clone(),
            bindings: cursor.bindings.clone(),
            frames: vec![bottom],
        };
        let next = Next::Enter {
            name: start.name,
            state: start.input,
            path: format!("{}.{}", frame.path, start.node),
        };
        (branch, next)
    }

    /// A plan as a child in a flow (BullMQ links it to its parent).
    fn child(&self, plan: Plan) -> Result<FlowJob, Error> {
        match plan {
            Plan::Step(job) => {
                let mut child = FlowJob::new(job.processor.as_str(), job.processor.as_str(), &*job)
                    .map_err(|e| self.redis_error(e))?;
                let mut options =
                    self.step_options(&job.job_id(), Some(job.scope.queue_priority()), None);
                options.ignore_dependency_on_failure = Some(true);
                child.opts = Some(options);
                Ok(child)
            }
            Plan::Flow(flow) => {
                let mut flow = *flow;
                if let Some(options) = &mut flow.opts {
                    options.parent = None;
                    options.ignore_dependency_on_failure = Some(true);
                }
                Ok(flow)
            }
        }
    }

    /// Records that a branch ended (the bottom `frame` of its stack) with `result`, and
    /// says which branches start now.
    pub(super) async fn branch_done(
        &self,
        cursor: &Cursor,
        frame: &Frame,
        result: ExecutionResult,
    ) -> Result<Vec<(Cursor, Next)>, Error> {
        let At::Branch { join, node } = &frame.at else {
            return Ok(Vec::new());
        };
        let workflow = match self.workflow(&frame.digest).await? {
            Ok(workflow) => workflow,
            Err(why) => {
                tracing::warn!(join = %join, %why, "a branch ended for a fan-out whose definition is gone");
                return Ok(Vec::new());
            }
        };
        let (starts, doomed) = if let Composition::Batch {
            processor, policy, ..
        } = workflow.composition()
        {
            let dooms = *policy == BatchPolicy::AllOrNothing;
            match self.batch_item_done(join, *node, &result, dooms).await? {
                Some((start, doomed)) => {
                    let starts = start.map(|(index, input)| Start {
                        node: index,
                        name: processor.clone(),
                        input,
                    });
                    (starts.into_iter().collect(), doomed)
                }
                None => {
                    tracing::warn!(join = %join, "a batch item ended for a batch whose record has expired");
                    return Ok(Vec::new());
                }
            }
        } else {
            loop {
                let (revision, mut state) = match self.load_join(join, &workflow).await? {
                    Some(Ok(loaded)) => loaded,
                    Some(Err(why)) => {
                        tracing::warn!(join = %join, %why, "a branch ended for a fan-out whose record does not fit its workflow");
                        return Ok(Vec::new());
                    }
                    None => {
                        tracing::warn!(join = %join, "a branch ended for a fan-out whose record has expired");
                        return Ok(Vec::new());
                    }
                };
                let starts = state.complete(&workflow, *node, result.clone());
                if self.store_join(join, revision, &state).await? {
                    break (starts, state.doomed());
                }
            }
        };
        if doomed {
            // The first failure dooms the fan-out: its other branches stop. (Said again on
            // every later branch end: a worker that died before saying it is covered.)
            let target = Target::Join { id: join.clone() };
            self.cancel(target, CancelReason::Sibling).await?;
        }
        Ok(starts
            .into_iter()
            .map(|start| self.branch(cursor, frame, join, start))
            .collect())
    }

    /// Runs a fan-out's join: its branches have all ended.
    pub(crate) async fn run_join(&self, job: JoinJob) -> Result<(), Error> {
        let mut cursor = Cursor {
            run: job.run,
            scope: job.scope,
            bindings: job.bindings,
            frames: job.frames,
        };
        let mut frame = job.frame;
        let workflow = match self.workflow(&frame.digest).await? {
            Ok(workflow) => workflow,
            Err(why) => {
                let error =
                    ExecutionError::host(ErrorKind::Configuration, codes::NOT_AVAILABLE, why);
                let next = self.close(&mut cursor, frame, Err((Value::Null, error)));
                return self.proceed(cursor, next).await;
            }
        };
        let loaded = match workflow.composition() {
            Composition::Batch { .. } => self.load_batch(&job.join, &workflow).await?,
            _ => self
                .load_join(&job.join, &workflow)
                .await?
                .map(|loaded| loaded.map(|(_, state)| state)),
        };
        if let Some(Err(why)) = loaded {
            let error = ExecutionError::host(
                ErrorKind::Execution,
                codes::NOT_AVAILABLE,
                format!(
                    "the record of `{}`'s branches in Redis is unreadable ({why}); the run \
                     cannot go on",
                    workflow.name()
                ),
            );
            let next = self.close(&mut cursor, frame, Err((Value::Null, error)));
            return self.proceed(cursor, next).await;
        }
        let Some(Ok(state)) = loaded else {
            let error = ExecutionError::host(
                ErrorKind::Execution,
                codes::NOT_AVAILABLE,
                format!(
                    "the record of `{}`'s branches has expired before they all ended (raise the \
                     run retention)",
                    workflow.name()
                ),
            );
            let next = self.close(&mut cursor, frame, Err((Value::Null, error)));
            return self.proceed(cursor, next).await;
        };
        let mut state = state;
        state.lose_unfinished(&workflow, &cursor.scope.tenant);
        frame.fuel = frame.fuel.saturating_add(state.fuel);
        frame.peak_memory = frame.peak_memory.max(state.peak_memory);
        let identity = match workflow.composition() {
            Composition::Batch { processor, .. } => {
                self.identity(&cursor.bindings, processor).await?
            }
            _ => (None, None),
        };
        let next = match state.ending(&workflow, &cursor.scope.tenant, &identity) {
            Ending::Outcome(outcome, items) => {
                self.close_with_items(&mut cursor, frame, outcome, items)
            }
            Ending::Merge { merger, input } => {
                let path = format!("{}.m", frame.path);
                frame.at = At::Merge {
                    input: state.input.clone(),
                };
                cursor.frames.push(frame);
                Next::Enter {
                    name: merger,
                    state: input,
                    path,
                }
            }
        };
        self.proceed(cursor, next).await
    }

    /// Writes a fan-out's first record, unless a run of the same step wrote it already.
    async fn create_join(
        &self,
        join: &str,
        state: &JoinState,
        workflow: &Workflow,
    ) -> Result<(), Error> {
        let key = self.keys.join(join);
        if let Composition::Batch { .. } = workflow.composition() {
            let fields = state
                .batch_fields(&self.seal, join)
                .map_err(|e| self.redis_error(e))?;
            let mut script = self.batch_open.key(&key);
            script.arg(self.retention_secs());
            for (field, value) in &fields {
                script.arg(field).arg(value);
            }
            let mut conn = self.conn();
            let _: i64 = script
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.redis_error(e))?;
            return Ok(());
        }
        let text = serde_json::to_string(state).map_err(|e| self.redis_error(e))?;
        let text = self.seal.seal_text(&[join, "state"], &text);
        let mut conn = self.conn();
        let _: () = redis::pipe()
            .hset_nx(&key, "state", text)
            .ignore()
            .hset_nx(&key, "rev", 1)
            .ignore()
            .expire(&key, self.retention_secs())
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(())
    }

    /// Records that item `index` of a batch ended with `result` (`dooms`: a failure ends
    /// the batch). Returns the item this starts (its index and state) and whether the batch
    /// is doomed; `None` when the batch's record has expired.
    async fn batch_item_done(
        &self,
        join: &str,
        index: usize,
        result: &ExecutionResult,
        dooms: bool,
    ) -> Result<Option<(Option<(usize, Value)>, bool)>, Error> {
        let text = serde_json::to_string(result).map_err(|e| self.redis_error(e))?;
        let text = self.seal.seal_text(&[join, &format!("r:{index}")], &text);
        let failure = match &result.error {
            Some(error) if dooms => {
                let failure =
                    serde_json::to_string(&(index, error)).map_err(|e| self.redis_error(e))?;
                self.seal.seal_text(&[join, "fail"], &failure)
            }
            _ => String::new(),
        };
        let mut conn = self.conn();
        let (started, item, doomed): (i64, Option<String>, i64) = self
            .batch_done
            .key(self.keys.join(join))
            .arg(index)
            .arg(text)
            .arg(result.execution.fuel_consumed.min(i64::MAX as u64))
            .arg(result.execution.peak_memory_bytes)
            .arg(failure)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        if started == -2 {
            return Ok(None);
        }
        let start = match (usize::try_from(started), item) {
            (Ok(started), Some(item)) => {
                let item = serde_json::from_str(&item).map_err(|e| {
                    self.redis_error(format!("item {started} of batch {join} is unreadable: {e}"))
                })?;
                Some((started, item))
            }
            _ => None,
        };
        Ok(Some((start, doomed == 1)))
    }

    /// A batch's record, read whole (once, by its join): `None` when it has expired, `Err`
    /// with the reason when it does not fit `workflow`.
    async fn load_batch(
        &self,
        join: &str,
        workflow: &Workflow,
    ) -> Result<Option<Result<JoinState, String>>, Error> {
        let mut conn = self.conn();
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.join(join))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            JoinState::from_batch_fields(fields, self.max_batch_items, &self.seal, join)
                .and_then(|state| state.fits(workflow).map(|()| state)),
        ))
    }

    /// A fan-out's record and its revision: `None` when it has expired, `Err` with the
    /// reason when it does not fit `workflow`.
    async fn load_join(
        &self,
        join: &str,
        workflow: &Workflow,
    ) -> Result<Option<Result<(u64, JoinState), String>>, Error> {
        let mut conn = self.conn();
        let (revision, text): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.join(join))
            .arg("rev")
            .arg("state")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        let (Some(revision), Some(stored)) = (revision, text) else {
            return Ok(None);
        };
        let state = self
            .seal
            .open_text(&[join, "state"], &stored)
            .map_err(|refused| refused.to_string())
            .and_then(|text| serde_json::from_str::<JoinState>(text).map_err(|e| e.to_string()))
            .and_then(|state| state.fits(workflow).map(|()| (revision, state)));
        Ok(Some(state))
    }

    /// Replaces a fan-out's record if it is still at `revision`; false if another worker
    /// changed it first (read it again and redo the change).
    async fn store_join(
        &self,
        join: &str,
        revision: u64,
        state: &JoinState,
    ) -> Result<bool, Error> {
        let text = serde_json::to_string(state).map_err(|e| self.redis_error(e))?;
        let text = self.seal.seal_text(&[join, "state"], &text);
        let mut conn = self.conn();
        let stored: i64 = self
            .join_cas
            .key(self.keys.join(join))
            .arg(revision)
            .arg(text)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(stored == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
