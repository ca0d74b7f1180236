//! Fuzz targets for what strangers hand the host: workflow files, operator manifests,
//! `weir.toml`, input and output states, job data read from Redis, and HTTP requests.
//!
//! A stable, property-based harness (cargo-fuzz needs a nightly toolchain): proptest builds
//! inputs near valid seeds (structural edits of their parsed trees, byte edits of their
//! text) and from each format's vocabulary, runs the target on each, catches panics and
//! shrinks a failing input to a small one. Each target also checks what must hold of what
//! it accepts (a definition that round-trips, an error that is a JSON document). The run's
//! length comes from the environment; `docs/fuzzing.md` says how to run it for longer.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{Map, Value, json};

/// How long each target runs: `WEIR_FUZZ_SECONDS` (run for that long), else
/// `WEIR_FUZZ_CASES` inputs (default 300); `WEIR_FUZZ_SEED` picks the inputs (default a
/// fixed seed, so the run in CI is the same every time; `random` draws one).
struct Budget {
    cases: u64,
    time: Option<Duration>,
    seed: u64,
}

impl Budget {
    fn from_env() -> Budget {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let time = var("WEIR_FUZZ_SECONDS")
            .and_then(|s| s.parse::<f64>().ok())
            .map(Duration::from_secs_f64);
        let cases = var("WEIR_FUZZ_CASES")
            .and_then(|s| s.parse().ok())
            .unwrap_or(if time.is_some() { u64::MAX } else { 300 });
        let seed = match var("WEIR_FUZZ_SEED").as_deref() {
            Some("random") => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
            Some(s) => s.parse().unwrap_or(0x5eed),
            None => 0x5eed,
        };
        Budget { cases, time, seed }
    }
}

/// Runs `check` on inputs drawn from `strategy` within the budget. A failing input (a
/// panic, or a property `check` finds broken) is shrunk, then reported with the seed that
/// reproduces it.
pub(crate) fn fuzz<S>(
    target: &str,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let budget = Budget::from_env();
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&budget.seed.to_le_bytes());
    let config = Config {
        failure_persistence: None,
        max_shrink_iters: 2048,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let start = Instant::now();
    let mut cases = 0u64;
    while cases < budget.cases && budget.time.is_none_or(|t| start.elapsed() < t) {
        let tree = match strategy.new_tree(&mut runner) {
            Ok(tree) => tree,
            Err(reason) => panic!("fuzz target `{target}`: its generator gave up: {reason}"),
        };
        if let Err(failure) = runner.run_one(tree, &check) {
            panic!(
                "fuzz target `{target}` failed after {cases} inputs (WEIR_FUZZ_SEED={}): \
                 {failure}",
                budget.seed
            );
        }
        cases += 1;
    }
    eprintln!(
        "fuzz target `{target}`: {cases} inputs in {:.1} s, no failure (seed {})",
        start.elapsed().as_secs_f64(),
        budget.seed
    );
}

// ---- generators ------------------------------------------------------------------------

/// A word: from the format's vocabulary mostly, else any text (control characters, other
/// scripts), now and then long.
pub(crate) fn word(vocab: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        6 => prop::sample::select(vocab).prop_map(str::to_string),
        2 => prop::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect()),
        1 => prop::collection::vec(prop::char::range(' ', '~'), 0..24)
            .prop_map(|c| c.into_iter().collect()),
        1 => (0usize..3, 64usize..70_000).prop_map(|(c, n)| ["a", "é", "/"][c].repeat(n)),
    ]
}

/// A JSON number at an edge or anywhere.
fn number() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        prop::sample::select(vec![0i64, -1, 1, 2, 1 << 31, i64::MAX, i64::MIN])
            .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(vec![u64::MAX, (1 << 53) - 1, 1 << 53]).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(0.5f64),
            Just(-0.0),
            Just(1e300),
            Just(f64::MIN_POSITIVE),
            any::<f64>()
        ]
        .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
    ]
}

