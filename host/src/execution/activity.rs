//! What is running and what has run: every execution in flight (so it can be cancelled by
//! id, by session or at shutdown), the sessions that have seen work, and per-processor
//! counters. One short mutex section when an execution starts and one when it ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::contract::cancel::{CancelHandle, CancelReason};
use crate::contract::clock::now_ms;
use crate::contract::state_store::{SessionBounds, SessionKey};

/// Counters of one processor or workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessorStats {
    /// Executions started.
    pub started: u64,
    /// Executions that succeeded.
    pub completed: u64,
    /// Executions that failed.
    pub failed: u64,
    /// Executions running (or waiting to run) now.
    pub running: u64,
    /// Total wall-clock time of finished executions, in microseconds.
    pub total_duration_us: u64,
    /// Fuel the finished executions consumed, in all.
    pub fuel_consumed: u64,
    /// The finished executions' peak linear memory, in bytes, added up (divided by the
    /// finished count: the mean peak).
    pub total_peak_memory_bytes: u64,
    /// Finished executions by duration: `duration_buckets[i]` counts those that took at
    /// most [`DURATION_BUCKETS_US`]`[i]` µs (and more than the bound before); the last
    /// counts the rest. Serialised sparse, as `{"bound in µs": count}` (`"inf"` for the
    /// last), with only the buckets that count something.
    #[serde(serialize_with = "sparse_buckets")]
    pub duration_buckets: [u64; DURATION_BUCKETS_US.len() + 1],
}

impl Default for ProcessorStats {
    fn default() -> Self {
        ProcessorStats {
            started: 0,
            completed: 0,
            failed: 0,
            running: 0,
            total_duration_us: 0,
            fuel_consumed: 0,
            total_peak_memory_bytes: 0,
            duration_buckets: [0; BOUNDS + 1],
        }
    }
}

/// Versions whose counters one name keeps ([`VersionStats`]): the latest to run, in the
/// order each first ran; the oldest makes room for a new one.
pub const VERSIONS_KEPT: usize = 8;

/// Names whose versions are counted: past it, a new name's versions are not (its counters
/// by name still are).
pub const VERSION_NAMES: usize = 1_000;

/// The counters of one version of a processor or workflow, over every tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionStats {
    /// The version: the SHA-256 of the component, or of the workflow's definition.
    pub digest: String,
    /// Its finished executions' counters (`started` counts them too; `running` is 0).
    #[serde(flatten)]
    pub stats: ProcessorStats,
}

/// The row of `digest` among a name's `versions`, added (the oldest dropped past
/// [`VERSIONS_KEPT`]) if new.
fn version_row<'a>(versions: &'a mut Vec<VersionStats>, digest: &str) -> &'a mut ProcessorStats {
    let index = match versions.iter().position(|v| v.digest == digest) {
        Some(index) => index,
        None => {
            if versions.len() >= VERSIONS_KEPT {
                versions.remove(0);
            }
            versions.push(VersionStats {
                digest: digest.to_string(),
                stats: ProcessorStats::default(),
            });
            versions.len() - 1
        }
    };
    &mut versions[index].stats
}

/// How many bounds [`DURATION_BUCKETS_US`] has.
const BOUNDS: usize = 97;

/// Upper bounds, in microseconds, of the duration buckets of [`ProcessorStats`]: ten per
/// decade (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 and 8 times a power of ten, whole microseconds)
/// from 1 µs to 8,000 s, so that a quantile read from them is at most a third above the
/// true figure: a 15 µs execution reads 15 µs.
pub const DURATION_BUCKETS_US: [u64; BOUNDS] = duration_bounds();

const fn duration_bounds() -> [u64; BOUNDS] {
    const FIRST: [u64; 7] = [1, 2, 3, 4, 5, 6, 8];
    const STEPS: [u64; 10] = [10, 12, 15, 20, 25, 30, 40, 50, 60, 80];
    let mut bounds = [0; BOUNDS];
    let mut n = 0;
    while n < FIRST.len() {
        bounds[n] = FIRST[n];
        n += 1;
    }
    let mut scale = 1;
    while n < BOUNDS {
        let mut step = 0;
        while step < STEPS.len() {
            bounds[n] = STEPS[step] * scale;
            n += 1;
            step += 1;
        }
        scale *= 10;
    }
    bounds
}

fn sparse_buckets<S: serde::Serializer>(
    buckets: &[u64; BOUNDS + 1],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(None)?;
    for (i, count) in buckets.iter().enumerate() {
        if *count == 0 {
            continue;
        }
        match DURATION_BUCKETS_US.get(i) {
            Some(bound) => map.serialize_entry(&bound.to_string(), count)?,
            None => map.serialize_entry("inf", count)?,
        }
    }
    map.end()
}

impl ProcessorStats {
    /// The duration (µs) under which a fraction `q` (0–1) of finished executions fell,
    /// estimated as the upper bound of the bucket holding that rank; `None` when nothing
    /// has finished, or when the rank falls past the last bound.
    pub fn duration_quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.duration_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.duration_buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return DURATION_BUCKETS_US.get(i).copied();
            }
        }
        None
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &ProcessorStats) {
        self.started += other.started;
        self.completed += other.completed;
        self.failed += other.failed;
        self.running += other.running;
        self.total_duration_us = self
            .total_duration_us
            .saturating_add(other.total_duration_us);
        self.fuel_consumed = self.fuel_consumed.saturating_add(other.fuel_consumed);
        self.total_peak_memory_bytes = self
            .total_peak_memory_bytes
            .saturating_add(other.total_peak_memory_bytes);
        for (mine, theirs) in self
            .duration_buckets
            .iter_mut()
            .zip(&other.duration_buckets)
        {
            *mine += theirs;
        }
    }

    /// Counts a finished execution.
    fn finish(&mut self, outcome: Outcome) {
        if outcome.ok {
            self.completed += 1;
        } else {
            self.failed += 1;
        }
        self.observe(outcome.duration);
        self.fuel_consumed = self.fuel_consumed.saturating_add(outcome.fuel);
        self.total_peak_memory_bytes = self
            .total_peak_memory_bytes
            .saturating_add(outcome.peak_memory);
    }

    fn observe(&mut self, duration: Duration) {
        let us: u64 = duration.as_micros().try_into().unwrap_or(u64::MAX);
        self.total_duration_us = self.total_duration_us.saturating_add(us);
        let bucket = DURATION_BUCKETS_US.partition_point(|&bound| bound < us);
        self.duration_buckets[bucket] += 1;
    }
}

