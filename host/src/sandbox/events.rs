//! Events: what happens in the runtime, as a bounded broadcast any number of subscribers can
//! follow. Publishing never waits: a subscriber that falls behind loses the oldest events and
//! is told how many it missed (an explicit `Lagged` notice) instead of slowing execution; a
//! subscriber that panics or goes away affects no one else. Events of one execution arrive
//! in the order they happened.
//!
//! The bus is bounded in count ([`crate::HostConfig::event_capacity`] events) and in bytes:
//! the payloads (`data`, an error's `details`) of the events it still holds for a subscriber
//! that has not read them add up to at most [`crate::HostConfig::event_buffer_bytes`]. Past
//! that, a guest's custom event is refused (the guest gets a typed error) and a host event
//! goes out without its payload, marked `{"payloadDropped": {"bytes": N}}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::contract::error::ExecutionError;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    /// An execution (of a processor or a workflow) began.
    #[serde(rename = "processor:started")]
    ProcessorStarted,
    /// An execution finished successfully.
    #[serde(rename = "processor:completed")]
    ProcessorCompleted,
    /// An execution finished with an error (after its last attempt).
    #[serde(rename = "processor:failed")]
    ProcessorFailed,
    /// An attempt failed and another will follow after a delay.
    #[serde(rename = "processor:retrying")]
    ProcessorRetrying,
    /// A session received its first execution.
    #[serde(rename = "session:created")]
    SessionCreated,
    /// A session was stopped: its running work cancelled, its state removed.
    #[serde(rename = "session:stopped")]
    SessionStopped,
    /// A running processor reported progress.
    #[serde(rename = "progress")]
    Progress,
    /// A running processor emitted a custom event.
    #[serde(rename = "custom")]
    Custom,
    /// A plugin file appeared and now serves.
    #[serde(rename = "plugin:loaded")]
    PluginLoaded,
    /// A plugin file changed and its new version now serves.
    #[serde(rename = "plugin:reloaded")]
    PluginReloaded,
    /// A plugin file was refused; the previous version, if any, keeps serving.
    #[serde(rename = "plugin:rejected")]
    PluginRejected,
    /// A plugin file was removed; its processor takes no new executions.
    #[serde(rename = "plugin:removed")]
    PluginRemoved,
    /// The workflows file was re-read and every workflow re-checked.
    #[serde(rename = "workflows:reloaded")]
    WorkflowsReloaded,
    /// A schedule's tick started its run.
    #[serde(rename = "schedule:fired")]
    ScheduleFired,
    /// A schedule's tick started no run: the previous tick's still going, or its tenant
    /// over a quota.
    #[serde(rename = "schedule:skipped")]
    ScheduleSkipped,
}

impl EventKind {
    /// The kind's name, e.g. `processor:started`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ProcessorStarted => "processor:started",
            EventKind::ProcessorCompleted => "processor:completed",
            EventKind::ProcessorFailed => "processor:failed",
            EventKind::ProcessorRetrying => "processor:retrying",
            EventKind::SessionCreated => "session:created",
            EventKind::SessionStopped => "session:stopped",
            EventKind::Progress => "progress",
            EventKind::Custom => "custom",
            EventKind::PluginLoaded => "plugin:loaded",
            EventKind::PluginReloaded => "plugin:reloaded",
            EventKind::PluginRejected => "plugin:rejected",
            EventKind::PluginRemoved => "plugin:removed",
            EventKind::WorkflowsReloaded => "workflows:reloaded",
            EventKind::ScheduleFired => "schedule:fired",
            EventKind::ScheduleSkipped => "schedule:skipped",
        }
    }
}

