//! Who may call the HTTP API and what each caller may do: the operator and the tenants
//! defined in `weir.toml`, their API tokens (stored as SHA-256 digests, never in clear),
//! the processors and workflows each tenant may run (names or `*` globs), and each tenant's
//! quotas.
//!
//! ```toml
//! [server]
//! operator_token_sha256 = ["<hex digest of the operator's token>"]
//!
//! [host]                                # the runtime's bounds (docs/bounds.md)
//! max_batch_items = 1000
//!
//! [tenants.acme]
//! token_sha256 = ["<hex digest>"]       # `weir token` makes a token and its digest
//! processors = ["hello", "billing-*"]   # default: everything
//! concurrent = 4                        # executions at once
//! executions_per_minute = 600
//! fuel_per_minute = 50000000000
//! memory_bytes = 67108864               # ceilings on every execution of the tenant
//! timeout_ms = 5000
//! ```
//!
//! Environment overrides, for secrets kept out of files: `WEIR_OPERATOR_TOKEN` adds an
//! operator token, and `WEIR_TENANT_<NAME>_TOKEN` (the tenant's name in upper case, `-` as
//! `_`) adds a token to a tenant the file defines. Both take the token itself, hashed on
//! load.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use super::quota::{Quotas, TenantQuota};

/// The callers of the API: the operator's tokens and the tenants.
#[derive(Debug, Clone, Default)]
pub struct Access {
    operator: Vec<[u8; 32]>,
    tenants: BTreeMap<String, Arc<Tenant>>,
}

/// One tenant: its tokens, what it may run, its quotas.
#[derive(Debug)]
pub struct Tenant {
    name: String,
    tokens: Vec<[u8; 32]>,
    processors: Vec<String>,
    pub(crate) quota: TenantQuota,
    /// The most urgent priority its work may ask for (lower numbers run first); `None`:
    /// it may not ask for one.
    min_priority: Option<u32>,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// Fleet-wide views: metrics, every tenant's sessions and events, rejected plugins.
    Operator,
    /// One tenant: its own work only.
    Tenant(Arc<Tenant>),
    /// No tenants are configured: one implicit tenant, `default`, with every right.
    Open,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    host: HostSettings,
    #[serde(default)]
    redis: RedisSettings,
    #[serde(default)]
    tenants: BTreeMap<String, RawTenant>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(default)]
    operator_token_sha256: Vec<String>,
    max_body_bytes: Option<usize>,
    event_stream_bytes: Option<usize>,
    event_stream_events: Option<usize>,
    max_event_streams: Option<usize>,
    max_event_streams_per_tenant: Option<usize>,
    max_connections: Option<usize>,
    header_read_timeout_ms: Option<u64>,
    body_read_timeout_ms: Option<u64>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    jobs_bytes_per_tenant: Option<usize>,
    jobs_kept_per_tenant: Option<usize>,
    job_step_bytes: Option<usize>,
    max_sessions_per_tenant: Option<usize>,
    session_idle_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    #[serde(default)]
    token_sha256: Vec<String>,
    #[serde(default = "everything")]
    processors: Vec<String>,
    concurrent: Option<u32>,
    executions_per_minute: Option<u32>,
    fuel_per_minute: Option<u64>,
    bytes_per_minute: Option<u64>,
    memory_bytes: Option<u64>,
    timeout_ms: Option<u64>,
    min_priority: Option<u32>,
}

fn everything() -> Vec<String> {
    vec!["*".to_string()]
}

/// Refuses a setting of `[table]` set to zero, naming it.
fn none_zero(table: &str, values: &[(&str, Option<u64>)]) -> Result<(), String> {
    match values.iter().find(|(_, value)| *value == Some(0)) {
        Some((name, _)) => Err(format!(
            "[{table}] {name} must be above zero (leave it out for the default)"
        )),
        None => Ok(()),
    }
}

