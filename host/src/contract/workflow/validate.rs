//! Checking workflows before they serve, workflow by workflow, against the processors
//! loaded at the time: every name a workflow refers to must resolve (an unknown one comes
//! with a suggestion), a workflow may not contain itself (directly or through others), a
//! graph's dependencies must exist and not cycle, and static nesting is bounded. A workflow
//! that fails is listed as invalid with the reason; the others keep serving.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::Serialize;

use super::{Composition, GraphNode, Selector, Workflow};
use crate::contract::names::is_valid_name;

/// The longest reason given for an invalid workflow, in bytes; a longer one (quoting a huge
/// name, say) is cut at a character and ends with `…`.
pub(crate) const REASON_BYTES: usize = 2048;

impl Workflow {
    /// Every unit name this workflow refers to, with the role it plays.
    pub fn references(&self) -> Vec<(String, &str)> {
        let mut refs = Vec::new();
        match &self.composition {
            Composition::Chain {
                steps,
                compensate,
                on_failure,
            } => {
                for (i, step) in steps.iter().enumerate() {
                    // A delay names nothing.
                    if super::delay_of(step).is_none() {
                        refs.push((format!("step {}", i + 1), step.as_str()));
                    }
                }
                for (step, compensation) in compensate {
                    refs.push((format!("compensation of `{step}`"), compensation.as_str()));
                }
                if let Some(handler) = on_failure {
                    refs.push(("on_failure".to_string(), handler.as_str()));
                }
            }
            Composition::Parallel {
                branches, merge, ..
            } => {
                for (i, branch) in branches.iter().enumerate() {
                    refs.push((format!("branch {}", i + 1), branch.as_str()));
                }
                if let Some(merge) = merge {
                    refs.push(("merge".to_string(), merge.as_str()));
                }
            }
            Composition::Route {
                selector,
                routes,
                fallback,
            } => {
                if let Selector::Processor(p) = selector {
                    refs.push(("selector".to_string(), p.as_str()));
                }
                for (key, target) in routes {
                    refs.push((format!("route `{key}`"), target.as_str()));
                }
                if let Some(f) = fallback {
                    refs.push(("fallback".to_string(), f.as_str()));
                }
            }
            Composition::Batch { processor, .. } => {
                refs.push(("batch".to_string(), processor.as_str()));
            }
            Composition::Graph { nodes } => {
                for node in nodes {
                    refs.push((format!("node `{}`", node.name), node.run.as_str()));
                }
            }
        }
        refs
    }

    /// Checks what can be checked without knowing other units.
    pub(crate) fn check_shape(&self) -> Result<(), String> {
        if let Some(misuse) = &self.misuse {
            return Err(misuse.clone());
        }
        if !is_valid_name(&self.name) {
            return Err(format!(
                "`{}` is not a valid name: use lowercase letters, digits and `-`, starting \
                 with a letter",
                self.name
            ));
        }
        if self.timeout_ms == Some(0) {
            return Err("`timeout_ms` must be greater than zero".into());
        }
        check_delays(self)?;
        match &self.composition {
            Composition::Chain { steps, .. } if steps.is_empty() => {
                Err("a chain needs at least one step".into())
            }
            Composition::Chain {
                steps, compensate, ..
            } => match compensate.keys().find(|name| !steps.contains(name)) {
                Some(name) => Err(format!(
                    "`compensate` names `{name}`, which is not a step of this chain"
                )),
                None => Ok(()),
            },
            Composition::Parallel { branches, .. } if branches.is_empty() => {
                Err("a parallel needs at least one branch".into())
            }
            Composition::Parallel {
                branches,
                on_failure,
                ..
            } => match on_failure.keys().find(|name| !branches.contains(name)) {
                Some(name) => Err(format!(
                    "`on_failure` names `{name}`, which is not a branch of this parallel \
                     (branches: {})",
                    branches.join(", ")
                )),
                None => Ok(()),
            },
            Composition::Route {
                selector, routes, ..
            } => {
                if let Selector::Pointer(pointer) = selector {
                    check_pointer(pointer)?;
                }
                if routes.is_empty() {
                    return Err("a route needs at least one entry in `routes`".into());
                }
                Ok(())
            }
            Composition::Batch { concurrency, .. } if *concurrency == 0 => {
                Err("`concurrency` must be at least 1".into())
            }
            Composition::Graph { nodes } => check_graph(nodes),
            _ => Ok(()),
        }
    }

