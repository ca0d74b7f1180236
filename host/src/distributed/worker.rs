//! A worker: serves the queue of every published processor (and the queues opened to
//! foreign jobs) through BullMQ, hears cancellations, and leaves cleanly, waiting for the
//! jobs it runs. What it does with each job is in `job.rs`; where the code a job names
//! comes from, in `fetch.rs`; jobs without weir's envelope, in `foreign.rs`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bullmq::worker::{CancellationToken, ProcessorFn};
use bullmq::{Job, Worker, WorkerOptions};
use serde_json::Value;

use super::bullmq_connection;
use super::control::{CancelMessage, Heard, listen_for_cancels};
use super::fetch::{FetchLocks, poll_catalog};
use super::foreign::ForeignQueue;
use super::handle::{Distributed, lock_map};
use super::wire::{StepJob, WireScope, job_id};
use crate::contract::cancel::{CancelHandle, CancelReason};
use crate::contract::error::Error;
use crate::execution::context::Context;
use crate::execution::registry::Unit;
use crate::sandbox::plugin::Plugin;

/// How a worker serves its queues.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs one queue runs at once in this process (sandboxes are bounded separately by
    /// the engine's instance pool).
    pub concurrency: usize,
    /// How long a job's lock lasts without renewal: a worker that dies holding a job
    /// loses it after this long, and another worker takes the job over.
    pub lock_duration: Duration,
    /// How often this worker looks for jobs whose worker died.
    pub stalled_interval: Duration,
    /// How often it looks for newly published processors to serve.
    pub catalog_poll: Duration,
    /// How long it waits before trying Redis again after losing it.
    pub reconnect_delay: Duration,
    /// The queues whose foreign jobs (without weir's format: from a Node BullMQ producer,
    /// say) this worker runs, and as whom. A foreign job on any other queue fails without
    /// running (none by default).
    pub foreign: BTreeMap<String, ForeignQueue>,
}

impl Default for WorkerConfig {
    /// 16 jobs per queue (after its sandbox each job waits on Redis twice, for its run's
    /// outcome and BullMQ's finish, so fewer leave the cores idle), 30 s locks checked
    /// every 30 s (BullMQ's defaults), the catalog polled every second, Redis retried after
    /// 500 ms.
    fn default() -> Self {
        WorkerConfig {
            concurrency: 16,
            lock_duration: Duration::from_secs(30),
            stalled_interval: Duration::from_secs(30),
            catalog_poll: Duration::from_secs(1),
            reconnect_delay: Duration::from_millis(500),
            foreign: BTreeMap::new(),
        }
    }
}

/// How long a step whose run could not be carried on (Redis failed) waits to run again.
pub(super) const REDIS_RETRY_MS: u64 = 1_000;

/// How long a retry's wait is kept for BullMQ to ask for it. BullMQ asks as soon as the
/// attempt has failed; a wait it never asks for (the job was removed, or failed for good)
/// is forgotten after this.
pub(super) const DELAY_KEPT: Duration = Duration::from_secs(60);

/// Waits before the next attempt, by job id, until BullMQ's backoff asks for them. It holds
/// at most [`Delays::PRUNE_AT`] waits or those of the last [`DELAY_KEPT`], whichever is
/// more: once it holds that many, older waits go.
#[derive(Debug, Default)]
pub(super) struct Delays {
    waits: HashMap<String, (u64, Instant)>,
}

impl Delays {
    const PRUNE_AT: usize = 1_024;

    /// Notes that job `id` waits `ms` before its next attempt.
    pub(super) fn note(&mut self, id: String, ms: u64, now: Instant) {
        if self.waits.len() >= Self::PRUNE_AT {
            self.waits
                .retain(|_, (_, noted)| now.saturating_duration_since(*noted) < DELAY_KEPT);
        }
        self.waits.insert(id, (ms, now));
    }

    /// The wait noted for job `id`, forgotten as it is taken.
    fn take(&mut self, id: &str) -> Option<u64> {
        self.waits.remove(id).map(|(ms, _)| ms)
    }
}

