//! Google's OAuth 2 token endpoint for service accounts (JWT bearer grant, reference §7.4) and
//! the bearer tokens it issues.
//!
//! The assertion is checked as Google checks it: RS256, an issuer, a scope that covers Earth
//! Engine, the token endpoint as audience, and a short-lived `iat`/`exp` window. Signatures are
//! verified once a public key has been registered; until then any well-formed JWT is accepted,
//! so tests that do not care about keys need none.

use std::collections::HashMap;

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::Value;
use tokio::time::{Duration, Instant};

use super::stable_hash;

pub(crate) const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub(crate) const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Scopes that cover every EE method the emulator serves (reference §1.2).
const SCOPES: &[&str] = &[
    "https://www.googleapis.com/auth/earthengine",
    "https://www.googleapis.com/auth/cloud-platform",
];
/// Google accepts assertions valid for at most an hour.
const MAX_LIFETIME_SECS: i64 = 3600;
/// Clock skew tolerated on `iat`.
const SKEW_SECS: i64 = 300;

/// Why the token endpoint refused an assertion: Google's OAuth error code and description.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum TokenError {
    #[error("Invalid grant_type: {0}")]
    UnsupportedGrantType(String),
    #[error("{0}")]
    InvalidGrant(String),
    #[error("Invalid OAuth scope or ID token audience provided.")]
    InvalidScope,
}

impl TokenError {
    /// The OAuth `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::UnsupportedGrantType(_) => "unsupported_grant_type",
            TokenError::InvalidGrant(_) => "invalid_grant",
            TokenError::InvalidScope => "invalid_scope",
        }
    }
}

/// Registered keys and issued tokens.
#[derive(Default)]
pub(crate) struct Tokens {
    keys: Vec<Vec<u8>>,
    issued: HashMap<String, Issued>,
    count: u64,
}

/// An issued token: when it was issued and expires, and how many requests it has authorized.
struct Issued {
    issued: Instant,
    expiry: Instant,
    uses: u64,
}

/// When the emulator revokes a token before it expires (0: never): after this many requests,
/// or this many milliseconds after it was issued.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Revocation {
    pub after_uses: u64,
    pub after_ms: u64,
}

impl Tokens {
    pub fn register_key(&mut self, der: Vec<u8>) {
        self.keys.push(der);
    }

    pub fn keys(&self) -> &[Vec<u8>] {
        &self.keys
    }

    /// Issues a token that stays valid for `expires_in_secs` of real time.
    pub fn issue(&mut self, seed: u64, expires_in_secs: u64) -> String {
        self.count += 1;
        let h = stable_hash(seed, &["token", &self.count.to_string()]);
        let token = format!("ya29.emulator-{:016x}{:04x}", h, self.count);
        self.issued.insert(
            token.clone(),
            Issued {
                issued: Instant::now(),
                expiry: Instant::now() + Duration::from_secs(expires_in_secs),
                uses: 0,
            },
        );
        token
    }

    /// Whether `token` may authorize one more request, counting it: it was issued here, has not
    /// expired, and `revoke` has not revoked it yet. A revoked token is refused though unexpired,
    /// as Google refuses the tokens of a key disabled (or rotated) mid-campaign.
    pub fn authorize(&mut self, token: &str, revoke: Revocation) -> bool {
        let Some(issued) = self.issued.get_mut(token) else {
            return false;
        };
        let now = Instant::now();
        let revoked = (revoke.after_uses > 0 && issued.uses >= revoke.after_uses)
            || (revoke.after_ms > 0
                && now >= issued.issued + Duration::from_millis(revoke.after_ms));
        if now >= issued.expiry || revoked {
            return false;
        }
        issued.uses += 1;
        true
    }
}

/// The bearer token of a request's `Authorization` header; empty when there is none.
pub(crate) fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim()
}

/// Decodes a PEM block (`PUBLIC KEY` or `RSA PUBLIC KEY`) to DER.
pub(crate) fn pem_to_der(pem: &str) -> Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    if body.is_empty() || !pem.contains("-----BEGIN") {
        return Err("no PEM block found".into());
    }
    STANDARD.decode(body).map_err(|e| e.to_string())
}

