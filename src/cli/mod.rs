//! The command line: `cedar [--config FILE] <command>`.
//!
//! Every command loads the configuration once ([`cedar::config`]) and reports bad input as one
//! clear message per problem with a non-zero exit status.

pub mod campaign;
pub mod doctor;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::NaiveDate;
use clap::{Parser, Subcommand, ValueEnum};

use cedar::config::{Config, ConfigError, Settings};
use cedar::period::{self, Frequency};

/// Runs Google Earth Engine export campaigns: tile × period pre-ARD exports, tracked,
/// downloaded, verified and cleaned.
#[derive(Debug, Parser)]
#[command(name = "cedar", version, about)]
pub struct Cli {
    /// Configuration file (TOML); without it the embedded defaults apply.
    #[arg(long, short = 'c', global = true, env = "CEDAR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate or show the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check, against the configured endpoints, everything a campaign needs: credentials and a
    /// token, the Earth Engine project, the export bucket (listed, and a probe object written,
    /// read back and deleted), the destination and the queue. One line per check; exit 0 when
    /// every check passed, 1 when any failed, 2 when the configuration is invalid.
    Doctor,
    /// Show the exact pixel grid of tiles.
    Tile {
        /// Tiles as ROW,COL (row = vertical index, col = horizontal).
        #[arg(required = true, value_parser = cedar::grid::parse_tile)]
        tiles: Vec<(u32, u32)>,
    },
    /// Show the periods a date range splits into.
    Periods {
        #[arg(long)]
        start: NaiveDate,
        #[arg(long)]
        end: NaiveDate,
        /// NYS, NQS, NMS, NW or ND (pandas aliases); omit for one period.
        #[arg(long)]
        freq: Option<Frequency>,
    },
    /// Run the Earth Engine emulator (same REST API as Google, synthetic catalogue).
    Emulator(cedar::emulator::EmulatorArgs),
    /// Run a whole small campaign on embedded defaults: in-process EE emulator, local folders.
    Demo(crate::demo::DemoArgs),
    /// Benchmarks that print their figures as ratios against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
    /// Run a campaign under every fault at once (workers killed, Redis restarted, EE errors) and check its invariants.
    Soak(crate::soak::SoakArgs),
    #[command(flatten)]
    Campaign(campaign::CampaignCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration; prints one line per problem and exits non-zero if any.
    Check,
    /// Print the effective configuration (defaults, file and environment merged) as TOML.
    Show,
}

/// Logs go to stderr at `default` level unless `CEDAR_LOG` (an env-filter) says otherwise.
fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CEDAR_LOG")
        // gcp_auth warns at each of its own retries of the metadata server; cedar says once,
        // with the fix, why no token could be had.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("{default},gcp_auth=error"))
        });
    // Colour codes only where a person reads them: a log redirected to a file stays plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn print_config_error(e: &ConfigError) {
    for p in &e.problems {
        // A value set by a CEDAR__ variable is not the file's fault: the problem names the
        // variable instead.
        if e.source_name.is_empty() || p.variable.is_some() {
            eprintln!("error: {p}");
        } else {
            eprintln!("error: {}: {p}", e.source_name);
        }
    }
}

/// What a valid configuration will still fail at later, with the fix: `config check` prints
/// these after `ok` (they do not fail the check: a file may be completed by the environment of
/// the process that runs it).
fn warnings(s: &Settings) -> Vec<String> {
    let ee = &s.config.earthengine;
    let mut out = Vec::new();
    if ee.project.is_empty() {
        out.push(
            "earthengine.project is empty: every command that talks to Earth Engine will fail; set the Cloud project registered for Earth Engine".to_owned(),
        );
    }
    let google = ee
        .endpoint
        .starts_with(cedar::earthengine::DEFAULT_ENDPOINT);
    if google && ee.credentials.is_none() {
        let adc = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS").is_some()
            || std::env::var_os("HOME").is_some_and(|h| {
                PathBuf::from(h)
                    .join(".config/gcloud/application_default_credentials.json")
                    .is_file()
            });
        if !adc {
            out.push(
                "earthengine.credentials is unset and no Application Default Credentials file was found (GOOGLE_APPLICATION_CREDENTIALS, gcloud auth application-default login): unless this runs on Google Cloud with a service account attached, calls to Google will fail; give a service-account key path".to_owned(),
            );
        }
    }
    if ee.credentials.as_deref() == Some("none") && google {
        out.push(
            "earthengine.credentials = \"none\" sends no token, which only an emulator accepts; Google will answer 401".to_owned(),
        );
    }
    out
}

