//! The console's JSON API under `/api/v1/`: what the pages show, in the shapes of the CLI's
//! `--json` (a campaign is `cedar status --json`'s object with more fields beside), and the
//! retry and cancel actions.
//!
//! Everything a response holds is bounded whatever the campaign's size: counts come from the
//! per-state tallies, the map reads one order per tile, the matrix and the failures come from
//! the campaign's digest ([`super::digest`]), and orders are paged with the order's index as
//! the cursor, reading at most [`SCAN_LIMIT`] orders per request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::digest::FailureGroup;
use super::map::{self, Matrix, code};
use super::{Console, WebError};
use crate::campaign::{Names, Subset, SubsetError, parse_state};
use crate::earthengine::EE_QUEUE_CAP;
use crate::jobs::Submitted;
use crate::order::Order;
use crate::period::Period;
use crate::queue::Stage;
use crate::queue::tracking::{OrderState, OrderStatus, WALK_CHUNK};
use crate::schedule;

/// Orders read at most per `orders` request: a filter that matches nothing still answers in
/// well under a second, with the cursor to go on from.
pub const SCAN_LIMIT: usize = 50_000;
/// Orders returned per page by default, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Throughput is measured over this much of the console's recent samples.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// One campaign: `cedar status --json`'s fields (`name`, `total`, `counts`, `done`,
/// `eecu_seconds`, `admission_paused_until`) and what the console shows beside them.
#[derive(Debug, Clone, Serialize)]
pub struct Campaign {
    pub name: String,
    pub total: usize,
    pub counts: BTreeMap<&'static str, u64>,
    pub done: bool,
    /// From the campaign's latest digest; `null` until one was walked.
    pub eecu_seconds: Option<f64>,
    pub admission_paused_until: Option<DateTime<Utc>>,
    pub submitted: DateTime<Utc>,
    pub priority: u32,
    /// The `[[ingest]]` entry that submitted it.
    pub ingest: Option<String>,
    /// Orders with an EE task PENDING or RUNNING (or being cancelled).
    pub active: u64,
    pub complete: u64,
    pub failed: u64,
    /// Orders that finished (complete or failed) per hour, recently; `null` before any did.
    pub throughput_per_hour: Option<f64>,
    /// When the unfinished orders will have finished at that pace.
    pub eta: Option<DateTime<Utc>>,
}

/// EE's load, across campaigns.
#[derive(Debug, Clone, Serialize)]
pub struct EeLoad {
    /// EE tasks cedar holds an admission slot for.
    pub active: u64,
    /// The worker's admission cap; `null` where the console does not know it (`cedar web`
    /// with `[limits] max_active_exports = 0`, derived from EE by each worker).
    pub admission_cap: Option<u64>,
    /// How many tasks EE queues per project.
    pub ee_queue_cap: u64,
    pub admission_paused_until: Option<DateTime<Utc>>,
}

/// An `[[ingest]]` entry: what `cedar ingest list` prints.
#[derive(Debug, Clone, Serialize)]
pub struct IngestRow {
    pub name: String,
    pub last_submitted: Option<String>,
    pub last_period: Option<Period>,
    pub last_complete: Option<Period>,
    pub missing: usize,
    pub next_period: Option<Period>,
    pub next_due: Option<NaiveDate>,
    pub failed_orders: u64,
}

/// The jobs of one stage; dead ones need `cedar retry`.
#[derive(Debug, Clone, Serialize)]
pub struct StageRow {
    pub stage: &'static str,
    pub backlog: u64,
    pub due: u64,
    pub scheduled: u64,
    pub leased: u64,
    pub dead: u64,
}

/// A dead job: which order at which stage, and why it died.
#[derive(Debug, Clone, Serialize)]
pub struct DeadJob {
    pub stage: &'static str,
    /// The job id: `{tracking}|{collection}|{row}|{col}|{period start}`.
    pub id: String,
    /// `fatal` or `attempts exhausted`.
    pub reason: String,
    pub attempts: u32,
    pub last_error: String,
    pub at: Option<DateTime<Utc>>,
}

