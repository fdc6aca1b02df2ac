//! The operations snapshot on both backends (see [`crate::backends`]): the sweeper's leader
//! lock, a sweep's record, the once-only lookup of an operation by name, and the poll job each
//! awaited operation wakes. Each handle comes
//! from [`TestQueue::snapshot`], so two handles are two processes.

use std::collections::HashSet;
use std::time::Duration;

use crate::backends::{TestQueue, on_both};

on_both!(
    lead_refuses_others_while_the_lease_holds_and_renews_for_the_holder,
    record_sweep_writes_views_and_drops_operations_no_longer_awaited,
    first_lookup_is_true_once_until_forgotten,
    waiters_name_the_poll_job_of_each_awaited_operation,
);

fn names(names: &[&str]) -> HashSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

async fn lead_refuses_others_while_the_lease_holds_and_renews_for_the_holder(t: TestQueue) {
    let (a, b) = (t.snapshot().await, t.snapshot().await);
    // Asked for 100 ms, granted the 1 s minimum: the timeline below relies on it.
    let lease = Duration::from_millis(100);
    let sleep = |ms| tokio::time::sleep(Duration::from_millis(ms));

    assert!(a.lead("a", lease).await.unwrap(), "the free lock is taken");
    assert!(
        !b.lead("b", lease).await.unwrap(),
        "refused while a holds it"
    );
    // At 0.6 s a renews, so its lease now runs to 1.6 s instead of 1 s.
    sleep(600).await;
    assert!(a.lead("a", lease).await.unwrap(), "the holder renews");
    sleep(600).await;
    assert!(!b.lead("b", lease).await.unwrap(), "still refused at 1.2 s");
    // Past 1.6 s a, which stopped renewing, has lost the lock.
    sleep(1000).await;
    assert!(
        b.lead("b", lease).await.unwrap(),
        "taken over after the lease"
    );
    assert!(
        !a.lead("a", lease).await.unwrap(),
        "the old leader is refused"
    );
}

