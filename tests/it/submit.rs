//! Submitting happens whole or leaves nothing: a submit that fails after it recorded the
//! submission takes everything back, and a submission that would export to the objects of one
//! still running is refused before anything is written; and whatever state a campaign reaches,
//! `cancel` and `retry` can leave it — on Redis and on the SQLite queue.

use cedar::campaign::{self, Subset};
use cedar::jobs::Context;
use cedar::queue::Stage;
use cedar::submit::{self, Request, SubmitError};
use chrono::{Duration, NaiveDate, Utc};

use crate::support::{ContextBench, context_bench, redis_url};

/// A context exporting into the emulator's bucket folder, or into `store_url` when given.
async fn setup(queue_url: String, store_url: Option<String>) -> ContextBench {
    context_bench("submit", queue_url, |c| {
        if let Some(url) = store_url {
            c.store.url = url;
        }
    })
    .await
}

fn request() -> Request {
    Request {
        name: None,
        workload_tag: None,
        collections: vec!["LANDSAT/LC08/C02/T1_L2".into()],
        tiles: vec![(10, 14), (10, 15)],
        start: NaiveDate::from_ymd_opt(2021, 7, 1).unwrap(),
        end: NaiveDate::from_ymd_opt(2021, 9, 1).unwrap(),
        freq: None,
        save_empty_metadata: true,
        error_if_empty: false,
        priority: None,
    }
}

/// Export jobs of every kind (backlog, due, scheduled, leased, dead).
async fn export_jobs(ctx: &Context) -> u64 {
    let d = ctx.queue.depth(Stage::Export).await.unwrap();
    d.backlog + d.due_now + d.scheduled + d.leased + d.dead
}

async fn a_failed_document_write_leaves_no_campaign_and_no_job(queue_url: String) {
    // A bucket folder below a regular file: every write fails with "Not a directory".
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a folder").unwrap();
    let store = url::Url::from_directory_path(file.join("bucket")).unwrap();
    let b = setup(queue_url, Some(store.to_string())).await;
    let plan = submit::plan(&b.ctx.settings, &request(), Utc::now()).unwrap();
    let err = submit::enqueue(&b.ctx, &plan).await.unwrap_err();
    assert!(matches!(err, SubmitError::Publish(_)), "{err}");
    assert_eq!(b.ctx.tracker.list().await.unwrap(), Vec::<String>::new());
    assert_eq!(export_jobs(&b.ctx).await, 0);
    // Nothing stands in the way of submitting it again once the store works.
    assert!(
        b.ctx
            .tracker
            .submission(&plan.submission.name)
            .await
            .is_err()
    );
}

async fn the_same_exports_are_refused_while_the_first_runs(queue_url: String) {
    let b = setup(queue_url, None).await;
    let now = Utc::now();
    let first = submit::plan(&b.ctx.settings, &request(), now).unwrap();
    assert_eq!(submit::enqueue(&b.ctx, &first).await.unwrap(), 2);
    let name = first.submission.name.clone();

    // A later submission of one of the same items (its tracking name differs by the time).
    let mut one = request();
    one.tiles = vec![(10, 15)];
    let second = submit::plan(&b.ctx.settings, &one, now + Duration::seconds(5)).unwrap();
    let err = submit::enqueue(&b.ctx, &second)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("still running") && err.contains(&name),
        "{err}"
    );
    assert_eq!(b.ctx.tracker.list().await.unwrap(), vec![name.clone()]);
    assert_eq!(export_jobs(&b.ctx).await, 2);

    // Other items are no obstacle.
    let mut other = request();
    other.tiles = vec![(11, 14)];
    let third = submit::plan(&b.ctx.settings, &other, now + Duration::seconds(6)).unwrap();
    assert_eq!(submit::enqueue(&b.ctx, &third).await.unwrap(), 1);

    // Once the first has ended (here: cancelled), the same items may be submitted again.
    assert_eq!(
        campaign::cancel(&b.ctx, &name, &Subset::everything())
            .await
            .unwrap()
            .orders,
        2
    );
    assert_eq!(submit::enqueue(&b.ctx, &second).await.unwrap(), 1);
    let mut names = b.ctx.tracker.list().await.unwrap();
    names.sort();
    let mut want = vec![
        name,
        second.submission.name.clone(),
        third.submission.name.clone(),
    ];
    want.sort();
    assert_eq!(names, want);
}

#[tokio::test]
async fn a_failed_document_write_leaves_nothing_on_redis() {
    a_failed_document_write_leaves_no_campaign_and_no_job(redis_url()).await;
}

