//! `cedar emulator`: runs the emulator as a standalone server until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::prefix::PrefixStore;
use url::Url;

use super::{DuplicateRequest, EmulatorError, EmulatorOptions, start};

/// Options of `cedar emulator`. Every option defaults to [`EmulatorOptions::default`].
#[derive(Debug, Clone, clap::Args)]
pub struct EmulatorArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// The bucket root exports are written to, e.g. `file:///tmp/bucket` or `memory://`.
    #[arg(long)]
    pub store: String,
    /// Serve only this project (default: any).
    #[arg(long)]
    pub project: Option<String>,
    /// Fail exports that name another bucket (default: accept any).
    #[arg(long)]
    pub bucket: Option<String>,
    /// Emulated seconds an export runs.
    #[arg(long, default_value_t = 1.0)]
    pub task_seconds: f64,
    /// Draw each export's duration uniformly between --task-seconds and this.
    #[arg(long)]
    pub task_seconds_max: Option<f64>,
    /// Tasks of other pipelines kept queued in the project (they take run slots and queue
    /// places).
    #[arg(long, default_value_t = 0)]
    pub other_tasks: usize,
    /// Emulated seconds per real second.
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Fraction of exports that fail ("Computation timed out.").
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Let resubmissions of a failed description fail again at `fail_rate`.
    #[arg(long)]
    pub fail_repeats: bool,
    /// Fraction of API requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    pub throttle_rate: f64,
    /// Fraction of API requests answered 503.
    #[arg(long, default_value_t = 0.0)]
    pub unavailable_rate: f64,
    /// Seed of the catalogue, faults and ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Exports RUNNING at once per project.
    #[arg(long, default_value_t = 2)]
    pub max_concurrent_exports: u32,
    /// Queued (PENDING or RUNNING) exports beyond which submission is refused.
    #[arg(long, default_value_t = 3000)]
    pub queue_limit: usize,
    /// Require bearer tokens issued by `POST /token`.
    #[arg(long)]
    pub require_auth: bool,
    /// Lifetime of issued tokens, in seconds.
    #[arg(long, default_value_t = 3599)]
    pub token_expires_in_secs: u64,
    /// Revoke each issued token after this many requests (0: never), answering 401.
    #[arg(long, default_value_t = 0)]
    pub token_revoke_after_uses: u64,
    /// Revoke each issued token this many milliseconds after issuing it (0: never).
    #[arg(long, default_value_t = 0)]
    pub token_revoke_after_ms: u64,
    /// Answer to a repeated requestId.
    #[arg(long, value_enum, default_value_t = DuplicateRequest::ReturnExisting)]
    pub duplicate_request: DuplicateRequest,
    /// Name operations in operations.list/get with this project number (needs --project).
    #[arg(long)]
    pub project_number: Option<u64>,
    /// Leave operations that ended more than this many emulated seconds ago out of
    /// operations.list.
    #[arg(long)]
    pub list_retention_secs: Option<f64>,
    /// Answer GET /v1alpha/projects/{p}/config with 404, as an API without v1alpha.
    #[arg(long)]
    pub no_v1alpha: bool,
}

impl EmulatorArgs {
    /// The emulator options these arguments describe.
    pub fn options(&self) -> EmulatorOptions {
        EmulatorOptions {
            project: self.project.clone(),
            bucket: self.bucket.clone(),
            task_seconds: self.task_seconds,
            task_seconds_max: self.task_seconds_max,
            other_tasks: self.other_tasks,
            time_scale: self.time_scale,
            fail_rate: self.fail_rate,
            fail_repeats: self.fail_repeats,
            throttle_rate: self.throttle_rate,
            unavailable_rate: self.unavailable_rate,
            seed: self.seed,
            max_concurrent_exports: self.max_concurrent_exports,
            queue_limit: self.queue_limit,
            require_auth: self.require_auth,
            token_expires_in_secs: self.token_expires_in_secs,
            token_revoke_after_uses: self.token_revoke_after_uses,
            token_revoke_after_ms: self.token_revoke_after_ms,
            duplicate_request: self.duplicate_request,
            project_number: self.project_number,
            list_retention_secs: self.list_retention_secs,
            serve_v1alpha: !self.no_v1alpha,
            token_audience: None,
        }
    }
}

/// Opens the store named by a URL (`file:///…`, `memory://`, …) as a bucket root.
pub fn open_store(url: &str) -> Result<Arc<dyn ObjectStore>, EmulatorError> {
    let error = |source| EmulatorError::StoreUrl {
        url: url.to_owned(),
        source,
    };
    let parsed = Url::parse(url).map_err(|e| {
        error(object_store::Error::Generic {
            store: "url",
            source: Box::new(e),
        })
    })?;
    if parsed.scheme() == "file" {
        // The local store refuses to write below a directory that does not exist yet.
        std::fs::create_dir_all(parsed.path())?;
    }
    let (store, prefix) = object_store::parse_url(&parsed).map_err(error)?;
    let store: Arc<dyn ObjectStore> = Arc::from(store);
    Ok(if prefix.as_ref().is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    })
}

/// Runs the emulator until Ctrl-C or SIGTERM, printing its URL first.
pub async fn run(args: EmulatorArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store)?;
    let emulator = start(args.listen, store, args.options()).await?;
    println!("{}", emulator.url());
    shutdown_signal().await;
    emulator.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulatorArgs,
    }

    #[test]
    fn defaults_match_the_options_defaults() {
        let cli = Cli::parse_from(["cedar", "--store", "memory://"]);
        let options = cli.args.options();
        let defaults = EmulatorOptions::default();
        assert_eq!(cli.args.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(
            options.max_concurrent_exports,
            defaults.max_concurrent_exports
        );
        assert_eq!(options.queue_limit, defaults.queue_limit);
        assert_eq!(options.duplicate_request, defaults.duplicate_request);
    }

    #[test]
    fn store_urls_open() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/bucket", dir.path().display());
        assert!(open_store(&url).is_ok());
        assert!(dir.path().join("bucket").is_dir());
        assert!(open_store("memory://").is_ok());
        assert!(open_store("not a url").is_err());
    }
}
