//! Tracking state on both backends (Redis on loopback, an SQLite file): submissions are unique,
//! order states only move forward unless forced, the per-state tally stays in step with the
//! orders, and every change marks the submission's document dirty.

use std::collections::BTreeMap;

use cedar::order::Order;
use cedar::period::Period;
use cedar::queue::tracking::{
    OrderState, OrderStatus, Submission, Tracker, TrackingError, order_key,
};
use chrono::{NaiveDate, TimeZone, Utc};

use crate::support::{Namespace, redis_url};

fn submission(name: &str) -> Submission {
    let day = |m| NaiveDate::from_ymd_opt(2024, m, 1).unwrap();
    Submission {
        name: name.to_owned(),
        submitted: Utc.with_ymd_and_hms(2024, 6, 1, 12, 0, 0).unwrap(),
        collections: vec!["LANDSAT/LC08/C02/T1_L2".into()],
        tiles: vec![(1, 2), (3, 4)],
        period_start: day(1),
        period_end: day(3),
        period_freq: Some("MS".into()),
        periods: vec![
            Period {
                start: day(1),
                end: day(2),
            },
            Period {
                start: day(2),
                end: day(3),
            },
        ],
        save_empty_metadata: true,
        error_if_empty: false,
        recipe: None,
        workload_tag: None,
        ingest: None,
        priority: None,
    }
}

/// Asserts the per-state tally of "camp" in `tracker`.
async fn assert_counts(tracker: &Tracker, want: &[(OrderState, u64)]) {
    let want: BTreeMap<OrderState, u64> = want.iter().copied().collect();
    assert_eq!(tracker.counts("camp").await.unwrap(), want);
}

/// Sets `order` of "camp" to a bare status in `state`; whether it was written.
async fn set_state(tracker: &Tracker, order: &Order, state: OrderState, force: bool) -> bool {
    tracker
        .set("camp", order, &OrderStatus::new(state), force)
        .await
        .unwrap()
}

/// The whole contract, against one backend; `tracker` is in a namespace of its own.
async fn forward_only_counts_in_step_and_dirty(tracker: Tracker) {
    let sub = submission("camp");
    tracker.create(&sub).await.unwrap();
    assert!(matches!(
        tracker.create(&sub).await,
        Err(TrackingError::Exists(_))
    ));
    assert_eq!(tracker.submission("camp").await.unwrap(), sub);
    assert!(matches!(
        tracker.submission("nope").await,
        Err(TrackingError::Unknown(_))
    ));
    assert_eq!(tracker.list().await.unwrap(), vec!["camp".to_owned()]);
    assert_counts(&tracker, &[(OrderState::Queued, 4)]).await;
    assert_eq!(
        tracker.take_dirty(10).await.unwrap(),
        vec!["camp".to_owned()]
    );
    assert!(tracker.take_dirty(10).await.unwrap().is_empty());

    let orders: Vec<_> = sub.orders().collect();
    let running = tracker
        .update("camp", &orders[0], false, |s| {
            s.state = OrderState::Running;
            s.operation = Some("projects/p/operations/A".into());
        })
        .await
        .unwrap();
    assert_eq!(running.state, OrderState::Running);
    assert_eq!(
        tracker.take_dirty(10).await.unwrap(),
        vec!["camp".to_owned()]
    );

    // A late poll job must not move the order back to PENDING.
    let mut pending = running.clone();
    pending.state = OrderState::Pending;
    assert!(
        !tracker
            .set("camp", &orders[0], &pending, false)
            .await
            .unwrap()
    );
    assert_eq!(
        tracker.status("camp", &orders[0]).await.unwrap().unwrap(),
        running
    );
    assert!(tracker.take_dirty(10).await.unwrap().is_empty());

    // Forward moves and a forced step back (retry) keep the tally in step.
    let mut done = OrderStatus::new(OrderState::Cleaned);
    done.bytes = 42;
    assert!(tracker.set("camp", &orders[1], &done, false).await.unwrap());
    assert!(set_state(&tracker, &orders[2], OrderState::Failed, false).await);
    assert_counts(
        &tracker,
        &[
            (OrderState::Queued, 1),
            (OrderState::Running, 1),
            (OrderState::Cleaned, 1),
            (OrderState::Failed, 1),
        ],
    )
    .await;
    assert!(!set_state(&tracker, &orders[2], OrderState::Queued, false).await);
    assert!(set_state(&tracker, &orders[2], OrderState::Queued, true).await);
    assert_counts(
        &tracker,
        &[
            (OrderState::Queued, 2),
            (OrderState::Running, 1),
            (OrderState::Cleaned, 1),
        ],
    )
    .await;

    // Orders start QUEUED without a record: only the three written since have one.
    let all = tracker.all("camp").await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[&order_key(&orders[1])].bytes, 42);
    let tally: u64 = tracker.counts("camp").await.unwrap().values().sum();
    assert_eq!(
        tally,
        orders.len() as u64,
        "the tally counts every order once"
    );
    let read = tracker.statuses("camp", &orders).await.unwrap();
    assert_eq!(read.len(), orders.len());
    assert_eq!(
        read.iter().filter(|s| s.is_none()).count(),
        1,
        "one order never written"
    );
    assert_eq!(read[1].as_ref().unwrap().bytes, 42);

    tracker.mark_dirty("camp").await.unwrap();
    tracker.mark_dirty("camp").await.unwrap();
    assert_eq!(
        tracker.take_dirty(10).await.unwrap(),
        vec!["camp".to_owned()]
    );

    tracker.forget("camp").await.unwrap();
    assert!(tracker.list().await.unwrap().is_empty());
    assert!(tracker.all("camp").await.unwrap().is_empty());
    assert!(tracker.counts("camp").await.unwrap().is_empty());
}

#[tokio::test]
async fn tracking_on_redis() {
    let namespace = Namespace::new("tracking");
    let tracker = Tracker::open(&redis_url(), &namespace.name)
        .await
        .expect("Redis at CEDAR_TEST_REDIS or redis://127.0.0.1:6379");
    forward_only_counts_in_step_and_dirty(tracker).await;
    // forget() leaves no state behind; only the (now empty) dirty set could remain, and the
    // namespace's keys go when `namespace` is dropped.
}

#[tokio::test]
async fn tracking_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cedar.db").display());
    let tracker = Tracker::open(&url, "test").await.unwrap();
    // Another namespace in the same file sees nothing of it.
    let other = Tracker::open(&url, "other").await.unwrap();
    other.create(&submission("camp")).await.unwrap();
    forward_only_counts_in_step_and_dirty(tracker).await;
    assert_eq!(other.list().await.unwrap(), vec!["camp".to_owned()]);
    assert_counts(&other, &[(OrderState::Queued, 4)]).await;
}
