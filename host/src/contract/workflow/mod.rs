//! Workflow definitions: named compositions of processors (and other workflows), built with a
//! Rust builder or read from `workflows.toml`, and checked before they serve.
//!
//! Checking happens workflow by workflow, against the processors loaded at the time: every
//! name a workflow refers to must resolve, a workflow may not contain itself (directly or
//! through others), and static nesting is bounded (32 levels by default). A workflow that
//! fails a check is listed as invalid with the reason; the others keep serving.

pub(crate) mod file;
mod validate;

pub use validate::InvalidWorkflow;
pub(crate) use validate::check;
#[cfg(feature = "redis")]
pub(crate) use validate::near_names;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How deep workflows may nest inside each other by default.
pub const MAX_NESTING: usize = 32;

/// A named composition, run and reported exactly like a processor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workflow {
    name: String,
    #[serde(flatten)]
    composition: Composition,
    timeout_ms: Option<u64>,
    #[serde(skip)]
    source: Option<Source>,
    #[serde(skip)]
    misuse: Option<String>,
    #[serde(skip)]
    digest: String,
}

/// What a workflow does with its steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Composition {
    /// Steps in order, each on the previous step's output; stops at the first failure
    /// (then undoes the steps before it that name a compensation, last first).
    Chain {
        /// The steps.
        steps: Vec<String>,
        /// Step name → the processor that undoes it (a saga's compensation): when a later
        /// step fails, it runs on the state the step produced.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        compensate: BTreeMap<String, String>,
        /// A processor run once the chain has failed (after its compensations), on
        /// `{failed: {index, name}, error, state}`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on_failure: Option<String>,
    },
    /// Every branch on the same input, concurrently; the first failure cancels the others
    /// (unless its branch's [`OnFailure`] says otherwise).
    Parallel {
        /// The branches, in declared (merge) order.
        branches: Vec<String>,
        /// A processor that merges `{input, results}`; the default merge when absent.
        merge: Option<String>,
        /// What a failure of the branches named here does (the others: [`OnFailure::Fail`]).
        /// A name listed twice among the branches applies to both.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        on_failure: BTreeMap<String, OnFailure>,
    },
    /// One target chosen by a key taken from the state.
    Route {
        /// Where the key comes from.
        selector: Selector,
        /// Key → target.
        routes: BTreeMap<String, String>,
        /// The target when no key matches.
        fallback: Option<String>,
    },
    /// One processor (or workflow) over every state of `{items: [...]}`.
    Batch {
        /// What runs on each item.
        processor: String,
        /// Items in flight at once.
        concurrency: usize,
        /// When the batch as a whole fails.
        policy: BatchPolicy,
    },
    /// Named nodes that run as soon as the nodes they depend on are done.
    Graph {
        /// The nodes, in declared order.
        nodes: Vec<GraphNode>,
    },
}

/// When a batch fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BatchPolicy {
    /// Every item runs; the batch succeeds and each item reports its own outcome.
    #[default]
    Collect,
    /// The first failing item fails the batch: items not yet started are skipped and running
    /// ones cancelled.
    AllOrNothing,
}

impl BatchPolicy {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "collect" => Some(BatchPolicy::Collect),
            "all-or-nothing" => Some(BatchPolicy::AllOrNothing),
            _ => None,
        }
    }
}

/// What a fan-out does when one of its parallel branches or graph nodes fails: the three
/// choices BullMQ gives a flow's child (`failParentOnFailure`, `ignoreDependencyOnFailure`,
/// `continueParentOnFailure`). Whatever a fan-out went on past is listed in its result's
/// `failures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// The failure fails the workflow: the other branches are cancelled and nodes not yet
    /// started are skipped. The default.
    #[default]
    Fail,
    /// The failure is set aside: the other branches run on as if it had not happened. The
    /// branch adds nothing to a parallel's merge; a graph node passes its last good state
    /// on, so the nodes after it run.
    Ignore,
    /// The fan-out goes on at once with what it has: the branches still running are
    /// cancelled, graph nodes not yet started are skipped, and the workflow succeeds with
    /// the merge of what finished (the failed node passing its last good state on).
    Continue,
}

impl OnFailure {
    /// Reads `fail`, `ignore` or `continue`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "fail" => Some(OnFailure::Fail),
            "ignore" => Some(OnFailure::Ignore),
            "continue" => Some(OnFailure::Continue),
            _ => None,
        }
    }

    /// Whether it is the default, [`OnFailure::Fail`].
    pub fn is_fail(&self) -> bool {
        *self == OnFailure::Fail
    }
}

