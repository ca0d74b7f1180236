//! [`RedisStateStore`]: sessions' state and key-value data in Redis, shared by every process
//! that points at the same server — the state store of the distributed runtime, usable on
//! its own by a local runtime too.
//!
//! Layout (all keys under weir's own namespace `{prefix}:_:`, `weir:_:` by default; tenant
//! and session are length-prefixed so that no choice of names can make two sessions share a
//! key):
//! - `weir:_:state:{len}:{tenant}:{session}` — a hash: `version`, `sha256`, `state`;
//! - `weir:_:kv:{len}:{tenant}:{session}` — a hash of the key-value entries;
//! - `weir:_:kvbytes:{len}:{tenant}:{session}` — the bytes those entries hold.
//!
//! Every write of the state or of an entry sets the expiry of all three keys to the
//! session's idle expiry ([`crate::SessionBounds::idle_expiry`], 24 hours by default), so a
//! session nobody writes for that long leaves nothing behind in Redis.
//!
//! Writes of the state are compare-and-set on its version, done atomically by a Lua script
//! (`lua/state_cas.lua`): a writer that started from a stale revision is told so and never
//! overwrites. Each stored state carries the SHA-256 of its RFC 8785 canonical JSON; a state
//! whose bytes no longer match it (edited or corrupted behind weir's back) is reported as an
//! error, not returned. A Redis that cannot be reached is a retryable `network` error.

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::contract::error::{Error, ErrorKind, ExecutionError, codes};
use crate::contract::state_store::{CasOutcome, SessionKey, SessionQuota, StateStore, StoredState};
use crate::distributed::{Keys, RedisConfig, connect};

/// Sessions' state and key-value data in Redis. Cheap to clone (one multiplexed connection
/// that reconnects by itself).
#[derive(Clone)]
pub struct RedisStateStore {
    connection: ConnectionManager,
    prefix: String,
    quota: SessionQuota,
    /// The sessions' idle expiry, in milliseconds.
    idle_ms: u64,
    cas: redis::Script,
    kv_set: redis::Script,
    kv_delete: redis::Script,
}

impl std::fmt::Debug for RedisStateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStateStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStateStore {
    /// Connects to Redis. Fails with [`Error::Redis`] when the server cannot be reached
    /// within the connect timeout.
    pub async fn connect(config: &RedisConfig, quota: SessionQuota) -> Result<Self, Error> {
        let connection = connect(config).await?;
        Ok(RedisStateStore {
            connection,
            prefix: Keys::new(&config.prefix).own(""),
            quota,
            idle_ms: crate::contract::clock::millis(
                crate::contract::state_store::SessionBounds::default().idle_expiry,
            ),
            cas: redis::Script::new(include_str!("lua/state_cas.lua")),
            kv_set: redis::Script::new(include_str!("lua/kv_set.lua")),
            kv_delete: redis::Script::new(include_str!("lua/kv_delete.lua")),
        })
    }

    /// Expires a session's keys once they have not been written for `idle` (at least 1 ms).
    pub fn with_idle_expiry(mut self, idle: std::time::Duration) -> Self {
        // Redis refuses an expiry past its clock's range: a thousand years is "never".
        self.idle_ms = crate::contract::clock::millis(idle).clamp(1, 1 << 45);
        self
    }

    fn key(&self, kind: &str, session: &SessionKey) -> String {
        format!(
            "{}{kind}:{}:{}:{}",
            self.prefix,
            session.tenant.len(),
            session.tenant,
            session.session
        )
    }
}

/// A failed Redis command, as the execution that needed it sees it.
fn unavailable(error: redis::RedisError) -> ExecutionError {
    ExecutionError::host(
        ErrorKind::Network,
        codes::STORE_UNAVAILABLE,
        format!("the state store (Redis) failed: {error}"),
    )
    .retryable(true)
}

/// SHA-256 (hex) of `state`'s RFC 8785 canonical JSON.
pub(crate) fn canonical_sha256(state: &Value) -> Result<String, ExecutionError> {
    let canonical = serde_json_canonicalizer::to_vec(state).map_err(|e| {
        ExecutionError::host(
            ErrorKind::Execution,
            codes::STATE_CORRUPTED,
            format!("the state cannot be canonicalized: {e}"),
        )
    })?;
    Ok(hex::encode(Sha256::digest(&canonical)))
}

