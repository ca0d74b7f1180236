//! A worker: serves the queue of every published processor through BullMQ, runs each job's
//! step in a fresh sandbox with the exact component the job names (fetching it by digest
//! when this process lacks it), decides retries from the processor's policy, and carries
//! the job's run on. Jobs that Node BullMQ (or any producer) adds without weir's envelope
//! are run on the queues that take them, as the tenant named for each: their data is the
//! input state and their return value the result document. A job whose earlier start never
//! ended (its worker died) fails instead of running again.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bullmq::worker::{CancellationToken, ProcessorFn};
use bullmq::{Job, Worker, WorkerOptions};
use serde::Deserialize;
use serde_json::Value;

use super::bullmq_connection;
use super::client::Distributed;
use super::client::lock_map;
use super::content;
use super::control::{CancelMessage, Heard, joins_of, listen_for_cancels};
use super::fanout::JOIN_QUEUE;
use super::flow::Next;
use super::trust::{Kind, Refused};
use super::wire::{Binding, FORMAT, JoinJob, StepJob, WireScope, instant_of, job_id};
use crate::contract::cancel::{CancelHandle, CancelReason};
use crate::contract::error::{Error, ErrorKind, ExecutionError, codes};
use crate::contract::limits::LimitOverrides;
use crate::contract::manifest::Manifest;
use crate::contract::result::ExecutionResult;
use crate::execution::context::{Context, Published};
use crate::execution::executor::{
    Pinned, ProgressSink, Scope, cancelled_unstarted, execute_pinned, execution_event, failed,
};
use crate::execution::registry::Unit;
use crate::sandbox::events::EventKind;
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

/// Who runs the foreign jobs of a queue, and what admits them.
#[derive(Debug, Clone)]
pub struct ForeignQueue {
    /// The tenant the queue's foreign jobs run as.
    pub tenant: String,
    /// What the tenant may run, its ceilings and its quotas (`None`: unbounded).
    pub admission: Option<Arc<dyn ForeignAdmission>>,
}

/// Admits foreign jobs as one tenant, as an HTTP request of that tenant would be: what it
/// may run, its ceilings on any one execution, and its quotas. The HTTP server's tenants
/// implement it (`weir_server::foreign_admission`), counting usage in Redis across the
/// fleet.
#[async_trait::async_trait]
pub trait ForeignAdmission: Send + Sync + std::fmt::Debug {
    /// Whether the tenant may run `processor` at all.
    fn may_run(&self, processor: &str) -> bool;
    /// The tenant's ceilings on any one execution.
    fn ceilings(&self) -> LimitOverrides;
    /// Takes a place in the tenant's quotas for one job, or says which quota is spent.
    async fn admit(&self) -> Result<Box<dyn ForeignPlace>, ExecutionError>;
}

/// A foreign job's place in its tenant's quotas.
#[async_trait::async_trait]
pub trait ForeignPlace: Send {
    /// Gives the place back, charging the fuel the job burnt.
    async fn settle(self: Box<Self>, fuel: u64);
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
const REDIS_RETRY_MS: u64 = 1_000;

/// How long a retry's wait is kept for BullMQ to ask for it. BullMQ asks as soon as the
/// attempt has failed; a wait it never asks for (the job was removed, or failed for good)
/// is forgotten after this.
const DELAY_KEPT: Duration = Duration::from_secs(60);

/// Waits before the next attempt, by job id, until BullMQ's backoff asks for them. It holds
/// at most [`Delays::PRUNE_AT`] waits or those of the last [`DELAY_KEPT`], whichever is
/// more: once it holds that many, older waits go.
#[derive(Debug, Default)]
struct Delays {
    waits: HashMap<String, (u64, Instant)>,
}

impl Delays {
    const PRUNE_AT: usize = 1_024;