#[tokio::test]
async fn a_failed_document_write_leaves_nothing_on_sqlite() {
    a_failed_document_write_leaves_no_campaign_and_no_job(String::new()).await;
}

#[tokio::test]
async fn the_same_exports_are_refused_while_running_on_redis() {
    the_same_exports_are_refused_while_the_first_runs(redis_url()).await;
}

#[tokio::test]
async fn the_same_exports_are_refused_while_running_on_sqlite() {
    the_same_exports_are_refused_while_the_first_runs(String::new()).await;
}

/// Every state a campaign can reach can be left: `cancel` of a submission with a task already
/// succeeded (objects in the bucket, no download yet) deletes exactly that order's objects and
/// keeps the clean job of a downloaded order; `retry` re-exports what was cancelled, and
/// `retry --resume` gives a SUCCEEDED order whose download job was lost its job again.
async fn cancel_and_retry_leave_every_state(queue_url: String) {
    use cedar::order::{Piece, piece_object};
    use cedar::queue::tracking::{OrderState, OrderStatus};

    let b = setup(queue_url, None).await;
    let ctx = &b.ctx;
    let mut req = request();
    req.tiles = vec![(10, 14), (10, 15), (11, 14)];
    let plan = submit::plan(&ctx.settings, &req, Utc::now()).unwrap();
    submit::enqueue(ctx, &plan).await.unwrap();
    let name = plan.submission.name.clone();
    let orders: Vec<_> = plan.submission.orders().collect();
    let (succeeded, downloaded) = (&orders[0], &orders[1]);

    // The first order's task succeeded: its pieces and metadata are in the bucket. Beside them,
    // an object whose name only starts like the order's must survive.
    let sub = ctx.submission(&name).await.unwrap();
    let base = sub.export_base(succeeded, 1).unwrap();
    let written = [
        piece_object(&base, Piece::At { y: 0, x: 0 }),
        piece_object(&base, Piece::At { y: 0, x: 1024 }),
        format!("{base}.json"),
    ];
    let stranger = format!("{base}_other.tif");
    for o in written.iter().chain([&stranger]) {
        ctx.bucket.put(o, "x".into()).await.unwrap();
    }
    let set = |state: OrderState| OrderStatus {
        operation: Some("projects/p/operations/OP".into()),
        ..OrderStatus::new(state)
    };
    ctx.tracker
        .set(&name, succeeded, &set(OrderState::Succeeded), false)
        .await
        .unwrap();
    ctx.tracker
        .set(&name, downloaded, &set(OrderState::Downloaded), false)
        .await
        .unwrap();

    let done = campaign::cancel(ctx, &name, &Subset::everything())
        .await
        .unwrap();
    assert_eq!(done.orders, 2, "the succeeded and the queued order");
    assert_eq!(done.objects, written.len());
    let left: Vec<String> = ctx
        .bucket
        .list(&base)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(left, vec![stranger]);
    assert_eq!(ctx.queue.depth(Stage::Clean).await.unwrap().due_now, 1);
    let counts = ctx.tracker.counts(&name).await.unwrap();
    assert_eq!(counts.get(&OrderState::Cancelled), Some(&2), "{counts:?}");
    assert_eq!(counts.get(&OrderState::Downloaded), Some(&1), "{counts:?}");

    // Retry re-exports both cancelled orders.
    assert_eq!(
        campaign::retry(ctx, &name, true, &Subset::everything())
            .await
            .unwrap(),
        2 + 1
    );
    assert_eq!(export_jobs(ctx).await, 2);

    // A SUCCEEDED order whose download job is gone gets it back from retry.
    ctx.tracker
        .set(&name, succeeded, &set(OrderState::Succeeded), true)
        .await
        .unwrap();
    ctx.queue
        .remove_tracking(Stage::Export, &name)
        .await
        .unwrap();
    campaign::retry(ctx, &name, false, &Subset::everything())
        .await
        .unwrap();
    assert_eq!(ctx.queue.depth(Stage::Download).await.unwrap().due_now, 0);
    campaign::retry(ctx, &name, true, &Subset::everything())
        .await
        .unwrap();
    assert_eq!(ctx.queue.depth(Stage::Download).await.unwrap().due_now, 1);
}

#[tokio::test]
async fn cancel_and_retry_leave_every_state_on_redis() {
    cancel_and_retry_leave_every_state(redis_url()).await;
}

