//! A plugin: the bytes of one `.wasm` file turned into a validated, pre-instantiated
//! processor with its metadata, resolved limits and operator manifest.
//!
//! Loading checks, in order: the file stem is a valid processor name; the operator manifest
//! (if any) parses; the bytes compile (through the compile cache); the component's imports
//! are all things weir provides and it exports the `handler` interface (the right world);
//! `describe` runs in a sandbox and names the processor as the file does, with a semver
//! version. Anything else is a [`LoadError`] saying what to fix.

use crate::sandbox::warm::WarmPool;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};

use crate::contract::bounds::GuestBounds;
use crate::contract::cancel::CancelHandle;
use crate::contract::error::{ErrorKind, LoadError};
use crate::contract::limits::{LimitOverrides, Limits};
use crate::contract::limits::{QueuePolicy, RateLimit};
use crate::contract::manifest::Manifest;
pub use crate::contract::names::is_valid_name;
use crate::contract::retry::{Backoff, RetryPolicy};
use crate::sandbox::bindings::{HANDLER_EXPORT, ProcessorPre, WORLD, wit};
use crate::sandbox::engine::Engine;
use crate::sandbox::guest_log::{GuestLog, LogRate};
use crate::sandbox::{Sandbox, SandboxSpec};

/// What loading a plugin is held to: the operator's default limits and ceilings, the size
/// of a component, and what its `describe` may take. The layer above lends one from its
/// host configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadPolicy {
    /// Limits for plugins that neither declare nor are granted one.
    pub defaults: Limits,
    /// The most any manifest or plugin can get.
    pub ceilings: Limits,
    /// Largest component read and compiled, in bytes.
    pub max_component_bytes: u64,
    /// Largest operator manifest read, in bytes.
    pub max_manifest_bytes: u64,
    /// Time `describe` gets.
    pub describe_timeout: std::time::Duration,
    /// Guest log lines `describe` may write.
    pub log_rate: LogRate,
    /// What `describe`'s guest may hand the host.
    pub guest: GuestBounds,
}

/// Queue defaults a processor declares (used by the distributed runtime).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueSettings {
    /// Executions one worker runs at once.
    pub concurrency: Option<u32>,
    /// Job priority (lower runs first).
    pub priority: Option<u32>,
    /// At most `max` executions per `per_ms` milliseconds.
    pub rate_limit: Option<(u32, u64)>,
}

/// What a processor says about itself through `describe`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Description {
    /// The declared semver version.
    pub version: String,
    /// One sentence.
    pub description: String,
    /// The limits it asks for.
    pub limits: LimitOverrides,
    /// Its retry policy, if it declares one.
    pub retry: Option<RetryPolicy>,
    /// Its queue defaults, if it declares them.
    pub queue: Option<QueueSettings>,
}

/// A loaded, validated processor, ready to run.
pub struct Plugin {
    name: Arc<str>,
    path: PathBuf,
    digest: String,
    size_bytes: u64,
    description: Description,
    manifest: Manifest,
    limits: Limits,
    retry: RetryPolicy,
    queue: QueuePolicy,
    config: Arc<BTreeMap<String, String>>,
    compiled_from_cache: bool,
    compile_time: Duration,
    pub(crate) pre: ProcessorPre<Sandbox>,
    /// Idle instances to reuse, when the manifest grants `[warm]`.
    warm: Option<WarmPool>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("digest", &self.digest)
            .field("version", &self.description.version)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    /// The processor name (the file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SHA-256 of the component bytes, hex: what "which code ran" means.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Size of the component file.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The declared version (semver).
    pub fn version(&self) -> &str {
        &self.description.version
    }

    /// Everything `describe` said.
    pub fn description(&self) -> &Description {
        &self.description
    }

    /// The operator manifest (empty if there is none).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The limits an execution gets before the caller lowers them.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The retry policy in force: the manifest's, else the processor's, else one attempt.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// How its executions are admitted: the manifest's `[queue]`, else what it declares.
    pub fn queue(&self) -> &QueuePolicy {
        &self.queue
    }

    /// The operator's configuration values.
    pub fn config(&self) -> &Arc<BTreeMap<String, String>> {
        &self.config
    }