/// One node of a dependency graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphNode {
    /// The node's name, unique in its graph.
    pub name: String,
    /// The processor or workflow it runs (by default, the one named like the node).
    pub run: String,
    /// Nodes that must finish first; the node gets the merge of their outputs.
    pub after: Vec<String>,
    /// A JSON pointer into the node's input: the node (and everything after it) is skipped
    /// unless the value there is truthy (not absent, null, false, 0 or "").
    pub condition: Option<String>,
    /// What the node's failure does to the graph.
    #[serde(default, skip_serializing_if = "OnFailure::is_fail")]
    pub on_failure: OnFailure,
}

/// The longest a delay step of a chain may wait: a week. (A run's own deadline still
/// bounds it: on the distributed runtime an hour by default, `deadline_ms` to change it.)
pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The wait a chain step stands for, if it is a delay: `delay:500ms`, `delay:5s`,
/// `delay:2m` or `delay:1h`. A delay holds no sandbox and no worker while it waits; on the
/// distributed runtime it is a delayed job in Redis, so it survives a restart of the fleet.
pub fn delay_of(step: &str) -> Option<Duration> {
    let spec = step.strip_prefix(DELAY_PREFIX)?;
    let split = spec.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = spec.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    }?;
    Some(Duration::from_millis(ms))
}

/// The chain step that waits `wait` (see [`delay_of`]).
pub fn delay_step(wait: Duration) -> String {
    format!("{DELAY_PREFIX}{}ms", wait.as_millis())
}

/// How a delay step starts (no processor's name has a `:`).
pub(crate) const DELAY_PREFIX: &str = "delay:";

/// Default items in flight for a batch.
pub const DEFAULT_BATCH_CONCURRENCY: usize = 4;

/// Where a route's key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Selector {
    /// A JSON pointer into the input state (RFC 6901); its string, number or boolean value
    /// is the key.
    Pointer(String),
    /// A processor run on the input; the `route` field of its output is the key.
    Processor(String),
}

/// Where a definition came from, for messages that point at it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Source {
    pub file: PathBuf,
    pub line: usize,
    /// The line of each name the definition refers to.
    pub refs: HashMap<String, usize>,
}

impl Workflow {
    pub(super) fn new(name: impl Into<String>, composition: Composition) -> Self {
        Workflow {
            name: name.into(),
            composition,
            timeout_ms: None,
            source: None,
            misuse: None,
            digest: String::new(),
        }
    }

    /// A chain: `steps` in order, each getting the previous one's output.
    pub fn chain<S: Into<String>>(
        name: impl Into<String>,
        steps: impl IntoIterator<Item = S>,
    ) -> Self {
        Self::new(
            name,
            Composition::Chain {
                steps: steps.into_iter().map(Into::into).collect(),
                compensate: BTreeMap::new(),
                on_failure: None,
            },
        )
    }

    /// A parallel: every branch gets the same input; results merge in declared order.
    pub fn parallel<S: Into<String>>(
        name: impl Into<String>,
        branches: impl IntoIterator<Item = S>,
    ) -> Self {
        Self::new(
            name,
            Composition::Parallel {
                branches: branches.into_iter().map(Into::into).collect(),
                merge: None,
                on_failure: BTreeMap::new(),
            },
        )
    }

    /// A route whose key is the value at `pointer` in the input state.
    pub fn route_by_pointer(name: impl Into<String>, pointer: impl Into<String>) -> Self {
        Self::new(
            name,
            Composition::Route {
                selector: Selector::Pointer(pointer.into()),
                routes: BTreeMap::new(),
                fallback: None,
            },
        )
    }

    /// A route whose key is the `route` field of `selector`'s output.
    pub fn route_by_processor(name: impl Into<String>, selector: impl Into<String>) -> Self {
        Self::new(
            name,
            Composition::Route {
                selector: Selector::Processor(selector.into()),
                routes: BTreeMap::new(),
                fallback: None,
            },
        )
    }

    /// A batch: `processor` over every state of the input's `items`.
    pub fn batch(name: impl Into<String>, processor: impl Into<String>) -> Self {
        Self::new(
            name,
            Composition::Batch {
                processor: processor.into(),
                concurrency: DEFAULT_BATCH_CONCURRENCY,
                policy: BatchPolicy::default(),
            },
        )
    }