fn load(cli: &Cli) -> Result<Config, ExitCode> {
    Config::load(cli.config.as_deref(), std::env::vars()).map_err(|e| {
        print_config_error(&e);
        ExitCode::from(2)
    })
}

fn settings(cli: &Cli) -> Result<Settings, ExitCode> {
    let mut config = load(cli)?;
    match &cli.command {
        Command::Campaign(campaign::CampaignCommand::Worker(flags)) => flags.apply(&mut config),
        Command::Campaign(campaign::CampaignCommand::Web(flags)) => flags.apply(&mut config),
        _ => {}
    }
    config.validate().map_err(|e| {
        print_config_error(&e);
        ExitCode::from(2)
    })
}

/// An error and its causes, each said once: the layers of the crate (and of object_store)
/// often write their source's text into their own message, and `{:#}` would then print the
/// same cause once per layer.
fn once(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if out.is_empty() {
            out = text;
        } else if !text.contains(&out) {
            out = format!("{out}: {text}");
        } else {
            // The cause says everything the message said, and more.
            out = text;
        }
    }
    out
}

/// Entry point of the binary.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo tells its own story with progress bars; logs would tear them.
    let default_level = match cli.command {
        Command::Demo(_) => "off",
        // The soak prints its own progress and verdicts; its workers log to files.
        Command::Soak(_) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", once(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Config(ConfigCommand::Check) => {
            let s = match settings(&cli) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            println!(
                "ok: grid {:?}, {} collections, exports to bucket {:?}, store {}",
                s.grid.name,
                s.collections.len(),
                s.config.export.bucket,
                cedar::queue::redact_url(&s.store_url)
            );
            for w in warnings(&s) {
                eprintln!("warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor => {
            let s = match settings(&cli) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            let source = cli.config.as_ref().map_or_else(
                || "(embedded defaults)".to_owned(),
                |p| p.display().to_string(),
            );
            Ok(doctor::run(&s, &source, &doctor::AdcEnvironment::from_env()).await)
        }
        Command::Config(ConfigCommand::Show) => {
            let mut c = match load(&cli) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            c.queue.url = cedar::queue::redact_url(&c.queue.url);
            // The console's token is a password: show that one is set, never its value.
            if c.web.token.is_some() {
                c.web.token = Some("(redacted)".into());
            }
            print!("{}", toml::to_string_pretty(&c)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Tile { tiles } => {
            let s = match load(&cli) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            // Only the grid matters here, so other sections need not be complete.
            let grid = match s.grid_settings() {
                Ok(g) => g,
                Err(e) => {
                    print_config_error(&e);
                    return Ok(ExitCode::from(2));
                }
            };
            for (row, col) in tiles {
                match grid.tile(*row, *col) {
                    Ok(t) => println!(
                        "{} row {row} col {col}: bounds [{}, {}, {}, {}] transform {:?} dimensions {}",
                        t.label(),
                        t.bounds.left,
                        t.bounds.bottom,
                        t.bounds.right,
                        t.bounds.top,
                        t.transform.to_array(),
                        t.dimensions()
                    ),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Ok(ExitCode::from(2));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Periods { start, end, freq } => match period::periods(*start, *end, *freq) {
            Ok(p) => {
                if let Some(d) = p.dropped {
                    tracing::warn!(
                        "the partial first period {d} is dropped: periods are anchored to the frequency; start on a period boundary to include it"
                    );
                }
                for x in &p.periods {
                    println!("{} {}", x.start, x.end);
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Campaign(cmd) if cmd.reads_only_the_queue() => {
            let config = match load(&cli) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            if let Err(e) = config.validate_queue() {
                print_config_error(&e);
                return Ok(ExitCode::from(2));
            }
            campaign::run_read_only(&config, cmd).await
        }
        Command::Campaign(cmd) => {
            let s = match settings(&cli) {
                Ok(s) => s,
                Err(code) => return Ok(code),
            };
            campaign::run(s, cmd).await
        }
        Command::Demo(args) => {
            crate::demo::run(args.clone()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(cmd) => {
            crate::bench::run(cmd.clone()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Soak(args) => crate::soak::run(args.clone()).await,
        Command::Emulator(args) => {
            cedar::emulator::run(args.clone()).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_says_each_cause_once() {
        let inner = std::io::Error::other("Unable to open file /x: Not a directory");
        let e = anyhow::Error::new(inner)
            .context("writing the tracking document: Unable to open file /x: Not a directory")
            .context("submit failed");
        assert_eq!(
            once(&e),
            "submit failed: writing the tracking document: Unable to open file /x: Not a directory"
        );
        let e = anyhow::anyhow!("queue.url redis://h: connection refused");
        assert_eq!(once(&e), "queue.url redis://h: connection refused");
    }
}
