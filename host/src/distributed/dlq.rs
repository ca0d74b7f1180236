//! The dead-letter set: jobs that failed for good (their attempts exhausted, or a failure
//! that is never retried), kept in each queue's BullMQ `failed` set for as long as the
//! failed-job retention says; listing them, redriving one (its step runs again and its run
//! carries on from there, with a new outcome), and purging one.

use bullmq::RetryOptions;
use redis::AsyncCommands;
use serde::Serialize;
use serde_json::Value;

use super::content;
use super::handle::Distributed;
use super::wire::{StepJob, enclosing_join};
use crate::contract::error::Error;

/// A job in the dead-letter set.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadJob {
    /// Its queue (the processor's name).
    pub queue: String,
    /// Its job id.
    pub id: String,
    /// The run it was a step of (`None` for a job another producer added).
    pub run: Option<String>,
    /// Why it failed: the error's kind, code and message.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it failed (Unix milliseconds).
    pub failed_at_ms: Option<u64>,
    /// The job's input state.
    pub input: Value,
}

impl Distributed {
    /// The newest `limit` dead jobs of `queue`, or of every published processor's queue.
    pub(crate) async fn dead_jobs(
        &self,
        queue: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadJob>, Error> {
        let queues = match queue {
            Some(queue) => vec![queue.to_string()],
            None => {
                let mut conn = self.conn();
                content::published_plugins(&mut conn, &self.keys, &self.seal)
                    .await
                    .map_err(|e| self.redis_error(e))?
                    .into_keys()
                    .collect()
            }
        };
        let end = i64::try_from(limit).unwrap_or(i64::MAX).saturating_sub(1);
        let mut dead = Vec::new();
        for name in queues {
            let queue = self.queue(&name).await?;
            let jobs = queue
                .get_failed(0, end)
                .await
                .map_err(|e| self.redis_error(e))?;
            for job in jobs {
                let step = serde_json::from_value::<StepJob>(job.data().clone()).ok();
                dead.push(DeadJob {
                    queue: name.clone(),
                    id: job.id().to_string(),
                    run: step.as_ref().map(|s| s.run.clone()),
                    reason: job.failed_reason().to_string(),
                    attempts: job.attempts_made(),
                    failed_at_ms: job.finished_on(),
                    input: step.map_or_else(|| job.data().clone(), |s| s.state),
                });
            }
        }
        dead.sort_by_key(|job| std::cmp::Reverse(job.failed_at_ms));
        dead.truncate(limit);
        Ok(dead)
    }

    /// Sends the dead job `id` of `queue` back to its queue with fresh attempts. A step of
    /// a run makes its run unfinished again: the step runs, the run carries on from it and
    /// records a new outcome. A step inside a fan-out cannot be redriven (its fan-out has
    /// ended without it): run the workflow again instead.
    /// Removes a dead job for good (its run keeps the outcome it has). Refused (a
    /// [`Error::Config`] saying why) for a job that is not in the dead-letter set.
    pub(crate) async fn purge(&self, queue: &str, id: &str) -> Result<(), Error> {
        let (bullmq_queue, _) = self.dead_job(queue, id).await?;
        bullmq_queue
            .remove(id)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(())
    }

    /// The dead job `id` of `queue` and its queue; a [`Error::Config`] saying what it is
    /// if it is not dead (or not there).
    async fn dead_job(
        &self,
        queue: &str,
        id: &str,
    ) -> Result<(std::sync::Arc<bullmq::Queue>, bullmq::Job), Error> {
        let bullmq_queue = self.queue(queue).await?;
        let job = bullmq_queue
            .get_job(id)
            .await
            .map_err(|e| self.redis_error(e))?;
        let Some(job) = job else {
            return Err(Error::Config(format!(
                "there is no job `{id}` in the queue `{queue}` (it may have expired)"
            )));
        };
        let state = job.get_state().await.map_err(|e| self.redis_error(e))?;
        if state.as_str() != "failed" {
            return Err(Error::Config(format!(
                "the job `{id}` of `{queue}` is {}, not in the dead-letter set",
                state.as_str()
            )));
        }
        Ok((bullmq_queue, job))
    }

    pub(crate) async fn redrive(&self, queue: &str, id: &str) -> Result<(), Error> {
        let (_, mut job) = self.dead_job(queue, id).await?;
        if let Ok(step) = serde_json::from_value::<StepJob>(job.data().clone()) {
            if enclosing_join(&step.frames).is_some() {
                return Err(Error::Config(format!(
                    "the job `{id}` was a branch of a fan-out that has ended without it; run \
                     the workflow again instead"
                )));
            }
            // The run is unfinished again, so its new outcome is recorded and announced.
            let mut conn = self.conn();
            let key = self.keys.run(&step.run);
            let _: () = redis::pipe()
                .hdel(&key, &["result", "finished"])
                .ignore()
                // A cancellation of the run is over: the redriven step runs.
                .del(self.keys.cancelled("run", &step.run))
                .ignore()
                .hset(&key, "status", "running")
                .ignore()
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis_error(e))?;
            let _: () = conn
                .expire(&key, self.retention_secs())
                .await
                .map_err(|e| self.redis_error(e))?;
        }
        let fresh = RetryOptions {
            reset_attempts_made: true,
            reset_attempts_started: true,
        };
        job.retry("failed", Some(fresh))
            .await
            .map_err(|e| self.redis_error(e))
    }
}