/// Dead jobs listed per stage (the counts are in `stages`).
pub const DEAD_LISTED: usize = 20;

/// `GET /api/v1/campaigns`.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub campaigns: Vec<Campaign>,
    pub ee: EeLoad,
    pub ingests: Vec<IngestRow>,
    pub stages: Vec<StageRow>,
    /// Up to [`DEAD_LISTED`] dead jobs of each stage.
    pub dead: Vec<DeadJob>,
}

/// `GET /api/v1/campaigns/{name}`: the campaign and what it was asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub campaign: Campaign,
    pub collections: Vec<String>,
    pub tiles: Vec<(u32, u32)>,
    pub periods: Vec<Period>,
    pub period_freq: Option<String>,
    pub workload_tag: String,
    pub grid: String,
    pub actions: bool,
}

/// `GET /api/v1/campaigns/{name}/view`: what the campaign page draws for one collection and
/// period.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub campaign: Campaign,
    pub collection: String,
    pub period: Period,
    /// The state of each submitted tile in the chosen collection and period, one letter per
    /// tile in the submission's order ([`map::code`]).
    pub map: String,
    /// The tiles × periods matrix of the collection; `null` while the first digest of a big
    /// campaign is being walked.
    pub matrix: Option<Matrix>,
    pub failures: Option<Vec<Failure>>,
    /// Failed orders whose messages are too rare to list.
    pub failures_other: u64,
    /// When the matrix and failures were read.
    pub aggregated_at: Option<DateTime<Utc>>,
}

/// Failed orders sharing one message, with a few of them named.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub message: String,
    pub count: u64,
    pub examples: Vec<String>,
}

/// One order, as in the tracking document (`name`, `prefix`, `status`) with where it lies.
#[derive(Debug, Clone, Serialize)]
pub struct OrderRow {
    pub index: usize,
    pub name: String,
    pub prefix: String,
    pub collection: String,
    pub tile: (u32, u32),
    pub period: Period,
    pub status: OrderStatus,
}

/// `GET /api/v1/campaigns/{name}/orders`.
#[derive(Debug, Clone, Serialize)]
pub struct OrdersPage {
    pub total: usize,
    pub orders: Vec<OrderRow>,
    /// The cursor of the next page; `null` after the last order.
    pub next: Option<usize>,
}

/// Which orders `orders` lists and `POST …/retry` and `…/cancel` act on (none: every order):
/// a state, a collection, a tile, and `period`, the period that contains that day.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OrderFilter {
    pub state: Option<String>,
    pub collection: Option<String>,
    /// `ROW,COL`.
    pub tile: Option<String>,
    pub period: Option<NaiveDate>,
}

/// The page of `orders`: from order index `cursor` on, at most `limit`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PageQuery {
    pub cursor: Option<usize>,
    pub limit: Option<usize>,
}

impl OrderFilter {
    fn subset(&self) -> Result<Subset, WebError> {
        Ok(Subset {
            collections: self
                .collection
                .iter()
                .filter(|c| !c.is_empty())
                .cloned()
                .collect(),
            tiles: tile_filter(self.tile.as_deref())?.into_iter().collect(),
            from: self.period,
            to: self.period,
            states: state_filter(self.state.as_deref())?.into_iter().collect(),
            names: Names::Query,
            ..Subset::default()
        })
    }
}

/// The `state` filter of a query (empty: none).
fn state_filter(state: Option<&str>) -> Result<Option<OrderState>, WebError> {
    state
        .filter(|s| !s.is_empty())
        .map(|s| parse_state(s).map_err(|e| WebError::BadRequest(format!("state {e}"))))
        .transpose()
}

/// The `tile` filter of a query, `ROW,COL` (empty: none).
fn tile_filter(tile: Option<&str>) -> Result<Option<(u32, u32)>, WebError> {
    tile.filter(|t| !t.is_empty())
        .map(|t| crate::grid::parse_tile(t).map_err(WebError::BadRequest))
        .transpose()
}

