//! Submit: turn collections × tiles × periods into orders, record them, and queue their exports.
//!
//! Everything is validated before anything is written — unknown collection, tile outside the
//! grid, end before start, a frequency that yields no period, two orders with the same name, a
//! taken tracking name — and the first problem found is one clear error. Then the tracking
//! state is recorded, the tracking document written, and one export job per order is enqueued
//! in bulk (pipelined; 100,000 jobs take seconds) into the admission backlog.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use chrono::{DateTime, NaiveDate, Utc};

use crate::config::Settings;
use crate::document::{document_object, publish};
use crate::jobs::Context;
use crate::naming::{TrackingValues, check_workload_tag, workload_tag_for};
use crate::order::Order;
use crate::period::{Frequency, Period, periods};
use crate::queue::Stage;
use crate::queue::tracking::Submission;
use crate::recipe::Recipe;

/// The most orders one submission may hold. Planning names every order in memory (about
/// 200 bytes each), so far larger requests would exhaust it; 5 million is about a gigabyte at
/// the peak and several times the CONUS × 40 years × 4 collections archive (1.39 million).
pub const MAX_ORDERS: u64 = 5_000_000;

/// What to submit.
#[derive(Debug, Clone)]
pub struct Request {
    /// The tracking name; `None` renders `tracking.template`.
    pub name: Option<String>,
    /// The EE workload tag of its calls; `None` derives one from the tracking name
    /// ([`crate::naming::workload_tag_for`]).
    pub workload_tag: Option<String>,
    /// 0–9999, higher first among submissions sharing EE; `None`: 100 (ingest entries: 200).
    pub priority: Option<u32>,
    pub collections: Vec<String>,
    /// (row, col), in the order given; duplicates are refused.
    pub tiles: Vec<(u32, u32)>,
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub freq: Option<Frequency>,
    pub save_empty_metadata: bool,
    pub error_if_empty: bool,
}

/// A submission that was validated: its record and the partial period dropped, if any.
#[derive(Debug, Clone)]
pub struct Plan {
    pub submission: Submission,
    pub dropped: Option<Period>,
}

