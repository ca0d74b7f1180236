//! Runs' records in Redis: a run's outcome written once, read back and checked against the
//! fleet's seal, and the callers in this process waiting for one ([`RunStatus`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::handle::{Distributed, lock_map};
use super::trust::{Fields, Kind, Seal};
use super::wire::now_ms;
use crate::contract::error::{Error, ErrorKind, ExecutionError, codes};
use crate::contract::result::{ExecutionInfo, ExecutionResult};

/// A run as any process can read it from Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStatus {
    /// The run's id (also the id of its top-level execution).
    pub id: String,
    /// The processor or workflow it runs.
    pub target: String,
    /// Who it runs for.
    pub tenant: String,
    /// Its session, if any.
    pub session: Option<String>,
    /// The priority it asked for, if any (lower runs first).
    pub priority: Option<u32>,
    /// When it was submitted (Unix milliseconds).
    pub submitted_ms: u64,
    /// When it must have ended (Unix milliseconds); `None` for a run submitted before
    /// runs had deadlines.
    pub deadline_ms: Option<u64>,
    /// Its outcome, once it has one.
    pub result: Option<ExecutionResult>,
    /// When its outcome was recorded (Unix milliseconds).
    pub finished_ms: Option<u64>,
    /// What the process that submitted it kept beside the outcome, as JSON text (a
    /// server's job: its input and timeline), checked against the fleet's seal.
    pub annex: Option<String>,
}

impl Distributed {
    /// Writes the run's outcome (only the first write counts) and announces it.
    pub(crate) async fn finish_run(
        &self,
        run: &str,
        result: &ExecutionResult,
    ) -> Result<(), Error> {
        let stored = Stored {
            result: result.clone(),
            items: result.items.clone(),
        };
        let document = serde_json::to_string(&stored).unwrap_or_default();
        let mac = self
            .seal
            .sign_with(Kind::Outcome, &outcome_authority(run), Some(&document));
        let cancelled = result
            .error
            .as_ref()
            .is_some_and(|e| e.kind == ErrorKind::Cancelled);
        let status = match (result.ok, cancelled) {
            (true, _) => "ok",
            (false, true) => "cancelled",
            (false, false) => "failed",
        };
        let mut conn = self.conn();
        let _: i64 = self
            .finish
            .key(self.keys.run(run))
            .key(self.keys.events())
            .key(self.keys.going(&result.execution.tenant))
            .arg(document)
            .arg(status)
            .arg(self.retention_secs())
            .arg(self.config.events_kept)
            .arg(run)
            .arg(now_ms())
            .arg(self.config.stream_entry_bytes)
            .arg(mac)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(())
    }

    /// Starts listening for the outcome of `run` (before submitting it: then no outcome
    /// can come before the listener).
    pub(crate) async fn expect(
        &self,
        run: &str,
    ) -> Result<oneshot::Receiver<ExecutionResult>, Error> {
        self.ensure_reader().await?;
        Ok(self.waiters.register(run))
    }

    /// Stops listening for `run` (it was refused).
    pub(crate) fn unexpect(&self, run: &str) {
        self.waiters.forget(run);
    }

    /// The outcome of `run` that a listener from [`Distributed::expect`] receives; once the
    /// run's deadline (and the grace) has passed without one, its `run-lost` outcome.
    pub(crate) async fn outcome(
        &self,
        run: &str,
        mut receiver: oneshot::Receiver<ExecutionResult>,
    ) -> Result<ExecutionResult, Error> {
        // Until the record says when the run must end, look again after the longest wait
        // a run may have without a deadline of its own.
        let mut check_at = tokio::time::Instant::now() + self.config.lost_grace;
        loop {
            tokio::select! {
                delivered = &mut receiver => {
                    return delivered.map_err(|_| Error::Redis {
                        url: self.config.url.clone(),
                        reason: "the event reader stopped".into(),
                    });
                }
                _ = tokio::time::sleep_until(check_at) => {}
            }
            match self.settled_status(run).await? {
                Some(RunStatus {
                    result: Some(result),
                    ..
                }) => {
                    self.waiters.deliver(run, result.clone());
                    return Ok(result);
                }
                Some(status) => {
                    let due = status.deadline_ms.map_or(u64::MAX, |d| {
                        d.saturating_add(crate::contract::clock::millis(self.config.lost_grace))
                    });
                    let wait = due.saturating_sub(now_ms()).max(100);
                    check_at = tokio::time::Instant::now() + Duration::from_millis(wait);
                }
                // The record is gone (deleted, or expired): nothing will say how it ended.
                None => {
                    let result = self.lost(run, None);
                    self.waiters.deliver(run, result.clone());
                    return Ok(result);
                }
            }
        }
    }

