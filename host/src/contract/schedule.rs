//! Schedules: what a schedule is (a processor or workflow run with a given input, tenant and
//! session on a cron expression or a fixed interval), how one is written (a
//! `[schedule.NAME]` table of `workflows.toml`, or the same fields as JSON through the API),
//! when it fires next, and the bounds on what a tenant may schedule. Both runtimes fire by
//! these rules: the local one with its own timer, the distributed one through BullMQ's job
//! schedulers, whose next-tick rules these mirror.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::names::is_valid_name;

/// What a schedule does when its tick comes while the run its previous tick started is
/// still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Skip the tick (the default): at most one run of the schedule goes at a time.
    #[default]
    Skip,
    /// Start another run anyway.
    Allow,
}

/// Where a schedule was declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A `[schedule.NAME]` table of the plugins folder's `workflows.toml`: it changes and
    /// goes with the file.
    Folder,
    /// Added through the API (`PUT /v1/schedules/{name}`, `weir schedules add`): it stays
    /// until removed the same way.
    Api,
}

impl Origin {
    /// `folder` or `api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Folder => "folder",
            Origin::Api => "api",
        }
    }
}

/// What a schedule's latest tick did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastTick {
    /// The tick's time, in milliseconds since the Unix epoch.
    pub tick_ms: u64,
    /// The run it started, if it started one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Why it started none: the previous tick's run still going (`overlap = "skip"`), or
    /// its tenant over a quota, or its target unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// When a schedule fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// On a cron expression (five fields, or six with seconds first), in a time zone (an
    /// IANA name; UTC when none is given).
    Cron {
        /// The expression, e.g. `0 9 * * MON-FRI` or `*/10 * * * * *`.
        pattern: String,
        /// The IANA time zone the expression is read in, e.g. `Europe/Paris`.
        tz: Option<String>,
    },
    /// Every so many milliseconds: at once, then each interval after the previous tick
    /// (BullMQ's `every`).
    Every {
        /// The interval, in milliseconds.
        ms: u64,
    },
}

/// A schedule as written: the fields of a `[schedule.NAME]` table, or of the JSON body of
/// `PUT /v1/schedules/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// The processor or workflow each tick runs.
    pub run: String,
    /// The input of each run (default `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// A cron expression (seconds optional); or `every_ms` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The IANA time zone of `cron` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// A fixed interval in milliseconds; or `cron` instead.
    #[serde(
        default,
        rename = "everyMs",
        alias = "every_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub every_ms: Option<u64>,
    /// No tick before this time (RFC 3339, e.g. `2027-01-01T09:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// No tick after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// At most this many ticks in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The tenant the runs are for (default `default`; through the API, the caller's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The session the runs execute in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// `"skip"` (default) or `"allow"`: see [`Overlap`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<Overlap>,
    /// What the schedule is for, shown in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A checked schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    name: String,
    spec: ScheduleSpec,
    when: When,
    start_ms: Option<u64>,
    end_ms: Option<u64>,
    tenant: String,
    overlap: Overlap,
}

/// The bounds on schedules, with their defaults. A schedule over them is refused when it is
/// declared or added, with the bound named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleBounds {
    /// Schedules one tenant may have at once, from the folder and the API together
    /// (default 100).
    pub max_per_tenant: usize,
    /// Schedules in all (default 10,000).
    pub max_total: usize,
    /// The shortest time between two ticks (default 1 s): an `every_ms` below it, or a cron
    /// expression that fires more often, is refused.
    pub min_interval: Duration,
    /// The largest input a schedule keeps for its runs, in bytes of JSON (default 64 KiB).
    pub max_input_bytes: usize,
}

impl Default for ScheduleBounds {
    fn default() -> Self {
        ScheduleBounds {
            max_per_tenant: 100,
            max_total: 10_000,
            min_interval: Duration::from_secs(1),
            max_input_bytes: 64 << 10,
        }
    }
}

/// The id of `tenant`'s schedule `name` in the fleet: `TENANT.NAME` (names and tenants
/// have no dots).
pub(crate) fn schedule_id(tenant: &str, name: &str) -> String {
    format!("{tenant}.{name}")
}

/// The tenant of a schedule that names none.
pub const DEFAULT_TENANT: &str = "default";

