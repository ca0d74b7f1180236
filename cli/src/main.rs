//! The `weir` command line: a thin layer over the library. Each subcommand lives in its own
//! file beside this one, parses its arguments and calls the library.
//!
//! Exit codes: 0 ok; 1 the processor failed (the result document is on stdout); 2 usage,
//! configuration or input error (one line on stderr saying what to fix); 3 infrastructure
//! unavailable.
//!
//! Argument parsing, logging set-up and the mapping of outcomes to exit codes live here.

mod build;
mod dlq;
mod logging;
mod new;
mod plugins;
mod run;
mod runs;
mod schedules;
mod serve;
mod token;
mod worker;
mod workflows;

use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{Signal, SignalKind, signal};

use clap::{Args, Parser, Subcommand};

/// mimalloc instead of the system allocator: a worker's jobs and a server's requests
/// allocate and free many small objects (JSON documents, Redis replies, tasks) across
/// threads, where glibc's malloc spent about a seventh of a `weir worker`'s CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How a command ended, mapped onto the documented exit codes.
pub(crate) enum Outcome {
    /// Exit 0.
    Ok,
    /// Exit 1: the processor or workflow failed; its result is on stdout.
    Failed,
}

/// A command's error: exit 2 (usage, configuration, input) or 3 (infrastructure).
#[derive(Debug)]
pub(crate) enum Failure {
    /// Something the user can fix: one line saying what.
    Usage(String),
    /// Something the environment must fix.
    Infrastructure(String),
}

impl From<weir::Error> for Failure {
    fn from(err: weir::Error) -> Self {
        match err {
            weir::Error::Engine(_) | weir::Error::Redis { .. } => {
                Failure::Infrastructure(err.to_string())
            }
            _ => Failure::Usage(err.to_string()),
        }
    }
}

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Run processors compiled to WebAssembly components"
)]
struct Cli {
    #[command(flatten)]
    logging: logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one processor on one input state and print the result document.
    Run(run::RunArgs),
    /// Keep serving a plugins folder, applying changes to it without a restart; with
    /// `--listen`, serve the HTTP API too.
    Serve(serve::ServeArgs),
    /// Make a new API token and print it with the SHA-256 digest that `weir.toml` stores.
    Token,
    /// Make a new fleet key: give the same one to every process of a distributed fleet
    /// (WEIR_FLEET_KEY or --fleet-key-file), and to no one else.
    FleetKey,
    /// List or inspect the plugins of a folder.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// List or check the workflows of a folder (its workflows.toml).
    #[command(subcommand)]
    Workflows(workflows::WorkflowsCommand),
    /// Serve the distributed runtime's queues: run the jobs of every processor published
    /// to Redis until SIGTERM.
    Worker(worker::WorkerArgs),
    /// Read runs of the distributed runtime.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// List, add and remove the distributed runtime's schedules.
    #[command(subcommand)]
    Schedules(schedules::SchedulesCommand),
    /// Inspect and redrive the distributed runtime's dead jobs (failed for good).
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Create a plugin project in any supported language (rust, python, js, c, go).
    New(new::NewArgs),
    /// Build plugin projects into components and install them into a plugins folder.
    Build(build::BuildArgs),
}

/// Options shared by every command that loads plugins.
#[derive(Args, Debug, Clone)]
pub(crate) struct PluginArgs {
    /// The plugins folder: every `NAME.wasm` in it is the processor NAME.
    #[arg(
        long,
        env = "WEIR_PLUGINS",
        default_value = "plugins",
        value_name = "DIR"
    )]
    pub plugins: PathBuf,
    /// Where compiled components are cached [default: ~/.cache/weir/compiled].
    #[arg(long, env = "WEIR_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile every plugin afresh and cache nothing.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
    /// Longest one plugin's compile may take, in milliseconds: each compile runs in a
    /// child process, killed past it, and the plugin is refused. 0 compiles in this process
    /// instead, with no clock.
    #[arg(
        long,
        env = "WEIR_COMPILE_TIMEOUT_MS",
        default_value_t = 60_000,
        value_name = "MS"
    )]
    pub compile_timeout_ms: u64,
    /// Most memory (address space, in MiB) a compiling child process may map; a compile
    /// that needs more fails and the plugin is refused.
    #[arg(
        long,
        env = "WEIR_COMPILE_MEMORY_MIB",
        default_value_t = 4096,
        value_name = "MIB"
    )]
    pub compile_memory_mib: u64,
}

