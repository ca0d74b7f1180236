//! The operator manifest: an optional `<name>.toml` beside `<name>.wasm` that sets a plugin's
//! limits, retry policy, configuration values and capabilities. Capabilities come only from
//! here: a plugin cannot grant itself anything.
//!
//! ```toml
//! [limits]            # override the plugin's defaults (still clamped by the host ceilings)
//! timeout_ms = 5000
//! memory_bytes = 134217728
//! fuel = 1000000000
//! output_bytes = 1048576
//!
//! [retry]
//! max_attempts = 3
//! backoff = "exponential"   # or "fixed"
//! backoff_ms = 100
//! max_backoff_ms = 5000
//! jitter = true
//! retry_on = ["execution"]
//!
//! [queue]             # admission: attempts at once, priority (lower first), rate
//! concurrency = 2
//! priority = 10
//! rate_limit_per_minute = 60   # or rate_limit = { max = 5, per_ms = 1000 }
//!
//! [config]            # read by the plugin through the `config` import
//! greeting = "Hi"
//!
//! [warm]              # opt in to reused instances (trusted plugins only)
//! max_executions = 100 # executions one instance serves before it is discarded
//! max_idle = 2         # idle instances kept per tenant
//! idle_timeout_ms = 60000
//!
//! [capabilities]      # everything is denied unless granted here
//! env = { API_REGION = "eu" }
//! files = [{ host = "/srv/data", guest = "/data", writable = false }]
//! network = ["127.0.0.1:8080", "10.0.0.7:*"]
//!
//! [capabilities.http] # outbound `wasi:http` requests (see crate::contract::http_grant)
//! allow = ["https://api.example.com", { origin = "http://127.0.0.1:8080", methods = ["GET"] }]
//! timeout_ms = 10000
//! max_response_bytes = 1048576
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::contract::error::ErrorKind;
use crate::contract::http_grant::HttpGrant;
use crate::contract::limits::LimitOverrides;
use crate::contract::limits::RateLimit;
use crate::contract::retry::{Backoff, RetryPolicy};

/// A parsed, validated operator manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Where it was read from (none when the plugin has no manifest).
    pub path: Option<PathBuf>,
    /// Limit overrides.
    pub limits: LimitOverrides,
    /// Retry policy override.
    pub retry: Option<RetryPolicy>,
    /// Queue settings overrides (each field overrides the plugin's own).
    pub queue: QueueOverrides,
    /// Configuration values, by key.
    pub config: BTreeMap<String, String>,
    /// Granted capabilities.
    pub capabilities: Capabilities,
    /// Warm instances, if the operator opted this plugin in (fresh instances otherwise).
    pub warm: Option<WarmPolicy>,
}

/// How a plugin's instances are reused when the operator grants `[warm]`: an instance serves
/// executions of one tenant only, at most `max_executions` of them, and is discarded after
/// any trap, limit hit, timeout or cancellation. See `warm.rs` for what a reused
/// instance can and cannot carry from one execution to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all(serialize = "camelCase"))]
pub struct WarmPolicy {
    /// Executions one instance serves before it is discarded (1 to 1,000,000; default 100).
    #[serde(default = "WarmPolicy::default_max_executions")]
    pub max_executions: u32,
    /// Idle instances kept per tenant (1 to 64; default 2).
    #[serde(default = "WarmPolicy::default_max_idle")]
    pub max_idle: u32,
    /// Milliseconds an instance may sit idle before it is discarded (default 60,000).
    #[serde(default = "WarmPolicy::default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

impl Default for WarmPolicy {
    fn default() -> Self {
        WarmPolicy {
            max_executions: Self::default_max_executions(),
            max_idle: Self::default_max_idle(),
            idle_timeout_ms: Self::default_idle_timeout_ms(),
        }
    }
}

impl WarmPolicy {
    fn default_max_executions() -> u32 {
        100
    }

    fn default_max_idle() -> u32 {
        2
    }

    fn default_idle_timeout_ms() -> u64 {
        60_000
    }

    /// How long an idle instance is kept.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    fn validate(&self) -> Result<(), String> {
        if !(1..=1_000_000).contains(&self.max_executions) {
            return Err("[warm]: `max_executions` must be between 1 and 1000000".into());
        }
        if !(1..=64).contains(&self.max_idle) {
            return Err("[warm]: `max_idle` must be between 1 and 64".into());
        }
        if self.idle_timeout_ms == 0 {
            return Err("[warm]: `idle_timeout_ms` must be above zero".into());
        }
        Ok(())
    }
}

