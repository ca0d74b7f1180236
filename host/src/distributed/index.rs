//! The fleet's run index: every run submitted to the fleet (by any server, the CLI or the
//! library), listed per tenant and over all, newest first, read a page at a time with
//! filters. `open_run.lua` lists a run when its record opens; an entry is
//! `{submitted ms, 13 digits}:{id}`, all of one score, so the index sorts by submission
//! time and pages by entry. Bounded by count ([`RedisConfig::run_index_per_tenant`],
//! [`RedisConfig::run_index_total`]), by age (the records' own lifetime) and by tenants
//! (`activity_tenants`, the one idle longest dropped); a listing reads at most
//! [`SCANNED_PER_PAGE`] entries.
//!
//! What a listing shows of a run is checked as its record is: who it runs for, what and
//! since when come signed by the fleet (a record that is not is left out); its status and
//! end are what the record says, and its outcome is checked only when the run is read
//! whole ([`Distributed::settled_status`]).

use std::collections::HashMap;

use super::RedisConfig;
use super::handle::Distributed;
use super::runs::{RunStatus, record_authority};
use super::trust::Kind;
use super::wire::now_ms;
use crate::contract::clock::millis;
use crate::contract::error::Error;

/// Entries of the index one listing reads at most: a page with filters that skip many runs
/// holds fewer than asked, and its `next` says where to go on.
pub const SCANNED_PER_PAGE: usize = 2_000;

/// Entries read from the index per round trip.
const CHUNK: usize = 200;

/// Where a run is, as the fleet's index shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Submitted, without an outcome yet.
    Running,
    /// Ended with `ok`.
    Completed,
    /// Ended with an error (or lost: its deadline passed without an outcome).
    Failed,
    /// Ended cancelled.
    Cancelled,
}

impl RunState {
    /// `running`, `completed`, `failed` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// What a run record's `status` field says.
    fn of_record(status: Option<&str>) -> RunState {
        match status {
            Some("ok") => RunState::Completed,
            Some("cancelled") => RunState::Cancelled,
            Some("failed") => RunState::Failed,
            _ => RunState::Running,
        }
    }
}

/// Which runs a listing wants: all filters must hold.
#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    /// One tenant's runs; every tenant's with `None`.
    pub tenant: Option<String>,
    /// Runs of this processor or workflow.
    pub target: Option<String>,
    /// Runs in this session.
    pub session: Option<String>,
    /// Runs in this state.
    pub state: Option<RunState>,
    /// Submitted at or after (Unix ms).
    pub since_ms: Option<u64>,
    /// Submitted before (Unix ms).
    pub until_ms: Option<u64>,
    /// Runs listed after this entry: the previous page's [`RunPage::next`].
    pub before: Option<String>,
    /// Runs per page (at least 1).
    pub limit: usize,
    /// Runs that asked for this priority or a larger number (one that asked for none is in
    /// no range).
    pub min_priority: Option<u32>,
    /// Runs that asked for this priority or a smaller number.
    pub max_priority: Option<u32>,
}

/// A run as the fleet's index lists it: its record without the outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The run's id (its top-level execution's).
    pub id: String,
    /// The processor or workflow it runs.
    pub target: String,
    /// Who it runs for.
    pub tenant: String,
    /// Its session, if any.
    pub session: Option<String>,
    /// The priority it asked for, if any (lower runs first).
    pub priority: Option<u32>,
    /// When it was submitted (Unix ms).
    pub submitted_ms: u64,
    /// When its outcome was recorded (Unix ms).
    pub finished_ms: Option<u64>,
    /// Where it is.
    pub state: RunState,
    /// The size of its recorded outcome, in bytes of JSON.
    pub result_bytes: Option<u64>,
}

/// One page of a listing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunPage {
    /// The runs, newest first.
    pub runs: Vec<RunSummary>,
    /// Where the next page starts (pass it as [`RunQuery::before`]); `None` at the end.
    pub next: Option<String>,
}

impl RunPage {
    /// Whether `text` is what a page's [`RunPage::next`] says: 13 digits, `:`, a run id.
    pub fn is_cursor(text: &str) -> bool {
        text.len() > 14
            && text.as_bytes()[..13].iter().all(u8::is_ascii_digit)
            && text.as_bytes()[13] == b':'
    }
}

/// A run's entry in the index.
pub(super) fn entry(submitted_ms: u64, id: &str) -> String {
    format!("{submitted_ms:013}:{id}")
}

/// How long a run's record may live, and the index keeps its entry: the run retention,
/// and at least a week for a run that has not finished.
pub(super) fn kept(config: &RedisConfig) -> std::time::Duration {
    config
        .run_retention
        .max(std::time::Duration::from_secs(UNFINISHED_KEPT_SECS))
}

/// How long an unfinished run's record lives at least: a week.
const UNFINISHED_KEPT_SECS: u64 = 7 * 24 * 3600;