/// The `[host]` table of `weir.toml`: the runtime's own bounds, each named as the
/// [`weir::HostConfig`] field it sets; `None` keeps the default. `weir serve` and `weir
/// worker` apply it to the runtime they build (give every process of a fleet the same
/// file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSettings {
    /// [`weir::HostConfig::max_call_depth`] (0: no nested calls).
    pub max_call_depth: Option<u32>,
    /// [`weir::HostConfig::max_nesting`].
    pub max_nesting: Option<usize>,
    /// [`weir::HostConfig::max_batch_items`].
    pub max_batch_items: Option<usize>,
    /// [`weir::HostConfig::max_component_bytes`].
    pub max_component_bytes: Option<u64>,
    /// [`weir::HostConfig::max_workflows_file_bytes`].
    pub max_workflows_file_bytes: Option<u64>,
    /// [`weir::HostConfig::max_manifest_bytes`].
    pub max_manifest_bytes: Option<u64>,
    /// [`weir::HostConfig::event_capacity`].
    pub event_capacity: Option<usize>,
    /// [`weir::HostConfig::event_buffer_bytes`].
    pub event_buffer_bytes: Option<usize>,
    /// [`weir::ScheduleBounds::max_per_tenant`].
    pub max_schedules_per_tenant: Option<usize>,
    /// [`weir::ScheduleBounds::max_total`].
    pub max_schedules: Option<usize>,
    /// [`weir::ScheduleBounds::min_interval`], in milliseconds.
    pub min_schedule_interval_ms: Option<u64>,
    /// [`weir::ScheduleBounds::max_input_bytes`].
    pub max_schedule_input_bytes: Option<usize>,
}

impl HostSettings {
    fn validate(&self) -> Result<(), String> {
        let counts = [
            ("max_nesting", self.max_nesting.map(|n| n as u64)),
            ("max_batch_items", self.max_batch_items.map(|n| n as u64)),
            ("max_component_bytes", self.max_component_bytes),
            ("max_workflows_file_bytes", self.max_workflows_file_bytes),
            ("max_manifest_bytes", self.max_manifest_bytes),
            ("event_capacity", self.event_capacity.map(|n| n as u64)),
            (
                "event_buffer_bytes",
                self.event_buffer_bytes.map(|n| n as u64),
            ),
            (
                "max_schedules_per_tenant",
                self.max_schedules_per_tenant.map(|n| n as u64),
            ),
            ("max_schedules", self.max_schedules.map(|n| n as u64)),
            ("min_schedule_interval_ms", self.min_schedule_interval_ms),
            (
                "max_schedule_input_bytes",
                self.max_schedule_input_bytes.map(|n| n as u64),
            ),
        ];
        none_zero("host", &counts)
    }

    /// `host` with every bound this table sets.
    pub fn apply(&self, host: &mut weir::HostConfig) {
        fn set<T: Copy>(field: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *field = value;
            }
        }
        set(&mut host.max_call_depth, self.max_call_depth);
        set(&mut host.max_nesting, self.max_nesting);
        set(&mut host.max_batch_items, self.max_batch_items);
        set(&mut host.max_component_bytes, self.max_component_bytes);
        set(
            &mut host.max_workflows_file_bytes,
            self.max_workflows_file_bytes,
        );
        set(&mut host.max_manifest_bytes, self.max_manifest_bytes);
        set(&mut host.event_capacity, self.event_capacity);
        set(&mut host.event_buffer_bytes, self.event_buffer_bytes);
        set(
            &mut host.schedules.max_per_tenant,
            self.max_schedules_per_tenant,
        );
        set(&mut host.schedules.max_total, self.max_schedules);
        set(
            &mut host.schedules.min_interval,
            self.min_schedule_interval_ms
                .map(std::time::Duration::from_millis),
        );
        set(
            &mut host.schedules.max_input_bytes,
            self.max_schedule_input_bytes,
        );
    }
}

