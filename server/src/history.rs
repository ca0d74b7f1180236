//! The last minutes of the counters behind `/v1/stats`, sampled by the server, so that the
//! console's charts start full when a page is opened or reloaded (`GET /v1/stats/history`).
//!
//! Every [`SAMPLE_EVERY`] the server reads the counters (the fleet's, behind `--redis`) and
//! keeps what changed since the last reading: one row per tenant and processor that
//! finished work or has work running, at most [`ROWS_PER_SAMPLE`] of them (the busiest),
//! for the last [`SAMPLES_KEPT`] readings. An answer is the latest reading whole, and the
//! changes before it, oldest first: the page walks back from the reading to rebuild each
//! earlier one, so that its live samples continue the same counters.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use weir::{ProcessorStats, Runtime, RuntimeStats};

/// How often the server reads the counters: as often as the console polls them.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// How many readings are kept: five minutes, what the console's charts span.
pub(crate) const SAMPLES_KEPT: usize = 150;

/// The most rows one reading keeps: its busiest tenants' processors (by executions
/// finished, then running). A quieter row's changes are left out, and the reading says so.
pub(crate) const ROWS_PER_SAMPLE: usize = 100;

/// What changed in one tenant's counters of one processor between two readings.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    tenant: String,
    processor: String,
    /// The counters' differences, except `running`, which is the count at the reading.
    delta: ProcessorStats,
}

/// One reading's changes.
#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    changes: Vec<Change>,
    /// Rows left out past [`ROWS_PER_SAMPLE`].
    left_out: usize,
}

/// The readings kept, and the latest one whole.
#[derive(Debug, Default)]
pub(crate) struct History {
    inner: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    samples: VecDeque<Sample>,
    latest: Option<(u64, RuntimeStats)>,
}

impl History {
    /// Reads `runtime`'s counters every [`SAMPLE_EVERY`] until `shutdown`. A reading that
    /// fails (Redis down) is skipped: the page then shows a gap, not made-up figures.
    pub(crate) fn sample_until(self: &Arc<Self>, runtime: Runtime, shutdown: CancellationToken) {
        let history = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                let stats = match runtime.fleet() {
                    Some(fleet) => match fleet.stats(None).await {
                        Ok(stats) => stats,
                        Err(error) => {
                            tracing::debug!(target: "weir::server", %error, "cannot read the fleet's counters for the charts' history");
                            continue;
                        }
                    },
                    None => runtime.stats(),
                };
                let Some(history) = history.upgrade() else {
                    return;
                };
                history.record(weir::now_ms(), stats);
            }
        });
    }

    /// Keeps a reading taken at `at_ms`.
    fn record(&self, at_ms: u64, stats: RuntimeStats) {
        let mut kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let empty = BTreeMap::new();
        let before = kept
            .latest
            .as_ref()
            .map(|(_, s)| &s.tenants)
            .unwrap_or(&empty);
        let mut changes = Vec::new();
        // The first reading has nothing to differ from: it changes nothing.
        let first = kept.latest.is_none();
        for (tenant, processors) in stats.tenants.iter().filter(|_| !first) {
            for (processor, now) in processors {
                let old = before.get(tenant).and_then(|p| p.get(processor));
                let delta = difference(now, old);
                if delta.completed + delta.failed > 0 || delta.running > 0 || delta.started > 0 {
                    changes.push(Change {
                        tenant: tenant.clone(),
                        processor: processor.clone(),
                        delta,
                    });
                }
            }
        }
        let left_out = changes.len().saturating_sub(ROWS_PER_SAMPLE);
        if left_out > 0 {
            changes.sort_by_key(|c| {
                std::cmp::Reverse((c.delta.completed + c.delta.failed, c.delta.running))
            });
            changes.truncate(ROWS_PER_SAMPLE);
        }
        if kept.samples.len() >= SAMPLES_KEPT {
            kept.samples.pop_front();
        }
        kept.samples.push_back(Sample {
            at_ms,
            changes,
            left_out,
        });
        kept.latest = Some((at_ms, stats));
    }

    /// The answer to `GET /v1/stats/history`: the latest reading (as `/v1/stats` writes its
    /// counters; `tenant`'s own only for a tenant) and the changes of each reading, oldest
    /// first, the latest last.
    pub(crate) fn json(&self, tenant: Option<&str>) -> Value {
        let kept = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let latest = kept.latest.as_ref().map(|(at_ms, stats)| {
            let rows = |processors: &BTreeMap<String, ProcessorStats>| {
                processors
                    .iter()
                    .map(|(name, s)| (name.clone(), json!(s)))
                    .collect::<Map<String, Value>>()
            };
            let counters = match tenant {
                Some(tenant) => json!({
                    "processors": stats.tenants.get(tenant).map(rows).unwrap_or_default(),
                }),
                None => json!({
                    "processors": rows(&stats.processors),
                    "tenants": stats
                        .tenants
                        .iter()
                        .map(|(t, p)| (t.clone(), Value::Object(rows(p))))
                        .collect::<Map<String, Value>>(),
                }),
            };
            json!({"atMs": at_ms, "stats": counters})
        });
        let samples: Vec<Value> = kept
            .samples
            .iter()
            .map(|sample| {
                let changes: Vec<Value> = sample
                    .changes
                    .iter()
                    .filter(|c| tenant.is_none_or(|t| t == c.tenant))
                    .map(|c| {
                        let mut row = json!(c.delta);
                        row["processor"] = json!(c.processor);
                        if tenant.is_none() {
                            row["tenant"] = json!(c.tenant);
                        }
                        row
                    })
                    .collect();
                let mut out = json!({"atMs": sample.at_ms, "changes": changes});
                // How many rows were left out says nothing of other tenants to a tenant.
                if tenant.is_none() && sample.left_out > 0 {
                    out["leftOut"] = json!(sample.left_out);
                }
                out
            })
            .collect();
        json!({
            "nowMs": weir::now_ms(),
            "intervalMs": SAMPLE_EVERY.as_millis() as u64,
            "latest": latest,
            "samples": samples,
        })
    }
}

