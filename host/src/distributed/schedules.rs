//! Schedules in the fleet: each one a BullMQ job scheduler on weir's `_schedule` queue, so a
//! tick is one job however many workers and servers run, the schedule outlives every
//! process, and Bull Board shows it. Its definition travels as the scheduler's job data,
//! signed by the fleet (job data is input, never authority); each tick's job is handed to
//! the embedding that fires it ([`Ticks`]), and what the latest tick did is kept beside.

use std::sync::{Arc, Weak};

use bullmq::Job;
use bullmq::job_scheduler::{JobSchedulerJson, RepeatOptions};
use bullmq::types::{BackoffStrategy, KeepJobs, RemoveOnFinish};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::handle::{Distributed, lock_map};
use super::trust::{Fields, Kind};
use super::worker::Inner;
use crate::contract::error::Error;
use crate::contract::schedule::{LastTick, Origin, Schedule, ScheduleBounds, ScheduleSpec, When};

/// The queue every schedule's ticks wait on, served by every worker.
pub(crate) const SCHEDULE_QUEUE: &str = "_schedule";

/// Attempts at a tick whose firing met a Redis failure.
const TICK_ATTEMPTS: u32 = 5;

/// Tick jobs kept once done, for Bull Board (each schedule's latest also in its record).
const TICKS_KEPT: usize = 100;

fn kept() -> RemoveOnFinish {
    RemoveOnFinish::Options(KeepJobs {
        age: None,
        count: Some(TICKS_KEPT),
        limit: None,
    })
}

/// Fires schedules' ticks: the embedding's (it runs a request as its callers' would be,
/// charged to the schedule's tenant). Installed on the runtime that serves the queues.
#[async_trait::async_trait]
pub(crate) trait Ticks: Send + Sync {
    /// Fires the tick at `tick_ms` of `schedule`, whose latest run (of any earlier tick)
    /// is `previous_run`: starts its run (or says why it started none). An `Err` is a
    /// failure to reach what it needs (the tick is tried again).
    async fn fire(
        &self,
        schedule: Schedule,
        tick_ms: u64,
        previous_run: Option<String>,
    ) -> Result<LastTick, String>;
}

/// A schedule as the fleet keeps it.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub schedule: Schedule,
    pub origin: Origin,
    /// Its next tick, if it has one.
    pub next_ms: Option<u64>,
    /// Ticks fired so far.
    pub ticks: u64,
    pub last: Option<LastTick>,
}

/// A scheduler's job data: the schedule, signed.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    weir: u32,
    id: String,
    name: String,
    origin: Origin,
    /// The spec as JSON text: the exact bytes signed.
    spec: String,
    mac: String,
}

fn authority(id: &str, name: &str, origin: Origin, spec: &str) -> Fields {
    let mut fields = Fields::new();
    fields.str(id).str(name).str(origin.as_str()).str(spec);
    fields
}

impl Distributed {
    /// Creates or replaces `schedule` in the fleet (its tick count and next tick are kept
    /// when only its run, input or bounds changed, as BullMQ keeps them).
    pub(crate) async fn upsert_schedule(
        &self,
        schedule: &Schedule,
        origin: Origin,
    ) -> Result<(), Error> {
        let id = schedule.id();
        let spec = serde_json::to_string(schedule.spec())
            .map_err(|e| Error::Config(format!("schedule `{id}`: {e}")))?;
        let mac = self.seal.sign(
            Kind::Schedule,
            &authority(&id, schedule.name(), origin, &spec),
        );
        let envelope = Envelope {
            weir: 1,
            id: id.clone(),
            name: schedule.name().to_string(),
            origin,
            spec,
            mac,
        };
        let data = serde_json::to_value(&envelope)
            .map_err(|e| Error::Config(format!("schedule `{id}`: {e}")))?;
        let mut repeat = RepeatOptions {
            limit: schedule.limit(),
            start_date: schedule.start_ms(),
            end_date: schedule.end_ms(),
            ..RepeatOptions::default()
        };
        match schedule.when() {
            When::Cron { pattern, tz } => {
                repeat.pattern = Some(pattern.clone());
                repeat.tz = tz.clone();
            }
            When::Every { ms } => repeat.every = Some(*ms),
        }
        let mut options = bullmq::JobOptions::new()
            .attempts(TICK_ATTEMPTS)
            .backoff(BackoffStrategy::Fixed(1_000))
            .remove_on_complete(kept())
            .remove_on_fail(kept());
        options.job_id = None;
        let queue = self.queue(SCHEDULE_QUEUE).await?;
        queue
            .upsert_job_scheduler(
                &id,
                repeat,
                Some(schedule.name()),
                Some(data),
                Some(options),
            )
            .await
            .map_err(|e| Error::Config(format!("cannot schedule `{id}` in Redis: {e}")))?;
        Ok(())
    }