/// The `[redis]` table of `weir.toml`: how long the distributed runtime keeps what it
/// writes to Redis, and how much of it, each named as the [`weir::RedisConfig`] field it
/// sets (durations in milliseconds, `_ms`; job retention as `completed_jobs_kept` and
/// `completed_jobs_kept_ms` for [`weir::RedisConfig::keep_completed`], and the same for
/// failed jobs); `None` keeps the default. `weir serve --redis` and `weir worker` apply it
/// (give every process of a fleet the same file: each bound applies where it is written).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// [`weir::RedisConfig::response_timeout`], in milliseconds.
    pub response_timeout_ms: Option<u64>,
    /// The count of [`weir::RedisConfig::keep_completed`].
    pub completed_jobs_kept: Option<usize>,
    /// The age of [`weir::RedisConfig::keep_completed`], in milliseconds.
    pub completed_jobs_kept_ms: Option<u64>,
    /// The count of [`weir::RedisConfig::keep_failed`] (the dead-letter set).
    pub failed_jobs_kept: Option<usize>,
    /// The age of [`weir::RedisConfig::keep_failed`], in milliseconds.
    pub failed_jobs_kept_ms: Option<u64>,
    /// [`weir::RedisConfig::run_retention`], in milliseconds.
    pub run_retention_ms: Option<u64>,
    /// [`weir::RedisConfig::events_kept`].
    pub events_kept: Option<usize>,
    /// [`weir::RedisConfig::stream_entry_bytes`].
    pub stream_entry_bytes: Option<usize>,
    /// [`weir::RedisConfig::share_buffer_bytes`].
    pub share_buffer_bytes: Option<usize>,
    /// [`weir::RedisConfig::run_deadline`], in milliseconds.
    pub run_deadline_ms: Option<u64>,
    /// [`weir::RedisConfig::lost_grace`], in milliseconds.
    pub lost_grace_ms: Option<u64>,
    /// [`weir::RedisConfig::activity_interval`], in milliseconds.
    pub activity_interval_ms: Option<u64>,
    /// [`weir::RedisConfig::activity_retention`], in milliseconds.
    pub activity_retention_ms: Option<u64>,
    /// [`weir::RedisConfig::activity_tenants`].
    pub activity_tenants: Option<usize>,
    /// [`weir::RedisConfig::activity_names`].
    pub activity_names: Option<usize>,
    /// [`weir::RedisConfig::run_index_per_tenant`].
    pub run_index_per_tenant: Option<usize>,
    /// [`weir::RedisConfig::run_index_total`].
    pub run_index_total: Option<usize>,
}

impl RedisSettings {
    fn validate(&self) -> Result<(), String> {
        let values = [
            ("response_timeout_ms", self.response_timeout_ms),
            ("completed_jobs_kept_ms", self.completed_jobs_kept_ms),
            ("failed_jobs_kept_ms", self.failed_jobs_kept_ms),
            ("run_retention_ms", self.run_retention_ms),
            ("events_kept", self.events_kept.map(|n| n as u64)),
            (
                "stream_entry_bytes",
                self.stream_entry_bytes.map(|n| n as u64),
            ),
            (
                "share_buffer_bytes",
                self.share_buffer_bytes.map(|n| n as u64),
            ),
            ("run_deadline_ms", self.run_deadline_ms),
            ("activity_interval_ms", self.activity_interval_ms),
            ("activity_retention_ms", self.activity_retention_ms),
            ("activity_tenants", self.activity_tenants.map(|n| n as u64)),
            ("activity_names", self.activity_names.map(|n| n as u64)),
            (
                "run_index_per_tenant",
                self.run_index_per_tenant.map(|n| n as u64),
            ),
            ("run_index_total", self.run_index_total.map(|n| n as u64)),
        ];
        none_zero("redis", &values)?;
        // Redis takes expiries in milliseconds up to about 292 million years; a year is
        // more than any of these needs.
        const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;
        let durations = [
            ("response_timeout_ms", self.response_timeout_ms),
            ("completed_jobs_kept_ms", self.completed_jobs_kept_ms),
            ("failed_jobs_kept_ms", self.failed_jobs_kept_ms),
            ("run_retention_ms", self.run_retention_ms),
            ("run_deadline_ms", self.run_deadline_ms),
            ("lost_grace_ms", self.lost_grace_ms),
            ("activity_interval_ms", self.activity_interval_ms),
            ("activity_retention_ms", self.activity_retention_ms),
        ];
        match durations
            .iter()
            .find(|(_, ms)| ms.is_some_and(|ms| ms > YEAR_MS))
        {
            Some((name, _)) => Err(format!(
                "[redis] {name} is over a year ({YEAR_MS} ms): set at most that"
            )),
            None => Ok(()),
        }
    }

    /// `config` with every setting this table sets.
    pub fn apply(&self, config: &mut weir::RedisConfig) {
        use std::time::Duration;
        fn set<T: Copy>(field: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *field = value;
            }
        }
        let ms = |value: Option<u64>| value.map(Duration::from_millis);
        set(&mut config.response_timeout, ms(self.response_timeout_ms));
        set(&mut config.keep_completed.count, self.completed_jobs_kept);
        set(
            &mut config.keep_completed.age,
            ms(self.completed_jobs_kept_ms),
        );
        set(&mut config.keep_failed.count, self.failed_jobs_kept);
        set(&mut config.keep_failed.age, ms(self.failed_jobs_kept_ms));
        set(&mut config.run_retention, ms(self.run_retention_ms));
        set(&mut config.events_kept, self.events_kept);
        set(&mut config.stream_entry_bytes, self.stream_entry_bytes);
        set(&mut config.share_buffer_bytes, self.share_buffer_bytes);
        set(&mut config.run_deadline, ms(self.run_deadline_ms));
        set(&mut config.lost_grace, ms(self.lost_grace_ms));
        set(&mut config.activity_interval, ms(self.activity_interval_ms));
        set(
            &mut config.activity_retention,
            ms(self.activity_retention_ms),
        );
        set(&mut config.activity_tenants, self.activity_tenants);
        set(&mut config.activity_names, self.activity_names);
        set(&mut config.run_index_per_tenant, self.run_index_per_tenant);
        set(&mut config.run_index_total, self.run_index_total);
    }
}