/// Bad input or a failure to record it.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tracking(#[from] crate::queue::tracking::TrackingError),
    #[error(transparent)]
    Publish(#[from] crate::document::PublishError),
    #[error("queueing the exports: {0}")]
    Queue(#[from] crate::queue::QueueError),
}

/// Validates `req` and renders every name; nothing is written.
pub fn plan(settings: &Settings, req: &Request, now: DateTime<Utc>) -> Result<Plan, SubmitError> {
    let invalid = |m: String| SubmitError::Invalid(m);
    if req.collections.is_empty() {
        return Err(invalid("no collection given; pass --collection ID".into()));
    }
    let mut seen = HashSet::new();
    for c in &req.collections {
        if !settings.collections.contains_key(c) {
            let known: Vec<&str> = settings.collections.keys().map(String::as_str).collect();
            return Err(invalid(format!(
                "unknown collection {c:?}; configured collections: {} (add others under [collections.\"ID\"])",
                known.join(", ")
            )));
        }
        if !seen.insert(c) {
            return Err(invalid(format!("collection {c:?} is given twice")));
        }
    }
    if req.tiles.is_empty() {
        return Err(invalid(
            "no tile given; pass --tile ROW,COL, --rows A-B --cols C-D or --tiles-file".into(),
        ));
    }
    let mut seen = HashSet::new();
    for (row, col) in &req.tiles {
        settings
            .grid
            .tile(*row, *col)
            .map_err(|e| invalid(e.to_string()))?;
        if !seen.insert((row, col)) {
            return Err(invalid(format!("tile {row},{col} is given twice")));
        }
    }
    let split = periods(req.start, req.end, req.freq).map_err(|e| invalid(e.to_string()))?;
    // Checked before any order is named: naming them all takes memory in proportion.
    let count = req.collections.len() as u64 * req.tiles.len() as u64 * split.periods.len() as u64;
    if count > MAX_ORDERS {
        return Err(invalid(format!(
            "{count} orders ({} collections x {} tiles x {} periods) is more than one submission may hold ({MAX_ORDERS}); split it, e.g. by date range or by rows of tiles",
            req.collections.len(),
            req.tiles.len(),
            split.periods.len()
        )));
    }
    let mut sub = Submission {
        name: String::new(),
        submitted: now,
        collections: req.collections.clone(),
        tiles: req.tiles.clone(),
        period_start: req.start,
        period_end: req.end,
        period_freq: req.freq.map(|f| f.to_string()),
        periods: split.periods,
        save_empty_metadata: req.save_empty_metadata,
        error_if_empty: req.error_if_empty,
        recipe: Some(settings.recipe(&req.collections, Some(Recipe::new_id()))),
        workload_tag: None,
        ingest: None,
        priority: None,
    };
    sub.name = match &req.name {
        Some(name) => name.clone(),
        None => settings
            .tracking_template
            .render_tracking(&TrackingValues {
                collections: &req.collections,
                tiles: &req.tiles,
                period_start: req.start,
                period_end: req.end,
                period_freq: req.freq,
                now,
            })
            .map_err(|e| invalid(e.to_string()))?,
    };
    // Frozen into the submission, so every worker tags its calls alike whatever version or
    // configuration it runs.
    sub.workload_tag = Some(match &req.workload_tag {
        Some(tag) => {
            check_workload_tag(tag).map_err(|e| invalid(format!("workload tag: {e}")))?;
            tag.clone()
        }
        None => workload_tag_for(&sub.name),
    });
    sub.priority = Some(match req.priority {
        Some(p) if p > crate::order::MAX_PRIORITY => {
            return Err(invalid(format!(
                "priority {p} is out of range; use 0 to {} (higher runs first)",
                crate::order::MAX_PRIORITY
            )));
        }
        Some(p) => p,
        None => crate::order::DEFAULT_PRIORITY,
    });
    // Every name is rendered (a template may fail for one item) and checked unique. Only a
    // 64-bit hash of each is kept, with the first order that had it: an archive's 1.39 million
    // names would otherwise take hundreds of megabytes. Two orders with one hash are told apart
    // by their names, rendered again.
    let base_of = |order: &Order| -> Result<String, SubmitError> {
        Ok(order
            .names(settings.item_templates(), now)
            .map_err(|e| invalid(e.to_string()))?
            .object_base())
    };
    let hasher = std::hash::RandomState::new();
    let mut seen: HashMap<u64, usize> = HashMap::with_capacity(sub.order_count());
    let mut colliding: HashSet<String> = HashSet::new();
    for (i, order) in sub.orders().enumerate() {
        let base = base_of(&order)?;
        let duplicate = match seen.entry(hasher.hash_one(&base)) {
            Entry::Vacant(v) => {
                v.insert(i);
                false
            }
            Entry::Occupied(first) => {
                let first = sub.orders().nth(*first.get()).expect("an earlier order");
                colliding.insert(base_of(&first)?);
                !colliding.insert(base.clone())
            }
        };
        if duplicate {
            return Err(invalid(format!(
                "two orders would both be named {base:?}; export.name_template must tell collections, tiles and periods apart (e.g. include {{collection}}, {{tile}} and {{date_start}})"
            )));
        }
    }
    Ok(Plan {
        submission: sub,
        dropped: split.dropped,
    })
}

/// Records a validated plan, writes its tracking document and enqueues its exports; returns
/// the number of jobs added.
///
/// A submit happens whole or leaves nothing: it is refused before anything is written when an
/// active submission exports to the same objects, and when writing the document or queueing
/// fails after the submission was recorded, what was written is taken back before the error is
/// returned (a submission without its jobs would wait forever).
pub async fn enqueue(ctx: &Context, plan: &Plan) -> Result<u64, SubmitError> {
    let sub = &plan.submission;
    refuse_overlap(ctx, sub).await?;
    ctx.tracker.create(sub).await?;
    if let Err(e) = refuse_foreign_document(ctx, sub).await {
        // Only the record was written; the document in the bucket is someone else's.
        if let Err(e) = ctx.tracker.forget(&sub.name).await {
            tracing::error!(tracking = %sub.name, error = %e, "could not forget a refused submit; run `cedar cancel {}`", sub.name);
        }
        return Err(e);
    }
    match publish_and_queue(ctx, sub).await {
        Ok(added) => Ok(added),
        Err(e) => {
            undo(ctx, &sub.name).await;
            Err(e)
        }
    }
}

async fn publish_and_queue(ctx: &Context, sub: &Submission) -> Result<u64, SubmitError> {
    // A large submission's document (hundreds of megabytes for an archive) is left to the
    // workers' publisher, which streams it: `create` marked it for publishing.
    if sub.order_count() <= crate::document::INLINE_ORDERS {
        publish(&ctx.settings, &ctx.tracker, ctx.bucket.as_ref(), &sub.name).await?;
    }
    // One run in the backlog for the whole product; admission writes each job when its turn
    // comes, so an archive-size submission is queued in a few writes.
    let added = ctx
        .queue
        .enqueue_run(&sub.export_run(), sub.backlog_place())
        .await?;
    Ok(added)
}

/// Refuses `sub` when its tracking document already exists in the bucket although this
/// deployment had no submission of that name (`create` just succeeded): another deployment
/// sharing the bucket — another namespace or Redis — or a forgotten submission wrote it, and
/// publishing ours would overwrite their record.
async fn refuse_foreign_document(ctx: &Context, sub: &Submission) -> Result<(), SubmitError> {
    let document = document_object(&ctx.settings, &sub.name);
    let found = ctx
        .bucket
        .list(&document)
        .await
        .map_err(crate::document::PublishError::Store)?;
    if found.iter().any(|o| o.name == document) {
        return Err(SubmitError::Invalid(format!(
            "tracking document {document} already exists in the bucket, written by another deployment sharing it (another queue.namespace or Redis) or by a submission this queue forgot; \
             give each deployment its own tracking.prefix, or keep {{now}} in tracking.template"
        )));
    }
    Ok(())
}

/// Takes back a submission whose submit failed half-way: its queued exports first (so that no
/// worker starts one whose submission is about to vanish), then its record and its document.
/// Each step is attempted even when an earlier one fails; what could not be undone is logged
/// with the command that finishes the job.
async fn undo(ctx: &Context, name: &str) {
    if let Err(e) = ctx.queue.remove_tracking(Stage::Export, name).await {
        tracing::error!(tracking = name, error = %e, "could not remove the queued exports of a failed submit; run `cedar cancel {name}`");
    }
    if let Err(e) = ctx.tracker.forget(name).await {
        tracing::error!(tracking = name, error = %e, "could not forget a failed submit; run `cedar cancel {name}`");
    }
    let document = document_object(&ctx.settings, name);
    if let Err(e) = ctx.bucket.delete(&document).await {
        tracing::debug!(object = %document, error = %e, "no tracking document to take back");
    }
}

/// Refuses `sub` when a submission that is still running exports any of the same items the same
/// way: EE would do the same work twice. Objects are never shared (each submission exports into
/// its own folder, see [`Recipe::export_base`]), so a finished submission is no obstacle, nor is
/// a running one that exports the items differently (other bands, grid or file settings): the
/// same items can be submitted again once the first is done, failed or cancelled.
///
/// Only the items both submissions hold are compared, never a whole (possibly archive-size)
/// submission's orders.
async fn refuse_overlap(ctx: &Context, sub: &Submission) -> Result<(), SubmitError> {
    let ours = ctx.settings.recipe_of(sub);
    for other in ctx.tracker.list().await? {
        // The same name is not an overlap but the same submission (an ingest period another
        // worker submitted first): `create` refuses it as such.
        if other == sub.name {
            continue;
        }
        let running = ctx
            .tracker
            .counts(&other)
            .await?
            .iter()
            .any(|(state, n)| *n > 0 && !state.is_complete() && !state.is_failed());
        if !running {
            continue;
        }
        let theirs = ctx.tracker.submission(&other).await?;
        let recipe = ctx.settings.recipe_of(&theirs);
        let shared =
            shared_items(sub, &theirs).find(|order| ours.exports_alike(&recipe, &order.collection));
        if let Some(order) = shared {
            return Err(SubmitError::Invalid(format!(
                "submission {other:?} is still running and exports the same items with the same settings \
                 (e.g. {} tile {},{} from {}); wait until `cedar status {other}` ends, or `cedar cancel {other}` first",
                order.collection, order.row, order.col, order.period.start
            )));
        }
    }
    Ok(())
}

/// The orders of `a` whose collection × tile × period `b` holds too (set lookups only; the
/// new submission's orders were all named by `plan` already).
fn shared_items<'a>(a: &'a Submission, b: &'a Submission) -> impl Iterator<Item = Order> + 'a {
    let tiles: HashSet<(u32, u32)> = b.tiles.iter().copied().collect();
    let periods: HashSet<Period> = b.periods.iter().copied().collect();
    a.orders().filter(move |o| {
        b.collections.contains(&o.collection)
            && tiles.contains(&(o.row, o.col))
            && periods.contains(&o.period)
    })
}

/// Reads tiles from a file: one `ROW,COL` per line; blank lines and `#` comments ignored.
pub fn read_tiles_file(path: &std::path::Path) -> Result<Vec<(u32, u32)>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read tiles file {}: {e}", path.display()))?;
    // Editors on Windows start UTF-8 files with a byte-order mark; it is not part of a tile.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    let mut first_seen = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let at = |e: String| format!("{}:{}: {e}", path.display(), i + 1);
        let tile = crate::grid::parse_tile(line).map_err(at)?;
        if let Some(first) = first_seen.insert(tile, i + 1) {
            return Err(at(format!(
                "tile {},{} is listed twice (first on line {first})",
                tile.0, tile.1
            )));
        }
        out.push(tile);
    }
    if out.is_empty() {
        return Err(format!("tiles file {} lists no tile", path.display()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn settings() -> Settings {
        let mut c = Config::default();
        c.export.bucket = "b-1".into();
        c.validate().unwrap()
    }

    fn req() -> Request {
        Request {
            name: None,
            workload_tag: None,
            collections: vec!["LANDSAT/LC08/C02/T1_L2".into()],
            tiles: vec![(3, 10), (3, 11)],
            start: "2020-01-01".parse().unwrap(),
            end: "2020-12-31".parse().unwrap(),
            freq: Some("3MS".parse().unwrap()),
            save_empty_metadata: true,
            error_if_empty: false,
            priority: None,
        }
    }

    #[test]
    fn a_run_hands_out_the_submissions_orders_by_their_index() {
        // `campaign::retry` finds the orders a run still holds by their index in
        // `Submission::orders`: the run's job at each index must be that order's job.
        let mut r = req();
        r.collections.push("LANDSAT/LC09/C02/T1_L2".into());
        let p = plan(&settings(), &r, Utc::now()).unwrap();
        let sub = &p.submission;
        assert_eq!(sub.order_count(), 2 * 2 * 4);
        let run = sub.export_run();
        for (i, order) in sub.orders().enumerate() {
            let want = crate::jobs::job_for(&sub.name, &order, None);
            assert_eq!(run.job(i as u64), Some(want), "order {i}");
        }
        assert_eq!(run.job(sub.order_count() as u64), None);
    }

    #[test]
    fn a_valid_request_plans_every_order() {
        let p = plan(&settings(), &req(), Utc::now()).unwrap();
        assert_eq!(p.submission.order_count(), 2 * 4);
        assert!(
            p.submission
                .name
                .starts_with("TRACKING_PERIOD2020-01-01-2020-12-31_TASK")
        );
        assert_eq!(p.dropped, None);
        let tag = p.submission.workload_tag.clone().unwrap();
        assert!(
            tag.starts_with("tracking_period2020-01-01-2020-12-31_task"),
            "{tag}"
        );
    }

    #[test]
    fn a_given_name_and_tag_are_recorded_as_given() {
        let mut r = req();
        r.name = Some("INGEST-monthly-2020-01-01".into());
        let p = plan(&settings(), &r, Utc::now()).unwrap();
        assert_eq!(p.submission.name, "INGEST-monthly-2020-01-01");
        assert_eq!(
            p.submission.workload_tag.as_deref(),
            Some("ingest-monthly-2020-01-01")
        );
        r.workload_tag = Some("conus-2020".into());
        let p = plan(&settings(), &r, Utc::now()).unwrap();
        assert_eq!(p.submission.workload_tag(), "conus-2020");
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let s = settings();
        type Change = Box<dyn Fn(&mut Request)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|r| r.collections = vec!["NOPE".into()]),
                "unknown collection \"NOPE\"",
            ),
            (
                Box::new(|r| r.collections.push("LANDSAT/LC08/C02/T1_L2".into())),
                "given twice",
            ),
            (Box::new(|r| r.tiles.push((99, 0))), "outside the grid"),
            (
                Box::new(|r| r.tiles.push((3, 10))),
                "tile 3,10 is given twice",
            ),
            (
                Box::new(|r| r.end = "2019-01-01".parse().unwrap()),
                "not after start",
            ),
            (Box::new(|r| r.tiles.clear()), "no tile given"),
            (
                Box::new(|r| r.workload_tag = Some("Bad Tag".into())),
                "workload tag: \"Bad Tag\" is not an Earth Engine workload tag",
            ),
            (Box::new(|r| r.collections.clear()), "no collection given"),
        ];
        for (change, want) in cases {
            let mut r = req();
            change(&mut r);
            let e = plan(&s, &r, Utc::now()).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn colliding_names_are_refused() {
        // `config check` refuses such a template already; plan checks the names it renders
        // all the same, whatever built the settings.
        let mut c = Config::default();
        c.export.bucket = "b-1".into();
        let mut s = c.validate().unwrap();
        s.name_template =
            crate::naming::Template::parse(crate::naming::Kind::Name, "{collection}_{date_start}")
                .unwrap();
        let e = plan(&s, &req(), Utc::now()).unwrap_err().to_string();
        assert!(e.contains("would both be named"), "{e}");
    }

    #[test]
    fn a_request_beyond_the_order_limit_is_refused_before_naming_orders() {
        let s = settings();
        let mut r = req();
        // 2 collections x 726 tiles x 45,000 days: 65 million orders.
        r.collections = vec![
            "LANDSAT/LC08/C02/T1_L2".into(),
            "LANDSAT/LE07/C02/T1_L2".into(),
        ];
        r.tiles = s.grid.limits.indices().collect();
        r.start = NaiveDate::from_ymd_opt(1900, 1, 1).unwrap();
        r.end = NaiveDate::from_ymd_opt(2024, 12, 31).unwrap();
        r.freq = Some("1D".parse().unwrap());
        let e = plan(&s, &r, Utc::now()).unwrap_err().to_string();
        assert!(
            e.contains("is more than one submission may hold (5000000)") && e.contains("726 tiles"),
            "{e}"
        );
    }

    #[test]
    fn tiles_files_ignore_a_byte_order_mark_and_name_the_line_of_a_repeated_tile() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiles.txt");
        std::fs::write(&path, "\u{feff}3,10\n# a comment\n3,11\n").unwrap();
        assert_eq!(read_tiles_file(&path).unwrap(), vec![(3, 10), (3, 11)]);
        std::fs::write(&path, "3,10\n3,11\n\n3,10 # again\n").unwrap();
        let e = read_tiles_file(&path).unwrap_err();
        assert!(
            e.ends_with(":4: tile 3,10 is listed twice (first on line 1)"),
            "{e}"
        );
    }
}
