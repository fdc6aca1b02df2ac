//! `cedar bench enqueue`: submit throughput — plan, record and enqueue N jobs — against
//! `redis-benchmark` LPUSH -P 64 on the same Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use cedar::jobs::JobSettings;
use cedar::queue::Stage;
use cedar::submit;

use super::{RedisArgs, Scratch, Table, campaign, describe, pct, secs, verdict};

/// Options of `cedar bench enqueue`.
#[derive(Debug, Clone, clap::Args)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Jobs (tile-periods) to submit.
    #[arg(long, default_value_t = 100_000)]
    pub jobs: u64,
}

/// Runs the bench in a Redis namespace of its own and deletes it afterwards.
pub(super) async fn run(a: EnqueueArgs) -> anyhow::Result<()> {
    let bench = Scratch::new(&a.redis.redis)?;
    let result = enqueue_in(&bench, &a).await;
    bench.cleanup().await;
    result
}

async fn enqueue_in(bench: &Scratch, a: &EnqueueArgs) -> anyhow::Result<()> {
    // Same jobs, same Redis, same moment: the baseline is what this Redis does for the simplest
    // pipelined write, so the ratio says how much of it cedar's bookkeeping keeps.
    let lpush_before = lpush_baseline(&bench.redis, &bench.key("lpush"), a.jobs).await?;

    let settings = bench.settings(None)?;
    let ctx =
        cedar::jobs::Context::connect(Arc::new(settings.clone()), JobSettings::default()).await?;
    let req = campaign(&settings, a.jobs)?;
    let started = Instant::now();
    let plan = submit::plan(&settings, &req, chrono::Utc::now())?;
    let planned = started.elapsed();
    let added = submit::enqueue(&ctx, &plan).await?;
    let submitted = started.elapsed();
    anyhow::ensure!(
        added == plan.submission.order_count() as u64,
        "enqueued {added} of {} jobs",
        plan.submission.order_count()
    );
    let depth = ctx.queue.depth(Stage::Export).await?;

    // The queue alone, without recording the orders: the same jobs into a second namespace.
    let jobs: Vec<_> = plan
        .submission
        .orders()
        .map(|o| cedar::jobs::job_for(&plan.submission.name, &o, None))
        .collect();
    let queue_only = cedar::queue::Queue::open(&bench.redis, &bench.sub("q")).await?;
    let bulk_started = Instant::now();
    let mut bulk_added = 0;
    for chunk in jobs.chunks(20_000) {
        bulk_added += queue_only
            .enqueue_bulk(Stage::Export, chunk, Duration::ZERO)
            .await?;
    }
    let bulk = bulk_started.elapsed();
    anyhow::ensure!(bulk_added == added, "enqueue_bulk added {bulk_added}");
    let lpush_after = lpush_baseline(&bench.redis, &bench.key("lpush"), a.jobs).await?;
    // The better of two baseline runs: other users of the Redis can only slow it down, and a
    // slowed baseline would flatter the ratio.
    let lpush = lpush_before.max(lpush_after);

    let n = added as f64;
    let rate = |d: Duration| n / d.as_secs_f64();
    println!(
        "cedar bench enqueue: {added} jobs ({}), Redis {}",
        describe(&plan),
        cedar::queue::redact_url(&bench.redis)
    );
    println!("export backlog after submit: {}", depth.backlog);
    let mut t = Table::new(["measure", "seconds", "jobs/s", "÷ baseline", "target"]);
    t.row([
        "baseline: redis-benchmark LPUSH -P 64 (ops/s)".into(),
        "".into(),
        format!("{lpush:.0}"),
        "1".into(),
        format!("best of {lpush_before:.0}, {lpush_after:.0}"),
    ]);
    t.row([
        "submit::plan (validate, render names)".into(),
        secs(planned),
        format!("{:.0}", rate(planned)),
        pct(rate(planned) / lpush),
        "".into(),
    ]);
    t.row([
        "submit::enqueue (record, publish, enqueue)".into(),
        secs(submitted - planned),
        format!("{:.0}", rate(submitted - planned)),
        pct(rate(submitted - planned) / lpush),
        "".into(),
    ]);
    let ratio = rate(submitted) / lpush;
    t.row([
        "plan + enqueue (what `cedar submit` does)".into(),
        secs(submitted),
        format!("{:.0}", rate(submitted)),
        pct(ratio),
        verdict(ratio >= 0.25, "≥ 25%"),
    ]);
    t.row([
        "Queue::enqueue_bulk alone".into(),
        secs(bulk),
        format!("{:.0}", rate(bulk)),
        pct(rate(bulk) / lpush),
        "".into(),
    ]);
    t.print();
    Ok(())
}

/// Runs `redis-benchmark -P 64 -n N -q LPUSH key xxx` (the `-t lpush` test on a key of this
/// bench's namespace, so the cleanup removes it) and returns its requests per second.
async fn lpush_baseline(redis: &str, key: &str, n: u64) -> anyhow::Result<f64> {
    let out = tokio::process::Command::new("redis-benchmark")
        .args(["-u", redis, "-P", "64", "-n", &n.to_string(), "-q"])
        .args(["LPUSH", key, "xxx"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running redis-benchmark (it ships with redis-tools / redis-server)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "redis-benchmark failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_requests_per_second(&text)
        .with_context(|| format!("no \"requests per second\" in redis-benchmark output {text:?}"))
}

/// The figure of `…: 488585.34 requests per second, p50=…`; progress lines before it are
/// separated by carriage returns.
fn parse_requests_per_second(text: &str) -> Option<f64> {
    text.split(['\r', '\n']).rev().find_map(|line| {
        let (before, _) = line.split_once(" requests per second")?;
        before.split_whitespace().next_back()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_benchmark_output() {
        let out = "LPUSH k xxx: rps=0.0 (overall: 0.0) avg_msec=-nan (overall: -nan)\r\
                   LPUSH k:lpush xxx: 488585.34 requests per second, p50=4.735 msec\n";
        assert_eq!(parse_requests_per_second(out), Some(488585.34));
        assert_eq!(parse_requests_per_second("nothing"), None);
    }
}
