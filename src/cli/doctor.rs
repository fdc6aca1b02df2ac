//! `cedar doctor`: whether a campaign can run here, checked against the configured endpoints
//! before anything is submitted — the credentials and a token, the Earth Engine project, the
//! export bucket, the destination and the queue.
//!
//! Each check prints one line as soon as it is known, `ok   {check}: {what was found}` or
//! `FAIL {check}: {cause}; {fix}`, and every check runs whatever failed before it, so one run
//! shows everything that is wrong. Nothing is left behind: the probe objects and files get
//! names of their own (process id and 64 random bits) and are deleted, and an SQLite queue that
//! does not exist yet is not created.
//!
//! Exit status: 0 when every check passed, 1 when any failed; 2, as for every command, when the
//! configuration itself is invalid (nothing is then checked).

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use cedar::auth::{self, ApplicationDefault, ServiceAccount, TokenSource};
use cedar::config::Settings;
use cedar::earthengine::{ConcurrencySource, DEFAULT_ENDPOINT, EarthEngine, EeError};
use cedar::queue::{Connection, Queue, QueueUrl, redact_url};
use cedar::store::{Destination, Expected, StoreError, open_bucket};
use cedar::worker::{WorkerOptions, admission_cap};

/// How long one check may take before it counts as failed: longer than the EE client's connect
/// timeout (10 s) and the token request's (30 s), so that their own, clearer errors come first.
/// 90 s.
const CHECK_TIMEOUT: Duration = Duration::from_secs(90);

/// What one check found.
enum Verdict {
    Ok(String),
    Fail { cause: String, fix: String },
}

fn fail(cause: impl Display, fix: impl Into<String>) -> Verdict {
    Verdict::Fail {
        cause: cause.to_string(),
        fix: fix.into(),
    }
}

/// The lines printed so far and whether any failed.
#[derive(Default)]
struct Report {
    failed: usize,
}

impl Report {
    /// Runs `check` (at most [`CHECK_TIMEOUT`]; `slow` is the fix when it takes longer) and
    /// prints its line.
    async fn check(&mut self, name: &str, slow: &str, check: impl Future<Output = Verdict>) {
        let verdict = tokio::time::timeout(CHECK_TIMEOUT, check)
            .await
            .unwrap_or_else(|_| {
                fail(
                    format!("no answer within {} s", CHECK_TIMEOUT.as_secs()),
                    slow,
                )
            });
        // One line per check, whatever the causes' own text holds.
        let line = |text: String| text.split_whitespace().collect::<Vec<_>>().join(" ");
        match verdict {
            Verdict::Ok(what) => println!("ok   {name}: {}", line(what)),
            Verdict::Fail { cause, fix } => {
                self.failed += 1;
                println!("FAIL {name}: {}; {}", line(cause), line(fix));
            }
        }
    }
}

/// Where Application Default Credentials would come from, as the environment says
/// (`GOOGLE_APPLICATION_CREDENTIALS`, `HOME`); read by the front end, not deeper.
pub struct AdcEnvironment {
    pub google_application_credentials: Option<PathBuf>,
    pub home: Option<PathBuf>,
}

