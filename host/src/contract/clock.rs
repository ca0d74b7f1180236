//! Reading the clocks as rarely as the hot path allows: a [`Stamp`] pairs one monotonic and
//! one wall-clock reading, so the wall-clock times an execution needs later (its metadata's
//! timestamps, its deadline for the guest, its id) derive from monotonic readings it takes
//! anyway; and RFC 3339 text written straight from the Unix time.

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The monotonic and the wall clock, read together.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    /// The monotonic reading.
    pub(crate) instant: Instant,
    /// The wall-clock reading.
    pub(crate) wall: SystemTime,
}

impl Stamp {
    /// Reads both clocks.
    pub(crate) fn now() -> Stamp {
        Stamp {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// The wall-clock time at `at` (this stamp's own if `at` is earlier), counted on the
    /// monotonic clock from this stamp: a wall-clock step meanwhile does not show.
    pub(crate) fn wall_at(&self, at: Instant) -> SystemTime {
        self.wall + at.saturating_duration_since(self.instant)
    }

    /// Milliseconds since the Unix epoch at `at`.
    pub(crate) fn unix_ms_at(&self, at: Instant) -> u64 {
        unix_ms(self.wall_at(at))
    }
}

/// Milliseconds since the Unix epoch at `time` (0 for a clock set before 1970).
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// `duration` in whole milliseconds (saturating).
pub(crate) fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// A fresh UUIDv7 id for an execution or run starting now: unique, and ordered by creation.
pub fn new_execution_id() -> String {
    execution_id(SystemTime::now())
}

/// A fresh UUIDv7 id for an execution started at `wall`. Every execution and run id weir
/// makes comes from here, so they are unique and ordered by creation, as
/// [`uuid::Uuid::now_v7`]'s are.
pub(crate) fn execution_id(wall: SystemTime) -> String {
    static CONTEXT: Mutex<uuid::ContextV7> = Mutex::new(uuid::ContextV7::new());
    let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let timestamp = {
        let context = CONTEXT.lock().unwrap_or_else(|p| p.into_inner());
        uuid::Timestamp::from_unix(&*context, since.as_secs(), since.subsec_nanos())
    };
    // Encoded into a buffer: `to_string` would go through the formatting machinery.
    let mut text = uuid::Uuid::encode_buffer();
    uuid::Uuid::new_v7(timestamp)
        .hyphenated()
        .encode_lower(&mut text)
        .to_owned()
}

/// `time` as RFC 3339 text in UTC, as `time`'s own formatter writes it: seconds, then a
/// fraction without trailing zeros (none if it is whole), then `Z`.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    /// 10000-01-01T00:00:00Z: RFC 3339 has four-digit years.
    const YEAR_10000: u64 = 253_402_300_800;
    let since = match time.duration_since(UNIX_EPOCH) {
        Ok(since) if since.as_secs() < YEAR_10000 => since,
        // Before 1970 or past 9999: rare enough for the general formatter, which refuses
        // what RFC 3339 cannot write.
        Ok(since) => return general(i128::try_from(since.as_nanos()).unwrap_or(i128::MAX)),
        Err(before) => {
            return general(i128::try_from(before.duration().as_nanos()).map_or(i128::MIN, |n| -n));
        }
    };
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    let mut out = String::with_capacity(30);
    for (value, width, after) in [
        (year, 4, '-'),
        (month, 2, '-'),
        (day, 2, 'T'),
        (of_day / 3600, 2, ':'),
        (of_day / 60 % 60, 2, ':'),
    ] {
        push_digits(&mut out, value, width);
        out.push(after);
    }
    push_digits(&mut out, of_day % 60, 2);
    let mut nanos = since.subsec_nanos();
    if nanos != 0 {
        let mut width = 9;
        while nanos % 10 == 0 {
            nanos /= 10;
            width -= 1;
        }
        out.push('.');
        push_digits(&mut out, u64::from(nanos), width);
    }
    out.push('Z');
    out
}

/// Appends `value`'s last `width` decimal digits, zero-padded.
fn push_digits(out: &mut String, value: u64, width: u32) {
    for place in (0..width).rev() {
        let digit = value / 10u64.pow(place) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
}

/// `time`'s own RFC 3339 text for `nanos` since the epoch, or the epoch's if it has none.
fn general(nanos: i128) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// The proleptic Gregorian (year, month, day) of `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reference(time: SystemTime) -> String {
        OffsetDateTime::from(time).format(&Rfc3339).unwrap()
    }

    #[test]
    fn rfc3339_text_is_what_the_time_crate_writes() {
        // Whole seconds, every fraction length, leap days, century and year boundaries.
        let mut seconds = vec![
            0,
            951_782_400,   // 2000-02-29
            4_107_542_399, // 2100-02-28T23:59:59
            4_107_542_400, // 2100-03-01
            1_798_761_599, // 2026-12-31T23:59:59
            253_402_300_799,
        ];
        // A deterministic spread over the whole four-digit range.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            seconds.push(x % 253_402_300_800);
        }
        let nanos = [0, 1, 10, 120, 5_000, 999_999_999, 100_000_000, 123_456_780];
        for (i, s) in seconds.iter().enumerate() {
            let time = UNIX_EPOCH + Duration::new(*s, nanos[i % nanos.len()]);
            assert_eq!(rfc3339(time), reference(time), "{s} s");
        }
    }

    #[test]
    fn times_outside_four_digit_years_still_format() {
        let before = UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(rfc3339(before), "1969-12-31T00:00:00Z");
        let after = UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert_eq!(rfc3339(after), "1970-01-01T00:00:00Z");
        let far = UNIX_EPOCH - Duration::from_secs(1 << 40);
        assert_eq!(rfc3339(far), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn wall_times_follow_the_monotonic_clock_from_the_stamp() {
        let stamp = Stamp::now();
        let later = stamp.instant + Duration::from_millis(1500);
        assert_eq!(
            stamp.wall_at(later).duration_since(stamp.wall).unwrap(),
            Duration::from_millis(1500)
        );
        // Never before the stamp itself.
        assert_eq!(
            stamp.wall_at(stamp.instant - Duration::from_millis(1)),
            stamp.wall
        );
    }

    #[test]
    fn ids_from_one_instant_are_distinct_and_ordered() {
        let wall = SystemTime::now();
        let ids: Vec<String> = (0..100).map(|_| execution_id(wall)).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ids);
        assert!(uuid::Uuid::parse_str(&ids[0]).unwrap().get_version_num() == 7);
    }
}