/// Any JSON value, its keys and strings mostly from `vocab`.
pub(crate) fn json_value(vocab: &'static [&'static str]) -> impl Strategy<Value = Value> + Clone {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        number(),
        word(vocab).prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((word(vocab), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// An edit of a JSON tree.
#[derive(Debug, Clone)]
enum Edit {
    /// Replace the node with a value.
    Replace(Index, Value),
    /// Set a key of an object node (or push onto an array node).
    Insert(Index, String, Value),
    /// Remove the node from its parent.
    Remove(Index),
}

fn edit(vocab: &'static [&'static str]) -> impl Strategy<Value = Edit> + Clone {
    prop_oneof![
        3 => (any::<Index>(), json_value(vocab)).prop_map(|(i, v)| Edit::Replace(i, v)),
        2 => (any::<Index>(), word(vocab), json_value(vocab))
            .prop_map(|(i, k, v)| Edit::Insert(i, k, v)),
        2 => any::<Index>().prop_map(Edit::Remove),
    ]
}

/// The JSON pointers of every node of `value`, root first.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pointers(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let key = key.replace('~', "~0").replace('/', "~1");
                pointers(item, format!("{at}/{key}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn apply(mut value: Value, edits: Vec<Edit>) -> Value {
    for edit in edits {
        let mut all = Vec::new();
        pointers(&value, String::new(), &mut all);
        let pick = |i: &Index| all[i.index(all.len())].clone();
        match edit {
            Edit::Replace(i, v) => {
                if let Some(node) = value.pointer_mut(&pick(&i)) {
                    *node = v;
                }
            }
            Edit::Insert(i, key, v) => match value.pointer_mut(&pick(&i)) {
                Some(Value::Object(map)) => {
                    map.insert(key, v);
                }
                Some(Value::Array(items)) => items.push(v),
                _ => {}
            },
            Edit::Remove(i) => {
                let at = pick(&i);
                let Some((parent, last)) = at.rsplit_once('/') else {
                    continue;
                };
                match value.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&last.replace("~1", "/").replace("~0", "~"));
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(n) = last.parse::<usize>()
                            && n < items.len()
                        {
                            items.remove(n);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    value
}

/// JSON near `seeds`: one of them with a few edits, or any value.
pub(crate) fn json_near(
    seeds: Vec<Value>,
    vocab: &'static [&'static str],
) -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (prop::sample::select(seeds), prop::collection::vec(edit(vocab), 0..5))
            .prop_map(|(seed, edits)| apply(seed, edits)),
        1 => json_value(vocab),
    ]
}

/// A byte-level edit of text.
#[derive(Debug, Clone)]
enum TextEdit {
    Delete(Index, usize),
    Insert(Index, String),
    Duplicate(Index, usize),
}

/// Tokens that matter to TOML and JSON syntax, for text edits.
const PUNCTUATION: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ",",
    ".",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "\n",
    "#",
    "\\",
    "\\u0000",
    "\0",
    " ",
    "-",
    "+",
    "e",
    "1e999",
    "-0",
    "0x",
    "inf",
    "nan",
    "true",
    "1979-05-27",
    "\u{feff}",
    "\r\n",
    "\t",
];

fn text_edit(vocab: &'static [&'static str]) -> impl Strategy<Value = TextEdit> {
    prop_oneof![
        (any::<Index>(), 1usize..32).prop_map(|(i, n)| TextEdit::Delete(i, n)),
        (
            any::<Index>(),
            prop_oneof![
                prop::sample::select(PUNCTUATION).prop_map(str::to_string),
                word(vocab)
            ]
        )
            .prop_map(|(i, t)| TextEdit::Insert(i, t)),
        (any::<Index>(), 1usize..64).prop_map(|(i, n)| TextEdit::Duplicate(i, n)),
    ]
}

/// The char boundary at or before `at`.
fn boundary(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply_text(mut text: String, edits: Vec<TextEdit>) -> String {
    for edit in edits {
        let len = text.len() + 1;
        match edit {
            TextEdit::Delete(i, n) => {
                let from = boundary(&text, i.index(len));
                let to = boundary(&text, from + n);
                text.replace_range(from..to, "");
            }
            TextEdit::Insert(i, token) => {
                let at = boundary(&text, i.index(len));
                text.insert_str(at, &token);
            }
            TextEdit::Duplicate(i, n) => {
                let from = boundary(&text, i.index(len));
                let to = boundary(&text, from + n);
                let copy = text[from..to].to_string();
                text.insert_str(to, &copy);
            }
        }
    }
    text
}

/// TOML text near `seeds`: byte edits of a seed's text, or structural edits of its tree
/// written out again.
pub(crate) fn toml_near(
    seeds: &'static [&'static str],
    vocab: &'static [&'static str],
) -> BoxedStrategy<String> {
    let trees: Vec<Value> = seeds
        .iter()
        .filter_map(|s| toml::from_str::<toml::Table>(s).ok())
        .map(|t| toml_to_json(toml::Value::Table(t)))
        .collect();
    prop_oneof![
        (
            prop::sample::select(seeds),
            prop::collection::vec(text_edit(vocab), 0..6)
        )
            .prop_map(|(seed, edits)| apply_text(seed.to_string(), edits)),
        (
            prop::sample::select(trees),
            prop::collection::vec(edit(vocab), 0..5)
        )
            .prop_map(|(tree, edits)| {
                match json_to_toml(apply(tree, edits)) {
                    Some(toml::Value::Table(table)) => toml::to_string(&table).unwrap_or_default(),
                    _ => String::new(),
                }
            }),
    ]
    .boxed()
}

fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// TOML has no null: nulls are left out.
fn json_to_toml(value: Value) -> Option<toml::Value> {
    Some(match value {
        Value::Null => return None,
        Value::Bool(b) => toml::Value::Boolean(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => toml::Value::String(s),
        Value::Array(items) => {
            toml::Value::Array(items.into_iter().filter_map(json_to_toml).collect())
        }
        Value::Object(map) => toml::Value::Table(
            map.into_iter()
                .filter_map(|(k, v)| json_to_toml(v).map(|v| (k, v)))
                .collect(),
        ),
    })
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => Map::from_iter([("value".to_string(), other)]),
    }
}

// ---- targets ---------------------------------------------------------------------------

const WORKFLOW_WORDS: &[&str] = &[
    "workflow",
    "chain",
    "parallel",
    "merge",
    "route",
    "selector",
    "routes",
    "fallback",
    "batch",
    "concurrency",
    "policy",
    "graph",
    "timeout_ms",
    "description",
    "after",
    "if",
    "run",
    "collect",
    "all-or-nothing",
    "increment",
    "double",
    "hello",
    "calc",
    "fan",
    "w",
    "a",
    "b",
    "/kind",
    "/",
    "",
    "~",
    "/a~1b",
    "x-y",
    "0",
    "-",
    "Upper",
];

const WORKFLOW_SEEDS: &[&str] = &[
    include_str!("../../plugins/workflows.toml"),
    "[workflow.a]\nchain = [\"b\"]\n[workflow.b]\nchain = [\"a\", \"double\"]\n",
    "[workflow.g]\ngraph = { x = { run = \"increment\" }, y = { after = [\"x\"], run = \"g\" } }\n",
    "[workflow.r]\nroute = \"/a/b\"\nroutes = { \"\" = \"hello\" }\nfallback = \"r\"\ntimeout_ms = 1\n",
];

#[test]
fn fuzz_workflows_toml() {
    let processors: BTreeSet<String> = ["increment", "double", "hello", "add-ten", "classify"]
        .into_iter()
        .map(String::from)
        .collect();
    fuzz(
        "workflows.toml",
        toml_near(WORKFLOW_SEEDS, WORKFLOW_WORDS),
        |text| {
            let Ok(parsed) = crate::workflow_file::parse(&text, Path::new("workflows.toml")) else {
                return Ok(());
            };
            let checked =
                crate::workflow::check(parsed.workflows, &processors, crate::workflow::MAX_NESTING);
            for workflow in checked.valid.values() {
                // What a worker reads back from Redis is what was published.
                let definition = workflow.definition();
                let back =
                    crate::workflow::Workflow::from_definition(&definition, workflow.digest())
                        .map_err(|e| {
                            TestCaseError::fail(format!("a valid workflow does not read back: {e}"))
                        })?;
                prop_assert_eq!(back.digest(), workflow.digest());
                let _ = (workflow.kind(), workflow.references(), workflow.location());
            }
            for invalid in checked.invalid.values() {
                prop_assert!(
                    invalid.reason.len() < 16 << 10,
                    "a reason of {} bytes",
                    invalid.reason.len()
                );
            }
            Ok(())
        },
    );
}

