//! `sleep` (hostile): blocks in a WASI clock wait for `ms` milliseconds (default one minute).
//! While it waits no WebAssembly runs, so epoch interruption cannot stop it: the host-side
//! timer must.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_sdk::Error;

#[derive(Deserialize)]
struct Input {
    #[serde(default = "a_minute")]
    ms: u64,
}

fn a_minute() -> u64 {
    60_000
}

#[derive(Serialize)]
struct Output {
    slept_ms: u64,
}

/// Sleeps in a host call.
#[weir_sdk::processor(name = "sleep", timeout_ms = 300)]
fn process(input: Input) -> Result<Output, Error> {
    std::thread::sleep(Duration::from_millis(input.ms));
    Ok(Output { slept_ms: input.ms })
}