/// One event. Fields that do not apply to a kind are absent (`null` in JSON):
///
/// | kind | payload beyond `event`, `sequence`, `timestampMs`, `tenant`, `session` |
/// |---|---|
/// | `processor:started` | `executionId`, `processor`, `parentId`, `depth`, `step` (a workflow's step) |
/// | `processor:completed` | … plus `attempts`, `durationUs` |
/// | `processor:failed` | … plus `attempts`, `durationUs`, `error` |
/// | `processor:retrying` | … plus `attempt` (the one that failed), `error`, `data: {delayMs}` |
/// | `progress` | `executionId`, `processor`, `data: {percent, message}` |
/// | `custom` | `executionId`, `processor`, `name`, `data` (the guest's JSON) |
/// | `session:created`, `session:stopped` | `data: {cancelled}` on stop |
/// | `plugin:loaded`, `plugin:reloaded` | `processor`, `data: {digest, oldDigest, version, oldVersion, fromCache, compileMs, swapUs, path}` |
/// | `plugin:rejected` | `processor`, `data: {reason, servingDigest, path}` |
/// | `plugin:removed` | `processor`, `data: {oldDigest, path}` |
/// | `workflows:reloaded` | `data: {valid: [names], invalid: {name: reason}, fileError, schedules: [names], invalidSchedules: {name: reason}}` |
/// | `schedule:fired` | `executionId` (the run), `processor`, `data: {schedule, tickMs}` |
/// | `schedule:skipped` | `processor`, `data: {schedule, tickMs, reason}` |
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// What happened.
    pub event: EventKind,
    /// Position in this runtime's event stream (starts at 1, no gaps at the source).
    pub sequence: u64,
    /// When, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The tenant concerned.
    pub tenant: String,
    /// The session concerned, if any.
    pub session: Option<String>,
    /// The execution concerned, if any.
    pub execution_id: Option<String>,
    /// The execution that started this one (a workflow or a guest's `call`), if any.
    pub parent_id: Option<String>,
    /// The processor or workflow name, if any.
    pub processor: Option<String>,
    /// Guest `call`s above this execution.
    pub depth: Option<u32>,
    /// Where this execution runs in the workflow that started it (`processor:*` events of a
    /// workflow's step): `step:2` (a chain's third step), `branch:1`, `merge`, `selector`,
    /// `route:KEY`, `fallback`, `item:7` (a batch's eighth item) or `node:NAME` (a graph's
    /// node). Two steps that run the same processor are told apart by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The attempt concerned (`processor:retrying`).
    pub attempt: Option<u32>,
    /// Attempts made (`processor:completed|failed`).
    pub attempts: Option<u32>,
    /// Wall-clock duration (`processor:completed|failed`).
    pub duration_us: Option<u64>,
    /// The error (`processor:failed|retrying`).
    pub error: Option<ExecutionError>,
    /// A custom event's name.
    pub name: Option<String>,
    /// Kind-specific data (see the table above).
    pub data: Option<Value>,
    /// In the distributed runtime, the process the event came from (its id); absent for
    /// events of this process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

impl Event {
    /// An event of `kind` for `tenant`, with every optional field empty. The bus fills in
    /// `sequence` and `timestamp_ms`.
    pub(crate) fn new(kind: EventKind, tenant: &str, session: Option<&str>) -> Self {
        Event {
            event: kind,
            sequence: 0,
            timestamp_ms: 0,
            tenant: tenant.to_string(),
            session: session.map(str::to_string),
            execution_id: None,
            parent_id: None,
            processor: None,
            depth: None,
            step: None,
            attempt: None,
            attempts: None,
            duration_us: None,
            error: None,
            name: None,
            data: None,
            origin: None,
        }
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Notice {
    /// The next event.
    Event(Arc<Event>),
    /// This subscriber fell behind and `missed` events were dropped for it.
    Lagged {
        /// How many events it will never see.
        missed: u64,
    },
}

/// An event as the bus holds it, with the payload bytes it counts for; they are given back
/// when the bus lets go of it (every subscriber read it, or it was overwritten).
#[derive(Debug)]
struct Held {
    event: Arc<Event>,
    bytes: usize,
    held: Arc<AtomicUsize>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The bus holds as many payload bytes as it may: a guest's event is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BusFull {
    /// The bus's bound, in bytes.
    pub(crate) limit: usize,
}

/// A subscription to a runtime's events. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Held>>,
    subscribers: Arc<AtomicUsize>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.subscribers.fetch_sub(1, Ordering::Release);
    }
}

impl Subscription {
    /// The next event or lag notice; `None` once the runtime is gone.
    pub async fn recv(&mut self) -> Option<Notice> {
        self.recv_sized().await.map(|(notice, _)| notice)
    }

