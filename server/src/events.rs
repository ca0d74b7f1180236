//! `GET /v1/events`: the runtime's events as Server-Sent Events, one `event:` per event kind
//! (`processor:completed`, `session:stopped`, …) with the event as JSON `data:`, a `lagged`
//! event when this client fell behind and missed some, and a keep-alive comment every 15 s.
//! A tenant sees its own events only; the operator every tenant's. Optional filters:
//! `?processor=NAME`, `?session=ID`, and `?tenant=NAME`.
//!
//! Each stream is bounded: a task reads the runtime's events as they come (so a client that
//! stops reading never makes the runtime keep events for it) into the stream's own queue of
//! at most [`ServerConfig::event_stream_bytes`] and [`ServerConfig::event_stream_events`];
//! past that, events are dropped for this client and it is sent a `lagged` event once it
//! reads again. At most [`ServerConfig::max_event_streams`] streams are open at once, and
//! [`ServerConfig::max_event_streams_per_tenant`] per tenant; one more gets `429`.
//!
//! [`ServerConfig::event_stream_bytes`]: super::ServerConfig::event_stream_bytes
//! [`ServerConfig::event_stream_events`]: super::ServerConfig::event_stream_events
//! [`ServerConfig::max_event_streams`]: super::ServerConfig::max_event_streams
//! [`ServerConfig::max_event_streams_per_tenant`]: super::ServerConfig::max_event_streams_per_tenant

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;

use super::AppState;
use super::access::Caller;
use super::error::ApiError;
use weir::{Event, Notice};

/// Which events a client wants; absent fields match everything.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Filter {
    processor: Option<String>,
    session: Option<String>,
    /// The operator's choice of one tenant.
    tenant: Option<String>,
}

impl Filter {
    fn wants(&self, caller: &Caller, event: &Event) -> bool {
        caller.sees_tenant(&event.tenant)
            && self.tenant.as_deref().is_none_or(|t| event.tenant == t)
            && self
                .processor
                .as_deref()
                .is_none_or(|p| event.processor.as_deref() == Some(p))
            && self
                .session
                .as_deref()
                .is_none_or(|s| event.session.as_deref() == Some(s))
    }
}

/// One item of a stream's queue, with the bytes it counts for.
struct Queued {
    event: SseEvent,
    bytes: usize,
}

/// What a stream's queue holds now: bytes and events sent to the client's side and not yet
/// taken by it.
#[derive(Default)]
struct Pending {
    bytes: AtomicUsize,
    events: AtomicUsize,
}

/// The streams open now, in all and per tenant.
#[derive(Default)]
pub(super) struct OpenStreams {
    per_tenant: Mutex<HashMap<String, usize>>,
    all: AtomicUsize,
}

/// A stream's place among the open ones; given back when dropped.
struct StreamSlot {
    open: Arc<OpenStreams>,
    tenant: String,
}