/// `now` less `before` (a row not there before counts from zero), but for `running`: the
/// count now.
fn difference(now: &ProcessorStats, before: Option<&ProcessorStats>) -> ProcessorStats {
    let zero = ProcessorStats::default();
    let before = before.unwrap_or(&zero);
    let mut buckets = now.duration_buckets;
    for (bucket, old) in buckets.iter_mut().zip(before.duration_buckets) {
        *bucket = bucket.saturating_sub(old);
    }
    ProcessorStats {
        started: now.started.saturating_sub(before.started),
        completed: now.completed.saturating_sub(before.completed),
        failed: now.failed.saturating_sub(before.failed),
        running: now.running,
        total_duration_us: now
            .total_duration_us
            .saturating_sub(before.total_duration_us),
        fuel_consumed: now.fuel_consumed.saturating_sub(before.fuel_consumed),
        total_peak_memory_bytes: now
            .total_peak_memory_bytes
            .saturating_sub(before.total_peak_memory_bytes),
        duration_buckets: buckets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(rows: &[(&str, &str, u64, u64)]) -> RuntimeStats {
        let mut tenants: BTreeMap<String, BTreeMap<String, ProcessorStats>> = BTreeMap::new();
        let mut processors: BTreeMap<String, ProcessorStats> = BTreeMap::new();
        for (tenant, processor, completed, running) in rows {
            let row = ProcessorStats {
                started: completed + running,
                completed: *completed,
                running: *running,
                ..ProcessorStats::default()
            };
            tenants
                .entry(tenant.to_string())
                .or_default()
                .insert(processor.to_string(), row.clone());
            let total = processors.entry(processor.to_string()).or_default();
            total.started += row.started;
            total.completed += row.completed;
            total.running += row.running;
        }
        RuntimeStats {
            state: weir::RuntimeState::Running,
            uptime_ms: 0,
            running: 0,
            sessions: 0,
            processors,
            tenants,
        }
    }

    #[test]
    fn a_reading_keeps_what_changed_and_a_tenant_sees_its_own() {
        let history = History::default();
        history.record(
            1_000,
            stats(&[("acme", "hello", 5, 0), ("beta", "hello", 2, 0)]),
        );
        history.record(
            3_000,
            stats(&[("acme", "hello", 9, 1), ("beta", "hello", 2, 0)]),
        );
        let all = history.json(None);
        assert_eq!(all["latest"]["atMs"], 3_000);
        assert_eq!(
            all["latest"]["stats"]["processors"]["hello"]["completed"],
            11
        );
        let samples = all["samples"].as_array().unwrap();
        assert_eq!(samples.len(), 2);
        // The first reading has nothing to differ from; the second, acme's 4 more and 1
        // running.
        assert_eq!(samples[0]["changes"], json!([]));
        let second = samples[1]["changes"].as_array().unwrap();
        assert_eq!(second.len(), 1, "{second:?}");
        assert_eq!(
            (
                &second[0]["tenant"],
                &second[0]["completed"],
                &second[0]["running"]
            ),
            (&json!("acme"), &json!(4), &json!(1))
        );
        let beta = history.json(Some("beta"));
        assert_eq!(
            beta["latest"]["stats"]["processors"]["hello"]["completed"],
            2
        );
        assert!(beta["latest"]["stats"].get("tenants").is_none());
        assert_eq!(beta["samples"][1]["changes"], json!([]));
        let acme = history.json(Some("acme"));
        assert_eq!(acme["samples"][1]["changes"][0]["completed"], 4);
        assert!(acme["samples"][1]["changes"][0].get("tenant").is_none());
    }

    #[test]
    fn readings_are_bounded_in_number_and_in_rows() {
        let history = History::default();
        for n in 0..(SAMPLES_KEPT as u64 + 10) {
            let names: Vec<String> = (0..ROWS_PER_SAMPLE + 5).map(|i| format!("p{i}")).collect();
            let rows: Vec<(&str, &str, u64, u64)> = names
                .iter()
                .enumerate()
                .map(|(i, name)| ("acme", name.as_str(), n * (i as u64 + 1), 0))
                .collect();
            history.record(n, stats(&rows));
        }
        let all = history.json(None);
        let samples = all["samples"].as_array().unwrap();
        assert_eq!(samples.len(), SAMPLES_KEPT);
        assert_eq!(samples[0]["atMs"], 10);
        let last = &samples[SAMPLES_KEPT - 1];
        assert_eq!(last["changes"].as_array().unwrap().len(), ROWS_PER_SAMPLE);
        assert_eq!(last["leftOut"], 5);
        // The busiest rows are the ones kept: p104 finished the most.
        assert_eq!(last["changes"][0]["processor"], "p104");
    }
}
