//! The queue and its apalis backend, on both backends (see [`crate::backends`]): every behaviour
//! test is one function taking a [`TestQueue`], run once per backend by `on_both!`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use apalis::prelude::*;
use cedar::queue::{
    self, BackendConfig, BacklogPlace, FailResult, Figure, OrderJob, Outcome, QueueJob,
    RateDecision, RetryPolicy, Stage,
};
use chrono::NaiveDate;

use crate::backends::{TestQueue, on_both};

on_both!(
    enqueue_is_idempotent_whatever_the_state,
    lease_hands_out_each_job_once_and_complete_removes_it,
    snooze_runs_again_later_without_spending_an_attempt,
    failures_back_off_then_bury_with_the_last_error,
    bury_requeue_dead_and_remove_tracking_select_one_campaign,
    an_expired_lease_is_redelivered_to_another_worker,
    release_puts_fetched_jobs_back_without_spending_attempts,
    admission_never_exceeds_the_cap_under_concurrent_admitters,
    rate_limiter_shares_one_window_per_second,
    bulk_enqueue_of_100k_jobs,
    apalis_monitor_runs_every_job_to_done_exactly_once,
    apalis_heartbeats_keep_the_lease_of_a_job_longer_than_the_lease,
    leased_by_lists_the_leases_a_worker_holds_until_they_end,
    reap_returns_expired_leases_to_due_and_counts_the_lost_run,
    an_idle_worker_looks_again_every_interval_not_only_at_heartbeats,
    a_job_made_due_in_this_process_is_fetched_without_waiting_for_the_interval,
    wake_makes_delayed_jobs_due_now_and_a_running_one_snooze_for_no_time,
    push_back_returns_the_slot_and_the_job_to_the_front_of_the_backlog,
    admission_stays_under_the_learnt_room_and_stops_while_paused,
    the_backlog_goes_by_priority_then_submissions_take_turns,
    a_run_hands_out_the_jobs_enqueueing_each_would_have,
    runs_take_the_same_turns_as_the_jobs_they_hold,
    cancel_removes_a_run_and_push_back_goes_ahead_of_it,
    a_run_whose_plan_is_lost_is_dropped_and_admission_goes_on,
);

fn job(tracking: &str, row: u32, col: u32) -> OrderJob {
    OrderJob {
        v: 1,
        tracking: tracking.into(),
        collection: "S2".into(),
        row,
        col,
        start: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
        end: NaiveDate::from_ymd_opt(2024, 2, 1).unwrap(),
        operation: None,
    }
}

fn jobs(tracking: &str, n: u32) -> Vec<OrderJob> {
    (0..n).map(|i| job(tracking, i / 1000, i % 1000)).collect()
}

const LEASE: Duration = Duration::from_secs(30);

async fn enqueue_is_idempotent_whatever_the_state(t: TestQueue) {
    let q = &t.queue;
    let batch = jobs("camp", 3);
    assert_eq!(
        q.enqueue_bulk(Stage::Poll, &batch, Duration::ZERO)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        q.enqueue_bulk(Stage::Poll, &batch, Duration::ZERO)
            .await
            .unwrap(),
        0
    );
    assert_eq!(q.depth(Stage::Poll).await.unwrap().due_now, 3);

    // Re-enqueueing a leased job must not put it back in due (it would run twice).
    let leased = q
        .lease(Stage::Poll, "w", 1, LEASE, &RetryPolicy::default())
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(
        q.enqueue_bulk(Stage::Poll, &batch, Duration::ZERO)
            .await
            .unwrap(),
        0
    );
    let depth = q.depth(Stage::Poll).await.unwrap();
    assert_eq!((depth.due_now, depth.leased), (2, 1));

    // Stages are separate queues.
    assert_eq!(
        q.enqueue_bulk(Stage::Download, &batch, Duration::ZERO)
            .await
            .unwrap(),
        3
    );
}

