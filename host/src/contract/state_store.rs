//! The state store: each session's state document and key-value data, keyed by (tenant,
//! session) so that a session id chosen by one tenant never reaches another tenant's data.
//!
//! [`StateStore`] is the seam the distributed runtime implements over Redis; the local
//! runtime uses [`MemoryStateStore`]. A session's state is written with compare-and-set on
//! its `metadata.version`, so two writers never silently overwrite each other: the second
//! learns that the state moved and gets a `conflict`. Key-value data is bounded per session
//! so that one guest cannot exhaust the host's memory, and a session that nobody writes for
//! [`SessionBounds::idle_expiry`] is forgotten (the memory store drops it; Redis expires its
//! keys), so that sessions a tenant opens and leaves do not pile up.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::contract::error::{ErrorKind, ExecutionError, codes};

/// Which session: a tenant and the session id it chose.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    /// The tenant.
    pub tenant: String,
    /// The session id within the tenant.
    pub session: String,
}

impl SessionKey {
    /// The key of `session` in `tenant`.
    pub fn new(tenant: impl Into<String>, session: impl Into<String>) -> Self {
        SessionKey {
            tenant: tenant.into(),
            session: session.into(),
        }
    }
}

/// Bounds on sessions themselves: their ids, how many a tenant has, how long an idle one
/// lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionBounds {
    /// Longest session id, in bytes (default 128). Ids are ASCII letters, digits and
    /// `-`, `_`, `.`, `:`, `@`.
    pub max_id_bytes: usize,
    /// Sessions one tenant may have open in one process (default 10,000): one more is
    /// refused with `resource` / `too-many-sessions` until an idle one expires or is
    /// stopped.
    pub max_per_tenant: usize,
    /// A session that runs nothing and is not written for this long is forgotten: its
    /// counters, its state and its key-value data (default 24 hours).
    pub idle_expiry: Duration,
}

impl Default for SessionBounds {
    fn default() -> Self {
        SessionBounds {
            max_id_bytes: 128,
            max_per_tenant: 10_000,
            idle_expiry: Duration::from_secs(24 * 60 * 60),
        }
    }
}

impl SessionBounds {
    /// Checks a session id: 1 to [`Self::max_id_bytes`] bytes of ASCII letters, digits and
    /// `-_.:@`. The error says what a session id may be.
    pub fn check_id(&self, id: &str) -> Result<(), String> {
        let plain = |c: char| c.is_ascii_alphanumeric() || "-_.:@".contains(c);
        if id.is_empty() || id.len() > self.max_id_bytes || !id.chars().all(plain) {
            let shown: String = id.chars().take(40).collect();
            let more = if id.chars().count() > 40 { "…" } else { "" };
            return Err(format!(
                "`{shown}{more}` ({} bytes) is not a session id: one is 1 to {} ASCII letters, \
                 digits and `-_.:@`",
                id.len(),
                self.max_id_bytes
            ));
        }
        Ok(())
    }
}

/// A session's stored state and its revision (`metadata.version`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredState {
    /// The revision; compare-and-set compares it.
    pub version: u64,
    /// The state document (with its `metadata`).
    pub state: Value,
}

/// Bounds on what one session may store in its key-value data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionQuota {
    /// Longest key, in bytes.
    pub max_key_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Total bytes of keys and values per session.
    pub max_session_bytes: usize,
}

impl Default for SessionQuota {
    /// 1 KiB keys, 1 MiB values, 16 MiB per session.
    fn default() -> Self {
        SessionQuota {
            max_key_bytes: 1 << 10,
            max_value_bytes: 1 << 20,
            max_session_bytes: 16 << 20,
        }
    }
}

impl SessionQuota {
    /// Checks one entry against the per-entry bounds.
    pub(crate) fn check_entry(&self, name: &str, value: &[u8]) -> Result<(), ExecutionError> {
        if name.len() > self.max_key_bytes {
            return Err(quota_error(format!(
                "session store keys are at most {} bytes",
                self.max_key_bytes
            )));
        }
        if value.len() > self.max_value_bytes {
            return Err(quota_error(format!(
                "session store values are at most {} bytes",
                self.max_value_bytes
            )));
        }
        Ok(())
    }