#[tokio::test]
async fn cancel_and_retry_leave_every_state_on_sqlite() {
    cancel_and_retry_leave_every_state(String::new()).await;
}

/// `cancel` and `retry` of part of a campaign act on exactly the orders the filters choose, on
/// queued orders a run still holds and on orders queued alone; a filter that chooses nothing is
/// refused and changes nothing.
async fn a_subset_is_cancelled_and_retried_alone(queue_url: String) {
    use cedar::campaign::SubsetError;
    use cedar::order::{Order, Piece, piece_object};
    use cedar::queue::tracking::{OrderState, OrderStatus};

    let b = setup(queue_url, None).await;
    let ctx = &b.ctx;
    let mut req = request();
    // 3 tiles × July, August, September.
    req.tiles = vec![(10, 14), (10, 15), (11, 14)];
    req.end = NaiveDate::from_ymd_opt(2021, 9, 30).unwrap();
    req.freq = Some("MS".parse().unwrap());
    let plan = submit::plan(&ctx.settings, &req, Utc::now()).unwrap();
    submit::enqueue(ctx, &plan).await.unwrap();
    let name = plan.submission.name.clone();
    let orders: Vec<Order> = plan.submission.orders().collect();
    assert_eq!(orders.len(), 9);
    let at = |tile: (u32, u32), month: u32| {
        orders
            .iter()
            .find(|o| {
                (o.row, o.col) == tile
                    && o.period
                        .start
                        .to_string()
                        .ends_with(&format!("-{month:02}-01"))
            })
            .unwrap()
            .clone()
    };
    let states = || async {
        let got = ctx.tracker.statuses(&name, &orders).await.unwrap();
        got.into_iter()
            .map(|s| s.map_or(OrderState::Queued, |s| s.state))
            .collect::<Vec<_>>()
    };
    let state_of = |all: &[OrderState], o: &Order| all[orders.iter().position(|x| x == o).unwrap()];

    // July of 10,14 runs in EE; July of 10,15 succeeded, its objects in the bucket.
    let set = |state: OrderState| OrderStatus {
        operation: Some("projects/p/operations/OP".into()),
        ..OrderStatus::new(state)
    };
    let running = at((10, 14), 7);
    let succeeded = at((10, 15), 7);
    ctx.tracker
        .set(&name, &running, &set(OrderState::Running), false)
        .await
        .unwrap();
    ctx.tracker
        .set(&name, &succeeded, &set(OrderState::Succeeded), false)
        .await
        .unwrap();
    let sub = ctx.submission(&name).await.unwrap();
    let base = sub.export_base(&succeeded, 1).unwrap();
    let written = [piece_object(&base, Piece::Whole), format!("{base}.json")];
    for o in &written {
        ctx.bucket.put(o, "x".into()).await.unwrap();
    }
    let other_base = sub.export_base(&running, 1).unwrap();
    ctx.bucket
        .put(&format!("{other_base}.json"), "x".into())
        .await
        .unwrap();

    // Filters that choose nothing: refused, nothing changed.
    let before = states().await;
    let jobs_before = export_jobs(ctx).await;
    for bad in [
        Subset {
            collections: vec!["NOPE".into()],
            ..Subset::default()
        },
        Subset {
            tiles: vec![(1, 1)],
            ..Subset::default()
        },
        Subset {
            rows: Some((20, 30)),
            ..Subset::default()
        },
        Subset {
            from: Some(NaiveDate::from_ymd_opt(2022, 1, 1).unwrap()),
            ..Subset::default()
        },
        Subset {
            states: vec![OrderState::Failed],
            ..Subset::default()
        },
    ] {
        let e = campaign::cancel(ctx, &name, &bad).await.unwrap_err();
        assert!(e.downcast_ref::<SubsetError>().is_some(), "{e:#}");
        assert!(e.to_string().starts_with("--"), "{e}");
    }
    let e = campaign::retry(
        ctx,
        &name,
        false,
        &Subset {
            states: vec![OrderState::Running],
            ..Subset::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("retry acts only on orders in"),
        "{e}"
    );
    assert_eq!(states().await, before);
    assert_eq!(export_jobs(ctx).await, jobs_before);

    // Cancel tile 10,15: its succeeded order loses its objects, its queued ones are cancelled;
    // no other order changes, nor the other order's objects.
    let tile = Subset {
        tiles: vec![(10, 15)],
        ..Subset::default()
    };
    let done = campaign::cancel(ctx, &name, &tile).await.unwrap();
    assert_eq!(done.orders, 3);
    assert_eq!(done.objects, written.len());
    assert!(ctx.bucket.list(&base).await.unwrap().is_empty());
    assert_eq!(ctx.bucket.list(&other_base).await.unwrap().len(), 1);
    let now = states().await;
    for (o, s) in orders.iter().zip(&now) {
        let want = if (o.row, o.col) == (10, 15) {
            OrderState::Cancelled
        } else {
            state_of(&before, o)
        };
        assert_eq!(*s, want, "{o:?}");
    }

    // Cancel the QUEUED orders of August: the running order (July) and September stay.
    let august = Subset {
        from: Some(NaiveDate::from_ymd_opt(2021, 8, 10).unwrap()),
        to: Some(NaiveDate::from_ymd_opt(2021, 8, 20).unwrap()),
        states: vec![OrderState::Queued],
        ..Subset::default()
    };
    assert_eq!(
        campaign::cancel(ctx, &name, &august).await.unwrap().orders,
        2
    );
    let now = states().await;
    assert_eq!(state_of(&now, &at((10, 14), 8)), OrderState::Cancelled);
    assert_eq!(state_of(&now, &at((11, 14), 8)), OrderState::Cancelled);
    assert_eq!(state_of(&now, &running), OrderState::Running);
    assert_eq!(state_of(&now, &at((11, 14), 9)), OrderState::Queued);

    // Retry the cancelled orders of tile 10,15 only: a new generation, an export job each.
    let jobs_before = export_jobs(ctx).await;
    let cancelled_tile = Subset {
        states: vec![OrderState::Cancelled],
        ..tile.clone()
    };
    assert_eq!(
        campaign::retry(ctx, &name, false, &cancelled_tile)
            .await
            .unwrap(),
        3
    );
    let now = states().await;
    let counts = ctx.tracker.counts(&name).await.unwrap();
    assert_eq!(counts.get(&OrderState::Cancelled), Some(&2), "{counts:?}");
    assert_eq!(state_of(&now, &succeeded), OrderState::Queued);
    let again = ctx
        .tracker
        .status(&name, &succeeded)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.exports, 2);
    assert_eq!(export_jobs(ctx).await, jobs_before + 3);

    // Cancelling one of those again removes its own queued job, and only it.
    let one = Subset {
        tiles: vec![(10, 15)],
        to: Some(NaiveDate::from_ymd_opt(2021, 7, 31).unwrap()),
        ..Subset::default()
    };
    assert_eq!(campaign::cancel(ctx, &name, &one).await.unwrap().orders, 1);
    assert_eq!(export_jobs(ctx).await, jobs_before + 2);

    // Every QUEUED order of the campaign: the run that holds most of them goes with them, and
    // so do the jobs of those queued alone.
    assert!(!ctx.queue.run_ranges(&name).await.unwrap().is_empty());
    let queued = Subset {
        states: vec![OrderState::Queued],
        ..Subset::default()
    };
    assert_eq!(
        campaign::cancel(ctx, &name, &queued).await.unwrap().orders,
        5
    );
    assert!(ctx.queue.run_ranges(&name).await.unwrap().is_empty());
    assert_eq!(export_jobs(ctx).await, 0);
    assert_eq!(state_of(&states().await, &running), OrderState::Running);

    // Everything comes back with a retry of the whole campaign: the eight cancelled orders.
    assert_eq!(
        campaign::retry(ctx, &name, false, &Subset::everything())
            .await
            .unwrap(),
        8
    );
    assert_eq!(export_jobs(ctx).await, 8);
    let counts = ctx.tracker.counts(&name).await.unwrap();
    assert_eq!(counts.get(&OrderState::Cancelled), None, "{counts:?}");
}

