//! What a guest may hand the host through weir's imports, and how the host holds it to that:
//! the byte and rate bounds of events, errors and log lines ([`GuestBounds`]), a token
//! bucket for rates, and the clipping every guest-made error goes through before it travels
//! (into the result document, events, Redis records and BullMQ's `failedReason`).
//!
//! Everything here is per execution and set by the operator ([`crate::HostConfig::guest`]);
//! a guest can neither raise nor see the bounds other than through the errors they give it.

use std::time::Instant;

use serde_json::{Value, json};

use crate::contract::error::ExecutionError;

/// A rate: a burst allowed at once, refilled at a steady pace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Units allowed at once.
    pub burst: u32,
    /// Units added back per second.
    pub per_second: u32,
}

/// The bounds on what one execution's guest hands the host. Each bound's default is given
/// beside it; `docs/bounds.md` lists them with every other bound of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestBounds {
    /// Longest name of a custom event (`emit`), in bytes (256). A longer one is refused
    /// with `resource`/`event-too-large`.
    pub event_name_bytes: usize,
    /// Largest payload of a custom event, in bytes of JSON text (64 KiB). A larger one is
    /// refused with `resource`/`event-too-large`.
    pub event_data_bytes: usize,
    /// Custom events and progress reports one execution may publish (a burst of 100, then
    /// 50 a second). An `emit` over the rate is refused with `resource`/`rate-limited`; a
    /// progress report over it still updates the execution's progress but publishes no
    /// event.
    pub event_rate: Rate,
    /// Longest error message a guest may return, in bytes (4 KiB); a longer one is cut at a
    /// character and ends with `…`.
    pub error_message_bytes: usize,
    /// Longest error code a guest may return, in bytes (128); a longer one is cut.
    pub error_code_bytes: usize,
    /// Largest error details a guest may return, in bytes of JSON (64 KiB, and never more
    /// than the execution's output cap); larger details are replaced by
    /// `{"detailsTooLarge": {"bytes": N, "limit": L}}`.
    pub error_details_bytes: usize,
    /// Longest log message (`log`), in bytes (8 KiB, as stdout and stderr lines); a longer
    /// one is cut.
    pub log_message_bytes: usize,
    /// Largest log fields, in bytes of JSON (8 KiB); larger fields, and fields that are not
    /// a JSON object, are replaced by a note saying so.
    pub log_fields_bytes: usize,
}

impl Default for GuestBounds {
    fn default() -> Self {
        GuestBounds {
            event_name_bytes: 256,
            event_data_bytes: 64 << 10,
            event_rate: Rate {
                burst: 100,
                per_second: 50,
            },
            error_message_bytes: 4 << 10,
            error_code_bytes: 128,
            error_details_bytes: 64 << 10,
            log_message_bytes: 8 << 10,
            log_fields_bytes: 8 << 10,
        }
    }
}

impl GuestBounds {
    /// `error` as it may travel: message and code clipped, details replaced by a note of
    /// their size when their JSON is over [`GuestBounds::error_details_bytes`] or
    /// `output_bytes`, whichever is smaller.
    pub(crate) fn error(&self, mut error: ExecutionError, output_bytes: u64) -> ExecutionError {
        error.message = clip(error.message, self.error_message_bytes);
        error.code = error.code.map(|code| clip(code, self.error_code_bytes));
        let limit = self.details_limit(output_bytes);
        if let Some(details) = &error.details {
            let bytes = json_len(details);
            if bytes > limit {
                error.details = Some(details_too_large(bytes, limit));
            }
        }
        error
    }

    /// The most bytes of JSON an error's details may have: [`Self::error_details_bytes`]
    /// or `output_bytes`, whichever is smaller.
    pub(crate) fn details_limit(&self, output_bytes: u64) -> u64 {
        u64::try_from(self.error_details_bytes)
            .unwrap_or(u64::MAX)
            .min(output_bytes)
    }

    /// A log line's message and fields as they may be written: the message cut and its
    /// control characters escaped (so a guest cannot forge lines or terminal sequences),
    /// the fields kept only if they are a JSON object within their bound.
    pub(crate) fn log_line(&self, message: &str, fields: Option<&str>) -> (String, Option<String>) {
        let message = escape_controls(&clip_str(message, self.log_message_bytes));
        let fields = fields.map(|text| {
            if text.len() > self.log_fields_bytes {
                return format!(
                    "{{\"fieldsTooLarge\":{{\"bytes\":{},\"limit\":{}}}}}",
                    text.len(),
                    self.log_fields_bytes
                );
            }
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(_)) => text.to_string(),
                _ => format!("{{\"fieldsNotAnObject\":{{\"bytes\":{}}}}}", text.len()),
            }
        });
        (message, fields)
    }
}

/// What stands for error details of `bytes` bytes over `limit`.
pub(crate) fn details_too_large(bytes: u64, limit: u64) -> Value {
    json!({ "detailsTooLarge": { "bytes": bytes, "limit": limit } })
}