/// What a plugin may touch beyond its own memory: nothing unless granted.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Environment variables the guest sees.
    pub env: BTreeMap<String, String>,
    /// Host directories the guest may open.
    pub files: Vec<DirGrant>,
    /// Addresses the guest may open TCP/UDP sockets to.
    pub network: Vec<NetworkGrant>,
    /// Outbound HTTP requests through `wasi:http`; none means every request is denied.
    pub http: Option<Arc<HttpGrant>>,
}

/// A host directory made visible to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it.
    pub guest: String,
    /// Whether the guest may create, change and delete files in it.
    #[serde(default)]
    pub writable: bool,
}

/// An address the guest may connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NetworkGrant {
    /// The IP address.
    pub ip: IpAddr,
    /// The port, or none for any port.
    pub port: Option<u16>,
}

impl NetworkGrant {
    /// Whether this grant allows `addr`.
    pub fn allows(&self, addr: &SocketAddr) -> bool {
        self.ip == addr.ip() && self.port.is_none_or(|p| p == addr.port())
    }

    fn parse(text: &str) -> Result<Self, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("network grant `{text}` must be `IP:PORT` or `IP:*`"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = host.parse().map_err(|_| {
            format!(
                "network grant `{text}`: `{host}` is not an IP address (grants name addresses; \
                 host names are not resolved)"
            )
        })?;
        let port = match port {
            "*" => None,
            p => Some(
                p.parse()
                    .map_err(|_| format!("network grant `{text}`: `{p}` is not a port"))?,
            ),
        };
        Ok(NetworkGrant { ip, port })
    }
}

/// What an operator says about a plugin's queue; absent fields keep the plugin's own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueOverrides {
    /// Attempts running at once.
    pub concurrency: Option<u32>,
    /// Default priority (lower runs first).
    pub priority: Option<u32>,
    /// Throughput cap.
    pub rate_limit: Option<RateLimit>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    concurrency: Option<u32>,
    priority: Option<u32>,
    rate_limit_per_minute: Option<u32>,
    rate_limit: Option<RawRate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    max: u32,
    per_ms: u64,
}