    /// The error for a session whose entries would reach `total` bytes.
    pub(crate) fn over_session(&self, total: u64) -> ExecutionError {
        quota_error(format!(
            "this session's store would hold {total} bytes; the limit is {}",
            self.max_session_bytes
        ))
    }
}

fn quota_error(message: String) -> ExecutionError {
    ExecutionError::host(ErrorKind::Resource, codes::QUOTA_EXCEEDED, message)
}

/// Where sessions' state and key-value data live. Implementations must keep tenants apart
/// and make `compare_and_set` atomic. Async, so that remote stores (Redis) fit.
#[async_trait::async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug + 'static {
    /// The session's state, if it has one.
    async fn get(&self, key: &SessionKey) -> Result<Option<StoredState>, ExecutionError>;

    /// Stores `state` if the stored revision is `expected` (`None`: no state yet).
    async fn compare_and_set(
        &self,
        key: &SessionKey,
        expected: Option<u64>,
        state: StoredState,
    ) -> Result<CasOutcome, ExecutionError>;

    /// Removes the session: its state and all its key-value data. Returns whether it had any.
    async fn delete(&self, key: &SessionKey) -> Result<bool, ExecutionError>;

    /// A key-value entry of the session.
    async fn kv_get(&self, key: &SessionKey, name: &str)
    -> Result<Option<Vec<u8>>, ExecutionError>;

    /// Stores a key-value entry; fails with a `resource` / `quota-exceeded` error past the
    /// session's quota.
    async fn kv_set(
        &self,
        key: &SessionKey,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), ExecutionError>;

    /// Removes a key-value entry (a missing one is not an error).
    async fn kv_delete(&self, key: &SessionKey, name: &str) -> Result<(), ExecutionError>;

    /// Every key-value key of the session, sorted.
    async fn kv_keys(&self, key: &SessionKey) -> Result<Vec<String>, ExecutionError>;
}

/// What a compare-and-set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasOutcome {
    /// The state was stored.
    Stored,
    /// Someone else moved the state first; it is at `current` (`None`: no state).
    Conflict {
        /// The revision actually stored.
        current: Option<u64>,
    },
}

#[derive(Debug)]
struct SessionData {
    state: Option<StoredState>,
    kv: BTreeMap<String, Vec<u8>>,
    kv_bytes: usize,
    /// When the session was last written.
    written: Instant,
}

impl Default for SessionData {
    fn default() -> Self {
        SessionData {
            state: None,
            kv: BTreeMap::new(),
            kv_bytes: 0,
            written: Instant::now(),
        }
    }
}

/// The in-process [`StateStore`]: everything in memory, gone with the process. A session
/// not written for the idle expiry is gone too.
#[derive(Debug)]
pub struct MemoryStateStore {
    quota: SessionQuota,
    idle_expiry: Duration,
    data: Mutex<Sessions>,
}

#[derive(Debug)]
struct Sessions {
    by_key: HashMap<SessionKey, SessionData>,
    /// When expired sessions were last swept out.
    swept: Instant,
}

impl Default for MemoryStateStore {
    fn default() -> Self {
        MemoryStateStore::new(SessionQuota::default())
    }
}

impl MemoryStateStore {
    /// An empty store enforcing `quota` on key-value data, whose sessions expire after
    /// [`SessionBounds::idle_expiry`]'s default.
    pub fn new(quota: SessionQuota) -> Self {
        MemoryStateStore {
            quota,
            idle_expiry: SessionBounds::default().idle_expiry,
            data: Mutex::new(Sessions {
                by_key: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// Forgets a session once it has not been written for `idle`.
    pub fn with_idle_expiry(mut self, idle: Duration) -> Self {
        self.idle_expiry = idle;
        self
    }

    /// The sessions, with the expired ones gone (swept at most every tenth of the expiry,
    /// so a write costs O(1) amortized).
    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        let mut sessions = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(sessions.swept) >= self.idle_expiry / 10 {
            let idle = self.idle_expiry;
            sessions
                .by_key
                .retain(|_, s| now.duration_since(s.written) < idle);
            sessions.swept = now;
        }
        sessions
    }

    /// The live session `key`, if any.
    fn live<'a>(&self, sessions: &'a Sessions, key: &SessionKey) -> Option<&'a SessionData> {
        sessions
            .by_key
            .get(key)
            .filter(|s| s.written.elapsed() < self.idle_expiry)
    }

    /// The session `key` to write, a fresh one if it had expired.
    fn written<'a>(
        sessions: &'a mut Sessions,
        key: &SessionKey,
        idle: Duration,
    ) -> &'a mut SessionData {
        let session = sessions.by_key.entry(key.clone()).or_default();
        if session.written.elapsed() >= idle {
            *session = SessionData::default();
        }
        session.written = Instant::now();
        session
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStateStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<StoredState>, ExecutionError> {
        let sessions = self.lock();
        Ok(self.live(&sessions, key).and_then(|s| s.state.clone()))
    }