    /// The run `id` as Redis knows it, given its `run-lost` outcome if its deadline and
    /// the grace have passed without one (the first outcome recorded wins, so a late real
    /// one is ignored, and a real one recorded first is kept).
    pub(crate) async fn settled_status(&self, id: &str) -> Result<Option<RunStatus>, Error> {
        let Some(status) = self.status(id).await? else {
            return Ok(None);
        };
        let lost = status.result.is_none()
            && status.deadline_ms.is_some_and(|d| {
                now_ms() > d.saturating_add(crate::contract::clock::millis(self.config.lost_grace))
            });
        if !lost {
            return Ok(Some(status));
        }
        self.finish_run(id, &self.lost(id, Some(&status))).await?;
        self.status(id).await
    }

    /// The outcome of run `id`, which did not end by its deadline.
    fn lost(&self, id: &str, status: Option<&RunStatus>) -> ExecutionResult {
        let (target, tenant, session) = status.map_or(("", "default", None), |s| {
            (s.target.as_str(), s.tenant.as_str(), s.session.clone())
        });
        let error = ExecutionError::host(
            ErrorKind::Timeout,
            codes::RUN_LOST,
            format!(
                "run `{id}` did not end by its deadline: a worker or Redis lost its outcome, or \
                 it ran too long; it may be submitted again"
            ),
        )
        .retryable(true);
        let info = ExecutionInfo::new(Some(id.to_string()), target, tenant, session);
        crate::execution::executor::failed(serde_json::Value::Null, error, info)
    }

    /// Waits for the outcome of `run`.
    pub(crate) async fn wait(&self, run: &str) -> Result<ExecutionResult, Error> {
        self.ensure_reader().await?;
        let receiver = self.waiters.register(run);
        // The outcome may have been written before we started listening.
        match self.status(run).await? {
            None => {
                self.waiters.forget(run);
                return Err(Error::Config(format!(
                    "there is no run `{run}` (never submitted, or its record expired)"
                )));
            }
            Some(RunStatus {
                result: Some(result),
                ..
            }) => {
                self.waiters.deliver(run, result.clone());
                return Ok(result);
            }
            Some(_) => {}
        }
        self.outcome(run, receiver).await
    }

    /// The run `id` as Redis knows it (`None` if it never existed or has expired).
    pub(crate) async fn status(&self, id: &str) -> Result<Option<RunStatus>, Error> {
        let key = self.keys.run(id);
        let fields: HashMap<String, String> = super::advance::retrying(|| async {
            let mut conn = self.conn();
            conn.hgetall(&key).await.map_err(|e| self.redis_error(e))
        })
        .await?;
        Ok(run_status(&self.seal, id, fields))
    }
}

/// A run's record as read from Redis, once its signatures are checked: `None` when there
/// is none, or when this fleet did not write it; an outcome this fleet did not write is
/// left out (the run is still going, as far as anyone here knows).
pub(super) fn run_status(
    seal: &Seal,
    id: &str,
    mut fields: HashMap<String, String>,
) -> Option<RunStatus> {
    let status = RunStatus {
        id: id.to_string(),
        target: fields.remove("target")?,
        tenant: fields.remove("tenant").unwrap_or_else(|| "default".into()),
        session: fields.remove("session"),
        priority: fields.get("priority").and_then(|s| s.parse().ok()),
        submitted_ms: fields
            .get("submitted")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        deadline_ms: fields.get("deadline").and_then(|s| s.parse().ok()),
        result: None,
        finished_ms: fields.get("finished").and_then(|s| s.parse().ok()),
        annex: None,
    };
    let mac = fields.get("mac").map_or("", String::as_str);
    if let Err(refused) = seal.check(Kind::Record, &record_authority(&status), mac) {
        tracing::warn!(run = %id, "ignored the run's record in Redis: {refused}");
        return None;
    }
    let result = fields.get("result").and_then(|text| {
        let mac = fields.get("resultMac").map_or("", String::as_str);
        verified_document(seal, id, text, mac)
    });
    let annex = super::index::verified_annex(seal, id, &fields);
    Some(RunStatus {
        result,
        annex,
        ..status
    })
}

