//! `workflows.toml`: workflow definitions as data, in the plugins folder beside the plugins.
//! Every mistake is reported with the line it is on.
//!
//! ```toml
//! [workflow.add-three]
//! chain = ["increment", "increment", "increment"]
//! timeout_ms = 5000                       # optional, for any kind: the whole run's budget
//!
//! [workflow.order]                       # a saga: a failed step undoes those before it
//! chain = ["reserve", "charge", "ship"]
//! compensate = { reserve = "release", charge = "refund" }   # last completed first
//! on_failure = "notify"                   # optional: runs once the chain has failed
//!
//! [workflow.fan]
//! parallel = ["increment", "hello"]
//! merge = "combine"                       # optional: a processor given {input, results}
//! on_failure = { hello = "ignore" }       # optional, per branch: "fail" (default), "ignore"
//!                                         # or "continue"; a string applies to every branch
//!
//! [workflow.pick]
//! route = "/kind"                         # a JSON pointer into the state, or instead:
//! # selector = "classify"                 # a processor whose output's `route` is the key
//! routes = { inc = "increment", greet = "hello" }
//! fallback = "double"                     # optional
//!
//! [workflow.many]
//! batch = "increment"                     # input: {"items": [state, ...]}
//! concurrency = 4                         # optional, default 4
//! policy = "collect"                      # or "all-or-nothing" (default: collect)
//!
//! [workflow.pipeline]                     # nodes run as soon as their dependencies are done
//! graph = { fetch = [], parse = ["fetch"], store = ["parse"], review = { after = ["parse"], if = "/needsReview" } }
//! # a node runs the processor or workflow of its name, or `run = "other"`; a node table
//! # may say `on_failure = "ignore"` (or "continue"), as may the workflow for every node
//!
//! [schedule.nightly]                      # runs a processor or workflow on a timetable
//! run = "pipeline"
//! input = { source = "s3://bucket" }      # optional, default {}
//! cron = "0 2 * * *"                      # seconds optional; or `every_ms = 60000`
//! tz = "Europe/Paris"                     # optional, default UTC
//! # start, end (RFC 3339), limit, tenant, session, overlap = "skip" | "allow"
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::contract::bounds::{Unread, read_text_bounded};
use crate::contract::schedule::ScheduleSpec;
use crate::contract::workflow::{BatchPolicy, GraphNode, OnFailure, Source, Workflow};

/// The file name weir reads workflow definitions from, inside the plugins folder.
pub const FILE_NAME: &str = "workflows.toml";

/// The definitions of one file. A definition that cannot even be read is listed in
/// `broken` with its line; the rest are returned for checking.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub workflows: Vec<Workflow>,
    pub broken: Vec<(String, String)>,
    /// `[schedule.NAME]` tables read, each with where it is (`file:line: `), to be checked
    /// against the host's bounds.
    pub schedules: Vec<(String, ScheduleSpec, String)>,
    /// Schedules that cannot even be read, with their line and why.
    pub broken_schedules: Vec<(String, String)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkflow {
    chain: Option<Vec<Spanned<String>>>,
    parallel: Option<Vec<Spanned<String>>>,
    merge: Option<Spanned<String>>,
    route: Option<Spanned<String>>,
    selector: Option<Spanned<String>>,
    routes: Option<BTreeMap<String, Spanned<String>>>,
    fallback: Option<Spanned<String>>,
    batch: Option<Spanned<String>>,
    concurrency: Option<usize>,
    policy: Option<String>,
    graph: Option<Ordered<RawNode>>,
    on_failure: Option<RawOnFailure>,
    compensate: Option<BTreeMap<String, Spanned<String>>>,
    timeout_ms: Option<u64>,
    description: Option<String>,
}

/// `on_failure = "ignore"` (every branch or node) or `on_failure = { name = "ignore" }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawOnFailure {
    Every(String),
    Each(BTreeMap<String, String>),
}

impl RawOnFailure {
    /// The policy of each of `names`, in their order (a name without one: none).
    fn policies(&self, names: &[String]) -> Result<Vec<(String, OnFailure)>, String> {
        match self {
            RawOnFailure::Every(policy) => {
                let policy = on_failure(policy)?;
                Ok(names.iter().map(|name| (name.clone(), policy)).collect())
            }
            RawOnFailure::Each(each) => each
                .iter()
                .map(|(name, policy)| Ok((name.clone(), on_failure(policy)?)))
                .collect(),
        }
    }
}

