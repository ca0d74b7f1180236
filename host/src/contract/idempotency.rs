//! Idempotent submits: what an idempotency key is, how long it stands for its request, and
//! what identifies "the same request" (its fingerprint). Both runtimes keep keys by these
//! rules: the local one in a bounded table in memory (`runtime/idempotency.rs`), the
//! distributed one in Redis beside the run's record, claimed in the same script that opens
//! it, so two servers receiving one key at once start one run.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::contract::error::{ErrorKind, ExecutionError, codes};

/// The bounds on idempotency keys, with their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyBounds {
    /// Longest key, in bytes (default 255). A key is visible ASCII (no spaces or control
    /// characters).
    pub max_key_bytes: usize,
    /// How long a key stands for its request (default 24 hours): within it, the same key
    /// returns the same run and its outcome; after it, the key runs its request again.
    pub window: Duration,
    /// Keys the local runtime holds at once per tenant (default 10,000); one more is
    /// refused with `resource` / `too-many-idempotency-keys` until one's window ends.
    pub max_keys_per_tenant: usize,
    /// Keys the local runtime holds at once over all tenants (default 100,000).
    pub max_keys: usize,
    /// Bytes of outcomes the local runtime keeps for its keys (default 64 MiB): past it the
    /// oldest outcomes are forgotten (their keys still never run twice; a repeat gets
    /// `conflict` / `idempotent-outcome-gone`). The distributed runtime keeps outcomes in
    /// the runs' records (`RedisConfig::run_retention`).
    pub max_kept_bytes: usize,
}

impl Default for IdempotencyBounds {
    fn default() -> Self {
        IdempotencyBounds {
            max_key_bytes: 255,
            window: Duration::from_secs(24 * 60 * 60),
            max_keys_per_tenant: 10_000,
            max_keys: 100_000,
            max_kept_bytes: 64 << 20,
        }
    }
}

impl IdempotencyBounds {
    /// Checks a key: 1 to [`Self::max_key_bytes`] bytes of visible ASCII. The error says
    /// what a key may be.
    pub fn check_key(&self, key: &str) -> Result<(), String> {
        let visible = |b: u8| (0x21..=0x7e).contains(&b);
        if key.is_empty() || key.len() > self.max_key_bytes || !key.bytes().all(visible) {
            let shown: String = key.chars().take(40).collect();
            let more = if key.chars().count() > 40 { "…" } else { "" };
            return Err(format!(
                "the idempotency key `{}{more}` is not one: use 1 to {} bytes of visible \
                 ASCII (no spaces), e.g. a UUID",
                shown.escape_debug(),
                self.max_key_bytes
            ));
        }
        Ok(())
    }
}

/// The refusal of `key` sent with another request than that of run `run`, its window
/// being `window`.
pub(crate) fn key_reused(key: &str, run: &str, window: Duration) -> ExecutionError {
    ExecutionError::host(
        ErrorKind::Conflict,
        codes::IDEMPOTENCY_KEY_REUSED,
        format!(
            "idempotency key `{key}` was used for another request (run `{run}`): a key \
             stands for one request (processor, input and session) for {} s; use a new key",
            window.as_secs()
        ),
    )
    .with_details(serde_json::json!({ "run": run }))
}

/// What makes two requests "the same" for a key: the processor, the input and the session
/// (SHA-256, hex). A key sent again with another fingerprint is refused, not run.
pub(crate) fn fingerprint(
    processor: &str,
    input: &serde_json::Value,
    session: Option<&str>,
) -> String {
    let mut hash = Sha256::new();
    hash.update(processor.as_bytes());
    hash.update([0]);
    hash.update(session.unwrap_or("").as_bytes());
    hash.update([0]);
    // Serialising plain data into a hasher cannot fail.
    let _ = serde_json::to_writer(HashWriter(&mut hash), input);
    hex::encode(hash.finalize())
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_key_is_visible_ascii_within_its_length() {
        let bounds = IdempotencyBounds::default();
        assert!(bounds.check_key("order-42:retry_1").is_ok());
        assert!(bounds.check_key(&"k".repeat(255)).is_ok());
        for bad in ["", "with space", "tab\t", "é", &"k".repeat(256)] {
            let why = bounds.check_key(bad).expect_err(bad);
            assert!(why.contains("visible ASCII"), "{why}");
        }
    }

    #[test]
    fn the_same_request_has_one_fingerprint_and_any_change_another() {
        let one = fingerprint("p", &json!({"a": 1}), None);
        assert_eq!(one, fingerprint("p", &json!({"a": 1}), None));
        assert_ne!(one, fingerprint("q", &json!({"a": 1}), None));
        assert_ne!(one, fingerprint("p", &json!({"a": 2}), None));
        assert_ne!(one, fingerprint("p", &json!({"a": 1}), Some("s")));
        // The same object with its keys in another order is the same request.
        let ab: serde_json::Value =
            serde_json::from_str(r#"{"a": 1, "b": {"c": 2, "d": 3}}"#).unwrap();
        let ba: serde_json::Value =
            serde_json::from_str(r#"{"b": {"d": 3, "c": 2}, "a": 1}"#).unwrap();
        assert_eq!(fingerprint("p", &ab, None), fingerprint("p", &ba, None));
    }
}
