//! OAuth2 access tokens for Google APIs: a service-account key, Application Default
//! Credentials, or none (for emulators).
//!
//! A token source asks for one set of scopes, [`DEFAULT_SCOPES`] unless `[earthengine] scopes`
//! says otherwise, and Earth Engine and Cloud Storage share its token. Tokens are cached and
//! refreshed [`REFRESH_MARGIN`] before they expire, as google-auth does, so a long export call
//! never starts with a token about to lapse.
//!
//! A token can still be refused before it expires (a key disabled and enabled again, a token
//! revoked, a clock that is wrong). [`authorized`] sends a call, and on a 401 drops the token,
//! takes a fresh one and sends the call once more, as google-auth's transports do
//! (`google_auth_httplib2.AuthorizedHttp`); only a second 401 reaches the caller, with a note
//! naming the credentials and the fix. Refreshes are counted ([`token_refreshes`]).
//! `gcp_auth` signs the JWT and talks to the token endpoint; its own cache refreshes only
//! 20 s before expiry and cannot be told otherwise, so when it hands back the very token that
//! went stale here, cedar builds a fresh provider (with an empty cache) and asks again.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gcp_auth::TokenProvider;
use tokio::sync::Mutex;

/// The OAuth scope that covers every Earth Engine call cedar makes.
pub const EARTHENGINE_SCOPE: &str = "https://www.googleapis.com/auth/earthengine";
/// The OAuth scope that lets cedar read and delete exported objects in Cloud Storage, and that
/// lets Earth Engine check that the caller may write the export's bucket.
pub const STORAGE_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";
/// The scope that covers every Google Cloud API, Earth Engine and Cloud Storage included.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// What every Google OAuth scope starts with.
pub const SCOPE_PREFIX: &str = "https://www.googleapis.com/auth/";
/// The scopes asked when `[earthengine] scopes` is not set: Earth Engine's, and Cloud Storage
/// read/write. Google's own clients ask for more (Python: `cloud-platform`, `drive` and
/// `devstorage.full_control`; JavaScript: `cloud-platform`, `drive`, and `devstorage.read_write`
/// for exports); cedar needs neither Drive nor the right to change bucket permissions.
pub const DEFAULT_SCOPES: [&str; 2] = [EARTHENGINE_SCOPE, STORAGE_SCOPE];

/// [`DEFAULT_SCOPES`] as owned strings, as `[earthengine] scopes` holds them.
pub fn default_scopes() -> Vec<String> {
    DEFAULT_SCOPES.map(str::to_owned).to_vec()
}

/// How long before expiry a cached token is replaced: 4 minutes (google-auth: 3 min 45 s).
/// Capped at half the token's lifetime, so short-lived tokens are still reused.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(240);

/// How long one token request may take. 30 s.
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors while obtaining a token. Never carries the token or key material itself.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("credentials file {path}: {reason}")]
    Credentials { path: String, reason: String },
    #[error("token request failed: {0}")]
    Token(String),
}

/// Something that yields bearer tokens for one set of scopes.
#[async_trait]
pub trait TokenSource: Send + Sync + std::fmt::Debug {
    /// A token for [`scopes`](Self::scopes); `Ok(None)` means "send no Authorization header"
    /// (emulators).
    async fn bearer(&self) -> Result<Option<String>, AuthError>;

    /// Forgets `token` after a service answered 401 to it, so that the next
    /// [`bearer`](Self::bearer) fetches a fresh one. False when no other token can come, so a
    /// second try would meet the same 401. Default: false.
    async fn reject(&self, _token: &str) -> bool {
        false
    }

    /// The scopes tokens are asked for; empty when no token is. Default: empty.
    fn scopes(&self) -> Vec<String> {
        Vec::new()
    }

    /// The credentials, as an error names them: "the service-account key /k.json for a@b".
    fn describe(&self) -> String;

    /// What to do when a service refuses this source's tokens.
    fn fix(&self) -> String;
}

/// Sends no token at all: `[earthengine] credentials = "none"`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoAuth;

#[async_trait]
impl TokenSource for NoAuth {
    async fn bearer(&self) -> Result<Option<String>, AuthError> {
        Ok(None)
    }

    fn describe(&self) -> String {
        "no token was sent ([earthengine] credentials = \"none\")".to_owned()
    }

