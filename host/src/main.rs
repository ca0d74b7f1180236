//! The `weir` command line: a thin layer over the library. Each subcommand lives in its own
//! file under `cli/`, parses its arguments and calls the library.
//!
//! Exit codes: 0 ok; 1 the processor failed (the result document is on stdout); 2 usage,
//! configuration or input error (one line on stderr saying what to fix); 3 infrastructure
//! unavailable.

mod cli;

/// mimalloc instead of the system allocator: a worker's jobs and a server's requests
/// allocate and free many small objects (JSON documents, Redis replies, tasks) across
/// threads, where glibc's malloc spent about a seventh of a `weir worker`'s CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