async fn lease_hands_out_each_job_once_and_complete_removes_it(t: TestQueue) {
    let q = &t.queue;
    let policy = RetryPolicy::default();
    q.enqueue_bulk(Stage::Download, &jobs("camp", 5), Duration::ZERO)
        .await
        .unwrap();
    let first = q
        .lease(Stage::Download, "a", 3, LEASE, &policy)
        .await
        .unwrap();
    let second = q
        .lease(Stage::Download, "b", 3, LEASE, &policy)
        .await
        .unwrap();
    assert_eq!((first.len(), second.len()), (3, 2));
    let mut ids: Vec<_> = first.iter().chain(&second).map(|l| l.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5);
    let payload: OrderJob = serde_json::from_slice(&first[0].payload).unwrap();
    assert_eq!(payload.id(), first[0].id);
    assert_eq!(first[0].attempts, 0);

    for l in first.iter().chain(&second) {
        assert!(q.complete(Stage::Download, &l.id).await.unwrap());
    }
    assert!(!q.complete(Stage::Download, &first[0].id).await.unwrap());
    assert_eq!(
        q.depth(Stage::Download).await.unwrap(),
        queue::Depth::default()
    );
    assert_eq!(t.stored(Stage::Download, "data").await, 0);

    // A delayed job is scheduled, not due.
    q.enqueue_bulk(Stage::Download, &jobs("camp", 1), Duration::from_secs(60))
        .await
        .unwrap();
    let depth = q.depth(Stage::Download).await.unwrap();
    assert_eq!((depth.due_now, depth.scheduled), (0, 1));
    assert!(
        q.lease(Stage::Download, "a", 3, LEASE, &policy)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `ids` sorted, for comparing sets of job ids.
fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// What heartbeats compare with the jobs a process holds: a job is listed for the worker that
/// holds its lease, for no other, and no longer once it is completed, released or reaped.
async fn leased_by_lists_the_leases_a_worker_holds_until_they_end(t: TestQueue) {
    let q = &t.queue;
    let policy = RetryPolicy::default();
    let short = Duration::from_millis(300);
    q.enqueue_bulk(Stage::Poll, &jobs("camp", 3), Duration::ZERO)
        .await
        .unwrap();
    let held_by_a = q.lease(Stage::Poll, "a", 2, LEASE, &policy).await.unwrap();
    let held_by_b = q.lease(Stage::Poll, "b", 1, short, &policy).await.unwrap();
    let (a0, a1, b0) = (
        held_by_a[0].id.clone(),
        held_by_a[1].id.clone(),
        held_by_b[0].id.clone(),
    );
    let by = |worker: &'static str| async move {
        sorted(q.leased_by(Stage::Poll, worker).await.unwrap())
    };
    assert_eq!(by("a").await, sorted(vec![a0.clone(), a1.clone()]));
    assert_eq!(by("b").await, vec![b0.clone()]);
    assert!(by("c").await.is_empty());

    assert!(q.complete(Stage::Poll, &a0).await.unwrap());
    assert_eq!(by("a").await, vec![a1.clone()]);

    // b's lease runs out; a's next lease reaps it and takes the job over.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let taken = q.lease(Stage::Poll, "a", 1, LEASE, &policy).await.unwrap();
    assert_eq!(taken[0].id, b0);
    assert!(by("b").await.is_empty());
    assert_eq!(by("a").await, sorted(vec![a1.clone(), b0.clone()]));

    assert!(q.release(Stage::Poll, "a", &a1).await.unwrap());
    assert_eq!(by("a").await, vec![b0.clone()]);
    assert!(q.complete(Stage::Poll, &b0).await.unwrap());
    assert!(by("a").await.is_empty());
}

/// An expired lease goes back to due with the lost run counted as a failed attempt (and
/// `"lease expired (worker lost)"` as its last error), or to dead when that was the last
/// attempt; a live lease is left alone.
async fn reap_returns_expired_leases_to_due_and_counts_the_lost_run(t: TestQueue) {
    let q = &t.queue;
    let policy = RetryPolicy {
        max_attempts: 2,
        ..RetryPolicy::default()
    };
    let short = Duration::from_millis(300);
    q.enqueue_bulk(Stage::Download, &jobs("camp", 2), Duration::ZERO)
        .await
        .unwrap();
    let lost = q
        .lease(Stage::Download, "a", 1, short, &policy)
        .await
        .unwrap()[0]
        .id
        .clone();
    let live = q
        .lease(Stage::Download, "b", 1, LEASE, &policy)
        .await
        .unwrap()[0]
        .id
        .clone();
    assert_eq!(q.reap(Stage::Download, &policy).await.unwrap(), 0);

    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(q.expired_leases(Stage::Download).await.unwrap(), 1);
    assert_eq!(q.reap(Stage::Download, &policy).await.unwrap(), 1);
    assert_eq!(q.expired_leases(Stage::Download).await.unwrap(), 0);
    let depth = q.depth(Stage::Download).await.unwrap();
    assert_eq!((depth.due_now, depth.leased, depth.dead), (1, 1, 0));
    assert_eq!(q.attempts(Stage::Download, &lost).await.unwrap(), 1);
    assert_eq!(q.attempts(Stage::Download, &live).await.unwrap(), 0);
    assert_eq!(
        q.leased_by(Stage::Download, "b").await.unwrap(),
        vec![live.clone()]
    );
    // The worker that lost the lease can no longer settle the job.
    assert_eq!(
        q.fail(Stage::Download, "a", &lost, "late", &policy)
            .await
            .unwrap(),
        FailResult::Stale
    );

    // Lost again: the second failed attempt of two buries it.
    let again = q
        .lease(Stage::Download, "c", 1, short, &policy)
        .await
        .unwrap();
    assert_eq!(
        (again[0].id.as_str(), again[0].attempts),
        (lost.as_str(), 1)
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(q.reap(Stage::Download, &policy).await.unwrap(), 1);
    let reason = q
        .dead_reason(Stage::Download, &lost)
        .await
        .unwrap()
        .expect("dead after its last attempt");
    assert_eq!(
        (
            reason.reason.as_str(),
            reason.attempts,
            reason.last_error.as_str()
        ),
        ("attempts exhausted", 2, "lease expired (worker lost)")
    );
    let depth = q.depth(Stage::Download).await.unwrap();
    assert_eq!((depth.due_now, depth.leased, depth.dead), (0, 1, 1));
    assert!(q.leased_by(Stage::Download, "c").await.unwrap().is_empty());
}

async fn snooze_runs_again_later_without_spending_an_attempt(t: TestQueue) {
    let q = &t.queue;
    let policy = RetryPolicy::default();
    q.enqueue_bulk(Stage::Poll, &jobs("camp", 1), Duration::ZERO)
        .await
        .unwrap();
    let id = q.lease(Stage::Poll, "w", 1, LEASE, &policy).await.unwrap()[0]
        .id
        .clone();

    // Only the lease owner may snooze.
    assert!(
        !q.snooze(Stage::Poll, "intruder", &id, Duration::ZERO)
            .await
            .unwrap()
    );
    assert!(
        q.snooze(Stage::Poll, "w", &id, Duration::from_millis(300))
            .await
            .unwrap()
    );
    let depth = q.depth(Stage::Poll).await.unwrap();
    assert_eq!((depth.scheduled, depth.leased), (1, 0));
    assert!(
        q.lease(Stage::Poll, "w", 1, LEASE, &policy)
            .await
            .unwrap()
            .is_empty()
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = q.lease(Stage::Poll, "w", 1, LEASE, &policy).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, id);
    assert_eq!(again[0].attempts, 0);
    assert_eq!(q.attempts(Stage::Poll, &id).await.unwrap(), 0);
}

async fn failures_back_off_then_bury_with_the_last_error(t: TestQueue) {
    let q = &t.queue;
    let policy = RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(100),
        factor: 2.0,
        cap: Duration::from_millis(150),
        jitter: false,
    };
    q.enqueue_bulk(Stage::Export, &jobs("camp", 1), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(q.admit(5).await.unwrap(), 1);
    assert_eq!(q.active_count().await.unwrap(), 1);

    let mut expected_delays = vec![100, 150].into_iter();
    for attempt in 1..=3u32 {
        let leased = loop {
            let got = q
                .lease(Stage::Export, "w", 1, LEASE, &policy)
                .await
                .unwrap();
            if let Some(l) = got.into_iter().next() {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(leased.attempts, attempt - 1);
        let before = q.now_ms().await.unwrap();
        let error = format!("boom {attempt}");
        let result = q
            .fail(Stage::Export, "w", &leased.id, &error, &policy)
            .await
            .unwrap();
        if attempt < 3 {
            let FailResult::Retried { at_ms } = result else {
                panic!("attempt {attempt}: {result:?}")
            };
            let delay = expected_delays.next().unwrap();
            // Redis-clock times: at_ms is `now + delay` measured a moment after `before`.
            assert!(
                at_ms >= before + delay && at_ms < before + delay + 50,
                "{at_ms} {before}"
            );
            assert!(
                q.lease(Stage::Export, "w", 1, LEASE, &policy)
                    .await
                    .unwrap()
                    .is_empty()
            );
        } else {
            assert_eq!(result, FailResult::Buried);
            let reason = q
                .dead_reason(Stage::Export, &leased.id)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(reason.reason, "attempts exhausted");
            assert_eq!(reason.last_error, "boom 3");
            assert_eq!(reason.attempts, 3);
        }
    }
    let depth = q.depth(Stage::Export).await.unwrap();
    assert_eq!(
        (depth.dead, depth.due_now, depth.scheduled, depth.leased),
        (1, 0, 0, 0)
    );
    // A dead export job gives its admission slot back.
    assert_eq!(q.active_count().await.unwrap(), 0);
}

async fn bury_requeue_dead_and_remove_tracking_select_one_campaign(t: TestQueue) {
    let q = &t.queue;
    let policy = RetryPolicy::default();
    // "camp" is a prefix of "camp2": selecting one must never touch the other.
    let mut batch = jobs("camp", 3);
    batch.extend(jobs("camp2", 2));
    q.enqueue_bulk(Stage::Download, &batch, Duration::ZERO)
        .await
        .unwrap();
    let leased = q
        .lease(Stage::Download, "w", 10, LEASE, &policy)
        .await
        .unwrap();
    for l in &leased {
        assert!(
            q.bury(Stage::Download, &l.id, "403 forbidden")
                .await
                .unwrap()
        );
    }
    let reason = q
        .dead_reason(Stage::Download, &leased[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (reason.reason.as_str(), reason.last_error.as_str()),
        ("fatal", "403 forbidden")
    );
    assert_eq!(q.depth(Stage::Download).await.unwrap().dead, 5);
    // Listed with their reasons, as many as asked for.
    let dead = q.dead_jobs(Stage::Download, 10).await.unwrap();
    assert_eq!(dead.len(), 5);
    assert!(
        dead.iter()
            .all(|(_, why)| why.last_error == "403 forbidden")
    );
    assert_eq!(q.dead_jobs(Stage::Download, 2).await.unwrap().len(), 2);
    assert!(q.dead_jobs(Stage::Export, 10).await.unwrap().is_empty());

    assert_eq!(q.requeue_dead(Stage::Download, "camp").await.unwrap(), 3);
    let depth = q.depth(Stage::Download).await.unwrap();
    assert_eq!((depth.dead, depth.due_now), (2, 3));
    let again = q
        .lease(Stage::Download, "w", 10, LEASE, &policy)
        .await
        .unwrap();
    assert_eq!(again.len(), 3);
    assert!(
        again
            .iter()
            .all(|l| l.attempts == 0 && l.id.starts_with("camp|"))
    );

    assert_eq!(q.remove_tracking(Stage::Download, "camp").await.unwrap(), 3);
    let depth = q.depth(Stage::Download).await.unwrap();
    assert_eq!((depth.leased, depth.dead), (0, 2));
    assert_eq!(t.stored(Stage::Download, "data").await, 2);
    // The cancelled job's worker finishes its run, but finds nothing left to reschedule.
    let result = q
        .fail(Stage::Download, "w", &again[0].id, "late", &policy)
        .await
        .unwrap();
    assert_eq!(result, FailResult::Stale);
    assert_eq!(
        q.remove_tracking(Stage::Download, "camp2").await.unwrap(),
        2
    );
    assert_eq!(t.stored(Stage::Download, "data").await, 0);
}

async fn an_expired_lease_is_redelivered_to_another_worker(t: TestQueue) {
    let a = t.queue.clone();
    let b = t.other_process().await;
    let policy = RetryPolicy::default();
    let short = Duration::from_millis(400);
    a.enqueue_bulk(Stage::Poll, &jobs("camp", 1), Duration::ZERO)
        .await
        .unwrap();

    // A live worker keeps its lease by renewing it.
    let id = a.lease(Stage::Poll, "a", 1, short, &policy).await.unwrap()[0]
        .id
        .clone();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(a.renew(Stage::Poll, "a", short).await.unwrap(), (1, 0));
        assert!(
            b.lease(Stage::Poll, "b", 1, short, &policy)
                .await
                .unwrap()
                .is_empty()
        );
    }

    // Worker a "dies": no more renewals. After the lease expires b gets the job, and the lost
    // run counts as an attempt.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let redelivered = b.lease(Stage::Poll, "b", 1, LEASE, &policy).await.unwrap();
    assert_eq!(redelivered.len(), 1);
    assert_eq!(redelivered[0].id, id);
    assert_eq!(redelivered[0].attempts, 1);

    // The stale worker can neither reschedule it nor keep renewing it.
    // (The reaper already took the job out of a's lease set: nothing renewed, nothing to drop.)
    assert_eq!(a.renew(Stage::Poll, "a", short).await.unwrap(), (0, 0));
    assert_eq!(
        a.fail(Stage::Poll, "a", &id, "late", &policy)
            .await
            .unwrap(),
        FailResult::Stale
    );
    assert!(!a.release(Stage::Poll, "a", &id).await.unwrap());
    assert_eq!(b.depth(Stage::Poll).await.unwrap().leased, 1);
    assert!(b.complete(Stage::Poll, &id).await.unwrap());
}

async fn release_puts_fetched_jobs_back_without_spending_attempts(t: TestQueue) {
    let q = &t.queue;
    let policy = RetryPolicy::default();
    q.enqueue_bulk(Stage::Clean, &jobs("camp", 3), Duration::ZERO)
        .await
        .unwrap();
    let leased = q.lease(Stage::Clean, "w", 3, LEASE, &policy).await.unwrap();
    assert!(
        !q.release(Stage::Clean, "other", &leased[0].id)
            .await
            .unwrap()
    );
    for l in &leased {
        assert!(q.release(Stage::Clean, "w", &l.id).await.unwrap());
    }
    let depth = q.depth(Stage::Clean).await.unwrap();
    assert_eq!((depth.due_now, depth.leased), (3, 0));
    let again = q
        .lease(Stage::Clean, "w2", 3, LEASE, &policy)
        .await
        .unwrap();
    assert_eq!(again.len(), 3);
    assert!(again.iter().all(|l| l.attempts == 0));
}

async fn admission_never_exceeds_the_cap_under_concurrent_admitters(t: TestQueue) {
    const CAP: u64 = 10;
    assert_eq!(
        t.queue
            .enqueue_bulk(Stage::Export, &jobs("camp", 400), Duration::ZERO)
            .await
            .unwrap(),
        400
    );
    let depth = t.queue.depth(Stage::Export).await.unwrap();
    assert_eq!((depth.backlog, depth.due_now), (400, 0));

    let admitted = Arc::new(AtomicU64::new(0));
    let freed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let q = t.other_process().await;
        let (admitted, freed) = (admitted.clone(), freed.clone());
        tasks.push(tokio::spawn(async move {
            let policy = RetryPolicy::default();
            let worker = format!("admitter-{i}");
            for _ in 0..60 {
                admitted.fetch_add(q.admit(CAP).await.unwrap(), Ordering::SeqCst);
                let active = q.active_count().await.unwrap();
                assert!(active <= CAP, "{active} active slots");
                // Run what was admitted: the export ends, the slot is freed (as poll would).
                for l in q
                    .lease(Stage::Export, &worker, 2, LEASE, &policy)
                    .await
                    .unwrap()
                {
                    assert!(q.complete(Stage::Export, &l.id).await.unwrap());
                    if q.release_slot(&l.id).await.unwrap() {
                        freed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let active = t.queue.active_count().await.unwrap();
    assert!(active <= CAP);
    let depth = t.queue.depth(Stage::Export).await.unwrap();
    assert!(depth.due_now + depth.leased <= CAP);
    assert_eq!(
        admitted.load(Ordering::SeqCst),
        freed.load(Ordering::SeqCst) + active
    );
    assert_eq!(depth.backlog + admitted.load(Ordering::SeqCst), 400);
    assert!(admitted.load(Ordering::SeqCst) > CAP, "slots were recycled");
}

async fn rate_limiter_shares_one_window_per_second(t: TestQueue) {
    let q = &t.queue;
    // Start early in a window so all calls land in the same second.
    while q.now_ms().await.unwrap() % 1000 > 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = t.other_process().await;
    for i in 0..5 {
        let handle = if i % 2 == 0 { q } else { &other };
        assert_eq!(handle.acquire_rate(5).await.unwrap(), RateDecision::Go);
    }
    let RateDecision::WaitMs(wait) = q.acquire_rate(5).await.unwrap() else {
        panic!("the 6th call in one second must wait")
    };
    assert!((1..=1000).contains(&wait), "{wait}");
    tokio::time::sleep(Duration::from_millis(wait + 10)).await;
    assert_eq!(q.acquire_rate(5).await.unwrap(), RateDecision::Go);
}

async fn bulk_enqueue_of_100k_jobs(t: TestQueue) {
    let q = &t.queue;
    let batch = jobs("camp", 100_000);
    let started = Instant::now();
    let added = q
        .enqueue_bulk(Stage::Poll, &batch, Duration::ZERO)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    println!(
        "enqueued {added} jobs in {elapsed:?} ({:.0} jobs/s)",
        added as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(added, 100_000);
    assert_eq!(q.depth(Stage::Poll).await.unwrap().due_now, 100_000);
    // 100k due jobs must not break leasing (apalis-redis 1.0.0 died past ~8,000).
    let leased = q
        .lease(Stage::Poll, "w", 100, LEASE, &RetryPolicy::default())
        .await
        .unwrap();
    assert_eq!(leased.len(), 100);
}

/// What the end-to-end handler saw.
#[derive(Default)]
struct Ledger {
    runs: Mutex<HashMap<String, u32>>,
    done: Mutex<HashMap<String, u32>>,
}

async fn handle(job: OrderJob, ledger: Data<Arc<Ledger>>) -> Result<Outcome, BoxDynError> {
    let id = job.id();
    let run = {
        let mut runs = ledger.runs.lock().unwrap();
        let run = runs.entry(id.clone()).or_default();
        *run += 1;
        *run
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    if job.col.is_multiple_of(5) && run == 1 {
        // Waiting is not failing: EE task still running.
        return Ok(Outcome::Snooze { secs: 1 });
    }
    // Fails once, on the run after its snooze (if any): spends one attempt, then backs off.
    let failing_run = 1 + u32::from(job.col.is_multiple_of(5));
    if job.col.is_multiple_of(7) && run == failing_run {
        return Err("transient EE 503".into());
    }
    *ledger.done.lock().unwrap().entry(id).or_default() += 1;
    Ok(Outcome::Done)
}

async fn apalis_monitor_runs_every_job_to_done_exactly_once(t: TestQueue) {
    const N: u32 = 200;
    let cfg = BackendConfig {
        batch_size: 4,
        lease: Duration::from_secs(6),
        heartbeat: Duration::from_secs(1),
        retry: RetryPolicy {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(200),
            ..RetryPolicy::default()
        },
        admit_max_active: None,
    };
    let b = queue::backend::<OrderJob>(t.queue.clone(), Stage::Poll, cfg);

    // Producer side: apalis's TaskSink, whose tasks carry no id until push_tasks derives it.
    let mut sink = b.clone();
    let all = jobs("camp", N);
    sink.push_bulk(all.clone()).await.unwrap();
    sink.push_bulk(all[..10].to_vec()).await.unwrap();
    assert_eq!(t.queue.depth(Stage::Poll).await.unwrap().due_now, N as u64);

    let ledger = Arc::new(Ledger::default());
    let monitor = Monitor::new().register_n(2, {
        let (b, ledger) = (b.clone(), ledger.clone());
        move |index, restarts| {
            WorkerBuilder::new(queue::worker_name(Stage::Poll, index, restarts))
                .backend(b.clone().polled(Duration::from_millis(100)))
                .concurrency(4)
                .enable_tracing()
                .catch_panic()
                .data(ledger.clone())
                .build(handle)
        }
    });
    let watched = ledger.clone();
    let signal = async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while watched.done.lock().unwrap().len() < N as usize && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    };
    monitor
        .shutdown_timeout(Duration::from_secs(10))
        .run_with_signal(signal)
        .await
        .unwrap();

    let done = ledger.done.lock().unwrap().clone();
    let runs = ledger.runs.lock().unwrap().clone();
    assert_eq!(done.len(), N as usize, "every job completed");
    assert!(done.values().all(|&n| n == 1), "no job completed twice");
    for j in &all {
        let expected = 1 + u32::from(j.col.is_multiple_of(5)) + u32::from(j.col.is_multiple_of(7));
        assert_eq!(runs[&j.job_id()], expected, "{}", j.job_id());
    }
    // Nothing left in the queue: every Done was acknowledged before the monitor returned.
    assert_eq!(
        t.queue.depth(Stage::Poll).await.unwrap(),
        queue::Depth::default()
    );
    assert_eq!(t.stored(Stage::Poll, "data").await, 0);
    assert_eq!(t.stored(Stage::Poll, "attempts").await, 0);
}

async fn slow(job: OrderJob, ledger: Data<Arc<Ledger>>) -> Result<Outcome, BoxDynError> {
    *ledger.runs.lock().unwrap().entry(job.id()).or_default() += 1;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    *ledger.done.lock().unwrap().entry(job.id()).or_default() += 1;
    Ok(Outcome::Done)
}

async fn apalis_heartbeats_keep_the_lease_of_a_job_longer_than_the_lease(t: TestQueue) {
    let cfg = BackendConfig {
        batch_size: 1,
        lease: Duration::from_millis(900),
        heartbeat: Duration::from_millis(250),
        ..BackendConfig::default()
    };
    let b = queue::backend::<OrderJob>(t.queue.clone(), Stage::Download, cfg);
    t.queue
        .enqueue_bulk(Stage::Download, &jobs("camp", 1), Duration::ZERO)
        .await
        .unwrap();

    let ledger = Arc::new(Ledger::default());
    let monitor = Monitor::new().register({
        let (b, ledger) = (b.clone(), ledger.clone());
        move |restarts| {
            WorkerBuilder::new(queue::worker_name(Stage::Download, 0, restarts))
                .backend(b.clone().polled(Duration::from_millis(100)))
                .concurrency(1)
                .data(ledger.clone())
                .build(slow)
        }
    });
    // Meanwhile, watch the leases: one that expires under a live worker was not renewed.
    let watched = ledger.clone();
    let probe = t.other_process().await;
    let signal = async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while watched.done.lock().unwrap().is_empty() && Instant::now() < deadline {
            let expired = probe.expired_leases(Stage::Download).await.unwrap();
            assert_eq!(expired, 0, "a lease expired under a live worker");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    };
    monitor
        .shutdown_timeout(Duration::from_secs(10))
        .run_with_signal(signal)
        .await
        .unwrap();

    assert_eq!(ledger.done.lock().unwrap().len(), 1);
    assert!(ledger.runs.lock().unwrap().values().all(|&n| n == 1));
    assert_eq!(
        t.queue.depth(Stage::Download).await.unwrap(),
        queue::Depth::default()
    );
}

/// Runs one apalis worker of `stage` on `b` (idle looks every `every`, heartbeats every 200 s)
/// while `drive` runs, and returns what the handler saw.
async fn with_idle_worker<F>(
    b: queue::CedarBackend<OrderJob>,
    stage: Stage,
    every: Duration,
    drive: impl FnOnce(Arc<Ledger>) -> F,
) -> Arc<Ledger>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let ledger = Arc::new(Ledger::default());
    let monitor = Monitor::new().register({
        let (b, ledger) = (b.clone(), ledger.clone());
        move |restarts| {
            WorkerBuilder::new(queue::worker_name(stage, 0, restarts))
                .backend(b.clone().polled(every))
                .concurrency(1)
                .data(ledger.clone())
                .build(handle)
        }
    });
    let drive = drive(ledger.clone());
    monitor
        .shutdown_timeout(Duration::from_secs(10))
        .run_with_signal(async move {
            drive.await;
            Ok(())
        })
        .await
        .unwrap();
    ledger
}

/// A backend whose heartbeats (which also wake an idle worker) are 200 s apart: a job these
/// tests see done within their deadlines was fetched by something else.
fn slow_heartbeats(t: &TestQueue, stage: Stage) -> queue::CedarBackend<OrderJob> {
    let cfg = BackendConfig {
        lease: Duration::from_secs(600),
        heartbeat: Duration::from_secs(200),
        ..BackendConfig::default()
    };
    queue::backend::<OrderJob>(t.queue.clone(), stage, cfg)
}

/// Waits (at most 30 s, far below the 200 s heartbeat) until the handler has finished `n` jobs.
async fn until_done(ledger: &Ledger, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.done.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "job {n} not fetched within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_idle_worker_looks_again_every_interval_not_only_at_heartbeats(t: TestQueue) {
    // Jobs come from another process, so only the worker's own looks can find them; each comes
    // after the worker has been idle for a while (several empty looks). apalis's own interval
    // stopped looking after its first tick, until the next heartbeat.
    let producer = t.other_process().await;
    let b = slow_heartbeats(&t, Stage::Download);
    let ledger = with_idle_worker(
        b,
        Stage::Download,
        Duration::from_millis(100),
        |ledger| async move {
            for col in 1..=3 {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                producer
                    .enqueue_bulk(Stage::Download, &[job("camp", 0, col)], Duration::ZERO)
                    .await
                    .unwrap();
                until_done(&ledger, col as usize).await;
            }
        },
    )
    .await;
    assert_eq!(ledger.done.lock().unwrap().len(), 3);
}

async fn a_job_made_due_in_this_process_is_fetched_without_waiting_for_the_interval(t: TestQueue) {
    // Idle looks an hour apart: only the queue handle's nudge can bring these jobs in.
    let q = t.queue.clone();
    let elsewhere = t.other_process().await;
    let b = slow_heartbeats(&t, Stage::Clean);
    let ledger = with_idle_worker(b, Stage::Clean, Duration::from_secs(3600), |ledger| {
        async move {
            for col in 1..=2 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                q.enqueue_bulk(Stage::Clean, &[job("camp", 0, col)], Duration::ZERO)
                    .await
                    .unwrap();
                until_done(&ledger, col as usize).await;
            }
            // Enqueued elsewhere for an hour later, woken here: due now, and fetched now.
            let later = job("camp", 0, 3);
            elsewhere
                .enqueue_bulk(
                    Stage::Clean,
                    std::slice::from_ref(&later),
                    Duration::from_secs(3600),
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(q.wake(Stage::Clean, &[later.id()]).await.unwrap(), 1);
            until_done(&ledger, 3).await;
        }
    })
    .await;
    assert_eq!(ledger.done.lock().unwrap().len(), 3);
}

async fn wake_makes_delayed_jobs_due_now_and_a_running_one_snooze_for_no_time(t: TestQueue) {
    let (q, sweeper) = (&t.queue, t.other_process().await);
    let policy = RetryPolicy::default();
    let hour = Duration::from_secs(3600);
    let [a, b, c, d] = [1, 2, 3, 4].map(|col| job("camp", 0, col));
    let ids = |js: &[&OrderJob]| js.iter().map(|j| j.id()).collect::<Vec<_>>();
    let depth = || async { q.depth(Stage::Poll).await.unwrap() };
    q.enqueue_bulk(Stage::Poll, &[a.clone(), b.clone()], hour)
        .await
        .unwrap();
    q.enqueue_bulk(Stage::Poll, std::slice::from_ref(&c), Duration::ZERO)
        .await
        .unwrap();
    let running = q.lease(Stage::Poll, "w", 10, LEASE, &policy).await.unwrap();
    assert_eq!(
        ids(&[&c]),
        running.iter().map(|l| l.id.clone()).collect::<Vec<_>>()
    );

    // a is due in an hour: now. c runs: marked. d does not exist: nothing.
    assert_eq!(
        sweeper
            .wake(Stage::Poll, &ids(&[&a, &c, &d]))
            .await
            .unwrap(),
        1
    );
    let now = depth().await;
    assert_eq!((now.due_now, now.scheduled, now.leased), (1, 1, 1));
    assert_eq!(
        sweeper.wake(Stage::Poll, &ids(&[&a, &c])).await.unwrap(),
        0,
        "waking twice is waking once"
    );
    assert_eq!(q.attempts(Stage::Poll, &a.id()).await.unwrap(), 0);

    // c looked before the news: its snooze of an hour is a snooze of no time, once.
    assert!(q.snooze(Stage::Poll, "w", &c.id(), hour).await.unwrap());
    let again = q.lease(Stage::Poll, "w", 10, LEASE, &policy).await.unwrap();
    let mut again: Vec<_> = again.into_iter().map(|l| l.id).collect();
    again.sort();
    assert_eq!(again, ids(&[&a, &c]));
    assert!(q.snooze(Stage::Poll, "w", &c.id(), hour).await.unwrap());
    assert_eq!(
        depth().await.scheduled,
        2,
        "the mark was spent: b and c wait"
    );

    // A mark ends with its job: a woken while it runs, then done, comes back unmarked.
    assert_eq!(sweeper.wake(Stage::Poll, &ids(&[&a])).await.unwrap(), 0);
    assert!(q.complete(Stage::Poll, &a.id()).await.unwrap());
    q.enqueue_bulk(Stage::Poll, std::slice::from_ref(&a), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        q.lease(Stage::Poll, "w", 10, LEASE, &policy)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(q.snooze(Stage::Poll, "w", &a.id(), hour).await.unwrap());
    assert_eq!(depth().await.scheduled, 3);

    // Dead jobs and the export backlog are not waiting for a time: left alone.
    assert!(q.bury(Stage::Poll, &b.id(), "fatal").await.unwrap());
    q.enqueue_bulk(Stage::Export, std::slice::from_ref(&d), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(sweeper.wake(Stage::Poll, &ids(&[&b])).await.unwrap(), 0);
    assert_eq!(sweeper.wake(Stage::Export, &ids(&[&d])).await.unwrap(), 0);
    assert_eq!(depth().await.dead, 1);
    assert_eq!(q.depth(Stage::Export).await.unwrap().backlog, 1);

    // Many ids at once go in bounded steps.
    let many = jobs("many", 2_500);
    q.enqueue_bulk(Stage::Download, &many, hour).await.unwrap();
    let all: Vec<String> = many.iter().map(|j| j.id()).collect();
    assert_eq!(sweeper.wake(Stage::Download, &all).await.unwrap(), 2_500);
    assert_eq!(q.depth(Stage::Download).await.unwrap().due_now, 2_500);
}

/// A file written by a cedar of schema version 1 (no `jobs.woken`, no `ops_waiting.job`, no
/// export runs) opens,
/// is upgraded in place, and keeps its jobs and awaited operations, which wake as they should.
#[tokio::test]
async fn an_sqlite_file_of_schema_1_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cedar.db");
    let url = format!("sqlite://{}", path.display());
    let hour = Duration::from_secs(3600);
    let old = job("camp", 0, 1);
    queue::Queue::open(&url, "ns")
        .await
        .unwrap()
        .enqueue_bulk(Stage::Poll, std::slice::from_ref(&old), hour)
        .await
        .unwrap();
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(
            "ALTER TABLE jobs DROP COLUMN woken;
             ALTER TABLE ops_waiting DROP COLUMN job;
             INSERT INTO ops_waiting (ns, name) VALUES ('ns', 'ops/old');
             DROP TABLE runs;
             DROP TABLE run_plans;
             PRAGMA user_version = 1;",
        )
        .unwrap();
    }
    let conn = queue::Connection::open(&url).await.unwrap();
    let (q, snapshot) = (
        queue::Queue::new(&conn, "ns"),
        queue::Snapshot::new(&conn, "ns"),
    );
    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 3);
    assert_eq!(q.wake(Stage::Poll, &[old.id()]).await.unwrap(), 1);
    assert_eq!(q.depth(Stage::Poll).await.unwrap().due_now, 1);
    // Awaited before the upgrade, by a cedar that did not record the job: still awaited, and
    // the next poll run names its job.
    let op = vec!["ops/old".to_owned()];
    assert!(snapshot.waiting().await.unwrap().contains("ops/old"));
    assert!(snapshot.waiters(&op).await.unwrap().is_empty());
    snapshot.wait_for("ops/old", &old.id()).await.unwrap();
    assert_eq!(snapshot.waiters(&op).await.unwrap(), [old.id()]);
}

/// The admission order of the priority test, by campaign: jobs queued one by one and runs alike
/// (two backfill orders went first, then an ingest of a higher priority arrived).
const TAKING_TURNS: [&str; 11] = [
    "ingest", "ingest", "backfill", "other", "backfill", "other", "backfill", "other", "backfill",
    "backfill", "backfill",
];

/// Ends the export jobs `first` (their tasks done), then admits the rest one at a time.
async fn finish_then_admit_the_rest(q: &queue::Queue, first: Vec<String>) -> Vec<String> {
    for id in first {
        q.complete(Stage::Export, &id).await.unwrap();
        q.release_slot(&id).await.unwrap();
    }
    admit_one_by_one(q, 100).await
}

/// The campaign of each job id (its first field).
fn campaigns_of(ids: &[String]) -> Vec<&str> {
    ids.iter()
        .map(|id| id.split('|').next().unwrap_or_default())
        .collect()
}

/// Admits and leases export jobs one at a time, up to `n`: their ids in admission order.
async fn admit_one_by_one(q: &queue::Queue, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let active = q.active_count().await.unwrap();
        if q.admit(active + 1).await.unwrap() == 0 {
            break;
        }
        let got = q
            .lease(Stage::Export, "w", 1, LEASE, &RetryPolicy::default())
            .await
            .unwrap();
        ids.push(got[0].id.clone());
    }
    ids
}

async fn push_back_returns_the_slot_and_the_job_to_the_front_of_the_backlog(t: TestQueue) {
    let q = &t.queue;
    q.enqueue_bulk(Stage::Export, &jobs("camp", 5), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(q.admit(2).await.unwrap(), 2);
    let leased = q
        .lease(Stage::Export, "w", 2, LEASE, &RetryPolicy::default())
        .await
        .unwrap();
    let second = leased[1].id.clone();
    // Only the worker holding the lease can push it back.
    assert!(!q.push_back("other", &second).await.unwrap());
    assert!(q.push_back("w", &second).await.unwrap());
    assert!(!q.push_back("w", &second).await.unwrap(), "twice is once");
    assert_eq!(q.active_count().await.unwrap(), 1, "its slot is free");
    let depth = q.depth(Stage::Export).await.unwrap();
    assert_eq!((depth.backlog, depth.leased), (4, 1));
    // It is the next one admitted, ahead of the three never admitted, with no attempt spent.
    assert_eq!(q.admit(2).await.unwrap(), 1);
    let again = q
        .lease(Stage::Export, "w2", 5, LEASE, &RetryPolicy::default())
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.as_str(), again[0].attempts),
        (second.as_str(), 0)
    );
}

async fn admission_stays_under_the_learnt_room_and_stops_while_paused(t: TestQueue) {
    let q = &t.queue;
    q.enqueue_bulk(Stage::Export, &jobs("camp", 20), Duration::ZERO)
        .await
        .unwrap();
    q.set_figure(Figure::Room, Some(3)).await.unwrap();
    assert_eq!(q.admit(10).await.unwrap(), 3, "the room is below the cap");
    q.set_figure(Figure::Room, Some(50)).await.unwrap();
    assert_eq!(q.admit(10).await.unwrap(), 7, "the cap is below the room");
    assert_eq!(q.add_figure(Figure::Room, 1).await.unwrap(), 51);
    q.set_figure(Figure::Paused, Some(1)).await.unwrap();
    assert_eq!(q.admit(20).await.unwrap(), 0, "paused");
    q.set_figure(Figure::Paused, None).await.unwrap();
    assert_eq!(q.figure(Figure::Paused).await.unwrap(), None);
    assert_eq!(q.admit(20).await.unwrap(), 10);
}

async fn the_backlog_goes_by_priority_then_submissions_take_turns(t: TestQueue) {
    let q = &t.queue;
    let place = |priority, tracking| BacklogPlace { priority, tracking };
    // A big backfill first, of the default priority; a few of its orders already admitted.
    q.enqueue_placed(
        Stage::Export,
        &jobs("backfill", 8),
        Duration::ZERO,
        place(100, "backfill"),
    )
    .await
    .unwrap();
    let first = admit_one_by_one(q, 2).await;
    assert!(first.iter().all(|id| id.contains("backfill")), "{first:?}");
    // Another campaign of the same priority takes turns with the rest of the backfill…
    q.enqueue_placed(
        Stage::Export,
        &jobs("other", 3),
        Duration::ZERO,
        place(100, "other"),
    )
    .await
    .unwrap();
    // …and an ingest of a higher priority goes before both.
    q.enqueue_placed(
        Stage::Export,
        &jobs("ingest", 2),
        Duration::ZERO,
        place(200, "ingest"),
    )
    .await
    .unwrap();
    let order = finish_then_admit_the_rest(q, first).await;
    let campaigns = campaigns_of(&order);
    assert_eq!(campaigns, TAKING_TURNS, "{order:?}");
}

fn day(y: i32, m: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, 1).unwrap()
}

/// A run over `collections` × `tiles` tiles × `periods` months.
fn export_run(tracking: &str, collections: usize, tiles: u32, periods: u32) -> queue::ExportRun {
    queue::ExportRun {
        tracking: tracking.into(),
        collections: (0..collections).map(|c| format!("C/{c}\"q")).collect(),
        tiles: (0..tiles).map(|t| (t / 3, 10 + t)).collect(),
        periods: (0..periods)
            .map(|p| {
                (
                    day(2000 + (p / 12) as i32, 1 + p % 12),
                    day(2000 + ((p + 1) / 12) as i32, 1 + (p + 1) % 12),
                )
            })
            .collect(),
    }
}

async fn a_run_hands_out_the_jobs_enqueueing_each_would_have(t: TestQueue) {
    let q = &t.queue;
    let run = export_run("camp", 2, 3, 4);
    assert_eq!(
        q.enqueue_run(&run, BacklogPlace::default()).await.unwrap(),
        24
    );
    assert_eq!(
        q.enqueue_run(&run, BacklogPlace::default()).await.unwrap(),
        0,
        "enqueueing a waiting run again is a no-op"
    );
    assert_eq!(q.depth(Stage::Export).await.unwrap().backlog, 24);
    assert_eq!(q.run_ranges("camp").await.unwrap(), [(0, 24)]);
    // An order queued on its own already (e.g. by `cedar retry`) is not handed out twice.
    let single = run.job(5).unwrap();
    q.enqueue_bulk(Stage::Export, std::slice::from_ref(&single), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(q.depth(Stage::Export).await.unwrap().backlog, 25);

    // The single job takes turns with the run (it went in at the band's front) and comes first
    // on the tie; then the run hands out 0–4, skips 5 (queued already) and hands out 6–9.
    assert_eq!(q.admit(10).await.unwrap(), 10);
    assert_eq!(q.run_ranges("camp").await.unwrap(), [(11, 24)]);
    assert_eq!(q.admit(100).await.unwrap(), 14, "24 distinct jobs in all");
    assert!(q.run_ranges("camp").await.unwrap().is_empty());
    let leased = q
        .lease(Stage::Export, "w", 100, LEASE, &RetryPolicy::default())
        .await
        .unwrap();
    let mut got: Vec<(String, OrderJob)> = leased
        .iter()
        .map(|l| (l.id.clone(), serde_json::from_slice(&l.payload).unwrap()))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want: Vec<(String, OrderJob)> = (0..24)
        .map(|i| run.job(i).unwrap())
        .map(|j| (j.id(), j))
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want, "ids and payloads as enqueue_bulk writes them");
    let depth = q.depth(Stage::Export).await.unwrap();
    assert_eq!((depth.backlog, depth.leased), (0, 24));
    assert_eq!(q.active_count().await.unwrap(), 24);
}

async fn runs_take_the_same_turns_as_the_jobs_they_hold(t: TestQueue) {
    let q = &t.queue;
    let place = |priority, tracking| BacklogPlace { priority, tracking };
    let backfill = export_run("backfill", 1, 2, 4);
    let other = export_run("other", 1, 3, 1);
    let ingest = export_run("ingest", 2, 1, 1);
    q.enqueue_run(&backfill, place(100, "backfill"))
        .await
        .unwrap();
    let first = admit_one_by_one(q, 2).await;
    q.enqueue_run(&other, place(100, "other")).await.unwrap();
    q.enqueue_run(&ingest, place(200, "ingest")).await.unwrap();
    let order = finish_then_admit_the_rest(q, first).await;
    let campaigns = campaigns_of(&order);
    assert_eq!(campaigns, TAKING_TURNS, "{order:?}");
    // Within a run, the submission's own order: tile by tile, period by period.
    let backfill_ids: Vec<_> = order
        .iter()
        .filter(|id| id.starts_with("backfill|"))
        .collect();
    let run = &backfill;
    let want: Vec<String> = (2..8).map(|i| run.job(i).unwrap().id()).collect();
    assert_eq!(backfill_ids, want.iter().collect::<Vec<_>>());
}

async fn cancel_removes_a_run_and_push_back_goes_ahead_of_it(t: TestQueue) {
    let q = &t.queue;
    let parts = export_run("camp", 1, 4, 5);
    let keep = export_run("camp2", 1, 1, 2);
    q.enqueue_run(&parts, BacklogPlace::default())
        .await
        .unwrap();
    q.enqueue_run(&keep, BacklogPlace::default()).await.unwrap();
    assert_eq!(q.admit(3).await.unwrap(), 3);
    let leased = q
        .lease(Stage::Export, "w", 3, LEASE, &RetryPolicy::default())
        .await
        .unwrap();
    // EE's queue is full: the job goes back ahead of the runs, and is the next one admitted.
    assert!(q.push_back("w", &leased[2].id).await.unwrap());
    assert_eq!(q.admit(3).await.unwrap(), 1);
    let again = q
        .lease(Stage::Export, "w", 3, LEASE, &RetryPolicy::default())
        .await
        .unwrap();
    assert_eq!(again[0].id, leased[2].id);
    // Cancel: the 3 jobs written and the 17 orders the run still holds; the other run stays.
    let before = q.depth(Stage::Export).await.unwrap().backlog;
    assert_eq!(
        q.remove_tracking(Stage::Export, "camp").await.unwrap(),
        3 + 17
    );
    assert!(q.run_ranges("camp").await.unwrap().is_empty());
    assert_eq!(q.depth(Stage::Export).await.unwrap().backlog, before - 17);
    assert_eq!(q.run_ranges("camp2").await.unwrap(), [(0, 2)]);
    assert_eq!(q.admit(10).await.unwrap(), 2);
    let last = q
        .lease(Stage::Export, "w", 10, LEASE, &RetryPolicy::default())
        .await
        .unwrap();
    assert!(
        last.iter().all(|l| l.id.starts_with("camp2|")),
        "{:?}",
        last.len()
    );
}

async fn a_run_whose_plan_is_lost_is_dropped_and_admission_goes_on(t: TestQueue) {
    let q = &t.queue;
    let lost = export_run("lost", 1, 2, 3);
    let kept = export_run("kept", 1, 1, 2);
    q.enqueue_run(&lost, BacklogPlace::default()).await.unwrap();
    q.enqueue_run(&kept, BacklogPlace::default()).await.unwrap();
    assert_eq!(q.admit(1).await.unwrap(), 1);
    t.lose_plan("lost").await;
    // The run without a plan is dropped, not an error that stops admission for everyone: the
    // other run's orders are admitted, and nothing is handed out for the lost one.
    assert_eq!(q.admit(10).await.unwrap(), 2);
    let leased = q
        .lease(Stage::Export, "w", 10, LEASE, &RetryPolicy::default())
        .await
        .unwrap();
    let ids: Vec<&str> = leased.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(
        ids.iter().filter(|id| id.starts_with("lost|")).count(),
        1,
        "{ids:?}"
    );
    assert!(q.run_ranges("lost").await.unwrap().is_empty());
    assert_eq!(q.depth(Stage::Export).await.unwrap().backlog, 0);
}