impl AdcEnvironment {
    pub fn from_env() -> AdcEnvironment {
        AdcEnvironment {
            google_application_credentials: std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }
}

/// The token source the configuration gives, and who it speaks for (for the fixes).
struct Credential {
    tokens: Arc<dyn TokenSource>,
    /// "the service account a@b", "the account of these credentials", …
    who: String,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `credentials = "none"`.
    NoToken,
    ServiceAccount,
    ApplicationDefault,
}

/// Runs every check against `settings` (loaded from `source`) and prints one line each.
pub async fn run(settings: &Settings, source: &str, adc: &AdcEnvironment) -> ExitCode {
    let mut report = Report::default();
    let cfg = &settings.config;
    println!(
        "ok   config: {source}: valid; Earth Engine {} project {:?}, bucket {}, destination {}, queue {}",
        cfg.earthengine.endpoint,
        cfg.earthengine.project,
        redact_url(&settings.store_url),
        redact_url(&cfg.download.dest),
        redact_url(&cfg.queue.url),
    );

    let (found, credential) = credentials(settings, adc);
    report
        .check("credentials", "check [earthengine] credentials", async {
            found
        })
        .await;
    report
        .check(
            "token",
            "check that this machine reaches the token endpoint (oauth2.googleapis.com, or the metadata server on Google Cloud)",
            token(&credential),
        )
        .await;
    let ee = &cfg.earthengine;
    report
        .check(
            "earthengine",
            &format!(
                "check that [earthengine] endpoint = {:?} is reachable from here (proxy, firewall)",
                ee.endpoint
            ),
            earthengine(settings, &credential),
        )
        .await;
    let probe = probe_name();
    let store_slow = "check that the storage endpoint ([store] endpoint, STORAGE_EMULATOR_HOST, else storage.googleapis.com) is reachable from here";
    report
        .check("bucket", store_slow, bucket_list(settings, &credential))
        .await;
    report
        .check(
            "bucket write",
            store_slow,
            bucket_write(settings, &credential, &probe),
        )
        .await;
    report
        .check(
            "destination",
            "check that [download] dest is reachable from here",
            destination(settings, &probe),
        )
        .await;
    report
        .check(
            "queue",
            "check that the Redis server of [queue] url is reachable from here",
            queue(settings),
        )
        .await;
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A name no other run (of doctor or anything else) uses: `.cedar-doctor-{pid}-{64 random bits}`.
fn probe_name() -> String {
    format!(
        ".cedar-doctor-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    )
}

/// Which credentials the configuration names, and whether they can be read.
fn credentials(settings: &Settings, adc: &AdcEnvironment) -> (Verdict, Credential) {
    let ee = &settings.config.earthengine;
    let google = ee.endpoint.starts_with(DEFAULT_ENDPOINT);
    match ee.credentials.as_deref().map(str::trim) {
        Some("none") => {
            let verdict = if google {
                fail(
                    "credentials = \"none\" sends no token, and Google answers every call without one with 401",
                    "set [earthengine] credentials to a service-account key path, or remove the key to use Application Default Credentials",
                )
            } else {
                Verdict::Ok(format!(
                    "none: no token is sent, as an emulator at {} expects",
                    ee.endpoint
                ))
            };
            let credential = Credential {
                tokens: Arc::new(auth::NoAuth),
                who: "this unauthenticated client".to_owned(),
                kind: Kind::NoToken,
            };
            (verdict, credential)
        }
        Some(path) => match ServiceAccount::from_file(path, &ee.scopes) {
            Ok(key) => {
                let email = key.client_email().to_owned();
                (
                    Verdict::Ok(format!("service-account key {path} for {email}")),
                    Credential {
                        tokens: Arc::new(key),
                        who: format!("the service account {email}"),
                        kind: Kind::ServiceAccount,
                    },
                )
            }
            Err(e) => (
                fail(
                    e,
                    "set [earthengine] credentials to a service-account JSON key (IAM → Service accounts → Keys), or remove it to use Application Default Credentials",
                ),
                Credential {
                    tokens: Arc::new(auth::NoAuth),
                    who: "the service account".to_owned(),
                    kind: Kind::ServiceAccount,
                },
            ),
        },
        None => {
            let (verdict, who) = application_default(adc);
            (
                verdict,
                Credential {
                    tokens: Arc::new(ApplicationDefault::new(&ee.scopes)),
                    who,
                    kind: Kind::ApplicationDefault,
                },
            )
        }
    }
}

/// Where Application Default Credentials will come from, in the order Google's libraries (and
/// gcp_auth) look: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's file, then the metadata server or
/// the `gcloud` command, which only asking can tell.
fn application_default(adc: &AdcEnvironment) -> (Verdict, String) {
    let described = |what: &str, path: &Path| -> Result<(String, String), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{what} {}: cannot read: {e}", path.display()))?;
        let doc: serde_json::Value = serde_json::from_str(&text)
            .map_err(|_| format!("{what} {}: not JSON", path.display()))?;
        let field = |k: &str| doc.get(k).and_then(|v| v.as_str()).unwrap_or_default();
        Ok(match field("type") {
            "service_account" => (
                format!("a service-account key for {}", field("client_email")),
                format!("the service account {}", field("client_email")),
            ),
            "authorized_user" => (
                "user credentials (gcloud auth application-default login)".to_owned(),
                "the user who logged in with gcloud".to_owned(),
            ),
            "" => (
                "a file without a \"type\"".to_owned(),
                "its account".to_owned(),
            ),
            other => (
                format!("a {other:?} credential"),
                "the account of these credentials".to_owned(),
            ),
        })
    };
    if let Some(path) = &adc.google_application_credentials {
        return match described("GOOGLE_APPLICATION_CREDENTIALS", path) {
            Ok((what, who)) => (
                Verdict::Ok(format!(
                    "Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS={}, {what}",
                    path.display()
                )),
                who,
            ),
            Err(cause) => (
                fail(
                    cause,
                    "point GOOGLE_APPLICATION_CREDENTIALS at a service-account JSON key, or unset it",
                ),
                "the account of these credentials".to_owned(),
            ),
        };
    }
    let gcloud = adc
        .home
        .as_ref()
        .map(|h| h.join(".config/gcloud/application_default_credentials.json"))
        .filter(|p| p.is_file());
    if let Some(path) = gcloud {
        return match described("gcloud's file", &path) {
            Ok((what, who)) => (
                Verdict::Ok(format!(
                    "Application Default Credentials: {}, {what}",
                    path.display()
                )),
                who,
            ),
            Err(cause) => (
                fail(cause, "run `gcloud auth application-default login` again"),
                "the user who logged in with gcloud".to_owned(),
            ),
        };
    }
    (
        Verdict::Ok(
            "Application Default Credentials: no key file (GOOGLE_APPLICATION_CREDENTIALS, gcloud's application_default_credentials.json); the metadata server (on Google Cloud) or the gcloud command will be asked for a token"
                .to_owned(),
        ),
        "the account of the machine (its attached service account)".to_owned(),
    )
}

/// The token every Earth Engine and Cloud Storage call carries, for `[earthengine] scopes`.
/// Google's token endpoint answers a service account's request with the token alone (no
/// `scope`), and the metadata server likewise, so the scopes named are those asked; a scope the
/// account cannot use shows as a 403 below.
async fn token(credential: &Credential) -> Verdict {
    if credential.kind == Kind::NoToken {
        return Verdict::Ok("none asked: no Authorization header is sent".to_owned());
    }
    let scopes = credential.tokens.scopes();
    if let Err(e) = credential.tokens.bearer().await {
        let fix = match credential.kind {
            Kind::ServiceAccount => format!(
                "check that the key of {} is still active (gcloud iam service-accounts keys list) and that this machine's clock is right",
                credential.who
            ),
            _ => "run `gcloud auth application-default login`, or set [earthengine] credentials to a service-account key path".to_owned(),
        };
        return fail(format!("for {}: {e}", scopes.join(" ")), fix);
    }
    Verdict::Ok(format!(
        "obtained for the scopes asked, {} ([earthengine] scopes; the token endpoint does not say which it granted)",
        scopes.join(" and ")
    ))
}

/// `projects.getConfig` of the project: it answers, and grants how many concurrent exports.
async fn earthengine(settings: &Settings, credential: &Credential) -> Verdict {
    let cfg = &settings.config;
    let ee = &cfg.earthengine;
    if ee.project.is_empty() {
        return fail(
            "earthengine.project is empty",
            "set [earthengine] project to the Cloud project registered for Earth Engine",
        );
    }
    let client = match EarthEngine::new(
        &ee.endpoint,
        &ee.project,
        credential.tokens.clone(),
        Duration::from_secs(ee.timeout_secs),
    ) {
        Ok(c) => c,
        Err(e) => return fail(e, "fix [earthengine] endpoint and project"),
    };
    match client.get_project_config().await {
        Ok(c) => {
            // The number a worker uses, read as the worker reads it: v1alpha, then v1.
            let concurrency = client.export_concurrency().await;
            let source = match concurrency.source {
                ConcurrencySource::Default => {
                    "default: neither the v1alpha nor the v1 project config reports it".to_owned()
                }
                other => format!("from the {} project config", other.as_str()),
            };
            let options = WorkerOptions::from_config(cfg);
            let cap = admission_cap(
                options.max_active_exports,
                Some(concurrency.max),
                options.active_exports_factor,
            );
            let show = |n: Option<i64>| n.map_or("not reported".to_owned(), |n| n.to_string());
            Verdict::Ok(format!(
                "project {} at {} answers projects.getConfig: registration {}, maxConcurrentExports {} ({source}; plan maximum {}); workers keep up to {cap} tasks queued in EE",
                ee.project,
                ee.endpoint,
                c.registration_state.as_deref().unwrap_or("not reported"),
                concurrency.max,
                show(c.plan_max_concurrent_exports),
            ))
        }
        Err(e) => {
            let fix = match &e {
                EeError::Api { status: 401, .. } => {
                    "Earth Engine refused the token: check [earthengine] credentials (see the token line)".to_owned()
                }
                EeError::Api { status: 403, .. } if credential.kind == Kind::NoToken => format!(
                    "check that [earthengine] project = {:?} is the project the endpoint serves (`cedar emulator --project`)",
                    ee.project
                ),
                EeError::Api { status: 403, .. } => format!(
                    "check that [earthengine] project = {:?} is the Cloud project registered for Earth Engine, with the Earth Engine API enabled, and that {} has roles/earthengine.writer and roles/serviceusage.serviceUsageConsumer on it",
                    ee.project, credential.who
                ),
                EeError::Api { status: 404, .. } => format!(
                    "no project {:?} here: set [earthengine] project to the id of the Cloud project registered for Earth Engine",
                    ee.project
                ),
                EeError::Connection { .. } | EeError::Timeout { .. } => format!(
                    "nothing answers at [earthengine] endpoint = {:?}: check the address, proxy and firewall (or start `cedar emulator`)",
                    ee.endpoint
                ),
                EeError::Auth { .. } => {
                    "no token to call Earth Engine with: fix the credentials first (see the token line)".to_owned()
                }
                _ => "check [earthengine] endpoint and project".to_owned(),
            };
            fail(e, fix)
        }
    }
}

/// What to do about a failure of the export bucket.
fn bucket_fix(settings: &Settings, credential: &Credential, e: &StoreError) -> String {
    let cfg = &settings.config;
    let url = redact_url(&settings.store_url);
    let gcs = settings.store_url.starts_with("gs://");
    let endpoint = if cfg.store.endpoint.is_empty() {
        cedar::store::DEFAULT_ENDPOINT.to_owned()
    } else {
        cfg.store.endpoint.clone()
    };
    match e {
        StoreError::Status { status: 401, .. } => {
            "Cloud Storage refused the token: check [earthengine] credentials (see the token line)"
                .to_owned()
        }
        StoreError::Status { status: 403, .. } if credential.kind == Kind::NoToken => format!(
            "{endpoint} refuses a client without a token: with credentials = \"none\" only an emulator that asks for none will do; else set [earthengine] credentials to an account with roles/storage.objectAdmin on gs://{}",
            cfg.export.bucket
        ),
        StoreError::Status { status: 403, .. } | StoreError::PermissionDenied { .. } if gcs => {
            format!(
                "grant {} roles/storage.objectAdmin on gs://{} (cedar lists, reads, writes and deletes objects there), and keep a storage scope in [earthengine] scopes ({} or {})",
                credential.who,
                cfg.export.bucket,
                cedar::auth::STORAGE_SCOPE,
                cedar::auth::CLOUD_PLATFORM_SCOPE
            )
        }
        StoreError::PermissionDenied { .. } => {
            format!("make {url} readable and writable by this user, or set [store] url")
        }
        StoreError::Status { status: 404, .. } if gcs => format!(
            "there is no bucket {:?} at {endpoint}: create it (gcloud storage buckets create gs://{}) or set [export] bucket",
            cfg.export.bucket, cfg.export.bucket
        ),
        StoreError::Transport { .. } => format!(
            "nothing answers at the storage endpoint {endpoint}: check [store] endpoint (or STORAGE_EMULATOR_HOST)"
        ),
        StoreError::Auth(_) => {
            "no token for Cloud Storage: fix the credentials first (see the token line)".to_owned()
        }
        _ => "check [store] url and endpoint".to_owned(),
    }
}

/// The export bucket lists.
async fn bucket_list(settings: &Settings, credential: &Credential) -> Verdict {
    let cfg = &settings.config;
    let endpoint = Some(cfg.store.endpoint.as_str()).filter(|e| !e.is_empty());
    let url = redact_url(&settings.store_url);
    let bucket = match open_bucket(&settings.store_url, endpoint, credential.tokens.clone()) {
        Ok(b) => b,
        Err(e) => return fail(e, "fix [store] url"),
    };
    match bucket.list(&cfg.tracking.prefix).await {
        Ok(objects) => Verdict::Ok(format!(
            "{url} lists ({} tracking documents under {}/)",
            objects.len(),
            cfg.tracking.prefix
        )),
        Err(e) => {
            let fix = bucket_fix(settings, credential, &e);
            fail(e, fix)
        }
    }
}

/// A probe object in the export bucket, where the tracking documents go: written, read back
/// and deleted.
async fn bucket_write(settings: &Settings, credential: &Credential, probe: &str) -> Verdict {
    let cfg = &settings.config;
    let endpoint = Some(cfg.store.endpoint.as_str()).filter(|e| !e.is_empty());
    let bucket = match open_bucket(&settings.store_url, endpoint, credential.tokens.clone()) {
        Ok(b) => b,
        Err(e) => return fail(e, "fix [store] url"),
    };
    let name = format!("{}/{probe}", cfg.tracking.prefix);
    let body = Bytes::from(format!("cedar doctor probe {probe}\n"));
    let steps = async {
        bucket.put(&name, body.clone()).await?;
        let read = bucket.get(&name).await;
        // Deleted even when reading failed: the probe must not stay behind.
        let deleted = bucket.delete(&name).await;
        let read = read?;
        deleted?;
        Ok::<_, StoreError>(read)
    };
    match steps.await {
        Ok(read) if read == body => Verdict::Ok(format!(
            "{} takes writes: {name} written, read back and deleted",
            redact_url(&settings.store_url)
        )),
        Ok(read) => fail(
            format!(
                "{name} read back {} bytes that differ from the {} written",
                read.len(),
                body.len()
            ),
            "check [store] url and endpoint: the store answering is not the one written to",
        ),
        Err(e) => {
            let fix = bucket_fix(settings, credential, &e);
            fail(e, fix)
        }
    }
}

/// A probe file in the destination: written (verified, as downloads are) and removed.
async fn destination(settings: &Settings, probe: &str) -> Verdict {
    let dest_url = &settings.config.download.dest;
    let fix = format!(
        "make {} writable by this user, or set [download] dest to a folder that is",
        redact_url(dest_url)
    );
    let dest = match Destination::open(dest_url) {
        Ok(d) => d,
        Err(e) => return fail(e, fix),
    };
    let body = Bytes::from_static(b"cedar doctor probe\n");
    let expected = Expected {
        size: body.len() as u64,
        md5: None,
        crc32c: Some(crc32c::crc32c(&body)),
    };
    let written = dest
        .write_verified(probe, futures::stream::iter([Ok(body)]), expected)
        .await;
    let removed = dest.remove(probe).await;
    match written.and(removed) {
        Ok(()) => Verdict::Ok(format!(
            "{} takes files: {probe} written, verified and removed",
            redact_url(dest_url)
        )),
        Err(e) => fail(e, fix),
    }
}

/// The queue answers: Redis to a PING, an existing SQLite file to a query; an SQLite file that
/// does not exist yet only needs a folder it can be created in (the first submit creates it).
async fn queue(settings: &Settings) -> Verdict {
    let q = &settings.config.queue;
    let shown = redact_url(&q.url);
    match QueueUrl::parse(&q.url) {
        Some(QueueUrl::Sqlite(path)) if !path.exists() => {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let probe = dir.join(probe_name());
            match std::fs::write(&probe, b"").and_then(|()| std::fs::remove_file(&probe)) {
                Ok(()) => Verdict::Ok(format!(
                    "SQLite file {} does not exist yet; the first submit creates it (its folder is writable)",
                    path.display()
                )),
                Err(e) => fail(
                    format!("cannot create files in {}: {e}", dir.display()),
                    "make that folder writable by this user, or set [queue] url",
                ),
            }
        }
        Some(parsed) => {
            let tls_ca_file = q.tls_ca_file.as_deref().map(Path::new);
            let answered = async {
                let conn = Connection::open_now(&q.url, tls_ca_file).await?;
                Queue::new(&conn, &q.namespace).ping().await
            };
            match (answered.await, parsed) {
                (Ok(()), QueueUrl::Redis(_)) => Verdict::Ok(format!(
                    "Redis at {shown} answers (namespace {:?})",
                    q.namespace
                )),
                (Ok(()), QueueUrl::Sqlite(path)) => Verdict::Ok(format!(
                    "SQLite file {} answers (namespace {:?})",
                    path.display(),
                    q.namespace
                )),
                (Err(e), QueueUrl::Redis(_)) => fail(
                    format!("{shown}: {e}"),
                    "start Redis there, or fix [queue] url (host, port, password; rediss:// for TLS)",
                ),
                (Err(e), QueueUrl::Sqlite(path)) => fail(
                    format!("{}: {e}", path.display()),
                    "check that the file is an SQLite queue this user can write, or set [queue] url",
                ),
            }
        }
        None => fail(
            format!("{shown} is not a queue URL"),
            "set [queue] url to redis://…, rediss://… or sqlite://…",
        ),
    }
}