/// A running worker. Dropping it leaves its queues' BullMQ workers running until the
/// process ends; call [`WorkerHandle::close`] to stop cleanly.
pub struct WorkerHandle {
    inner: Arc<Inner>,
    poller: tokio::task::JoinHandle<()>,
    listener: tokio::task::JoinHandle<()>,
    /// Alive as long as the worker: the cancel listener holds it weakly.
    _on_cancel: Arc<dyn Fn(Heard) + Send + Sync>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

pub(super) struct Inner {
    pub(super) shared: Arc<Context>,
    pub(super) dist: Arc<Distributed>,
    pub(super) config: WorkerConfig,
    pub(super) plugins_dir: Option<PathBuf>,
    /// Components fetched from Redis, by digest, then name: the same bytes under two names
    /// are two processors, each with its own operator manifest.
    pub(super) fetched: Mutex<HashMap<String, Vec<Arc<Plugin>>>>,
    /// One lock per component being fetched, by (name, digest).
    pub(super) fetching: FetchLocks,
    /// Components that failed to load lately, by (name, digest), with when and why.
    pub(super) unloadable: Mutex<HashMap<(String, String), (Instant, String)>>,
    /// What names missing here resolved to lately for nested calls (`None`: nothing usable).
    pub(super) resolved: Mutex<HashMap<String, (Instant, Option<Unit>)>>,
    pub(super) workers: tokio::sync::Mutex<HashMap<String, Arc<Worker>>>,
    /// Waits before the next attempt, decided when an attempt failed, keyed by job id;
    /// BullMQ asks for them through weir's backoff strategy.
    pub(super) delays: Mutex<Delays>,
    /// The steps running here, by job id, so that a cancellation can reach them.
    pub(super) active: Mutex<HashMap<String, Active>>,
    /// How many steps `active` holds, for a leaving worker to wait on.
    pub(super) active_count: tokio::sync::watch::Sender<usize>,
    /// Every cancellation in force, as heard on the cancel channel (`None` while the
    /// listener is not subscribed: then jobs read the markers in Redis).
    heard: Mutex<Option<Vec<CancelMessage>>>,
}

/// Cancellations remembered at most (the oldest are forgotten first; their markers stay).
const HEARD_KEPT: usize = 10_000;

/// A step running in this worker.
pub(super) struct Active {
    pub(super) run: String,
    pub(super) joins: Vec<String>,
    pub(super) scope: WireScope,
    pub(super) cancel: CancelHandle,
}

/// Forgets a running step when it ends, however it ends.
pub(super) struct Running<'a> {
    pub(super) inner: &'a Inner,
    pub(super) id: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut active = lock_map(&self.inner.active);
        active.remove(&self.id);
        self.inner.active_count.send_replace(active.len());
    }
}