/// What `weir.toml` says about serving.
#[derive(Debug, Clone, Default)]
pub struct ServerFile {
    /// The callers.
    pub access: Access,
    /// `[server] max_body_bytes`, if set.
    pub max_body_bytes: Option<usize>,
    /// The other `[server]` settings, where set.
    pub settings: ServerSettings,
    /// The `[host]` table: the runtime's bounds, where set.
    pub host: HostSettings,
    /// The `[redis]` table: the distributed runtime's retention and bounds, where set.
    pub redis: RedisSettings,
}

impl ServerFile {
    /// The host policies this file sets (its `[host]` table and the session settings of
    /// `[server]`) over the defaults: what `weir serve` and `weir worker` build on.
    pub fn host_config(&self) -> weir::HostConfig {
        let mut host = weir::HostConfig::default();
        self.settings.apply_host(&mut host);
        self.host.apply(&mut host);
        host
    }
}

/// The `[server]` settings of `weir.toml` beyond tokens and the body limit, each named as
/// the [`super::ServerConfig`] field it sets (durations in milliseconds, `_ms`); `None`
/// keeps the default.
#[derive(Debug, Clone, Default)]
pub struct ServerSettings {
    /// [`super::ServerConfig::event_stream_bytes`].
    pub event_stream_bytes: Option<usize>,
    /// [`super::ServerConfig::event_stream_events`].
    pub event_stream_events: Option<usize>,
    /// [`super::ServerConfig::max_event_streams`].
    pub max_event_streams: Option<usize>,
    /// [`super::ServerConfig::max_event_streams_per_tenant`].
    pub max_event_streams_per_tenant: Option<usize>,
    /// [`super::ServerConfig::max_connections`].
    pub max_connections: Option<usize>,
    /// [`super::ServerConfig::header_read_timeout`], in milliseconds.
    pub header_read_timeout_ms: Option<u64>,
    /// [`super::ServerConfig::body_read_timeout`], in milliseconds.
    pub body_read_timeout_ms: Option<u64>,
    /// Added to [`super::ServerConfig::allowed_hosts`].
    pub allowed_hosts: Vec<String>,
    /// [`super::ServerConfig::jobs_bytes_per_tenant`].
    pub jobs_bytes_per_tenant: Option<usize>,
    /// [`super::ServerConfig::jobs_kept_per_tenant`].
    pub jobs_kept_per_tenant: Option<usize>,
    /// [`super::ServerConfig::job_step_bytes`].
    pub job_step_bytes: Option<usize>,
    /// The runtime's [`weir::SessionBounds::max_per_tenant`] (see [`Self::apply_host`]).
    pub max_sessions_per_tenant: Option<usize>,
    /// The runtime's [`weir::SessionBounds::idle_expiry`], in milliseconds.
    pub session_idle_ms: Option<u64>,
}

impl ServerSettings {
    /// `config` with the settings that are set.
    pub fn apply(&self, config: &mut super::ServerConfig) {
        let set = |field: &mut usize, value: Option<usize>| {
            if let Some(value) = value {
                *field = value;
            }
        };
        set(&mut config.event_stream_bytes, self.event_stream_bytes);
        set(&mut config.event_stream_events, self.event_stream_events);
        set(&mut config.max_event_streams, self.max_event_streams);
        set(
            &mut config.max_event_streams_per_tenant,
            self.max_event_streams_per_tenant,
        );
        set(&mut config.max_connections, self.max_connections);
        if let Some(ms) = self.header_read_timeout_ms {
            config.header_read_timeout = std::time::Duration::from_millis(ms);
        }
        if let Some(ms) = self.body_read_timeout_ms {
            config.body_read_timeout = std::time::Duration::from_millis(ms);
        }
        config
            .allowed_hosts
            .extend(self.allowed_hosts.iter().cloned());
        set(
            &mut config.jobs_bytes_per_tenant,
            self.jobs_bytes_per_tenant,
        );
        set(&mut config.jobs_kept_per_tenant, self.jobs_kept_per_tenant);
        set(&mut config.job_step_bytes, self.job_step_bytes);
    }

