//! OAuth2 access tokens for Google APIs: a service-account key, Application Default
//! Credentials, or none (for emulators).
//!
//! Tokens are cached per scope set and refreshed [`REFRESH_MARGIN`] before they expire, as
//! google-auth does, so a long export call never starts with a token about to lapse.
//! `gcp_auth` signs the JWT and talks to the token endpoint; its own cache refreshes only
//! 20 s before expiry and cannot be told otherwise, so when it hands back the very token that
//! went stale here, cedar builds a fresh provider (with an empty cache) and asks again.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gcp_auth::TokenProvider;
use tokio::sync::Mutex;

/// The OAuth scope that covers every Earth Engine call cedar makes.
pub const EARTHENGINE_SCOPE: &str = "https://www.googleapis.com/auth/earthengine";
/// The OAuth scope that lets cedar read and delete exported objects in Cloud Storage.
pub const STORAGE_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

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

/// Something that yields a bearer token for a set of scopes.
///
/// `Ok(None)` means "send no Authorization header" (emulators).
#[async_trait]
pub trait TokenSource: Send + Sync + std::fmt::Debug {
    async fn bearer(&self, scopes: &[&str]) -> Result<Option<String>, AuthError>;
}

/// Sends no token at all: `[earthengine] credentials = "none"`.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoAuth;

#[async_trait]
impl TokenSource for NoAuth {
    async fn bearer(&self, _scopes: &[&str]) -> Result<Option<String>, AuthError> {
        Ok(None)
    }
}

/// The token source for the `credentials` setting: `None` = Application Default Credentials,
/// `"none"` = no token, anything else = the path of a service-account JSON key.
pub fn token_source(credentials: Option<&str>) -> Result<Arc<dyn TokenSource>, AuthError> {
    Ok(match credentials.map(str::trim) {
        None => Arc::new(ApplicationDefault::new()),
        Some("none") => Arc::new(NoAuth),
        Some(path) => Arc::new(ServiceAccount::from_file(path)?),
    })
}

/// A cached access token.
#[derive(Clone)]
struct Cached {
    token: String,
    fetched_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
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

/// Tokens per scope set, shared by concurrent callers: the lock is held across a fetch so
/// that a burst of calls after expiry makes one token request, not one each.
#[derive(Default)]
struct TokenCache {
    tokens: Mutex<HashMap<Vec<String>, Cached>>,
}

impl TokenCache {
    /// The cached token for `scopes`, or a new one from `fetch(rebuild)`.
    ///
    /// `fetch(false)` asks the current provider, whose own cache may hand back the token that
    /// just went stale here; then `fetch(true)` rebuilds the provider and asks again.
    async fn get_or_fetch<F, Fut>(&self, scopes: &[&str], fetch: F) -> Result<String, AuthError>
    where
        F: Fn(bool) -> Fut,
        Fut: std::future::Future<Output = Result<Arc<gcp_auth::Token>, AuthError>>,
    {
        let key: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let mut tokens = self.tokens.lock().await;
        let previous = match tokens.get(&key) {
            Some(c) if c.is_fresh(Utc::now()) => return Ok(c.token.clone()),
            Some(c) => Some(c.token.clone()),
            None => None,
        };
        let mut token = bounded(fetch(false)).await?;
        if previous.as_deref() == Some(token.as_str()) {
            token = bounded(fetch(true)).await?;
        }
        let cached = to_cached(token);
        let value = cached.token.clone();
        tokens.insert(key, cached);
        Ok(value)
    }
}

/// What a service-account key and Application Default Credentials differ in: how their
/// gcp_auth provider is found and rebuilt, and how errors name them. Both get their
/// [`TokenSource`] from this, so the token cache is used one way.
#[async_trait]
trait GoogleCredential: Send + Sync + fmt::Debug {
    fn cache(&self) -> &TokenCache;

    /// The credential named in an error message.
    fn describe(&self) -> String;

