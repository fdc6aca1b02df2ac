//! EECU: the compute EE bills for each ended task (`batchEecuUsageSeconds`), and the optional
//! budget that pauses admission when the project has used too much of it.
//!
//! Poll records each ended task's use on its order and, once per EE operation, in the queue's
//! rolling window ([`crate::queue::eecu`]), before the task's admission slot is freed. With
//! `[limits] eecu_hours_per_day` set, [`check`] compares the window's use with the budget:
//! at or over it, it sets [`Figure::Paused`] to the moment enough old use leaves the window,
//! and admission ([`crate::queue::Queue::admit`]) starts nothing until then; back under, it
//! clears the pause. Poll checks after each use it records (so the pause comes before the next
//! admission), and every worker checks on a short timer ([`budget_loop`]), since nothing else
//! happens while admission is paused.

use std::time::Duration;

use tokio::sync::watch;

use super::{Context, JobError};
use crate::config::LimitsConfig;
use crate::queue::{EecuUse, Figure, OrderJob};

/// The EECU budget as configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EecuBudget {
    /// EECU-seconds ended tasks may use per window; `None`: no budget.
    pub seconds: Option<f64>,
    /// The rolling window the use is measured over (default a day).
    pub window: Duration,
}

impl EecuBudget {
    /// `[limits] eecu_hours_per_day` over `[limits] eecu_window_secs`.
    pub fn from_config(limits: &LimitsConfig) -> EecuBudget {
        EecuBudget {
            seconds: limits.eecu_hours_per_day.map(|h| h * 3600.0),
            window: Duration::from_secs(limits.eecu_window_secs.max(1)),
        }
    }

    /// How often workers look at the budget: a bucket of the window (an hour for a day), at
    /// least every 30 s and at most every 250 ms.
    pub fn check_every(&self) -> Duration {
        (self.window / crate::queue::eecu::BUCKETS as u32)
            .clamp(Duration::from_millis(250), Duration::from_secs(30))
    }
}

/// Records the EECU-seconds the ended task of `job` used: in the window and in
/// `cedar_eecu_seconds_total` once per operation, then checks the budget.
pub async fn record(
    ctx: &Context,
    job: &OrderJob,
    operation: &str,
    seconds: f64,
) -> Result<(), JobError> {
    let budget = ctx.jobs.eecu;
    if ctx
        .queue
        .record_eecu(operation, seconds, budget.window)
        .await?
    {
        crate::metrics::eecu_used(&job.collection, seconds);
        check(ctx).await?;
    }
    Ok(())
}

/// Compares the window's use with the budget and pauses or resumes admission; returns the use.
pub async fn check(ctx: &Context) -> Result<EecuUse, JobError> {
    let budget = ctx.jobs.eecu;
    let q = &ctx.queue;
    let used = q.eecu_use(budget.window).await?;
    let until = budget
        .seconds
        .and_then(|b| used.over_until(b, budget.window));
    let paused = q.figure(Figure::Paused).await?;
    match until {
        Some(until) if paused != Some(until as i64) => {
            q.set_figure(Figure::Paused, Some(until as i64)).await?;
            if paused.is_none() {
                tracing::warn!(
                    used_seconds = used.seconds(),
                    budget_seconds = budget.seconds,
                    until_ms = until,
                    "the EECU budget is spent: admission is paused until enough use leaves the window"
                );
            }
        }
        None if paused.is_some() => {
            q.set_figure(Figure::Paused, None).await?;
            tracing::info!(
                used_seconds = used.seconds(),
                "EECU use is back under the budget: admission resumes"
            );
        }
        _ => {}
    }
    crate::metrics::eecu_budget(used.seconds(), budget.seconds, until.is_some());
    Ok(used)
}

/// Checks the budget every [`EecuBudget::check_every`] until `stop`: the pause ends when the
/// window moves on, whether or not any task ends meanwhile.
pub async fn budget_loop(ctx: Context, mut stop: watch::Receiver<bool>) {
    let every = ctx.jobs.eecu.check_every();
    loop {
        if let Err(e) = check(&ctx).await {
            tracing::warn!(error = %e, "checking the EECU budget failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_read_in_eecu_seconds_and_checked_once_per_bucket() {
        let day = EecuBudget::from_config(&LimitsConfig {
            eecu_hours_per_day: Some(2.5),
            ..LimitsConfig::default()
        });
        assert_eq!(day.seconds, Some(9000.0));
        assert_eq!(day.window, Duration::from_secs(86_400));
        assert_eq!(day.check_every(), Duration::from_secs(30));
        let short = EecuBudget {
            seconds: None,
            window: Duration::from_secs(12),
        };
        assert_eq!(short.check_every(), Duration::from_millis(500));
        assert_eq!(
            EecuBudget::from_config(&LimitsConfig::default()).seconds,
            None
        );
    }
}
