//! Reaching work in other processes: cancelling runs, a doomed fan-out's siblings and
//! stopped sessions through a cancel channel in Redis (pub/sub to every worker, plus a
//! marker each job checks when it starts), and sharing events between processes through
//! the event stream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::advance::Next;
use super::handle::Distributed;
use super::wire::{At, Frame, StepJob, WireScope, now_ms};
use super::{Keys, RedisConfig};
use crate::contract::cancel::CancelReason;
use crate::contract::error::Error;
use crate::execution::context::Context;
use crate::execution::executor::cancelled_unstarted;
use crate::sandbox::events::{Event, EventKind, Notice};

/// What a cancellation reaches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub(crate) enum Target {
    /// Every job of a run.
    Run { id: String },
    /// Every job in the branches of a fan-out.
    Join { id: String },
    /// Every job of a session's runs submitted before `before_ms`.
    Session {
        tenant: String,
        session: String,
        before_ms: u64,
    },
}

/// A message on the cancel channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CancelMessage {
    pub target: Target,
    /// The cancellation's code (see [`CancelReason::code`]).
    pub reason: String,
}

impl CancelMessage {
    /// Whether it reaches a job of `run`, inside the fan-outs `joins`, with `scope`.
    pub(crate) fn reaches(&self, run: &str, joins: &[String], scope: &WireScope) -> bool {
        match &self.target {
            Target::Run { id } => id == run,
            Target::Join { id } => joins.iter().any(|j| j == id),
            Target::Session {
                tenant,
                session,
                before_ms,
            } => {
                *tenant == scope.tenant
                    && scope.session.as_deref() == Some(session.as_str())
                    && scope.submitted_ms <= *before_ms
            }
        }
    }

    pub(crate) fn reason(&self) -> CancelReason {
        CancelReason::from_code(&self.reason).unwrap_or(CancelReason::Request)
    }
}

/// The fan-outs whose branches `frames` are in.
pub(crate) fn joins_of(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|frame| match &frame.at {
            At::Branch { join, .. } => Some(join.clone()),
            _ => None,
        })
        .collect()
}

/// What a queued event counts against `RedisConfig::share_buffer_bytes` besides its
/// payload (its envelope and names), so that the queue is bounded in count too.
const SHARED_EVENT_OVERHEAD: usize = 256;

/// The kinds of event every process sees (plugin and workflow events stay with the
/// process whose folder they are about).
fn shared_kind(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::ProcessorStarted
            | EventKind::ProcessorCompleted
            | EventKind::ProcessorFailed
            | EventKind::ProcessorRetrying
            | EventKind::SessionCreated
            | EventKind::SessionStopped
            | EventKind::Progress
            | EventKind::Custom
            | EventKind::ScheduleFired
            | EventKind::ScheduleSkipped
    )
}

impl Distributed {
    /// Cancels `target` everywhere: jobs running now are interrupted by their worker, jobs
    /// not started yet are cancelled when they start.
    pub(crate) async fn cancel(&self, target: Target, reason: CancelReason) -> Result<(), Error> {
        let message = CancelMessage {
            target,
            reason: reason.code().to_string(),
        };
        let text = serde_json::to_string(&message).map_err(|e| self.redis_error(e))?;
        let (key, value) = match &message.target {
            Target::Run { id } => (self.keys.cancelled("run", id), message.reason.clone()),
            Target::Join { id } => (self.keys.cancelled("join", id), message.reason.clone()),
            Target::Session {
                tenant,
                session,
                before_ms,
            } => (self.keys.stopped(tenant, session), before_ms.to_string()),
        };
        let mut conn = self.conn();
        let _: () = redis::pipe()
            .set_ex(
                &key,
                value,
                self.retention_secs().try_into().unwrap_or(u64::MAX),
            )
            .ignore()
            .publish(self.keys.cancel_channel(), text)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(())
    }

    /// Why a step about to start is cancelled already, if it is: its run was cancelled, a
    /// fan-out it is in was doomed, or its session was stopped after the run was submitted.
    pub(crate) async fn cancelled_before_start(
        &self,
        step: &StepJob,
    ) -> Result<Option<CancelReason>, Error> {
        let joins = joins_of(&step.frames);
        let mut keys = vec![self.keys.cancelled("run", &step.run)];
        keys.extend(joins.iter().map(|j| self.keys.cancelled("join", j)));
        if let Some(session) = &step.scope.session {
            keys.push(self.keys.stopped(&step.scope.tenant, session));
        }
        let mut conn = self.conn();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        let session_marker = step.scope.session.is_some().then(|| values.len() - 1);
        for (i, value) in values.into_iter().enumerate() {
            let Some(value) = value else { continue };
            if Some(i) == session_marker {
                let stopped_at: u64 = value.parse().unwrap_or(0);
                if step.scope.submitted_ms <= stopped_at {
                    return Ok(Some(CancelReason::SessionStopped));
                }
            } else {
                return Ok(Some(
                    CancelReason::from_code(&value).unwrap_or(CancelReason::Request),
                ));
            }
        }
        Ok(None)
    }

