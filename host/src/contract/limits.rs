//! Resource limits and how they resolve, and a processor's admission policy (attempts at
//! once, priority, rate), which the scheduler enforces.
//!
//! An execution's limit is the operator manifest's value if set, else the plugin's `describe`
//! default, else the host default; then it is clamped by the host's ceiling, the tenant's
//! ceiling and the caller's request, each of which can only lower it. A plugin therefore can
//! never raise its own ceiling, and a caller can never raise a plugin's limit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Concrete limits for one execution attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Wall-clock time per attempt, in milliseconds.
    pub timeout_ms: u64,
    /// Linear memory cap, in bytes (all of the instance's memories together).
    pub memory_bytes: u64,
    /// Fuel per attempt (about one unit per WebAssembly instruction).
    pub fuel: u64,
    /// Largest state the processor may return, in bytes of JSON.
    pub output_bytes: u64,
}

impl Limits {
    /// The host defaults: 30 s, 64 MiB, 10 billion fuel, 4 MiB of output.
    pub const DEFAULTS: Limits = Limits {
        timeout_ms: 30_000,
        memory_bytes: 64 << 20,
        fuel: 10_000_000_000,
        output_bytes: 4 << 20,
    };

    /// The host ceilings: 15 min, 1 GiB, 1 trillion fuel, 64 MiB of output.
    pub const CEILINGS: Limits = Limits {
        timeout_ms: 15 * 60 * 1000,
        memory_bytes: 1 << 30,
        fuel: 1_000_000_000_000,
        output_bytes: 64 << 20,
    };

    /// The timeout as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Resolves limits: `manifest`, else `declared` (the plugin's `describe`), else
    /// `defaults`; then clamped by `ceiling`.
    pub fn resolve(
        manifest: &LimitOverrides,
        declared: &LimitOverrides,
        defaults: &Limits,
        ceiling: &Limits,
    ) -> Limits {
        let pick = |m: Option<u64>, d: Option<u64>, default: u64, max: u64| {
            m.or(d).unwrap_or(default).min(max)
        };
        Limits {
            timeout_ms: pick(
                manifest.timeout_ms,
                declared.timeout_ms,
                defaults.timeout_ms,
                ceiling.timeout_ms,
            ),
            memory_bytes: pick(
                manifest.memory_bytes,
                declared.memory_bytes,
                defaults.memory_bytes,
                ceiling.memory_bytes,
            ),
            fuel: pick(manifest.fuel, declared.fuel, defaults.fuel, ceiling.fuel),
            output_bytes: pick(
                manifest.output_bytes,
                declared.output_bytes,
                defaults.output_bytes,
                ceiling.output_bytes,
            ),
        }
    }

    /// These limits, lowered (never raised) by `request`.
    pub fn lowered_by(&self, request: &LimitOverrides) -> Limits {
        let low = |current: u64, asked: Option<u64>| asked.map_or(current, |a| a.min(current));
        Limits {
            timeout_ms: low(self.timeout_ms, request.timeout_ms),
            memory_bytes: low(self.memory_bytes, request.memory_bytes),
            fuel: low(self.fuel, request.fuel),
            output_bytes: low(self.output_bytes, request.output_bytes),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULTS
    }
}

/// Partial limits: what a manifest, a plugin's `describe`, a tenant or a caller asks for.
/// Absent fields leave the decision to the next level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all(serialize = "camelCase"))]
pub struct LimitOverrides {
    /// Wall-clock time per attempt, in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Linear memory cap, in bytes.
    pub memory_bytes: Option<u64>,
    /// Fuel per attempt.
    pub fuel: Option<u64>,
    /// Largest returned state, in bytes.
    pub output_bytes: Option<u64>,
}

impl LimitOverrides {
    /// Overrides that only set the timeout.
    pub fn timeout_ms(ms: u64) -> Self {
        LimitOverrides {
            timeout_ms: Some(ms),
            ..Default::default()
        }
    }

    /// Checks that no value is zero (a zero limit would make every execution fail).
    pub fn validate(&self) -> Result<(), String> {
        for (name, value) in [
            ("timeout_ms", self.timeout_ms),
            ("memory_bytes", self.memory_bytes),
            ("fuel", self.fuel),
            ("output_bytes", self.output_bytes),
        ] {
            if value == Some(0) {
                return Err(format!("`{name}` must be greater than zero"));
            }
        }
        Ok(())
    }
}

/// At most `max` attempts per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Attempts per window.
    pub max: u32,
    /// The window.
    #[serde(serialize_with = "as_millis")]
    pub per: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

/// How one processor's executions are admitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueuePolicy {
    /// Attempts running at once (unbounded when `None`).
    pub concurrency: Option<u32>,
    /// Default priority of its executions: lower numbers run first.
    pub priority: u32,
    /// Throughput cap.
    pub rate_limit: Option<RateLimit>,
}

impl QueuePolicy {
    /// Whether this policy ever holds anything back.
    pub fn is_unlimited(&self) -> bool {
        self.concurrency.is_none() && self.rate_limit.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only_timeout(ms: u64) -> LimitOverrides {
        LimitOverrides::timeout_ms(ms)
    }

    #[test]
    fn manifest_beats_describe_beats_default() {
        let none = LimitOverrides::default();
        let d = Limits::DEFAULTS;
        let c = Limits::CEILINGS;
        assert_eq!(Limits::resolve(&none, &none, &d, &c).timeout_ms, 30_000);
        assert_eq!(
            Limits::resolve(&none, &only_timeout(1000), &d, &c).timeout_ms,
            1000
        );
        assert_eq!(
            Limits::resolve(&only_timeout(5000), &only_timeout(1000), &d, &c).timeout_ms,
            5000
        );
    }

    #[test]
    fn a_plugin_cannot_raise_its_own_ceiling() {
        let none = LimitOverrides::default();
        let greedy = LimitOverrides {
            memory_bytes: Some(u64::MAX),
            timeout_ms: Some(u64::MAX),
            ..Default::default()
        };
        let limits = Limits::resolve(&none, &greedy, &Limits::DEFAULTS, &Limits::CEILINGS);
        assert_eq!(limits.memory_bytes, Limits::CEILINGS.memory_bytes);
        assert_eq!(limits.timeout_ms, Limits::CEILINGS.timeout_ms);
    }

    #[test]
    fn a_caller_can_lower_but_never_raise() {
        let base = Limits::DEFAULTS;
        assert_eq!(base.lowered_by(&only_timeout(10)).timeout_ms, 10);
        assert_eq!(base.lowered_by(&only_timeout(u64::MAX)).timeout_ms, 30_000);
    }

    #[test]
    fn zero_limits_are_rejected() {
        assert!(only_timeout(0).validate().is_err());
        assert!(only_timeout(1).validate().is_ok());
    }
}