    /// Removes the schedule `id` (`TENANT.NAME`) and its pending tick; whether there was one.
    pub(crate) async fn remove_schedule(&self, id: &str) -> Result<bool, Error> {
        let queue = self.queue(SCHEDULE_QUEUE).await?;
        let removed = queue
            .remove_job_scheduler(id)
            .await
            .map_err(|e| self.redis_error(e))?;
        let mut conn = self.conn();
        let _: () = redis::pipe()
            .cmd("HDEL")
            .arg(self.keys.own("schedules:last"))
            .arg(id)
            .ignore()
            .cmd("HDEL")
            .arg(self.keys.own("schedules:run"))
            .arg(id)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(removed)
    }

    /// The fleet's schedules (the first `bounds.max_total` by next tick), with what each
    /// one's latest tick did. A scheduler whose data this fleet did not sign is left out.
    pub(crate) async fn stored_schedules(
        &self,
        bounds: &ScheduleBounds,
    ) -> Result<Vec<Stored>, Error> {
        let queue = self.queue(SCHEDULE_QUEUE).await?;
        let end = isize::try_from(bounds.max_total).unwrap_or(isize::MAX) - 1;
        let schedulers = queue
            .get_job_schedulers(0, end, true)
            .await
            .map_err(|e| self.redis_error(e))?;
        let mut conn = self.conn();
        let lasts: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.own("schedules:last"))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        let mut stored = Vec::with_capacity(schedulers.len());
        for scheduler in schedulers {
            let Some((schedule, origin)) = self.opened(&scheduler, bounds) else {
                continue;
            };
            let last = lasts
                .get(&scheduler.key)
                .and_then(|text| serde_json::from_str(text).ok());
            let next_ms = scheduler.next.filter(|&next| next > 0);
            stored.push(Stored {
                schedule,
                origin,
                next_ms,
                // BullMQ counts the iteration waiting for its time too.
                ticks: scheduler
                    .iteration_count
                    .saturating_sub(u64::from(next_ms.is_some())),
                last,
            });
        }
        Ok(stored)
    }

    /// The schedule a scheduler's data holds, if this fleet signed it.
    fn opened(
        &self,
        scheduler: &JobSchedulerJson,
        bounds: &ScheduleBounds,
    ) -> Option<(Schedule, Origin)> {
        let data = scheduler.data.as_ref()?;
        match self.open_envelope(data, bounds) {
            Ok(opened) if opened.0.id() == scheduler.key => Some(opened),
            Ok(_) => None,
            Err(why) => {
                tracing::debug!(scheduler = %scheduler.key, %why, "a schedule left out");
                None
            }
        }
    }

    /// The schedule in a scheduler's (or tick job's) data, checked against the fleet's
    /// seal and re-checked as a schedule.
    fn open_envelope(
        &self,
        data: &Value,
        bounds: &ScheduleBounds,
    ) -> Result<(Schedule, Origin), String> {
        let envelope = Envelope::deserialize(data)
            .map_err(|e| format!("the schedule is not in weir's format: {e}"))?;
        let fields = authority(
            &envelope.id,
            &envelope.name,
            envelope.origin,
            &envelope.spec,
        );
        self.seal
            .check(Kind::Schedule, &fields, &envelope.mac)
            .map_err(|refused| refused.0)?;
        let spec: ScheduleSpec = serde_json::from_str(&envelope.spec)
            .map_err(|e| format!("the schedule's fields do not read: {e}"))?;
        // Checked with no floor on its interval: the processes that added it checked theirs.
        let lenient = ScheduleBounds {
            min_interval: std::time::Duration::ZERO,
            ..*bounds
        };
        let schedule = Schedule::new(&envelope.name, spec, &lenient)?;
        if schedule.id() != envelope.id {
            return Err(format!(
                "the schedule `{}` says it is `{}`",
                schedule.id(),
                envelope.id
            ));
        }
        Ok((schedule, envelope.origin))
    }

    /// The latest run a tick of the schedule `id` started, if any (later ticks may have
    /// been skipped since).
    async fn latest_run(&self, id: &str) -> Result<Option<String>, Error> {
        let mut conn = self.conn();
        redis::cmd("HGET")
            .arg(self.keys.own("schedules:run"))
            .arg(id)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))
    }

    /// Keeps what the tick of schedule `id` did, unless a later tick is kept already, and
    /// the run it started as the schedule's latest.
    async fn note_tick(&self, id: &str, tick: &LastTick) -> Result<(), Error> {
        let text = serde_json::to_string(tick).map_err(|e| Error::Config(e.to_string()))?;
        let mut conn = self.conn();
        let _: i64 = self
            .note_tick
            .key(self.keys.own("schedules:last"))
            .key(self.keys.own("schedules:run"))
            .arg(id)
            .arg(tick.tick_ms)
            .arg(text)
            .arg(tick.run.as_deref().unwrap_or_default())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(())
    }

    /// Hands schedules' ticks to `ticks` from now on (the runtime that serves the queues).
    pub(crate) fn set_ticks(&self, ticks: Weak<dyn Ticks>) {
        *lock_map(&self.ticks) = Some(ticks);
    }

    /// Whether the run `id` is still going, as its record says.
    pub(crate) async fn run_going(&self, id: &str) -> Result<bool, Error> {
        Ok(self
            .status(id)
            .await?
            .is_some_and(|status| status.result.is_none()))
    }
}