#[tokio::test]
async fn a_subset_is_cancelled_and_retried_alone_on_redis() {
    a_subset_is_cancelled_and_retried_alone(redis_url()).await;
}

#[tokio::test]
async fn a_subset_is_cancelled_and_retried_alone_on_sqlite() {
    a_subset_is_cancelled_and_retried_alone(String::new()).await;
}

/// A name cleaned away and submitted anew (a fixed `tracking.template`) is the new submission for
/// a context that had the old one cached: its jobs follow the new recipe, never the old one's.
async fn a_name_submitted_anew_is_read_anew(queue_url: String) {
    let b = context_bench("submit-anew", queue_url, |c| {
        c.tracking.template = "fixed".into();
    })
    .await;
    let ctx = &b.ctx;
    let now = Utc::now();
    let first = submit::plan(&ctx.settings, &request(), now).unwrap();
    submit::enqueue(ctx, &first).await.unwrap();
    let old = ctx.submission("fixed").await.unwrap();
    assert_eq!(old.recipe, *first.submission.recipe.as_ref().unwrap());

    assert_eq!(
        campaign::cancel(ctx, "fixed", &Subset::everything())
            .await
            .unwrap()
            .orders,
        2
    );
    ctx.tracker.forget("fixed").await.unwrap();
    ctx.bucket
        .delete(&cedar::document::document_object(&ctx.settings, "fixed"))
        .await
        .unwrap();
    let second = submit::plan(&ctx.settings, &request(), now + Duration::seconds(1)).unwrap();
    submit::enqueue(ctx, &second).await.unwrap();
    let new = ctx.submission("fixed").await.unwrap();
    assert_eq!(new.recipe, *second.submission.recipe.as_ref().unwrap());
    assert_ne!(new.recipe.id, old.recipe.id);
}

