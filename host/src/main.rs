//! The `weir` command line: a thin layer over the library. Each subcommand lives in its own
//! file under `cli/`, parses its arguments and calls the library.
//!
//! Exit codes: 0 ok; 1 the processor failed (the result document is on stdout); 2 usage,
//! configuration or input error (one line on stderr saying what to fix); 3 infrastructure
//! unavailable.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
