//! A tenant's quotas on the HTTP API: executions at once, executions and fuel per minute
//! (token buckets that refill continuously), and ceilings on every execution's memory and
//! timeout. Over a quota, a request is refused before anything runs, with the time after
//! which it may succeed.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::limits::LimitOverrides;

/// What a tenant may use; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quotas {
    /// Executions running at once.
    pub concurrent: Option<u32>,
    /// Executions started per minute.
    pub executions_per_minute: Option<u32>,
    /// Fuel (WebAssembly instructions, roughly) burnt per minute.
    pub fuel_per_minute: Option<u64>,
    /// The most memory any one execution gets.
    pub memory_bytes: Option<u64>,
    /// The longest any one execution may run, in milliseconds.
    pub timeout_ms: Option<u64>,
}

impl Quotas {
    pub(crate) fn validate(&self) -> Result<(), String> {
        let zero = [
            ("concurrent", self.concurrent.map(u64::from)),
            (
                "executions_per_minute",
                self.executions_per_minute.map(u64::from),
            ),
            ("fuel_per_minute", self.fuel_per_minute),
            ("memory_bytes", self.memory_bytes),
            ("timeout_ms", self.timeout_ms),
        ]
        .into_iter()
        .find(|(_, value)| *value == Some(0));
        match zero {
            Some((name, _)) => Err(format!(
                "`{name}` must be above zero (leave it out for no limit)"
            )),
            None => Ok(()),
        }
    }
}

/// Which quota a request ran into, and when to try again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OverQuota {
    /// The quota's name as in `weir.toml`.
    pub quota: &'static str,
    /// Its value.
    pub limit: u64,
    /// When a retry may succeed.
    pub retry_after: Duration,
}

/// One tenant's quotas and what it is using of them.
#[derive(Debug)]
pub(crate) struct TenantQuota {
    quotas: Quotas,
    usage: Mutex<Usage>,
}

#[derive(Debug)]
struct Usage {
    running: u32,
    /// Executions that may start now (refills at `executions_per_minute` / 60 per second).
    executions: f64,
    /// Fuel that may still be burnt (refills likewise; negative after an expensive run).
    fuel: f64,
    refilled: Instant,
}

impl TenantQuota {
    pub(crate) fn new(quotas: Quotas) -> TenantQuota {
        TenantQuota {
            usage: Mutex::new(Usage {
                running: 0,
                executions: quotas.executions_per_minute.map_or(0.0, f64::from),
                fuel: quotas.fuel_per_minute.map_or(0.0, |f| f as f64),
                refilled: Instant::now(),
            }),
            quotas,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ceilings every execution of the tenant runs under.
    pub(crate) fn ceilings(&self) -> LimitOverrides {
        LimitOverrides {
            memory_bytes: self.quotas.memory_bytes,
            timeout_ms: self.quotas.timeout_ms,
            ..LimitOverrides::default()
        }
    }

    /// Takes a place for one execution, or says which quota is spent. The place is given
    /// back by [`TenantQuota::release`].
    pub(crate) fn admit(&self, now: Instant) -> Result<(), OverQuota> {
        let mut usage = self.lock();
        self.refill(&mut usage, now);
        if let Some(limit) = self.quotas.concurrent
            && usage.running >= limit
        {
            return Err(OverQuota {
                quota: "concurrent",
                limit: u64::from(limit),
                retry_after: Duration::from_secs(1),
            });
        }
        if let Some(limit) = self.quotas.executions_per_minute
            && usage.executions < 1.0
        {
            let per_second = f64::from(limit) / 60.0;
            return Err(OverQuota {
                quota: "executions_per_minute",
                limit: u64::from(limit),
                retry_after: wait_for(1.0 - usage.executions, per_second),
            });
        }
        if let Some(limit) = self.quotas.fuel_per_minute
            && usage.fuel <= 0.0
        {
            let per_second = limit as f64 / 60.0;
            return Err(OverQuota {
                quota: "fuel_per_minute",
                limit,
                retry_after: wait_for(-usage.fuel + 1.0, per_second),
            });
        }
        usage.running += 1;
        if self.quotas.executions_per_minute.is_some() {
            usage.executions -= 1.0;
        }
        Ok(())
    }

    /// Gives back the place an admitted execution held, and charges the fuel it burnt.
    pub(crate) fn release(&self, fuel: u64, now: Instant) {
        let mut usage = self.lock();
        self.refill(&mut usage, now);
        usage.running = usage.running.saturating_sub(1);
        if self.quotas.fuel_per_minute.is_some() {
            usage.fuel -= fuel as f64;
        }
    }

    fn refill(&self, usage: &mut Usage, now: Instant) {
        let seconds = now.saturating_duration_since(usage.refilled).as_secs_f64();
        usage.refilled = now.max(usage.refilled);
        if let Some(limit) = self.quotas.executions_per_minute {
            let limit = f64::from(limit);
            usage.executions = (usage.executions + seconds * limit / 60.0).min(limit);
        }
        if let Some(limit) = self.quotas.fuel_per_minute {
            let limit = limit as f64;
            usage.fuel = (usage.fuel + seconds * limit / 60.0).min(limit);
        }
    }
}

/// How long `missing` units take to come back at `per_second`, rounded up to whole seconds
/// (what `Retry-After` can say).
fn wait_for(missing: f64, per_second: f64) -> Duration {
    let seconds = (missing / per_second).ceil().max(1.0);
    Duration::from_secs(seconds.min(3600.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_capped_and_freed_on_release() {
        let quota = TenantQuota::new(Quotas {
            concurrent: Some(2),
            ..Quotas::default()
        });
        let now = Instant::now();
        assert!(quota.admit(now).is_ok());
        assert!(quota.admit(now).is_ok());
        let over = quota.admit(now).unwrap_err();
        assert_eq!((over.quota, over.limit), ("concurrent", 2));
        quota.release(0, now);
        assert!(quota.admit(now).is_ok());
    }

    #[test]
    fn executions_per_minute_refill_over_time_and_say_when() {
        let quota = TenantQuota::new(Quotas {
            executions_per_minute: Some(60),
            ..Quotas::default()
        });
        let start = Instant::now();
        for _ in 0..60 {
            quota.admit(start).unwrap();
            quota.release(0, start);
        }
        let over = quota.admit(start).unwrap_err();
        assert_eq!(over.quota, "executions_per_minute");
        assert_eq!(
            over.retry_after,
            Duration::from_secs(1),
            "one per second comes back"
        );
        assert!(quota.admit(start + Duration::from_secs(1)).is_ok());
        assert!(quota.admit(start + Duration::from_secs(1)).is_err());
    }

    #[test]
    fn fuel_is_charged_after_the_fact_and_blocks_until_it_refills() {
        let quota = TenantQuota::new(Quotas {
            fuel_per_minute: Some(6_000),
            ..Quotas::default()
        });
        let start = Instant::now();
        quota.admit(start).unwrap();
        // One expensive run overdraws the minute's fuel...
        quota.release(9_000, start);
        let over = quota.admit(start).unwrap_err();
        assert_eq!(over.quota, "fuel_per_minute");
        // ...and 3,001 fuel at 100 per second take 31 s to come back.
        assert_eq!(over.retry_after, Duration::from_secs(31));
        assert!(quota.admit(start + Duration::from_secs(31)).is_ok());
    }

    #[test]
    fn zero_quotas_are_refused() {
        let quotas = Quotas {
            timeout_ms: Some(0),
            ..Quotas::default()
        };
        assert!(quotas.validate().unwrap_err().contains("timeout_ms"));
    }
}
