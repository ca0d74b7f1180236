//! `--log-format` and `--log-level`: where the host's (and guests') log lines go. Logs go to
//! stderr; stdout carries only the command's output.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

/// The default filter: the host's warnings, and what guests log at info and above.
const DEFAULT_FILTER: &str = "warn,weir::execution=info,weir::guest=info,weir::reload=info";

#[derive(Args, Debug)]
pub(crate) struct LogArgs {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `warn,weir::guest=debug` [default: warn,weir::execution=info,weir::guest=info,weir::reload=info].
    #[arg(long, global = true, env = "WEIR_LOG", value_name = "FILTER")]
    log_level: Option<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
    /// No logs at all.
    Off,
}

/// Installs the global subscriber. Fails with a message when the filter does not parse.
pub(crate) fn init(args: &LogArgs) -> Result<(), String> {
    let filter = args.log_level.as_deref().unwrap_or(DEFAULT_FILTER);
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| format!("--log-level `{filter}` is not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours for a terminal only: a log file or pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Off => return Ok(()),
    };
    result.map_err(|e| format!("cannot set up logging: {e}"))
}
