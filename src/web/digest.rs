//! A campaign's digest: every order's state as one letter and its failures grouped by message,
//! from one walk over its orders, kept for the console to answer from.
//!
//! A walk reads every order ([`Tracker::walk`], a missing record being QUEUED), so
//! at archive size (1.39 M orders) it takes seconds: the console never waits for one there. A
//! page asks for the digest; a small campaign is walked at once, a big one in the background
//! while the page shows the previous digest (or says it is being aggregated). A digest is walked
//! again only when the campaign's per-state tally has changed since, and once it is older than
//! five times its walk took (at least [`MIN_AGE`]): a finished campaign is walked once, and a
//! big running one costs the queue a bounded share of its time however many pages watch it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::map::code;
use crate::jobs::Submitted;
use crate::queue::tracking::{OrderState, Tracker, TrackingError};
/// Campaigns up to this many orders are walked while the request waits (tens of milliseconds).
const INLINE_ORDERS: usize = 20_000;
/// A digest younger than this is never walked again.
const MIN_AGE: Duration = Duration::from_secs(2);
/// Failure messages kept (the most frequent), and orders named per message.
const MAX_GROUPS: usize = 50;
const MAX_EXAMPLES: usize = 5;
/// Longer failure messages are cut here: some EE messages quote a whole expression.
const MAX_MESSAGE: usize = 500;

/// What one walk over a campaign's orders found.
#[derive(Debug, Clone)]
pub struct Digest {
    /// The submission time of the campaign walked: a campaign forgotten and submitted again
    /// under its name is walked anew.
    pub submitted: DateTime<Utc>,
    /// One letter per order ([`super::map::code`]), in `Submission::orders` order.
    pub codes: Vec<u8>,
    /// Failed, cancelled and lost orders by message, most frequent first.
    pub failures: Vec<FailureGroup>,
    /// Failed orders beyond those in `failures` (messages past [`MAX_GROUPS`]).
    pub failures_other: u64,
    /// The campaign's per-state tally when the walk started.
    pub counts: BTreeMap<OrderState, u64>,
    /// When the walk ended, and how long it took.
    pub at: DateTime<Utc>,
    pub took: Duration,
    walked: Instant,
}

/// The failed orders that share one message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailureGroup {
    pub message: String,
    pub count: u64,
    /// Indices of the first few orders with it (`Submission::orders` order).
    pub examples: Vec<usize>,
}

/// Reads every order of `sub`, whose tally is `counts`, and digests them.
pub async fn walk(
    tracker: &Tracker,
    sub: &Submitted,
    counts: BTreeMap<OrderState, u64>,
) -> Result<Digest, TrackingError> {
    let started = Instant::now();
    let mut codes = Vec::with_capacity(sub.order_count());
    let mut groups: HashMap<String, FailureGroup> = HashMap::new();
    let mut walk = tracker.walk(&sub.name, sub.orders());
    while let Some(chunk) = walk.next().await? {
        let first = codes.len();
        for (i, (_, status)) in chunk.into_iter().enumerate() {
            let Some(s) = status else {
                codes.push(code(OrderState::Queued) as u8);
                continue;
            };
            codes.push(code(s.state) as u8);
            if s.state.is_failed() {
                let message = cut(ee_message(s.error.as_deref().unwrap_or("(no message)")));
                let g = groups.entry(message.clone()).or_insert(FailureGroup {
                    message,
                    count: 0,
                    examples: Vec::new(),
                });
                g.count += 1;
                if g.examples.len() < MAX_EXAMPLES {
                    g.examples.push(first + i);
                }
            }
        }
    }
    let mut failures: Vec<FailureGroup> = groups.into_values().collect();
    failures.sort_by(|a, b| b.count.cmp(&a.count).then(a.message.cmp(&b.message)));
    let failures_other = failures.iter().skip(MAX_GROUPS).map(|g| g.count).sum();
    failures.truncate(MAX_GROUPS);
    Ok(Digest {
        submitted: sub.submitted,
        codes,
        failures,
        failures_other,
        counts,
        at: Utc::now(),
        took: started.elapsed(),
        walked: Instant::now(),
    })
}

/// EE's own words in an order's error: poll records a failed task as `EE task {operation}
/// failed (attempt {n}): {EE's message}`, and the operation differs for every order, so
/// failures are grouped by what follows. Other errors (cedar's own) are kept whole.
fn ee_message(error: &str) -> &str {
    error
        .strip_prefix("EE task ")
        .filter(|rest| rest.contains(" failed (attempt "))
        .and_then(|rest| rest.split_once("): "))
        .map_or(error, |(_, message)| message)
}