/// The length of `value` as JSON text, counted without building the text.
pub(crate) fn json_len(value: &impl serde::Serialize) -> u64 {
    struct Counter(u64);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` to a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// A per-execution token bucket.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: Rate,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            rate,
            tokens: f64::from(rate.burst),
            refilled: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * f64::from(self.rate.per_second))
            .min(f64::from(self.rate.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// `text` cut to at most `max` bytes, at a character boundary, marked with `…` when cut.
pub(crate) fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let end = cut_at(&text, max);
        text.truncate(end);
        text.push('…');
    }
    text
}

/// [`clip`] for borrowed text.
pub(crate) fn clip_str(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() > max {
        let end = cut_at(text, max);
        std::borrow::Cow::Owned(format!("{}…", &text[..end]))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Where to cut `text` so that it and a `…` fit in `max` bytes.
fn cut_at(text: &str, max: usize) -> usize {
    let mut end = max.saturating_sub('…'.len_utf8()).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// `text` with every control character (newlines, tabs, escape sequences…) written as its
/// escape (`\n`, `\u{1b}`), so that it stays one line and cannot drive a terminal.
pub(crate) fn escape_controls(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A size as a person reads it: `12 bytes`, `2.0 KiB`, `5.0 MiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const MIB: f64 = (1 << 20) as f64;
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / MIB)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} bytes")
    }
}

/// Why [`read_text_bounded`] read no text.
#[derive(Debug)]
pub(crate) enum Unread {
    /// The file is longer than the bound.
    TooLarge,
    /// It could not be read (or is not UTF-8).
    Io(std::io::Error),
}

/// The text of the file at `path`, read to at most `max_bytes`: `Ok(None)` when there is no
/// file. One byte past the bound is read, so a file that grows while it is read is caught
/// too; nothing past that is.
pub(crate) fn read_text_bounded(
    path: &std::path::Path,
    max_bytes: u64,
) -> Result<Option<String>, Unread> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Unread::Io(e)),
    };
    let mut text = String::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_string(&mut text)
        .map_err(Unread::Io)?;
    if text.len() as u64 > max_bytes {
        return Err(Unread::TooLarge);
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::error::ErrorKind;

    #[test]
    fn a_guest_error_is_clipped_to_its_bounds() {
        let bounds = GuestBounds::default();
        let error = ExecutionError {
            kind: ErrorKind::Business,
            code: Some("c".repeat(1000)),
            message: "é".repeat(1 << 20),
            retryable: false,
            details: Some(json!({ "blob": "b".repeat(100 << 10) })),
        };
        let clipped = bounds.error(error, 4 << 20);
        assert!(
            clipped.message.len() <= 4 << 10,
            "{}",
            clipped.message.len()
        );
        assert!(clipped.message.ends_with('…'));
        assert!(clipped.code.as_ref().is_some_and(|c| c.len() <= 128));
        assert_eq!(
            clipped.details,
            Some(json!({ "detailsTooLarge": { "bytes": (100 << 10) + 11, "limit": 64 << 10 } }))
        );
        assert_eq!(clipped.kind, ErrorKind::Business);
    }

    #[test]
    fn error_details_are_bounded_by_the_output_cap_when_it_is_smaller() {
        let bounds = GuestBounds::default();
        let error = ExecutionError {
            kind: ErrorKind::Business,
            code: None,
            message: "short".into(),
            retryable: true,
            details: Some(json!({ "n": 12345 })),
        };
        let kept = bounds.error(error.clone(), 1 << 20);
        assert_eq!(kept, error, "small errors pass unchanged");
        let clipped = bounds.error(error, 5);
        assert_eq!(
            clipped.details,
            Some(json!({ "detailsTooLarge": { "bytes": 11, "limit": 5 } }))
        );
    }

    #[test]
    fn log_lines_are_clipped_escaped_and_their_fields_must_be_a_json_object() {
        let bounds = GuestBounds::default();
        let (message, fields) = bounds.log_line(
            "ok\n2026-01-01T00:00:00Z  WARN weir::server: forged\u{1b}[31m",
            Some("{\"a\":1}"),
        );
        assert_eq!(
            message,
            "ok\\n2026-01-01T00:00:00Z  WARN weir::server: forged\\u{1b}[31m"
        );
        assert_eq!(fields.as_deref(), Some("{\"a\":1}"));
        let (message, fields) = bounds.log_line(&"m".repeat(1 << 20), Some("not json"));
        assert!(message.len() <= 8 << 10);
        assert_eq!(
            fields.as_deref(),
            Some("{\"fieldsNotAnObject\":{\"bytes\":8}}")
        );
        let big = format!("{{\"f\":\"{}\"}}", "f".repeat(9 << 10));
        let (_, fields) = bounds.log_line("m", Some(&big));
        assert_eq!(
            fields,
            Some(format!(
                "{{\"fieldsTooLarge\":{{\"bytes\":{},\"limit\":8192}}}}",
                big.len()
            ))
        );
    }

    #[test]
    fn clipping_respects_character_boundaries() {
        assert_eq!(clip("héllo".to_string(), 5), "h…");
        assert_eq!(clip("hello".to_string(), 5), "hello");
        assert_eq!(clip_str("abcdef", 4), "a…");
    }

    #[test]
    fn the_bucket_allows_its_burst_then_refuses() {
        let mut bucket = Bucket::new(
            Rate {
                burst: 3,
                per_second: 0,
            },
            Instant::now(),
        );
        let passed = (0..10).filter(|_| bucket.take()).count();
        assert_eq!(passed, 3);
    }

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(12), "12 bytes");
    }
}
