//! Fuzz targets for what strangers hand the library: workflow files, operator manifests,
//! input and output states, and job data read from Redis (the HTTP server's targets are in
//! `weir-server`). The harness is `weir-fuzzing`'s: inputs near valid seeds and from each
//! format's vocabulary, shrunk when one fails. Each target also checks what must hold of
//! what it accepts (a definition that round-trips, an error that is a JSON document).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use proptest::prelude::*;
use serde_json::{Value, json};
use weir_fuzzing::{fuzz, json_near, object, toml_near, word};

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
            let Ok(parsed) =
                crate::contract::workflow::file::parse(&text, Path::new("workflows.toml"))
            else {
                return Ok(());
            };
            let checked = crate::contract::workflow::check(
                parsed.workflows,
                &processors,
                crate::contract::workflow::MAX_NESTING,
            );
            for workflow in checked.valid.values() {
                // What a worker reads back from Redis is what was published.
                let definition = workflow.definition();
                let back = crate::contract::workflow::Workflow::from_definition(
                    &definition,
                    workflow.digest(),
                )
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
            let Ok(manifest) = crate::contract::manifest::Manifest::parse(&text) else {
                return Ok(());
            };
            // What loading and running the plugin derive from it.
            let limits = crate::contract::limits::Limits::resolve(
                &manifest.limits,
                &crate::contract::limits::LimitOverrides::default(),
                &crate::contract::limits::Limits::DEFAULTS,
                &crate::contract::limits::Limits::CEILINGS,
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
    let limits = crate::contract::limits::Limits::DEFAULTS;
    fuzz(
        "state and metadata",
        strategy,
        |(input, outputs, session)| {
            // The input path: what a caller or a job hands in.
            let Ok((state, metadata)) =
                crate::contract::state::prepare_input(input.clone(), session.as_deref())
            else {
                return Ok(());
            };
            prop_assert!(metadata.version <= crate::contract::state::MAX_VERSION);
            let bumped = metadata.bumped();
            prop_assert!(bumped.version >= metadata.version);
            let text = crate::contract::state::text_with_metadata(&state, &bumped);
            let value = crate::contract::state::with_metadata(state.clone(), &bumped);
            let reread: Value = serde_json::from_str(&text)
                .map_err(|e| TestCaseError::fail(format!("the state text is not JSON: {e}")))?;
            prop_assert_eq!(&reread, &value);
            // The output path: what a guest hands back, as text; then a parallel's merge.
            let mut branches = Vec::new();
            for output in outputs {
                let text = output.to_string();
                if let Ok(map) = crate::execution::executor::parse_output(&text, &limits) {
                    prop_assert_eq!(&Value::Object(map.clone()), &output);
                    branches.push(map);
                }
            }
            let merged = crate::contract::merge::merge_branches(&state, &branches);
            let _ = crate::contract::state::with_metadata(merged, &bumped);
            // Whatever a guest wrote, the host reads no state twice as large as the cap.
            let _ = crate::execution::executor::parse_output(&input.to_string(), &limits);
            let _ = object(input);
            Ok(())
        },
    );
}