impl Schedule {
    /// Checks `spec` as the schedule `name`: a valid name, exactly one of `cron` and
    /// `every_ms`, a cron expression and time zone that parse, times in RFC 3339, `end`
    /// after `start`, and everything within `bounds`. The error says what to change.
    pub fn new(name: &str, spec: ScheduleSpec, bounds: &ScheduleBounds) -> Result<Self, String> {
        if !is_valid_name(name) {
            return Err(format!(
                "`{}` is not a schedule name: use lowercase letters, digits and `-`, starting \
                 with a letter, at most 64 characters",
                name.escape_debug()
            ));
        }
        if !is_valid_name(&spec.run) {
            return Err(format!(
                "`run` is `{}`, not a processor or workflow name",
                spec.run.escape_debug()
            ));
        }
        let when = match (&spec.cron, spec.every_ms) {
            (Some(pattern), None) => {
                let cron = parse_cron(pattern)?;
                let tz = match &spec.tz {
                    Some(tz) => {
                        zone(tz)?;
                        Some(tz.clone())
                    }
                    None => None,
                };
                check_cron_interval(&cron, pattern, bounds.min_interval)?;
                When::Cron {
                    pattern: pattern.clone(),
                    tz,
                }
            }
            (None, Some(ms)) => {
                if spec.tz.is_some() {
                    return Err("`tz` goes with `cron`, not with `every_ms`".into());
                }
                let min = crate::contract::clock::millis(bounds.min_interval);
                if ms < min {
                    return Err(format!(
                        "`every_ms` is {ms}; the shortest interval is {min} ms (the host's \
                         schedule bounds)"
                    ));
                }
                When::Every { ms }
            }
            (Some(_), Some(_)) => {
                return Err("give `cron` or `every_ms`, not both".into());
            }
            (None, None) => {
                return Err(
                    "say when it runs: `cron = \"*/5 * * * *\"` or `every_ms = 60000`".into(),
                );
            }
        };
        let start_ms = spec
            .start
            .as_deref()
            .map(|t| instant("start", t))
            .transpose()?;
        let end_ms = spec.end.as_deref().map(|t| instant("end", t)).transpose()?;
        if let (Some(start), Some(end)) = (start_ms, end_ms)
            && end <= start
        {
            return Err("`end` must come after `start`".into());
        }
        if spec.limit == Some(0) {
            return Err("`limit` is 0: a schedule runs at least once, or leave it out".into());
        }
        let tenant = spec
            .tenant
            .clone()
            .unwrap_or_else(|| DEFAULT_TENANT.to_string());
        if !is_valid_name(&tenant) {
            return Err(format!(
                "`tenant` is `{}`, not a tenant name",
                tenant.escape_debug()
            ));
        }
        if let Some(input) = &spec.input {
            let bytes = serde_json::to_vec(input).map_or(usize::MAX, |v| v.len());
            if bytes > bounds.max_input_bytes {
                return Err(format!(
                    "`input` is {bytes} bytes of JSON; a schedule keeps at most {} (the \
                     host's schedule bounds): have the run fetch what it needs instead",
                    bounds.max_input_bytes
                ));
            }
        }
        if let Some(description) = &spec.description
            && description.len() > 1024
        {
            return Err("`description` is over 1024 bytes".into());
        }
        Ok(Schedule {
            name: name.to_string(),
            overlap: spec.overlap.unwrap_or_default(),
            spec,
            when,
            start_ms,
            end_ms,
            tenant,
        })
    }

    /// Its name (unique per tenant).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The processor or workflow each tick runs.
    pub fn target(&self) -> &str {
        &self.spec.run
    }

    /// The input of each run.
    pub fn input(&self) -> Value {
        self.spec
            .input
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()))
    }

    /// When it fires.
    pub fn when(&self) -> &When {
        &self.when
    }

    /// The tenant its runs are for.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The session its runs execute in, if any.
    pub fn session(&self) -> Option<&str> {
        self.spec.session.as_deref()
    }

    /// What a tick does while the previous tick's run is going.
    pub fn overlap(&self) -> Overlap {
        self.overlap
    }

    /// The most ticks it fires in all, if limited.
    pub fn limit(&self) -> Option<u64> {
        self.spec.limit
    }

    /// No tick before this, in milliseconds since the Unix epoch.
    pub fn start_ms(&self) -> Option<u64> {
        self.start_ms
    }

    /// No tick after this, in milliseconds since the Unix epoch.
    pub fn end_ms(&self) -> Option<u64> {
        self.end_ms
    }

    /// The fields it was written with.
    pub fn spec(&self) -> &ScheduleSpec {
        &self.spec
    }

    /// The schedule's id in the fleet (see [`schedule_id`]).
    pub fn id(&self) -> String {
        schedule_id(&self.tenant, &self.name)
    }

    /// The idempotency key of its tick at `tick_ms`: a tick delivered twice runs once.
    pub fn tick_key(&self, tick_ms: u64) -> String {
        format!("schedule:{}:{tick_ms}", self.id())
    }

    /// The first tick strictly after `after_ms` (of a cron schedule) or following the tick
    /// `previous_ms` (of an interval; its first tick is at once), as BullMQ's job schedulers
    /// reckon it; none once past `end`. `fired` ticks so far count against `limit`.
    pub fn next_tick(&self, previous_ms: Option<u64>, now_ms: u64, fired: u64) -> Option<u64> {
        if self.spec.limit.is_some_and(|limit| fired >= limit) {
            return None;
        }
        let next = match &self.when {
            When::Cron { pattern, tz } => {
                let after = self.start_ms.map_or(now_ms, |start| start.max(now_ms));
                next_cron(pattern, tz.as_deref(), after)?
            }
            When::Every { ms } => next_every(previous_ms, *ms, now_ms, self.start_ms),
        };
        match self.end_ms {
            Some(end) if next > end => None,
            _ => Some(next),
        }
    }
}