    async fn compare_and_set(
        &self,
        key: &SessionKey,
        expected: Option<u64>,
        state: StoredState,
    ) -> Result<CasOutcome, ExecutionError> {
        let mut sessions = self.lock();
        let current = self
            .live(&sessions, key)
            .and_then(|s| s.state.as_ref())
            .map(|s| s.version);
        if current != expected {
            return Ok(CasOutcome::Conflict { current });
        }
        Self::written(&mut sessions, key, self.idle_expiry).state = Some(state);
        Ok(CasOutcome::Stored)
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool, ExecutionError> {
        let mut sessions = self.lock();
        let live = self.live(&sessions, key).is_some();
        Ok(sessions.by_key.remove(key).is_some() && live)
    }

    async fn kv_get(
        &self,
        key: &SessionKey,
        name: &str,
    ) -> Result<Option<Vec<u8>>, ExecutionError> {
        let sessions = self.lock();
        Ok(self
            .live(&sessions, key)
            .and_then(|s| s.kv.get(name).cloned()))
    }

    async fn kv_set(
        &self,
        key: &SessionKey,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), ExecutionError> {
        self.quota.check_entry(&name, &value)?;
        let mut sessions = self.lock();
        let session = Self::written(&mut sessions, key, self.idle_expiry);
        let old = session.kv.get(&name).map_or(0, |v| v.len() + name.len());
        let total = session.kv_bytes - old + name.len() + value.len();
        if total > self.quota.max_session_bytes {
            return Err(self.quota.over_session(total as u64));
        }
        session.kv_bytes = total;
        session.kv.insert(name, value);
        Ok(())
    }

    async fn kv_delete(&self, key: &SessionKey, name: &str) -> Result<(), ExecutionError> {
        let mut sessions = self.lock();
        if self.live(&sessions, key).is_some()
            && let Some(session) = sessions.by_key.get_mut(key)
            && let Some(v) = session.kv.remove(name)
        {
            session.kv_bytes -= v.len() + name.len();
        }
        Ok(())
    }

    async fn kv_keys(&self, key: &SessionKey) -> Result<Vec<String>, ExecutionError> {
        let sessions = self.lock();
        Ok(self
            .live(&sessions, key)
            .map(|s| s.kv.keys().cloned().collect())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(tenant: &str, session: &str) -> SessionKey {
        SessionKey::new(tenant, session)
    }

    #[tokio::test]
    async fn tenants_never_see_each_others_sessions() {
        let store = MemoryStateStore::default();
        let (a, b) = (key("a", "s"), key("b", "s"));
        store.kv_set(&a, "k".into(), b"1".to_vec()).await.unwrap();
        assert_eq!(store.kv_get(&a, "k").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.kv_get(&b, "k").await.unwrap(), None);
        assert!(store.kv_keys(&b).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn compare_and_set_refuses_a_stale_writer() {
        let store = MemoryStateStore::default();
        let k = key("t", "s");
        let v1 = StoredState {
            version: 1,
            state: json!({"n": 1}),
        };
        let v2 = StoredState {
            version: 2,
            state: json!({"n": 2}),
        };
        assert_eq!(
            store.compare_and_set(&k, None, v1.clone()).await.unwrap(),
            CasOutcome::Stored
        );
        assert_eq!(
            store.compare_and_set(&k, None, v1.clone()).await.unwrap(),
            CasOutcome::Conflict { current: Some(1) }
        );
        assert_eq!(
            store
                .compare_and_set(&k, Some(1), v2.clone())
                .await
                .unwrap(),
            CasOutcome::Stored
        );
        assert_eq!(
            store.compare_and_set(&k, Some(1), v1).await.unwrap(),
            CasOutcome::Conflict { current: Some(2) }
        );
        assert_eq!(store.get(&k).await.unwrap(), Some(v2));
    }

    #[test]
    fn session_ids_are_short_and_plain() {
        let bounds = SessionBounds::default();
        for good in ["s", "user-42.cart_7:eu", "a@b", &"x".repeat(128)] {
            assert_eq!(bounds.check_id(good), Ok(()), "{good}");
        }
        for bad in ["", "a/b", "a b", "é", "a\nb", &"x".repeat(129)] {
            let why = bounds.check_id(bad).unwrap_err();
            assert!(why.contains("is not a session id"), "{why}");
            assert!(why.len() < 200, "{why}");
        }
    }

    #[tokio::test]
    async fn a_session_not_written_for_its_idle_expiry_is_gone() {
        let key = key("t", "s");
        let kept = MemoryStateStore::new(SessionQuota::default());
        let gone = MemoryStateStore::new(SessionQuota::default()).with_idle_expiry(Duration::ZERO);
        for store in [&kept, &gone] {
            let stored = StoredState {
                version: 1,
                state: serde_json::json!({}),
            };
            assert_eq!(
                store.compare_and_set(&key, None, stored).await.unwrap(),
                CasOutcome::Stored
            );
            store.kv_set(&key, "k".into(), b"v".to_vec()).await.unwrap();
        }
        assert!(kept.get(&key).await.unwrap().is_some());
        assert_eq!(kept.kv_keys(&key).await.unwrap(), ["k"]);
        assert_eq!(gone.get(&key).await.unwrap(), None);
        assert_eq!(gone.kv_get(&key, "k").await.unwrap(), None);
        assert!(gone.kv_keys(&key).await.unwrap().is_empty());
        // Expired, it starts again from nothing (no conflict with what it held).
        let stored = StoredState {
            version: 1,
            state: serde_json::json!({}),
        };
        assert_eq!(
            gone.compare_and_set(&key, None, stored).await.unwrap(),
            CasOutcome::Stored
        );
        assert!(
            !gone.delete(&key).await.unwrap(),
            "an expired session holds nothing"
        );
    }

    #[tokio::test]
    async fn deleting_a_session_removes_its_state_and_data() {
        let store = MemoryStateStore::default();
        let k = key("t", "s");
        store.kv_set(&k, "a".into(), vec![1]).await.unwrap();
        let state = StoredState {
            version: 1,
            state: json!({}),
        };
        store.compare_and_set(&k, None, state).await.unwrap();
        assert!(store.delete(&k).await.unwrap());
        assert_eq!(store.get(&k).await.unwrap(), None);
        assert_eq!(store.kv_get(&k, "a").await.unwrap(), None);
        assert!(!store.delete(&k).await.unwrap());
    }

    #[tokio::test]
    async fn quotas_are_enforced_and_freed_space_is_reusable() {
        let store = MemoryStateStore::new(SessionQuota {
            max_key_bytes: 4,
            max_value_bytes: 8,
            max_session_bytes: 12,
        });
        let k = key("t", "s");
        assert!(store.kv_set(&k, "long-key".into(), vec![]).await.is_err());
        assert!(store.kv_set(&k, "k".into(), vec![0; 9]).await.is_err());
        store.kv_set(&k, "k1".into(), vec![0; 8]).await.unwrap();
        let err = store.kv_set(&k, "k2".into(), vec![0; 8]).await.unwrap_err();
        assert!(err.has_code(codes::QUOTA_EXCEEDED));
        store.kv_delete(&k, "k1").await.unwrap();
        store.kv_set(&k, "k2".into(), vec![0; 8]).await.unwrap();
        assert_eq!(store.kv_keys(&k).await.unwrap(), vec!["k2".to_string()]);
    }
}