/// `message` cut to [`MAX_MESSAGE`] characters.
fn cut(message: &str) -> String {
    match message.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}…", &message[..i]),
        None => message.to_owned(),
    }
}

impl Digest {
    /// Whether a walk should start again: the tally moved since this walk and the digest is
    /// older than five walks (and [`MIN_AGE`]). A digest of a campaign submitted anew under the
    /// same name is never asked (`Digests::get` drops it).
    fn stale(&self, counts: &BTreeMap<OrderState, u64>) -> bool {
        self.counts != *counts && self.walked.elapsed() > (self.took * 5).max(MIN_AGE)
    }
}

#[derive(Default)]
struct Slot {
    digest: Option<Arc<Digest>>,
    walking: bool,
}

/// The digests of the campaigns the console was asked about, by name.
#[derive(Clone, Default)]
pub struct Digests {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
}

impl Digests {
    /// The digest of `sub`, whose tally is now `counts`: when `wait`, fresh for a small
    /// campaign; otherwise (and for a big one) the latest walked, a new walk started in the
    /// background when it is stale; `None` until the first walk ends.
    pub async fn get(
        &self,
        tracker: &Tracker,
        sub: Arc<Submitted>,
        counts: &BTreeMap<OrderState, u64>,
        wait: bool,
    ) -> Option<Arc<Digest>> {
        let (current, start) = {
            let mut slots = self.slots.lock().expect("digest lock");
            let slot = slots.entry(sub.name.clone()).or_default();
            let current = slot.digest.clone().filter(|d| d.submitted == sub.submitted);
            let start = !slot.walking && current.as_ref().is_none_or(|d| d.stale(counts));
            if start {
                slot.walking = true;
            }
            (current, start)
        };
        if !start {
            return current;
        }
        if wait && sub.order_count() <= INLINE_ORDERS {
            return self.run(tracker, &sub, counts.clone()).await.or(current);
        }
        let (this, tracker, counts) = (self.clone(), tracker.clone(), counts.clone());
        tokio::spawn(async move { this.run(&tracker, &sub, counts).await });
        current
    }

    /// Forgets the digests of campaigns `keep` refuses (cleaned away since they were walked).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.slots
            .lock()
            .expect("digest lock")
            .retain(|name, _| keep(name));
    }

    /// Walks `sub` and keeps the result; on an error keeps the previous digest.
    async fn run(
        &self,
        tracker: &Tracker,
        sub: &Submitted,
        counts: BTreeMap<OrderState, u64>,
    ) -> Option<Arc<Digest>> {
        let walked = walk(tracker, sub, counts).await;
        let mut slots = self.slots.lock().expect("digest lock");
        let slot = slots.entry(sub.name.clone()).or_default();
        slot.walking = false;
        match walked {
            Ok(d) => {
                if d.took > Duration::from_secs(1) {
                    tracing::debug!(tracking = %sub.name, took_ms = d.took.as_millis() as u64, "console digest walked");
                }
                let d = Arc::new(d);
                slot.digest = Some(d.clone());
                Some(d)
            }
            Err(e) => {
                tracing::warn!(tracking = %sub.name, error = %e, "the console could not read the campaign's orders");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_group_by_what_ee_said() {
        assert_eq!(
            ee_message(
                "EE task projects/p/operations/ABC failed (attempt 2): Computation timed out."
            ),
            "Computation timed out."
        );
        assert_eq!(
            ee_message("EE task projects/p/operations/ABC failed (attempt 1): a): b"),
            "a): b"
        );
        assert_eq!(
            ee_message("gave up after 5 attempts: HTTP 503"),
            "gave up after 5 attempts: HTTP 503"
        );
    }

    #[test]
    fn retain_forgets_the_campaigns_gone() {
        let d = Digests::default();
        for name in ["kept", "cleaned"] {
            d.slots
                .lock()
                .unwrap()
                .insert(name.to_owned(), Slot::default());
        }
        d.retain(|n| n == "kept");
        let names: Vec<String> = d.slots.lock().unwrap().keys().cloned().collect();
        assert_eq!(names, ["kept"]);
    }

    #[test]
    fn long_messages_are_cut_on_a_character() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(MAX_MESSAGE + 10);
        let c = cut(&long);
        assert_eq!(c.chars().count(), MAX_MESSAGE + 1);
        assert!(c.ends_with('…'));
    }
}