/// Arguments of the `list` commands.
#[derive(Args, Debug)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub plugins: PluginArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where the distributed runtime's Redis is.
#[derive(Args, Debug, Clone)]
pub(crate) struct RedisArgs {
    /// Run through the Redis at this URL (the distributed runtime), e.g.
    /// `redis://127.0.0.1:6379`.
    #[arg(long, env = "WEIR_REDIS", value_name = "URL")]
    pub redis: Option<String>,
    /// First segment of every key weir writes in Redis.
    #[arg(
        long,
        env = "WEIR_REDIS_PREFIX",
        default_value = "weir",
        value_name = "PREFIX"
    )]
    pub redis_prefix: String,
    /// How long connecting to Redis may take before it counts as unreachable (exit 3).
    #[arg(long, default_value_t = 5_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,
    /// A file holding the fleet key that every process of this fleet shares (make one
    /// with `weir fleet-key`): its first line signs; further lines are keys also accepted
    /// during a rotation. Instead of a file, the key may be in WEIR_FLEET_KEY (and keys
    /// also accepted in WEIR_FLEET_KEY_ACCEPTED, separated by commas).
    #[arg(long, env = "WEIR_FLEET_KEY_FILE", value_name = "FILE")]
    pub fleet_key_file: Option<PathBuf>,
    /// How this process is named to the fleet's operators (where a run's steps ran, in
    /// its timeline): 1-64 letters, digits, `-`, `_`, `.` and `:` [default: HOST:PID].
    #[arg(long, env = "WEIR_PROCESS_NAME", value_name = "NAME")]
    pub process_name: Option<String>,
    /// Run the distributed runtime without a fleet key: nothing is signed or checked, so
    /// anyone who can write to this Redis can run any code as any tenant, with any
    /// processor's grants.
    #[arg(long, env = "WEIR_INSECURE_REDIS",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure_redis: bool,
}

/// The environment variable holding the fleet key.
const FLEET_KEY: &str = "WEIR_FLEET_KEY";
/// The environment variable holding keys also accepted (a rotation), comma-separated.
const FLEET_KEY_ACCEPTED: &str = "WEIR_FLEET_KEY_ACCEPTED";

impl RedisArgs {
    /// The Redis configuration, if `--redis` was given.
    pub(crate) fn config(&self) -> Result<Option<weir::RedisConfig>, Failure> {
        let Some(url) = self.redis.as_ref() else {
            return Ok(None);
        };
        let mut config = weir::RedisConfig::new(url.clone());
        config.prefix = self.redis_prefix.clone();
        config.connect_timeout = std::time::Duration::from_millis(self.connect_timeout_ms);
        config.trust = self.trust()?;
        config.process_name = self.process_name.clone();
        Ok(Some(config))
    }