    /// The world it was built for.
    pub fn world(&self) -> &'static str {
        WORLD
    }

    /// Whether its native code came from the compile cache.
    pub fn compiled_from_cache(&self) -> bool {
        self.compiled_from_cache
    }

    /// How long compiling (or loading from the cache) took.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// The processor name, shared (sandboxes carry it for their log and events).
    pub(crate) fn name_shared(&self) -> &Arc<str> {
        &self.name
    }

    /// Its idle warm instances, if the operator opted it into reuse.
    pub(crate) fn warm(&self) -> Option<&WarmPool> {
        self.warm.as_ref()
    }

    /// Loads and validates the plugin at `path`.
    pub(crate) async fn load(
        engine: &Engine,
        linker: &Linker<Sandbox>,
        path: &Path,
        host: &LoadPolicy,
    ) -> Result<Plugin, LoadError> {
        let name = name_from_path(path)?;
        let folder = path.parent().unwrap_or(Path::new("."));
        let manifest = load_manifest(engine, path, host.max_manifest_bytes).await?;
        let bytes = read_component(folder, path, host.max_component_bytes).await?;
        Plugin::from_bytes(engine, linker, name, path, bytes, manifest, host).await
    }

    /// Loads and validates the component `bytes` as the processor `name`, under the operator
    /// `manifest`; `path` is where the bytes came from (shown in listings and messages).
    pub(crate) async fn from_bytes(
        engine: &Engine,
        linker: &Linker<Sandbox>,
        name: String,
        path: &Path,
        bytes: Vec<u8>,
        manifest: Manifest,
        host: &LoadPolicy,
    ) -> Result<Plugin, LoadError> {
        let size_bytes = bytes.len() as u64;
        if size_bytes > host.max_component_bytes {
            return Err(LoadError::TooLarge {
                bytes: size_bytes,
                limit: host.max_component_bytes,
            });
        }
        let digest = hex::encode(Sha256::digest(&bytes));
        let compiled = engine.compile(Arc::new(bytes), &digest).await?;
        let pre = prepare(engine, linker, &compiled.component)?;

        // `describe` runs under the host's defaults, except memory: an interpreter that
        // needs more to start is granted it by the same manifest line as its executions.
        let describe_limits = Limits::resolve(
            &LimitOverrides {
                memory_bytes: manifest.limits.memory_bytes,
                ..LimitOverrides::default()
            },
            &LimitOverrides::default(),
            &host.defaults,
            &host.ceilings,
        );
        let meta = describe(&name, engine, &pre, &manifest, &describe_limits, host).await?;
        let description = validate_description(&name, meta)?;
        let limits = Limits::resolve(
            &manifest.limits,
            &description.limits,
            &host.defaults,
            &host.ceilings,
        );
        let retry = manifest
            .retry
            .clone()
            .or_else(|| description.retry.clone())
            .unwrap_or_default();
        let declared = description.queue.clone().unwrap_or_default();
        let queue = QueuePolicy {
            concurrency: manifest.queue.concurrency.or(declared.concurrency),
            priority: manifest.queue.priority.or(declared.priority).unwrap_or(0),
            rate_limit: manifest
                .queue
                .rate_limit
                .or(declared.rate_limit.map(|(max, per_ms)| RateLimit {
                    max,
                    per: Duration::from_millis(per_ms),
                })),
        };
        let warm = manifest
            .warm
            .filter(|_| engine.config().max_warm_instances > 0)
            .map(|policy| WarmPool::new(policy, engine.warm_budget().clone()));
        Ok(Plugin {
            warm,
            name: Arc::from(name),
            path: path.to_path_buf(),
            digest,
            size_bytes,
            config: Arc::new(manifest.config.clone()),
            description,
            manifest,
            limits,
            retry,
            queue,
            compiled_from_cache: compiled.from_cache,
            compile_time: compiled.elapsed,
            pre,
        })
    }
}

fn name_from_path(path: &Path) -> Result<String, LoadError> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if is_valid_name(&stem) {
        Ok(stem)
    } else {
        Err(LoadError::BadFileName { stem })
    }
}

fn prepare(
    engine: &Engine,
    linker: &Linker<Sandbox>,
    component: &Component,
) -> Result<ProcessorPre<Sandbox>, LoadError> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine.wasmtime())
        .map(|(name, _)| name.to_string())
        .collect();
    if !exports.iter().any(|e| e == HANDLER_EXPORT) {
        let found = if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        };
        return Err(LoadError::WrongWorld {
            reason: format!("it does not export `{HANDLER_EXPORT}` (it exports {found})"),
        });
    }
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| LoadError::WrongWorld {
            reason: format!("it needs an import weir does not provide: {e:#}"),
        })?;
    ProcessorPre::new(instance_pre).map_err(|e| LoadError::WrongWorld {
        reason: format!("its `{HANDLER_EXPORT}` export does not match the contract: {e:#}"),
    })
}