    /// `host` with the settings that belong to the runtime (sessions), where set: applied
    /// before the runtime is built.
    pub fn apply_host(&self, host: &mut weir::HostConfig) {
        if let Some(max) = self.max_sessions_per_tenant {
            host.sessions.max_per_tenant = max;
        }
        if let Some(ms) = self.session_idle_ms {
            host.sessions.idle_expiry = std::time::Duration::from_millis(ms);
        }
    }
}

impl ServerFile {
    /// Reads `path` and applies the environment overrides. The error says what to fix and
    /// where.
    pub fn load(path: &Path) -> Result<ServerFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        ServerFile::parse(&text, &env).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the file's text with `env` as the environment.
    pub fn parse(text: &str, env: &[(String, String)]) -> Result<ServerFile, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        raw.host.validate()?;
        raw.redis.validate()?;
        let mut operator = raw
            .server
            .operator_token_sha256
            .iter()
            .map(|h| parse_digest(h).map_err(|e| format!("[server] operator_token_sha256: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tenants = BTreeMap::new();
        for (name, tenant) in raw.tenants {
            if name == OPEN_TENANT {
                return Err(format!(
                    "[tenants.{name}]: `{OPEN_TENANT}` is reserved (the open API's tenant, and \
                     the one plugin and workflow events are published under); pick another name"
                ));
            }
            if !weir::is_valid_name(&name) {
                return Err(format!(
                    "[tenants.{name}]: a tenant's name must be lowercase letters, digits and \
                     `-`, starting with a letter"
                ));
            }
            let mut tokens = tenant
                .token_sha256
                .iter()
                .map(|h| parse_digest(h).map_err(|e| format!("[tenants.{name}] token_sha256: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let variable = format!(
                "WEIR_TENANT_{}_TOKEN",
                name.to_uppercase().replace('-', "_")
            );
            tokens.extend(lookup(env, &variable).map(digest));
            if tenant.processors.iter().any(|p| p.is_empty()) {
                return Err(format!(
                    "[tenants.{name}] processors: a name cannot be empty"
                ));
            }
            let quotas = Quotas {
                concurrent: tenant.concurrent,
                executions_per_minute: tenant.executions_per_minute,
                fuel_per_minute: tenant.fuel_per_minute,
                bytes_per_minute: tenant.bytes_per_minute,
                memory_bytes: tenant.memory_bytes,
                timeout_ms: tenant.timeout_ms,
            };
            quotas
                .validate()
                .map_err(|e| format!("[tenants.{name}]: {e}"))?;
            let quota = TenantQuota::new(quotas);
            tenants.insert(
                name.clone(),
                Arc::new(Tenant {
                    name,
                    tokens,
                    processors: tenant.processors,
                    quota,
                    min_priority: tenant.min_priority,
                }),
            );
        }
        operator.extend(lookup(env, "WEIR_OPERATOR_TOKEN").map(digest));
        if !tenants.is_empty() && operator.is_empty() {
            tracing::warn!(
                "tenants are configured but no operator token: fleet-wide views (/metrics, \
                 other tenants' work) are closed to everyone"
            );
        }
        for tenant in tenants.values() {
            if tenant.tokens.is_empty() {
                tracing::warn!(tenant = %tenant.name, "the tenant has no token: nobody can act for it");
            }
        }
        Ok(ServerFile {
            access: Access { operator, tenants },
            max_body_bytes: raw.server.max_body_bytes,
            settings: ServerSettings {
                event_stream_bytes: raw.server.event_stream_bytes,
                event_stream_events: raw.server.event_stream_events,
                max_event_streams: raw.server.max_event_streams,
                max_event_streams_per_tenant: raw.server.max_event_streams_per_tenant,
                max_connections: raw.server.max_connections,
                header_read_timeout_ms: raw.server.header_read_timeout_ms,
                body_read_timeout_ms: raw.server.body_read_timeout_ms,
                allowed_hosts: raw.server.allowed_hosts,
                jobs_bytes_per_tenant: raw.server.jobs_bytes_per_tenant,
                jobs_kept_per_tenant: raw.server.jobs_kept_per_tenant,
                job_step_bytes: raw.server.job_step_bytes,
                max_sessions_per_tenant: raw.server.max_sessions_per_tenant,
                session_idle_ms: raw.server.session_idle_ms,
            },
            host: raw.host,
            redis: raw.redis,
        })
    }
}

fn lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .find(|(key, value)| key == name && !value.is_empty())
        .map(|(_, value)| value.as_str())
}

fn parse_digest(hex_text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(hex_text.trim()).map_err(|_| {
        format!("`{hex_text}` is not a hex SHA-256 digest (make one with `weir token`)")
    })?;
    bytes
        .try_into()
        .map_err(|_| format!("`{hex_text}` is not 32 bytes (a SHA-256 digest is 64 hex digits)"))
}

/// The SHA-256 of a token.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Equal in constant time (for equal lengths), so a comparison leaks no prefix.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    /// Whether any tenant is configured (otherwise the API is open).
    pub fn is_configured(&self) -> bool {
        !self.tenants.is_empty() || !self.operator.is_empty()
    }

    /// The tenant named `name`, if configured.
    pub fn tenant(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(name)
    }

    /// The caller a bearer token belongs to, if any.
    pub(crate) fn identify(&self, token: &str) -> Option<Caller> {
        let presented = digest(token);
        // Check every candidate, so that timing does not tell which kind matched.
        let operator = self
            .operator
            .iter()
            .fold(false, |m, d| m | same(d, &presented));
        let mut found = None;
        for tenant in self.tenants.values() {
            if tenant
                .tokens
                .iter()
                .fold(false, |m, d| m | same(d, &presented))
            {
                found = Some(tenant.clone());
            }
        }
        match (operator, found) {
            (true, _) => Some(Caller::Operator),
            (false, Some(tenant)) => Some(Caller::Tenant(tenant)),
            (false, None) => None,
        }
    }
}

impl Tenant {
    /// The tenant's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the tenant may run (and see) `name`.
    pub fn may_run(&self, name: &str) -> bool {
        self.processors
            .iter()
            .any(|pattern| glob_matches(pattern, name))
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole name must be the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// The tenant `Caller::Open` acts as.
pub(crate) const OPEN_TENANT: &str = "default";

impl Caller {
    /// The tenant this caller acts for, and its quotas (none when the API is open). The
    /// operator acts for no tenant: its token is for fleet-wide views.
    pub(crate) fn tenant(&self) -> Result<(&str, Option<&Arc<Tenant>>), ApiError> {
        match self {
            Caller::Tenant(tenant) => Ok((tenant.name(), Some(tenant))),
            Caller::Open => Ok((OPEN_TENANT, None)),
            Caller::Operator => Err(ApiError::forbidden(
                "the operator token is for fleet-wide views; run work with a tenant's token",
            )),
        }
    }

    /// The tenant whose data a request names: a tenant's own; the operator names one with
    /// `?tenant=` (required); the open API's `default` unless `?tenant=` says otherwise.
    pub(crate) fn data_tenant<'a>(&'a self, asked: Option<&'a str>) -> Result<&'a str, ApiError> {
        match (self, asked) {
            (Caller::Tenant(tenant), asked) => {
                self.may_ask_for(asked)?;
                Ok(tenant.name())
            }
            (Caller::Operator | Caller::Open, Some(asked)) => Ok(asked),
            (Caller::Open, None) => Ok(OPEN_TENANT),
            (Caller::Operator, None) => Err(ApiError::bad_request(
                "invalid-query",
                "the operator must name the tenant: add `?tenant=NAME`",
            )),
        }
    }

    /// Whose rows a listing shows: a tenant's own; the operator's (or the open API's)
    /// `?tenant=`, or every tenant's (`None`). Refuses a tenant naming another.
    pub(crate) fn listed_tenant<'a>(
        &'a self,
        asked: Option<&'a str>,
    ) -> Result<Option<&'a str>, ApiError> {
        self.may_ask_for(asked)?;
        if self.is_fleet() {
            Ok(asked)
        } else {
            Ok(Some(self.tenant()?.0))
        }
    }

    /// Refuses a `?tenant=` naming a tenant whose data this caller may not see.
    pub(crate) fn may_ask_for(&self, asked: Option<&str>) -> Result<(), ApiError> {
        match asked {
            Some(asked) if !self.sees_tenant(asked) => Err(ApiError::forbidden(
                "a tenant's token reaches its own tenant only",
            )),
            _ => Ok(()),
        }
    }

    /// Fleet-wide views need the operator (or an open API).
    pub(crate) fn require_operator(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Caller::Operator | Caller::Open => Ok(()),
            Caller::Tenant(_) => Err(ApiError::forbidden(format!(
                "{what} is for the operator's token"
            ))),
        }
    }

    /// Whether this caller may see and run the processor or workflow `name`.
    pub(crate) fn may_run(&self, name: &str) -> bool {
        match self {
            Caller::Tenant(tenant) => tenant.may_run(name),
            Caller::Operator | Caller::Open => true,
        }
    }

    /// Whether this caller may see the work and data of `tenant`.
    pub(crate) fn sees_tenant(&self, tenant: &str) -> bool {
        match self {
            Caller::Tenant(own) => own.name() == tenant,
            Caller::Operator | Caller::Open => true,
        }
    }

    /// The priority a request may run at, given the one it asked for: lower numbers run
    /// first, ahead of other tenants' work, so a tenant asks for one only as far as its
    /// `min_priority` grant goes. The operator's token runs no work; the open API may ask
    /// for any.
    pub(crate) fn priority(&self, asked: Option<u32>) -> Result<Option<u32>, ApiError> {
        let (Caller::Tenant(tenant), Some(asked)) = (self, asked) else {
            return Ok(asked);
        };
        match tenant.min_priority {
            Some(min) if asked >= min => Ok(Some(asked)),
            Some(min) => Err(ApiError::forbidden_because(
                "priority-not-allowed",
                format!(
                    "tenant `{}` may ask for priority {min} or a larger number (less urgent), \
                     not {asked}: its `min_priority` in weir.toml is {min}",
                    tenant.name
                ),
            )),
            None => Err(ApiError::forbidden_because(
                "priority-not-allowed",
                format!(
                    "tenant `{}` may not choose its work's priority: the operator grants it \
                     with `min_priority` in its `[tenants.{}]` table of weir.toml",
                    tenant.name, tenant.name
                ),
            )),
        }
    }

    /// Whether this caller sees fleet-wide facts (rejected files, every tenant).
    pub(crate) fn is_fleet(&self) -> bool {
        matches!(self, Caller::Operator | Caller::Open)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if !state.access.is_configured() {
            return Ok(Caller::Open);
        }
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "this API needs a token: send `Authorization: Bearer TOKEN`",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header must be `Bearer TOKEN`")
            })?;
        state
            .access
            .identify(token)
            .ok_or_else(|| ApiError::unauthorized("the token is not valid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex_digest(token: &str) -> String {
        hex::encode(digest(token))
    }

    #[test]
    fn globs_match_names() {
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("hello", "hello"));
        assert!(!glob_matches("hello", "hello-2"));
        assert!(glob_matches("billing-*", "billing-eu"));
        assert!(!glob_matches("billing-*", "bill"));
        assert!(glob_matches("*-eu", "billing-eu"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "axxcyyb"));
        assert!(
            !glob_matches("ab*ba", "aba"),
            "the prefix and suffix cannot overlap"
        );
    }