/// The tick after the tick `previous` of an interval of `every` ms, at `now` (BullMQ's
/// `getJobSchedulerEveryNextMillis` with no offset): the first is at `start` or at once; a
/// tick missed while nothing ran is skipped to the next slot of the interval.
fn next_every(previous: Option<u64>, every: u64, now: u64, start: Option<u64>) -> u64 {
    match previous {
        None => start.map_or(now, |start| start.max(now)),
        Some(previous) => {
            let next = previous.saturating_add(every);
            if next >= now {
                return next;
            }
            let aligned = now / every * every + previous % every;
            if aligned <= now {
                aligned.saturating_add(every)
            } else {
                aligned
            }
        }
    }
}

/// The first time `pattern` (in `tz`) matches strictly after `after_ms`.
fn next_cron(pattern: &str, tz: Option<&str>, after_ms: u64) -> Option<u64> {
    let cron = parse_cron(pattern).ok()?;
    let after = i64::try_from(after_ms).ok()?;
    let next = match tz {
        Some(tz) => {
            let zone = zone(tz).ok()?;
            let at = zone.timestamp_millis_opt(after).single()?;
            cron.find_next_occurrence(&at, false)
                .ok()?
                .timestamp_millis()
        }
        None => {
            let at = Utc.timestamp_millis_opt(after).single()?;
            cron.find_next_occurrence(&at, false)
                .ok()?
                .timestamp_millis()
        }
    };
    u64::try_from(next).ok()
}

fn parse_cron(pattern: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(pattern)
        .map_err(|e| {
            format!(
                "`cron` is `{}`: {e}; write five fields (minute hour day month weekday) or \
                 six with seconds first, e.g. `*/10 * * * * *`",
                pattern.escape_debug()
            )
        })
}

fn zone(tz: &str) -> Result<chrono_tz::Tz, String> {
    chrono_tz::Tz::from_str(tz).map_err(|_| {
        format!(
            "`tz` is `{}`, not an IANA time zone (e.g. `Europe/Paris`, `UTC`)",
            tz.escape_debug()
        )
    })
}

/// Refuses an expression that fires more often than `min`: the gaps between its next few
/// ticks from a fixed instant (a year's worth of a minute's seconds would not add much).
fn check_cron_interval(cron: &Cron, pattern: &str, min: Duration) -> Result<(), String> {
    let min = i64::try_from(crate::contract::clock::millis(min)).unwrap_or(i64::MAX);
    let Some(from) = Utc.timestamp_millis_opt(1_767_225_600_000).single() else {
        return Ok(());
    };
    let mut previous: Option<DateTime<Utc>> = None;
    for tick in cron.iter_after(from).take(64) {
        if let Some(previous) = previous {
            let gap = (tick - previous).num_milliseconds();
            if gap < min {
                return Err(format!(
                    "`cron` `{}` fires every {gap} ms; the shortest interval is {min} ms (the \
                     host's schedule bounds)",
                    pattern.escape_debug()
                ));
            }
        }
        previous = Some(tick);
    }
    Ok(())
}