async fn record_sweep_writes_views_and_drops_operations_no_longer_awaited(t: TestQueue) {
    let (poll, sweeper) = (t.snapshot().await, t.snapshot().await);
    assert_eq!(sweeper.swept_ms().await.unwrap(), None);
    poll.wait_for("ops/1", "job-1").await.unwrap();
    poll.wait_for("ops/2", "job-2").await.unwrap();
    poll.wait_for("ops/2", "job-2").await.unwrap();
    let waiting = sweeper.waiting().await.unwrap();
    assert_eq!(waiting, names(&["ops/1", "ops/2"]));

    let views = [
        ("ops/1".to_owned(), r#"{"state":"RUNNING"}"#.to_owned()),
        ("ops/2".to_owned(), r#"{"state":"PENDING"}"#.to_owned()),
    ];
    let removed = sweeper
        .record_sweep(&views, &waiting, &[], 1_000)
        .await
        .unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(
        poll.view("ops/1").await.unwrap().as_deref(),
        Some(r#"{"state":"RUNNING"}"#)
    );
    let mut all = poll.views().await.unwrap();
    all.sort();
    assert_eq!(all, [r#"{"state":"PENDING"}"#, r#"{"state":"RUNNING"}"#]);
    assert_eq!(poll.swept_ms().await.unwrap(), Some(1_000));

    // ops/1 ended; ops/3 shows up in a sweep although nobody waits for it.
    poll.stop_waiting("ops/1").await.unwrap();
    let waiting = sweeper.waiting().await.unwrap();
    assert_eq!(waiting, names(&["ops/2"]));
    let views = [
        ("ops/2".to_owned(), r#"{"state":"SUCCEEDED"}"#.to_owned()),
        ("ops/3".to_owned(), r#"{"state":"RUNNING"}"#.to_owned()),
    ];
    let mut removed = sweeper
        .record_sweep(&views, &waiting, &[], 2_000)
        .await
        .unwrap();
    removed.sort();
    assert_eq!(removed, ["ops/1", "ops/3"]);
    assert_eq!(poll.view("ops/1").await.unwrap(), None);
    assert_eq!(poll.view("ops/3").await.unwrap(), None);
    assert_eq!(
        poll.view("ops/2").await.unwrap().as_deref(),
        Some(r#"{"state":"SUCCEEDED"}"#)
    );
    assert_eq!(poll.views().await.unwrap().len(), 1);
    assert_eq!(poll.swept_ms().await.unwrap(), Some(2_000));

    // ops/2 drops out of EE's list: its view goes, it stays awaited with its job.
    let unlisted = ["ops/2".to_owned()];
    let removed = sweeper
        .record_sweep(&[], &waiting, &unlisted, 3_000)
        .await
        .unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(poll.view("ops/2").await.unwrap(), None);
    assert_eq!(sweeper.waiting().await.unwrap(), names(&["ops/2"]));
    assert_eq!(sweeper.waiters(&unlisted).await.unwrap(), ["job-2"]);
    assert_eq!(poll.swept_ms().await.unwrap(), Some(3_000));
}

async fn first_lookup_is_true_once_until_forgotten(t: TestQueue) {
    let (one, other) = (t.snapshot().await, t.snapshot().await);
    assert!(one.first_lookup("ops/1").await.unwrap());
    assert!(!one.first_lookup("ops/1").await.unwrap());
    assert!(
        !other.first_lookup("ops/1").await.unwrap(),
        "shared by processes"
    );
    assert!(other.first_lookup("ops/2").await.unwrap(), "per operation");

    // A failed lookup is forgotten so that a later run tries again.
    one.forget_lookup("ops/1").await.unwrap();
    assert!(other.first_lookup("ops/1").await.unwrap());
    assert!(!one.first_lookup("ops/1").await.unwrap());

    // An operation nobody waits for any more is forgotten as well.
    one.wait_for("ops/1", "job-1").await.unwrap();
    one.stop_waiting("ops/1").await.unwrap();
    assert!(one.waiting().await.unwrap().is_empty());
    assert!(one.first_lookup("ops/1").await.unwrap());
    assert!(!other.first_lookup("ops/2").await.unwrap(), "untouched");
}

async fn waiters_name_the_poll_job_of_each_awaited_operation(t: TestQueue) {
    let (poll, sweeper) = (t.snapshot().await, t.snapshot().await);
    let ops = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    poll.wait_for("ops/1", "job-1").await.unwrap();
    poll.wait_for("ops/2", "job-2").await.unwrap();
    // A retried order waits for a new operation under the same job id.
    poll.wait_for("ops/3", "job-1").await.unwrap();
    assert_eq!(
        sweeper.waiting().await.unwrap(),
        names(&["ops/1", "ops/2", "ops/3"])
    );
    assert_eq!(
        sweeper
            .waiters(&ops(&["ops/1", "ops/2", "ops/3", "ops/unknown"]))
            .await
            .unwrap(),
        ["job-1", "job-2"],
        "each job once; nobody waits for ops/unknown"
    );
    assert!(sweeper.waiters(&[]).await.unwrap().is_empty());

    // Recorded again (every poll run does): the latest job is the one named.
    poll.wait_for("ops/2", "job-2b").await.unwrap();
    assert_eq!(sweeper.waiters(&ops(&["ops/2"])).await.unwrap(), ["job-2b"]);

    // Nobody waits any more: no job to wake.
    poll.stop_waiting("ops/2").await.unwrap();
    assert!(sweeper.waiters(&ops(&["ops/2"])).await.unwrap().is_empty());
    assert_eq!(sweeper.waiters(&ops(&["ops/1"])).await.unwrap(), ["job-1"]);

    // Many operations at once go in bounded steps.
    let many: Vec<String> = (0..2_500).map(|i| format!("ops/many/{i}")).collect();
    for (i, name) in many.iter().enumerate() {
        poll.wait_for(name, &format!("job-many-{i}")).await.unwrap();
    }
    assert_eq!(sweeper.waiters(&many).await.unwrap().len(), 2_500);
}
