//! The fleet's activity in Redis: every process adds what its executions did (its
//! [`Journal`]) to the fleet's counters every [`RedisConfig::activity_interval`], and says
//! what it runs now (a snapshot that expires with the process); any process reads the
//! fleet's sum, per tenant. Bounded as `activity_flush.lua` says: tenants
//! ([`RedisConfig::activity_tenants`]), names per tenant ([`RedisConfig::activity_names`]),
//! sessions per tenant ([`crate::SessionBounds::max_per_tenant`]), with their expiries.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::RedisConfig;
use super::handle::Distributed;
use crate::contract::clock::{millis, now_ms};
use crate::contract::error::Error;
use crate::contract::state_store::{SessionBounds, SessionKey};
use crate::execution::activity::{
    Activity, DURATION_BUCKETS_US, Journal, Live, ProcessorStats, SessionProcessorStats,
    SessionStats, Tally, VERSIONS_KEPT, VersionStats,
};
use crate::execution::context::Context;

/// Most sessions one listing reads from Redis: a tenant's most recent first, every tenant's
/// in turn until this many.
pub(crate) const SESSIONS_LISTED: usize = 1_000;

/// The fleet's counters, as [`Distributed::fleet_stats`] reads them.
#[derive(Debug, Default)]
pub(crate) struct FleetStats {
    /// Per tenant, then processor (with what runs now).
    pub(crate) tenants: BTreeMap<String, BTreeMap<String, ProcessorStats>>,
    /// Executions running in the fleet now.
    pub(crate) running: usize,
    /// Sessions that have seen work and not expired.
    pub(crate) sessions: usize,
}

/// What this process last said it runs, and when.
#[derive(Default)]
struct Said {
    snapshot: Option<String>,
    at: Option<Instant>,
}