    /// The fleet key (and keys also accepted) from the key file or the environment, or
    /// the insecure mode asked for; unset when neither (the runtime then says what to do).
    fn trust(&self) -> Result<weir::Trust, Failure> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let mut keys: Vec<String> = match (&self.fleet_key_file, env(FLEET_KEY)) {
            (Some(_), Some(_)) => {
                return Err(Failure::Usage(format!(
                    "both --fleet-key-file and {FLEET_KEY} are set: give the fleet key one way"
                )));
            }
            (Some(file), None) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    Failure::Usage(format!(
                        "cannot read the fleet key file {}: {e}",
                        file.display()
                    ))
                })?;
                text.lines()
                    .map(str::trim)
                    .filter(|line| !line.is_empty() && !line.starts_with('#'))
                    .map(str::to_string)
                    .collect()
            }
            (None, Some(key)) => std::iter::once(key)
                .chain(
                    env(FLEET_KEY_ACCEPTED)
                        .iter()
                        .flat_map(|keys| keys.split(','))
                        .map(str::trim)
                        .filter(|key| !key.is_empty())
                        .map(str::to_string),
                )
                .collect(),
            (None, None) => Vec::new(),
        };
        if keys.is_empty() {
            return Ok(if self.insecure_redis {
                weir::Trust::Insecure
            } else {
                weir::Trust::Unset
            });
        }
        if self.insecure_redis {
            return Err(Failure::Usage(
                "a fleet key is given and --insecure-redis (WEIR_INSECURE_REDIS) is set: choose                  one"
                .into(),
            ));
        }
        let parse =
            |text: &str| weir::FleetKey::from_text(text).map_err(|e| Failure::Usage(e.to_string()));
        let key = parse(&keys.remove(0))?;
        let accepted = keys
            .iter()
            .map(|k| parse(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(weir::Trust::Keyed { key, accepted })
    }

    /// The Redis configuration, required.
    pub(crate) fn required(&self, command: &str) -> Result<weir::RedisConfig, Failure> {
        self.config()?.ok_or_else(|| {
            Failure::Usage(format!(
                "`weir {command}` needs Redis: pass --redis URL or set WEIR_REDIS"
            ))
        })
    }
}

impl PluginArgs {
    /// Keeps the folder live on `runtime`. A folder that is not there is an error when
    /// `required`, else (on Redis, where workers may hold the plugins) nothing to watch.
    pub(crate) fn watch(
        &self,
        runtime: &weir::Runtime,
        required: bool,
        debounce: std::time::Duration,
    ) -> Result<Option<weir::Watcher>, Failure> {
        if !required && !self.plugins.is_dir() {
            return Ok(None);
        }
        runtime
            .watch(&self.plugins, debounce)
            .map(Some)
            .map_err(|e| Failure::Usage(e.to_string()))
    }

    pub(crate) async fn runtime(&self) -> Result<weir::Runtime, Failure> {
        self.runtime_on(None).await
    }

    /// A started runtime on this folder; through `redis` if given (then the folder may be
    /// absent: everything can come from Redis).
    pub(crate) async fn runtime_on(
        &self,
        redis: Option<weir::RedisConfig>,
    ) -> Result<weir::Runtime, Failure> {
        self.build(redis, true, weir::HostConfig::default()).await
    }

    /// [`Self::runtime_on`] with the host policies `host`.
    pub(crate) async fn runtime_with(
        &self,
        redis: Option<weir::RedisConfig>,
        host: weir::HostConfig,
    ) -> Result<weir::Runtime, Failure> {
        self.build(redis, true, host).await
    }

    /// A started runtime on Redis that loads no folder (and so publishes nothing).
    pub(crate) async fn bare_runtime(
        &self,
        redis: weir::RedisConfig,
    ) -> Result<weir::Runtime, Failure> {
        self.build(Some(redis), false, weir::HostConfig::default())
            .await
    }

    /// Where this command compiles plugins: in a child process (this binary again) under
    /// `--compile-timeout-ms` and `--compile-memory-mib`, unless the timeout is 0.
    fn compiler(&self) -> Result<weir::Compiler, Failure> {
        if self.compile_timeout_ms == 0 {
            return Ok(weir::Compiler::InProcess);
        }
        let memory = self
            .compile_memory_mib
            .checked_mul(1 << 20)
            .ok_or_else(|| {
                Failure::Usage(format!(
                    "--compile-memory-mib {} is too large",
                    self.compile_memory_mib
                ))
            })?;
        weir::CompileProcess::current_exe(
            std::time::Duration::from_millis(self.compile_timeout_ms),
            Some(memory),
        )
        .map(weir::Compiler::Process)
        .map_err(|e| {
            Failure::Infrastructure(format!(
                "cannot find this program to compile plugins with ({e}); pass \
                 --compile-timeout-ms 0 to compile in this process"
            ))
        })
    }