    /// The gcp_auth provider; a new one when `rebuild` (see [`TokenCache::get_or_fetch`]).
    async fn provider(&self, rebuild: bool) -> Result<Arc<dyn TokenProvider>, AuthError>;
}

#[async_trait]
impl<C: GoogleCredential> TokenSource for C {
    async fn bearer(&self, scopes: &[&str]) -> Result<Option<String>, AuthError> {
        let fetch = |rebuild| async move {
            let provider = self.provider(rebuild).await?;
            provider
                .token(scopes)
                .await
                .map_err(|e| AuthError::Token(format!("{}: {}", self.describe(), describe(&e))))
        };
        Ok(Some(self.cache().get_or_fetch(scopes, fetch).await?))
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
    cache: TokenCache,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("path", &self.path)
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// Reads and checks a key file; the error names the path and what is wrong, never the key.
    pub fn from_file(path: &str) -> Result<ServiceAccount, AuthError> {
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

    fn describe(&self) -> String {
        format!("{} for {}", self.path, self.client_email)
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
#[derive(Default)]
pub struct ApplicationDefault {
    provider: Mutex<Option<Arc<dyn TokenProvider>>>,
    cache: TokenCache,
}

impl fmt::Debug for ApplicationDefault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplicationDefault").finish_non_exhaustive()
    }
}

impl ApplicationDefault {
    pub fn new() -> ApplicationDefault {
        ApplicationDefault::default()
    }
}

#[async_trait]
impl GoogleCredential for ApplicationDefault {
    fn cache(&self) -> &TokenCache {
        &self.cache
    }

    fn describe(&self) -> String {
        "application default credentials".to_owned()
    }

    async fn provider(&self, rebuild: bool) -> Result<Arc<dyn TokenProvider>, AuthError> {
        let mut p = self.provider.lock().await;
        match p.as_ref() {
            Some(existing) if !rebuild => Ok(existing.clone()),
            _ => {
                let found = gcp_auth::provider().await.map_err(|e| {
                    AuthError::Token(format!("{}: {}", self.describe(), describe(&e)))
                })?;
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
        assert_eq!(cache.get_or_fetch(&["s"], &first).await.unwrap(), "A");
        assert_eq!(cache.get_or_fetch(&["s"], &first).await.unwrap(), "A");
        assert_eq!(
            *calls.lock().unwrap(),
            [false],
            "the second call is served from the cache"
        );

        // "A" is now inside the margin; the provider's cache still hands it out.
        let now = Utc::now();
        {
            let mut tokens = cache.tokens.lock().await;
            let a = tokens.get_mut(&vec!["s".to_string()]).unwrap();
            a.expires_at = now + chrono::Duration::seconds(100);
            a.fetched_at = now - chrono::Duration::seconds(3500);
        }
        calls.lock().unwrap().clear();
        let stale = provider(vec![("A", 100), ("B", 3600)]);
        assert_eq!(cache.get_or_fetch(&["s"], &stale).await.unwrap(), "B");
        assert_eq!(*calls.lock().unwrap(), [false, true]);

        // A different scope set has its own token; a provider that issues a new token is
        // not rebuilt.
        calls.lock().unwrap().clear();
        let other = provider(vec![("C", 3600), ("unused", 3600)]);
        assert_eq!(cache.get_or_fetch(&["s", "t"], &other).await.unwrap(), "C");
        assert_eq!(*calls.lock().unwrap(), [false]);
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
            let e = token_source(Some(&path)).unwrap_err().to_string();
            assert!(e.contains(&path) && e.contains(why), "{e}");
            assert!(!e.contains("SECRET"), "{e}");
        }
        assert!(format!("{:?}", token_source(Some("none")).unwrap()).contains("NoAuth"));
        assert!(format!("{:?}", token_source(None).unwrap()).contains("ApplicationDefault"));
    }
}
