//! The event stream in Redis: this process's events published to it, and one reader per
//! process that hands other processes' events to this process's subscribers and runs'
//! outcomes to the callers waiting for them.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use super::handle::{Distributed, EventSink};
use super::runs::{Waiters, run_status, verified_document};
use super::trust::Seal;
use super::{Keys, RedisConfig};
use crate::contract::error::Error;
use crate::sandbox::events::Event;

impl Distributed {
    /// Whether the event stream's reader has started.
    pub(crate) fn reading(&self) -> bool {
        self.reader.initialized()
    }

    /// Starts reading the event stream from its current end, once.
    pub(crate) async fn ensure_reader(&self) -> Result<(), Error> {
        self.reader
            .get_or_try_init(|| async {
                let mut conn = self.conn();
                let start = stream_end(&mut conn, &self.keys.events())
                    .await
                    .map_err(|e| self.redis_error(e))?;
                let reader = Reader {
                    config: self.config.clone(),
                    keys: self.keys.clone(),
                    seal: self.seal.clone(),
                    records: conn,
                    waiters: self.waiters.clone(),
                    origin: self.origin.clone(),
                    events: self.events.clone(),
                };
                Ok::<_, Error>(tokio::spawn(read_events(reader, start)))
            })
            .await
            .map(drop)
    }

    /// Sends other processes' events to `sink` from now on.
    pub(super) fn set_event_sink(&self, sink: EventSink) {
        let _ = self.events.set(sink);
    }

    /// Shares `events` of this process with the others.
    pub(super) async fn publish_events(
        &self,
        events: &[std::sync::Arc<Event>],
    ) -> Result<(), Error> {
        // As few stream entries as fit in the entry bound: fewer for Redis to keep and for
        // every process to read, none larger than the bound allows.
        let entries = event_entries(events, self.config.stream_entry_bytes)
            .map_err(|e| self.redis_error(e))?;
        let mut pipe = redis::pipe();
        for text in entries {
            pipe.cmd("XADD")
                .arg(self.keys.events())
                .arg("MAXLEN")
                .arg("~")
                .arg(self.config.events_kept)
                .arg("*")
                .arg("type")
                .arg("events")
                .arg("origin")
                .arg(&self.origin)
                .arg("events")
                .arg(text)
                .ignore();
        }
        let mut conn = self.conn();
        let _: () = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(())
    }
}

/// The id of the stream's newest entry (`0-0` when it is empty or absent).
async fn stream_end(conn: &mut ConnectionManager, key: &str) -> redis::RedisResult<String> {
    let newest: redis::streams::StreamRangeReply = conn.xrevrange_count(key, "+", "-", 1).await?;
    Ok(newest
        .ids
        .first()
        .map_or_else(|| "0-0".to_string(), |entry| entry.id.clone()))
}

/// Reads the event stream for as long as the process lives, handing run outcomes to their
/// waiters. After losing Redis it reconnects, resumes where it stopped, and reads the
/// records of the runs still awaited (in case the stream itself was lost).
/// What the event stream's reader needs.
struct Reader {
    config: RedisConfig,
    keys: Keys,
    seal: Seal,
    records: ConnectionManager,
    waiters: Arc<Waiters>,
    origin: String,
    events: Arc<OnceLock<EventSink>>,
}

