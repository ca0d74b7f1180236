//! The in-process session key-value store behind the `session-store` import. Data is keyed
//! by (tenant, session), so a session id chosen by one tenant never reaches another
//! tenant's data. Sizes are bounded so that one guest cannot exhaust the host's memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::error::{ErrorKind, ExecutionError, codes};

/// Bounds on what one session may store.
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

#[derive(Default)]
struct SessionData {
    entries: BTreeMap<String, Vec<u8>>,
    bytes: usize,
}

/// Session data of every tenant, in memory.
#[derive(Default)]
pub(crate) struct SessionStore {
    quota: SessionQuota,
    data: Mutex<HashMap<(String, String), SessionData>>,
}

impl SessionStore {
    pub(crate) fn new(quota: SessionQuota) -> Self {
        SessionStore {
            quota,
            data: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), SessionData>> {
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(tenant: &str, session: &str) -> (String, String) {
        (tenant.to_string(), session.to_string())
    }

    pub(crate) fn get(&self, tenant: &str, session: &str, key: &str) -> Option<Vec<u8>> {
        self.lock()
            .get(&Self::key(tenant, session))
            .and_then(|s| s.entries.get(key).cloned())
    }

    pub(crate) fn set(
        &self,
        tenant: &str,
        session: &str,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), ExecutionError> {
        let quota = |message: String| {
            ExecutionError::host(ErrorKind::Resource, codes::QUOTA_EXCEEDED, message)
        };
        if key.len() > self.quota.max_key_bytes {
            return Err(quota(format!(
                "session store keys are at most {} bytes",
                self.quota.max_key_bytes
            )));
        }
        if value.len() > self.quota.max_value_bytes {
            return Err(quota(format!(
                "session store values are at most {} bytes",
                self.quota.max_value_bytes
            )));
        }
        let mut data = self.lock();
        let session_data = data.entry(Self::key(tenant, session)).or_default();
        let old = session_data
            .entries
            .get(&key)
            .map_or(0, |v| v.len() + key.len());
        let new_total = session_data.bytes - old + key.len() + value.len();
        if new_total > self.quota.max_session_bytes {
            return Err(quota(format!(
                "this session's store would hold {new_total} bytes; the limit is {}",
                self.quota.max_session_bytes
            )));
        }
        session_data.bytes = new_total;
        session_data.entries.insert(key, value);
        Ok(())
    }

    pub(crate) fn delete(&self, tenant: &str, session: &str, key: &str) {
        let mut data = self.lock();
        if let Some(s) = data.get_mut(&Self::key(tenant, session))
            && let Some(v) = s.entries.remove(key)
        {
            s.bytes -= v.len() + key.len();
        }
    }

    pub(crate) fn keys(&self, tenant: &str, session: &str) -> Vec<String> {
        self.lock()
            .get(&Self::key(tenant, session))
            .map(|s| s.entries.keys().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_never_see_each_others_sessions() {
        let store = SessionStore::default();
        store.set("a", "s", "k".into(), b"1".to_vec()).unwrap();
        assert_eq!(store.get("a", "s", "k"), Some(b"1".to_vec()));
        assert_eq!(store.get("b", "s", "k"), None);
        assert!(store.keys("b", "s").is_empty());
    }

    #[test]
    fn quotas_are_enforced_and_freed_space_is_reusable() {
        let store = SessionStore::new(SessionQuota {
            max_key_bytes: 4,
            max_value_bytes: 8,
            max_session_bytes: 12,
        });
        assert!(store.set("t", "s", "long-key".into(), vec![]).is_err());
        assert!(store.set("t", "s", "k".into(), vec![0; 9]).is_err());
        store.set("t", "s", "k1".into(), vec![0; 8]).unwrap();
        let err = store.set("t", "s", "k2".into(), vec![0; 8]).unwrap_err();
        assert!(err.has_code(codes::QUOTA_EXCEEDED));
        store.delete("t", "s", "k1");
        store.set("t", "s", "k2".into(), vec![0; 8]).unwrap();
        assert_eq!(store.keys("t", "s"), vec!["k2".to_string()]);
    }
}