    /// Sets how many items run at once (batch workflows only).
    pub fn concurrency(mut self, n: usize) -> Self {
        match &mut self.composition {
            Composition::Batch { concurrency, .. } => *concurrency = n,
            _ => self.misuse("`concurrency` applies only to batch workflows"),
        }
        self
    }

    /// Sets when the batch fails (batch workflows only).
    pub fn policy(mut self, p: BatchPolicy) -> Self {
        match &mut self.composition {
            Composition::Batch { policy, .. } => *policy = p,
            _ => self.misuse("`policy` applies only to batch workflows"),
        }
        self
    }

    /// An empty dependency graph; add nodes with [`Workflow::node`] and friends.
    pub fn graph(name: impl Into<String>) -> Self {
        Self::new(name, Composition::Graph { nodes: Vec::new() })
    }

    /// Adds node `name` (running the unit of the same name) after `after`.
    pub fn node<S: Into<String>>(
        self,
        name: impl Into<String>,
        after: impl IntoIterator<Item = S>,
    ) -> Self {
        self.named_node(name.into(), after, None)
    }

    /// Adds node `name` after `after`, run only if the value at `condition` (a JSON pointer
    /// into its input) is truthy.
    pub fn node_if<S: Into<String>>(
        self,
        name: impl Into<String>,
        after: impl IntoIterator<Item = S>,
        condition: impl Into<String>,
    ) -> Self {
        self.named_node(name.into(), after, Some(condition.into()))
    }

    fn named_node<S: Into<String>>(
        self,
        name: String,
        after: impl IntoIterator<Item = S>,
        condition: Option<String>,
    ) -> Self {
        self.add_node(GraphNode {
            run: name.clone(),
            name,
            after: after.into_iter().map(Into::into).collect(),
            condition,
            on_failure: OnFailure::Fail,
        })
    }

    /// Adds any node (e.g. one whose name differs from the unit it runs).
    pub fn add_node(mut self, node: GraphNode) -> Self {
        match &mut self.composition {
            Composition::Graph { nodes } => nodes.push(node),
            _ => self.misuse("nodes apply only to graph workflows"),
        }
        self
    }

    /// Adds a route (route workflows only).
    pub fn route(mut self, key: impl Into<String>, target: impl Into<String>) -> Self {
        match &mut self.composition {
            Composition::Route { routes, .. } => {
                routes.insert(key.into(), target.into());
            }
            _ => self.misuse("`route` applies only to route workflows"),
        }
        self
    }

    /// Sets the fallback target (route workflows only).
    pub fn fallback(mut self, target: impl Into<String>) -> Self {
        match &mut self.composition {
            Composition::Route { fallback, .. } => *fallback = Some(target.into()),
            _ => self.misuse("`fallback` applies only to route workflows"),
        }
        self
    }

    /// Sets a custom merge processor (parallel workflows only).
    pub fn merge(mut self, processor: impl Into<String>) -> Self {
        match &mut self.composition {
            Composition::Parallel { merge, .. } => *merge = Some(processor.into()),
            _ => self.misuse("`merge` applies only to parallel workflows"),
        }
        self
    }

    /// Names the processor that undoes chain step `step` (a saga's compensation): if a later
    /// step fails, `compensation` runs on the state `step` produced, the compensations of
    /// the completed steps last first (chain workflows only).
    pub fn compensate(mut self, step: impl Into<String>, compensation: impl Into<String>) -> Self {
        match &mut self.composition {
            Composition::Chain { compensate, .. } => {
                compensate.insert(step.into(), compensation.into());
            }
            _ => self.misuse("`compensate` applies only to chain workflows"),
        }
        self
    }

    /// Names a processor to run once the chain has failed, after its compensations: it gets
    /// `{failed: {index, name}, error, state}` (the last good state) (chain workflows only).
    pub fn on_failure_run(mut self, handler: impl Into<String>) -> Self {
        match &mut self.composition {
            Composition::Chain { on_failure, .. } => *on_failure = Some(handler.into()),
            _ => self.misuse("a failure handler applies only to chain workflows"),
        }
        self
    }

    /// Sets what a failure of the parallel branch or graph node `name` does (parallel and
    /// graph workflows only; for a graph, add the node first). For a parallel, every branch
    /// named `name` gets the policy.
    pub fn on_failure(mut self, name: impl Into<String>, policy: OnFailure) -> Self {
        let name = name.into();
        match &mut self.composition {
            Composition::Parallel { on_failure, .. } => {
                on_failure.insert(name, policy);
            }
            Composition::Graph { nodes } => {
                if let Some(node) = nodes.iter_mut().find(|n| n.name == name) {
                    node.on_failure = policy;
                } else {
                    self.misuse(&format!(
                        "`on_failure` names `{name}`, which is not a node of this graph (add \
                         the node first)"
                    ));
                }
            }
            _ => self.misuse("`on_failure` applies only to parallel and graph workflows"),
        }
        self
    }