/// A campaign action's error: a filter that chooses nothing is the caller's (400).
fn action_error(action: &str, name: &str, e: anyhow::Error) -> WebError {
    match e.downcast::<SubsetError>() {
        Ok(e) => WebError::BadRequest(e.to_string()),
        Err(e) => WebError::Internal(format!("{action} {name}: {e:#}")),
    }
}

/// The collection and period the campaign page shows.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ViewQuery {
    pub collection: Option<String>,
    pub period: Option<NaiveDate>,
}

impl Console {
    /// Every campaign, EE's load, the ingest entries and the stages' jobs.
    pub async fn overview(&self) -> Result<Overview, WebError> {
        let ctx = &self.inner.ctx;
        let tallies = ctx.tracker.tallies().await?;
        // What the console keeps per campaign goes with the campaign (`cedar clean`).
        self.inner.digests.retain(|n| tallies.contains_key(n));
        self.inner
            .rates
            .lock()
            .expect("rates lock")
            .retain(|n, _| tallies.contains_key(n));
        let paused = self.paused_until().await?;
        let mut campaigns = Vec::with_capacity(tallies.len());
        for (name, counts) in &tallies {
            let sub = self.submission(name).await?;
            let eecu = ctx.tracker.eecu_seconds(name).await?;
            campaigns.push(self.campaign(&sub, counts.clone(), paused, Some(eecu)));
        }
        let now = Utc::now();
        let ingests = schedule::status(&ctx.tracker, &ctx.settings.ingests, &tallies, now)
            .await?
            .into_iter()
            .map(|s| IngestRow {
                name: s.name,
                last_submitted: s.last_submitted.as_ref().map(|l| l.tracking.clone()),
                last_period: s.last_submitted.as_ref().map(|l| l.period),
                last_complete: s.last_complete,
                missing: s.missing.len(),
                next_period: s.next.map(|n| n.0),
                next_due: s.next.map(|n| n.1),
                failed_orders: s.failed_orders,
            })
            .collect();
        let mut stages = Vec::new();
        let mut dead = Vec::new();
        for stage in Stage::ALL {
            let d = ctx.queue.depth(stage).await?;
            if d.dead > 0 {
                for (id, why) in ctx.queue.dead_jobs(stage, DEAD_LISTED).await? {
                    dead.push(DeadJob {
                        stage: stage.name(),
                        id,
                        reason: why.reason,
                        attempts: why.attempts,
                        last_error: why.last_error,
                        at: DateTime::from_timestamp_millis(why.at_ms as i64),
                    });
                }
            }
            stages.push(StageRow {
                stage: stage.name(),
                backlog: d.backlog,
                due: d.due_now,
                scheduled: d.scheduled,
                leased: d.leased,
                dead: d.dead,
            });
        }
        Ok(Overview {
            campaigns,
            ee: EeLoad {
                active: ctx.queue.active_count().await?,
                admission_cap: self.inner.opts.admission_cap,
                ee_queue_cap: EE_QUEUE_CAP,
                admission_paused_until: paused,
            },
            ingests,
            stages,
            dead,
        })
    }

    /// One campaign and what it was asked for.
    pub async fn detail(&self, name: &str) -> Result<Detail, WebError> {
        let sub = self.submission(name).await?;
        let tracker = &self.inner.ctx.tracker;
        let counts = tracker.counts(name).await?;
        let eecu = tracker.eecu_seconds(name).await?;
        let campaign = self.campaign(&sub, counts, self.paused_until().await?, Some(eecu));
        Ok(Detail {
            campaign,
            collections: sub.collections.clone(),
            tiles: sub.tiles.clone(),
            periods: sub.periods.clone(),
            period_freq: sub.period_freq.clone(),
            workload_tag: sub.workload_tag(),
            grid: sub.recipe.grid.name.clone(),
            actions: self.inner.opts.actions_enabled(),
        })
    }