#[async_trait::async_trait]
impl StateStore for RedisStateStore {
    async fn get(&self, key: &SessionKey) -> Result<Option<StoredState>, ExecutionError> {
        let mut connection = self.connection.clone();
        let (version, sha256, state): (Option<u64>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(self.key("state", key))
                .arg(&["version", "sha256", "state"])
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
        let (Some(version), Some(sha256), Some(state)) = (version, sha256, state) else {
            return Ok(None);
        };
        let corrupted = |why: String| {
            ExecutionError::host(
                ErrorKind::Execution,
                codes::STATE_CORRUPTED,
                format!(
                    "the stored state of session `{}` fails its integrity check ({why}); it \
                     was changed outside weir — stop the session or restore the state",
                    key.session
                ),
            )
        };
        let state: Value =
            serde_json::from_str(&state).map_err(|e| corrupted(format!("not JSON: {e}")))?;
        if canonical_sha256(&state)? != sha256 {
            return Err(corrupted("its SHA-256 does not match".into()));
        }
        Ok(Some(StoredState { version, state }))
    }

    async fn compare_and_set(
        &self,
        key: &SessionKey,
        expected: Option<u64>,
        state: StoredState,
    ) -> Result<CasOutcome, ExecutionError> {
        let sha256 = canonical_sha256(&state.state)?;
        let mut connection = self.connection.clone();
        let expected = expected.map_or(String::new(), |v| v.to_string());
        let reply: Vec<String> = self
            .cas
            .key(self.key("state", key))
            .key(self.key("kv", key))
            .key(self.key("kvbytes", key))
            .arg(expected)
            .arg(state.version)
            .arg(sha256)
            .arg(state.state.to_string())
            .arg(self.idle_ms)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [stored] if stored == "1" => Ok(CasOutcome::Stored),
            [_, current] => Ok(CasOutcome::Conflict {
                current: current.parse().ok(),
            }),
            _ => Ok(CasOutcome::Conflict { current: None }),
        }
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool, ExecutionError> {
        let mut connection = self.connection.clone();
        let removed: u64 = connection
            .del(&[
                self.key("state", key),
                self.key("kv", key),
                self.key("kvbytes", key),
            ])
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }

    async fn kv_get(
        &self,
        key: &SessionKey,
        name: &str,
    ) -> Result<Option<Vec<u8>>, ExecutionError> {
        let mut connection = self.connection.clone();
        connection
            .hget(self.key("kv", key), name)
            .await
            .map_err(unavailable)
    }

    async fn kv_set(
        &self,
        key: &SessionKey,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), ExecutionError> {
        self.quota.check_entry(&name, &value)?;
        let mut connection = self.connection.clone();
        let (stored, total): (u8, u64) = self
            .kv_set
            .key(self.key("kv", key))
            .key(self.key("kvbytes", key))
            .key(self.key("state", key))
            .arg(&name)
            .arg(value)
            .arg(self.quota.max_session_bytes)
            .arg(self.idle_ms)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        if stored == 1 {
            Ok(())
        } else {
            Err(self.quota.over_session(total))
        }
    }

    async fn kv_delete(&self, key: &SessionKey, name: &str) -> Result<(), ExecutionError> {
        let mut connection = self.connection.clone();
        let _: u8 = self
            .kv_delete
            .key(self.key("kv", key))
            .key(self.key("kvbytes", key))
            .arg(name)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn kv_keys(&self, key: &SessionKey) -> Result<Vec<String>, ExecutionError> {
        let mut connection = self.connection.clone();
        let mut keys: Vec<String> = connection
            .hkeys(self.key("kv", key))
            .await
            .map_err(unavailable)?;
        keys.sort();
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_checksum_ignores_key_order_and_formatting() {
        let a = canonical_sha256(&json!({"b": 1, "a": [1.0, "x"]})).unwrap();
        let b: Value = serde_json::from_str(r#"{ "a" : [1.0,"x"], "b":1 }"#).unwrap();
        assert_eq!(a, canonical_sha256(&b).unwrap());
        assert_ne!(
            a,
            canonical_sha256(&json!({"b": 2, "a": [1.0, "x"]})).unwrap()
        );
    }
}