/// Checks a JWT-bearer assertion; `audiences` are the accepted `aud` values and `now` is Unix
/// seconds.
pub(crate) fn check_assertion(
    assertion: &str,
    keys: &[Vec<u8>],
    audiences: &[String],
    now: i64,
) -> Result<(), TokenError> {
    let malformed = || TokenError::InvalidGrant("Invalid JWT: malformed assertion.".into());
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err(malformed());
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('='));
    let header: Value = decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(malformed)?;
    let claims: Value = decode(claims)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(malformed)?;
    let signature = decode(signature).map_err(|_| malformed())?;
    if header["alg"] != "RS256" {
        return Err(TokenError::InvalidGrant(
            "Invalid JWT: the signing algorithm must be RS256.".into(),
        ));
    }
    if claims["iss"].as_str().is_none_or(str::is_empty) {
        return Err(TokenError::InvalidGrant(
            "Invalid JWT: the iss claim is required.".into(),
        ));
    }
    let scopes = claims["scope"].as_str().unwrap_or_default();
    if !scopes.split_whitespace().any(|s| SCOPES.contains(&s)) {
        return Err(TokenError::InvalidScope);
    }
    let aud = claims["aud"].as_str().unwrap_or_default();
    if !audiences.iter().any(|a| a == aud) {
        return Err(TokenError::InvalidGrant(format!(
            "Invalid JWT: Failed audience check. The right audience is {}",
            audiences.first().map_or(GOOGLE_TOKEN_URI, String::as_str)
        )));
    }
    let (iat, exp) = (claims["iat"].as_i64(), claims["exp"].as_i64());
    let timely = match (iat, exp) {
        (Some(iat), Some(exp)) => {
            exp > iat && exp - iat <= MAX_LIFETIME_SECS && iat <= now + SKEW_SECS && exp > now
        }
        _ => false,
    };
    if !timely {
        return Err(TokenError::InvalidGrant(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.".into(),
        ));
    }
    if !keys.is_empty() {
        let signed = assertion
            .rsplit_once('.')
            .map_or(assertion, |(signed, _)| signed);
        let verified = keys.iter().any(|key| {
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key)
                .verify(signed.as_bytes(), &signature)
                .is_ok()
        });
        if !verified {
            return Err(TokenError::InvalidGrant("Invalid JWT Signature.".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
    use serde_json::json;

    fn jwt(key: &RsaKeyPair, claims: Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string());
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{claims}");
        let mut signature = vec![0; key.public_modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            signed.as_bytes(),
            &mut signature,
        )
        .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn claims(now: i64) -> Value {
        json!({"iss": "sa@p.iam.gserviceaccount.com", "scope": "https://www.googleapis.com/auth/earthengine",
            "aud": GOOGLE_TOKEN_URI, "iat": now, "exp": now + 3600})
    }

    #[test]
    fn assertions_are_checked_like_google() {
        let key = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let der = key.public_key().as_der().unwrap().as_ref().to_vec();
        let other = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let audiences = vec![GOOGLE_TOKEN_URI.to_owned()];
        let now = 1_700_000_000;
        assert_eq!(
            check_assertion(
                &jwt(&key, claims(now)),
                std::slice::from_ref(&der),
                &audiences,
                now
            ),
            Ok(())
        );
        assert_eq!(
            check_assertion(
                &jwt(&other, claims(now)),
                std::slice::from_ref(&der),
                &audiences,
                now
            ),
            Err(TokenError::InvalidGrant("Invalid JWT Signature.".into()))
        );
        // Without a registered key the signature is not checked.
        assert_eq!(
            check_assertion(&jwt(&other, claims(now)), &[], &audiences, now),
            Ok(())
        );
        let mut scope = claims(now);
        scope["scope"] = json!("https://www.googleapis.com/auth/drive");
        assert_eq!(
            check_assertion(&jwt(&key, scope), &[], &audiences, now),
            Err(TokenError::InvalidScope)
        );
        let mut long = claims(now);
        long["exp"] = json!(now + 7200);
        assert!(
            matches!(check_assertion(&jwt(&key, long), &[], &audiences, now), Err(TokenError::InvalidGrant(m)) if m.contains("short-lived"))
        );
        let mut aud = claims(now);
        aud["aud"] = json!("https://example.com/token");
        assert!(check_assertion(&jwt(&key, aud), &[], &audiences, now).is_err());
        assert!(check_assertion("not.a.jwt", &[], &audiences, now).is_err());
    }

    #[test]
    fn issued_tokens_are_unique_and_valid() {
        let mut tokens = Tokens::default();
        let (a, b) = (tokens.issue(0, 60), tokens.issue(0, 60));
        assert_ne!(a, b);
        let never = Revocation::default();
        assert!(tokens.authorize(&a, never) && !tokens.authorize("ya29.other", never));
        assert!(!Tokens::default().authorize(&a, never));
        // Revoked after two uses; another token keeps its own count.
        let twice = Revocation {
            after_uses: 2,
            after_ms: 0,
        };
        assert!(tokens.authorize(&b, twice) && tokens.authorize(&b, twice));
        assert!(!tokens.authorize(&b, twice) && !tokens.authorize(&b, twice));
        assert!(tokens.authorize(&a, twice));
        // Revoked 1 ms after it was issued.
        let c = tokens.issue(0, 60);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let soon = Revocation {
            after_uses: 0,
            after_ms: 1,
        };
        assert!(!tokens.authorize(&c, soon) && tokens.authorize(&c, never));
        assert!(pem_to_der("-----BEGIN PUBLIC KEY-----\nAAEC\n-----END PUBLIC KEY-----\n").is_ok());
        assert!(pem_to_der("garbage").is_err());
    }
}
