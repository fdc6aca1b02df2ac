//! The service-account flow against the emulator's token endpoint: a real RSA key, a signed
//! JWT, a cached bearer token.

use std::sync::Arc;
use std::time::Duration;

use cedar::auth::{AuthError, NoAuth, default_scopes, token_source};
use cedar::earthengine::{EarthEngine, EeError};
use cedar::emulator::EmulatorOptions;

use super::calls::{Setup, setup};
use crate::support::{rsa_key, service_account_key};

/// An emulator that requires tokens and knows the public key `registered`, and a client of it
/// whose service-account key holds `private`; the key file's path.
async fn signed_in(
    dir: &std::path::Path,
    private: &str,
    registered: &str,
    options: EmulatorOptions,
) -> (Setup, EarthEngine, String) {
    let s = setup(EmulatorOptions {
        require_auth: true,
        ..options
    })
    .await;
    s.emulator.register_public_key_pem(registered);
    let path = service_account_key(dir, private, &format!("{}/token", s.emulator.url()));
    let ee = EarthEngine::new(
        &s.emulator.url(),
        "cedar-test",
        token_source(Some(&path), &default_scopes()).unwrap(),
        Duration::from_secs(10),
    )
    .unwrap();
    (s, ee, path)
}

#[tokio::test]
async fn service_account_tokens_are_fetched_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = rsa_key(dir.path(), "sa");
    let s = setup(EmulatorOptions {
        require_auth: true,
        ..EmulatorOptions::default()
    })
    .await;
    s.emulator.register_public_key_pem(&public);
    let path = service_account_key(dir.path(), &private, &format!("{}/token", s.emulator.url()));

    let tokens = token_source(Some(&path), &default_scopes()).unwrap();
    let debug = format!("{tokens:?}");
    assert!(
        debug.contains("cedar@cedar-test.iam.gserviceaccount.com")
            && !debug.contains("PRIVATE KEY"),
        "{debug}"
    );
    let ee = EarthEngine::new(
        &s.emulator.url(),
        "cedar-test",
        tokens,
        Duration::from_secs(10),
    )
    .unwrap();
    ee.get_project_config().await.unwrap();
    ee.list_operations(Some(10), None).await.unwrap();
    let (a, b) = tokio::join!(ee.get_project_config(), ee.list_all_operations());
    a.unwrap();
    b.unwrap();
    let stats = s.emulator.stats();
    assert_eq!(stats.requests.get("token"), Some(&1), "{stats:?}");
    assert_eq!(stats.requests.get("projects.getConfig"), Some(&2));

    // Without a token the emulator, like Google, answers 401: fatal.
    let anonymous = EarthEngine::new(
        &s.emulator.url(),
        "cedar-test",
        Arc::new(NoAuth),
        Duration::from_secs(10),
    )
    .unwrap();
    let e = anonymous.get_project_config().await.unwrap_err();
    assert_eq!(
        (e.http_status(), e.ee_status(), e.is_retryable()),
        (Some(401), Some("UNAUTHENTICATED"), false),
        "{e}"
    );
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_before_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = rsa_key(dir.path(), "sa");
    let options = EmulatorOptions {
        token_expires_in_secs: 4,
        ..EmulatorOptions::default()
    };
    let (s, ee, _) = signed_in(dir.path(), &private, &public, options).await;
    ee.get_project_config().await.unwrap();
    ee.get_project_config().await.unwrap();
    assert_eq!(s.emulator.stats().requests.get("token"), Some(&1));
    // Half the 4 s lifetime is the margin: after 2 s the token is replaced, never used stale.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    ee.get_project_config().await.unwrap();
    assert_eq!(s.emulator.stats().requests.get("token"), Some(&2));
}

#[tokio::test]
async fn a_key_the_token_endpoint_rejects_is_an_auth_error_without_key_material() {
    let dir = tempfile::tempdir().unwrap();
    let (_, registered) = rsa_key(dir.path(), "registered");
    let (other, _) = rsa_key(dir.path(), "other");
    let (s, ee, path) =
        signed_in(dir.path(), &other, &registered, EmulatorOptions::default()).await;
    let e = ee.get_project_config().await.unwrap_err();
    assert!(
        matches!(
            &e,
            EeError::Auth {
                source: AuthError::Token(_),
                ..
            }
        ),
        "{e}"
    );
    let text = format!("{e} {e:?}");
    assert!(
        text.contains(&path) && !text.contains("PRIVATE KEY") && !text.contains("ya29"),
        "{text}"
    );
    assert_eq!(
        s.emulator.stats().requests.get("projects.getConfig"),
        None,
        "no API call without a token"
    );
}
