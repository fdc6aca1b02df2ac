//! The console's HTML pages, rendered by maud (every value escaped): the campaigns and one
//! campaign's map. They are complete without the script; `console.js` then keeps their numbers
//! and colours current from the JSON API.

use std::fmt::Write as _;

use axum::extract::{Path, Query, State};
use axum::response::Html;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::api::{Campaign, ViewQuery};
use super::map::{self, geometry, state_of};
use super::{Console, WebError};
use crate::queue::tracking::OrderState;

/// Tiles labelled on the map at most.
const MAX_LABELS: usize = 120;

/// The states in the order their bars and legends show them: finished first, waiting last.
const BAR_ORDER: [OrderState; 11] = [
    OrderState::Cleaned,
    OrderState::Empty,
    OrderState::Downloaded,
    OrderState::Succeeded,
    OrderState::Running,
    OrderState::Pending,
    OrderState::Cancelling,
    OrderState::Failed,
    OrderState::Lost,
    OrderState::Cancelled,
    OrderState::Queued,
];

fn layout(title: &str, page: &str, data: Markup, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · cedar" }
                    link rel="stylesheet" href="/static/console.css";
                    script src="/static/console.js" defer {}
                }
                body data-page=(page) {
                    (data)
                    header {
                        a.home href="/" { "cedar" }
                        span.sub { "Earth Engine export campaigns" }
                        span #updated.updated {}
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

/// `/campaigns/NAME`, with the name percent-encoded as one path segment.
pub fn campaign_href(name: &str) -> String {
    let mut out = String::from("/campaigns/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "—".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

fn eecu(s: Option<f64>) -> String {
    s.map_or_else(|| "—".to_owned(), |s| format!("{:.2} EECU-h", s / 3600.0))
}

fn rate(r: Option<f64>) -> String {
    r.map_or_else(|| "—".to_owned(), |r| format!("{r:.1}/h"))
}

/// A bar of the campaign's orders by state: one rectangle per state, in [`BAR_ORDER`].
fn bar(c: &Campaign) -> Markup {
    let total = c.total.max(1) as f64;
    let mut x = 0.0;
    let segments: Vec<(&str, f64, f64)> = BAR_ORDER
        .iter()
        .map(|s| {
            let n = c.counts.get(s.as_str()).copied().unwrap_or(0);
            let w = n as f64 * 1000.0 / total;
            x += w;
            (s.as_str(), x - w, w)
        })
        .collect();
    html! {
        svg.bar viewBox="0 0 1000 12" preserveAspectRatio="none" role="img" {
            title { (counts_text(c)) }
            @for (s, x, w) in segments {
                rect class={"st-" (s)} data-state=(s) x=(format!("{x:.1}")) y="0" width=(format!("{w:.1}")) height="12" {}
            }
        }
    }
}

fn counts_text(c: &Campaign) -> String {
    BAR_ORDER
        .iter()
        .filter_map(|s| Some(format!("{}={}", s.as_str(), c.counts.get(s.as_str())?)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `GET /`.
pub(super) async fn campaigns(State(console): State<Console>) -> Result<Html<String>, WebError> {
    let o = console.overview().await?;
    let cap =
        o.ee.admission_cap
            .map_or_else(|| "—".to_owned(), |c| c.to_string());
    let body = html! {
        section.ee {
            h2 { "Earth Engine" }
            p {
                "EE tasks active: " b data-f="ee.active" { (o.ee.active) }
                " · admission cap: " b data-f="ee.admission_cap" { (cap) }
                " · EE's queue: " b data-f="ee.ee_queue_cap" { (o.ee.ee_queue_cap) }
                " · admission paused until: " b data-f="ee.admission_paused_until" { (time(o.ee.admission_paused_until)) }
            }
        }
        section {
            h2 { "Campaigns" }
            table #campaigns {
                thead { tr {
                    th { "name" } th { "submitted" } th { "priority" } th.wide { "orders by state" }
                    th { "done" } th { "EE tasks" } th { "EECU" } th { "throughput" } th { "ETA" }
                } }
                tbody {
                    @for c in &o.campaigns {
                        tr data-name=(c.name) {
                            td { a href=(campaign_href(&c.name)) { (c.name) } }
                            td { (time(Some(c.submitted))) }
                            td { (c.priority) }
                            td.wide { (bar(c)) div.counts data-f="counts" { (counts_text(c)) } }
                            td data-f="finished" { (c.complete + c.failed) " / " (c.total) }
                            td data-f="active" { (c.active) }
                            td data-f="eecu" { (eecu(c.eecu_seconds)) }
                            td data-f="throughput" { (rate(c.throughput_per_hour)) }
                            td data-f="eta" { (if c.done { "done".to_owned() } else { time(c.eta) }) }
                        }
                    }
                }
            }
            @if o.campaigns.is_empty() { p.none { "No submissions yet." } }
        }
        @if !o.ingests.is_empty() {
            section {
                h2 { "Ingest" }
                table #ingests {
                    thead { tr { th { "entry" } th { "last period submitted" } th { "last complete" } th { "behind" } th { "failed orders" } th { "next period" } th { "due" } } }
                    tbody {
                        @for i in &o.ingests {
                            tr {
                                td { (i.name) }
                                td {
                                    @if let (Some(t), Some(p)) = (&i.last_submitted, &i.last_period) {
                                        a href=(campaign_href(t)) { (p.to_string()) }
                                    } @else { "—" }
                                }
                                td { (i.last_complete.map_or_else(|| "—".to_owned(), |p| p.to_string())) }
                                td { (i.missing) " periods" }
                                td { (i.failed_orders) }
                                td { (i.next_period.map_or_else(|| "—".to_owned(), |p| p.to_string())) }
                                td { (i.next_due.map_or_else(|| "—".to_owned(), |d| d.to_string())) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Jobs" }
            table #stages {
                thead { tr { th { "stage" } th { "backlog" } th { "due" } th { "scheduled" } th { "running" } th { "dead" } } }
                tbody {
                    @for s in &o.stages {
                        tr data-stage=(s.stage) {
                            td { (s.stage) }
                            td data-f="backlog" { (s.backlog) }
                            td data-f="due" { (s.due) }
                            td data-f="scheduled" { (s.scheduled) }
                            td data-f="leased" { (s.leased) }
                            td.dead[s.dead > 0] data-f="dead" { (s.dead) }
                        }
                    }
                }
            }
            p.hint { "Dead jobs failed every attempt; " code { "cedar retry NAME" } " re-queues their orders." }
            h2 { "Dead jobs" }
            table #dead {
                thead { tr { th { "stage" } th { "job" } th { "why" } th { "attempts" } th { "last error" } th { "at" } } }
                tbody {
                    @for d in &o.dead {
                        tr {
                            td { (d.stage) }
                            td { code { (d.id) } }
                            td { (d.reason) }
                            td { (d.attempts) }
                            td.error { (d.last_error) }
                            td { (time(d.at)) }
                        }
                    }
                }
            }
            p.hint #dead-none hidden[!o.dead.is_empty()] { "None." }
        }
    };
    Ok(layout("campaigns", "campaigns", html! {}, body))
}

/// `GET /campaigns/{name}?collection=…&period=…`.
pub(super) async fn campaign(
    State(console): State<Console>,
    Path(name): Path<String>,
    Query(q): Query<ViewQuery>,
) -> Result<Html<String>, WebError> {
    let sub = console.submission(&name).await?;
    let view = console.view(&name, &q).await?;
    let actions = console.inner.opts.actions_enabled();
    let c = &view.campaign;
    let geo = geometry(&sub.recipe.grid, &sub.tiles)
        .map_err(|e| WebError::Internal(format!("{name}: {e}")))?;
    let [vx, vy, vw, vh] = geo.view_box;
    let stroke = (vw.max(vh) / 400.0).max(f64::MIN_POSITIVE);
    let outline = console.inner.outlines.get(&sub.recipe.grid, geo.view_box);
    let data = html! {
        div #campaign hidden data-name=(name) data-collection=(view.collection)
            data-period=(view.period.start.to_string()) data-actions=(actions) {}
    };
    let body = html! {
        h1 { (name) }
        p.facts {
            "submitted " (time(Some(c.submitted))) " · priority " (c.priority)
            " · workload tag " code { (sub.workload_tag()) }
            " · grid " (sub.recipe.grid.name)
            @if let Some(i) = &c.ingest { " · ingest entry " (i) }
        }
        section.summary {
            (bar(c))
            p {
                span data-f="counts" { (counts_text(c)) }
                br;
                "finished " b data-f="finished" { (c.complete + c.failed) " / " (c.total) }
                " · EE tasks " b data-f="active" { (c.active) }
                " · EECU " b data-f="eecu" { (eecu(c.eecu_seconds)) }
                " · throughput " b data-f="throughput" { (rate(c.throughput_per_hour)) }
                " · ETA " b data-f="eta" { (if c.done { "done".to_owned() } else { time(c.eta) }) }
            }
            @if actions {
                p.actions {
                    button type="button" data-action="retry" { "Retry failed orders" }
                    " "
                    button type="button" data-action="cancel" { "Cancel campaign" }
                    " "
                    span #action-result {}
                }
            }
        }
        form.choose method="get" action=(campaign_href(&name)) {
            label { "collection " select name="collection" {
                @for col in &sub.collections {
                    option value=(col) selected[*col == view.collection] { (col) }
                }
            } }
            " "
            label { "period " select name="period" {
                @for p in &sub.periods {
                    option value=(p.start.to_string()) selected[*p == view.period] { (p.to_string()) }
                }
            } }
            " "
            button type="submit" { "show" }
        }
        div.panes {
            section.map {
                h2 { "Tiles · " (view.collection) " · " (view.period.to_string()) }
                svg #map viewBox=(format!("{vx} {vy} {vw} {vh}")) role="img" {
                    @if let Some(o) = &outline {
                        path.outline d=(o.d) transform=(format!("translate({} {}) scale({})", o.x0, o.y0, o.unit))
                            stroke-width=(stroke * 1.5 / o.unit) {}
                    }
                    path.grid d=(geo.grid_lines) stroke-width=(stroke) {}
                    @for (t, letter) in geo.tiles.iter().zip(view.map.chars()) {
                        @let state = state_of(letter).unwrap_or(OrderState::Queued).as_str();
                        rect class={"tile st-" (state)} data-state=(state) data-row=(t.row) data-col=(t.col)
                            x=(t.x) y=(t.y) width=(t.width) height=(t.height) stroke-width=(stroke) {
                            title { (t.label) " (row " (t.row) ", col " (t.col) "): " (state) }
                        }
                    }
                    // Labels while they can be read; hovering names a tile in any case.
                    @if geo.tiles.len() <= MAX_LABELS {
                        @for t in &geo.tiles {
                            text x=(t.x + t.width / 2.0) y=(t.y + t.height / 2.0) font-size=(t.width / 6.0) { (t.label) }
                        }
                    }
                }
                ul.legend {
                    @for s in BAR_ORDER {
                        li { span class={"swatch st-" (s.as_str())} {} (s.as_str()) " " span data-legend=(s.as_str()) {} }
                    }
                }
            }
            section.details {
                h2 { "Order" }
                p #details-hint.hint { "Hover or click a tile or a matrix cell." }
                dl #details {}
            }
        }
        section.matrix {
            h2 { "Tiles × " @if view.matrix.as_ref().is_some_and(|m| m.by_year) { "years" } @else { "periods" } " · " (view.collection) }
            p.hint #matrix-note {
                @if view.matrix.is_none() { "Aggregating the campaign's orders…" }
                @else if view.matrix.as_ref().is_some_and(|m| m.by_year) {
                    "More than " (map::MAX_PERIOD_COLUMNS) " periods: one column per year, each cell the year's orders rolled up (any failed, else any in progress, else any queued, else complete). Click a cell to show its first period on the map."
                }
            }
            p.hint #matrix-axes {}
            svg #matrix role="img" {}
            ol #matrix-rows.hidden-data {
                @for t in &geo.tiles { li { (t.label) } }
            }
        }
        section.failures {
            h2 { "Failures by message" }
            ul #failures {
                @if let Some(fs) = &view.failures {
                    @for f in fs {
                        li { b { (f.count) "×" } " " span.msg { (f.message) } " " span.examples { (f.examples.join(", ")) } }
                    }
                    @if fs.is_empty() { li.none { "No failed orders." } }
                }
            }
        }
    };
    Ok(layout(&name, "campaign", data, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_one_escaped_path_segment() {
        assert_eq!(campaign_href("TRACKING_a-b.c"), "/campaigns/TRACKING_a-b.c");
        assert_eq!(
            campaign_href("a/b <c>\"é"),
            "/campaigns/a%2Fb%20%3Cc%3E%22%C3%A9"
        );
    }
}