    /// The map of one collection and period, the collection's matrix, and the failures.
    pub async fn view(&self, name: &str, q: &ViewQuery) -> Result<View, WebError> {
        let sub = self.submission(name).await?;
        let (ci, pi) = choose(&sub, q)?;
        let ctx = &self.inner.ctx;
        let collection = sub.collections[ci].clone();
        let period = sub.periods[pi];
        let orders: Vec<Order> = sub
            .tiles
            .iter()
            .map(|(row, col)| Order {
                collection: collection.clone(),
                row: *row,
                col: *col,
                period,
            })
            .collect();
        let mut map = String::with_capacity(orders.len());
        let mut walk = ctx.tracker.walk(name, orders.into_iter());
        while let Some(chunk) = walk.next().await? {
            for (_, s) in chunk {
                map.push(code(s.map_or(OrderState::Queued, |s| s.state)));
            }
        }
        let counts = ctx.tracker.counts(name).await?;
        let digest = self
            .inner
            .digests
            .get(&ctx.tracker, sub.clone(), &counts, true);
        let digest = digest.await;
        let eecu = ctx.tracker.eecu_seconds(name).await?;
        let campaign = self.campaign(&sub, counts, self.paused_until().await?, Some(eecu));
        let per_collection = sub.tiles.len() * sub.periods.len();
        let matrix = digest.as_ref().map(|d| {
            let codes = &d.codes[ci * per_collection..(ci + 1) * per_collection];
            map::matrix(codes, sub.tiles.len(), &sub.periods)
        });
        let failures = digest.as_ref().map(|d| {
            d.failures
                .iter()
                .map(|g| failure(&sub, g))
                .collect::<Vec<_>>()
        });
        Ok(View {
            campaign,
            collection,
            period,
            map,
            matrix,
            failures,
            failures_other: digest.as_ref().map_or(0, |d| d.failures_other),
            aggregated_at: digest.as_ref().map(|d| d.at),
        })
    }

    /// A page of the campaign's orders that pass the filters, from `cursor` on.
    pub async fn orders(
        &self,
        name: &str,
        filter: &OrderFilter,
        page: &PageQuery,
    ) -> Result<OrdersPage, WebError> {
        let sub = self.submission(name).await?;
        let sel = filter
            .subset()?
            .select(&sub)
            .map_err(|e| WebError::BadRequest(e.to_string()))?;
        let limit = page.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let cursor = page.cursor.unwrap_or(0);
        // The indices that pass the collection, tile and period filters, in order, from the
        // cursor on: computed, not read, so those filters cost nothing however big the campaign.
        let mut indices = sel.indices().filter(|i| *i >= cursor).peekable();
        let ctx = &self.inner.ctx;
        let mut rows = Vec::new();
        let mut scanned = 0;
        let mut next = None;
        while let Some(&first) = indices.peek() {
            if rows.len() >= limit || scanned >= SCAN_LIMIT {
                next = Some(first);
                break;
            }
            let chunk: Vec<usize> = indices
                .by_ref()
                .take(WALK_CHUNK.min(SCAN_LIMIT - scanned))
                .collect();
            scanned += chunk.len();
            let orders: Vec<Order> = chunk.iter().map(|i| sub.order_at(*i)).collect();
            let statuses = ctx.tracker.statuses(name, &orders).await?;
            for ((i, order), status) in chunk.iter().zip(orders).zip(statuses) {
                let status = status.unwrap_or_else(|| OrderStatus::new(OrderState::Queued));
                if !sel.wants(status.state) {
                    continue;
                }
                if rows.len() == limit {
                    next = Some(*i);
                    break;
                }
                rows.push(row(&sub, *i, order, status));
            }
            if next.is_some() {
                break;
            }
        }
        Ok(OrdersPage {
            total: sub.order_count(),
            orders: rows,
            next,
        })
    }

