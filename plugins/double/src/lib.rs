//! `double`: sets `count` to `count` * 2 (a missing `count` counts as 0).

use serde::{Deserialize, Serialize};
use weir_sdk::Error;

#[derive(Deserialize, Serialize)]
struct Counter {
    #[serde(default)]
    count: i64,
}

/// Sets `count` to count × 2.
#[weir_sdk::processor(name = "double", timeout_ms = 1000)]
fn process(state: Counter) -> Result<Counter, Error> {
    let count = state.count.checked_mul(2).ok_or_else(|| {
        Error::validation(format!("count {} is too large to update", state.count))
            .with_code("overflow")
    })?;
    Ok(Counter { count })
}
