//! `cedar bench web`: the web console at archive size (726 tiles × 480 monthly periods × 4
//! Landsat collections, 1.39 million orders, a few thousand of them moved on). The campaign
//! page, `/` and the campaign's view (map, matrix and failures, once the background digest has
//! walked the orders) are each timed against the same request for a one-order campaign on the
//! same console, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use cedar::emulator::{EmulatorOptions, RunningEmulator};
use cedar::jobs::JobSettings;
use cedar::queue::tracking::{OrderState, OrderStatus, Submission};
use cedar::submit;
use cedar::web::{Console, ConsoleOptions, campaign_href};

use super::scale::{ArchiveArgs, one_order};
use super::{RedisArgs, Scratch, Table, verdict, with_emulator};

/// Options of `cedar bench web`.
#[derive(Debug, Clone, clap::Args)]
pub struct WebArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub archive: ArchiveArgs,
    /// Orders moved on from QUEUED (cleaned, failed with one of 7 messages, running).
    #[arg(long, default_value_t = 3000)]
    pub moved: usize,
    /// Requests per figure; the best is kept.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
}

pub(super) async fn run(a: WebArgs) -> anyhow::Result<()> {
    with_emulator(
        &a.redis.redis,
        EmulatorOptions::default(),
        async |bench, emulator| web_in(bench, emulator, &a).await,
    )
    .await
}

/// One page's figure: its best time over the repeats, and its size.
struct Fetched {
    best: Duration,
    bytes: usize,
}

/// GETs `url` `n` times; the best time and the body's size. Anything but 200 is an error.
async fn fetch(client: &reqwest::Client, url: &str, n: usize) -> anyhow::Result<Fetched> {
    let mut best = Duration::MAX;
    let mut bytes = 0;
    for _ in 0..n.max(1) {
        let started = Instant::now();
        let r = client.get(url).send().await?;
        let status = r.status();
        let body = r.bytes().await?;
        let took = started.elapsed();
        anyhow::ensure!(status.is_success(), "GET {url}: {status}");
        best = best.min(took);
        bytes = body.len();
    }
    Ok(Fetched { best, bytes })
}