    /// What a failure of fan-out branch `index` does: its declared [`OnFailure`] for a
    /// parallel's branch or a graph's node; for a batch's item, what its policy makes of
    /// it (`all-or-nothing` fails, `collect` sets it aside).
    pub(crate) fn on_failure_of(&self, index: usize) -> OnFailure {
        match &self.composition {
            Composition::Parallel {
                branches,
                on_failure,
                ..
            } => branches
                .get(index)
                .and_then(|branch| on_failure.get(branch))
                .copied()
                .unwrap_or_default(),
            Composition::Graph { nodes } => nodes
                .get(index)
                .map(|node| node.on_failure)
                .unwrap_or_default(),
            Composition::Batch { policy, .. } => match policy {
                BatchPolicy::AllOrNothing => OnFailure::Fail,
                BatchPolicy::Collect => OnFailure::Ignore,
            },
            Composition::Chain { .. } | Composition::Route { .. } => OnFailure::Fail,
        }
    }

    /// Bounds the whole workflow's run time; steps get at most what is left.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = Some(timeout.as_millis().try_into().unwrap_or(u64::MAX));
        self
    }

    pub(super) fn misuse(&mut self, message: &str) {
        self.misuse.get_or_insert_with(|| message.to_string());
    }

    pub(crate) fn with_source(mut self, source: Source) -> Self {
        self.source = Some(source);
        self
    }

    pub(crate) fn set_timeout_ms(&mut self, timeout_ms: Option<u64>) {
        self.timeout_ms = timeout_ms;
    }

    /// The workflow's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it composes.
    pub fn composition(&self) -> &Composition {
        &self.composition
    }

    /// SHA-256 of the checked definition (hex): which workflow ran, as `digest` says which
    /// component ran. Empty until the workflow is registered.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The definition as published for other processes (JSON): what [`Workflow::digest`]
    /// is the SHA-256 of.
    pub(crate) fn definition(&self) -> Vec<u8> {
        // Serialising plain data into memory cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub(super) fn definition_digest(&self) -> String {
        hex::encode(Sha256::digest(self.definition()))
    }

    /// Reads a definition another process published under `digest`, checking that the bytes
    /// are what the digest says.
    #[cfg(any(feature = "redis", test))]
    pub(crate) fn from_definition(bytes: &[u8], digest: &str) -> Result<Workflow, String> {
        let mut workflow: Workflow = serde_json::from_slice(bytes)
            .map_err(|e| format!("the published workflow {digest} is unreadable: {e}"))?;
        let actual = workflow.definition_digest();
        if actual != digest {
            return Err(format!(
                "the published workflow {digest} does not match its digest (it hashes to {actual})"
            ));
        }
        // Only checked workflows are published; one that is not well formed was written by
        // someone else, and the drivers rely on the shape (a chain has a first step).
        workflow
            .check_shape()
            .map_err(|e| format!("the published workflow {digest} is malformed: {e}"))?;
        workflow.digest = actual;
        Ok(workflow)
    }

    /// Its overall timeout, if set.
    pub fn timeout_ms(&self) -> Option<u64> {
        self.timeout_ms
    }

    /// Whether it was defined in a file (rather than registered from code).
    pub(crate) fn is_from_file(&self) -> bool {
        self.source.is_some()
    }

    /// `file:line` of its definition, if it came from a file.
    pub fn location(&self) -> Option<String> {
        self.source
            .as_ref()
            .map(|s| format!("{}:{}", s.file.display(), s.line))
    }

    /// The kind as a word: `chain`, `parallel`, `route`, `batch`, `graph`.
    pub fn kind(&self) -> &'static str {
        match self.composition {
            Composition::Chain { .. } => "chain",
            Composition::Parallel { .. } => "parallel",
            Composition::Route { .. } => "route",
            Composition::Batch { .. } => "batch",
            Composition::Graph { .. } => "graph",
        }
    }

    /// Whether its steps run side by side (parallel, batch, graph).
    #[cfg(feature = "redis")]
    pub(crate) fn is_fan_out(&self) -> bool {
        matches!(
            self.composition,
            Composition::Parallel { .. } | Composition::Batch { .. } | Composition::Graph { .. }
        )
    }
}