impl Inner {
    /// A schedule's tick: the schedule (if this fleet signed it) fired by the embedding;
    /// what it did is kept as the schedule's latest tick and returned as the job's value.
    pub(super) async fn handle_schedule(&self, job: &Job) -> Result<Value, bullmq::Error> {
        let bounds = self.shared.config().schedules;
        let (schedule, _) = self
            .dist
            .open_envelope(job.data(), &bounds)
            .map_err(bullmq::Error::Unrecoverable)?;
        // A tick's job id is `repeat:{scheduler}:{tick}`.
        let tick_ms = job
            .id()
            .rsplit_once(':')
            .and_then(|(_, ms)| ms.parse::<u64>().ok())
            .ok_or_else(|| {
                bullmq::Error::Unrecoverable(format!("`{}` is not a schedule's tick", job.id()))
            })?;
        if job.repeat_job_key().is_some_and(|key| key != schedule.id()) {
            return Err(bullmq::Error::Unrecoverable(format!(
                "the tick of `{}` carries the schedule `{}`",
                job.repeat_job_key().unwrap_or_default(),
                schedule.id()
            )));
        }
        let ticks = lock_map(&self.dist.ticks).as_ref().and_then(Weak::upgrade);
        let Some(ticks) = ticks else {
            return Err(bullmq::Error::ProcessingError(
                "this worker fires no schedules".into(),
            ));
        };
        let id = schedule.id();
        let previous_run = self
            .dist
            .latest_run(&id)
            .await
            .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
        let done = fire(ticks, schedule, tick_ms, previous_run)
            .await
            .map_err(bullmq::Error::ProcessingError)?;
        self.dist
            .note_tick(&id, &done)
            .await
            .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
        serde_json::to_value(&done).map_err(|e| bullmq::Error::ProcessingError(e.to_string()))
    }
}

/// `ticks.fire`, on a task of its own (a panic in it fails the tick, not the worker).
async fn fire(
    ticks: Arc<dyn Ticks>,
    schedule: Schedule,
    tick_ms: u64,
    previous_run: Option<String>,
) -> Result<LastTick, String> {
    tokio::spawn(async move { ticks.fire(schedule, tick_ms, previous_run).await })
        .await
        .map_err(|panic| format!("firing the tick failed: {panic}"))?
}