    /// Notes that job `id` waits `ms` before its next attempt.
    fn note(&mut self, id: String, ms: u64, now: Instant) {
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

/// Digests of fetched components kept per process (all are forgotten when more arrive).
const FETCHED_KEPT: usize = 64;

/// How long a component that failed to load is not tried again (an operator may fix its
/// manifest meanwhile).
const UNLOADABLE_KEPT: Duration = Duration::from_secs(10);

/// How long what a name was published as is reused for nested calls (found or not), so a
/// guest calling in a loop costs Redis at most one lookup per name in this time.
const RESOLVED_KEPT: Duration = Duration::from_secs(1);

/// Names whose resolution is kept at most (all are forgotten when more are asked for).
const RESOLVED_MAX: usize = 1024;

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

struct Inner {
    shared: Arc<Context>,
    dist: Arc<Distributed>,
    config: WorkerConfig,
    plugins_dir: Option<PathBuf>,
    /// Components fetched from Redis, by digest, then name: the same bytes under two names
    /// are two processors, each with its own operator manifest.
    fetched: Mutex<HashMap<String, Vec<Arc<Plugin>>>>,
    /// One lock per component being fetched, by (name, digest).
    fetching: FetchLocks,
    /// Components that failed to load lately, by (name, digest), with when and why.
    unloadable: Mutex<HashMap<(String, String), (Instant, String)>>,
    /// What names missing here resolved to lately for nested calls (`None`: nothing usable).
    resolved: Mutex<HashMap<String, (Instant, Option<Unit>)>>,
    workers: tokio::sync::Mutex<HashMap<String, Arc<Worker>>>,
    /// Waits before the next attempt, decided when an attempt failed, keyed by job id;
    /// BullMQ asks for them through weir's backoff strategy.
    delays: Mutex<Delays>,
    /// The steps running here, by job id, so that a cancellation can reach them.
    active: Mutex<HashMap<String, Active>>,
    /// How many steps `active` holds, for a leaving worker to wait on.
    active_count: tokio::sync::watch::Sender<usize>,
    /// Every cancellation in force, as heard on the cancel channel (`None` while the
    /// listener is not subscribed: then jobs read the markers in Redis).
    heard: Mutex<Option<Vec<CancelMessage>>>,
}

/// Cancellations remembered at most (the oldest are forgotten first; their markers stay).
const HEARD_KEPT: usize = 10_000;

/// A step running in this worker.
struct Active {
    run: String,
    joins: Vec<String>,
    scope: WireScope,
    cancel: CancelHandle,
}

/// Forgets a running step when it ends, however it ends.
struct Running<'a> {
    inner: &'a Inner,
    id: String,
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

/// Looks for newly published processors until the worker is closed.
async fn poll_catalog(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let every = strong.config.catalog_poll;
        if let Err(error) = strong.serve_published().await {
            tracing::debug!(%error, "cannot read the published processors; trying again");
        }
        // Say this worker is alive (submitters tell their users when none is).
        let alive = every.max(Duration::from_secs(1)) * 5;
        if let Err(error) = strong.dist.heartbeat(alive).await {
            tracing::debug!(%error, "cannot say this worker is alive");
        }
        drop(strong);
        tokio::time::sleep(every).await;
    }
}

impl Inner {
    /// Starts a BullMQ worker on the queue of every published processor not served yet.
    async fn serve_published(self: &Arc<Self>) -> Result<(), Error> {
        let mut conn = self.dist.conn();
        let published = content::published_plugins(&mut conn, &self.dist.keys, &self.dist.seal)
            .await
            .map_err(|e| super::unreachable(&self.dist.config, e))?;
        let mut workers = self.workers.lock().await;
        let names = std::iter::once(JOIN_QUEUE).chain(published.keys().map(String::as_str));
        for name in names {
            if workers.contains_key(name) {
                continue;
            }
            let worker = self.start_queue(name).await?;
            tracing::info!(target: "weir::worker", queue = %name, "serving queue");
            workers.insert(name.to_string(), worker);
        }
        Ok(())
    }