    /// Remembers that a session's job exists, so that stopping the session reaches it.
    pub(crate) async fn index_session_job(
        &self,
        scope: &WireScope,
        queue: &str,
        id: &str,
    ) -> Result<(), Error> {
        let Some(session) = &scope.session else {
            return Ok(());
        };
        let key = self.keys.session_jobs(&scope.tenant, session);
        let mut conn = self.conn();
        let _: () = redis::pipe()
            .sadd(&key, format!("{queue}/{id}"))
            .ignore()
            .expire(&key, self.retention_secs())
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(())
    }

    /// Stops a session's work everywhere: running jobs are interrupted, waiting ones
    /// removed (their runs end as cancelled), and jobs of its earlier runs that start later
    /// are cancelled. Returns how many waiting jobs were removed.
    pub(crate) async fn stop_session(&self, tenant: &str, session: &str) -> Result<usize, Error> {
        let target = Target::Session {
            tenant: tenant.to_string(),
            session: session.to_string(),
            before_ms: now_ms(),
        };
        self.cancel(target, CancelReason::SessionStopped).await?;
        let index = self.keys.session_jobs(tenant, session);
        let mut conn = self.conn();
        let entries: Vec<String> = conn
            .smembers(&index)
            .await
            .map_err(|e| self.redis_error(e))?;
        let mut removed = 0;
        for entry in entries {
            let Some((queue, id)) = entry.split_once('/') else {
                continue;
            };
            if self.drop_waiting(queue, id).await? {
                removed += 1;
            }
        }
        let _: () = conn.del(&index).await.map_err(|e| self.redis_error(e))?;
        Ok(removed)
    }

    /// Removes the job `id` if it is still waiting, ending its step as cancelled first (so
    /// its run, or its fan-out, records the end before BullMQ lets anything move on).
    async fn drop_waiting(&self, queue: &str, id: &str) -> Result<bool, Error> {
        let queue = self.queue(queue).await?;
        let job = queue.get_job(id).await.map_err(|e| self.redis_error(e))?;
        let Some(job) = job else { return Ok(false) };
        let state = job.get_state().await.map_err(|e| self.redis_error(e))?;
        let waiting = matches!(
            state.as_str(),
            "waiting" | "wait" | "delayed" | "prioritized" | "paused"
        );
        if !waiting {
            return Ok(false);
        }
        let Ok(step) = serde_json::from_value::<StepJob>(job.data().clone()) else {
            return Ok(false);
        };
        let result = cancelled_unstarted(
            step.state.clone(),
            CancelReason::SessionStopped,
            step.info(0),
        );
        self.proceed(step.cursor(), Next::Done(Box::new(result)))
            .await?;
        queue.remove(id).await.map_err(|e| self.redis_error(e))
    }

