//! OAuth2 access tokens for Google APIs: a service-account key, Application Default
//! Credentials, or none (for emulators).

use async_trait::async_trait;

/// The OAuth scope that covers every Earth Engine call cedar makes.
pub const EARTHENGINE_SCOPE: &str = "https://www.googleapis.com/auth/earthengine";
/// The OAuth scope that lets cedar read and delete exported objects in Cloud Storage.
pub const STORAGE_SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

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