fn instant(field: &str, text: &str) -> Result<u64, String> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| u64::try_from(t.timestamp_millis()).ok())
        .ok_or_else(|| {
            format!(
                "`{field}` is `{}`, not a time in RFC 3339 (e.g. `2027-01-01T09:00:00Z`)",
                text.escape_debug()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fields: Value) -> ScheduleSpec {
        serde_json::from_value(fields).expect("a spec")
    }

    fn schedule(fields: Value) -> Result<Schedule, String> {
        Schedule::new("tick", spec(fields), &ScheduleBounds::default())
    }

    const JAN_1_2027: u64 = 1_798_761_600_000;

    #[test]
    fn a_cron_with_seconds_fires_on_its_next_matching_second() {
        let s =
            schedule(serde_json::json!({ "run": "increment", "cron": "*/2 * * * * *" })).unwrap();
        assert_eq!(s.next_tick(None, JAN_1_2027, 0), Some(JAN_1_2027 + 2_000));
        assert_eq!(
            s.next_tick(None, JAN_1_2027 + 1, 0),
            Some(JAN_1_2027 + 2_000)
        );
    }

    #[test]
    fn a_five_field_cron_reads_its_time_zone() {
        let utc = schedule(serde_json::json!({ "run": "a", "cron": "0 9 * * *" })).unwrap();
        let paris =
            schedule(serde_json::json!({ "run": "a", "cron": "0 9 * * *", "tz": "Europe/Paris" }))
                .unwrap();
        let nine_utc = JAN_1_2027 + 9 * 3_600_000;
        assert_eq!(utc.next_tick(None, JAN_1_2027, 0), Some(nine_utc));
        // Paris is an hour ahead of UTC in winter.
        assert_eq!(
            paris.next_tick(None, JAN_1_2027, 0),
            Some(nine_utc - 3_600_000)
        );
    }

    #[test]
    fn an_interval_fires_at_once_then_each_interval_and_skips_missed_slots() {
        let s = schedule(serde_json::json!({ "run": "a", "everyMs": 5000 })).unwrap();
        assert_eq!(s.next_tick(None, JAN_1_2027, 0), Some(JAN_1_2027));
        assert_eq!(
            s.next_tick(Some(JAN_1_2027), JAN_1_2027 + 10, 1),
            Some(JAN_1_2027 + 5_000)
        );
        // Three slots were missed (nothing ran): the next is the next slot, not a burst.
        assert_eq!(
            s.next_tick(Some(JAN_1_2027), JAN_1_2027 + 17_000, 1),
            Some(JAN_1_2027 + 20_000)
        );
    }

    #[test]
    fn start_end_and_limit_bound_the_ticks() {
        let s = schedule(serde_json::json!({
            "run": "a", "every_ms": 1000, "start": "2027-01-01T00:00:10Z",
            "end": "2027-01-01T00:00:12Z", "limit": 5
        }))
        .unwrap();
        assert_eq!(s.next_tick(None, JAN_1_2027, 0), Some(JAN_1_2027 + 10_000));
        assert_eq!(
            s.next_tick(Some(JAN_1_2027 + 12_000), JAN_1_2027 + 12_000, 3),
            None
        );
        assert_eq!(
            s.next_tick(Some(JAN_1_2027 + 10_000), JAN_1_2027 + 10_000, 5),
            None
        );
    }

    #[test]
    fn a_schedule_that_cannot_run_is_refused_with_the_reason() {
        let refused = |fields: Value| schedule(fields).unwrap_err();
        assert!(refused(serde_json::json!({ "run": "a" })).contains("say when"));
        assert!(
            refused(serde_json::json!({ "run": "a", "cron": "* * * * *", "everyMs": 1000 }))
                .contains("not both")
        );
        assert!(refused(serde_json::json!({ "run": "a", "cron": "61 * * * *" })).contains("cron"));
        assert!(
            refused(serde_json::json!({ "run": "a", "cron": "* * * * *", "tz": "Mars/Base" }))
                .contains("IANA")
        );
        assert!(refused(serde_json::json!({ "run": "a", "everyMs": 10 })).contains("shortest"));
        assert!(refused(serde_json::json!({ "run": "A b", "everyMs": 1000 })).contains("run"));
        assert!(
            refused(serde_json::json!({ "run": "a", "everyMs": 1000, "start": "tomorrow" }))
                .contains("RFC 3339")
        );
        assert!(
            refused(serde_json::json!({ "run": "a", "everyMs": 1000, "limit": 0 }))
                .contains("limit")
        );
        let big = "x".repeat(70 << 10);
        assert!(
            refused(serde_json::json!({ "run": "a", "everyMs": 1000, "input": { "s": big } }))
                .contains("bytes")
        );
        assert!(
            Schedule::new(
                "Bad Name",
                spec(serde_json::json!({ "run": "a", "everyMs": 1000 })),
                &ScheduleBounds::default()
            )
            .is_err()
        );
    }

    #[test]
    fn a_cron_firing_more_often_than_the_bound_is_refused() {
        let bounds = ScheduleBounds {
            min_interval: Duration::from_secs(5),
            ..ScheduleBounds::default()
        };
        let every_two = spec(serde_json::json!({ "run": "a", "cron": "*/2 * * * * *" }));
        assert!(Schedule::new("t", every_two, &bounds).is_err());
        let every_ten = spec(serde_json::json!({ "run": "a", "cron": "*/10 * * * * *" }));
        assert!(Schedule::new("t", every_ten, &bounds).is_ok());
    }
}