    #[test]
    fn a_tenant_asks_for_a_priority_only_within_its_grant() {
        let text = "[tenants.granted]\nmin_priority = 5\n[tenants.plain]\n";
        let file = ServerFile::parse(text, &[]).expect("parses");
        let caller = |name: &str| Caller::Tenant(file.access.tenant(name).unwrap().clone());
        let granted = caller("granted");
        assert_eq!(granted.priority(Some(5)).ok(), Some(Some(5)));
        assert_eq!(granted.priority(Some(9)).ok(), Some(Some(9)));
        assert_eq!(granted.priority(None).ok(), Some(None));
        let refused = granted.priority(Some(4)).expect_err("past the grant");
        assert_eq!(refused.code(), "priority-not-allowed");
        let refused = caller("plain").priority(Some(9)).expect_err("no grant");
        assert!(
            format!("{refused:?}").contains("min_priority"),
            "{refused:?}"
        );
        assert_eq!(caller("plain").priority(None).ok(), Some(None));
        assert_eq!(Caller::Open.priority(Some(0)).ok(), Some(Some(0)));
    }

    #[test]
    fn tokens_identify_their_caller_by_digest() {
        let text = format!(
            "[server]\noperator_token_sha256 = [\"{}\"]\n\n[tenants.acme]\ntoken_sha256 = [\"{}\"]\nprocessors = [\"hello\"]\n",
            hex_digest("op-secret"),
            hex_digest("acme-secret")
        );
        let env = vec![("WEIR_TENANT_ACME_TOKEN".to_string(), "from-env".to_string())];
        let file = ServerFile::parse(&text, &env).unwrap();
        assert!(matches!(
            file.access.identify("op-secret"),
            Some(Caller::Operator)
        ));
        let Some(Caller::Tenant(acme)) = file.access.identify("acme-secret") else {
            panic!("acme's token");
        };
        assert_eq!(acme.name(), "acme");
        assert!(acme.may_run("hello") && !acme.may_run("other"));
        assert!(matches!(
            file.access.identify("from-env"),
            Some(Caller::Tenant(_))
        ));
        assert!(file.access.identify("wrong").is_none());
        assert!(file.access.identify("").is_none());
    }

