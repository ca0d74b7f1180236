//! `tally` (test): increments a counter kept in the session store and sets `tally` to it.
//! Shows that session data persists across executions of one session and nowhere else.

use serde::Serialize;
use weir_sdk::{Context, Error, Value};

#[derive(Serialize)]
struct Output {
    tally: u64,
}

/// Counts executions in this session.
#[weir_sdk::processor(name = "tally")]
fn process(_state: Value, ctx: &Context) -> Result<Output, Error> {
    let store = ctx.store();
    let tally = store.get_json::<u64>("tally")?.unwrap_or(0) + 1;
    store.set_json("tally", &tally)?;
    Ok(Output { tally })
}
