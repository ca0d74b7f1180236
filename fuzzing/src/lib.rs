//! A stable, property-based fuzzing harness for what strangers hand weir (cargo-fuzz needs a
//! nightly toolchain): proptest builds inputs near valid seeds (structural edits of their
//! parsed trees, byte edits of their text) and from each format's vocabulary, runs the
//! target on each, catches panics and shrinks a failing input to a small one. The run's
//! length comes from the environment; `docs/fuzzing.md` says how to run it for longer. The
//! targets live beside the code they fuzz (`weir`'s and `weir-server`'s tests).

use std::fmt::Debug;
use std::time::{Duration, Instant, SystemTime};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{Map, Value};

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
pub fn fuzz<S>(target: &str, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
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
pub fn word(vocab: &'static [&'static str]) -> impl Strategy<Value = String> + Clone {
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
pub fn json_value(vocab: &'static [&'static str]) -> impl Strategy<Value = Value> + Clone {
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
pub fn json_near(
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
pub fn toml_near(
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

/// `value` as a JSON object: itself if it is one, else `{"value": value}`.
pub fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => Map::from_iter([("value".to_string(), other)]),
    }
}