    /// A campaign's summary from its tally.
    fn campaign(
        &self,
        sub: &Submitted,
        counts: BTreeMap<OrderState, u64>,
        paused: Option<DateTime<Utc>>,
        eecu_seconds: Option<f64>,
    ) -> Campaign {
        let sum = |f: fn(OrderState) -> bool| -> u64 {
            counts.iter().filter(|(s, _)| f(**s)).map(|(_, n)| n).sum()
        };
        let (complete, failed, active) = (
            sum(OrderState::is_complete),
            sum(OrderState::is_failed),
            sum(OrderState::is_active),
        );
        let total = sub.order_count();
        let finished = complete + failed;
        let done = finished as usize >= total;
        let now = Utc::now();
        let rate = self.rate(&sub.name, finished, sub.submitted, now);
        let eta = rate
            .filter(|r| *r > 0.0 && !done)
            .and_then(|r| {
                let hours = (total as u64 - finished) as f64 / r;
                chrono::Duration::try_milliseconds((hours * 3_600_000.0) as i64)
            })
            .map(|d| now + d);
        Campaign {
            name: sub.name.clone(),
            total,
            counts: counts.iter().map(|(s, n)| (s.as_str(), *n)).collect(),
            done,
            eecu_seconds,
            admission_paused_until: paused,
            submitted: sub.submitted,
            priority: sub.priority(),
            ingest: sub.ingest.clone(),
            active,
            complete,
            failed,
            throughput_per_hour: rate,
            eta,
        }
    }

