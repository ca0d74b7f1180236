//! `add-ten`: sets `count` to `count` + 10 (a missing `count` counts as 0).

use serde::{Deserialize, Serialize};
use weir_sdk::Error;

#[derive(Deserialize, Serialize)]
struct Counter {
    #[serde(default)]
    count: i64,
}

/// Sets `count` to count + 10.
#[weir_sdk::processor(name = "add-ten", timeout_ms = 1000)]
fn process(state: Counter) -> Result<Counter, Error> {
    let count = state.count.checked_add(10).ok_or_else(|| {
        Error::validation(format!("count {} is too large to update", state.count))
            .with_code("overflow")
    })?;
    Ok(Counter { count })
}