    async fn start_queue(self: &Arc<Self>, name: &str) -> Result<Arc<Worker>, Error> {
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

    /// Runs one job. Whatever happens inside, the job ends (a panic in the host is caught
    /// and reported as the step's failure, never left `active`).
    async fn handle(self: Arc<Self>, queue: String, job: Job) -> Result<Value, bullmq::Error> {
        let attempt = job.attempts_made().saturating_add(1);
        // Starts of this job that never ended, before this one: its worker died running it,
        // or left and handed it back.
        let unfinished = job
            .attempts_started()
            .saturating_sub(job.attempts_made())
            .saturating_sub(1);
        let data = job.data();
        if queue == JOIN_QUEUE {
            return self.handle_join(&job).await;
        }
        let step = match read_job(data) {
            JobData::Step(step) => {
                // Job data is input, never authority: who a step runs for and which code it
                // runs count only when this fleet signed them.
                if let Err(refused) = self
                    .dist
                    .seal
                    .check(Kind::Step, &step.authority(), &step.mac)
                {
                    return Err(self.refuse(&queue, &job, refused));
                }
                step
            }
            JobData::Refused(reason) => return Err(bullmq::Error::Unrecoverable(reason)),
            JobData::Foreign => {
                if unfinished > 0
                    && let Some(crashed) = self.crashed(&queue, job.id(), unfinished).await?
                {
                    return Err(bullmq::Error::Unrecoverable(crashed));
                }
                let input = data.clone();
                let (progress, forwarder) = forward_progress(job);
                let outcome = self.handle_foreign(queue, input, attempt, progress).await;
                forwarder.finish().await;
                return outcome;
            }
        };
        if unfinished > 0
            && let Some(crashed) = self.crashed(&queue, job.id(), unfinished).await?
        {
            let error = ExecutionError::host(ErrorKind::Execution, codes::WORKER_LOST, crashed);
            let started = job.attempts_started().saturating_sub(1);
            let result = failed(step.state.clone(), error, step.info(started));
            self.carry_on(&step, &result).await?;
            return Err(bullmq::Error::Unrecoverable(message_of(&result)));
        }
        let (progress, forwarder) = forward_progress(job);
        // Context with the task, so a panic in it still has the step to report.
        let step: Arc<StepJob> = Arc::from(step);
        let inner = self.clone();
        let running = step.clone();
        let task = tokio::spawn(async move { inner.run_step(&running, attempt, progress).await });
        let joined = task.await;
        forwarder.finish().await;
        match joined {
            Ok(outcome) => outcome,
            Err(panic) => {
                let error = ExecutionError::host(
                    ErrorKind::Execution,
                    codes::TRAP,
                    format!("the worker failed while running this step: {panic}"),
                );
                let info = step.info(attempt);
                let result = failed(step.state.clone(), error, info);
                self.carry_on(&step, &result).await?;
                Err(bullmq::Error::Unrecoverable(message_of(&result)))
            }
        }
    }

    /// A fan-out's join: every branch has ended; the workflow's result carries the run on.
    async fn handle_join(self: Arc<Self>, job: &Job) -> Result<Value, bullmq::Error> {
        let join = JoinJob::deserialize(job.data()).map_err(|e| {
            bullmq::Error::Unrecoverable(format!("the join job is not in weir's format: {e}"))
        })?;
        if let Err(refused) = self
            .dist
            .seal
            .check(Kind::Join, &join.authority(), &join.mac)
        {
            return Err(self.refuse(JOIN_QUEUE, job, refused));
        }
        let id = join.join.clone();
        let dist = self.dist.clone();
        match tokio::spawn(async move { dist.run_join(join).await }).await {
            Ok(Ok(())) => Ok(serde_json::json!({ "join": id })),
            Ok(Err(error)) => Err(bullmq::Error::ProcessingError(error.to_string())),
            Err(panic) => Err(bullmq::Error::Unrecoverable(format!(
                "the worker failed while joining: {panic}"
            ))),
        }
    }

    /// One attempt of a weir step, then the run carried on (or a retry asked for).
    async fn run_step(
        self: Arc<Self>,
        step: &StepJob,
        attempt: u32,
        progress: ProgressSink,
    ) -> Result<Value, bullmq::Error> {
        let plugin = match self.plugin(&step.processor, &step.digest).await {
            Ok(plugin) => plugin,
            Err(Unavailable::Redis(error)) => {
                return Err(bullmq::Error::ProcessingError(error.to_string()));
            }
            Err(Unavailable::Missing(why)) => {
                let error =
                    ExecutionError::host(ErrorKind::NotFound, codes::PROCESSOR_NOT_FOUND, why);
                let result = failed(step.state.clone(), error, step.info(attempt));
                self.carry_on(step, &result).await?;
                return Err(bullmq::Error::Unrecoverable(message_of(&result)));
            }
        };
        // Reachable by cancellations first, then checked for earlier ones: a cancellation
        // published in between reaches the step either way.
        let cancel = CancelHandle::new();
        let job_id = step.job_id();
        let joins = joins_of(&step.frames);
        {
            let mut active = lock_map(&self.active);
            active.insert(
                job_id.clone(),
                Active {
                    run: step.run.clone(),
                    joins: joins.clone(),
                    scope: step.scope.clone(),
                    cancel: cancel.clone(),
                },
            );
            self.active_count.send_replace(active.len());
        }
        let _running = Running {
            inner: &self,
            id: job_id,
        };
        let reason = match self.cancelled_as_heard(step, &joins) {
            Some(reason) => reason,
            None => self
                .dist
                .cancelled_before_start(step)
                .await
                .map_err(|e| self.retry_later(step, e))?,
        };
        if let Some(reason) = reason.or_else(|| cancel.reason()) {
            let info = step.info(attempt.saturating_sub(1));
            let result = cancelled_unstarted(step.state.clone(), reason, info);
            self.carry_on(step, &result).await?;
            return Err(bullmq::Error::Unrecoverable(message_of(&result)));
        }
        let deadline = step.scope.deadline_ms.map(instant_of);
        let scope = Scope {
            tenant: Arc::from(step.scope.tenant.as_str()),
            session: step.scope.session.as_deref().map(Arc::from),
            depth: 0,
            deadline,
            cancel: cancel.clone(),
            limits: step.scope.limits.into(),
            parent: step.scope.parent.as_deref().map(Arc::from),
            priority: step.scope.priority,
            max_attempts: step.scope.max_attempts,
            progress: Some(progress),
            admission: None,
        };
        let pinned = Pinned {
            plugin: plugin.clone(),
            attempt,
        };
        let result = execute_pinned(
            &self.shared,
            pinned,
            step.state.clone(),
            scope,
            Some(step.execution.clone()),
        )
        .await;
        if cancel.reason() == Some(CancelReason::Shutdown) {
            // This worker is leaving: the job is not done. Its lock lapses and another
            // worker runs it (not as a crash); its run does not see a cancellation.
            self.hand_back(&step.processor, &step.job_id()).await;
            return Err(bullmq::Error::WorkerClosed);
        }
        if let Some(error) = &result.error {
            let policy = plugin.retry();
            let allowed = policy.attempts_allowed(step.scope.max_attempts);
            if let Some(delay) = policy.retry_after(attempt, allowed, error, &cancel, deadline) {
                self.retrying(step, &result, error, delay);
                return Err(bullmq::Error::ProcessingError(error.message.clone()));
            }
        }
        self.carry_on(step, &result).await?;
        if result.ok {
            Ok(document(&result))
        } else {
            Err(bullmq::Error::Unrecoverable(message_of(&result)))
        }
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
    fn cancelled_as_heard(&self, step: &StepJob, joins: &[String]) -> Option<Option<CancelReason>> {
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

    /// Notes the wait before the next attempt (for the backoff strategy) and says so.
    fn retrying(
        &self,
        step: &StepJob,
        result: &ExecutionResult,
        error: &ExecutionError,
        delay: Duration,
    ) {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        lock_map(&self.delays).note(step.job_id(), delay_ms, Instant::now());
        tracing::info!(
            target: "weir::execution",
            id = %step.execution,
            processor = %step.processor,
            attempt = result.execution.attempts,
            delay_ms,
            error = %error,
            "retrying"
        );
        let events = self.shared.events();
        if events.active() {
            let mut event = execution_event(
                EventKind::ProcessorRetrying,
                &result.execution,
                step.scope.parent.as_deref(),
                0,
            );
            event.attempt = Some(result.execution.attempts);
            event.error = Some(error.clone());
            event.data = Some(serde_json::json!({ "delayMs": delay_ms }));
            events.publish(event);
        }
    }

    /// Takes the step's result through its run: the next step is enqueued, or the run's
    /// outcome written. If Redis fails here, the job fails retryably and the step runs
    /// again (every write of the move is idempotent).
    async fn carry_on(
        &self,
        step: &StepJob,
        result: &ExecutionResult,
    ) -> Result<(), bullmq::Error> {
        self.dist
            .proceed_from(|| (step.cursor(), Next::Done(Box::new(result.clone()))))
            .await
            .map_err(|e| self.retry_later(step, e))
    }

    /// A step that could not reach Redis: BullMQ runs it again after a while (the next
    /// attempt finds Redis back, or fails the same way until the attempts run out).
    /// Why job `id` of `queue`, started `unfinished` times before without ending, is not
    /// run again: `None` when every one of those starts was handed back by a worker that
    /// left (not a crash). A job whose worker died running it may have killed it; handing
    /// it to the next worker could kill that one too, and the next.
    async fn crashed(
        &self,
        queue: &str,
        id: &str,
        unfinished: u32,
    ) -> Result<Option<String>, bullmq::Error> {
        let mut conn = self.dist.conn();
        let handed_back: Option<u32> =
            redis::AsyncCommands::get(&mut conn, self.dist.keys.handed_back(queue, id))
                .await
                .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
        if unfinished <= handed_back.unwrap_or(0) {
            return Ok(None);
        }
        tracing::warn!(
            target: "weir::worker",
            %queue,
            job = %id,
            "a job's worker stopped while running it; the job fails instead of running again"
        );
        Ok(Some(format!(
            "the worker running this step stopped before the step ended (it was killed, \
             crashed or ran out of memory, perhaps because of the step): a step that may kill \
             its worker is not handed to another. That worker's exit status and log say why; \
             `weir dlq retry {queue}/{id}` runs the step again"
        )))
    }

    /// Notes that this worker leaves before job `id` of `queue` ends: its next start is
    /// not a crash.
    async fn hand_back(&self, queue: &str, id: &str) {
        let key = self.dist.keys.handed_back(queue, id);
        let kept = self.dist.retention_secs().max(7 * 24 * 3600);
        let mut conn = self.dist.conn();
        let noted: redis::RedisResult<()> = redis::pipe()
            .incr(&key, 1)
            .ignore()
            .expire(&key, kept)
            .ignore()
            .query_async(&mut conn)
            .await;
        if let Err(error) = noted {
            tracing::warn!(target: "weir::worker", %queue, job = %id, %error, "cannot note that this worker hands the job back; its next start will count as a crash");
        }
    }

    /// The failure of a job this worker refuses to run (it touches nothing: no state, no
    /// record, no event of the run it claims), said on the job and in the log.
    fn refuse(&self, queue: &str, job: &Job, refused: Refused) -> bullmq::Error {
        tracing::warn!(
            target: "weir::worker",
            queue = %queue,
            job = %job.id(),
            "refused a job: {refused}"
        );
        bullmq::Error::Unrecoverable(format!("refused by the worker: {refused}"))
    }

    fn retry_later(&self, step: &StepJob, error: Error) -> bullmq::Error {
        tracing::warn!(target: "weir::worker", job = %step.job_id(), %error, "Redis failed; the step runs again in 1 s");
        lock_map(&self.delays).note(step.job_id(), REDIS_RETRY_MS, Instant::now());
        bullmq::Error::ProcessingError(error.to_string())
    }

    /// A job another producer added: its data is the input of the queue's processor, run
    /// as the tenant this worker was told runs the queue's foreign jobs (none: the job
    /// fails), within its quotas; its return value is the result document, and BullMQ's
    /// own attempts decide retries.
    async fn handle_foreign(
        &self,
        queue: String,
        input: Value,
        attempt: u32,
        progress: ProgressSink,
    ) -> Result<Value, bullmq::Error> {
        let Some(foreign) = self.config.foreign.get(&queue) else {
            return Err(bullmq::Error::Unrecoverable(format!(
                "this fleet takes no foreign jobs on the queue `{queue}` (jobs without weir's \
                 format, from another producer): start its workers with `--foreign \
                 {queue}=TENANT` (the tenant configured in --config) to run them as that tenant"
            )));
        };
        if let Some(admission) = &foreign.admission
            && !admission.may_run(&queue)
        {
            return Err(bullmq::Error::Unrecoverable(format!(
                "the tenant `{}` that runs this queue's foreign jobs may not run `{queue}` (its \
                 `processors` in the configuration)",
                foreign.tenant
            )));
        }
        let plugin = match self.shared.registry().get(&queue) {
            Some(plugin) => plugin,
            None => {
                let mut conn = self.dist.conn();
                let published =
                    content::published_plugins(&mut conn, &self.dist.keys, &self.dist.seal)
                        .await
                        .map_err(|e| bullmq::Error::ProcessingError(e.to_string()))?;
                let Some(digest) = published.get(&queue) else {
                    return Err(bullmq::Error::Unrecoverable(format!(
                        "no processor named `{queue}` is published"
                    )));
                };
                match self.plugin(&queue, digest).await {
                    Ok(plugin) => plugin,
                    Err(Unavailable::Redis(e)) => {
                        return Err(bullmq::Error::ProcessingError(e.to_string()));
                    }
                    Err(Unavailable::Missing(why)) => {
                        return Err(bullmq::Error::Unrecoverable(why));
                    }
                }
            }
        };
        let (limits, place) = match &foreign.admission {
            None => (LimitOverrides::default(), None),
            Some(admission) => match admission.admit().await {
                Ok(place) => (admission.ceilings(), Some(place)),
                // Refused before anything runs; BullMQ's attempts may try it again.
                Err(error) => {
                    let code = error.code.as_deref().unwrap_or("refused");
                    return Err(bullmq::Error::ProcessingError(format!(
                        "{} ({code}): {}",
                        kind_word(error.kind),
                        error.message
                    )));
                }
            },
        };
        let scope = Scope {
            tenant: Arc::from(foreign.tenant.as_str()),
            session: None,
            depth: 0,
            deadline: None,
            cancel: CancelHandle::new(),
            limits,
            parent: None,
            priority: None,
            max_attempts: None,
            progress: Some(progress),
            admission: None,
        };
        let result =
            execute_pinned(&self.shared, Pinned { plugin, attempt }, input, scope, None).await;
        if let Some(place) = place {
            place.settle(result.execution.fuel_consumed).await;
        }
        match &result.error {
            None => Ok(document(&result)),
            Some(error)
                if error.retryable
                    || matches!(error.kind, ErrorKind::Timeout | ErrorKind::Network) =>
            {
                Err(bullmq::Error::ProcessingError(message_of(&result)))
            }
            Some(_) => Err(bullmq::Error::Unrecoverable(message_of(&result))),
        }
    }

    /// The component `digest` as processor `name`: the loaded one if it is that exact
    /// component, else one fetched from Redis before, else fetched now.
    async fn plugin(&self, name: &str, digest: &str) -> Result<Arc<Plugin>, Unavailable> {
        if let Some(plugin) = self.shared.registry().get(name)
            && plugin.digest() == digest
        {
            return Ok(plugin);
        }
        let fetched = |inner: &Inner| {
            lock_map(&inner.fetched)
                .get(digest)
                .and_then(|plugins| plugins.iter().find(|p| p.name() == name).cloned())
        };
        if let Some(plugin) = fetched(self) {
            return Ok(plugin);
        }
        let key = (name.to_string(), digest.to_string());
        // A component that just failed to load is not fetched and compiled again at once
        // (a guest calling it in a loop would make this worker do that on every call).
        let unloadable = |inner: &Inner| {
            lock_map(&inner.unloadable)
                .get(&key)
                .filter(|(at, _)| at.elapsed() < UNLOADABLE_KEPT)
                .map(|(_, why)| Unavailable::Missing(why.clone()))
        };
        if let Some(refused) = unloadable(self) {
            return Err(refused);
        }
        // One fetch at a time per component: concurrent jobs of a new component compile it
        // once, and a slow compile holds up no other component's.
        let gate = lock_map(&self.fetching)
            .entry(key.clone())
            .or_default()
            .clone();
        let _fetching = Fetching {
            guard: Some(gate.clone().lock_owned().await),
            gate,
            key: key.clone(),
            all: &self.fetching,
        };
        if let Some(plugin) = fetched(self) {
            return Ok(plugin);
        }
        if let Some(refused) = unloadable(self) {
            return Err(refused);
        }
        let mut conn = self.dist.conn();
        let max = self.shared.config().max_component_bytes;
        let bytes = content::fetch_plugin(&mut conn, &self.dist.keys, digest, max)
            .await
            .map_err(Unavailable::Redis)?
            .map_err(Unavailable::Missing)?;
        let loaded = match self.manifest_for(name).await {
            Ok(manifest) => {
                let origin = PathBuf::from(format!("redis:{digest}"));
                let shared = &self.shared;
                Plugin::from_bytes(
                    shared.engine(),
                    shared.linker(),
                    name.to_string(),
                    &origin,
                    bytes,
                    manifest,
                    &shared.config().loading(),
                )
                .await
                .map_err(|e| format!("the published `{name}` ({digest}) cannot load: {e}"))
            }
            Err(why) => Err(why),
        };
        let plugin = match loaded {
            Ok(plugin) => plugin,
            Err(why) => {
                let mut unloadable = lock_map(&self.unloadable);
                unloadable.retain(|_, (at, _)| at.elapsed() < UNLOADABLE_KEPT);
                unloadable.insert(key, (Instant::now(), why.clone()));
                return Err(Unavailable::Missing(why));
            }
        };
        tracing::info!(
            target: "weir::worker",
            plugin = name,
            digest = &digest[..12.min(digest.len())],
            "fetched a published component"
        );
        let plugin = Arc::new(plugin);
        let mut fetched = lock_map(&self.fetched);
        if fetched.len() >= FETCHED_KEPT {
            fetched.clear();
        }
        let (_, digest) = key;
        fetched.entry(digest).or_default().push(plugin.clone());
        Ok(plugin)
    }

    /// This operator's manifest for `name` (limits, capabilities): the one beside where
    /// its file would be in this worker's plugins folder, if any.
    async fn manifest_for(&self, name: &str) -> Result<Manifest, String> {
        let Some(dir) = &self.plugins_dir else {
            return Ok(Manifest::default());
        };
        crate::sandbox::plugin::load_manifest(
            self.shared.engine(),
            &dir.join(format!("{name}.wasm")),
        )
        .await
        .map_err(|e| e.to_string())
    }
}

impl Published for Inner {
    fn resolve<'a>(
        &'a self,
        name: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Unit>, ExecutionError>> + Send + 'a>> {
        Box::pin(async move {
            if let Some((at, unit)) = lock_map(&self.resolved).get(name)
                && at.elapsed() < RESOLVED_KEPT
            {
                return Ok(unit.clone());
            }
            let unit = self.resolve_now(name).await.map_err(|error| {
                // The detail is the operator's; the calling guest learns only that Redis
                // could not say, and may try again.
                tracing::warn!(target: "weir::worker", callee = name, %error, "cannot look a nested call's callee up in Redis");
                ExecutionError::host(
                    ErrorKind::Network,
                    codes::STORE_UNAVAILABLE,
                    format!("cannot look `{name}` up right now"),
                )
                .retryable(true)
            })?;
            let mut resolved = lock_map(&self.resolved);
            if resolved.len() >= RESOLVED_MAX {
                resolved.clear();
            }
            resolved.insert(name.to_string(), (Instant::now(), unit.clone()));
            Ok(unit)
        })
    }
}

impl Inner {
    /// What `name` is published as now, loaded: `None` when nothing is, or when what is
    /// cannot run (logged); an error when Redis fails.
    async fn resolve_now(&self, name: &str) -> Result<Option<Unit>, String> {
        let mut conn = self.dist.conn();
        let found = content::lookup(&mut conn, &self.dist.keys, &self.dist.seal, &[name])
            .await
            .map_err(|e| e.to_string())?;
        match found.into_iter().next().flatten() {
            None => Ok(None),
            Some(Binding::Processor { digest }) => match self.plugin(name, &digest).await {
                Ok(plugin) => Ok(Some(Unit::Processor(plugin))),
                Err(Unavailable::Redis(e)) => Err(e.to_string()),
                // The operator's to read (at most once a second per name: see `resolved`).
                Err(Unavailable::Missing(why)) => {
                    tracing::warn!(target: "weir::worker", callee = name, "a nested call's callee cannot run: {why}");
                    Ok(None)
                }
            },
            Some(Binding::Workflow { digest }) => match self.dist.workflow(&digest).await {
                Ok(Ok(workflow)) => Ok(Some(Unit::Workflow(workflow))),
                Ok(Err(why)) => {
                    tracing::warn!(target: "weir::worker", workflow = name, "the published workflow ({digest}) cannot be used: {why}");
                    Ok(None)
                }
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// Why a job's component cannot be had.
enum Unavailable {
    /// Redis failed: try the job again later.
    Redis(redis::RedisError),
    /// It is not there or does not load: the step fails.
    Missing(String),
}

/// Carries a running guest's progress reports into `job` as BullMQ progress, an object
/// `{percent, message}` (so Bull Board and Node's `QueueEvents` see it). Reports that come
/// faster than Redis takes them are coalesced: the latest wins. The forwarder ends once the
/// execution has dropped its sink and the last report is written: [`Forwarder::finish`]
/// waits for that, so no report lands after the job has ended.
fn forward_progress(mut job: Job) -> (ProgressSink, Forwarder) {
    let (sink, mut reports) = tokio::sync::watch::channel(None::<(u8, String)>);
    let task = tokio::spawn(async move {
        while reports.changed().await.is_ok() {
            let Some((percent, message)) = reports.borrow_and_update().clone() else {
                continue;
            };
            let progress = bullmq::JobProgress::Object(
                serde_json::json!({ "percent": percent, "message": message }),
            );
            if let Err(error) = job.update_progress(progress).await {
                tracing::debug!(target: "weir::worker", job = %job.id(), %error, "cannot record progress");
            }
        }
    });
    (Arc::new(sink), Forwarder(task))
}

/// The task carrying a job's progress into Redis.
struct Forwarder(tokio::task::JoinHandle<()>);

impl Forwarder {
    /// Waits (up to a second) for the last report to be written, once the execution has
    /// ended; gives up on it after that.
    async fn finish(mut self) {
        if tokio::time::timeout(Duration::from_secs(1), &mut self.0)
            .await
            .is_err()
        {
            self.0.abort();
        }
    }
}

/// The result document as a job's return value.
fn document(result: &ExecutionResult) -> Value {
    serde_json::to_value(result.document()).unwrap_or(Value::Null)
}

/// A failed result as a job's failure reason: the error's kind, code and message.
fn message_of(result: &ExecutionResult) -> String {
    match &result.error {
        Some(error) => match &error.code {
            Some(code) => format!("{} ({code}): {}", kind_word(error.kind), error.message),
            None => format!("{}: {}", kind_word(error.kind), error.message),
        },
        None => String::new(),
    }
}

fn kind_word(kind: ErrorKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The locks of the components a worker is fetching, by (name, digest).
type FetchLocks = Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

/// A worker's turn to fetch one component: the lock of its (name, digest), dropped from the
/// worker's map once nobody else waits on it, so the map holds only fetches in progress.
struct Fetching<'a> {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    gate: Arc<tokio::sync::Mutex<()>>,
    key: (String, String),
    all: &'a FetchLocks,
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut all = lock_map(self.all);
        // This one and the map's: nobody else holds or waits for it.
        if Arc::strong_count(&self.gate) <= 2 {
            all.remove(&self.key);
        }
    }
}

/// What a job's data is, as a worker reads it before it runs anything.
#[derive(Debug)]
pub(crate) enum JobData {
    /// A weir step in the format this worker reads.
    Step(Box<StepJob>),
    /// Not weir's (no `weir` field): a foreign producer's job for the queue's processor.
    Foreign,
    /// It claims weir's format but cannot run here: the job fails with this reason.
    Refused(String),
}

/// Reads a job's data in place (only a foreign job's data is copied, later, by its
/// caller).
pub(crate) fn read_job(data: &Value) -> JobData {
    match StepJob::deserialize(data) {
        Ok(step) if step.weir == FORMAT => JobData::Step(Box::new(step)),
        Ok(step) => JobData::Refused(format!(
            "the job is in weir's job format {}, this worker reads format {FORMAT}",
            step.weir
        )),
        Err(error) if data.get("weir").is_some() => JobData::Refused(format!(
            "the job claims weir's format but is unreadable: {error}"
        )),
        Err(_) => JobData::Foreign,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use serde_json::json;
    use sha2::Digest;

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
    use crate::contract::limits::{LimitOverrides, Limits};
    use crate::contract::workflow::Workflow;
    use crate::distributed::wire::enclosing_join;
    use weir_fuzzing::{fuzz, json_near};

    const JOB_WORDS: &[&str] = &[
        "weir",
        "run",
        "path",
        "execution",
        "processor",
        "digest",
        "state",
        "scope",
        "tenant",
        "session",
        "deadlineMs",
        "maxAttempts",
        "priority",
        "limits",
        "timeoutMs",
        "memoryBytes",
        "fuel",
        "outputBytes",
        "parent",
        "submittedMs",
        "bindings",
        "kind",
        "processor",
        "workflow",
        "frames",
        "startedUs",
        "peakMemory",
        "outerDeadlineMs",
        "outerParent",
        "at",
        "chain",
        "index",
        "selector",
        "input",
        "route",
        "key",
        "target",
        "branch",
        "join",
        "node",
        "merge",
        "delayMs",
        "frame",
        "metadata",
        "version",
        "default",
        "acme",
        "0",
        "0.1.s",
    ];

    fn frame(at: Value) -> Value {
        json!({
            "workflow": "calc", "digest": "ab".repeat(32), "execution": "e0", "path": "0",
            "startedUs": 1, "fuel": 2, "peakMemory": 3, "outerDeadlineMs": null,
            "outerParent": null, "at": at,
        })
    }

    fn seeds() -> Vec<Value> {
        let scope = json!({
            "tenant": "acme", "session": "s", "deadlineMs": 1_900_000_000_000u64,
            "maxAttempts": 3, "priority": 1,
            "limits": {"timeoutMs": 1000, "memoryBytes": 1 << 20, "fuel": 100, "outputBytes": 10},
            "parent": "p", "submittedMs": 1,
        });
        let step = json!({
            "weir": 1, "run": "r1", "path": "0.1", "execution": "e1", "processor": "double",
            "digest": "ab".repeat(32), "state": {"count": 1, "metadata": {"version": 2}},
            "scope": scope.clone(),
            "bindings": {"double": {"kind": "processor", "digest": "cd".repeat(32)},
                         "calc": {"kind": "workflow", "digest": "ef".repeat(32)}},
            "frames": [
                frame(json!({"kind": "chain", "index": 1})),
                frame(json!({"kind": "branch", "join": "r1-0.j", "node": 2})),
                frame(json!({"kind": "route", "key": "a", "target": "double"})),
                frame(json!({"kind": "selector", "input": {"kind": "a"}})),
                frame(json!({"kind": "merge", "input": {}})),
            ],
            "delayMs": 10,
        });
        let join = json!({
            "weir": 1, "join": "r1-0.j", "run": "r1",
            "frame": frame(json!({"kind": "join"})), "scope": scope,
            "bindings": {}, "frames": [frame(json!({"kind": "chain", "index": 0}))],
        });
        let definition = |w: Workflow| -> Value {
            serde_json::from_slice(&w.definition()).unwrap_or(Value::Null)
        };
        vec![
            step,
            join,
            json!({"count": 1}),
            definition(Workflow::chain("calc", ["increment", "double"])),
            definition(Workflow::parallel("fan", ["a", "b"]).merge("m")),
            definition(
                Workflow::route_by_pointer("pick", "/kind")
                    .route("a", "x")
                    .fallback("y"),
            ),
            definition(
                Workflow::graph("g")
                    .node("x", Vec::<String>::new())
                    .node("y", ["x"]),
            ),
        ]
    }

    #[test]
    fn fuzz_job_data_as_a_worker_reads_it() {
        // Anyone who can write to Redis writes job data: what the worker reads from it
        // before running anything must hold whatever is there.
        fuzz("job data", json_near(seeds(), JOB_WORDS), |data| {
            match read_job(&data) {
                JobData::Step(step) => {
                    let _ = (step.job_id(), step.info(1), joins_of(&step.frames));
                    let _ = enclosing_join(&step.frames);
                    let _ = step.scope.deadline_ms.map(instant_of);
                    let _ = crate::contract::state::prepare_input(
                        step.state.clone(),
                        step.scope.session.as_deref(),
                    );
                    let limits =
                        Limits::DEFAULTS.lowered_by(&LimitOverrides::from(step.scope.limits));
                    prop_assert!(limits.timeout_ms <= Limits::DEFAULTS.timeout_ms);
                    let _ = Instant::now() + limits.timeout();
                }
                JobData::Refused(reason) => prop_assert!(!reason.is_empty()),
                JobData::Foreign => prop_assert!(data.get("weir").is_none()),
            }
            if let Ok(join) = JoinJob::deserialize(&data) {
                let _ = (
                    joins_of(&join.frames),
                    join.scope.deadline_ms.map(instant_of),
                );
            }
            // A workflow's definition, as a worker fetches it from Redis.
            // The digest is the one its bytes hash to, as a forger who writes both would set.
            let bytes =
                serde_json::to_vec(&data).map_err(|e| TestCaseError::fail(e.to_string()))?;
            if let Ok(parsed) = serde_json::from_slice::<Workflow>(&bytes) {
                let digest = hex::encode(sha2::Sha256::digest(parsed.definition()));
                if let Ok(workflow) = Workflow::from_definition(&bytes, &digest) {
                    prop_assert!(
                        workflow.check_shape().is_ok(),
                        "{:?}",
                        workflow.check_shape()
                    );
                    let _ = (
                        workflow.references(),
                        workflow.kind(),
                        workflow.is_fan_out(),
                    );
                }
            }
            Ok(())
        });
    }
}