/// The largest time an entry can say (13 digits of milliseconds).
const LAST_MS: u64 = 9_999_999_999_999;

/// The `ARGV` of `open_run.lua` that list the run: its entry, tenant, now, how long the
/// index keeps entries and the oldest kept, the caps and the tenants' index key prefix.
pub(super) fn open_args(
    distributed: &Distributed,
    submitted_ms: u64,
    run: &str,
    tenant: &str,
) -> [String; 9] {
    let config = &distributed.config;
    let kept = millis(kept(config));
    [
        entry(submitted_ms, run),
        tenant.to_string(),
        submitted_ms.to_string(),
        kept.max(1).to_string(),
        format!("{:013}", submitted_ms.saturating_sub(kept)),
        config.run_index_total.max(1).to_string(),
        config.run_index_per_tenant.max(1).to_string(),
        config.activity_tenants.max(1).to_string(),
        distributed.keys.tenant_run_index_prefix(),
    ]
}

/// The fields of a run's record a listing reads.
const FIELDS: [&str; 9] = [
    "target",
    "tenant",
    "session",
    "submitted",
    "deadline",
    "mac",
    "status",
    "finished",
    "priority",
];

impl Distributed {
    /// The runs `query` asks for, newest first: at most `query.limit`, reading at most
    /// [`SCANNED_PER_PAGE`] entries of the index.
    pub(crate) async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, Error> {
        let limit = query.limit.max(1);
        let index = match &query.tenant {
            Some(tenant) => self.keys.tenant_run_index(tenant),
            None => self.keys.run_index(),
        };
        let mut max = match (&query.before, query.until_ms) {
            (Some(before), _) => format!("({before}"),
            (None, Some(until)) => format!("({:013}", until.min(LAST_MS)),
            (None, None) => "+".to_string(),
        };
        let min = query.since_ms.map_or_else(
            || "-".to_string(),
            |since| format!("[{:013}", since.min(LAST_MS)),
        );
        let mut page = RunPage::default();
        // The index entry of each run on the page (a run's record may say another time: a
        // submission tried again writes its record again, not its entry).
        let mut listed: Vec<String> = Vec::new();
        let mut scanned = 0;
        let mut conn = self.conn();
        let mut gone = Vec::new();
        while scanned < SCANNED_PER_PAGE {
            let entries: Vec<String> = redis::cmd("ZREVRANGEBYLEX")
                .arg(&index)
                .arg(&max)
                .arg(&min)
                .arg("LIMIT")
                .arg(0)
                .arg(CHUNK.min(SCANNED_PER_PAGE - scanned))
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis_error(e))?;
            let Some(last) = entries.last() else {
                break;
            };
            max = format!("({last}");
            scanned += entries.len();
            let mut pipe = redis::pipe();
            for entry in &entries {
                let id = entry.split_once(':').map_or("", |(_, id)| id);
                let key = self.keys.run(id);
                pipe.cmd("HMGET").arg(&key).arg(&FIELDS[..]);
                pipe.cmd("HSTRLEN").arg(&key).arg("result");
            }
            let read: Vec<redis::Value> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis_error(e))?;
            let mut read = read.into_iter();
            for entry in &entries {
                let (Some(fields), Some(bytes)) = (read.next(), read.next()) else {
                    break;
                };
                let id = entry.split_once(':').map_or("", |(_, id)| id);
                let fields: Vec<Option<String>> =
                    redis::from_redis_value(fields).unwrap_or_default();
                let bytes: u64 = redis::from_redis_value(bytes).unwrap_or(0);
                if fields.first().is_none_or(Option::is_none) {
                    // Its record expired (or never was).
                    gone.push(entry.clone());
                    continue;
                }
                // A record this process cannot check (another fleet's, or signed with a key
                // rotated out here) is not listed, and its entry is left alone.
                let Some(run) = self.summary(id, fields, bytes) else {
                    continue;
                };
                if !matches(query, &run) {
                    continue;
                }
                if page.runs.len() == limit {
                    // One more than a page: there is a next one.
                    page.next = listed.pop();
                    break;
                }
                page.runs.push(run);
                listed.push(entry.clone());
            }
            if page.next.is_some() || entries.len() < CHUNK {
                break;
            }
        }
        // Read the whole allowance without filling the page: go on from the last entry read.
        if page.next.is_none() && scanned >= SCANNED_PER_PAGE {
            page.next = Some(max.trim_start_matches('(').to_string());
        }
        if !gone.is_empty() {
            // Entries whose records expired: not read again.
            let _: redis::RedisResult<()> = redis::cmd("ZREM")
                .arg(&index)
                .arg(&gone)
                .query_async(&mut conn)
                .await;
        }
        Ok(page)
    }

    /// A run's record as a listing reads it (the fields of [`FIELDS`]), once its signature
    /// is checked; `None` when the record is gone or is not this fleet's.
    fn summary(
        &self,
        id: &str,
        mut fields: Vec<Option<String>>,
        result_bytes: u64,
    ) -> Option<RunSummary> {
        let mut take = |i: usize| fields.get_mut(i).and_then(Option::take);
        let target = take(0)?;
        let tenant = take(1).unwrap_or_else(|| "default".into());
        let session = take(2);
        let submitted_ms = take(3).and_then(|s| s.parse().ok()).unwrap_or(0);
        let deadline_ms: Option<u64> = take(4).and_then(|s| s.parse().ok());
        let mac = take(5).unwrap_or_default();
        let status = take(6);
        let finished_ms = take(7).and_then(|s| s.parse().ok());
        let priority = take(8).and_then(|s| s.parse().ok());
        let record = RunStatus {
            id: id.to_string(),
            target,
            tenant,
            session,
            priority,
            submitted_ms,
            deadline_ms,
            result: None,
            finished_ms: None,
            annex: None,
        };
        if let Err(refused) = self
            .seal
            .check(Kind::Record, &record_authority(&record), &mac)
        {
            tracing::warn!(run = %id, "left a run out of a listing: {refused}");
            return None;
        }
        let mut state = RunState::of_record(status.as_deref());
        // No outcome by its deadline and the grace: lost (reading it whole records so).
        let lost = deadline_ms
            .is_some_and(|d| now_ms() > d.saturating_add(millis(self.config.lost_grace)));
        if state == RunState::Running && lost {
            state = RunState::Failed;
        }
        Some(RunSummary {
            id: record.id,
            target: record.target,
            tenant: record.tenant,
            session: record.session,
            priority: record.priority,
            submitted_ms,
            finished_ms,
            state,
            result_bytes: (state != RunState::Running && result_bytes > 0).then_some(result_bytes),
        })
    }

    /// Keeps `text` (JSON) beside run `id`'s outcome, signed: what the process that
    /// submitted it knows of it beyond its outcome (a job's input and timeline). Nothing
    /// is written when the record is gone. True when it was kept.
    pub(crate) async fn annex_run(&self, id: &str, text: &str) -> Result<bool, Error> {
        let sealed = self.seal.seal_text(&annex_place(id), text);
        let mut conn = self.conn();
        let kept: i64 = self
            .annex
            .key(self.keys.run(id))
            .arg(sealed)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(kept == 1)
    }
}

