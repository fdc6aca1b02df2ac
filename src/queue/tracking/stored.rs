//! An order's status as the tracking state stores it: short keys, times as Unix milliseconds,
//! nothing written that is empty. An archive of 1.39 million orders keeps one record per order
//! that has started, and the long form ([`OrderStatus`]'s own serde, which the tracking document
//! and `--json` show) costs about twice as many bytes of Redis for each.
//!
//! Records written by versions that stored the long form are still read ([`decode`]); both the
//! Redis script and SQLite read the state of either (`s`, or `state`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{OrderState, OrderStatus, VerifiedObject};

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    s: OrderState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    op: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    att: Option<u32>,
    #[serde(default, skip_serializing_if = "is_zero")]
    x: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    err: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    img: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    obj: Vec<VerifiedObject>,
    #[serde(default, skip_serializing_if = "is_zero")]
    f: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    b: u64,
    /// exported, created, started, ended, as ms before `u` (short numbers); absent ones are
    /// null, trailing ones left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    t: Vec<Option<i64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    eecu: Option<f64>,
    u: i64,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_millis())
}

fn time(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(DateTime::from_timestamp_millis)
}

/// The stored form of `status` (times kept to the millisecond).
pub(super) fn encode(status: &OrderStatus) -> String {
    let u = status.updated.timestamp_millis();
    let mut t: Vec<Option<i64>> = [
        status.exported,
        status.created,
        status.started,
        status.ended,
    ]
    .into_iter()
    .map(|at| ms(at).map(|at| u - at))
    .collect();
    while t.last() == Some(&None) {
        t.pop();
    }
    let stored = Stored {
        s: status.state,
        op: status.operation.clone(),
        att: status.ee_attempt,
        x: status.exports,
        err: status.error.clone(),
        img: status.images,
        obj: status.objects.clone(),
        f: status.files,
        b: status.bytes,
        t,
        eecu: status.eecu_seconds,
        u,
    };
    serde_json::to_string(&stored).expect("a status serializes")
}

/// A stored status, in the short form or in the long form older versions wrote.
pub(super) fn decode(raw: &str) -> Result<OrderStatus, serde_json::Error> {
    let s: Stored = match serde_json::from_str(raw) {
        Ok(s) => s,
        Err(short) => return serde_json::from_str(raw).map_err(|_| short),
    };
    let at = |i: usize| time(s.t.get(i).copied().flatten().map(|before| s.u - before));
    Ok(OrderStatus {
        state: s.s,
        operation: s.op,
        ee_attempt: s.att,
        exports: s.x,
        error: s.err,
        images: s.img,
        objects: s.obj,
        files: s.f,
        bytes: s.b,
        exported: at(0),
        created: at(1),
        started: at(2),
        ended: at(3),
        eecu_seconds: s.eecu,
        updated: time(Some(s.u)).unwrap_or_default(),
    })
}

/// EECU-seconds as the running sum keeps them: integer milliseconds.
pub(super) fn eecu_ms(status: &OrderStatus) -> i64 {
    status
        .eecu_seconds
        .map_or(0, |s| (s * 1000.0).round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cleaned() -> OrderStatus {
        let t = |s: i64| DateTime::from_timestamp_millis(1_733_000_000_000 + s).unwrap();
        OrderStatus {
            state: OrderState::Cleaned,
            operation: Some("projects/p/operations/ABCDEFGHIJKLMNOPQRSTUVWX".into()),
            ee_attempt: Some(1),
            exports: 1,
            error: None,
            images: Some(3),
            objects: Vec::new(),
            files: 4,
            bytes: 349_999_999,
            exported: Some(t(0)),
            created: Some(t(1000)),
            started: Some(t(2000)),
            ended: Some(t(90_000)),
            eecu_seconds: Some(12.345),
            updated: t(95_000),
        }
    }

    #[test]
    fn the_short_form_round_trips_and_is_about_half_the_long_one() {
        let status = cleaned();
        let short = encode(&status);
        assert_eq!(decode(&short).unwrap(), status);
        // cedar's own times (export, update) come from the clock, with nanoseconds.
        let nanos = chrono::Duration::nanoseconds(123_456_789);
        let mut long = status.clone();
        long.exported = long.exported.map(|t| t + nanos);
        long.updated += nanos;
        let long = serde_json::to_string(&long).unwrap();
        assert!(short.len() * 5 < long.len() * 3, "{short} vs {long}");
        assert_eq!(eecu_ms(&status), 12_345);
    }

    #[test]
    fn the_long_form_of_older_versions_is_read() {
        let mut status = cleaned();
        status.error = Some("boom \"quoted\"".into());
        let long = serde_json::to_string(&status).unwrap();
        assert_eq!(decode(&long).unwrap(), status);
        let queued = OrderStatus::new(OrderState::Queued);
        let short = encode(&queued);
        assert!(short.starts_with(r#"{"s":"QUEUED","u":"#), "{short}");
        assert!(decode("{}").is_err());
    }
}
