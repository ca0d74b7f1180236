//! Where a guest's words go: its `log` calls and its stdout/stderr become `tracing` events
//! (target `weir::guest`) inside the execution's span, through one per-execution token
//! bucket, so a flooding guest loses lines (counted, reported once) instead of slowing the
//! host. Every line is bounded (see [`GuestBounds`]): messages are cut and their control
//! characters escaped, so a guest can neither flood the log pipeline with one huge line nor
//! forge lines of the host's; `log` fields must be a JSON object within their bound. The
//! last few KiB of stderr are kept so that a trap can carry the guest's panic message.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::contract::bounds::{Bucket, GuestBounds, Rate, clip_str, escape_controls};

/// Log lines a guest may write: a burst, refilled at a steady rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRate {
    /// Lines allowed at once.
    pub burst: u32,
    /// Lines added back per second.
    pub per_second: u32,
}

impl From<LogRate> for Rate {
    fn from(rate: LogRate) -> Rate {
        Rate {
            burst: rate.burst,
            per_second: rate.per_second,
        }
    }
}

impl Default for LogRate {
    /// 200 lines at once, 100 per second after that.
    fn default() -> Self {
        LogRate {
            burst: 200,
            per_second: 100,
        }
    }
}

/// Severity of a guest line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

const STDERR_TAIL: usize = 4 << 10;

/// The per-execution sink for guest output.
pub(crate) struct GuestLog {
    state: Mutex<LogState>,
}

struct LogState {
    rate: LogRate,
    bucket: Bucket,
    bounds: GuestBounds,
    dropped: u64,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stderr_tail: VecDeque<u8>,
}