    #[test]
    fn bad_files_are_refused_with_the_place_to_fix() {
        let env = Vec::new();
        for (text, wanted) in [
            ("[tenants.acme]\ntoken_sha256 = [\"zz\"]\n", "token_sha256"),
            ("[tenants.acme]\ntoken_sha256 = [\"abcd\"]\n", "32 bytes"),
            ("[tenants.Acme]\n", "lowercase"),
            ("[tenants.default]\n", "reserved"),
            ("[tenants.acme]\nconcurrent = 0\n", "concurrent"),
            ("[tenants.acme]\nprocessors = [\"\"]\n", "empty"),
            ("[tenants.acme]\nmystery = 1\n", "mystery"),
            (
                "[server]\noperator_token_sha256 = [\"x\"]\n",
                "operator_token_sha256",
            ),
        ] {
            let err = ServerFile::parse(text, &env).unwrap_err();
            assert!(err.contains(wanted), "{text}: {err}");
        }
    }

    #[test]
    fn the_hosts_bounds_are_set_in_the_host_table() {
        let file = ServerFile::parse(
            "[host]\nmax_call_depth = 3\nmax_batch_items = 5\nmax_manifest_bytes = 4096\n",
            &[],
        )
        .expect("a [host] table is read");
        let host = file.host_config();
        assert_eq!(host.max_call_depth, 3);
        assert_eq!(host.max_batch_items, 5);
        assert_eq!(host.max_manifest_bytes, 4096);
        let defaults = weir::HostConfig::default();
        assert_eq!(
            host.max_nesting, defaults.max_nesting,
            "what is not set keeps its default"
        );
        let zero = ServerFile::parse("[host]\nmax_batch_items = 0\n", &[]).expect_err("zero");
        assert!(
            zero.contains("max_batch_items must be above zero"),
            "{zero}"
        );
        let unknown = ServerFile::parse("[host]\nmax_items = 3\n", &[]).expect_err("unknown");
        assert!(unknown.contains("max_items"), "{unknown}");
    }