fn on_failure(text: &str) -> Result<OnFailure, String> {
    OnFailure::parse(text).ok_or_else(|| {
        format!("`on_failure` is \"{text}\"; use \"fail\", \"ignore\" or \"continue\"")
    })
}

/// A graph node: `name = ["dep", ...]` or `name = { after = [...], if = "/ptr", run = "x" }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawNode {
    After(Vec<String>),
    Full(FullNode),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FullNode {
    #[serde(default)]
    after: Vec<String>,
    #[serde(rename = "if")]
    condition: Option<String>,
    run: Option<String>,
    on_failure: Option<String>,
}

/// A table whose entries keep the order they are written in.
struct Ordered<T>(Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, T>()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// Parses workflow definitions. `Err` means the file as a whole is unreadable (a TOML
/// syntax error, an unknown top-level key), with its line.
pub(crate) fn parse(text: &str, file: &Path) -> Result<Parsed, String> {
    let at = |offset: Option<usize>| match offset {
        Some(offset) => format!("{}:{}: ", file.display(), line_of(text, offset)),
        None => format!("{}: ", file.display()),
    };
    let root = DeTable::parse(text).map_err(|e| {
        format!(
            "{}{}",
            at(e.span().map(|s| s.start)),
            first_line(&e.to_string())
        )
    })?;
    let mut parsed = Parsed::default();
    for (key, value) in root.get_ref().iter() {
        if key.get_ref().as_ref() == "schedule" {
            let DeValue::Table(schedules) = value.get_ref() else {
                return Err(format!(
                    "{}`schedule` must be a table of schedules, e.g. `[schedule.NAME]`",
                    at(Some(key.span().start))
                ));
            };
            for (name, definition) in schedules.iter() {
                let here = format!("{}:{}: ", file.display(), line_of(text, name.span().start));
                let name = name.get_ref().to_string();
                match ScheduleSpec::deserialize(ValueDeserializer::from(definition.clone())) {
                    Ok(spec) => parsed.schedules.push((name, spec, here)),
                    Err(e) => {
                        let where_ = e.span().map_or(here, |s| at(Some(s.start)));
                        let reason = format!("{where_}{}", first_line(&e.to_string()));
                        parsed.broken_schedules.push((name, reason));
                    }
                }
            }
            continue;
        }
        if key.get_ref().as_ref() != "workflow" {
            return Err(format!(
                "{}unknown key `{}`: definitions go under `[workflow.NAME]` and \
                 `[schedule.NAME]`",
                at(Some(key.span().start)),
                key.get_ref()
            ));
        }
        let DeValue::Table(workflows) = value.get_ref() else {
            return Err(format!(
                "{}`workflow` must be a table of definitions, e.g. `[workflow.NAME]`",
                at(Some(key.span().start))
            ));
        };
        for (name, definition) in workflows.iter() {
            let line = line_of(text, name.span().start);
            let here = format!("{}:{line}: ", file.display());
            let name = name.get_ref().to_string();
            let raw = RawWorkflow::deserialize(ValueDeserializer::from(definition.clone()));
            let raw = match raw {
                Ok(raw) => raw,
                Err(e) => {
                    let where_ = e.span().map_or(here.clone(), |s| at(Some(s.start)));
                    parsed
                        .broken
                        .push((name, format!("{where_}{}", first_line(&e.to_string()))));
                    continue;
                }
            };
            match build(&name, raw, text, file, line) {
                Ok(workflow) => parsed.workflows.push(workflow),
                Err(reason) => parsed.broken.push((name, format!("{here}{reason}"))),
            }
        }
    }
    Ok(parsed)
}

/// Reads `dir/workflows.toml` if it exists and is at most `max_bytes` long.
pub(crate) fn load(dir: &Path, max_bytes: u64) -> Result<Option<Parsed>, String> {
    let path = dir.join(FILE_NAME);
    let text = match read_text_bounded(&path, max_bytes) {
        Ok(Some(text)) => text,
        Ok(None) => return Ok(None),
        Err(Unread::Io(e)) => return Err(format!("{}: cannot read it: {e}", path.display())),
        Err(Unread::TooLarge) => {
            return Err(format!(
                "{}: it is over {max_bytes} bytes, the most the host reads (the host's \
                 max_workflows_file_bytes): split the definitions or raise the bound",
                path.display()
            ));
        }
    };
    parse(&text, &path).map(Some)
}

fn build(
    name: &str,
    raw: RawWorkflow,
    text: &str,
    file: &Path,
    line: usize,
) -> Result<Workflow, String> {
    let mut refs: HashMap<String, usize> = HashMap::new();
    let mut note = |s: &Spanned<String>| {
        refs.entry(s.get_ref().clone())
            .or_insert_with(|| line_of(text, s.span().start));
        s.get_ref().clone()
    };
    let kinds: Vec<&str> = [
        ("chain", raw.chain.is_some()),
        ("parallel", raw.parallel.is_some()),
        ("route", raw.route.is_some() || raw.selector.is_some()),
        ("batch", raw.batch.is_some()),
        ("graph", raw.graph.is_some()),
    ]
    .into_iter()
    .filter_map(|(kind, present)| present.then_some(kind))
    .collect();
    let kind = match kinds.as_slice() {
        [kind] => *kind,
        [] => {
            return Err(
                "say what the workflow does: `chain`, `parallel`, `route` (with `routes`), \
                 `batch` or `graph`"
                    .into(),
            );
        }
        several => {
            return Err(format!(
                "a workflow is one kind, but this one says {}",
                several.join(" and ")
            ));
        }
    };
    // Keys that belong to another kind are mistakes, not silently ignored settings.
    for (key, present, owner) in [
        ("merge", raw.merge.is_some(), "parallel"),
        ("routes", raw.routes.is_some(), "route"),
        ("fallback", raw.fallback.is_some(), "route"),
        ("concurrency", raw.concurrency.is_some(), "batch"),
        ("policy", raw.policy.is_some(), "batch"),
        ("compensate", raw.compensate.is_some(), "chain"),
    ] {
        if present && owner != kind {
            return Err(format!("`{key}` applies only to {owner} workflows"));
        }
    }
    if raw.on_failure.is_some() && !matches!(kind, "parallel" | "graph" | "chain") {
        let instead = if kind == "batch" {
            " (a batch says `policy`)"
        } else {
            ""
        };
        return Err(format!(
            "`on_failure` applies only to chain, parallel and graph workflows{instead}"
        ));
    }
    let mut workflow = match kind {
        "chain" => {
            let steps: Vec<String> = raw.chain.iter().flatten().map(&mut note).collect();
            let mut workflow = Workflow::chain(name, steps);
            for (step, compensation) in raw.compensate.iter().flatten() {
                workflow = workflow.compensate(step, note(compensation));
            }
            match &raw.on_failure {
                // A chain's `on_failure` names the processor that handles its failure.
                Some(RawOnFailure::Every(handler)) => workflow.on_failure_run(handler),
                Some(RawOnFailure::Each(_)) => {
                    return Err("a chain's `on_failure` names one processor, run once the \
                                chain has failed: `on_failure = \"notify\"`"
                        .into());
                }
                None => workflow,
            }
        }
        "parallel" => {
            let branches: Vec<String> = raw.parallel.iter().flatten().map(&mut note).collect();
            let policies = match &raw.on_failure {
                Some(raw) => raw.policies(&branches)?,
                None => Vec::new(),
            };
            let mut workflow = Workflow::parallel(name, branches);
            for (branch, policy) in policies {
                workflow = workflow.on_failure(branch, policy);
            }
            match &raw.merge {
                Some(merge) => workflow.merge(note(merge)),
                None => workflow,
            }
        }
        "route" => {
            let mut workflow = match (&raw.route, &raw.selector) {
                (Some(pointer), None) => Workflow::route_by_pointer(name, pointer.get_ref()),
                (None, Some(selector)) => Workflow::route_by_processor(name, note(selector)),
                _ => {
                    return Err(
                        "give either `route` (a JSON pointer) or `selector` (a processor), \
                         not both"
                            .into(),
                    );
                }
            };
            for (key, target) in raw.routes.iter().flatten() {
                workflow = workflow.route(key, note(target));
            }
            match &raw.fallback {
                Some(fallback) => workflow.fallback(note(fallback)),
                None => workflow,
            }
        }
        "batch" => {
            let processor = raw.batch.as_ref().map(&mut note).unwrap_or_default();
            let mut workflow = Workflow::batch(name, processor);
            if let Some(concurrency) = raw.concurrency {
                workflow = workflow.concurrency(concurrency);
            }
            if let Some(policy) = &raw.policy {
                let policy = BatchPolicy::parse(policy).ok_or_else(|| {
                    format!("`policy` is \"{policy}\"; use \"collect\" or \"all-or-nothing\"")
                })?;
                workflow = workflow.policy(policy);
            }
            workflow
        }
        _ => {
            let mut workflow = Workflow::graph(name);
            let nodes = raw.graph.map(|g| g.0).unwrap_or_default();
            let names: Vec<String> = nodes.iter().map(|(name, _)| name.clone()).collect();
            let mut policies: BTreeMap<String, OnFailure> = match &raw.on_failure {
                Some(raw) => raw.policies(&names)?.into_iter().collect(),
                None => BTreeMap::new(),
            };
            let every = matches!(raw.on_failure, Some(RawOnFailure::Every(_)));
            for (node, raw_node) in nodes {
                let (after, condition, run, own) = match raw_node {
                    RawNode::After(after) => (after, None, None, None),
                    RawNode::Full(full) => (full.after, full.condition, full.run, full.on_failure),
                };
                let listed = policies.remove(&node);
                let policy = match (own, listed) {
                    (Some(own), None) => on_failure(&own)?,
                    // A node's own setting wins over the workflow's `on_failure = "…"`.
                    (Some(own), Some(_)) if every => on_failure(&own)?,
                    (Some(_), Some(_)) => {
                        return Err(format!(
                            "node `{node}` says `on_failure` in its own table and in the \
                             workflow's: say it once"
                        ));
                    }
                    (None, listed) => listed.unwrap_or_default(),
                };
                let run = run.unwrap_or_else(|| node.clone());
                refs.entry(run.clone()).or_insert(line);
                workflow = workflow.add_node(GraphNode {
                    name: node,
                    run,
                    after,
                    condition,
                    on_failure: policy,
                });
            }
            if let Some(name) = policies.keys().next() {
                return Err(format!(
                    "`on_failure` names `{name}`, which is not a node of this graph"
                ));
            }
            workflow
        }
    };
    let _ = raw.description;
    workflow.set_timeout_ms(raw.timeout_ms);
    Ok(workflow.with_source(Source {
        file: PathBuf::from(file),
        line,
        refs,
    }))
}

/// The 1-based line of byte offset `at`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn first_line(message: &str) -> String {
    // toml's messages carry a source excerpt after the first lines; the line number is
    // already in our prefix, so keep only the explanation.
    message
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains('|') && !l.starts_with("TOML parse error"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::workflow::{Composition, Selector};

    fn parse_ok(text: &str) -> Parsed {
        parse(text, Path::new("workflows.toml")).unwrap()
    }

    #[test]
    fn a_file_over_the_bound_is_rejected_unparsed() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[workflow.a]\nchain = [\"x\"]\n";
        std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
        let bound = text.len() as u64;
        assert_eq!(load(dir.path(), bound).unwrap().unwrap().workflows.len(), 1);
        let error = load(dir.path(), bound - 1).err().unwrap();
        assert!(error.contains("max_workflows_file_bytes"), "{error}");
    }

    #[test]
    fn the_documented_forms_parse() {
        let parsed = parse_ok(
            r#"
[workflow.add-three]
chain = ["increment", "increment", "increment"]

[workflow.fan]
parallel = ["increment", "hello"]
timeout_ms = 1000

[workflow.pick]
route = "/kind"
routes = { inc = "increment", greet = "hello" }
fallback = "double"

[workflow.many]
batch = "increment"
concurrency = 4
policy = "collect"

[workflow.pipeline]
graph = { fetch = [], parse = ["fetch"], store = ["parse"], review = { after = ["parse"], if = "/needsReview" } }
"#,
        );
        assert!(parsed.broken.is_empty(), "{:?}", parsed.broken);
        let by_name: BTreeMap<_, _> = parsed
            .workflows
            .iter()
            .map(|w| (w.name().to_string(), w))
            .collect();
        assert!(matches!(
            by_name["add-three"].composition(),
            Composition::Chain { steps, .. } if steps.len() == 3
        ));
        assert_eq!(by_name["fan"].timeout_ms(), Some(1000));
        match by_name["pick"].composition() {
            Composition::Route {
                selector,
                routes,
                fallback,
            } => {
                assert_eq!(selector, &Selector::Pointer("/kind".into()));
                assert_eq!(routes["greet"], "hello");
                assert_eq!(fallback.as_deref(), Some("double"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(by_name["pick"].location().unwrap(), "workflows.toml:9");
        assert!(matches!(
            by_name["many"].composition(),
            Composition::Batch { processor, concurrency: 4, policy: BatchPolicy::Collect }
                if processor == "increment"
        ));
        let Composition::Graph { nodes } = by_name["pipeline"].composition() else {
            panic!("a graph");
        };
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["fetch", "parse", "store", "review"],
            "declared order"
        );
        assert_eq!(nodes[3].after, ["parse"]);
        assert_eq!(nodes[3].condition.as_deref(), Some("/needsReview"));
        assert_eq!(nodes[3].run, "review");
    }

    #[test]
    fn a_bad_batch_policy_is_explained() {
        let parsed = parse_ok("[workflow.b]\nbatch = \"x\"\npolicy = \"some\"\n");
        assert!(
            parsed.broken[0]
                .1
                .contains("use \"collect\" or \"all-or-nothing\"")
        );
    }

    #[test]
    fn schedules_are_read_beside_workflows_and_a_broken_one_names_its_line() {
        let parsed = parse_ok(
            r#"
[workflow.add-three]
chain = ["increment", "increment", "increment"]

[schedule.nightly]
run = "add-three"
input = { count = 1 }
cron = "0 2 * * *"
tz = "Europe/Paris"
overlap = "allow"

[schedule.often]
run = "increment"
every_ms = 5000

[schedule.typo]
run = "increment"
evry_ms = 5000
"#,
        );
        assert_eq!(parsed.workflows.len(), 1);
        let names: Vec<&str> = parsed
            .schedules
            .iter()
            .map(|(n, _, _)| n.as_str())
            .collect();
        assert_eq!(names, ["nightly", "often"]);
        let (_, nightly, here) = &parsed.schedules[0];
        assert_eq!(nightly.run, "add-three");
        assert_eq!(nightly.input, Some(serde_json::json!({ "count": 1 })));
        assert_eq!(
            nightly.overlap,
            Some(crate::contract::schedule::Overlap::Allow)
        );
        assert_eq!(here, "workflows.toml:5: ");
        assert_eq!(parsed.schedules[1].1.every_ms, Some(5000));
        let (name, reason) = &parsed.broken_schedules[0];
        assert_eq!(name, "typo");
        assert!(reason.starts_with("workflows.toml:"), "{reason}");
        assert!(reason.contains("evry_ms"), "{reason}");
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let err = parse("[workflow.a]\nchain = [\"x\"\n", Path::new("w.toml")).unwrap_err();
        assert!(err.starts_with("w.toml:2: "), "{err}");
    }

    #[test]
    fn a_broken_definition_names_its_line_and_spares_the_others() {
        let parsed = parse_ok(
            "[workflow.good]\nchain = [\"a\"]\n\n[workflow.bad]\nchian = [\"a\"]\n\n[workflow.both]\nchain = [\"a\"]\nparallel = [\"b\"]\n",
        );
        assert_eq!(parsed.workflows.len(), 1);
        let broken: BTreeMap<_, _> = parsed.broken.into_iter().collect();
        // The line of the offending key, not just of the table.
        assert!(
            broken["bad"].starts_with("workflows.toml:5: "),
            "{}",
            broken["bad"]
        );
        assert!(broken["bad"].contains("chian"), "{}", broken["bad"]);
        assert!(
            broken["both"].contains("chain and parallel"),
            "{}",
            broken["both"]
        );
    }

    #[test]
    fn failure_policies_are_read_per_branch_per_node_or_for_every_one() {
        let parsed = parse_ok(
            r#"
[workflow.each]
parallel = ["a", "b", "c"]
on_failure = { b = "ignore", c = "continue" }

[workflow.every]
parallel = ["a", "b"]
on_failure = "ignore"

[workflow.g]
graph = { a = [], b = { after = ["a"], on_failure = "continue" }, c = ["a"] }
on_failure = "ignore"
"#,
        );
        assert!(parsed.broken.is_empty(), "{:?}", parsed.broken);
        let by_name: BTreeMap<&str, &Workflow> =
            parsed.workflows.iter().map(|w| (w.name(), w)).collect();
        let policies = |name: &str| -> Vec<OnFailure> {
            let workflow = by_name[name];
            let count = match workflow.composition() {
                Composition::Parallel { branches, .. } => branches.len(),
                Composition::Graph { nodes } => nodes.len(),
                _ => 0,
            };
            (0..count).map(|i| workflow.on_failure_of(i)).collect()
        };
        use OnFailure::{Continue, Fail, Ignore};
        assert_eq!(policies("each"), [Fail, Ignore, Continue]);
        assert_eq!(policies("every"), [Ignore, Ignore]);
        // A node's own setting wins over the workflow's "every node" one.
        assert_eq!(policies("g"), [Ignore, Continue, Ignore]);
    }

    #[test]
    fn a_failure_policy_that_does_not_fit_is_explained() {
        let parsed = parse_ok(
            r#"
[workflow.word]
parallel = ["a"]
on_failure = "shrug"

[workflow.routed]
route = "/k"
routes = { a = "a" }
on_failure = "ignore"

[workflow.chained]
chain = ["a"]
on_failure = { a = "ignore" }

[workflow.batched]
batch = "a"
on_failure = "ignore"

[workflow.twice]
graph = { a = { on_failure = "ignore" } }
on_failure = { a = "continue" }

[workflow.stranger]
graph = { a = [] }
on_failure = { b = "ignore" }
"#,
        );
        let broken: BTreeMap<_, _> = parsed.broken.into_iter().collect();
        assert!(
            broken["word"].contains("use \"fail\", \"ignore\" or \"continue\""),
            "{}",
            broken["word"]
        );
        assert!(
            broken["routed"].contains("only to chain, parallel and graph"),
            "{}",
            broken["routed"]
        );
        assert!(
            broken["chained"].contains("names one processor"),
            "{}",
            broken["chained"]
        );
        assert!(
            broken["batched"].contains("a batch says `policy`"),
            "{}",
            broken["batched"]
        );
        assert!(
            broken["twice"].contains("say it once"),
            "{}",
            broken["twice"]
        );
        assert!(
            broken["stranger"].contains("`b`, which is not a node"),
            "{}",
            broken["stranger"]
        );
    }

    #[test]
    fn a_saga_names_its_compensations_and_failure_handler() {
        let parsed = parse_ok(
            r#"
[workflow.order]
chain = ["reserve", "charge", "ship"]
compensate = { reserve = "release", charge = "refund" }
on_failure = "notify"

[workflow.stranger]
chain = ["a"]
compensate = { b = "undo-b" }

[workflow.misplaced]
parallel = ["a"]
compensate = { a = "undo-a" }
"#,
        );
        let order = parsed
            .workflows
            .iter()
            .find(|w| w.name() == "order")
            .unwrap();
        let Composition::Chain {
            compensate,
            on_failure,
            ..
        } = order.composition()
        else {
            panic!("a chain");
        };
        assert_eq!(compensate["reserve"], "release");
        assert_eq!(compensate["charge"], "refund");
        assert_eq!(on_failure.as_deref(), Some("notify"));
        let refs: Vec<&str> = order.references().into_iter().map(|(_, n)| n).collect();
        for name in ["release", "refund", "notify"] {
            assert!(refs.contains(&name), "{refs:?}");
        }
        let stranger = parsed
            .workflows
            .iter()
            .find(|w| w.name() == "stranger")
            .unwrap();
        let why = stranger.check_shape().unwrap_err();
        assert!(why.contains("`b`, which is not a step"), "{why}");
        let broken: BTreeMap<_, _> = parsed.broken.into_iter().collect();
        assert!(
            broken["misplaced"].contains("only to chain"),
            "{}",
            broken["misplaced"]
        );
    }
}
