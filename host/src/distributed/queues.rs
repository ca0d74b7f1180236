//! How many jobs each of the fleet's queues holds, by state: what an operator watches to
//! see work piling up (waiting, delayed) or failing for good (failed, the dead-letter set).

use serde::Serialize;

use super::content;
use super::handle::Distributed;
use crate::contract::error::Error;

/// Most queues one listing counts (the first, by name).
pub(crate) const MAX_QUEUES_COUNTED: usize = 1_000;

/// The jobs one queue holds, by state, as BullMQ keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueCounts {
    /// The queue: a processor's name, or one of weir's own: `_join` (fan-outs' joins),
    /// `_delay` (chains' delays), `_schedule` (schedules' ticks).
    pub queue: String,
    /// Waiting for a worker (prioritised jobs included).
    pub waiting: u64,
    /// Being run now.
    pub active: u64,
    /// Waiting for their time (a retry's backoff, a delayed run).
    pub delayed: u64,
    /// Completed, as long as the retention keeps them.
    pub completed: u64,
    /// Failed for good: the dead-letter set.
    pub failed: u64,
    /// Waiting for their children (fan-outs' joins).
    pub waiting_children: u64,
    /// In a paused queue.
    pub paused: u64,
}

impl Distributed {
    /// The counts of every published processor's queue and of the joins' queue, sorted by
    /// name (at most [`MAX_QUEUES_COUNTED`]: one pipelined round trip each).
    pub(crate) async fn queue_counts(&self) -> Result<Vec<QueueCounts>, Error> {
        let mut conn = self.conn();
        let published = content::published_plugins(&mut conn, &self.keys, &self.seal)
            .await
            .map_err(|e| self.redis_error(e))?;
        let names = super::OWN_QUEUES
            .into_iter()
            .chain(published.keys().map(String::as_str))
            .take(MAX_QUEUES_COUNTED);
        let mut counts = Vec::new();
        for name in names {
            let queue = self.queue(name).await?;
            let c = queue
                .get_job_counts()
                .await
                .map_err(|e| self.redis_error(e))?;
            counts.push(QueueCounts {
                queue: name.to_string(),
                waiting: c.waiting + c.prioritized,
                active: c.active,
                delayed: c.delayed,
                completed: c.completed,
                failed: c.failed,
                waiting_children: c.waiting_children,
                paused: c.paused,
            });
        }
        counts.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(counts)
    }
}