async fn describe(
    name: &str,
    engine: &Engine,
    pre: &ProcessorPre<Sandbox>,
    manifest: &Manifest,
    limits: &Limits,
    host: &LoadPolicy,
) -> Result<wit::ProcessorMetadata, LoadError> {
    let timeout = host.describe_timeout.min(limits.timeout());
    let deadline = Instant::now() + timeout;
    let log = GuestLog::new(host.log_rate, host.guest);
    let describe_error = |reason: String| LoadError::Describe { reason };
    let mut store = Sandbox::store(
        engine,
        SandboxSpec {
            memory_bytes: limits.memory_bytes,
            fuel: limits.fuel,
            deadline,
            cancel: CancelHandle::new(),
            processor: Arc::from(name),
            log: log.clone(),
            capabilities: &manifest.capabilities,
            config: Arc::new(manifest.config.clone()),
            services: None,
            bounds: host.guest,
        },
    )
    .map_err(|e| describe_error(e.message))?;
    let run = async {
        let processor = pre.instantiate_async(&mut store).await?;
        processor
            .weir_processor_handler()
            .call_describe(&mut store)
            .await
    };
    let outcome = tokio::time::timeout(timeout, run).await;
    log.finish();
    match outcome {
        Ok(Ok(meta)) => Ok(meta),
        Ok(Err(e)) => Err(describe_error(match log.panic_message() {
            Some(panic) => format!("it trapped: {panic}"),
            None => format!("it trapped: {e:#}"),
        })),
        Err(_) => Err(describe_error(format!(
            "it did not answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// A retry policy as `describe` declares it, in the host's terms.
fn retry_from_wit(policy: &wit::RetryPolicy) -> RetryPolicy {
    RetryPolicy {
        max_attempts: policy.max_attempts,
        backoff: match policy.backoff {
            wit::Backoff::Fixed(delay_ms) => Backoff::Fixed { delay_ms },
            wit::Backoff::Exponential(e) => Backoff::Exponential {
                initial_ms: e.initial_ms,
                max_ms: e.max_ms,
            },
        },
        jitter: policy.jitter,
        retry_on: policy
            .retry_on
            .iter()
            .map(|k| ErrorKind::from(*k))
            .collect(),
    }
}

fn validate_description(
    stem: &str,
    meta: wit::ProcessorMetadata,
) -> Result<Description, LoadError> {
    if meta.name != stem {
        return Err(LoadError::NameMismatch {
            stem: stem.to_string(),
            declared: meta.name,
        });
    }
    let bad = |reason: String| LoadError::Describe { reason };
    semver::Version::parse(&meta.version).map_err(|e| {
        bad(format!(
            "its version `{}` is not semver ({e}); use e.g. `1.2.0`",
            meta.version
        ))
    })?;
    let limits = LimitOverrides {
        timeout_ms: meta.limits.timeout_ms,
        memory_bytes: meta.limits.memory_bytes,
        fuel: meta.limits.fuel,
        output_bytes: meta.limits.output_bytes,
    };
    limits
        .validate()
        .map_err(|e| bad(format!("its limits are invalid: {e}")))?;
    let retry = meta.retry.as_ref().map(retry_from_wit);
    if let Some(policy) = &retry {
        policy
            .validate()
            .map_err(|e| bad(format!("its retry policy is invalid: {e}")))?;
    }
    if let Some(q) = &meta.queue {
        if q.concurrency == Some(0) {
            return Err(bad("its queue concurrency must be at least 1".into()));
        }
        if q.rate_limit.is_some_and(|r| r.max == 0 || r.per_ms == 0) {
            return Err(bad(
                "its rate limit needs `max` and `per-ms` above zero".into()
            ));
        }
    }
    let queue = meta.queue.map(|q| QueueSettings {
        concurrency: q.concurrency,
        priority: q.priority,
        rate_limit: q.rate_limit.map(|r| (r.max, r.per_ms)),
    });
    Ok(Description {
        version: meta.version,
        description: meta.description,
        limits,
        retry,
        queue,
    })
}

/// The operator manifest beside the plugin file `path` (the default if there is none):
/// refused if it is a symlink out of the plugins folder, over `max_bytes`, or if a file
/// grant covers the plugins folder or `engine`'s compile cache.
pub(crate) async fn load_manifest(
    engine: &Engine,
    path: &Path,
    max_bytes: u64,
) -> Result<Manifest, LoadError> {
    let folder = path.parent().unwrap_or(Path::new("."));
    let manifest_path = Manifest::path_for(path);
    if let Some(target) = leads_outside(folder, &manifest_path).await {
        return Err(LoadError::Manifest {
            path: manifest_path,
            reason: format!(
                "it is a symlink to {}, outside the plugins folder: weir does not follow links \
                 out of the folder (copy the file in instead)",
                target.display()
            ),
        });
    }
    let manifest = Manifest::load_for(path, max_bytes)
        .map_err(|(path, reason)| LoadError::Manifest { path, reason })?;
    let mut protected = vec![("the plugins folder", folder.to_path_buf())];
    if let Some(cache) = engine.cache() {
        protected.push(("the compile cache", cache.dir().to_path_buf()));
    }
    manifest
        .check_grants_clear_of(&protected)
        .map_err(|reason| LoadError::Manifest {
            path: manifest_path,
            reason,
        })?;
    Ok(manifest)
}

/// Where `path` leads if it is a symlink whose target lies outside `folder` (checked on
/// the canonical paths, so `..` and chains of links cannot slip out); `None` for a plain
/// file, a link that stays inside, or a file that does not exist.
async fn leads_outside(folder: &Path, path: &Path) -> Option<PathBuf> {
    let meta = tokio::fs::symlink_metadata(path).await.ok()?;
    if !meta.file_type().is_symlink() {
        return None;
    }
    let target = tokio::fs::canonicalize(path).await.ok();
    let inside = match (&target, tokio::fs::canonicalize(folder).await) {
        (Some(target), Ok(folder)) => target.starts_with(&folder),
        _ => false,
    };
    if inside {
        return None;
    }
    Some(target.unwrap_or_else(|| {
        std::fs::read_link(path).unwrap_or_else(|_| PathBuf::from("a path that does not exist"))
    }))
}

/// Reads the component file `path` of `folder`: refused, unread, when it is a symlink out
/// of the folder or larger than `max` bytes (and read no further than `max` + 1 bytes, in
/// case it grows meanwhile).
async fn read_component(folder: &Path, path: &Path, max: u64) -> Result<Vec<u8>, LoadError> {
    use tokio::io::AsyncReadExt;
    if let Some(target) = leads_outside(folder, path).await {
        return Err(LoadError::OutsideFolder {
            path: path.to_path_buf(),
            target,
        });
    }
    let read_error = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(read_error)?;
    let len = file.metadata().await.map_err(read_error)?.len();
    if len > max {
        return Err(LoadError::TooLarge {
            bytes: len,
            limit: max,
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(read_error)?;
    if bytes.len() as u64 > max {
        return Err(LoadError::TooLarge {
            bytes: bytes.len() as u64,
            limit: max,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processor_names_follow_the_file_naming_rule() {
        for good in ["hello", "add-ten", "a1", "x"] {
            assert!(is_valid_name(good), "{good}");
        }
        for bad in ["", "Hello", "add_ten", "1abc", "-x", "a b", &"a".repeat(65)] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_manifest_over_the_bound_is_refused_before_it_is_parsed() {
        let dir = std::env::temp_dir().join(format!("weir-manifest-bound-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let plugin = dir.join("big.wasm");
        // Valid TOML all the way: only its size is wrong.
        let line = "# an operator's very long comment\n";
        std::fs::write(dir.join("big.toml"), line.repeat((2 << 20) / line.len())).expect("writes");
        let engine =
            Engine::new(crate::sandbox::engine::EngineConfig::default()).expect("an engine");
        let refused = load_manifest(&engine, &plugin, 1 << 20).await;
        let _ = std::fs::remove_dir_all(&dir);
        match refused {
            Err(LoadError::Manifest { reason, .. }) => {
                assert!(
                    reason.contains("over 1.0 MiB") && reason.contains("max_manifest_bytes"),
                    "{reason}"
                );
            }
            other => panic!("expected the manifest refused for its size, got {other:?}"),
        }
    }
}