    /// The line a reference to `name` sits on, else the definition's line.
    fn line_of(&self, name: &str) -> Option<usize> {
        self.source
            .as_ref()
            .map(|s| s.refs.get(name).copied().unwrap_or(s.line))
    }

    fn prefix(&self, name: Option<&str>) -> String {
        match (&self.source, name.and_then(|n| self.line_of(n))) {
            (Some(source), Some(line)) => format!("{}:{line}: ", source.file.display()),
            (Some(source), None) => format!("{}:{}: ", source.file.display(), source.line),
            _ => String::new(),
        }
    }
}

/// Checks the delays a workflow names: only a chain's steps may be delays, each
/// `delay:N` with a unit and at most [`super::MAX_DELAY`].
fn check_delays(workflow: &Workflow) -> Result<(), String> {
    let is_delay = |name: &str| name.starts_with(super::DELAY_PREFIX);
    if let Composition::Chain {
        steps,
        compensate,
        on_failure,
    } = &workflow.composition
    {
        let others = compensate.values().chain(on_failure);
        if let Some(name) = others.into_iter().find(|name| is_delay(name)) {
            return Err(format!(
                "`{name}` is a delay: a compensation or failure handler is a processor"
            ));
        }
        for step in steps.iter().filter(|s| is_delay(s)) {
            match super::delay_of(step) {
                Some(wait) if wait <= super::MAX_DELAY => {}
                Some(_) => {
                    return Err(format!("`{step}` waits longer than a delay may (a week)"));
                }
                None => {
                    return Err(format!(
                        "`{step}` is not a delay: write `delay:N` with a unit, e.g. \
                         `delay:500ms`, `delay:5s`, `delay:2m` or `delay:1h`"
                    ));
                }
            }
        }
        return Ok(());
    }
    match workflow
        .references()
        .into_iter()
        .find(|(_, name)| is_delay(name))
    {
        Some((role, name)) => Err(format!(
            "{role} is `{name}`: a delay can only be a step of a chain"
        )),
        None => Ok(()),
    }
}