    fn fix(&self) -> String {
        "set [earthengine] credentials to a service-account key path, or remove it to use Application Default Credentials".to_owned()
    }
}

/// The answer of a call sent through [`authorized`].
#[derive(Debug)]
pub struct Authorized<T> {
    pub answer: T,
    /// Set when `answer` is still a 401: a sentence naming the credentials and the fix, for the
    /// caller to add to its error.
    pub refused: Option<String>,
}

/// Sends `call` with a token of `tokens`; when its answer is a 401 (`unauthorized`), drops the
/// token, takes a fresh one and sends `call` once more. google-auth's transports refresh on 401
/// too (`DEFAULT_REFRESH_STATUS_CODES`), up to twice; once is enough here, as a job that still
/// fails is retried by the queue.
///
/// `call` gets the token to send (`None`: no Authorization header) and must be repeatable.
pub async fn authorized<T, F, Fut>(
    tokens: &dyn TokenSource,
    mut call: F,
    unauthorized: impl Fn(&T) -> bool,
) -> Result<Authorized<T>, AuthError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = T>,
{
    let token = tokens.bearer().await?;
    let answer = call(token.clone()).await;
    if !unauthorized(&answer) {
        return Ok(Authorized {
            answer,
            refused: None,
        });
    }
    let can_refresh = match &token {
        Some(t) => tokens.reject(t).await,
        None => false,
    };
    if !can_refresh {
        let refused = format!("Refused: {}; {}.", tokens.describe(), tokens.fix());
        // Without a token to drop (or a source that has no other) a retry would be refused
        // the same way.
        return Ok(Authorized {
            answer,
            refused: Some(refused),
        });
    }
    let token = tokens.bearer().await?;
    let answer = call(token.clone()).await;
    if !unauthorized(&answer) {
        return Ok(Authorized {
            answer,
            refused: None,
        });
    }
    // The fresh token is no good either: the next call should not be sent with it.
    if let Some(t) = &token {
        tokens.reject(t).await;
    }
    let refused = format!(
        "A fresh token from {} was refused too; {}.",
        tokens.describe(),
        tokens.fix()
    );
    Ok(Authorized {
        answer,
        refused: Some(refused),
    })
}

/// Tokens replaced because they were about to expire (`cedar_auth_token_refreshes_total
/// {reason="expiring"}`), in this process.
static REFRESHED_EXPIRING: AtomicU64 = AtomicU64::new(0);
/// Tokens replaced because a service answered 401 to them (`reason="unauthorized"`).
static REFRESHED_UNAUTHORIZED: AtomicU64 = AtomicU64::new(0);