    /// Orders finished per hour: over the console's samples of the last [`RATE_WINDOW`] when
    /// they span a minute, else on average since the submission.
    fn rate(
        &self,
        name: &str,
        finished: u64,
        submitted: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<f64> {
        let mut rates = self.inner.rates.lock().expect("rates lock");
        let samples = rates.entry(name.to_owned()).or_default();
        let t = Instant::now();
        if samples
            .back()
            .is_none_or(|(at, _)| t.duration_since(*at).as_secs() >= 1)
        {
            samples.push_back((t, finished));
        }
        while samples
            .front()
            .is_some_and(|(at, _)| t.duration_since(*at) > RATE_WINDOW)
        {
            samples.pop_front();
        }
        if let (Some((t0, f0)), Some((t1, f1))) = (samples.front(), samples.back())
            && t1.duration_since(*t0).as_secs() >= 60
        {
            let hours = t1.duration_since(*t0).as_secs_f64() / 3600.0;
            return Some(f1.saturating_sub(*f0) as f64 / hours);
        }
        let hours = (now - submitted).num_milliseconds() as f64 / 3_600_000.0;
        (finished > 0 && hours > 0.0).then(|| finished as f64 / hours)
    }

    async fn paused_until(&self) -> Result<Option<DateTime<Utc>>, WebError> {
        Ok(self.inner.ctx.queue.paused_until().await?)
    }

    pub(super) async fn submission(&self, name: &str) -> Result<Arc<Submitted>, WebError> {
        let ctx = &self.inner.ctx;
        match ctx.submission(name).await {
            Ok(sub) => Ok(sub),
            // The cached read's error does not tell a missing name (404) from a broken record
            // (500): one cheap lookup does, only when it failed.
            Err(_) if ctx.tracker.submitted_ms(name).await?.is_none() => {
                Err(crate::queue::tracking::TrackingError::Unknown(name.to_owned()).into())
            }
            Err(e) => Err(WebError::Internal(e.to_string())),
        }
    }
}

/// The index of collection `wanted` in `sub` (`None` when none is asked for); a collection
/// `sub` does not export is bad input.
fn collection_index(sub: &Submitted, wanted: Option<&str>) -> Result<Option<usize>, WebError> {
    let Some(c) = wanted.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let i = sub.collections.iter().position(|x| x == c);
    i.map(Some)
        .ok_or_else(|| WebError::BadRequest(format!("{c:?} is not a collection of {}", sub.name)))
}

/// The index of the period of `sub` that starts on `wanted` (`None` when none is asked for).
fn period_index(sub: &Submitted, wanted: Option<NaiveDate>) -> Result<Option<usize>, WebError> {
    let Some(d) = wanted else { return Ok(None) };
    let i = sub.periods.iter().position(|p| p.start == d);
    i.map(Some)
        .ok_or_else(|| WebError::BadRequest(format!("no period of {} starts on {d}", sub.name)))
}

/// The indices of the collection and period `q` asks for (default: the first of each).
pub fn choose(sub: &Submitted, q: &ViewQuery) -> Result<(usize, usize), WebError> {
    if sub.collections.is_empty() || sub.periods.is_empty() || sub.tiles.is_empty() {
        return Err(WebError::Internal(format!("{} has no orders", sub.name)));
    }
    Ok((
        collection_index(sub, q.collection.as_deref())?.unwrap_or(0),
        period_index(sub, q.period)?.unwrap_or(0),
    ))
}

/// An order's name as the tracking document gives it (`cedar show`), else its key.
fn order_name(sub: &Submitted, order: &Order) -> String {
    sub.names(order)
        .map(|n| n.name)
        .unwrap_or_else(|_| crate::queue::tracking::order_key(order))
}

fn row(sub: &Submitted, index: usize, order: Order, status: OrderStatus) -> OrderRow {
    OrderRow {
        index,
        name: order_name(sub, &order),
        prefix: sub.names(&order).map(|n| n.prefix).unwrap_or_default(),
        tile: (order.row, order.col),
        period: order.period,
        collection: order.collection,
        status,
    }
}

fn failure(sub: &Submitted, g: &FailureGroup) -> Failure {
    Failure {
        message: g.message.clone(),
        count: g.count,
        examples: g
            .examples
            .iter()
            .map(|i| order_name(sub, &sub.order_at(*i)))
            .collect(),
    }
}

// --- handlers -----------------------------------------------------------------------------------

pub(super) async fn get_campaigns(State(c): State<Console>) -> Result<Json<Overview>, WebError> {
    Ok(Json(c.overview().await?))
}

pub(super) async fn get_campaign(
    State(c): State<Console>,
    Path(name): Path<String>,
) -> Result<Json<Detail>, WebError> {
    Ok(Json(c.detail(&name).await?))
}

pub(super) async fn get_view(
    State(c): State<Console>,
    Path(name): Path<String>,
    Query(q): Query<ViewQuery>,
) -> Result<Json<View>, WebError> {
    Ok(Json(c.view(&name, &q).await?))
}

pub(super) async fn get_orders(
    State(c): State<Console>,
    Path(name): Path<String>,
    Query(filter): Query<OrderFilter>,
    Query(page): Query<PageQuery>,
) -> Result<Json<OrdersPage>, WebError> {
    Ok(Json(c.orders(&name, &filter, &page).await?))
}

pub(super) async fn post_retry(
    State(c): State<Console>,
    Path(name): Path<String>,
    Query(q): Query<OrderFilter>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, WebError> {
    c.authorize(&headers)?;
    c.submission(&name).await?;
    let started = Instant::now();
    let n = crate::campaign::retry(&c.inner.ctx, &name, false, &q.subset()?)
        .await
        .map_err(|e| action_error("retry", &name, e))?;
    tracing::info!(tracking = %name, orders = n, took_ms = started.elapsed().as_millis() as u64, "the console re-queued orders");
    Ok(Json(serde_json::json!({"name": name, "requeued": n})))
}

pub(super) async fn post_cancel(
    State(c): State<Console>,
    Path(name): Path<String>,
    Query(q): Query<OrderFilter>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, WebError> {
    c.authorize(&headers)?;
    c.submission(&name).await?;
    let done = crate::campaign::cancel(&c.inner.ctx, &name, &q.subset()?)
        .await
        .map_err(|e| action_error("cancel", &name, e))?;
    tracing::info!(tracking = %name, orders = done.orders, "the console cancelled a campaign");
    Ok(Json(
        serde_json::json!({"name": name, "cancelled": done.orders, "objects_deleted": done.objects}),
    ))
}