impl RawQueue {
    fn into_overrides(self) -> Result<QueueOverrides, String> {
        if self.concurrency == Some(0) {
            return Err("[queue]: `concurrency` must be at least 1".into());
        }
        let rate_limit = match (self.rate_limit_per_minute, self.rate_limit) {
            (Some(_), Some(_)) => {
                return Err(
                    "[queue]: give `rate_limit_per_minute` or `rate_limit`, not both".into(),
                );
            }
            (Some(0), None) => {
                return Err("[queue]: `rate_limit_per_minute` must be at least 1".into());
            }
            (Some(n), None) => Some(RateLimit {
                max: n,
                per: Duration::from_secs(60),
            }),
            (None, Some(r)) if r.max == 0 || r.per_ms == 0 => {
                return Err("[queue]: `rate_limit` needs `max` and `per_ms` above zero".into());
            }
            (None, Some(r)) => Some(RateLimit {
                max: r.max,
                per: Duration::from_millis(r.per_ms),
            }),
            (None, None) => None,
        };
        Ok(QueueOverrides {
            concurrency: self.concurrency,
            priority: self.priority,
            rate_limit,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    limits: LimitOverrides,
    retry: Option<RawRetry>,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    #[serde(default)]
    capabilities: RawCapabilities,
    warm: Option<WarmPolicy>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: u32,
    #[serde(default)]
    backoff: RawBackoff,
    backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
    #[serde(default = "yes")]
    jitter: bool,
    #[serde(default)]
    retry_on: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum RawBackoff {
    Fixed,
    #[default]
    Exponential,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCapabilities {
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    files: Vec<DirGrant>,
    #[serde(default)]
    network: Vec<String>,
    http: Option<toml::Table>,
}

impl Manifest {
    /// The manifest path for a plugin file: `dir/name.wasm` → `dir/name.toml`.
    pub fn path_for(plugin: &Path) -> PathBuf {
        plugin.with_extension("toml")
    }

    /// Reads the manifest beside `plugin`, or the empty manifest if there is none; one over
    /// `max_bytes` is refused unparsed (at most one byte past the bound is read, so a file
    /// that grows while it is read is caught too).
    pub fn load_for(plugin: &Path, max_bytes: u64) -> Result<Manifest, (PathBuf, String)> {
        use crate::contract::bounds::{Unread, human_bytes, read_text_bounded};
        let path = Manifest::path_for(plugin);
        let text = match read_text_bounded(&path, max_bytes) {
            Ok(Some(text)) => text,
            Ok(None) => return Ok(Manifest::default()),
            Err(Unread::Io(err)) => return Err((path, format!("cannot read it: {err}"))),
            Err(Unread::TooLarge) => {
                return Err((
                    path,
                    format!(
                        "it is over {}, the most the host reads of a manifest (the host's \
                         max_manifest_bytes): a manifest holds limits, grants and config, not \
                         data",
                        human_bytes(max_bytes)
                    ),
                ));
            }
        };
        Manifest::parse(&text)
            .map(|m| Manifest {
                path: Some(path.clone()),
                ..m
            })
            .map_err(|reason| (path, reason))
    }

    /// Refuses a file grant that covers one of the `protected` folders (it is the folder or
    /// one of its parents) or lies inside one: a writable grant over the plugins folder would
    /// let a plugin rewrite its own manifest, one over the compile cache plant native code.
    /// Paths are compared canonical where they exist.
    pub(crate) fn check_grants_clear_of(
        &self,
        protected: &[(&str, PathBuf)],
    ) -> Result<(), String> {
        let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        for grant in &self.capabilities.files {
            let host = canonical(&grant.host);
            for (what, folder) in protected {
                let folder = canonical(folder);
                if folder.starts_with(&host) || host.starts_with(&folder) {
                    return Err(format!(
                        "[capabilities] files: host path `{}` covers or lies in {what} ({}); \
                         a plugin may not reach it: grant a folder outside it",
                        grant.host.display(),
                        folder.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Parses and validates manifest text. The error says what to fix and where.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        raw.limits
            .validate()
            .map_err(|e| format!("[limits]: {e}"))?;
        let retry = raw.retry.map(RawRetry::into_policy).transpose()?;
        let queue = raw.queue.into_overrides()?;
        if let Some(warm) = &raw.warm {
            warm.validate()?;
        }
        let mut config = BTreeMap::new();
        for (key, value) in raw.config {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Datetime(d) => d.to_string(),
                toml::Value::Array(_) | toml::Value::Table(_) => {
                    return Err(format!(
                        "[config]: `{key}` must be a string, number or boolean (plugins read \
                         settings as text)"
                    ));
                }
            };
            config.insert(key, text);
        }
        for grant in &raw.capabilities.files {
            if !grant.host.is_absolute() {
                return Err(format!(
                    "[capabilities] files: host path `{}` must be absolute",
                    grant.host.display()
                ));
            }
        }
        let network = raw
            .capabilities
            .network
            .iter()
            .map(|g| NetworkGrant::parse(g))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("[capabilities] {e}"))?;
        let http = raw
            .capabilities
            .http
            .as_ref()
            .map(HttpGrant::from_toml)
            .transpose()
            .map_err(|e| format!("[capabilities.http]: {e}"))?
            .map(Arc::new);
        Ok(Manifest {
            path: None,
            limits: raw.limits,
            retry,
            queue,
            config,
            capabilities: Capabilities {
                env: raw.capabilities.env,
                files: raw.capabilities.files,
                network,
                http,
            },
            warm: raw.warm,
        })
    }
}

impl RawRetry {
    fn into_policy(self) -> Result<RetryPolicy, String> {
        let initial_ms = self.backoff_ms.unwrap_or(100);
        let backoff = match self.backoff {
            RawBackoff::Fixed => Backoff::Fixed {
                delay_ms: initial_ms,
            },
            RawBackoff::Exponential => Backoff::Exponential {
                initial_ms,
                max_ms: self.max_backoff_ms.unwrap_or(30_000),
            },
        };
        let retry_on = self
            .retry_on
            .iter()
            .map(|name| {
                ErrorKind::parse(name).ok_or_else(|| {
                    let all: Vec<_> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
                    format!(
                        "[retry] retry_on: unknown kind `{name}`; expected one of {}",
                        all.join(", ")
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let policy = RetryPolicy {
            max_attempts: self.max_attempts,
            backoff,
            jitter: self.jitter,
            retry_on,
        };
        policy.validate().map_err(|e| format!("[retry]: {e}"))?;
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_manifest_parses() {
        let m = Manifest::parse(
            r#"
            [limits]
            timeout_ms = 5000
            fuel = 1000

            [retry]
            max_attempts = 3
            backoff = "fixed"
            backoff_ms = 10
            retry_on = ["execution"]

            [config]
            greeting = "Hi"
            times = 3

            [capabilities]
            env = { REGION = "eu" }
            files = [{ host = "/srv/data", guest = "/data" }]
            network = ["127.0.0.1:8080", "[::1]:*"]
            "#,
        )
        .unwrap();
        assert_eq!(m.limits.timeout_ms, Some(5000));
        assert_eq!(m.limits.fuel, Some(1000));
        let retry = m.retry.unwrap();
        assert_eq!(retry.max_attempts, 3);
        assert_eq!(retry.backoff, Backoff::Fixed { delay_ms: 10 });
        assert_eq!(retry.retry_on, vec![ErrorKind::Execution]);
        assert_eq!(m.config["times"], "3");
        assert_eq!(m.capabilities.env["REGION"], "eu");
        assert!(!m.capabilities.files[0].writable);
        assert!(m.capabilities.network[0].allows(&"127.0.0.1:8080".parse().unwrap()));
        assert!(!m.capabilities.network[0].allows(&"127.0.0.1:8081".parse().unwrap()));
        assert!(m.capabilities.network[1].allows(&"[::1]:9".parse().unwrap()));
    }

    #[test]
    fn queue_settings_parse_and_are_checked() {
        let m =
            Manifest::parse("[queue]\nconcurrency = 2\npriority = 7\nrate_limit_per_minute = 60\n")
                .unwrap();
        assert_eq!(m.queue.concurrency, Some(2));
        assert_eq!(m.queue.priority, Some(7));
        assert_eq!(
            m.queue.rate_limit,
            Some(RateLimit {
                max: 60,
                per: Duration::from_secs(60)
            })
        );
        let both = "[queue]\nrate_limit_per_minute = 1\nrate_limit = { max = 1, per_ms = 5 }\n";
        assert!(Manifest::parse(both).unwrap_err().contains("not both"));
        assert!(Manifest::parse("[queue]\nconcurrency = 0\n").is_err());
    }

    #[test]
    fn warm_instances_are_off_unless_granted_and_checked() {
        assert_eq!(Manifest::parse("").unwrap().warm, None);
        assert_eq!(
            Manifest::parse("[warm]\n").unwrap().warm,
            Some(WarmPolicy::default())
        );
        let m = Manifest::parse("[warm]\nmax_executions = 5\nmax_idle = 3\n").unwrap();
        let warm = m.warm.unwrap();
        assert_eq!((warm.max_executions, warm.max_idle), (5, 3));
        assert_eq!(warm.idle_timeout(), Duration::from_secs(60));
        for bad in [
            "max_executions = 0",
            "max_idle = 0",
            "max_idle = 65",
            "idle_timeout_ms = 0",
        ] {
            let err = Manifest::parse(&format!("[warm]\n{bad}\n")).unwrap_err();
            assert!(err.contains("[warm]"), "{bad}: {err}");
        }
        let err = Manifest::parse("[warm]\nmax_uses = 5\n").unwrap_err();
        assert!(err.contains("max_uses"), "{err}");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line() {
        let err = Manifest::parse("[limits]\ntimeout_ms = 5\ntimeout = 3\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("timeout"), "{err}");
    }

    #[test]
    fn zero_limits_and_bad_grants_are_rejected() {
        assert!(
            Manifest::parse("[limits]\nfuel = 0\n")
                .unwrap_err()
                .contains("fuel")
        );
        assert!(
            Manifest::parse("[capabilities]\nnetwork = [\"example.com:80\"]\n")
                .unwrap_err()
                .contains("not an IP address")
        );
        assert!(
            Manifest::parse("[capabilities]\nfiles = [{ host = \"rel\", guest = \"/d\" }]\n")
                .unwrap_err()
                .contains("absolute")
        );
        assert!(
            Manifest::parse("[retry]\nmax_attempts = 2\nretry_on = [\"nope\"]\n")
                .unwrap_err()
                .contains("unknown kind")
        );
    }
}