/// How an execution ended, as the counters record it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// It succeeded.
    pub ok: bool,
    /// Its wall-clock time.
    pub duration: Duration,
    /// The fuel it consumed.
    pub fuel: u64,
    /// Its peak linear memory, in bytes.
    pub peak_memory: u64,
}

impl Outcome {
    /// An end that cost nothing counted but time.
    pub(crate) fn timed(ok: bool, duration: Duration) -> Self {
        Outcome {
            ok,
            duration,
            ..Outcome::default()
        }
    }
}

/// Counters of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStats {
    /// The tenant.
    pub tenant: String,
    /// The session id.
    pub session: String,
    /// When the session saw its first execution (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When it last started or finished one.
    pub last_activity_ms: u64,
    /// Executions started in it (workflow steps included).
    pub executions: u64,
    /// Executions running in it now.
    pub running: u64,
    /// Executions that failed in it.
    pub failed: u64,
    /// The same counters for each processor and workflow that ran in it, by name (as many
    /// entries as names it ran, which the catalog bounds).
    pub processors: BTreeMap<String, SessionProcessorStats>,
}

/// One processor's (or workflow's) counters within a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionProcessorStats {
    /// Its executions started in the session.
    pub executions: u64,
    /// Its executions running in the session now.
    pub running: u64,
    /// Its executions that failed in the session.
    pub failed: u64,
}

/// An execution in flight.
#[derive(Debug)]
struct Running {
    session: Option<SessionKey>,
    cancel: CancelHandle,
}

#[derive(Debug, Default)]
struct Inner {
    running: HashMap<String, Running>,
    sessions: HashMap<SessionKey, SessionStats>,
    /// How many of `sessions` each tenant has.
    sessions_per_tenant: HashMap<String, usize>,
    /// When idle sessions were last swept out (ms since the Unix epoch).
    swept_ms: u64,
    /// Counters by tenant, then processor.
    tenants: HashMap<Arc<str>, BTreeMap<String, ProcessorStats>>,
    /// Counters by processor, then version (at most [`VERSION_NAMES`] names).
    versions: HashMap<String, Vec<VersionStats>>,
    /// What changed since the journal was last taken, when one is kept (on a distributed
    /// runtime, which adds it to the fleet's counters).
    journal: Option<Journal>,
    /// Something started or ended since `Activity::live` last looked.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    live_changed: bool,
}

/// What this process's executions added to the counters since the journal was last taken
/// (`Activity::keep_journal`, on a distributed runtime). As many entries as the counters
/// themselves have.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    /// Per tenant, then processor: executions started, completed and failed, and the
    /// finished ones' durations (`running` unused).
    pub(crate) stats: HashMap<Arc<str>, HashMap<String, ProcessorStats>>,
    /// Per session.
    pub(crate) sessions: HashMap<SessionKey, SessionJournal>,
    /// Per processor, then version: finished executions (`started` counts them too).
    pub(crate) versions: HashMap<String, Vec<VersionStats>>,
}

/// What a session's counters gained since the journal was last taken.
#[derive(Debug, Default)]
pub(crate) struct SessionJournal {
    /// When it saw work first and last in that time (ms since the Unix epoch).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) first_ms: u64,
    pub(crate) last_ms: u64,
    /// Executions started and failed.
    pub(crate) executions: u64,
    pub(crate) failed: u64,
    /// The same per processor (`running` unused).
    pub(crate) processors: HashMap<String, SessionProcessorStats>,
}

impl Journal {
    #[cfg(feature = "redis")]
    fn is_empty(&self) -> bool {
        self.stats.is_empty() && self.sessions.is_empty() && self.versions.is_empty()
    }

    #[cfg(feature = "redis")]
    /// Adds an older journal's changes to these.
    fn absorb(&mut self, older: Journal) {
        for (tenant, rows) in older.stats {
            let mine = self.stats.entry(tenant).or_default();
            for (name, stats) in rows {
                mine.entry(name).or_default().add(&stats);
            }
        }
        for (name, versions) in older.versions {
            let mine = self.versions.entry(name).or_default();
            for version in versions {
                version_row(mine, &version.digest).add(&version.stats);
            }
        }
        for (key, session) in older.sessions {
            let mine = self.sessions.entry(key).or_insert_with(|| SessionJournal {
                first_ms: session.first_ms,
                ..SessionJournal::default()
            });
            mine.first_ms = mine.first_ms.min(session.first_ms);
            mine.last_ms = mine.last_ms.max(session.last_ms);
            mine.executions += session.executions;
            mine.failed += session.failed;
            for (name, counts) in session.processors {
                let entry = mine.processors.entry(name).or_default();
                entry.executions += counts.executions;
                entry.failed += counts.failed;
            }
        }
    }

    fn row(&mut self, tenant: &Arc<str>, processor: &str) -> &mut ProcessorStats {
        // An `Arc` clone: no allocation.
        let processors = self.stats.entry(tenant.clone()).or_default();
        if !processors.contains_key(processor) {
            processors.insert(processor.to_string(), ProcessorStats::default());
        }
        processors
            .get_mut(processor)
            .expect("the row was inserted above")
    }

