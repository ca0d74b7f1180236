//! One process's handle on the distributed runtime ([`Distributed`]): its connection to
//! Redis, its fleet seal, the BullMQ queues and flow producer it opens once, and the job
//! options every step and join is added with. Submitting, publishing, runs' outcomes and
//! the event stream are in `submit.rs`, `publish.rs`, `runs.rs` and `stream.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bullmq::types::{BackoffStrategy, KeepJobs, RemoveOnFinish};
use bullmq::{FlowProducer, FlowProducerOptions, JobOptions, ParentOptions, Queue, QueueOptions};
use redis::aio::ConnectionManager;

use super::advance::Plan;
use super::fanout::{ItemAdmission, JOIN_QUEUE};
use super::runs::Waiters;
use super::submit::collect_session_jobs;
use super::trust::Seal;
use super::wire::{StepJob, enclosing_join, now_ms};
use super::{Keys, RedisConfig, Retention, bullmq_connection, connect, unreachable};
use crate::contract::error::Error;
use crate::contract::workflow::Workflow;

/// BullMQ's attempt ceiling for weir's jobs. A retry policy allows at most 100 attempts, so
/// the worker's own decision (from the processor's policy) always comes first.
const JOB_ATTEMPTS: u32 = 101;

/// The name of weir's backoff strategy: the worker computes each wait from the policy.
const BACKOFF: &str = "weir";

/// One process's connection to the distributed runtime.
pub(crate) struct Distributed {
    pub(crate) config: RedisConfig,
    pub(crate) keys: Keys,
    /// Signs and checks what this process and its fleet write to Redis for each other.
    pub(crate) seal: Seal,
    /// Most items one batch takes ([`crate::HostConfig::max_batch_items`]).
    pub(super) max_batch_items: usize,
    /// How long an idempotency key stands for its run
    /// ([`crate::IdempotencyBounds::window`]).
    pub(super) idempotency_window: std::time::Duration,
    /// What a batch's items cost their tenant, if anyone counts it.
    items: std::sync::Mutex<Option<Arc<dyn ItemAdmission>>>,
    conn: ConnectionManager,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    pub(super) workflows: Mutex<HashMap<String, Arc<Workflow>>>,
    pub(super) waiters: Arc<Waiters>,
    pub(super) finish: redis::Script,
    /// Opens a run's record (run by hash in the submission's pipeline).
    pub(super) open: redis::Script,
    /// Keeps a run's annex beside its outcome, if its record is still there.
    pub(super) annex: redis::Script,
    pub(super) join_cas: redis::Script,
    pub(super) batch_open: redis::Script,
    pub(super) batch_done: redis::Script,
    /// Adds a journal to the fleet's activity counters; reads them.
    pub(super) activity_flush: redis::Script,
    pub(super) activity_read: redis::Script,
    /// Keeps a schedule's latest tick unless a later one is kept, and its latest run.
    pub(super) note_tick: redis::Script,
    /// Fires schedules' ticks, once the runtime serving the queues installed itself.
    pub(super) ticks: Mutex<Option<std::sync::Weak<dyn super::schedules::Ticks>>>,
    /// The runtime whose activity this process shares (set once it exists).
    pub(super) context: OnceLock<std::sync::Weak<crate::execution::context::Context>>,
    flows: tokio::sync::OnceCell<FlowProducer>,
    /// Set when workflows were registered from code and are not published yet.
    pub(super) unpublished: std::sync::atomic::AtomicBool,
    /// This process's id among the processes sharing events.
    pub(super) origin: String,
    /// Subscriptions weir itself holds on this process's event bus (not users').
    pub(super) internal_subscriptions: Arc<std::sync::atomic::AtomicUsize>,
    pub(super) events: Arc<OnceLock<EventSink>>,
    /// The event stream's reader, started when this process first waits for a run or
    /// subscribes to events (a worker that does neither never reads the stream).
    pub(super) reader: tokio::sync::OnceCell<tokio::task::JoinHandle<()>>,
}

/// Where events of other processes go (this process's subscribers), as read from the
/// stream: the process they came from, and a batch of them as a JSON array (parsed only if
/// someone listens).
pub(super) type EventSink = Arc<dyn Fn(&str, &str) + Send + Sync>;