impl OpenStreams {
    fn take(
        self: &Arc<Self>,
        tenant: &str,
        max: usize,
        max_per_tenant: usize,
    ) -> Result<StreamSlot, ApiError> {
        let mut per_tenant = self.per_tenant.lock().unwrap_or_else(|p| p.into_inner());
        let all = self.all.load(Ordering::Acquire);
        let mine = per_tenant.get(tenant).copied().unwrap_or(0);
        if all >= max || mine >= max_per_tenant {
            let message = if all >= max {
                format!(
                    "the server already serves {all} event streams, its maximum; try again later"
                )
            } else {
                format!(
                    "tenant `{tenant}` already has {mine} event streams open, its maximum; close one"
                )
            };
            return Err(ApiError::too_many(message, Duration::from_secs(5)));
        }
        *per_tenant.entry(tenant.to_string()).or_insert(0) += 1;
        self.all.fetch_add(1, Ordering::AcqRel);
        Ok(StreamSlot {
            open: self.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut per_tenant = self
            .open
            .per_tenant
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = per_tenant.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                per_tenant.remove(&self.tenant);
            }
        }
        self.open.all.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The stream; it ends when the server shuts down.
pub(super) async fn stream(
    State(app): State<AppState>,
    caller: Caller,
    filter: Result<Query<Filter>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(filter) = filter.map_err(ApiError::bad_query)?;
    caller.may_ask_for(filter.tenant.as_deref())?;
    let config = &app.config;
    // The operator's streams count under its own name, so a tenant never crowds them out.
    let counted_as = match &caller {
        Caller::Operator => "(operator)",
        other => other.tenant().map(|(name, _)| name).unwrap_or("(operator)"),
    };
    let slot = app.streams.take(
        counted_as,
        config.max_event_streams,
        config.max_event_streams_per_tenant,
    )?;
    // How many events a slow client missed counts every tenant's: the fleet's to know.
    let fleet = caller.is_fleet();
    let subscription = app.runtime.subscribe();
    let (sender, receiver) = mpsc::unbounded_channel::<Queued>();
    let pending = Arc::new(Pending::default());
    let budget = (config.event_stream_bytes, config.event_stream_events.max(1));
    tokio::spawn(forward(
        subscription,
        sender,
        pending.clone(),
        budget,
        move |event| filter.wants(&caller, event),
        fleet,
        slot,
    ));
    let events = stream::unfold((receiver, pending), |(mut receiver, pending)| async move {
        let queued = receiver.recv().await?;
        pending.bytes.fetch_sub(queued.bytes, Ordering::AcqRel);
        pending.events.fetch_sub(1, Ordering::AcqRel);
        Some((Ok(queued.event), (receiver, pending)))
    })
    .take_until(app.shutdown.cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Reads `subscription` as fast as events come, keeps those `wants` takes for one client
/// within `budget` (bytes, events) of what it has not read yet, and drops the rest, telling
/// the client how many it missed once it has room again. Ends when the client is gone (its
/// receiver dropped) or the runtime is.
async fn forward(
    mut subscription: weir::Subscription,
    sender: mpsc::UnboundedSender<Queued>,
    pending: Arc<Pending>,
    (max_bytes, max_events): (usize, usize),
    wants: impl Fn(&Event) -> bool + Send + 'static,
    fleet: bool,
    slot: StreamSlot,
) {
    let _slot = slot;
    let mut missed: u64 = 0;
    loop {
        let notice = tokio::select! {
            notice = subscription.recv() => notice,
            () = sender.closed() => return,
        };
        let event = match notice {
            None => return,
            Some(Notice::Lagged { missed: n }) => {
                missed = missed.saturating_add(n);
                continue;
            }
            Some(Notice::Event(event)) if wants(&event) => event,
            Some(Notice::Event(_)) => continue,
        };
        // A full queue drops the event at once, before anything is built: a client that
        // stops reading costs the server next to nothing per event, so this task keeps up
        // with the bus and the bus never holds events for that client.
        if pending.bytes.load(Ordering::Acquire) >= max_bytes
            || pending.events.load(Ordering::Acquire) >= max_events
        {
            missed = missed.saturating_add(1);
            continue;
        }
        // Written once: its length is what the queue counts, and the text is what is sent.
        let data = serde_json::to_string(&*event).unwrap_or_else(|_| "{}".to_string());
        let bytes = data.len().saturating_add(event.event.as_str().len() + 16);
        let room = |bytes: usize| {
            pending.bytes.load(Ordering::Acquire) + bytes <= max_bytes
                && pending.events.load(Ordering::Acquire) < max_events
        };
        // Owed lag notices go first, as soon as there is room for them.
        if missed > 0 {
            let notice = json!({ "missed": fleet.then_some(missed) }).to_string();
            let notice_bytes = notice.len() + 24;
            if !room(notice_bytes + bytes) {
                missed = missed.saturating_add(1);
                continue;
            }
            let lagged = SseEvent::default().event("lagged").data(notice);
            if !send(&sender, &pending, lagged, notice_bytes) {
                return;
            }
            missed = 0;
        }
        if !room(bytes) {
            missed = missed.saturating_add(1);
            continue;
        }
        let sse = SseEvent::default().event(event.event.as_str()).data(data);
        if !send(&sender, &pending, sse, bytes) {
            return;
        }
    }
}

/// Queues `event` for the client, counting it; false once the client is gone.
fn send(
    sender: &mpsc::UnboundedSender<Queued>,
    pending: &Pending,
    event: SseEvent,
    bytes: usize,
) -> bool {
    pending.bytes.fetch_add(bytes, Ordering::AcqRel);
    pending.events.fetch_add(1, Ordering::AcqRel);
    if sender.send(Queued { event, bytes }).is_err() {
        return false;
    }
    true
}
