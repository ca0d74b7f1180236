//! Retry policies: how many attempts, how long to wait between them, and which failures are
//! worth another attempt (the contract's defaults plus a processor's own list).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::contract::error::{ErrorKind, ExecutionError, codes};

/// The wait between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "type"
)]
pub enum Backoff {
    /// The same delay before every retry.
    Fixed {
        /// Delay in milliseconds.
        delay_ms: u64,
    },
    /// A delay that doubles after every attempt, up to a maximum.
    Exponential {
        /// Delay before the first retry, in milliseconds.
        initial_ms: u64,
        /// Largest single delay, in milliseconds.
        max_ms: u64,
    },
}

/// When and how a failed execution is tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Total attempts including the first; 1 never retries.
    pub max_attempts: u32,
    /// The wait between attempts.
    pub backoff: Backoff,
    /// Randomise each wait between half and all of it.
    pub jitter: bool,
    /// Kinds retried in addition to the defaults.
    pub retry_on: Vec<ErrorKind>,
}

impl Default for RetryPolicy {
    /// A single attempt.
    fn default() -> Self {
        RetryPolicy::NONE
    }
}

impl RetryPolicy {
    /// One attempt, no retries.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        backoff: Backoff::Fixed { delay_ms: 0 },
        jitter: false,
        retry_on: Vec::new(),
    };

    /// Whether `error` deserves another attempt under this policy.
    ///
    /// Never: exhausted fuel, memory or output size, `validation`, `business`,
    /// `configuration` and `cancelled`. Otherwise: `timeout`, `network`, quota errors,
    /// anything marked retryable, and the policy's own `retry_on` kinds.
    pub fn should_retry(&self, error: &ExecutionError) -> bool {
        let never_codes = [
            codes::FUEL_EXHAUSTED,
            codes::MEMORY_LIMIT,
            codes::OUTPUT_TOO_LARGE,
            codes::STACK_OVERFLOW,
        ];
        if never_codes.iter().any(|c| error.has_code(c)) {
            return false;
        }
        if matches!(
            error.kind,
            ErrorKind::Validation
                | ErrorKind::Business
                | ErrorKind::Configuration
                | ErrorKind::Cancelled
        ) {
            return false;
        }
        matches!(error.kind, ErrorKind::Timeout | ErrorKind::Network)
            || error.has_code(codes::QUOTA_EXCEEDED)
            || error.retryable
            || self.retry_on.contains(&error.kind)
    }

    /// How many attempts an execution gets: the policy's, lowered by the caller's cap.
    pub(crate) fn attempts_allowed(&self, cap: Option<u32>) -> u32 {
        cap.map_or(self.max_attempts, |cap| cap.min(self.max_attempts))
    }

    /// Whether, after `attempts` attempts of at most `max_attempts` ended in `error`, another
    /// is due, and after what wait: not when the error is not retried, the attempts are used
    /// up, the execution was cancelled, or the wait would end past `deadline`.
    pub(crate) fn retry_after(
        &self,
        attempts: u32,
        max_attempts: u32,
        error: &ExecutionError,
        cancel: &crate::contract::cancel::CancelHandle,
        deadline: Option<std::time::Instant>,
    ) -> Option<Duration> {
        if attempts >= max_attempts || cancel.is_cancelled() || !self.should_retry(error) {
            return None;
        }
        let delay = self.delay_before(attempts + 1);
        if deadline.is_some_and(|d| std::time::Instant::now() + delay >= d) {
            return None;
        }
        Some(delay)
    }

    /// The wait before attempt `next_attempt` (2 for the first retry).
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let retries_so_far = next_attempt.saturating_sub(2);
        let ms = match self.backoff {
            Backoff::Fixed { delay_ms } => delay_ms,
            Backoff::Exponential { initial_ms, max_ms } => initial_ms
                .saturating_mul(1u64.checked_shl(retries_so_far).unwrap_or(u64::MAX))
                .min(max_ms),
        };
        let ms = if self.jitter && ms > 1 {
            fastrand::u64(ms / 2..=ms)
        } else {
            ms
        };
        Duration::from_millis(ms)
    }

    /// Checks that the policy makes sense.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("`max_attempts` must be at least 1".into());
        }
        if self.max_attempts > 100 {
            return Err("`max_attempts` must be at most 100".into());
        }
        if let Backoff::Exponential { initial_ms, max_ms } = self.backoff
            && max_ms < initial_ms
        {
            return Err("`max_backoff_ms` must not be smaller than `backoff_ms`".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(kind: ErrorKind, code: Option<&str>, retryable: bool) -> ExecutionError {
        ExecutionError {
            kind,
            code: code.map(str::to_string),
            message: String::new(),
            retryable,
            details: None,
        }
    }

    #[test]
    fn defaults_retry_timeouts_network_quotas_and_retryable_errors() {
        let p = RetryPolicy::NONE;
        assert!(p.should_retry(&error(ErrorKind::Timeout, None, false)));
        assert!(p.should_retry(&error(ErrorKind::Network, None, false)));
        assert!(p.should_retry(&error(
            ErrorKind::Resource,
            Some(codes::QUOTA_EXCEEDED),
            false
        )));
        assert!(p.should_retry(&error(ErrorKind::Execution, None, true)));
        assert!(!p.should_retry(&error(ErrorKind::Execution, None, false)));
    }

    #[test]
    fn exhausted_limits_and_caller_errors_are_never_retried() {
        let p = RetryPolicy {
            retry_on: ErrorKind::ALL.to_vec(),
            ..RetryPolicy::NONE
        };
        for code in [
            codes::FUEL_EXHAUSTED,
            codes::MEMORY_LIMIT,
            codes::OUTPUT_TOO_LARGE,
        ] {
            assert!(!p.should_retry(&error(ErrorKind::Resource, Some(code), true)));
        }
        for kind in [
            ErrorKind::Validation,
            ErrorKind::Business,
            ErrorKind::Configuration,
        ] {
            assert!(!p.should_retry(&error(kind, None, true)));
        }
    }

    #[test]
    fn exponential_backoff_doubles_up_to_its_maximum() {
        let p = RetryPolicy {
            max_attempts: 10,
            backoff: Backoff::Exponential {
                initial_ms: 100,
                max_ms: 350,
            },
            jitter: false,
            retry_on: vec![],
        };
        let delays: Vec<_> = (2..=5).map(|n| p.delay_before(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        assert_eq!(p.delay_before(70).as_millis(), 350);
    }

    #[test]
    fn jitter_stays_between_half_and_all_of_the_delay() {
        let p = RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Fixed { delay_ms: 1000 },
            jitter: true,
            retry_on: vec![],
        };
        for _ in 0..100 {
            let d = p.delay_before(2).as_millis();
            assert!((500..=1000).contains(&d), "{d}");
        }
    }
}