    /// Shares this process's events with every other process (through the event stream)
    /// and hands theirs to `shared`'s subscribers. Runs until the runtime is gone.
    pub(crate) fn share_events(self: &Arc<Self>, shared: &Arc<Context>) {
        let weak: Weak<Context> = Arc::downgrade(shared);
        let internal = self.internal_subscriptions.clone();
        let sink: super::handle::EventSink = Arc::new(move |origin: &str, text: &str| {
            // Only users' subscriptions want other processes' events.
            if let Some(shared) = weak.upgrade()
                && shared.events().subscribers() > internal.load(Ordering::Acquire)
            {
                for event in remote_events(origin, text) {
                    shared.events().publish_remote(event);
                }
            }
        });
        self.set_event_sink(sink);
        let mut subscription = shared.events().subscribe();
        self.internal_subscriptions.fetch_add(1, Ordering::AcqRel);
        // Two tasks, so that Redis's pace never holds up the bus: one moves this process's
        // events off the bus as soon as they are published, into a queue bounded in bytes;
        // the other writes what is queued to the event stream.
        let (queue, mut queued_events) =
            tokio::sync::mpsc::unbounded_channel::<(Arc<Event>, usize)>();
        let queued = Arc::new(AtomicUsize::new(0));
        let budget = self.config.share_buffer_bytes;
        let held = queued.clone();
        tokio::spawn(async move {
            // Events not shared since the queue was last full, for one warning per episode.
            let mut unshared: u64 = 0;
            while let Some((notice, payload)) = subscription.recv_sized().await {
                match notice {
                    Notice::Event(event) if event.origin.is_none() && shared_kind(event.event) => {
                        let bytes = payload.saturating_add(SHARED_EVENT_OVERHEAD);
                        if held.load(Ordering::Acquire).saturating_add(bytes) > budget {
                            if unshared == 0 {
                                tracing::warn!(
                                    budget,
                                    "Redis is slower than this process's events: events are \
                                     not shared with other processes until it catches up"
                                );
                            }
                            unshared += 1;
                            continue;
                        }
                        if unshared > 0 {
                            tracing::warn!(unshared, "events were not shared with other processes");
                            unshared = 0;
                        }
                        held.fetch_add(bytes, Ordering::AcqRel);
                        if queue.send((event, bytes)).is_err() {
                            return;
                        }
                    }
                    Notice::Event(_) => {}
                    Notice::Lagged { missed } => {
                        tracing::warn!(missed, "events were lost before reaching other processes");
                    }
                }
            }
        });
        let dist = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = queued_events.recv().await {
                let Some(dist) = dist.upgrade() else { return };
                let mut bytes = first.1;
                batch.push(first.0);
                while let Ok((event, size)) = queued_events.try_recv() {
                    bytes += size;
                    batch.push(event);
                }
                if let Err(error) = dist.publish_events(&batch).await {
                    tracing::debug!(%error, "cannot share events; they are lost to other processes");
                }
                // Let go of the events before giving their bytes back.
                batch.clear();
                queued.fetch_sub(bytes, Ordering::AcqRel);
            }
        });
    }
}

/// Listens on the cancel channel for as long as `handle` lives, passing every message to it;
/// reconnects after losing Redis.
pub(crate) async fn listen_for_cancels(
    config: RedisConfig,
    keys: Keys,
    handle: Weak<dyn Fn(Heard) + Send + Sync>,
    reconnect: Duration,
) {
    loop {
        let subscribed = async {
            let client = redis::Client::open(config.url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(keys.cancel_channel()).await?;
            // Subscribed first, then the markers: nothing said in between is missed.
            let mut conn = client.get_multiplexed_async_connection().await?;
            let markers = read_markers(&mut conn, &keys).await?;
            Ok::<_, redis::RedisError>((pubsub, markers))
        };
        let mut pubsub = match subscribed.await {
            Ok((pubsub, markers)) => {
                let Some(handle) = handle.upgrade() else {
                    return;
                };
                handle(Heard::Everything(markers));
                pubsub
            }
            Err(error) => {
                tracing::debug!(%error, "cannot listen for cancellations; retrying");
                tokio::time::sleep(reconnect).await;
                if handle.upgrade().is_none() {
                    return;
                }
                continue;
            }
        };
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            let Some(handle) = handle.upgrade() else {
                return;
            };
            let Ok(text) = message.get_payload::<String>() else {
                continue;
            };
            match serde_json::from_str::<CancelMessage>(&text) {
                Ok(message) => handle(Heard::One(message)),
                Err(error) => tracing::warn!(%error, "unreadable message on the cancel channel"),
            }
        }
        // The connection dropped: listen again (markers cover what was said meanwhile).
        let Some(handle) = handle.upgrade() else {
            return;
        };
        handle(Heard::Deaf);
        drop(handle);
        tokio::time::sleep(reconnect).await;
    }
}

/// What the cancel listener tells its worker.
pub(crate) enum Heard {
    /// Every cancellation in force (read from the markers once subscribed).
    Everything(Vec<CancelMessage>),
    /// A cancellation just said.
    One(CancelMessage),
    /// The listener lost Redis: until it hears everything again, check the markers.
    Deaf,
}

/// The cancellations in force, read from their markers.
async fn read_markers(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &Keys,
) -> redis::RedisResult<Vec<CancelMessage>> {
    let mut messages = Vec::new();
    for pattern in [keys.cancelled("*", "*"), keys.stopped_pattern()] {
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            if !found.is_empty() {
                let values: Vec<Option<String>> =
                    redis::cmd("MGET").arg(&found).query_async(conn).await?;
                for (key, value) in found.iter().zip(values) {
                    if let Some(value) = value
                        && let Some(message) = keys.marker_message(key, &value)
                    {
                        messages.push(message);
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(messages)
}

/// The events another process shared, as read from the stream (a JSON array).
pub(crate) fn remote_events(origin: &str, text: &str) -> Vec<Event> {
    let mut events: Vec<Event> = serde_json::from_str(text).unwrap_or_default();
    for event in &mut events {
        event.origin = Some(origin.to_string());
    }
    events
}