/// Where a run's annex is, for its signature.
pub(super) fn annex_place(id: &str) -> [&str; 3] {
    ["run", id, "annex"]
}

/// Whether `run` is one `query` asks for (its tenant included: an index entry a Redis
/// writer put in another tenant's index is not that tenant's run).
fn matches(query: &RunQuery, run: &RunSummary) -> bool {
    query.tenant.as_deref().is_none_or(|t| run.tenant == t)
        && query.target.as_deref().is_none_or(|t| run.target == t)
        && (query.session.is_none() || run.session == query.session)
        && query.state.is_none_or(|s| run.state == s)
        && query.since_ms.is_none_or(|t| run.submitted_ms >= t)
        && query.until_ms.is_none_or(|t| run.submitted_ms < t)
        && (query.min_priority.is_none() && query.max_priority.is_none()
            || run.priority.is_some_and(|p| {
                query.min_priority.is_none_or(|min| p >= min)
                    && query.max_priority.is_none_or(|max| p <= max)
            }))
}

/// Every run record's fields, as read whole, with the annex checked: its text.
pub(super) fn verified_annex(
    seal: &super::trust::Seal,
    id: &str,
    fields: &HashMap<String, String>,
) -> Option<String> {
    let stored = fields.get("annex")?;
    match seal.open_text(&annex_place(id), stored) {
        Ok(text) => Some(text.to_string()),
        Err(refused) => {
            tracing::warn!(run = %id, "ignored a run's annex in Redis: {refused}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lives_as_long_as_an_unfinished_runs_record() {
        let mut config = RedisConfig::new("redis://127.0.0.1:1");
        config.run_retention = std::time::Duration::from_secs(60);
        assert_eq!(kept(&config).as_secs(), 7 * 24 * 3600);
        config.run_retention = std::time::Duration::from_secs(30 * 24 * 3600);
        assert_eq!(kept(&config), config.run_retention);
    }

    #[test]
    fn a_cursor_is_an_entry_of_the_index() {
        let entry = entry(1_796_624_470_371, "01a2-run");
        assert_eq!(entry, "1796624470371:01a2-run");
        assert!(RunPage::is_cursor(&entry));
        assert!(
            RunPage::is_cursor(&self::entry(5, "x")),
            "padded to 13 digits"
        );
        for bad in [
            "01a2-run",
            "1796624470371:",
            "179662447037:x",
            "",
            "abcdefghijklm:x",
        ] {
            assert!(!RunPage::is_cursor(bad), "{bad}");
        }
    }
}
