//! `sum-counts`: a custom merge for parallel workflows. It receives `{input, results}` (the
//! shared input and each branch's `{branch, state}`, in declared order) and returns the input
//! with `count` set to the sum of the branches' counts and `branches` listing them.

use serde::{Deserialize, Serialize};
use weir_sdk::{Error, Map, Value};

#[derive(Deserialize)]
struct MergeInput {
    input: Map<String, Value>,
    results: Vec<BranchResult>,
}

#[derive(Deserialize)]
struct BranchResult {
    branch: String,
    state: Map<String, Value>,
}

#[derive(Serialize)]
struct Merged {
    #[serde(flatten)]
    input: Map<String, Value>,
    count: i64,
    branches: Vec<String>,
}

/// Sets `count` to the sum of the branches' counts.
#[weir_sdk::processor(name = "sum-counts", output = "replace")]
fn process(merge: MergeInput) -> Result<Merged, Error> {
    let count = merge
        .results
        .iter()
        .map(|r| r.state.get("count").and_then(Value::as_i64).unwrap_or(0))
        .sum();
    let mut input = merge.input;
    input.remove("count");
    Ok(Merged {
        input,
        count,
        branches: merge.results.into_iter().map(|r| r.branch).collect(),
    })
}