const MANIFEST_WORDS: &[&str] = &[
    "limits",
    "timeout_ms",
    "memory_bytes",
    "fuel",
    "output_bytes",
    "retry",
    "max_attempts",
    "backoff",
    "fixed",
    "exponential",
    "backoff_ms",
    "max_backoff_ms",
    "jitter",
    "retry_on",
    "timeout",
    "resource",
    "execution",
    "queue",
    "concurrency",
    "priority",
    "rate_limit_per_minute",
    "rate_limit",
    "max",
    "per_ms",
    "config",
    "capabilities",
    "env",
    "files",
    "host",
    "guest",
    "writable",
    "network",
    "http",
    "allow",
    "origin",
    "methods",
    "GET",
    "POST",
    "*",
    "max_response_bytes",
    "warm",
    "max_executions",
    "max_idle",
    "idle_timeout_ms",
    "/srv/data",
    "/data",
    "relative",
    "10.0.0.7:443",
    "[::1]:80",
    "https://api.example.com",
    "http://127.0.0.1:8080",
    "https://*.example.org:*",
    "http://[::1]",
    "ftp://x",
    "http://a:99999",
];

const MANIFEST_SEEDS: &[&str] = &[
    "[limits]\ntimeout_ms = 5000\nmemory_bytes = 134217728\n\n[retry]\nmax_attempts = 3\n\
     backoff = \"exponential\"\nbackoff_ms = 100\nmax_backoff_ms = 1000\njitter = true\n\
     retry_on = [\"timeout\"]\n\n[queue]\nconcurrency = 2\npriority = 10\n\
     rate_limit_per_minute = 60\n\n[config]\ngreeting = \"Hi\"\nn = 3\n\n[capabilities]\n\
     env = { API_REGION = \"eu\" }\nfiles = [{ host = \"/srv/data\", guest = \"/data\", \
     writable = false }]\nnetwork = [\"10.0.0.7:443\"]\n",
    "[capabilities.http]\nallow = [\"https://api.example.com\", { origin = \
     \"http://127.0.0.1:8080\", methods = [\"GET\", \"POST\"] }, \"https://*.example.org:*\"]\n\
     timeout_ms = 10000\nmax_response_bytes = 1048576\n",
    "[warm]\nmax_executions = 100\nmax_idle = 2\nidle_timeout_ms = 60000\n\
     [queue]\nrate_limit = { max = 5, per_ms = 1000 }\n[retry]\nmax_attempts = 2\n\
     backoff = \"fixed\"\n",
];

#[test]
fn fuzz_operator_manifest() {
    let uris: Vec<http::Uri> = [
        "https://api.example.com/x",
        "http://127.0.0.1:8080/",
        "https://a.example.org:9/",
        "http://[::1]/",
    ]
    .iter()
    .filter_map(|u| u.parse().ok())
    .collect();
    fuzz(
        "operator manifest",
        toml_near(MANIFEST_SEEDS, MANIFEST_WORDS),
        |text| {
            let Ok(manifest) = crate::manifest::Manifest::parse(&text) else {
                return Ok(());
            };
            // What loading and running the plugin derive from it.
            let limits = crate::limits::Limits::resolve(
                &manifest.limits,
                &crate::limits::LimitOverrides::default(),
                &crate::limits::Limits::DEFAULTS,
                &crate::limits::Limits::CEILINGS,
            );
            let _ = Instant::now().checked_add(limits.timeout());
            if let Some(retry) = &manifest.retry {
                for attempt in 1..=retry.max_attempts.min(64) {
                    let _ = retry.delay_before(attempt);
                }
            }
            if let Some(warm) = &manifest.warm {
                let _ = Instant::now().checked_add(warm.idle_timeout());
            }
            let _ =
                manifest.check_grants_clear_of(&[("the plugins folder", "/srv/plugins".into())]);
            if let Some(http) = &manifest.capabilities.http {
                for uri in &uris {
                    let _ = http.check(&http::Method::GET, uri);
                }
                let _ = http.timeout();
            }
            Ok(())
        },
    );
}

const SERVER_WORDS: &[&str] = &[
    "server",
    "tenants",
    "operator_token_sha256",
    "max_body_bytes",
    "token_sha256",
    "processors",
    "concurrent",
    "executions_per_minute",
    "fuel_per_minute",
    "memory_bytes",
    "timeout_ms",
    "event_stream_bytes",
    "event_stream_events",
    "max_event_streams",
    "max_event_streams_per_tenant",
    "max_connections",
    "header_read_timeout_ms",
    "body_read_timeout_ms",
    "allowed_hosts",
    "jobs_bytes_per_tenant",
    "jobs_kept_per_tenant",
    "max_sessions_per_tenant",
    "session_idle_ms",
    "acme",
    "default",
    "billing-*",
    "hello",
    "*",
    "Acme",
    "a-",
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
];