    fn session(&mut self, key: &SessionKey, processor: &str, now: u64) -> &mut SessionJournal {
        if !self.sessions.contains_key(key) {
            let fresh = SessionJournal {
                first_ms: now,
                ..SessionJournal::default()
            };
            self.sessions.insert(key.clone(), fresh);
        }
        let session = self
            .sessions
            .get_mut(key)
            .expect("the session was inserted above");
        session.last_ms = now;
        if !session.processors.contains_key(processor) {
            session
                .processors
                .insert(processor.to_string(), SessionProcessorStats::default());
        }
        session
    }

    fn started(&mut self, tenant: &Arc<str>, processor: &str, session: Option<&SessionKey>) {
        self.row(tenant, processor).started += 1;
        if let Some(key) = session {
            let session = self.session(key, processor, now_ms());
            session.executions += 1;
            if let Some(counts) = session.processors.get_mut(processor) {
                counts.executions += 1;
            }
        }
    }

    fn ended(
        &mut self,
        tenant: &Arc<str>,
        processor: &str,
        session: Option<&SessionKey>,
        outcome: Outcome,
    ) {
        self.row(tenant, processor).finish(outcome);
        if let Some(key) = session {
            let session = self.session(key, processor, now_ms());
            if !outcome.ok {
                session.failed += 1;
                if let Some(counts) = session.processors.get_mut(processor) {
                    counts.failed += 1;
                }
            }
        }
    }
}

#[cfg(feature = "redis")]
/// What runs in this process now: per tenant, then processor; and per session, then
/// processor. Only what runs (a count above 0) is in it.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub(crate) struct Live {
    #[serde(rename = "p", default)]
    pub(crate) processors: BTreeMap<String, BTreeMap<String, u64>>,
    #[serde(rename = "s", default)]
    pub(crate) sessions: BTreeMap<String, BTreeMap<String, BTreeMap<String, u64>>>,
}

#[cfg(feature = "redis")]
impl Live {
    /// Nothing runs.
    pub(crate) fn is_empty(&self) -> bool {
        self.processors.is_empty() && self.sessions.is_empty()
    }
}

#[cfg(feature = "redis")]
/// A step of a workflow's life recorded by [`Activity::tally`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tally {
    /// It started.
    Started,
    /// It ended.
    Ended(Outcome),
}

impl Inner {
    /// The counters of session `key`, opened (counted against its tenant) if new.
    fn session_entry(&mut self, key: &SessionKey, now: u64) -> &mut SessionStats {
        if !self.sessions.contains_key(key) {
            *self
                .sessions_per_tenant
                .entry(key.tenant.clone())
                .or_default() += 1;
        }
        self.sessions
            .entry(key.clone())
            .or_insert_with(|| SessionStats {
                tenant: key.tenant.clone(),
                session: key.session.clone(),
                created_at_ms: now,
                last_activity_ms: now,
                executions: 0,
                running: 0,
                failed: 0,
                processors: BTreeMap::new(),
            })
    }

    fn remove_session(&mut self, key: &SessionKey) {
        if self.sessions.remove(key).is_some()
            && let Some(count) = self.sessions_per_tenant.get_mut(&key.tenant)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.sessions_per_tenant.remove(&key.tenant);
            }
        }
    }

    /// Forgets the sessions (of `tenant` only, if given) that run nothing and have been idle
    /// for `idle_ms`.
    fn sweep(&mut self, tenant: Option<&str>, idle_ms: u64, now: u64) {
        let expired: Vec<SessionKey> = self
            .sessions
            .iter()
            .filter(|(key, s)| {
                tenant.is_none_or(|t| key.tenant == t)
                    && s.running == 0
                    && now.saturating_sub(s.last_activity_ms) >= idle_ms
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in expired {
            self.remove_session(&key);
        }
    }

    /// Sweeps every tenant's idle sessions, at most every tenth of the expiry.
    fn sweep_now_and_then(&mut self, idle_ms: u64, now: u64) {
        if now.saturating_sub(self.swept_ms) >= idle_ms / 10 {
            self.sweep(None, idle_ms, now);
            self.swept_ms = now;
        }
    }
}

/// Why a session cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRefused {
    /// The id is not a session id: the message says what one is.
    InvalidId(String),
    /// The tenant already has as many sessions as it may.
    TooMany {
        /// The tenant.
        tenant: String,
        /// How many it may have.
        limit: usize,
    },
}

impl std::fmt::Display for SessionRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionRefused::InvalidId(why) => f.write_str(why),
            SessionRefused::TooMany { tenant, limit } => write!(
                f,
                "tenant `{tenant}` has {limit} sessions open, as many as it may: stop one, or \
                 wait for an idle one to expire"
            ),
        }
    }
}

/// The runtime's record of activity.
#[derive(Debug)]
pub(crate) struct Activity {
    inner: Mutex<Inner>,
    bounds: SessionBounds,
    /// How many executions are in flight; waited on by `stop`.
    in_flight: watch::Sender<usize>,
    started: Instant,
}

/// What `begin` learned.
pub(crate) struct Began {
    /// This execution opened a session that had seen no work before.
    pub new_session: bool,
}