impl GuestLog {
    pub(crate) fn new(rate: LogRate, bounds: GuestBounds) -> Arc<GuestLog> {
        Arc::new(GuestLog {
            state: Mutex::new(LogState {
                rate,
                bucket: Bucket::new(rate.into(), Instant::now()),
                bounds,
                dropped: 0,
                stdout: Vec::new(),
                stderr: Vec::new(),
                stderr_tail: VecDeque::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        // A poisoned lock only means another thread panicked mid-log; the data is still a
        // valid buffer, so keep logging.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A structured `log` call from the guest.
    pub(crate) fn log(&self, level: Level, message: &str, fields: Option<&str>) {
        let bounds = {
            let mut state = self.lock();
            if !state.take_token() {
                return;
            }
            state.bounds
        };
        let (message, fields) = bounds.log_line(message, fields);
        emit(level, "log", &message, fields.as_deref());
    }

    /// Starts the log over for the next execution of a reused instance: a full rate
    /// allowance and no stderr tail, so one execution's panic text never reaches another's
    /// error. Call after [`GuestLog::finish`], with the time the next execution starts.
    pub(crate) fn reset(&self, now: Instant) {
        let mut state = self.lock();
        state.bucket = Bucket::new(state.rate.into(), now);
        state.dropped = 0;
        state.stdout.clear();
        state.stderr.clear();
        state.stderr_tail.clear();
    }

    /// Flushes partial lines and reports dropped lines. Called when the execution ends.
    pub(crate) fn finish(&self) {
        let mut state = self.lock();
        for stream in [Stream::Stdout, Stream::Stderr] {
            let rest = std::mem::take(state.buffer(stream));
            if !rest.is_empty() && state.take_token() {
                emit_line(stream, &rest, state.bounds.log_message_bytes);
            }
        }
        if state.dropped > 0 {
            tracing::warn!(
                target: "weir::guest",
                dropped = state.dropped,
                "dropped guest log lines over the rate limit"
            );
            state.dropped = 0;
        }
    }

    /// The guest's panic message, if its stderr shows one; else the last stderr lines.
    pub(crate) fn panic_message(&self) -> Option<String> {
        let state = self.lock();
        let mut tail: Vec<u8> = state.stderr_tail.iter().copied().collect();
        tail.extend_from_slice(&state.stderr);
        drop(state);
        let text = String::from_utf8_lossy(&tail);
        extract_panic(&text)
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut state = self.lock();
        if stream == Stream::Stderr {
            let recent = &bytes[bytes.len().saturating_sub(STDERR_TAIL)..];
            state.stderr_tail.extend(recent.iter().copied());
            let excess = state.stderr_tail.len().saturating_sub(STDERR_TAIL);
            state.stderr_tail.drain(..excess);
        }
        // A line is kept to its bound (plus a little, so the cut shows): the rest of a longer
        // one is dropped, so no write, however large, is copied or written whole.
        let max = state.bounds.log_message_bytes;
        let keep = max.saturating_add(4);
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(pos);
            rest = &after[1..];
            let mut full = std::mem::take(state.buffer(stream));
            let room = keep.saturating_sub(full.len());
            full.extend_from_slice(&line[..line.len().min(room)]);
            if state.take_token() {
                emit_line(stream, &full, max);
            }
        }
        let buffer = state.buffer(stream);
        let room = keep.saturating_sub(buffer.len());
        buffer.extend_from_slice(&rest[..rest.len().min(room)]);
        if buffer.len() > max {
            let full = std::mem::take(buffer);
            if state.take_token() {
                emit_line(stream, &full, max);
            }
        }
    }
}

impl LogState {
    fn take_token(&mut self) -> bool {
        let taken = self.bucket.take();
        if !taken {
            self.dropped += 1;
        }
        taken
    }

    fn buffer(&mut self, stream: Stream) -> &mut Vec<u8> {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }
}

fn emit(level: Level, source: &'static str, message: &str, fields: Option<&str>) {
    macro_rules! at {
        ($level:ident) => {
            tracing::event!(target: "weir::guest", tracing::Level::$level, source, fields, "{message}")
        };
    }
    match level {
        Level::Trace => at!(TRACE),
        Level::Debug => at!(DEBUG),
        Level::Info => at!(INFO),
        Level::Warn => at!(WARN),
        Level::Error => at!(ERROR),
    }
}

fn emit_line(stream: Stream, line: &[u8], max: usize) {
    let text = String::from_utf8_lossy(line);
    let text = clip_str(&text, max);
    let text = text.trim_end_matches('\r');
    if text.trim().is_empty() {
        return;
    }
    let text = escape_controls(text);
    match stream {
        Stream::Stdout => emit(Level::Info, "stdout", &text, None),
        Stream::Stderr => emit(Level::Warn, "stderr", &text, None),
    }
}

/// Pulls a panic message out of stderr text: Rust's `panicked at FILE:LINE:COL:\nMESSAGE`
/// form when present, otherwise the last non-empty lines.
fn extract_panic(stderr: &str) -> Option<String> {
    if let Some(at) = stderr.rfind("panicked at ") {
        let after = &stderr[at..];
        let mut lines = after.lines();
        let location = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("panicked at ")
            .trim_end_matches(':');
        let message: Vec<&str> = lines
            .take_while(|l| !l.starts_with("note: ") && !l.starts_with("stack backtrace"))
            .collect();
        let message = message.join("\n");
        let message = message.trim();
        if !message.is_empty() {
            return Some(format!("{message} (at {location})"));
        }
    }
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(5);
    let tail = lines[start..].join("\n");
    (!tail.is_empty()).then_some(tail)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// A guest's stdout or stderr, feeding a [`GuestLog`].
#[derive(Clone)]
pub(crate) struct GuestStream {
    log: Arc<GuestLog>,
    stream: Stream,
}

impl GuestStream {
    pub(crate) fn stdout(log: &Arc<GuestLog>) -> Self {
        GuestStream {
            log: log.clone(),
            stream: Stream::Stdout,
        }
    }

    pub(crate) fn stderr(log: &Arc<GuestLog>) -> Self {
        GuestStream {
            log: log.clone(),
            stream: Stream::Stderr,
        }
    }
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.log.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl AsyncWrite for GuestStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.log.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_panics_are_extracted_with_their_location() {
        let stderr = "starting\nthread '<unnamed>' panicked at src/lib.rs:9:5:\nprocessor exploded: 42\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            extract_panic(stderr).unwrap(),
            "processor exploded: 42 (at src/lib.rs:9:5)"
        );
    }

    #[test]
    fn other_stderr_falls_back_to_its_last_lines() {
        let stderr = "a\nb\n\nTraceback: ValueError: bad\n";
        assert_eq!(
            extract_panic(stderr).unwrap(),
            "a\nb\nTraceback: ValueError: bad"
        );
        assert_eq!(extract_panic(""), None);
    }

    #[test]
    fn the_bucket_drops_lines_beyond_the_burst() {
        let log = GuestLog::new(
            LogRate {
                burst: 3,
                per_second: 1,
            },
            GuestBounds::default(),
        );
        let passed = (0..10).filter(|_| log.lock().take_token()).count();
        assert_eq!(passed, 3);
        assert_eq!(log.lock().dropped, 7);
    }

    #[test]
    fn stderr_tail_is_bounded_and_survives_the_rate_limit() {
        let log = GuestLog::new(
            LogRate {
                burst: 0,
                per_second: 0,
            },
            GuestBounds::default(),
        );
        for i in 0..10_000 {
            log.write(Stream::Stderr, format!("line {i}\n").as_bytes());
        }
        log.write(Stream::Stderr, b"panicked at x.rs:1:1:\nboom\n");
        assert!(log.lock().stderr_tail.len() <= STDERR_TAIL);
        assert_eq!(log.panic_message().unwrap(), "boom (at x.rs:1:1)");
    }

    /// Everything logged while `f` runs, as the pretty format writes it.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = sink.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn a_huge_write_is_logged_and_held_to_the_line_bound() {
        let max = GuestBounds::default().log_message_bytes;
        let log = GuestLog::new(LogRate::default(), GuestBounds::default());
        let text = logged(|| {
            for _ in 0..4 {
                log.write(Stream::Stdout, &vec![b'x'; 4 << 20]);
                log.write(
                    Stream::Stderr,
                    &[&vec![b'y'; 4 << 20][..], b"\nnext\n"].concat(),
                );
                let state = log.lock();
                assert!(state.stdout.len() <= max + 4, "{}", state.stdout.len());
                assert!(state.stderr_tail.len() <= STDERR_TAIL);
            }
            log.finish();
        });
        assert!(
            text.len() < 16 * (max + 256),
            "{} bytes logged for 32 MiB written",
            text.len()
        );
        assert!(text.lines().all(|line| line.len() < max + 256));
    }
}