    /// [`Subscription::recv`], with the payload bytes the bus counted for the event (0 for
    /// a lag notice).
    pub(crate) async fn recv_sized(&mut self) -> Option<(Notice, usize)> {
        match self.receiver.recv().await {
            Ok(held) => Some((Notice::Event(held.event.clone()), held.bytes)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Some((Notice::Lagged { missed }, 0))
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event or lag notice if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Notice> {
        match self.receiver.try_recv() {
            Ok(held) => Some(Notice::Event(held.event.clone())),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => Some(Notice::Lagged { missed }),
            Err(_) => None,
        }
    }
}

/// The runtime's event bus.
#[derive(Debug)]
pub(crate) struct EventBus {
    sender: broadcast::Sender<Arc<Held>>,
    sequence: AtomicU64,
    /// Live subscriptions, kept here because the channel's own count takes a lock and the
    /// execution path asks on every execution.
    subscribers: Arc<AtomicUsize>,
    /// Payload bytes of the events the channel holds now.
    held: Arc<AtomicUsize>,
    /// The most it may hold.
    max_bytes: usize,
}

impl EventBus {
    /// A bus that keeps up to `capacity` events, with payloads of at most `max_bytes` in
    /// all, for a slow subscriber.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        EventBus {
            sender: broadcast::channel(capacity.max(1)).0,
            sequence: AtomicU64::new(0),
            subscribers: Arc::new(AtomicUsize::new(0)),
            held: Arc::new(AtomicUsize::new(0)),
            max_bytes,
        }
    }

    /// Whether anyone listens. Callers skip building events when no one does.
    pub(crate) fn active(&self) -> bool {
        self.subscribers.load(Ordering::Acquire) > 0
    }

    /// Publishes an event. Never waits. If the bus holds as many payload bytes as it may,
    /// the event goes out without its payload (marked as dropped).
    pub(crate) fn publish(&self, mut event: Event) {
        if !self.active() {
            return;
        }
        event.sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        event.timestamp_ms = crate::contract::clock::now_ms();
        self.send(event);
    }

    /// Publishes a guest's event whose payload the guest handed over as `bytes` bytes of
    /// JSON text, unless the bus holds as many payload bytes as it may: then it is refused,
    /// for the guest to be told. Never waits.
    pub(crate) fn publish_guest(&self, mut event: Event, bytes: usize) -> Result<(), BusFull> {
        if !self.active() {
            return Ok(());
        }
        if self.held.load(Ordering::Acquire).saturating_add(bytes) > self.max_bytes {
            return Err(BusFull {
                limit: self.max_bytes,
            });
        }
        event.sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        event.timestamp_ms = crate::contract::clock::now_ms();
        self.hold(event, bytes);
        Ok(())
    }

    /// How many subscriptions are open.
    #[cfg(feature = "redis")]
    pub(crate) fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    /// Publishes an event another process published (keeping its time). Never waits.
    #[cfg(feature = "redis")]
    pub(crate) fn publish_remote(&self, mut event: Event) {
        if !self.active() {
            return;
        }
        event.sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        self.send(event);
    }

    /// Sends `event`, first dropping its payload if the bus cannot hold it.
    fn send(&self, mut event: Event) {
        let mut bytes = payload_bytes(&event);
        if bytes > 0 && self.held.load(Ordering::Acquire).saturating_add(bytes) > self.max_bytes {
            strip_payload(&mut event, bytes);
            bytes = payload_bytes(&event);
        }
        self.hold(event, bytes);
    }

    /// Sends `event`, counting `bytes` against the bus until every subscriber has let go.
    fn hold(&self, event: Event, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::AcqRel);
        let held = Held {
            event: Arc::new(event),
            bytes,
            held: self.held.clone(),
        };
        // An error only means every subscriber left in the meantime (and drops `held`).
        let _ = self.sender.send(Arc::new(held));
    }

    pub(crate) fn subscribe(&self) -> Subscription {
        self.subscribers.fetch_add(1, Ordering::AcqRel);
        Subscription {
            receiver: self.sender.subscribe(),
            subscribers: self.subscribers.clone(),
        }
    }