impl std::fmt::Debug for Distributed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Distributed")
            .field("url", &self.config.url)
            .field("prefix", &self.config.prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for Distributed {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.get() {
            reader.abort();
        }
    }
}

impl Distributed {
    /// Connects.
    pub(crate) async fn connect(
        config: RedisConfig,
        max_batch_items: usize,
        idempotency_window: std::time::Duration,
    ) -> Result<Arc<Self>, Error> {
        let seal = Seal::new(&config.trust)?;
        let conn = connect(&config).await?;
        let keys = Keys::new(&config.prefix);
        let waiters = Arc::new(Waiters::default());
        // Named for the operators, unique for the fleet.
        let origin = format!("{}/{}", config.process_name(), uuid::Uuid::now_v7());
        let events: Arc<OnceLock<EventSink>> = Arc::new(OnceLock::new());
        Ok(Arc::new(Distributed {
            config,
            keys,
            seal,
            max_batch_items,
            idempotency_window,
            items: std::sync::Mutex::new(None),
            conn,
            queues: Mutex::new(HashMap::new()),
            workflows: Mutex::new(HashMap::new()),
            waiters,
            finish: redis::Script::new(include_str!("lua/finish_run.lua")),
            open: redis::Script::new(include_str!("lua/open_run.lua")),
            annex: redis::Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 1 then \
                   redis.call('HSET', KEYS[1], 'annex', ARGV[1]) return 1 end return 0",
            ),
            join_cas: redis::Script::new(include_str!("lua/join_cas.lua")),
            batch_open: redis::Script::new(include_str!("lua/batch_open.lua")),
            batch_done: redis::Script::new(include_str!("lua/batch_done.lua")),
            activity_flush: redis::Script::new(include_str!("lua/activity_flush.lua")),
            activity_read: redis::Script::new(include_str!("lua/activity_read.lua")),
            note_tick: redis::Script::new(
                "if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[4]) end \
                 local kept = redis.call('HGET', KEYS[1], ARGV[1]) \
                 if kept then \
                   local ok, tick = pcall(cjson.decode, kept) \
                   if ok and type(tick) == 'table' and tonumber(tick.tickMs) \
                      and tonumber(tick.tickMs) > tonumber(ARGV[2]) then return 0 end \
                 end \
                 redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) return 1",
            ),
            ticks: Mutex::new(None),
            context: OnceLock::new(),
            flows: tokio::sync::OnceCell::new(),
            unpublished: std::sync::atomic::AtomicBool::new(false),
            origin,
            internal_subscriptions: Arc::default(),
            events,
            reader: tokio::sync::OnceCell::new(),
        }))
    }

    /// Charges batches' items through `admission` from now on (the last one set wins).
    pub(crate) fn set_item_admission(&self, admission: Arc<dyn ItemAdmission>) {
        *lock_map(&self.items) = Some(admission);
    }

    /// What batches' items are charged through, if anything.
    pub(super) fn item_admission(&self) -> Option<Arc<dyn ItemAdmission>> {
        lock_map(&self.items).clone()
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Says this process is a live worker, for `ttl`.
    pub(super) async fn heartbeat(&self, ttl: Duration) -> Result<(), Error> {
        let mut conn = self.conn();
        let ms = crate::contract::clock::millis(ttl);
        let _: () = redis::cmd("SET")
            .arg(self.keys.worker(&self.origin))
            .arg(now_ms())
            .arg("PX")
            .arg(ms)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(())
    }

    /// Whether any worker said it was alive lately.
    pub(crate) async fn any_worker(&self) -> Result<bool, Error> {
        let mut conn = self.conn();
        let (_, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(self.keys.worker("*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(!found.is_empty())
    }

    pub(super) fn redis_error(&self, error: impl std::fmt::Display) -> Error {
        unreachable(&self.config, error)
    }

    /// How long records of runs and fan-outs are kept, in seconds.
    pub(super) fn retention_secs(&self) -> i64 {
        i64::try_from(self.config.run_retention.as_secs().max(1)).unwrap_or(i64::MAX)
    }

    /// BullMQ's options for the job `id` of a step: weir decides retries (BullMQ's attempt
    /// ceiling is above any policy's), finished jobs are kept as configured, and a job in a
    /// fan-out's branch is a child of its join (whose wait a failure does not block).
    pub(super) fn step_options(
        &self,
        id: &str,
        priority: Option<u32>,
        join: Option<&str>,
    ) -> JobOptions {
        let mut options = JobOptions::new()
            .attempts(JOB_ATTEMPTS)
            .backoff(BackoffStrategy::Custom(BACKOFF.to_string()))
            .remove_on_complete(keep(self.config.keep_completed))
            .remove_on_fail(keep(self.config.keep_failed));
        options.job_id = Some(id.to_string());
        options.priority = priority;
        if let Some(join) = join {
            options.parent = Some(ParentOptions {
                queue: JOIN_QUEUE.to_string(),
                id: join.to_string(),
                wait_children: None,
            });
            options.ignore_dependency_on_failure = Some(true);
        }
        options
    }

    /// BullMQ's options for the join job `id` (a child of `parent` when the fan-out is in
    /// another's branch). Joins only fail when Redis does: they retry every half second.
    pub(super) fn join_options(&self, id: &str, parent: Option<&str>) -> JobOptions {
        let mut options = self.step_options(id, None, parent);
        options.backoff = Some(BackoffStrategy::Fixed(500));
        options
    }

    /// Adds a planned job (or flow) to Redis.
    pub(super) async fn add(&self, plan: Plan) -> Result<(), Error> {
        match plan {
            Plan::Step(job) => self.enqueue(&job).await,
            Plan::Flow(flow) => {
                let producer = self
                    .flows
                    .get_or_try_init(|| async {
                        let options = FlowProducerOptions {
                            connection: bullmq_connection(&self.config),
                            prefix: Some(self.config.prefix.clone()),
                        };
                        FlowProducer::with_options(options).await
                    })
                    .await
                    .map_err(|e| self.redis_error(e))?;
                let mut session_jobs = Vec::new();
                collect_session_jobs(&flow, &mut session_jobs);
                producer.add(*flow).await.map_err(|e| self.redis_error(e))?;
                for (scope, queue, id) in session_jobs {
                    self.index_session_job(&scope, &queue, &id).await?;
                }
                Ok(())
            }
        }
    }

    /// BullMQ's options for weir's queues.
    pub(crate) fn queue_options(&self) -> QueueOptions {
        QueueOptions::new()
            .connection(bullmq_connection(&self.config))
            .prefix(self.config.prefix.clone())
            .skip_version_check()
    }

    /// The queue of processor `name` (opened once per process).
    pub(crate) async fn queue(&self, name: &str) -> Result<Arc<Queue>, Error> {
        if let Some(queue) = lock_map(&self.queues).get(name) {
            return Ok(queue.clone());
        }
        let queue = Queue::with_options(name, self.queue_options())
            .await
            .map_err(|e| self.redis_error(e))?;
        let queue = Arc::new(queue);
        lock_map(&self.queues)
            .entry(name.to_string())
            .or_insert(queue.clone());
        Ok(queue)
    }

    /// Adds a step's job to its processor's queue. Adding a job whose id exists already
    /// does nothing, which makes re-running a step harmless.
    pub(crate) async fn enqueue(&self, job: &StepJob) -> Result<(), Error> {
        let queue = self.queue(job.queue()).await?;
        let mut options = self.step_options(
            &job.job_id(),
            Some(job.scope.queue_priority()),
            enclosing_join(&job.frames),
        );
        options.delay = job.delay_ms;
        queue
            .add(&job.processor, job)
            .options(options)
            .await
            .map_err(|e| self.redis_error(e))?;
        self.index_session_job(&job.scope, job.queue(), &job.job_id())
            .await
    }
}

pub(super) fn keep(retention: Retention) -> RemoveOnFinish {
    RemoveOnFinish::Options(KeepJobs {
        age: Some(retention.age.as_secs().max(1)),
        count: Some(retention.count),
        limit: None,
    })
}

/// Locks `mutex`, whose data stays consistent even if a holder panicked.
pub(super) fn lock_map<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
