//! `log-flood` (hostile): writes a flood of log lines and stdout/stderr output. The host
//! must rate-limit it and stay responsive; the execution itself succeeds.

use serde::{Deserialize, Serialize};
use weir_sdk::{Context, Error};

#[derive(Deserialize)]
struct Input {
    #[serde(default = "default_lines")]
    lines: u32,
}

fn default_lines() -> u32 {
    100_000
}

#[derive(Serialize)]
struct Output {
    written: u32,
}

/// Writes `lines` log lines, and as many lines to stdout and stderr.
#[weir_sdk::processor(name = "log-flood", timeout_ms = 20000)]
fn process(input: Input, ctx: &Context) -> Result<Output, Error> {
    for i in 0..input.lines {
        ctx.log(
            weir_sdk::Level::Info,
            "flood",
            &weir_sdk::json!({ "line": i }),
        );
        println!("stdout flood {i}");
        eprintln!("stderr flood {i}");
    }
    Ok(Output {
        written: input.lines,
    })
}
