//! `stamp` (test): appends a fresh random token to `items`. Parallel branches that each
//! stamp the same input show that the default merge keeps every branch's item.

use std::hash::{BuildHasher, Hasher};

use serde::{Deserialize, Serialize};
use weir_sdk::{Error, Value};

#[derive(Deserialize, Serialize)]
struct Items {
    #[serde(default)]
    items: Vec<Value>,
}

/// Appends a unique token to `items`.
#[weir_sdk::processor(name = "stamp")]
fn process(mut state: Items) -> Result<Items, Error> {
    // RandomState is seeded from the host's random source (WASI random).
    let token = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    state.items.push(Value::String(format!("{token:016x}")));
    Ok(state)
}