impl Distributed {
    /// Keeps `shared`'s journal and adds it to the fleet's counters from now on, every
    /// [`RedisConfig::activity_interval`], until the runtime or this handle is dropped.
    pub(crate) fn share_activity(self: &Arc<Self>, shared: &Arc<Context>) {
        shared.activity().keep_journal();
        let _ = self.context.set(Arc::downgrade(shared));
        let dist: Weak<Distributed> = Arc::downgrade(self);
        let context: Weak<Context> = Arc::downgrade(shared);
        let interval = self.config.activity_interval.max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut said = Said::default();
            let mut failing = false;
            loop {
                tick.tick().await;
                let (Some(dist), Some(shared)) = (dist.upgrade(), context.upgrade()) else {
                    return;
                };
                let bounds = shared.config().sessions;
                match dist.flush(shared.activity(), &bounds, &mut said).await {
                    Ok(()) if failing => {
                        tracing::info!("the fleet's activity counters are written again");
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(error) if !failing => {
                        tracing::warn!(
                            %error,
                            "cannot add this process's activity to the fleet's counters; \
                             they are kept and written once Redis answers"
                        );
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// Writes what changed now (at the runtime's stop: nothing runs any more).
    pub(crate) async fn flush_activity(&self) {
        let Some(shared) = self.context.get().and_then(Weak::upgrade) else {
            return;
        };
        let bounds = shared.config().sessions;
        let mut said = Said {
            snapshot: Some(String::new()),
            at: None,
        };
        if let Err(error) = self.flush(shared.activity(), &bounds, &mut said).await {
            tracing::warn!(%error, "this process's last activity was not added to the fleet's");
        }
    }

    /// Counts a step of a workflow's life (entered, or ended) in this process's counters,
    /// and so in the fleet's.
    pub(crate) fn tally(&self, tenant: &str, name: &str, session: Option<&str>, tally: Tally) {
        if let Some(shared) = self.local() {
            let key = session.map(|session| SessionKey::new(tenant, session));
            shared
                .activity()
                .tally(&Arc::from(tenant), name, key.as_ref(), tally);
        }
    }

    /// This process's runtime, whose event bus the fleet's event stream shares (`None`
    /// before the runtime is built, or once it is dropped).
    pub(crate) fn local(&self) -> Option<Arc<Context>> {
        self.context.get().and_then(Weak::upgrade)
    }

    fn activity_prefix(&self) -> String {
        self.keys.own("activity:")
    }

    /// One write of the journal and of what runs now (if either changed, or the snapshot is
    /// due again). On a failure the journal is kept for the next.
    async fn flush(
        &self,
        activity: &Activity,
        bounds: &SessionBounds,
        said: &mut Said,
    ) -> Result<(), Error> {
        let ttl = self.config.activity_interval.max(Duration::from_millis(10)) * 20;
        let live = match activity.live() {
            Some(live) if live.is_empty() => Some(String::new()),
            Some(live) => Some(serde_json::to_string(&live).unwrap_or_default()),
            None => None,
        };
        let live = match live {
            Some(now) if said.snapshot.as_deref() != Some(now.as_str()) => Some(now),
            // Unchanged but running: said again before it expires.
            _ => said
                .snapshot
                .clone()
                .filter(|s| !s.is_empty() && said.at.is_none_or(|at| at.elapsed() >= ttl / 3)),
        };
        let journal = activity.take_journal();
        if journal.is_none() && live.is_none() {
            return Ok(());
        }
        let mut document = journal_document(
            journal.as_ref(),
            live.as_deref(),
            &self.config,
            bounds,
            &self.origin,
            millis(ttl),
        );
        document["stopped"] = Value::String(self.keys.own("stopped:"));
        let mut conn = self.conn();
        let outcome: Result<(u64, u64), _> = self
            .activity_flush
            .arg(self.activity_prefix())
            .arg(document.to_string())
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await;
        match outcome {
            Ok((rows, sessions)) => {
                if let Some(live) = live {
                    said.snapshot = Some(live);
                    said.at = Some(Instant::now());
                }
                if rows + sessions > 0 {
                    tracing::warn!(
                        rows,
                        sessions,
                        "the fleet's activity counters are full: counts of new processors or \
                         sessions were dropped (raise `activity_names` or the sessions' \
                         bounds)"
                    );
                }
                Ok(())
            }
            Err(error) => {
                if let Some(journal) = journal {
                    activity.restore_journal(journal);
                }
                Err(self.redis_error(error))
            }
        }
    }

    async fn read_activity(
        &self,
        what: &str,
        tenant: Option<&str>,
        session: &str,
        bounds: &SessionBounds,
    ) -> Result<Read, Error> {
        let mut conn = self.conn();
        let text: String = self
            .activity_read
            .arg(self.activity_prefix())
            .arg(what)
            .arg(tenant.unwrap_or(""))
            .arg(session)
            .arg(now_ms())
            .arg(millis(bounds.idle_expiry))
            .arg(SESSIONS_LISTED)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        let document: Value = serde_json::from_str(&text).map_err(|e| {
            self.redis_error(format!("the fleet's activity counters are unreadable: {e}"))
        })?;
        Ok(Read::from(document))
    }

    /// The fleet's counters: `tenant`'s, or every tenant's.
    pub(crate) async fn fleet_stats(
        &self,
        tenant: Option<&str>,
        bounds: &SessionBounds,
    ) -> Result<FleetStats, Error> {
        let read = self.read_activity("stats", tenant, "", bounds).await?;
        let mut stats = FleetStats::default();
        for (name, fields) in read.stats {
            stats.tenants.insert(name, processor_rows(&fields));
        }
        for live in &read.live {
            for (name, processors) in &live.processors {
                if tenant.is_some_and(|t| t != name) {
                    continue;
                }
                let rows = stats.tenants.entry(name.clone()).or_default();
                for (processor, running) in processors {
                    rows.entry(processor.clone()).or_default().running += running;
                    stats.running += usize::try_from(*running).unwrap_or(usize::MAX);
                }
            }
        }
        stats.sessions = read.counted.values().sum();
        Ok(stats)
    }

    /// The fleet's sessions that have seen work: `tenant`'s, or every tenant's (at most
    /// [`SESSIONS_LISTED`] in all, each tenant's most recent), sorted.
    pub(crate) async fn fleet_sessions(
        &self,
        tenant: Option<&str>,
        bounds: &SessionBounds,
    ) -> Result<Vec<SessionStats>, Error> {
        let read = self.read_activity("sessions", tenant, "", bounds).await?;
        Ok(read.sessions_stats())
    }

    /// One session's counters across the fleet, if it has seen work and not expired.
    pub(crate) async fn fleet_session(
        &self,
        key: &SessionKey,
        bounds: &SessionBounds,
    ) -> Result<Option<SessionStats>, Error> {
        let read = self
            .read_activity("session", Some(&key.tenant), &key.session, bounds)
            .await?;
        Ok(read.sessions_stats().into_iter().next())
    }

    /// The fleet's counters of each version of `name` (over every tenant): the
    /// [`VERSIONS_KEPT`] latest, in the order each was first counted.
    pub(crate) async fn fleet_versions(&self, name: &str) -> Result<Vec<VersionStats>, Error> {
        let seen = format!("{}versions:{name}", self.activity_prefix());
        let mut conn = self.conn();
        let digests: Vec<String> = redis::cmd("ZRANGE")
            .arg(&seen)
            .arg(0)
            .arg(VERSIONS_KEPT.saturating_sub(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for digest in &digests {
            pipe.cmd("HGETALL").arg(format!("{seen}:{digest}"));
        }
        let rows: Vec<Vec<String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(digests
            .into_iter()
            .zip(rows)
            .map(|(digest, fields)| {
                let stats = processor_rows(&fields).remove(&digest).unwrap_or_default();
                VersionStats { digest, stats }
            })
            .collect())
    }

    /// Forgets a stopped session's counters.
    pub(crate) async fn forget_session_activity(&self, key: &SessionKey) -> Result<(), Error> {
        let prefix = self.activity_prefix();
        let mut conn = self.conn();
        redis::pipe()
            .zrem(format!("{prefix}sessions:{}", key.tenant), &key.session)
            .del(format!(
                "{prefix}session:{}:{}:{}",
                key.tenant.len(),
                key.tenant,
                key.session
            ))
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))
    }
}

/// The journal and the snapshot as `activity_flush.lua` takes them.
fn journal_document(
    journal: Option<&Journal>,
    live: Option<&str>,
    config: &RedisConfig,
    bounds: &SessionBounds,
    process: &str,
    live_ttl_ms: u64,
) -> Value {
    let mut stats = Vec::new();
    let mut versions = Vec::new();
    let mut sessions = Vec::new();
    // A row of counters of `name` (a processor's, or a version's digest) under `owner` (a
    // tenant, or a processor).
    let row = |owner: &str, name: &str, s: &ProcessorStats| {
        let buckets: Vec<u64> = s
            .duration_buckets
            .iter()
            .enumerate()
            .filter(|(_, count)| **count > 0)
            .flat_map(|(i, count)| [i as u64, *count])
            .collect();
        json!([
            owner,
            name,
            s.started,
            s.completed,
            s.failed,
            s.total_duration_us,
            s.fuel_consumed,
            s.total_peak_memory_bytes,
            buckets
        ])
    };
    if let Some(journal) = journal {
        for (tenant, processors) in &journal.stats {
            for (name, s) in processors {
                stats.push(row(tenant, name, s));
            }
        }
        for (name, kept) in &journal.versions {
            for version in kept {
                versions.push(row(name, &version.digest, &version.stats));
            }
        }
        for (key, session) in &journal.sessions {
            let names: Vec<Value> = session
                .processors
                .iter()
                .map(|(name, c)| json!([name, c.executions, c.failed]))
                .collect();
            sessions.push(json!([
                key.tenant,
                key.session,
                session.first_ms,
                session.last_ms,
                session.executions,
                session.failed,
                names
            ]));
        }
    }
    let mut document = json!({
        "ttl": millis(config.activity_retention).max(1),
        "tenants": config.activity_tenants.max(1),
        "names": config.activity_names.max(1),
        "idle": millis(bounds.idle_expiry).max(1),
        "max_sessions": bounds.max_per_tenant.max(1),
        "process": process,
        "live_ttl": live_ttl_ms.max(1),
        "stats": stats,
        "session_rows": sessions,
        "versions": versions,
        "versions_kept": VERSIONS_KEPT,
    });
    if let Some(live) = live {
        document["live"] = Value::String(live.to_string());
    }
    document
}

/// What `activity_read.lua` answered.
#[derive(Debug, Default)]
struct Read {
    live: Vec<Live>,
    stats: BTreeMap<String, Vec<String>>,
    sessions: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    counted: BTreeMap<String, usize>,
}

impl From<Value> for Read {
    fn from(document: Value) -> Self {
        // An empty Lua table is encoded as `{}`, whatever it holds.
        let fields = |value: &Value| -> Vec<String> {
            value
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        let object = |value: &Value| value.as_object().cloned().unwrap_or_default();
        Read {
            live: document["live"]
                .as_array()
                .map(|snapshots| {
                    snapshots
                        .iter()
                        .filter_map(|s| serde_json::from_str(s.as_str()?).ok())
                        .collect()
                })
                .unwrap_or_default(),
            stats: object(&document["stats"])
                .iter()
                .map(|(tenant, f)| (tenant.clone(), fields(f)))
                .collect(),
            sessions: object(&document["sessions"])
                .iter()
                .map(|(tenant, sessions)| {
                    let sessions = object(sessions)
                        .iter()
                        .map(|(session, f)| (session.clone(), fields(f)))
                        .collect();
                    (tenant.clone(), sessions)
                })
                .collect(),
            counted: object(&document["counted"])
                .iter()
                .map(|(tenant, n)| (tenant.clone(), n.as_u64().unwrap_or(0) as usize))
                .collect(),
        }
    }
}

impl Read {
    /// The sessions read, with what runs in them now, sorted by tenant and id.
    fn sessions_stats(&self) -> Vec<SessionStats> {
        let mut out = Vec::new();
        for (tenant, sessions) in &self.sessions {
            for (session, fields) in sessions {
                let mut stats = session_row(tenant, session, fields);
                for live in &self.live {
                    let Some(running) = live.sessions.get(tenant).and_then(|s| s.get(session))
                    else {
                        continue;
                    };
                    for (name, count) in running {
                        stats.running += count;
                        stats.processors.entry(name.clone()).or_default().running += count;
                    }
                }
                out.push(stats);
            }
        }
        out
    }
}

/// Field/value pairs of a Redis hash.
fn pairs(fields: &[String]) -> impl Iterator<Item = (&str, u64)> {
    fields
        .chunks_exact(2)
        .map(|pair| (pair[0].as_str(), pair[1].parse::<u64>().unwrap_or(0)))
}

/// A tenant's counters from its hash (`{counter}:{name}` → count).
fn processor_rows(fields: &[String]) -> BTreeMap<String, ProcessorStats> {
    let mut rows: BTreeMap<String, ProcessorStats> = BTreeMap::new();
    for (field, value) in pairs(fields) {
        let Some((counter, name)) = field.split_once(':') else {
            continue;
        };
        let row = match rows.get_mut(name) {
            Some(row) => row,
            None => rows.entry(name.to_string()).or_default(),
        };
        match counter {
            "s" => row.started = value,
            "c" => row.completed = value,
            "f" => row.failed = value,
            "d" => row.total_duration_us = value,
            "u" => row.fuel_consumed = value,
            "m" => row.total_peak_memory_bytes = value,
            bucket => {
                if let Some(i) = bucket
                    .strip_prefix('b')
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|i| *i <= DURATION_BUCKETS_US.len())
                {
                    row.duration_buckets[i] = value;
                }
            }
        }
    }
    rows
}

/// A session's counters from its hash.
fn session_row(tenant: &str, session: &str, fields: &[String]) -> SessionStats {
    let mut stats = SessionStats {
        tenant: tenant.to_string(),
        session: session.to_string(),
        created_at_ms: 0,
        last_activity_ms: 0,
        executions: 0,
        running: 0,
        failed: 0,
        processors: BTreeMap::new(),
    };
    for (field, value) in pairs(fields) {
        match field {
            "created" => stats.created_at_ms = value,
            "last" => stats.last_activity_ms = value,
            "executions" => stats.executions = value,
            "failed" => stats.failed = value,
            _ => {
                let Some((counter, name)) = field.split_once(':') else {
                    continue;
                };
                let counts: &mut SessionProcessorStats =
                    stats.processors.entry(name.to_string()).or_default();
                match counter {
                    "e" => counts.executions = value,
                    "f" => counts.failed = value,
                    _ => {}
                }
            }
        }
    }
    stats
}