async fn read_events(reader: Reader, mut last: String) {
    let Reader {
        config,
        keys,
        seal,
        mut records,
        waiters,
        origin,
        events,
    } = reader;
    let stream = keys.events();
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut conn = match blocking_connection(&config).await {
            Ok(conn) => conn,
            Err(error) => {
                tracing::debug!(%error, "event reader cannot connect; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Catch up on what may have been missed while disconnected.
        catch_up(&mut records, &keys, &seal, &waiters).await;
        backoff = Duration::from_millis(50);
        let options = redis::streams::StreamReadOptions::default()
            .block(5_000)
            .count(512);
        let mut checked = std::time::Instant::now();
        loop {
            // Now and then, read the records of the runs still awaited: an outcome whose
            // stream entry was trimmed before this reader got to it is still found.
            if checked.elapsed() >= Duration::from_secs(5) {
                checked = std::time::Instant::now();
                catch_up(&mut records, &keys, &seal, &waiters).await;
            }
            let reply: redis::RedisResult<Option<redis::streams::StreamReadReply>> =
                conn.xread_options(&[&stream], &[&last], &options).await;
            let reply = match reply {
                Ok(reply) => reply,
                Err(error) => {
                    tracing::debug!(%error, "event reader lost Redis; reconnecting");
                    break;
                }
            };
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in key.ids {
                    last = entry.id.clone();
                    let kind: Option<String> = entry.get("type");
                    if kind.as_deref() == Some("events") {
                        let from: Option<String> = entry.get("origin");
                        let text: Option<String> = entry.get("events");
                        if let (Some(from), Some(text), Some(sink)) = (from, text, events.get())
                            && from != origin
                        {
                            sink(&from, &text);
                        }
                        continue;
                    }
                    if kind.as_deref() != Some("run") {
                        continue;
                    }
                    // Parsed only for a run someone here waits for. A large result is not
                    // in the announcement: it is read from the run's record.
                    let run: Option<String> = entry.get("run");
                    if let Some(run) = run
                        && waiters.awaits(&run)
                    {
                        match entry.get::<String>("result") {
                            Some(text) => {
                                let mac: String = entry.get("mac").unwrap_or_default();
                                if let Some(result) = verified_document(&seal, &run, &text, &mac) {
                                    waiters.deliver(&run, result);
                                }
                            }
                            None => {
                                deliver_recorded(&mut records, &keys, &seal, &waiters, &run).await;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Hands the outcomes of awaited runs that are recorded to their waiters.
async fn catch_up(records: &mut ConnectionManager, keys: &Keys, seal: &Seal, waiters: &Waiters) {
    waiters.prune();
    for run in waiters.runs() {
        deliver_recorded(records, keys, seal, waiters, &run).await;
    }
}

/// Hands `run`'s recorded outcome, if there is one, to its waiters.
async fn deliver_recorded(
    records: &mut ConnectionManager,
    keys: &Keys,
    seal: &Seal,
    waiters: &Waiters,
    run: &str,
) {
    let fields: redis::RedisResult<HashMap<String, String>> = records.hgetall(keys.run(run)).await;
    if let Some(result) = fields.ok().and_then(|f| run_status(seal, run, f)?.result) {
        waiters.deliver(run, result);
    }
}

/// `events` as the JSON arrays of the event stream's entries: as few as keep each under
/// `max_bytes` (an event larger than that alone in its entry).
fn event_entries(
    events: &[std::sync::Arc<Event>],
    max_bytes: usize,
) -> Result<Vec<String>, serde_json::Error> {
    let mut entries = Vec::new();
    let mut entry = String::from("[");
    for event in events {
        let text = serde_json::to_string(event.as_ref())?;
        // `[`, `]` and a comma around it.
        if entry.len() > 1 && entry.len() + text.len() + 2 > max_bytes {
            entry.push(']');
            entries.push(std::mem::replace(&mut entry, String::from("[")));
        }
        if entry.len() > 1 {
            entry.push(',');
        }
        entry.push_str(&text);
    }
    if entry.len() > 1 {
        entry.push(']');
        entries.push(entry);
    }
    Ok(entries)
}

/// A connection of its own for blocking reads (no response timeout).
async fn blocking_connection(
    config: &RedisConfig,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(config.url.as_str())?;
    let options = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&options)
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::sandbox::events::EventKind;

    fn custom(bytes: usize) -> Arc<Event> {
        let mut event = Event::new(EventKind::Custom, "t", None);
        event.data = Some(serde_json::Value::String("d".repeat(bytes)));
        Arc::new(event)
    }

    #[test]
    fn events_are_split_into_stream_entries_under_the_bound() {
        let events: Vec<Arc<Event>> = (0..100).map(|_| custom(1000)).collect();
        let entries = event_entries(&events, 16 << 10).expect("serialises");
        assert!(entries.len() > 1, "{}", entries.len());
        let mut read = 0;
        for entry in &entries {
            assert!(entry.len() <= 16 << 10, "{}", entry.len());
            let batch: Vec<Event> = serde_json::from_str(entry).expect("a JSON array");
            read += batch.len();
        }
        assert_eq!(read, 100, "every event is in an entry, once");
        // An event larger than the bound goes alone; none is empty.
        let entries =
            event_entries(&[custom(10), custom(40_000), custom(10)], 16 << 10).expect("serialises");
        assert_eq!(entries.len(), 3);
        assert!(event_entries(&[], 16 << 10).expect("serialises").is_empty());
    }
}