/// What a run's record says that decides authority, as signed: what runs, for whom, from
/// when, until when, and how urgently.
pub(super) fn record_authority(status: &RunStatus) -> Fields {
    let mut fields = Fields::new();
    fields
        .str(&status.id)
        .str(&status.target)
        .str(&status.tenant)
        .opt_str(status.session.as_deref())
        .u64(status.submitted_ms)
        .opt_u64(status.deadline_ms);
    // Last, and only when asked for: a record written before runs had priorities reads
    // (and verifies) as one that asked for none.
    if let Some(priority) = status.priority {
        fields.u64(u64::from(priority));
    }
    fields
}

/// A run's outcome, as signed: the run's id, then (as the MAC's tail, uncopied) the
/// document's exact bytes.
fn outcome_authority(run: &str) -> Fields {
    let mut fields = Fields::new();
    fields.str(run);
    fields
}

/// The outcome `text` of `run`, once its signature `mac` is checked.
pub(super) fn verified_document(
    seal: &Seal,
    run: &str,
    text: &str,
    mac: &str,
) -> Option<ExecutionResult> {
    if let Err(refused) = seal.check_with(Kind::Outcome, &outcome_authority(run), Some(text), mac) {
        tracing::warn!(run = %run, "ignored an outcome in Redis: {refused}");
        return None;
    }
    parse_document(text)
}

/// A run's outcome as stored: the whole result, with a batch's items.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    result: ExecutionResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    items: Option<Vec<ExecutionResult>>,
}

/// A stored outcome read back.
fn parse_document(text: &str) -> Option<ExecutionResult> {
    let stored: Stored = serde_json::from_str(text).ok()?;
    let mut result = stored.result;
    result.items = stored.items;
    Some(result)
}

/// Callers waiting for runs' outcomes.
#[derive(Default)]
pub(super) struct Waiters {
    pending: Mutex<HashMap<String, Vec<oneshot::Sender<ExecutionResult>>>>,
}

impl Waiters {
    pub(super) fn register(&self, run: &str) -> oneshot::Receiver<ExecutionResult> {
        let (sender, receiver) = oneshot::channel();
        lock_map(&self.pending)
            .entry(run.to_string())
            .or_default()
            .push(sender);
        receiver
    }

    /// Drops the senders of callers that stopped waiting (their futures dropped). Done
    /// now and then by the reader, not on every submission.
    pub(super) fn prune(&self) {
        lock_map(&self.pending).retain(|_, senders| {
            senders.retain(|s| !s.is_closed());
            !senders.is_empty()
        });
    }

    /// Drops the senders of `run` nobody waits on any more.
    pub(super) fn forget(&self, run: &str) {
        let mut pending = lock_map(&self.pending);
        if let Some(senders) = pending.get_mut(run) {
            senders.retain(|s| !s.is_closed());
        }
    }

    /// Hands `result` to everyone waiting for `run`.
    pub(super) fn deliver(&self, run: &str, result: ExecutionResult) {
        let senders = lock_map(&self.pending).remove(run).unwrap_or_default();
        for sender in senders {
            let _ = sender.send(result.clone());
        }
    }

    pub(super) fn runs(&self) -> Vec<String> {
        lock_map(&self.pending).keys().cloned().collect()
    }

    pub(super) fn awaits(&self, run: &str) -> bool {
        lock_map(&self.pending).contains_key(run)
    }
}
