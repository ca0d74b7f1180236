//! `cooperative`: loops until `cancelled()` says stop, then returns a `cancelled` error,
//! reporting progress every million rounds. Shows that soft cancellation reaches the guest.
//! With `stubborn: true` it keeps looping after the cancellation, so the host must stop it
//! the hard way once the grace period is over.

use serde::Deserialize;
use weir_sdk::{Context, Error, Value};

#[derive(Deserialize)]
struct Input {
    #[serde(default)]
    stubborn: bool,
}

/// Works until the execution is cancelled.
#[weir_sdk::processor(name = "cooperative", timeout_ms = 10000)]
fn process(input: Input, ctx: &Context) -> Result<Value, Error> {
    let mut rounds: u64 = 0;
    loop {
        if ctx.cancelled() && !input.stubborn {
            return Err(Error::cancelled(format!(
                "the guest stopped itself after {rounds} rounds"
            )));
        }
        rounds = std::hint::black_box(rounds + 1);
        if rounds.is_multiple_of(1_000_000) {
            let _ = ctx.progress((rounds / 1_000_000 % 100) as u8, "still working");
        }
    }
}