#[tokio::test]
async fn a_name_submitted_anew_is_read_anew_on_redis() {
    a_name_submitted_anew_is_read_anew(redis_url()).await;
}

#[tokio::test]
async fn a_name_submitted_anew_is_read_anew_on_sqlite() {
    a_name_submitted_anew_is_read_anew(String::new()).await;
}

/// A document above `document::INLINE_ORDERS` orders: `submit` leaves it to the publisher, which
/// streams it through a temporary file into the bucket (`put_file`), and what lands there is the
/// document `render` makes in memory, every order and metadata name in it.
async fn a_large_document_is_streamed_to_the_bucket(gcs: Option<&crate::support::GcsEmulator>) {
    let b = context_bench("submit-large-doc", redis_url(), |c| {
        if let Some(gcs) = gcs {
            c.store.url = format!("gs://{}", gcs.bucket);
            c.store.endpoint = gcs.endpoint.clone();
            c.export.bucket = gcs.bucket.clone();
        }
    })
    .await;
    let ctx = &b.ctx;
    let mut req = request();
    // 105 tiles × 480 months: 50,400 orders.
    req.tiles = (0..105).map(|i| (i / 15, i % 15)).collect();
    req.start = NaiveDate::from_ymd_opt(1985, 1, 1).unwrap();
    req.end = NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
    req.freq = Some("1MS".parse().unwrap());
    let plan = submit::plan(&ctx.settings, &req, Utc::now()).unwrap();
    let name = plan.submission.name.clone();
    let orders = plan.submission.order_count();
    assert!(orders > cedar::document::INLINE_ORDERS, "{orders}");
    assert_eq!(submit::enqueue(ctx, &plan).await.unwrap(), orders as u64);
    let object = cedar::document::document_object(&ctx.settings, &name);
    assert!(
        ctx.bucket.get(&object).await.is_err(),
        "submit leaves a large document to the publisher"
    );
    assert_eq!(
        ctx.tracker.take_dirty(10).await.unwrap(),
        vec![name.clone()]
    );
    // The last round of a worker's drain leaves it, still marked, to the next publisher.
    ctx.tracker.mark_dirty(&name).await.unwrap();
    cedar::worker::publish_dirty(ctx).await;
    assert!(ctx.bucket.get(&object).await.is_err());
    assert_eq!(
        ctx.tracker.take_dirty(10).await.unwrap(),
        vec![name.clone()]
    );

    cedar::document::publish(&ctx.settings, &ctx.tracker, ctx.bucket.as_ref(), &name)
        .await
        .unwrap();
    let stored = ctx.bucket.get(&object).await.unwrap();
    let rendered = cedar::document::render(&ctx.settings, &ctx.tracker, &name)
        .await
        .unwrap();
    assert_eq!(stored.len(), rendered.len());
    assert!(
        stored == rendered,
        "the streamed document is the rendered one"
    );
    let doc: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    for key in ["program", "submission", "tracking", "orders", "metadata"] {
        assert!(doc.get(key).is_some(), "{key}");
    }
    assert_eq!(doc["orders"].as_array().unwrap().len(), orders);
    assert_eq!(doc["metadata"].as_array().unwrap().len(), orders);
    assert_eq!(doc["orders"][0]["status"]["state"], "QUEUED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_document_is_streamed_to_a_directory() {
    a_large_document_is_streamed_to_the_bucket(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_document_is_streamed_over_the_gcs_json_api() {
    let gcs = crate::support::GcsEmulator::start("cedar-large-doc").await;
    a_large_document_is_streamed_to_the_bucket(Some(&gcs)).await;
}