    async fn build(
        &self,
        redis: Option<weir::RedisConfig>,
        load_folder: bool,
        host: weir::HostConfig,
    ) -> Result<weir::Runtime, Failure> {
        let has_folder = load_folder && self.plugins.is_dir();
        if !has_folder && redis.is_none() {
            return Err(Failure::Usage(format!(
                "the plugins folder {} does not exist (pass --plugins DIR or set WEIR_PLUGINS)",
                self.plugins.display()
            )));
        }
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(weir::CompileCache::default_dir)
        };
        let mut builder = weir::Runtime::builder()
            .cache_dir(cache_dir)
            .compiler(self.compiler()?)
            .host_config(host);
        if has_folder {
            builder = builder.plugins_dir(&self.plugins);
        }
        if let Some(redis) = redis {
            builder = builder.redis_config(redis);
        }
        let runtime = builder.build().await?;
        runtime.start();
        Ok(runtime)
    }
}

impl From<weir::RuntimeError> for Failure {
    fn from(err: weir::RuntimeError) -> Self {
        match err {
            weir::RuntimeError::Unavailable(_) => Failure::Infrastructure(err.to_string()),
            weir::RuntimeError::InvalidRequest(_) => Failure::Usage(err.to_string()),
            _ => Failure::Usage(err.to_string()),
        }
    }
}

/// The distributed runtime's own operations, for a command that needs them (its runtime
/// was built with `--redis`).
pub(crate) fn fleet(runtime: &weir::Runtime) -> Result<weir::Fleet, Failure> {
    runtime.fleet().ok_or_else(|| {
        Failure::Usage(
            "this needs the distributed runtime: give --redis URL (or set WEIR_REDIS)".into(),
        )
    })
}

/// Parses the command line, runs the command and returns its exit code.
fn main() -> ExitCode {
    // Started by itself to compile one plugin, under a clock and a memory bound.
    if std::env::args_os().nth(1).as_deref() == Some(weir::COMPILE_PROCESS_ARG.as_ref()) {
        return weir::compile_process_main();
    }
    let cli = Cli::parse();
    if let Err(message) = logging::init(&cli.logging) {
        eprintln!("weir: {message}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("weir: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Token => token::run(),
            Command::FleetKey => token::fleet_key(),
            Command::Plugins(command) => plugins::run(command).await,
            Command::Workflows(command) => workflows::run(command).await,
            Command::Worker(args) => worker::run(args).await,
            Command::Runs(command) => runs::run(command).await,
            Command::Schedules(command) => schedules::run(command).await,
            Command::Dlq(command) => dlq::run(command).await,
            Command::New(args) => new::run(args),
            Command::Build(args) => build::run(args).await,
        }
    });
    match outcome {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(Failure::Usage(message)) => {
            eprintln!("weir: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Infrastructure(message)) => {
            eprintln!("weir: {message}");
            ExitCode::from(3)
        }
    }
}

/// Writes a JSON document to stdout: pretty for a terminal, one line for a pipe.
/// SIGINT and SIGTERM as streams, registered now: a long-running command calls this before
/// it announces that it serves, so that a signal arriving after the announcement stops it
/// gracefully instead of killing it.
pub(crate) fn stop_signals() -> Result<(Signal, Signal), Failure> {
    let listen = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|e| Failure::Infrastructure(format!("cannot listen for {name}: {e}")))
    };
    Ok((
        listen(SignalKind::interrupt(), "SIGINT")?,
        listen(SignalKind::terminate(), "SIGTERM")?,
    ))
}

pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Failure> {
    use std::io::{IsTerminal, Write};
    let stdout = std::io::stdout();
    let text = if stdout.is_terminal() {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    }
    .map_err(|e| Failure::Infrastructure(format!("cannot encode the output: {e}")))?;
    let mut lock = stdout.lock();
    writeln!(lock, "{text}")
        .and_then(|_| lock.flush())
        .map_err(|e| Failure::Infrastructure(format!("cannot write to stdout: {e}")))
}
