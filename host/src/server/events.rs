//! `GET /v1/events`: the runtime's events as Server-Sent Events, one `event:` per event kind
//! (`processor:completed`, `session:stopped`, …) with the event as JSON `data:`, a `lagged`
//! event when this client fell behind and missed some, and a keep-alive comment every 15 s.
//! A tenant sees its own events only; the operator every tenant's. Optional filters:
//! `?processor=NAME`, `?session=ID`, and `?tenant=NAME`.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::access::Caller;
use super::error::ApiError;
use crate::events::{Event, Notice};

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

/// The stream; it ends when the server shuts down.
pub(super) async fn stream(
    State(app): State<AppState>,
    caller: Caller,
    filter: Result<Query<Filter>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(filter) = filter.map_err(ApiError::bad_query)?;
    caller.may_ask_for(filter.tenant.as_deref())?;
    // How many events a slow client missed counts every tenant's: the fleet's to know.
    let fleet = caller.is_fleet();
    let subscription = app.runtime.subscribe();
    let events = stream::unfold(subscription, |mut subscription| async move {
        let notice = subscription.recv().await?;
        Some((notice, subscription))
    })
    .filter_map(move |notice| {
        let event = match notice {
            Notice::Event(event) if filter.wants(&caller, &event) => Some(
                SseEvent::default()
                    .event(event.event.as_str())
                    .json_data(&*event)
                    .unwrap_or_else(|_| SseEvent::default().comment("unencodable event")),
            ),
            Notice::Event(_) => None,
            Notice::Lagged { missed } => Some(
                SseEvent::default()
                    .event("lagged")
                    .data(json!({ "missed": fleet.then_some(missed) }).to_string()),
            ),
        };
        std::future::ready(event.map(Ok))
    })
    .take_until(app.shutdown.cancelled_owned());
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