impl Activity {
    pub(crate) fn new(bounds: SessionBounds) -> Self {
        Activity {
            inner: Mutex::default(),
            bounds,
            in_flight: watch::channel(0).0,
            started: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens session `key` for an execution about to start (or finds it open): refused if
    /// the id is not a session id, or if its tenant has [`SessionBounds::max_per_tenant`]
    /// sessions that have not been idle long enough to expire.
    pub(crate) fn open_session(&self, key: &SessionKey) -> Result<(), SessionRefused> {
        self.bounds
            .check_id(&key.session)
            .map_err(SessionRefused::InvalidId)?;
        let idle_ms = self.idle_ms();
        let now = now_ms();
        let mut inner = self.lock();
        inner.sweep_now_and_then(idle_ms, now);
        if let Some(session) = inner.sessions.get_mut(key) {
            session.last_activity_ms = now;
            return Ok(());
        }
        let full = |inner: &Inner| {
            inner
                .sessions_per_tenant
                .get(&key.tenant)
                .copied()
                .unwrap_or(0)
                >= self.bounds.max_per_tenant
        };
        if full(&inner) {
            inner.sweep(Some(&key.tenant), idle_ms, now);
            if full(&inner) {
                return Err(SessionRefused::TooMany {
                    tenant: key.tenant.clone(),
                    limit: self.bounds.max_per_tenant,
                });
            }
        }
        inner.session_entry(key, now);
        Ok(())
    }

    fn idle_ms(&self) -> u64 {
        u64::try_from(self.bounds.idle_expiry.as_millis()).unwrap_or(u64::MAX)
    }

    /// Records that execution `id` of `processor` started.
    pub(crate) fn begin(
        &self,
        id: &str,
        tenant: &Arc<str>,
        processor: &str,
        session: Option<SessionKey>,
        cancel: &CancelHandle,
    ) -> Began {
        let mut inner = self.lock();
        let processors = match inner.tenants.get_mut(&**tenant) {
            Some(processors) => processors,
            None => inner.tenants.entry(tenant.clone()).or_default(),
        };
        let stats = match processors.get_mut(processor) {
            Some(stats) => stats,
            None => processors.entry(processor.to_string()).or_default(),
        };
        stats.started += 1;
        stats.running += 1;
        let mut new_session = false;
        if let Some(key) = &session {
            let now = now_ms();
            // Sessions opened here (steps and calls of an admitted execution, or a worker's
            // jobs) were admitted where their execution was submitted; idle ones still expire.
            inner.sweep_now_and_then(self.idle_ms(), now);
            let entry = inner.session_entry(key, now);
            new_session = entry.executions == 0;
            entry.executions += 1;
            entry.running += 1;
            entry.last_activity_ms = now;
            let counts = match entry.processors.get_mut(processor) {
                Some(counts) => counts,
                None => entry.processors.entry(processor.to_string()).or_default(),
            };
            counts.executions += 1;
            counts.running += 1;
        }
        if let Some(journal) = inner.journal.as_mut() {
            journal.started(tenant, processor, session.as_ref());
        }
        inner.live_changed = true;
        inner.running.insert(
            id.to_string(),
            Running {
                session,
                cancel: cancel.clone(),
            },
        );
        let count = inner.running.len();
        drop(inner);
        // Waiters wait for work to end, never for it to start: update without waking them.
        self.in_flight.send_if_modified(|n| {
            *n = count;
            false
        });
        Began { new_session }
    }

    /// Records that execution `id` finished.
    pub(crate) fn end(&self, id: &str, tenant: &Arc<str>, processor: &str, outcome: Outcome) {
        self.end_version(id, tenant, processor, None, outcome);
    }

    /// Records that execution `id` of version `digest` of `processor` finished (the
    /// version unknown when it ended before its unit was resolved).
    pub(crate) fn end_version(
        &self,
        id: &str,
        tenant: &Arc<str>,
        processor: &str,
        digest: Option<&str>,
        outcome: Outcome,
    ) {
        let ok = outcome.ok;
        let mut inner = self.lock();
        inner.live_changed = true;
        if let Some(digest) = digest {
            let Inner {
                versions, journal, ..
            } = &mut *inner;
            // A name is allocated once, when it is new (and there is room for it).
            if !versions.contains_key(processor) && versions.len() < VERSION_NAMES {
                versions.insert(processor.to_string(), Vec::new());
            }
            let versions = versions.get_mut(processor);
            if let Some(versions) = versions {
                let row = version_row(versions, digest);
                row.started += 1;
                row.finish(outcome);
                if let Some(journal) = journal.as_mut() {
                    let kept = match journal.versions.get_mut(processor) {
                        Some(kept) => kept,
                        None => journal.versions.entry(processor.to_string()).or_default(),
                    };
                    let row = version_row(kept, digest);
                    row.started += 1;
                    row.finish(outcome);
                }
            }
        }
        if let Some(stats) = inner
            .tenants
            .get_mut(&**tenant)
            .and_then(|processors| processors.get_mut(processor))
        {
            stats.running = stats.running.saturating_sub(1);
            stats.finish(outcome);
        }
        let running = inner.running.remove(id);
        let key = running.and_then(|running| running.session);
        if let Some(journal) = inner.journal.as_mut() {
            journal.ended(tenant, processor, key.as_ref(), outcome);
        }
        if let Some(key) = key
            && let Some(session) = inner.sessions.get_mut(&key)
        {
            session.running = session.running.saturating_sub(1);
            session.last_activity_ms = now_ms();
            if !ok {
                session.failed += 1;
            }
            if let Some(counts) = session.processors.get_mut(processor) {
                counts.running = counts.running.saturating_sub(1);
                if !ok {
                    counts.failed += 1;
                }
            }
        }
        let count = inner.running.len();
        drop(inner);
        // Wake waiters only if there are any (the common case has none). One subscribing
        // right now still sees the new count: waiters check the current state first.
        let waiters = self.in_flight.receiver_count() > 0;
        self.in_flight.send_if_modified(|n| {
            *n = count;
            waiters
        });
    }

    /// Cancels execution `id` (and everything it started); false if it is not running.
    pub(crate) fn cancel(&self, id: &str, reason: CancelReason) -> bool {
        let inner = self.lock();
        match inner.running.get(id) {
            Some(running) => {
                running.cancel.cancel_with(reason);
                true
            }
            None => false,
        }
    }

    /// Cancels everything running in `session`; returns how many executions it reached.
    pub(crate) fn cancel_session(&self, key: &SessionKey) -> usize {
        let inner = self.lock();
        let mut reached = 0;
        for running in inner.running.values() {
            if running.session.as_ref() == Some(key) {
                running.cancel.cancel_with(CancelReason::SessionStopped);
                reached += 1;
            }
        }
        reached
    }

    /// Cancels everything running.
    pub(crate) fn cancel_all(&self, reason: CancelReason) -> usize {
        let inner = self.lock();
        for running in inner.running.values() {
            running.cancel.cancel_with(reason);
        }
        inner.running.len()
    }

    /// Waits until nothing runs in `session`, or until `deadline`.
    pub(crate) async fn session_idle(&self, key: &SessionKey, deadline: Instant) -> bool {
        let mut changes = self.in_flight.subscribe();
        loop {
            let busy = self
                .lock()
                .running
                .values()
                .any(|r| r.session.as_ref() == Some(key));
            if !busy {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), changes.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Waits until nothing runs, or until `deadline`. True if idle.
    pub(crate) async fn idle(&self, deadline: Instant) -> bool {
        let mut changes = self.in_flight.subscribe();
        tokio::time::timeout_at(deadline.into(), changes.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }

    /// Forgets a stopped session's counters.
    pub(crate) fn forget_session(&self, key: &SessionKey) {
        self.lock().remove_session(key);
    }

    /// Counters per processor, summed over tenants.
    pub(crate) fn processor_stats(&self) -> BTreeMap<String, ProcessorStats> {
        let inner = self.lock();
        let mut total: BTreeMap<String, ProcessorStats> = BTreeMap::new();
        for processors in inner.tenants.values() {
            for (name, stats) in processors {
                total.entry(name.clone()).or_default().add(stats);
            }
        }
        total
    }

    /// Counters per tenant, then processor.
    /// The counters of each version of `name` kept, in the order each first ran.
    pub(crate) fn version_stats(&self, name: &str) -> Vec<VersionStats> {
        self.lock().versions.get(name).cloned().unwrap_or_default()
    }

    pub(crate) fn tenant_stats(&self) -> BTreeMap<String, BTreeMap<String, ProcessorStats>> {
        self.lock()
            .tenants
            .iter()
            .map(|(tenant, processors)| (tenant.to_string(), processors.clone()))
            .collect()
    }

    pub(crate) fn session_stats(&self, key: &SessionKey) -> Option<SessionStats> {
        self.lock().sessions.get(key).cloned()
    }

    pub(crate) fn sessions(&self) -> Vec<SessionStats> {
        self.sessions_of(None)
    }

    /// The sessions of `tenant` (every tenant's if `None`), sorted; only those are cloned.
    pub(crate) fn sessions_of(&self, tenant: Option<&str>) -> Vec<SessionStats> {
        let mut sessions: Vec<SessionStats> = self
            .lock()
            .sessions
            .values()
            .filter(|s| tenant.is_none_or(|t| s.tenant == t))
            .cloned()
            .collect();
        sessions.sort_by(|a, b| (&a.tenant, &a.session).cmp(&(&b.tenant, &b.session)));
        sessions
    }

    pub(crate) fn running(&self) -> usize {
        self.lock().running.len()
    }

    #[cfg(feature = "redis")]
    /// Keeps a journal of what changes from now on, for [`Activity::take_journal`].
    pub(crate) fn keep_journal(&self) {
        let mut inner = self.lock();
        if inner.journal.is_none() {
            inner.journal = Some(Journal::default());
        }
    }

    #[cfg(feature = "redis")]
    /// What changed since the journal was last taken; `None` if nothing did (or no journal
    /// is kept).
    pub(crate) fn take_journal(&self) -> Option<Journal> {
        let mut inner = self.lock();
        let journal = inner.journal.as_mut()?;
        if journal.is_empty() {
            return None;
        }
        Some(std::mem::take(journal))
    }

    #[cfg(feature = "redis")]
    /// Puts back a journal taken but not written (Redis failed): its changes count with
    /// the next.
    pub(crate) fn restore_journal(&self, older: Journal) {
        if let Some(journal) = self.lock().journal.as_mut() {
            journal.absorb(older);
        }
    }

    #[cfg(feature = "redis")]
    /// What runs now; `None` if nothing started or ended since the last call.
    pub(crate) fn live(&self) -> Option<Live> {
        let mut inner = self.lock();
        if !std::mem::take(&mut inner.live_changed) {
            return None;
        }
        let mut live = Live::default();
        for (tenant, processors) in &inner.tenants {
            let running: BTreeMap<String, u64> = processors
                .iter()
                .filter(|(_, stats)| stats.running > 0)
                .map(|(name, stats)| (name.clone(), stats.running))
                .collect();
            if !running.is_empty() {
                live.processors.insert(tenant.to_string(), running);
            }
        }
        // Only the sessions of what runs now: the executions in flight name them (however
        // many idle sessions this process remembers).
        let busy: std::collections::HashSet<&SessionKey> = inner
            .running
            .values()
            .filter_map(|running| running.session.as_ref())
            .collect();
        for key in busy {
            let Some(session) = inner.sessions.get(key) else {
                continue;
            };
            let running: BTreeMap<String, u64> = session
                .processors
                .iter()
                .filter(|(_, counts)| counts.running > 0)
                .map(|(name, counts)| (name.clone(), counts.running))
                .collect();
            live.sessions
                .entry(key.tenant.clone())
                .or_default()
                .insert(key.session.clone(), running);
        }
        Some(live)
    }

    #[cfg(feature = "redis")]
    /// Counts a step of the life of `name` (a workflow whose steps run as jobs, so that
    /// no one process runs it whole) in its tenant's and session's counters. Nothing is
    /// counted as running.
    pub(crate) fn tally(
        &self,
        tenant: &Arc<str>,
        name: &str,
        session: Option<&SessionKey>,
        tally: Tally,
    ) {
        let now = now_ms();
        let mut inner = self.lock();
        let processors = match inner.tenants.get_mut(&**tenant) {
            Some(processors) => processors,
            None => inner.tenants.entry(tenant.clone()).or_default(),
        };
        let stats = match processors.get_mut(name) {
            Some(stats) => stats,
            None => processors.entry(name.to_string()).or_default(),
        };
        match tally {
            Tally::Started => stats.started += 1,
            Tally::Ended(outcome) => stats.finish(outcome),
        }
        if let Some(key) = session {
            inner.sweep_now_and_then(self.idle_ms(), now);
            let entry = inner.session_entry(key, now);
            entry.last_activity_ms = now;
            let counts = match entry.processors.get_mut(name) {
                Some(counts) => counts,
                None => entry.processors.entry(name.to_string()).or_default(),
            };
            match tally {
                Tally::Started => {
                    counts.executions += 1;
                    entry.executions += 1;
                }
                Tally::Ended(outcome) if !outcome.ok => {
                    counts.failed += 1;
                    entry.failed += 1;
                }
                Tally::Ended(_) => {}
            }
        }
        if let Some(journal) = inner.journal.as_mut() {
            match tally {
                Tally::Started => journal.started(tenant, name, session),
                Tally::Ended(outcome) => journal.ended(tenant, name, session, outcome),
            }
        }
    }

    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_their_buckets_and_give_quantiles() {
        let mut stats = ProcessorStats::default();
        assert_eq!(stats.duration_quantile_us(0.5), None);
        for us in [40, 50, 51, 900, 900, 900, 900, 900, 3_000, 9_000_000_000] {
            stats.observe(Duration::from_micros(us));
        }
        let bucket = |bound: u64| {
            DURATION_BUCKETS_US
                .iter()
                .position(|b| *b == bound)
                .unwrap()
        };
        assert_eq!(stats.duration_buckets[bucket(40)], 1);
        assert_eq!(stats.duration_buckets[bucket(50)], 1);
        assert_eq!(
            stats.duration_buckets[bucket(60)],
            1,
            "51 µs is within 60 µs"
        );
        assert_eq!(
            stats.duration_buckets[bucket(1_000)],
            5,
            "900 µs is within 1 ms"
        );
        assert_eq!(
            stats.duration_buckets[DURATION_BUCKETS_US.len()],
            1,
            "past the last bound"
        );
        assert_eq!(stats.duration_quantile_us(0.5), Some(1_000));
        assert_eq!(stats.duration_quantile_us(0.9), Some(3_000));
        assert_eq!(
            stats.duration_quantile_us(1.0),
            None,
            "the slowest is past the last bound"
        );
        assert_eq!(stats.duration_quantile_us(0.0), Some(40));
        assert_eq!(
            stats.total_duration_us,
            40 + 50 + 51 + 4_500 + 3_000 + 9_000_000_000
        );
        // Only the buckets that count something are written out.
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(
            json["durationBuckets"],
            serde_json::json!({"40": 1, "50": 1, "60": 1, "1000": 5, "3000": 1, "inf": 1})
        );
    }

    #[test]
    fn duration_bounds_rise_by_at_most_a_third() {
        assert_eq!(DURATION_BUCKETS_US[0], 1);
        assert_eq!(DURATION_BUCKETS_US[BOUNDS - 1], 8_000_000_000);
        for pair in DURATION_BUCKETS_US.windows(2) {
            assert!(pair[0] < pair[1], "{pair:?}");
            assert!(
                pair[1] * 3 <= pair[0] * 4 || pair[1] - pair[0] == 1,
                "{pair:?}"
            );
        }
    }

    #[test]
    fn quantiles_are_within_a_third_of_the_true_figure_from_a_microsecond_to_an_hour() {
        let mut fast = ProcessorStats::default();
        for _ in 0..100 {
            fast.observe(Duration::from_micros(15));
        }
        assert_eq!(
            fast.duration_quantile_us(0.5),
            Some(15),
            "15 µs reads 15 µs"
        );
        // A spread of durations: each quantile at or above the true one, by at most a third.
        let mut spread = ProcessorStats::default();
        let durations: Vec<u64> = (1..=1000u64).map(|i| i * i * 3_600).collect();
        for us in &durations {
            spread.observe(Duration::from_micros(*us));
        }
        for q in [0.01, 0.1, 0.5, 0.9, 0.99, 0.999] {
            let rank = ((durations.len() as f64) * q).ceil() as usize;
            let truth = durations[rank - 1];
            let read = spread.duration_quantile_us(q).unwrap_or(u64::MAX);
            assert!(
                read >= truth && read as f64 <= truth as f64 * 4.0 / 3.0,
                "p{q}: read {read} µs for {truth} µs"
            );
        }
    }

    fn bounds(max_per_tenant: usize, idle_expiry: Duration) -> SessionBounds {
        SessionBounds {
            max_per_tenant,
            idle_expiry,
            ..SessionBounds::default()
        }
    }

    #[test]
    fn a_tenant_opens_sessions_up_to_its_cap_and_others_are_unaffected() {
        let activity = Activity::new(bounds(2, Duration::from_secs(3600)));
        let open =
            |tenant: &str, session: &str| activity.open_session(&SessionKey::new(tenant, session));
        assert_eq!(open("t", "a"), Ok(()));
        assert_eq!(open("t", "b"), Ok(()));
        assert_eq!(
            open("t", "c"),
            Err(SessionRefused::TooMany {
                tenant: "t".into(),
                limit: 2
            })
        );
        // An open one opens again; another tenant has its own places.
        assert_eq!(open("t", "a"), Ok(()));
        assert_eq!(open("u", "c"), Ok(()));
        // Stopping one gives its place back.
        activity.forget_session(&SessionKey::new("t", "b"));
        assert_eq!(open("t", "c"), Ok(()));
        assert!(matches!(
            open("t", "a/b"),
            Err(SessionRefused::InvalidId(_))
        ));
        assert_eq!(activity.sessions_of(Some("t")).len(), 2);
        assert_eq!(activity.sessions().len(), 3);
    }

    #[test]
    fn idle_sessions_expire_but_busy_ones_stay() {
        // Expiring at once: a session is idle as soon as nothing runs in it.
        let activity = Activity::new(bounds(2, Duration::ZERO));
        let cancel = CancelHandle::new();
        let tenant: Arc<str> = Arc::from("t");
        let busy = SessionKey::new("t", "busy");
        activity.open_session(&busy).unwrap();
        activity.begin("e1", &tenant, "p", Some(busy.clone()), &cancel);
        activity
            .open_session(&SessionKey::new("t", "idle"))
            .unwrap();
        // Full: the idle one goes, the busy one stays.
        activity.open_session(&SessionKey::new("t", "new")).unwrap();
        let names: Vec<String> = activity
            .sessions_of(Some("t"))
            .into_iter()
            .map(|s| s.session)
            .collect();
        assert_eq!(names, ["busy", "new"]);
        activity.end(
            "e1",
            &Arc::from("t"),
            "p",
            Outcome::timed(true, Duration::ZERO),
        );
        activity
            .open_session(&SessionKey::new("t", "newer"))
            .unwrap();
        assert!(activity.session_stats(&busy).is_none());
    }

    #[test]
    fn counters_follow_executions_and_sessions() {
        let activity = Activity::new(SessionBounds::default());
        let key = SessionKey::new("t", "s");
        let cancel = CancelHandle::new();
        assert!(
            activity
                .begin("1", &Arc::from("t"), "p", Some(key.clone()), &cancel)
                .new_session
        );
        assert!(
            !activity
                .begin("2", &Arc::from("t"), "p", Some(key.clone()), &cancel)
                .new_session
        );
        assert_eq!(activity.running(), 2);
        activity.end(
            "1",
            &Arc::from("t"),
            "p",
            Outcome::timed(true, Duration::from_micros(5)),
        );
        activity.end(
            "2",
            &Arc::from("t"),
            "p",
            Outcome::timed(false, Duration::from_micros(7)),
        );
        let stats = &activity.processor_stats()["p"];
        assert_eq!(
            (stats.started, stats.completed, stats.failed, stats.running),
            (2, 1, 1, 0)
        );
        assert_eq!(stats.total_duration_us, 12);
        let session = activity.session_stats(&key).unwrap();
        assert_eq!(
            (session.executions, session.running, session.failed),
            (2, 0, 1)
        );
    }

    #[test]
    fn a_sessions_counters_are_broken_down_by_processor() {
        let activity = Activity::new(SessionBounds::default());
        let key = SessionKey::new("t", "s");
        let cancel = CancelHandle::new();
        let tenant: Arc<str> = Arc::from("t");
        activity.begin("1", &tenant, "flow", Some(key.clone()), &cancel);
        activity.begin("2", &tenant, "p", Some(key.clone()), &cancel);
        activity.begin("3", &tenant, "q", Some(key.clone()), &cancel);
        activity.end(
            "2",
            &Arc::from("t"),
            "p",
            Outcome::timed(true, Duration::ZERO),
        );
        activity.end(
            "3",
            &Arc::from("t"),
            "q",
            Outcome::timed(false, Duration::ZERO),
        );
        activity.begin("4", &tenant, "p", Some(key.clone()), &cancel);
        let session = activity.session_stats(&key).unwrap();
        let counts = |name: &str| {
            let c = &session.processors[name];
            (c.executions, c.running, c.failed)
        };
        assert_eq!(counts("flow"), (1, 1, 0));
        assert_eq!(counts("p"), (2, 1, 0));
        assert_eq!(counts("q"), (1, 0, 1));
        assert_eq!(session.processors.len(), 3);
        assert_eq!(
            (session.executions, session.running, session.failed),
            (4, 2, 1)
        );
    }

    #[test]
    fn each_version_keeps_its_own_counters_within_its_bounds() {
        let activity = Activity::new(SessionBounds::default());
        let tenant: Arc<str> = Arc::from("t");
        let cancel = CancelHandle::new();
        let end = |id: &str, name: &str, digest: Option<&str>, ok: bool, ms: u64| {
            activity.begin(id, &tenant, name, None, &cancel);
            let outcome = Outcome::timed(ok, Duration::from_millis(ms));
            activity.end_version(id, &tenant, name, digest, outcome);
        };
        end("1", "p", Some("aaa"), true, 1);
        end("2", "p", Some("bbb"), true, 40);
        end("3", "p", Some("bbb"), false, 40);
        // Ended before its unit was resolved: counted by name only.
        end("4", "p", None, false, 0);
        let versions = activity.version_stats("p");
        let rows: Vec<(&str, u64, u64, u64)> = versions
            .iter()
            .map(|v| {
                let s = &v.stats;
                (v.digest.as_str(), s.started, s.completed, s.failed)
            })
            .collect();
        assert_eq!(rows, [("aaa", 1, 1, 0), ("bbb", 2, 1, 1)]);
        assert_eq!(versions[0].stats.duration_quantile_us(0.5), Some(1_000));
        assert_eq!(versions[1].stats.duration_quantile_us(0.5), Some(40_000));
        assert_eq!(activity.processor_stats()["p"].started, 4);
        // A new version past the bound makes the one that first ran longest ago go.
        for n in 0..VERSIONS_KEPT {
            end(&format!("v{n}"), "p", Some(&format!("v{n}")), true, 1);
        }
        let digests: Vec<String> = activity
            .version_stats("p")
            .into_iter()
            .map(|v| v.digest)
            .collect();
        let expected: Vec<String> = (0..VERSIONS_KEPT).map(|n| format!("v{n}")).collect();
        assert_eq!(digests, expected);
        // Names past the bound are counted by name only.
        for n in 1..VERSION_NAMES {
            end(&format!("n{n}"), &format!("n{n}"), Some("d"), true, 1);
        }
        end("last", "last", Some("d"), true, 1);
        assert!(activity.version_stats("last").is_empty());
        assert_eq!(activity.processor_stats()["last"].completed, 1);
    }

    #[test]
    fn cancelling_a_session_reaches_only_its_executions() {
        let activity = Activity::new(SessionBounds::default());
        let mine = CancelHandle::new();
        let other = CancelHandle::new();
        activity.begin(
            "1",
            &Arc::from("t"),
            "p",
            Some(SessionKey::new("t", "a")),
            &mine,
        );
        activity.begin(
            "2",
            &Arc::from("t"),
            "p",
            Some(SessionKey::new("t", "b")),
            &other,
        );
        assert_eq!(activity.cancel_session(&SessionKey::new("t", "a")), 1);
        assert!(mine.is_cancelled());
        assert!(!other.is_cancelled());
        assert!(activity.cancel("2", CancelReason::Request));
        assert!(!activity.cancel("3", CancelReason::Request));
    }

    #[cfg(feature = "redis")]
    #[test]
    fn a_kept_journal_holds_what_changed_since_it_was_last_taken() {
        let activity = Activity::new(SessionBounds::default());
        let tenant: Arc<str> = Arc::from("t");
        let key = SessionKey::new("t", "s");
        let cancel = CancelHandle::new();
        // Nothing is journaled before one is kept.
        activity.begin("0", &tenant, "p", None, &cancel);
        activity.end("0", &tenant, "p", Outcome::timed(true, Duration::ZERO));
        activity.keep_journal();
        assert!(activity.take_journal().is_none());
        activity.begin("1", &tenant, "p", Some(key.clone()), &cancel);
        activity.begin("2", &tenant, "q", Some(key.clone()), &cancel);
        let live = activity.live().expect("work started");
        assert_eq!(live.processors["t"]["p"], 1);
        assert_eq!(live.sessions["t"]["s"]["q"], 1);
        assert!(activity.live().is_none(), "nothing changed since");
        activity.end(
            "1",
            &tenant,
            "p",
            Outcome::timed(true, Duration::from_micros(30)),
        );
        activity.end(
            "2",
            &tenant,
            "q",
            Outcome::timed(false, Duration::from_micros(70)),
        );
        activity.tally(&tenant, "flow", Some(&key), Tally::Started);
        activity.tally(
            &tenant,
            "flow",
            Some(&key),
            Tally::Ended(Outcome {
                ok: false,
                duration: Duration::from_micros(200),
                fuel: 1_000,
                peak_memory: 65_536,
            }),
        );
        let journal = activity.take_journal().expect("work was done");
        let rows = &journal.stats["t"];
        assert_eq!((rows["p"].started, rows["p"].completed), (1, 1));
        assert_eq!((rows["q"].started, rows["q"].failed), (1, 1));
        assert_eq!((rows["flow"].started, rows["flow"].failed), (1, 1));
        assert_eq!(rows["flow"].total_duration_us, 200);
        assert_eq!(
            (
                rows["flow"].fuel_consumed,
                rows["flow"].total_peak_memory_bytes
            ),
            (1_000, 65_536)
        );
        let session = &journal.sessions[&key];
        assert_eq!((session.executions, session.failed), (3, 2));
        assert_eq!(session.processors["flow"].failed, 1);
        assert!(session.first_ms <= session.last_ms);
        assert!(activity.take_journal().is_none(), "taken");
        // A journal that could not be written counts with the next one.
        activity.restore_journal(journal);
        activity.tally(&tenant, "flow", Some(&key), Tally::Started);
        let journal = activity.take_journal().expect("put back");
        assert_eq!(journal.stats["t"]["flow"].started, 2);
        assert_eq!(journal.stats["t"]["p"].completed, 1);
        assert_eq!(journal.sessions[&key].executions, 4);
        assert_eq!(activity.live(), Some(Live::default()), "nothing runs");
        // The workflow's steps count in the process's own counters too, never as running.
        let stats = activity.processor_stats();
        assert_eq!((stats["flow"].started, stats["flow"].running), (2, 0));
        let session = activity.session_stats(&key).unwrap();
        assert_eq!(session.processors["flow"].executions, 2);
    }

    #[tokio::test]
    async fn idle_resolves_when_the_last_execution_ends() {
        let activity = std::sync::Arc::new(Activity::new(SessionBounds::default()));
        activity.begin("1", &Arc::from("t"), "p", None, &CancelHandle::new());
        let waiter = {
            let activity = activity.clone();
            tokio::spawn(
                async move { activity.idle(Instant::now() + Duration::from_secs(5)).await },
            )
        };
        activity.end(
            "1",
            &Arc::from("t"),
            "p",
            Outcome::timed(true, Duration::ZERO),
        );
        assert!(waiter.await.unwrap());
    }
}