async fn web_in(bench: &Scratch, emulator: &RunningEmulator, a: &WebArgs) -> anyhow::Result<()> {
    let settings = Arc::new(bench.settings(Some(emulator))?);
    let ctx = cedar::jobs::Context::connect(settings.clone(), JobSettings::default()).await?;
    let (req, all_tiles) = a.archive.request(&settings)?;
    // The baseline campaign: one order.
    let small = one_order(&all_tiles, "bench-web-one-order")?;
    let one = submit::plan(&settings, &small, chrono::Utc::now())?.submission;
    ctx.tracker.create(&one).await?;

    let console = Console::new(ctx.clone(), ConsoleOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(cedar::web::serve(listener, console, stopped));
    let result = measure(&ctx, &settings, &base, &one, &req, a).await;
    let _ = stop.send(true);
    let _ = server.await;
    result
}

async fn measure(
    ctx: &cedar::jobs::Context,
    settings: &cedar::config::Settings,
    base: &str,
    one: &Submission,
    req: &cedar::submit::Request,
    a: &WebArgs,
) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let view_of = |sub: &Submission| {
        format!(
            "{base}/api/v1{}/view?collection={}&period={}",
            campaign_href(&sub.name),
            sub.collections[0].replace('/', "%2F"),
            sub.periods[sub.periods.len() / 2].start
        )
    };
    // Baselines: the one-order campaign alone. Its digest is walked while the page is served.
    let small_page = fetch(
        &client,
        &format!("{base}{}", campaign_href(&one.name)),
        a.repeat,
    )
    .await?;
    let small_home = fetch(&client, &format!("{base}/"), a.repeat).await?;
    wait_for_digest(&client, &view_of(one), Duration::from_secs(30)).await?;
    let small_view = fetch(&client, &view_of(one), a.repeat).await?;

    // The archive, recorded (the console reads the tracking state, not the queue), with
    // `moved` orders spread over it moved on.
    let started = Instant::now();
    let sub = submit::plan(settings, req, chrono::Utc::now())?.submission;
    ctx.tracker.create(&sub).await?;
    let orders = sub.order_count();
    let step = (orders / a.moved.max(1)).max(1);
    let moved: Vec<_> = sub
        .orders()
        .step_by(step)
        .take(a.moved)
        .enumerate()
        .map(|(i, order)| {
            let state = [OrderState::Cleaned, OrderState::Failed, OrderState::Running][i % 3];
            let status = OrderStatus {
                error: (state == OrderState::Failed).then(|| format!("EE error {}", i % 7)),
                operation: Some(format!("projects/cedar-bench/operations/OP{i}")),
                ..OrderStatus::new(state)
            };
            (order, status)
        })
        .collect();
    for chunk in moved.chunks(1000) {
        ctx.tracker.set_many(&sub.name, chunk, false).await?;
    }
    eprintln!(
        "recorded {orders} orders ({} moved on) in {:.1} s; timing the console",
        moved.len(),
        started.elapsed().as_secs_f64()
    );

    // The first page asks for the digest, which is walked in the background from then on.
    let started = Instant::now();
    let page = fetch(
        &client,
        &format!("{base}{}", campaign_href(&sub.name)),
        a.repeat,
    )
    .await?;
    let home = fetch(&client, &format!("{base}/"), a.repeat).await?;
    let first_view = fetch(&client, &view_of(&sub), 1).await?;
    let walked = wait_for_digest(&client, &view_of(&sub), Duration::from_secs(600)).await?;
    let digest = started.elapsed();
    let view = fetch(&client, &view_of(&sub), a.repeat).await?;
    let page_after = fetch(
        &client,
        &format!("{base}{}", campaign_href(&sub.name)),
        a.repeat,
    )
    .await?;

    println!(
        "cedar bench web: the console on one archive campaign of {orders} orders ({} collections x {} tiles x {} months, {} moved on) beside a one-order campaign; best of {} requests each",
        sub.collections.len(),
        sub.tiles.len(),
        a.archive.months,
        moved.len(),
        a.repeat
    );
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    let kb = |b: usize| format!("{:.1}", b as f64 / 1000.0);
    let ratio =
        |x: Duration, y: Duration| format!("{:.2}", x.as_secs_f64() / y.as_secs_f64().max(1e-9));
    let mut t = Table::new([
        "request",
        "archive ms",
        "archive KB",
        "one-order ms",
        "one-order KB",
        "time ÷ baseline",
        "target",
    ]);
    let target = |f: &Fetched| {
        verdict(
            f.bytes < 1 << 20 && f.best < Duration::from_secs(1),
            "< 1 MB, < 1 s",
        )
    };
    let rows = [
        ("campaign page", &page, &small_page),
        ("campaign page, digest walked", &page_after, &small_page),
        ("/ (every campaign)", &home, &small_home),
        ("view JSON (map, matrix, failures)", &view, &small_view),
    ];
    for (what, f, b) in rows {
        t.row([
            what.to_string(),
            ms(f.best),
            kb(f.bytes),
            ms(b.best),
            kb(b.bytes),
            ratio(f.best, b.best),
            target(f),
        ]);
    }
    t.print();
    println!(
        "first view before the digest: {} ms, {} KB (map only); the background digest, asked for by the first page, walked every order within {:.1} s of it{}",
        ms(first_view.best),
        kb(first_view.bytes),
        digest.as_secs_f64(),
        if walked { "" } else { " (not yet done)" }
    );
    Ok(())
}

/// Polls `view` until it carries the digest (a matrix); false when `limit` passed first.
async fn wait_for_digest(
    client: &reqwest::Client,
    view: &str,
    limit: Duration,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    while started.elapsed() < limit {
        let v: serde_json::Value = client
            .get(view)
            .send()
            .await?
            .json()
            .await
            .with_context(|| format!("GET {view}"))?;
        if v["matrix"].is_object() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
}