/// Checks a graph's own shape: nodes exist, are unique, depend on known nodes, and form no
/// cycle.
fn check_graph(nodes: &[GraphNode]) -> Result<(), String> {
    if nodes.is_empty() {
        return Err("a graph needs at least one node".into());
    }
    let mut seen = BTreeSet::new();
    for node in nodes {
        if !seen.insert(node.name.as_str()) {
            return Err(format!("node `{}` is defined twice", node.name));
        }
    }
    for node in nodes {
        for dep in &node.after {
            if !seen.contains(dep.as_str()) {
                return Err(format!(
                    "node `{}` runs after `{dep}`, which is not a node of this graph",
                    node.name
                ));
            }
        }
        if let Some(condition) = &node.condition {
            check_pointer(condition).map_err(|e| format!("node `{}`: {e}", node.name))?;
        }
    }
    // Kahn's algorithm: whatever cannot be ordered sits on a cycle.
    let mut remaining: BTreeMap<&str, BTreeSet<&str>> = nodes
        .iter()
        .map(|n| {
            (
                n.name.as_str(),
                n.after.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    loop {
        let ready: Vec<&str> = remaining
            .iter()
            .filter(|(_, deps)| deps.is_empty())
            .map(|(name, _)| *name)
            .collect();
        if ready.is_empty() {
            break;
        }
        for name in ready {
            remaining.remove(name);
            for deps in remaining.values_mut() {
                deps.remove(name);
            }
        }
    }
    if remaining.is_empty() {
        Ok(())
    } else {
        let stuck: Vec<&str> = remaining.keys().copied().collect();
        Err(format!(
            "the graph has a cycle through {}",
            stuck
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// Checks that `pointer` is an RFC 6901 JSON pointer (empty, or starting with `/`).
pub(crate) fn check_pointer(pointer: &str) -> Result<(), String> {
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(())
    } else {
        Err(format!(
            "`{pointer}` is not a JSON pointer: it must start with `/`, e.g. `/kind`"
        ))
    }
}

/// The outcome of checking a set of definitions.
#[derive(Debug, Default)]
pub(crate) struct Checked {
    pub valid: BTreeMap<String, Arc<Workflow>>,
    pub invalid: BTreeMap<String, InvalidWorkflow>,
}

/// A workflow that cannot serve, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidWorkflow {
    /// Its name.
    pub name: String,
    /// Why, with `file:line:` when it came from a file.
    pub reason: String,
}

impl InvalidWorkflow {
    /// `name` is invalid for `reason`, cut to [`REASON_BYTES`].
    pub(crate) fn new(name: String, reason: String) -> Self {
        InvalidWorkflow {
            name,
            reason: crate::contract::bounds::clip(reason, REASON_BYTES),
        }
    }
}

/// Checks `workflows` one by one against the processors in `processors`.
pub(crate) fn check(
    workflows: Vec<Workflow>,
    processors: &BTreeSet<String>,
    max_nesting: usize,
) -> Checked {
    let mut checked = Checked::default();
    let mut defs: BTreeMap<String, Workflow> = BTreeMap::new();
    for workflow in workflows {
        let name = workflow.name.clone();
        let problem = if let Err(reason) = workflow.check_shape() {
            Some(format!("{}{reason}", workflow.prefix(None)))
        } else if processors.contains(&name) {
            Some(format!(
                "{}the name `{name}` is already a processor's; rename the workflow",
                workflow.prefix(None)
            ))
        } else if defs.contains_key(&name) {
            Some(format!(
                "{}`{name}` is defined twice",
                workflow.prefix(None)
            ))
        } else {
            None
        };
        match problem {
            Some(reason) => {
                defs.remove(&name);
                checked
                    .invalid
                    .insert(name.clone(), InvalidWorkflow::new(name, reason));
            }
            None => {
                defs.insert(name, workflow);
            }
        }
    }
    let mut depths: HashMap<String, Result<usize, Problem>> = HashMap::new();
    let names: Vec<String> = defs.keys().cloned().collect();
    for name in &names {
        let mut path = Vec::new();
        // Memoised in `depths`; the value is read back below.
        let _ = depth_of(
            name,
            &defs,
            processors,
            &checked.invalid,
            &mut depths,
            &mut path,
            max_nesting,
        );
    }
    for (name, workflow) in defs {
        match depths.remove(&name) {
            Some(Ok(_)) => {
                let mut workflow = workflow;
                workflow.digest = workflow.definition_digest();
                checked.valid.insert(name, Arc::new(workflow));
            }
            Some(Err(problem)) => {
                let reason = problem.message_for(&workflow);
                checked
                    .invalid
                    .insert(name.clone(), InvalidWorkflow::new(name, reason));
            }
            None => {
                let reason = format!("{}could not be checked", workflow.prefix(None));
                checked
                    .invalid
                    .insert(name.clone(), InvalidWorkflow::new(name, reason));
            }
        }
    }
    checked
}

#[derive(Debug, Clone)]
enum Problem {
    /// The workflows in `members` contain each other along `path` (`a → b → a`).
    Cycle {
        members: Vec<String>,
        path: String,
    },
    Other(String),
    /// The workflows above this one already nest `max_nesting` deep: whatever this one
    /// holds, the outermost is too deep. Not an answer about this workflow itself, so it
    /// is not memoised; it bounds the recursion (and the stack) by the limit.
    TooDeep,
}

impl Problem {
    /// The reason as reported for `workflow` (a cycle points at each member's own line).
    fn message_for(&self, workflow: &Workflow) -> String {
        match self {
            Problem::Cycle { path, .. } => {
                format!("{}it contains itself: {path}", workflow.prefix(None))
            }
            Problem::Other(message) => message.clone(),
            Problem::TooDeep => format!("{}workflows nest too deep here", workflow.prefix(None)),
        }
    }
}

/// How much of an invalid workflow's reason the reason of a workflow using it repeats.
const INNER_REASON_BYTES: usize = 512;

/// The nesting depth of workflow `name` (1 when it only runs processors), or why it is
/// invalid. Memoised in `depths`; `path` holds the workflows being checked above it.
fn depth_of(
    name: &str,
    defs: &BTreeMap<String, Workflow>,
    processors: &BTreeSet<String>,
    invalid: &BTreeMap<String, InvalidWorkflow>,
    depths: &mut HashMap<String, Result<usize, Problem>>,
    path: &mut Vec<String>,
    max_nesting: usize,
) -> Result<usize, Problem> {
    if let Some(known) = depths.get(name) {
        return known.clone();
    }
    if let Some(start) = path.iter().position(|p| p == name) {
        let mut members: Vec<String> = path[start..].to_vec();
        let mut shown = members.clone();
        shown.push(name.to_string());
        members.sort();
        return Err(Problem::Cycle {
            members,
            path: shown.join(" → "),
        });
    }
    if path.len() >= max_nesting {
        return Err(Problem::TooDeep);
    }
    let workflow = &defs[name];
    path.push(name.to_string());
    let mut deepest = 0;
    let mut outcome = Ok(());
    for (role, target) in workflow.references() {
        if processors.contains(target) {
            continue;
        }
        let at = workflow.prefix(Some(target));
        let child = if defs.contains_key(target) {
            depth_of(target, defs, processors, invalid, depths, path, max_nesting)
        } else if let Some(bad) = invalid.get(target) {
            Err(Problem::Other(format!(
                "{at}{role} refers to workflow `{target}`, which is invalid: {}",
                bad.reason
            )))
        } else {
            let mut known: Vec<&str> = processors.iter().map(String::as_str).collect();
            known.extend(defs.keys().map(String::as_str).filter(|n| *n != name));
            Err(Problem::Other(format!(
                "{at}{role} refers to `{target}`, which is neither a processor nor a \
                 workflow{}",
                suggestion(target, &known)
            )))
        };
        match child {
            Ok(depth) => deepest = deepest.max(depth),
            Err(Problem::Cycle { members, path }) => {
                outcome = Err(if members.iter().any(|m| m == name) {
                    Problem::Cycle { members, path }
                } else {
                    Problem::Other(format!(
                        "{at}{role} refers to workflow `{target}`, which is invalid: it \
                         contains itself: {path}"
                    ))
                });
                break;
            }
            Err(Problem::TooDeep) => {
                outcome = Err(Problem::TooDeep);
                break;
            }
            Err(Problem::Other(message)) if defs.contains_key(target) => {
                // The inner reason is clipped: along a nest of invalid workflows each
                // reason would hold all the ones below it.
                outcome = Err(Problem::Other(format!(
                    "{at}{role} refers to workflow `{target}`, which is invalid: {}",
                    crate::contract::bounds::clip_str(&message, INNER_REASON_BYTES)
                )));
                break;
            }
            Err(problem) => {
                outcome = Err(problem);
                break;
            }
        }
    }
    path.pop();
    if let Err(Problem::TooDeep) = outcome {
        if !path.is_empty() {
            return outcome.map(|()| 0);
        }
        outcome = Err(Problem::Other(format!(
            "{}workflows nest more than {max_nesting} levels deep here; the limit is \
             {max_nesting}",
            workflow.prefix(None)
        )));
    }
    let result = outcome.and_then(|()| {
        let depth = deepest + 1;
        if depth > max_nesting {
            Err(Problem::Other(format!(
                "{}workflows nest {depth} levels deep here; the limit is {max_nesting}",
                workflow.prefix(None)
            )))
        } else {
            Ok(depth)
        }
    });
    depths.insert(name.to_string(), result.clone());
    result
}

/// ` (did you mean `x`?)` for a near miss, else a short list of what exists.
fn suggestion(target: &str, known: &[&str]) -> String {
    near_names(target, known, "known", "nothing is loaded")
}

/// ` (did you mean `x`?)` for a near miss of `target` among `known`, else ` ({listed}: a,
/// b, …)` with at most twelve names, or ` ({none})` when there are none.
pub(crate) fn near_names(target: &str, known: &[&str], listed: &str, none: &str) -> String {
    let closest = known
        .iter()
        .map(|k| (edit_distance(target, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min();
    if let Some((_, name)) = closest {
        return format!(" (did you mean `{name}`?)");
    }
    let mut sorted = known.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    match sorted.len() {
        0 => format!(" ({none})"),
        n if n <= 12 => format!(" ({listed}: {})", sorted.join(", ")),
        n => format!(
            " ({listed}: {}, and {} more)",
            sorted[..12].join(", "),
            n - 12
        ),
    }
}

/// Levenshtein distance between two short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::workflow::MAX_NESTING;

    fn processors(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn workflows_that_resolve_are_valid_and_nest() {
        let checked = check(
            vec![
                Workflow::chain("inner", ["a", "b"]),
                Workflow::parallel("outer", ["inner", "a"]),
            ],
            &processors(&["a", "b"]),
            MAX_NESTING,
        );
        assert!(checked.invalid.is_empty(), "{:?}", checked.invalid);
        assert_eq!(checked.valid.len(), 2);
        assert_eq!(checked.valid["outer"].digest().len(), 64);
    }

    #[test]
    fn an_unknown_name_is_invalid_with_a_suggestion() {
        let checked = check(
            vec![Workflow::chain("w", ["increment", "incremnt"])],
            &processors(&["increment", "double"]),
            MAX_NESTING,
        );
        let reason = &checked.invalid["w"].reason;
        assert!(reason.contains("step 2 refers to `incremnt`"), "{reason}");
        assert!(reason.contains("did you mean `increment`?"), "{reason}");
    }

    #[test]
    fn a_cycle_invalidates_its_members_and_their_users_only() {
        let checked = check(
            vec![
                Workflow::chain("a", ["b"]),
                Workflow::chain("b", ["x", "a"]),
                Workflow::chain("user", ["a"]),
                Workflow::chain("fine", ["x"]),
            ],
            &processors(&["x"]),
            MAX_NESTING,
        );
        assert!(
            checked.invalid["a"]
                .reason
                .contains("contains itself: a → b → a")
        );
        assert!(checked.invalid["b"].reason.contains("contains itself"));
        assert!(
            checked.invalid["user"]
                .reason
                .contains("refers to workflow `a`, which is invalid")
        );
        assert!(checked.valid.contains_key("fine"));
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_invalid() {
        let mut workflows = vec![Workflow::chain("w0", ["x"])];
        for i in 1..5 {
            workflows.push(Workflow::chain(format!("w{i}"), [format!("w{}", i - 1)]));
        }
        let checked = check(workflows, &processors(&["x"]), 3);
        assert!(checked.valid.contains_key("w2"));
        assert!(
            checked.invalid["w3"].reason.contains("nest 4 levels deep"),
            "{:?}",
            checked.invalid
        );
        assert!(checked.invalid["w4"].reason.contains("which is invalid"));
    }

    #[test]
    fn a_reason_quoting_a_huge_name_is_clipped() {
        let huge = "a".repeat(20_000);
        let checked = check(
            vec![
                Workflow::chain("w", [huge.as_str()]),
                Workflow::route_by_pointer("r", huge.as_str()).route("k", "x"),
            ],
            &processors(&["x"]),
            MAX_NESTING,
        );
        for name in ["w", "r"] {
            let reason = &checked.invalid[name].reason;
            assert!(
                reason.len() <= REASON_BYTES,
                "{name}: {} bytes",
                reason.len()
            );
            assert!(reason.ends_with('…'), "{name}: {reason}");
        }
    }

    #[test]
    fn a_nest_far_deeper_than_the_limit_is_refused_with_short_reasons() {
        // 100,000 workflows, each running the one before: checking them must neither recurse
        // 100,000 deep (a stack overflow aborts the host) nor nest each reason in the next
        // (reasons quadratic in the depth).
        let n = 100_000;
        let mut workflows = vec![Workflow::chain("w0", ["x"])];
        for i in 1..n {
            workflows.push(Workflow::chain(format!("w{i}"), [format!("w{}", i - 1)]));
        }
        let checked = check(workflows, &processors(&["x"]), MAX_NESTING);
        assert_eq!(checked.valid.len(), MAX_NESTING);
        assert_eq!(checked.invalid.len(), n - MAX_NESTING);
        let longest = checked.invalid.values().map(|w| w.reason.len()).max();
        assert!(longest.is_some_and(|l| l < 8 << 10), "{longest:?}");
    }

    #[test]
    fn shape_errors_and_name_clashes_are_reported() {
        let checked = check(
            vec![
                Workflow::chain("empty", Vec::<String>::new()),
                Workflow::chain("x", ["x"]),
                Workflow::route_by_pointer("bad-pointer", "kind").route("a", "x"),
                Workflow::chain("misused", ["x"]).fallback("x"),
            ],
            &processors(&["x"]),
            MAX_NESTING,
        );
        assert!(
            checked.invalid["empty"]
                .reason
                .contains("at least one step")
        );
        assert!(checked.invalid["x"].reason.contains("already a processor"));
        assert!(
            checked.invalid["bad-pointer"]
                .reason
                .contains("not a JSON pointer")
        );
        assert!(checked.invalid["misused"].reason.contains("only to route"));
    }

    #[test]
    fn graphs_with_unknown_dependencies_or_cycles_are_invalid() {
        let p = processors(&["a", "b", "c"]);
        let unknown = Workflow::graph("g")
            .node("a", Vec::<String>::new())
            .node("b", ["z"]);
        let cycle = Workflow::graph("h")
            .node("a", ["c"])
            .node("b", ["a"])
            .node("c", ["b"]);
        let fine = Workflow::graph("ok")
            .node("a", Vec::<String>::new())
            .node_if("b", ["a"], "/go");
        let checked = check(vec![unknown, cycle, fine], &p, MAX_NESTING);
        assert!(
            checked.invalid["g"]
                .reason
                .contains("after `z`, which is not a node")
        );
        assert!(
            checked.invalid["h"]
                .reason
                .contains("cycle through `a`, `b`, `c`")
        );
        assert!(checked.valid.contains_key("ok"));
    }

    #[test]
    fn a_failure_policy_for_a_branch_or_node_that_does_not_exist_is_invalid() {
        use crate::contract::workflow::OnFailure;
        let p = processors(&["a", "b"]);
        let stranger = Workflow::parallel("p", ["a", "b"]).on_failure("c", OnFailure::Ignore);
        let too_early = Workflow::graph("g")
            .on_failure("a", OnFailure::Ignore)
            .node("a", Vec::<String>::new());
        let chain = Workflow::chain("c", ["a"]).on_failure("a", OnFailure::Ignore);
        let fine = Workflow::parallel("ok", ["a", "b"]).on_failure("b", OnFailure::Continue);
        let checked = check(vec![stranger, too_early, chain, fine], &p, MAX_NESTING);
        let reason = |name: &str| checked.invalid[name].reason.clone();
        assert!(
            reason("p").contains("`c`, which is not a branch"),
            "{}",
            reason("p")
        );
        assert!(
            reason("g").contains("add the node first"),
            "{}",
            reason("g")
        );
        assert!(
            reason("c").contains("only to parallel and graph"),
            "{}",
            reason("c")
        );
        assert!(checked.valid.contains_key("ok"));
    }

    #[test]
    fn a_delay_is_a_chain_step_with_a_unit_and_at_most_a_week() {
        use crate::contract::workflow::{delay_of, delay_step};
        use std::time::Duration;
        assert_eq!(delay_of("delay:500ms"), Some(Duration::from_millis(500)));
        assert_eq!(delay_of("delay:5s"), Some(Duration::from_secs(5)));
        assert_eq!(delay_of("delay:2m"), Some(Duration::from_secs(120)));
        assert_eq!(delay_of("delay:1h"), Some(Duration::from_secs(3600)));
        assert_eq!(
            delay_of(&delay_step(Duration::from_millis(1500))),
            Some(Duration::from_millis(1500))
        );
        for not in ["delay:5", "delay:s", "delay:5d", "delay:-1s", "increment"] {
            assert_eq!(delay_of(not), None, "{not}");
        }
        let p = processors(&["a"]);
        let checked = check(
            vec![
                Workflow::chain("fine", ["a", "delay:5s", "a"]),
                Workflow::chain("no-unit", ["a", "delay:5"]),
                Workflow::chain("too-long", ["delay:200h"]),
                Workflow::parallel("branch", ["a", "delay:5s"]),
            ],
            &p,
            MAX_NESTING,
        );
        assert!(checked.valid.contains_key("fine"), "{:?}", checked.invalid);
        let reason = |name: &str| checked.invalid[name].reason.clone();
        assert!(
            reason("no-unit").contains("with a unit"),
            "{}",
            reason("no-unit")
        );
        assert!(
            reason("too-long").contains("a week"),
            "{}",
            reason("too-long")
        );
        assert!(
            reason("branch").contains("only be a step of a chain"),
            "{}",
            reason("branch")
        );
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("incremnt", "increment"), 1);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("", "ab"), 2);
    }
}