    #[test]
    fn what_redis_keeps_is_set_in_the_redis_table() {
        let file = ServerFile::parse(
            "[redis]\nrun_retention_ms = 60000\nfailed_jobs_kept = 7\n\
             failed_jobs_kept_ms = 5000\nrun_index_per_tenant = 20\nactivity_tenants = 3\n",
            &[],
        )
        .expect("a [redis] table is read");
        let mut config = weir::RedisConfig::new("redis://127.0.0.1:1");
        file.redis.apply(&mut config);
        assert_eq!(config.run_retention, std::time::Duration::from_secs(60));
        assert_eq!(config.keep_failed.count, 7);
        assert_eq!(config.keep_failed.age, std::time::Duration::from_secs(5));
        assert_eq!(config.run_index_per_tenant, 20);
        assert_eq!(config.activity_tenants, 3);
        let defaults = weir::RedisConfig::new("redis://127.0.0.1:1");
        assert_eq!(
            (config.events_kept, config.run_index_total),
            (defaults.events_kept, defaults.run_index_total),
            "what is not set keeps its default"
        );
        let zero = ServerFile::parse("[redis]\nevents_kept = 0\n", &[]).expect_err("zero");
        assert!(
            zero.contains("[redis] events_kept must be above zero"),
            "{zero}"
        );
        let long = ServerFile::parse("[redis]\nrun_retention_ms = 18446744073709551615\n", &[])
            .expect_err("too long");
        assert!(long.contains("run_retention_ms is over a year"), "{long}");
        let unknown = ServerFile::parse("[redis]\nkept = 3\n", &[]).expect_err("unknown");
        assert!(unknown.contains("kept"), "{unknown}");
    }
}