impl WorkerHandle {
    /// Starts serving the queue of every processor published to Redis (and, as they are
    /// published, new ones).
    pub(crate) async fn start(
        shared: Arc<Context>,
        dist: Arc<Distributed>,
        plugins_dir: Option<PathBuf>,
        config: WorkerConfig,
    ) -> Result<WorkerHandle, Error> {
        if config.concurrency == 0 {
            return Err(Error::Config(
                "worker concurrency must be at least 1".into(),
            ));
        }
        let inner = Arc::new(Inner {
            shared,
            dist,
            config,
            plugins_dir,
            fetched: Mutex::new(HashMap::new()),
            fetching: Mutex::default(),
            unloadable: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
            workers: tokio::sync::Mutex::new(HashMap::new()),
            delays: Mutex::new(Delays::default()),
            active: Mutex::new(HashMap::new()),
            active_count: tokio::sync::watch::channel(0).0,
            heard: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        // A guest's nested `call` finds what this worker holds only in Redis.
        inner.shared.set_published_resolver(weak.clone());
        let on_cancel: Arc<dyn Fn(Heard) + Send + Sync> = Arc::new(move |heard| {
            if let Some(inner) = weak.upgrade() {
                inner.hear(heard);
            }
        });
        let listener = tokio::spawn(listen_for_cancels(
            inner.dist.config.clone(),
            inner.dist.keys.clone(),
            Arc::downgrade(&on_cancel),
            inner.config.reconnect_delay,
        ));
        inner.serve_published().await?;
        let poller = tokio::spawn(poll_catalog(Arc::downgrade(&inner)));
        Ok(WorkerHandle {
            inner,
            poller,
            listener,
            _on_cancel: on_cancel,
        })
    }

    /// The processors whose queues this worker serves.
    pub async fn queues(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.workers.lock().await.keys().cloned().collect();
        names.sort();
        names
    }

    /// Stops taking jobs, lets the ones in flight finish for up to `grace`, then cancels
    /// what is left; a job whose step did not finish goes back to its queue when its lock
    /// expires, for another worker.
    pub async fn close(self, grace: Duration) {
        self.poller.abort();
        self.listener.abort();
        let workers: Vec<Arc<Worker>> = self.inner.workers.lock().await.values().cloned().collect();
        for worker in &workers {
            worker.pause();
        }
        let inner = self.inner.clone();
        // All queues at once: each close waits for its jobs in flight (up to `grace`) and
        // for its blocking fetch to return.
        let grace_ms = grace.as_millis().try_into().unwrap_or(u64::MAX);
        let closing =
            futures_util::future::join_all(workers.iter().map(|worker| worker.close(grace_ms)));
        let hard = grace + inner.shared.config().cancel_grace * 10 + Duration::from_secs(1);
        let _ = tokio::time::timeout(hard, closing).await;
        // Steps still running are cancelled as this worker leaves, and each notes that it
        // is handed back (not a crash) before it ends: wait for those notes (within the
        // cancellation's grace), or the process could exit first and the next worker take
        // the step for a crash.
        let mut running = inner.active_count.subscribe();
        if *running.borrow_and_update() > 0 {
            inner.shared.activity().cancel_all(CancelReason::Shutdown);
            let hard = inner.shared.config().cancel_grace * 10 + Duration::from_secs(1);
            let _ = tokio::time::timeout(hard, running.wait_for(|n| *n == 0)).await;
        }
    }
}

impl Inner {
    pub(super) async fn start_queue(self: &Arc<Self>, name: &str) -> Result<Arc<Worker>, Error> {
        let inner = Arc::downgrade(self);
        let queue = name.to_string();
        let processor: ProcessorFn = Arc::new(move |job: Job, _token: CancellationToken| {
            let inner = inner.clone();
            let queue = queue.clone();
            Box::pin(async move {
                match inner.upgrade() {
                    Some(inner) => inner.handle(queue, job).await,
                    None => Err(bullmq::Error::WorkerClosed),
                }
            })
        });
        let delays = Arc::downgrade(self);
        let backoff: bullmq::BackoffStrategyFn = Arc::new(move |_, _, _, data: &Value| {
            let delay = delays.upgrade().and_then(|inner| {
                let run = data.get("run")?.as_str()?;
                let path = data.get("path")?.as_str()?;
                lock_map(&inner.delays).take(&job_id(run, path))
            });
            // Unknown (not weir's decision): retry at once, as BullMQ would without backoff.
            let delay = delay.map_or(0, |ms| i64::try_from(ms).unwrap_or(i64::MAX));
            Box::pin(async move { delay })
        });
        let options = WorkerOptions::new()
            .connection(bullmq_connection(&self.dist.config))
            .prefix(self.dist.config.prefix.clone())
            .name("weir")
            .concurrency(self.config.concurrency)
            .lock_duration(self.config.lock_duration)
            .stalled_interval(self.config.stalled_interval)
            // A job whose worker died is run again up to three times before it fails.
            .max_stalled_count(3)
            .run_retry_delay(self.config.reconnect_delay)
            // An idle queue's blocking fetch returns every second, so closing is quick.
            .drain_delay(Duration::from_secs(1))
            .skip_version_check()
            .backoff_strategy(backoff);
        let worker = Worker::with_options(name, processor, options)
            .await
            .map_err(|e| super::unreachable(&self.dist.config, e))?;
        let worker = Arc::new(worker);
        // BullMQ's event channel is unbounded: drain it for as long as the worker lives.
        let events = worker.clone();
        let queue = name.to_string();
        tokio::spawn(async move {
            while let Some(event) = events.next_event().await {
                match event {
                    bullmq::worker::WorkerEvent::Error(error) => {
                        tracing::warn!(target: "weir::worker", %queue, %error, "queue error");
                    }
                    bullmq::worker::WorkerEvent::Stalled { job_id } => {
                        tracing::warn!(
                            target: "weir::worker",
                            %queue,
                            job = %job_id,
                            "a job's worker stopped holding it; it runs again"
                        );
                    }
                    bullmq::worker::WorkerEvent::Closed => break,
                    _ => {}
                }
            }
        });
        Ok(worker)
    }

    /// Takes in what the cancel listener heard.
    fn hear(&self, heard: Heard) {
        match heard {
            Heard::Everything(messages) => {
                for message in &messages {
                    self.cancel_matching(message);
                }
                *lock_map(&self.heard) = Some(messages);
            }
            Heard::One(message) => {
                self.cancel_matching(&message);
                if let Some(messages) = lock_map(&self.heard).as_mut() {
                    if messages.len() >= HEARD_KEPT {
                        messages.drain(..HEARD_KEPT / 2);
                    }
                    messages.push(message);
                }
            }
            Heard::Deaf => *lock_map(&self.heard) = None,
        }
    }

    /// Whether a step is cancelled, by what this worker heard: `None` when it cannot say
    /// (the listener is not subscribed), `Some(None)` when the step may run.
    /// `joins` are the fan-outs the step is in.
    pub(super) fn cancelled_as_heard(
        &self,
        step: &StepJob,
        joins: &[String],
    ) -> Option<Option<CancelReason>> {
        let heard = lock_map(&self.heard);
        let messages = heard.as_ref()?;
        Some(
            messages
                .iter()
                .rev()
                .find(|m| m.reaches(&step.run, joins, &step.scope))
                .map(CancelMessage::reason),
        )
    }

    /// Cancels the steps running here that `message` reaches.
    fn cancel_matching(&self, message: &CancelMessage) {
        let reason = message.reason();
        for active in lock_map(&self.active).values() {
            if message.reaches(&active.run, &active.joins, &active.scope) {
                active.cancel.cancel_with(reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_waits_nobody_asks_for_are_forgotten() {
        let mut delays = Delays::default();
        let start = Instant::now();
        // Jobs that failed for good or were removed: BullMQ never asks for their waits.
        for i in 0..5_000 {
            delays.note(format!("gone-{i}"), 100, start);
        }
        delays.note("asked".into(), 250, start + DELAY_KEPT);
        delays.note("next".into(), 500, start + DELAY_KEPT * 2);
        assert!(
            delays.waits.len() <= Delays::PRUNE_AT,
            "{}",
            delays.waits.len()
        );
        assert_eq!(delays.take("next"), Some(500));
        assert_eq!(delays.take("next"), None);
    }
}