    /// Payload bytes the bus holds now.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// The bytes of `event` that a guest or a run can make large: its data and its error's
/// message and details (everything else is a short name or a number).
fn payload_bytes(event: &Event) -> usize {
    let data = event
        .data
        .as_ref()
        .map_or(0, crate::contract::bounds::json_len);
    let error = event.error.as_ref().map_or(0, |e| {
        e.message.len() as u64
            + e.details
                .as_ref()
                .map_or(0, crate::contract::bounds::json_len)
    });
    usize::try_from(data.saturating_add(error)).unwrap_or(usize::MAX)
}

/// Takes `event`'s payload out, leaving a note of its size.
fn strip_payload(event: &mut Event, bytes: usize) {
    let note = serde_json::json!({ "payloadDropped": { "bytes": bytes } });
    if event.data.is_some() {
        event.data = Some(note.clone());
    }
    if let Some(error) = &mut event.error {
        error.details = Some(note);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: u32) -> Event {
        let mut e = Event::new(EventKind::Custom, "t", None);
        e.attempt = Some(n);
        e
    }

    #[tokio::test]
    async fn subscribers_receive_events_in_order() {
        let bus = EventBus::new(16, 1 << 20);
        let mut sub = bus.subscribe();
        for n in 0..3 {
            bus.publish(event(n));
        }
        for n in 0..3 {
            match sub.recv().await {
                Some(Notice::Event(e)) => {
                    assert_eq!(e.attempt, Some(n));
                    assert_eq!(e.sequence, u64::from(n) + 1);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_how_much_it_missed() {
        let bus = EventBus::new(4, 1 << 20);
        let mut slow = bus.subscribe();
        for n in 0..10 {
            bus.publish(event(n));
        }
        match slow.recv().await {
            Some(Notice::Lagged { missed }) => assert_eq!(missed, 6),
            other => panic!("{other:?}"),
        }
        match slow.recv().await {
            Some(Notice::Event(e)) => assert_eq!(e.attempt, Some(6)),
            other => panic!("{other:?}"),
        }
    }

    fn custom(bytes: usize) -> Event {
        let mut e = Event::new(EventKind::Custom, "t", None);
        e.data = Some(Value::String("d".repeat(bytes)));
        e
    }

    #[tokio::test]
    async fn the_bus_holds_payloads_up_to_its_bound_for_a_stalled_subscriber() {
        let bus = EventBus::new(1000, 10_000);
        let mut stalled = bus.subscribe();
        for _ in 0..4 {
            assert_eq!(bus.publish_guest(custom(2_000), 2_002), Ok(()));
        }
        assert_eq!(bus.held_bytes(), 4 * 2_002);
        // A guest's event that would not fit is refused...
        assert_eq!(
            bus.publish_guest(custom(2_000), 2_002),
            Err(BusFull { limit: 10_000 })
        );
        // ... and a host event goes out without its payload.
        let mut failed = Event::new(EventKind::ProcessorFailed, "t", None);
        failed.error = Some(ExecutionError {
            kind: crate::contract::error::ErrorKind::Business,
            code: None,
            message: "m".into(),
            retryable: false,
            details: Some(Value::String("x".repeat(5_000))),
        });
        bus.publish(failed);
        assert!(bus.held_bytes() <= 10_000, "{}", bus.held_bytes());
        for _ in 0..4 {
            assert!(matches!(stalled.recv().await, Some(Notice::Event(_))));
        }
        match stalled.recv().await {
            Some(Notice::Event(e)) => {
                let details = e.error.as_ref().and_then(|e| e.details.clone());
                assert_eq!(
                    details,
                    Some(serde_json::json!({ "payloadDropped": { "bytes": 5_003 } }))
                );
            }
            other => panic!("{other:?}"),
        }
        // Once read, the bus holds nothing.
        assert_eq!(bus.held_bytes(), 0);
        assert_eq!(bus.publish_guest(custom(2_000), 2_002), Ok(()));
    }

    #[test]
    fn events_serialize_with_their_documented_names() {
        let json = serde_json::to_value(event(1)).unwrap();
        assert_eq!(json["event"], "custom");
        assert_eq!(json["executionId"], Value::Null);
        assert_eq!(json["tenant"], "t");
    }

    #[test]
    fn publishing_without_subscribers_costs_nothing_and_numbers_nothing() {
        let bus = EventBus::new(4, 1 << 20);
        bus.publish(event(1));
        let mut sub = bus.subscribe();
        assert!(bus.active());
        bus.publish(event(2));
        assert!(matches!(sub.try_recv(), Some(Notice::Event(e)) if e.sequence == 1));
        drop(sub);
        assert!(!bus.active());
    }
}