const SERVER_SEEDS: &[&str] = &[
    "[server]\noperator_token_sha256 = \
     [\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"]\n\
     max_body_bytes = 4194304\nevent_stream_bytes = 1048576\nmax_connections = 10\n\
     header_read_timeout_ms = 1000\nbody_read_timeout_ms = 1000\nallowed_hosts = [\"weir\"]\n\
     jobs_bytes_per_tenant = 1000\njobs_kept_per_tenant = 10\nmax_sessions_per_tenant = 3\n\
     session_idle_ms = 1000\n\n[tenants.acme]\ntoken_sha256 = \
     [\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"]\n\
     processors = [\"hello\", \"billing-*\"]\nconcurrent = 4\nexecutions_per_minute = 600\n\
     fuel_per_minute = 50000000000\nmemory_bytes = 67108864\ntimeout_ms = 5000\n",
    "[tenants.a]\n[tenants.b]\nconcurrent = 1\n",
];

#[test]
fn fuzz_weir_toml() {
    fuzz("weir.toml", toml_near(SERVER_SEEDS, SERVER_WORDS), |text| {
        let env = vec![("WEIR_TENANT_ACME_TOKEN".to_string(), "t".to_string())];
        let Ok(file) = crate::server::ServerFile::parse(&text, &env) else {
            return Ok(());
        };
        // What `weir serve` builds from it.
        let mut host = crate::HostConfig::default();
        file.settings.apply_host(&mut host);
        let mut config = crate::server::ServerConfig {
            max_body_bytes: file.max_body_bytes.unwrap_or(4 << 20),
            access: file.access,
            ..crate::server::ServerConfig::default()
        };
        file.settings.apply(&mut config);
        let _ = Instant::now().checked_add(host.sessions.idle_expiry);
        let _ = Instant::now().checked_add(config.header_read_timeout);
        let _ = Instant::now().checked_add(config.body_read_timeout);
        Ok(())
    });
}

const STATE_WORDS: &[&str] = &[
    "metadata",
    "version",
    "createdAt",
    "lastUpdated",
    "sessionId",
    "count",
    "items",
    "value",
    "2026-12-06T00:00:00Z",
    "",
    "__proto__",
];

#[test]
fn fuzz_state_and_metadata() {
    let seeds = vec![
        json!({"count": 1}),
        json!({"count": 1, "metadata": {"version": 3, "sessionId": "s", "createdAt": "2026-12-06T00:00:00Z", "lastUpdated": "2026-12-06T00:00:00Z"}}),
        json!({"items": [1, {"a": [2]}], "metadata": {"version": 9007199254740991u64}}),
    ];
    let strategy = (
        json_near(seeds.clone(), STATE_WORDS),
        prop::collection::vec(json_near(seeds, STATE_WORDS), 0..3),
        prop_oneof![
            Just(None),
            Just(Some("s".to_string())),
            word(STATE_WORDS).prop_map(Some)
        ],
    );
    let limits = crate::limits::Limits::DEFAULTS;
    fuzz(
        "state and metadata",
        strategy,
        |(input, outputs, session)| {
            // The input path: what a caller or a job hands in.
            let Ok((state, metadata)) =
                crate::state::prepare_input(input.clone(), session.as_deref())
            else {
                return Ok(());
            };
            prop_assert!(metadata.version <= crate::state::MAX_VERSION);
            let bumped = metadata.bumped();
            prop_assert!(bumped.version >= metadata.version);
            let text = crate::state::text_with_metadata(&state, &bumped);
            let value = crate::state::with_metadata(state.clone(), &bumped);
            let reread: Value = serde_json::from_str(&text)
                .map_err(|e| TestCaseError::fail(format!("the state text is not JSON: {e}")))?;
            prop_assert_eq!(&reread, &value);
            // The output path: what a guest hands back, as text; then a parallel's merge.
            let mut branches = Vec::new();
            for output in outputs {
                let text = output.to_string();
                if let Ok(map) = crate::executor::parse_output(&text, &limits) {
                    prop_assert_eq!(&Value::Object(map.clone()), &output);
                    branches.push(map);
                }
            }
            let merged = crate::merge::merge_branches(&state, &branches);
            let _ = crate::state::with_metadata(merged, &bumped);
            // Whatever a guest wrote, the host reads no state twice as large as the cap.
            let _ = crate::executor::parse_output(&input.to_string(), &limits);
            let _ = object(input);
            Ok(())
        },
    );
}
