//! The client against a scripted HTTP server on loopback: the exact requests it sends, and the
//! failures the emulator does not produce (HTML pages, resets, hangs).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cedar::auth::{AuthError, NoAuth, TokenSource};
use cedar::earthengine::{EarthEngine, EeError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::free_port;

/// What the scripted server does with each connection.
#[derive(Clone)]
enum Reply {
    /// Answer with this status line, content type and body.
    Respond(&'static str, &'static str, &'static str),
    /// Close the connection as soon as the request has arrived.
    Close,
    /// Never answer.
    Hang,
}

/// One received request: the head (request line and headers) and the body.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Serves `reply` to every connection; returns the base URL and the requests seen.
async fn scripted(reply: Reply) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let reply = reply.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then as much body as Content-Length says.
                let received = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let r = Received {
                            head: head.to_string(),
                            body: body.to_string(),
                        };
                        let want: usize = r
                            .header("content-length")
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0);
                        if body.len() >= want {
                            break r;
                        }
                    }
                };
                log.lock().unwrap().push(received);
                match reply {
                    Reply::Respond(status, content_type, body) => {
                        let response = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                    }
                    Reply::Close => drop(socket),
                    Reply::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
                }
            });
        }
    });
    (url, seen)
}

/// A client of `url` for project `p`, without credentials and with a 5 s timeout.
fn client(url: &str) -> EarthEngine {
    EarthEngine::new(url, "p", Arc::new(NoAuth), Duration::from_secs(5)).unwrap()
}

/// A token source that always yields the same token and counts how often it was asked.
#[derive(Debug, Default)]
struct FixedToken(Mutex<u32>);

#[async_trait]
impl TokenSource for FixedToken {
    async fn bearer(&self) -> Result<Option<String>, AuthError> {
        *self.0.lock().unwrap() += 1;
        Ok(Some("test-token".into()))
    }

    fn describe(&self) -> String {
        "a fixed test token".into()
    }

    fn fix(&self) -> String {
        "none".into()
    }
}

#[tokio::test]
async fn requests_carry_token_project_and_documented_paths() {
    let (url, seen) = scripted(Reply::Respond(
        "200 OK",
        "application/json",
        r#"{"operations": []}"#,
    ))
    .await;
    let tokens = Arc::new(FixedToken::default());
    let ee = EarthEngine::new(
        &format!("{url}/"),
        "projects/my-project",
        tokens.clone(),
        Duration::from_secs(5),
    )
    .unwrap();
    ee.list_operations(Some(7), Some("tok en")).await.unwrap();
    ee.cancel_operation("ABC").await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let list = &seen[0];
    assert!(
        list.head.starts_with(
            "GET /v1/projects/my-project/operations?pageSize=7&pageToken=tok+en HTTP/1.1"
        ),
        "{}",
        list.head
    );
    assert_eq!(list.header("authorization"), Some("Bearer test-token"));
    assert_eq!(list.header("x-goog-user-project"), Some("my-project"));
    let cancel = &seen[1];
    assert!(
        cancel
            .head
            .starts_with("POST /v1/projects/my-project/operations/ABC:cancel "),
        "{}",
        cancel.head
    );
    assert_eq!(cancel.body, "{}");
    assert_eq!(cancel.header("content-type"), Some("application/json"));
    assert_eq!(*tokens.0.lock().unwrap(), 2, "one token per call");

    // No token source, no Authorization header.
    let (url, seen) = scripted(Reply::Respond("200 OK", "application/json", "{}")).await;
    let ee = client(&url);
    ee.get_project_config().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(seen[0].head.starts_with("GET /v1/projects/p/config "));
    assert_eq!(seen[0].header("authorization"), None);
}

#[tokio::test]
async fn html_pages_are_classified_by_status() {
    let page = "<!DOCTYPE html><html><title>Error 502 (Server Error)!!1</title><p>That's an error.</p></html>";
    let (url, _) = scripted(Reply::Respond("502 Bad Gateway", "text/html", page)).await;
    let ee = client(&url);
    let e = ee.get_operation("ABC").await.unwrap_err();
    assert!(e.is_retryable() && e.http_status() == Some(502), "{e}");
    assert!(e.to_string().contains("That's an error."), "{e}");

    let (url, _) = scripted(Reply::Respond(
        "200 OK",
        "text/html",
        "<html>captive portal</html>",
    ))
    .await;
    let ee = client(&url);
    let e = ee.get_operation("ABC").await.unwrap_err();
    assert!(
        matches!(e, EeError::Malformed { status: 200, .. }) && !e.is_retryable(),
        "{e}"
    );
    assert!(e.to_string().contains("captive portal"), "{e}");

    let (url, _) = scripted(Reply::Respond(
        "404 Not Found",
        "text/html",
        "<html>nope</html>",
    ))
    .await;
    let ee = client(&url);
    let e = ee.get_operation("ABC").await.unwrap_err();
    assert!(e.is_not_found() && !e.is_retryable(), "{e}");
}

#[tokio::test]
async fn resets_and_timeouts_are_retryable() {
    let (url, _) = scripted(Reply::Close).await;
    let ee = client(&url);
    let e = ee.get_operation("ABC").await.unwrap_err();
    assert!(
        matches!(e, EeError::Connection { .. }) && e.is_retryable(),
        "{e}"
    );

    let (url, _) = scripted(Reply::Hang).await;
    let ee = EarthEngine::new(&url, "p", Arc::new(NoAuth), Duration::from_millis(300)).unwrap();
    let e = ee.get_operation("ABC").await.unwrap_err();
    assert!(
        matches!(e, EeError::Timeout { .. }) && e.is_retryable(),
        "{e}"
    );

    // Nothing listens on the port any more.
    let ee = client(&format!("http://127.0.0.1:{}", free_port()));
    let e = ee.get_project_config().await.unwrap_err();
    assert!(
        matches!(e, EeError::Connection { .. }) && e.is_retryable(),
        "{e}"
    );
}

#[tokio::test]
async fn a_page_token_that_repeats_is_an_error_not_a_loop() {
    let (url, seen) = scripted(Reply::Respond(
        "200 OK",
        "application/json",
        r#"{"operations": [{"name": "projects/p/operations/A"}], "nextPageToken": "same"}"#,
    ))
    .await;
    let ee = client(&url);
    let e = ee.list_all_operations().await.unwrap_err();
    assert!(matches!(e, EeError::Malformed { .. }), "{e}");
    assert_eq!(seen.lock().unwrap().len(), 2);
}