/// How many cached tokens this process replaced, per reason: `("expiring", n)` before they
/// lapsed, `("unauthorized", n)` after a service refused them. A first token is no refresh.
pub fn token_refreshes() -> [(&'static str, u64); 2] {
    [
        ("expiring", REFRESHED_EXPIRING.load(Ordering::Relaxed)),
        (
            "unauthorized",
            REFRESHED_UNAUTHORIZED.load(Ordering::Relaxed),
        ),
    ]
}

/// The token source for the `credentials` setting, asking for `scopes`: `None` = Application
/// Default Credentials, `"none"` = no token, anything else = the path of a service-account
/// JSON key.
pub fn token_source(
    credentials: Option<&str>,
    scopes: &[String],
) -> Result<Arc<dyn TokenSource>, AuthError> {
    Ok(match credentials.map(str::trim) {
        None => Arc::new(ApplicationDefault::new(scopes)),
        Some("none") => Arc::new(NoAuth),
        Some(path) => Arc::new(ServiceAccount::from_file(path, scopes)?),
    })
}

/// A cached access token.
#[derive(Clone)]
struct Cached {
    token: String,
    fetched_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// A service answered 401 to it: never handed out again.
    rejected: bool,
}

impl Cached {
    /// Whether the token can still be handed out at `now`: more than the refresh margin (at
    /// most half its lifetime) remains.
    fn is_fresh(&self, now: DateTime<Utc>) -> bool {
        let lifetime = (self.expires_at - self.fetched_at)
            .to_std()
            .unwrap_or_default();
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        match (self.expires_at - now).to_std() {
            Ok(remaining) => remaining > margin,
            Err(_) => false,
        }
    }
}

/// The token of one source, shared by concurrent callers: the lock is held across a fetch so
/// that a burst of calls after expiry (or after a 401) makes one token request, not one each.
#[derive(Default)]
struct TokenCache {
    token: Mutex<Option<Cached>>,
}

impl TokenCache {
    /// The cached token, or a new one from `fetch(rebuild)`.
    ///
    /// `fetch(false)` asks the current provider, whose own cache may hand back the token that
    /// just went stale (or was refused) here; then `fetch(true)` rebuilds the provider and asks
    /// again.
    async fn get_or_fetch<F, Fut>(&self, fetch: F) -> Result<String, AuthError>
    where
        F: Fn(bool) -> Fut,
        Fut: Future<Output = Result<Arc<gcp_auth::Token>, AuthError>>,
    {
        let mut slot = self.token.lock().await;
        let previous = match slot.as_ref() {
            Some(c) if !c.rejected && c.is_fresh(Utc::now()) => return Ok(c.token.clone()),
            Some(c) => Some((c.token.clone(), c.rejected)),
            None => None,
        };
        let mut token = bounded(fetch(false)).await?;
        if let Some((stale, _)) = &previous
            && *stale == token.as_str()
        {
            token = bounded(fetch(true)).await?;
        }
        match previous {
            Some((_, true)) => REFRESHED_UNAUTHORIZED.fetch_add(1, Ordering::Relaxed),
            Some((_, false)) => REFRESHED_EXPIRING.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        let cached = to_cached(token);
        let value = cached.token.clone();
        *slot = Some(cached);
        Ok(value)
    }

    /// Marks `token` refused, when it is still the one cached (a concurrent caller that met the
    /// same 401 may have replaced it already: then the replacement stays).
    async fn reject(&self, token: &str) {
        if let Some(c) = self.token.lock().await.as_mut()
            && c.token == token
        {
            c.rejected = true;
        }
    }
}

/// What a service-account key and Application Default Credentials differ in: how their
/// gcp_auth provider is found and rebuilt, and how errors name them. Both get their
/// [`TokenSource`] from this, so the token cache is used one way.
#[async_trait]
trait GoogleCredential: Send + Sync + fmt::Debug {
    fn cache(&self) -> &TokenCache;

    /// The scopes asked.
    fn asked(&self) -> &[String];

    /// The credential named in an error message.
    fn name(&self) -> String;

    /// What to do when a service refuses its tokens.
    fn refusal_fix(&self) -> String;

    /// The gcp_auth provider; a new one when `rebuild` (see [`TokenCache::get_or_fetch`]).
    async fn provider(&self, rebuild: bool) -> Result<Arc<dyn TokenProvider>, AuthError>;
}

#[async_trait]
impl<C: GoogleCredential> TokenSource for C {
    async fn bearer(&self) -> Result<Option<String>, AuthError> {
        let scopes: Vec<&str> = self.asked().iter().map(String::as_str).collect();
        let scopes = &scopes;
        let fetch = |rebuild| async move {
            let provider = self.provider(rebuild).await?;
            provider
                .token(scopes)
                .await
                .map_err(|e| AuthError::Token(format!("{}: {}", self.name(), describe(&e))))
        };
        Ok(Some(self.cache().get_or_fetch(fetch).await?))
    }

    async fn reject(&self, token: &str) -> bool {
        self.cache().reject(token).await;
        true
    }

    fn scopes(&self) -> Vec<String> {
        self.asked().to_vec()
    }

    fn describe(&self) -> String {
        self.name()
    }

    fn fix(&self) -> String {
        self.refusal_fix()
    }
}

/// Bounds a token request: gcp_auth sets no timeout, and a hung request would hold the cache
/// lock and stall every caller.
async fn bounded<T>(
    fetch: impl std::future::Future<Output = Result<T, AuthError>>,
) -> Result<T, AuthError> {
    tokio::time::timeout(TOKEN_TIMEOUT, fetch)
        .await
        .map_err(|_| {
            AuthError::Token(format!(
                "no answer from the token endpoint in {} s",
                TOKEN_TIMEOUT.as_secs()
            ))
        })?
}

fn to_cached(t: Arc<gcp_auth::Token>) -> Cached {
    Cached {
        token: t.as_str().to_string(),
        fetched_at: Utc::now(),
        expires_at: t.expires_at(),
        rejected: false,
    }
}

/// Describes a gcp_auth error without key material: only its own fixed messages and I/O or
/// connection causes are shown (a PEM parse error, for one, quotes the offending line).
fn describe(e: &gcp_auth::Error) -> String {
    use gcp_auth::Error as E;
    match e {
        E::NoAuthMethod(a, b, c) => format!(
            "no credentials found (gcloud: {}; metadata server: {}; user credentials: {})",
            describe(a),
            describe(b),
            describe(c)
        ),
        E::Http(msg, source) => format!("{msg}: {source}"),
        E::Io(msg, source) => format!("{msg}: {source}"),
        E::Other(msg, source) if *msg == "HTTP request failed" => format!("{msg}: {source}"),
        E::Json(msg, _) | E::Other(msg, _) | E::Str(msg) => msg.to_string(),
    }
}

/// A service-account JSON key: signs an RS256 JWT and exchanges it at the key's `token_uri`.
pub struct ServiceAccount {
    path: String,
    client_email: String,
    /// The key file's text, kept to rebuild the provider (see the module docs).
    json: String,
    provider: Mutex<Arc<gcp_auth::CustomServiceAccount>>,
    scopes: Vec<String>,
    cache: TokenCache,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("path", &self.path)
            .field("client_email", &self.client_email)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Reads and checks a key file, whose tokens will be asked for `scopes`; the error names the
    /// path and what is wrong, never the key.
    pub fn from_file(path: &str, scopes: &[String]) -> Result<ServiceAccount, AuthError> {
        let fail = |reason: String| AuthError::Credentials {
            path: path.to_string(),
            reason,
        };
        let json = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        // Parse to a tree first: serde's typed errors may quote the offending value.
        let doc: serde_json::Value = serde_json::from_str(&json).map_err(|e| {
            fail(format!(
                "not JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let text = |field: &str| {
            doc.get(field)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
        };
        if let Some(kind) = text("type")
            && kind != "service_account"
        {
            return Err(fail(format!(
                "is a {kind:?} credential, not a service-account key (type \"service_account\")"
            )));
        }
        for field in ["client_email", "private_key", "token_uri"] {
            if text(field).is_none() {
                return Err(fail(format!("not a service-account key: no {field}")));
            }
        }
        let client_email = text("client_email").unwrap_or_default().to_string();
        let provider = gcp_auth::CustomServiceAccount::from_json(&json)
            .map_err(|e| fail(format!("unusable key: {}", describe(&e))))?;
        Ok(ServiceAccount {
            path: path.to_string(),
            client_email,
            json,
            provider: Mutex::new(Arc::new(provider)),
            scopes: scopes.to_vec(),
            cache: TokenCache::default(),
        })
    }

    /// The service account's e-mail address.
    pub fn client_email(&self) -> &str {
        &self.client_email
    }
}

#[async_trait]
impl GoogleCredential for ServiceAccount {
    fn cache(&self) -> &TokenCache {
        &self.cache
    }

    fn asked(&self) -> &[String] {
        &self.scopes
    }

    fn name(&self) -> String {
        format!(
            "service-account key {} for {}",
            self.path, self.client_email
        )
    }

    fn refusal_fix(&self) -> String {
        format!(
            "check that the key is still active and the account enabled (gcloud iam service-accounts keys list --iam-account {}), and that this machine's clock is right",
            self.client_email
        )
    }

    async fn provider(&self, rebuild: bool) -> Result<Arc<dyn TokenProvider>, AuthError> {
        let mut p = self.provider.lock().await;
        if rebuild {
            let fresh = gcp_auth::CustomServiceAccount::from_json(&self.json)
                .map_err(|e| AuthError::Token(describe(&e)))?;
            *p = Arc::new(fresh);
        }
        Ok(p.clone())
    }
}

/// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, the gcloud user
/// credentials file, the metadata server, or `gcloud`, in gcp_auth's order. Found on first use.
pub struct ApplicationDefault {
    provider: Mutex<Option<Arc<dyn TokenProvider>>>,
    scopes: Vec<String>,
    cache: TokenCache,
}

impl fmt::Debug for ApplicationDefault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplicationDefault")
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl ApplicationDefault {
    /// Credentials whose tokens will be asked for `scopes`.
    pub fn new(scopes: &[String]) -> ApplicationDefault {
        ApplicationDefault {
            provider: Mutex::new(None),
            scopes: scopes.to_vec(),
            cache: TokenCache::default(),
        }
    }
}

#[async_trait]
impl GoogleCredential for ApplicationDefault {
    fn cache(&self) -> &TokenCache {
        &self.cache
    }

    fn asked(&self) -> &[String] {
        &self.scopes
    }

    fn name(&self) -> String {
        "application default credentials".to_owned()
    }

    fn refusal_fix(&self) -> String {
        "run `gcloud auth application-default login` again (on Google Cloud: check the machine's service account and its access scopes), or set [earthengine] credentials to a service-account key path".to_owned()
    }

    async fn provider(&self, rebuild: bool) -> Result<Arc<dyn TokenProvider>, AuthError> {
        let mut p = self.provider.lock().await;
        match p.as_ref() {
            Some(existing) if !rebuild => Ok(existing.clone()),
            _ => {
                let found = gcp_auth::provider()
                    .await
                    .map_err(|e| AuthError::Token(format!("{}: {}", self.name(), describe(&e))))?;
                *p = Some(found.clone());
                Ok(found)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn cached(fetched: i64, expires: i64) -> Cached {
        Cached {
            token: "t".into(),
            fetched_at: at(fetched),
            expires_at: at(expires),
            rejected: false,
        }
    }

    #[test]
    fn hour_tokens_are_refreshed_four_minutes_early() {
        let c = cached(0, 3600);
        assert!(c.is_fresh(at(0)));
        assert!(c.is_fresh(at(3600 - 241)));
        assert!(!c.is_fresh(at(3600 - 240)));
        assert!(!c.is_fresh(at(4000)));
    }

    #[test]
    fn short_tokens_keep_half_their_life() {
        let c = cached(0, 60);
        assert!(c.is_fresh(at(29)));
        assert!(!c.is_fresh(at(30)));
        assert!(!cached(0, 0).is_fresh(at(0)));
    }

    fn token(text: &str, expires_in: u64) -> Arc<gcp_auth::Token> {
        Arc::new(
            serde_json::from_value(
                serde_json::json!({"access_token": text, "expires_in": expires_in}),
            )
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn cache_reuses_fresh_tokens_and_rebuilds_when_the_provider_repeats_a_stale_one() {
        let cache = TokenCache::default();
        let calls = std::sync::Mutex::new(Vec::new());
        let provider = |answers: Vec<(&'static str, u64)>| {
            let calls = &calls;
            move |rebuild: bool| {
                calls.lock().unwrap().push(rebuild);
                let (text, secs) = answers[usize::from(rebuild)];
                async move { Ok(token(text, secs)) }
            }
        };
        let first = provider(vec![("A", 3600), ("unused", 3600)]);
        assert_eq!(cache.get_or_fetch(&first).await.unwrap(), "A");
        assert_eq!(cache.get_or_fetch(&first).await.unwrap(), "A");
        assert_eq!(
            *calls.lock().unwrap(),
            [false],
            "the second call is served from the cache"
        );

        // "A" is now inside the margin; the provider's cache still hands it out.
        let now = Utc::now();
        {
            let mut slot = cache.token.lock().await;
            let a = slot.as_mut().unwrap();
            a.expires_at = now + chrono::Duration::seconds(100);
            a.fetched_at = now - chrono::Duration::seconds(3500);
        }
        calls.lock().unwrap().clear();
        let (expiring, unauthorized) = (refreshes("expiring"), refreshes("unauthorized"));
        let stale = provider(vec![("A", 100), ("B", 3600)]);
        assert_eq!(cache.get_or_fetch(&stale).await.unwrap(), "B");
        assert_eq!(*calls.lock().unwrap(), [false, true]);
        assert!(refreshes("expiring") > expiring);

        // A refused token is dropped at once, fresh as it is; refusing a token that is no
        // longer cached (another caller replaced it) keeps the replacement.
        cache.reject("A").await;
        calls.lock().unwrap().clear();
        assert_eq!(cache.get_or_fetch(&first).await.unwrap(), "B");
        assert!(calls.lock().unwrap().is_empty());
        cache.reject("B").await;
        let repeats = provider(vec![("B", 3600), ("C", 3600)]);
        assert_eq!(cache.get_or_fetch(&repeats).await.unwrap(), "C");
        assert_eq!(*calls.lock().unwrap(), [false, true]);
        assert!(refreshes("unauthorized") > unauthorized);
    }

    fn refreshes(reason: &str) -> u64 {
        token_refreshes()
            .iter()
            .find(|(r, _)| *r == reason)
            .map(|(_, n)| *n)
            .unwrap()
    }

    /// A source that numbers the tokens it hands out (t1, t2, …) and records those refused.
    #[derive(Debug, Default)]
    struct Counting {
        issued: std::sync::Mutex<u32>,
        rejected: std::sync::Mutex<Vec<String>>,
    }

    #[async_trait]
    impl TokenSource for Counting {
        async fn bearer(&self) -> Result<Option<String>, AuthError> {
            let mut n = self.issued.lock().unwrap();
            *n += 1;
            Ok(Some(format!("t{n}")))
        }
        async fn reject(&self, token: &str) -> bool {
            self.rejected.lock().unwrap().push(token.to_owned());
            true
        }
        fn describe(&self) -> String {
            "the test key".to_owned()
        }
        fn fix(&self) -> String {
            "replace it".to_owned()
        }
    }

    #[tokio::test]
    async fn a_401_is_sent_again_once_with_a_fresh_token() {
        // Refused once: the second try, with a new token, is the answer.
        let tokens = Counting::default();
        let sent = std::sync::Mutex::new(Vec::new());
        let call = |token: Option<String>| {
            sent.lock().unwrap().push(token.clone());
            let status = if token.as_deref() == Some("t1") {
                401
            } else {
                200
            };
            async move { status }
        };
        let out = authorized(&tokens, call, |s| *s == 401).await.unwrap();
        assert_eq!((out.answer, out.refused), (200, None));
        assert_eq!(
            *sent.lock().unwrap(),
            [Some("t1".into()), Some("t2".into())]
        );
        assert_eq!(*tokens.rejected.lock().unwrap(), ["t1"]);

        // Refused twice: the 401 comes back with a note naming the credentials and the fix,
        // and the second token is dropped too.
        let tokens = Counting::default();
        let out = authorized(&tokens, |_| async { 401 }, |s| *s == 401)
            .await
            .unwrap();
        assert_eq!(out.answer, 401);
        let note = out.refused.unwrap();
        assert!(
            note.contains("A fresh token from the test key was refused too; replace it."),
            "{note}"
        );
        assert_eq!(*tokens.issued.lock().unwrap(), 2);
        assert_eq!(*tokens.rejected.lock().unwrap(), ["t1", "t2"]);

        // Without a token there is nothing to refresh: one try.
        let calls = std::sync::Mutex::new(0);
        let out = authorized(
            &NoAuth,
            |_| {
                *calls.lock().unwrap() += 1;
                async { 401 }
            },
            |s| *s == 401,
        )
        .await
        .unwrap();
        assert_eq!(*calls.lock().unwrap(), 1);
        assert!(out.refused.unwrap().contains("credentials = \"none\""));
    }

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn bad_key_files_name_the_path_and_never_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "-----BEGIN PRIVATE KEY-----\nSECRETSECRETSECRET\n-----END PRIVATE KEY-----\n";
        let cases = [
            (write(&dir, "garbage.json", "{not json SECRETSECRETSECRET"), "not JSON"),
            (write(&dir, "user.json", r#"{"type":"authorized_user","refresh_token":"SECRETSECRETSECRET"}"#), "not a service-account key"),
            (
                write(&dir, "nomail.json", &serde_json::json!({"type":"service_account","private_key":secret,"token_uri":"http://x"}).to_string()),
                "no client_email",
            ),
            (
                write(
                    &dir,
                    "badkey.json",
                    &serde_json::json!({"type":"service_account","private_key":secret,"client_email":"a@b","token_uri":"http://x"}).to_string(),
                ),
                "unusable key",
            ),
            (dir.path().join("missing.json").to_string_lossy().into_owned(), "cannot read"),
        ];
        for (path, why) in cases {
            let e = token_source(Some(&path), &default_scopes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(&path) && e.contains(why), "{e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
        assert!(
            format!(
                "{:?}",
                token_source(Some("none"), &default_scopes()).unwrap()
            )
            .contains("NoAuth")
        );
        let adc = token_source(None, &default_scopes()).unwrap();
        assert!(format!("{adc:?}").contains("ApplicationDefault"));
        assert_eq!(adc.scopes(), DEFAULT_SCOPES);
    }
}
