//! Connecting to the Redis of a `[queue] url`, and saying plainly why a first connection failed.
//!
//! The redis crate reports a port that is not Redis as its parser sees it ("Incompatible type -
//! Parse error at 1 / Unexpected 84" for an HTTP server) and a service that says nothing as
//! "timed out". When a first connection fails, cedar therefore looks at what answers there
//! ([`sniff`]: an inline `PING` over plain TCP, and the first bytes of the answer) and turns the
//! failure into one sentence with its fix ([`QueueError::Connect`]).

use std::time::Duration;

use redis::{ErrorKind, aio::ConnectionManager, aio::ConnectionManagerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::queue::QueueError;

/// How long establishing one connection may take (TCP, TLS and the client's handshake).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a command may wait for its answer: 10 s instead of the crate's 500 ms default,
/// which under load turns a slow reply into an error that kills apalis workers (apalis-redis#76).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`sniff`] waits to connect, and then for the first bytes of an answer. Short: it
/// only runs after a first connection failed, to explain that failure.
const SNIFF_WAIT: Duration = Duration::from_secs(2);

/// Bytes of the answer [`sniff`] reads: enough for a status line or a banner.
const SNIFF_BYTES: usize = 64;

/// A connection to `url` (`redis://` or `rediss://`) with the timeouts every cedar connection
/// uses, shared by the queue, the tracking state and the operations snapshot.
///
/// The connection manager reconnects by itself, and retries a refused first connection with
/// backoff for about 8 s, which rides out a Redis restart.
pub async fn connect(url: &str) -> Result<ConnectionManager, QueueError> {
    connect_with_ca(url, None).await
}

/// [`connect`], trusting only the CA certificates of the PEM file `tls_ca_file` (for a
/// `rediss://` server with a private CA) instead of the system's trust store.
pub async fn connect_with_ca(
    url: &str,
    tls_ca_file: Option<&std::path::Path>,
) -> Result<ConnectionManager, QueueError> {
    // One attempt first: when what answers is not Redis at all, no number of retries changes
    // that. Only what a restarting Redis looks like (refused, dropped) is worth the backoff.
    match probe(url, tls_ca_file).await {
        Err(e) if !e.is_retryable() => Err(e),
        _ => manager(url, tls_ca_file).await,
    }
}

/// [`connect_with_ca`] for a command a person waits on: a Redis that does not answer is an
/// error at once, not after the manager's backoff, which is a long wait for nothing when a
/// person runs `cedar list` with Redis down.
pub async fn connect_now(
    url: &str,
    tls_ca_file: Option<&std::path::Path>,
) -> Result<ConnectionManager, QueueError> {
    probe(url, tls_ca_file).await?;
    manager(url, tls_ca_file).await
}

/// Connects once, without retries; a failure is explained ([`explain`]).
async fn probe(url: &str, tls_ca_file: Option<&std::path::Path>) -> Result<(), QueueError> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    match client(url, tls_ca_file)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) => Err(explain(url, e).await),
    }
}

async fn manager(
    url: &str,
    tls_ca_file: Option<&std::path::Path>,
) -> Result<ConnectionManager, QueueError> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_connection_timeout(Some(CONNECTION_TIMEOUT));
    match client(url, tls_ca_file)?
        .get_connection_manager_with_config(config)
        .await
    {
        Ok(manager) => Ok(manager),
        Err(e) => Err(explain(url, e).await),
    }
}

fn client(url: &str, tls_ca_file: Option<&std::path::Path>) -> Result<redis::Client, QueueError> {
    Ok(match tls_ca_file {
        None => redis::Client::open(url)?,
        Some(path) => {
            let tls_ca = |reason: String| QueueError::TlsCa {
                path: path.display().to_string(),
                reason,
            };
            let root_cert = std::fs::read(path).map_err(|e| tls_ca(e.to_string()))?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )
            .map_err(|e| tls_ca(e.to_string()))?
        }
    })
}

/// What answered at the address of a queue URL, seen by [`sniff`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Peer {
    /// `+PONG` or a Redis error line (`-NOAUTH …`): a Redis server, speaking without TLS.
    Redis,
    /// An HTTP status line or an HTML page.
    Http,
    /// Something else: its first line, printable characters only.
    Other(String),
    /// It closed the connection without sending a byte.
    Closed,
    /// It accepted the connection but sent nothing within [`SNIFF_WAIT`].
    Silent,
    /// No TCP connection within [`SNIFF_WAIT`].
    NoConnection,
}

/// Reads the first bytes a server sent in answer to an inline `PING`.
fn classify(answer: &[u8]) -> Peer {
    let lower = String::from_utf8_lossy(answer).to_ascii_lowercase();
    // A Redis error line: '-' and an upper-case code (ERR, NOAUTH, DENIED …).
    let error_line = answer.strip_prefix(b"-").is_some_and(|rest| {
        rest.first().is_some_and(u8::is_ascii_uppercase)
            && rest
                .iter()
                .take_while(|b| !b.is_ascii_whitespace())
                .all(u8::is_ascii_uppercase)
    });
    if answer.is_empty() {
        Peer::Closed
    } else if lower.starts_with("http/")
        || lower.starts_with("<!doctype html")
        || lower.starts_with("<html")
    {
        Peer::Http
    } else if answer.starts_with(b"+PONG") || error_line {
        Peer::Redis
    } else {
        let line = answer.split(|b| *b == b'\n').next().unwrap_or_default();
        let printable: String = String::from_utf8_lossy(line)
            .chars()
            .filter(|c| !c.is_control())
            .take(40)
            .collect();
        Peer::Other(printable)
    }
}

/// Sends an inline `PING` (a line a Redis answers `+PONG`, and an HTTP server takes for a bad
/// request line) to `host:port` over plain TCP and reads what comes back.
async fn sniff(host: &str, port: u16) -> Peer {
    let connected = tokio::time::timeout(SNIFF_WAIT, tokio::net::TcpStream::connect((host, port)));
    let Ok(Ok(mut stream)) = connected.await else {
        return Peer::NoConnection;
    };
    // A server with a banner (SSH, SMTP) has spoken already; one that reads first needs a line.
    let _ = stream.write_all(b"PING\r\n").await;
    let mut answer = Vec::with_capacity(SNIFF_BYTES);
    let mut buf = [0u8; SNIFF_BYTES];
    let read = tokio::time::timeout(SNIFF_WAIT, async {
        while answer.len() < SNIFF_BYTES && !answer.contains(&b'\n') {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    match read {
        Err(_) if answer.is_empty() => Peer::Silent,
        _ => classify(&answer),
    }
}

/// The host and port of a `redis://` or `rediss://` URL (6379 when it names none).
fn address(url: &str) -> Option<(String, u16)> {
    let url = url::Url::parse(url).ok()?;
    let host = match url.host()? {
        url::Host::Ipv6(ip) => ip.to_string(),
        host => host.to_string(),
    };
    Some((host, url.port().unwrap_or(6379)))
}

/// A failed first connection to `url`, explained: what answers there and what to change. Errors
/// that Redis itself sent (a wrong password, say) and those the look cannot explain are kept.
async fn explain(url: &str, e: redis::RedisError) -> QueueError {
    let connect = |reason: &str, retryable| QueueError::Connect {
        reason: reason.to_owned(),
        retryable,
    };
    if e.is_connection_refusal() {
        return connect(
            "nothing listens there (connection refused); start Redis, or point queue.url at a Redis server",
            true,
        );
    }
    // Redis answered (an error of its own, a failed AUTH) or the client refused the URL.
    if matches!(
        e.kind(),
        ErrorKind::Server(_)
            | ErrorKind::AuthenticationFailed
            | ErrorKind::InvalidClientConfig
            | ErrorKind::Client
    ) {
        return e.into();
    }
    let Some((host, port)) = address(url) else {
        return e.into();
    };
    let not_redis = |what: &str| {
        connect(
            &format!(
                "the server there does not speak the Redis protocol ({what}); point queue.url at a Redis server"
            ),
            false,
        )
    };
    let tls = url.starts_with("rediss://");
    match sniff(&host, port).await {
        Peer::Http => not_redis("it answered like an HTTP server"),
        Peer::Redis if tls => connect(
            "the server there speaks Redis without TLS; write redis:// instead of rediss://, or point queue.url at the TLS port",
            false,
        ),
        // A TLS server says nothing useful to a plain-text line: keep the TLS error.
        _ if tls => e.into(),
        Peer::Redis => e.into(),
        Peer::Other(line) => not_redis(&format!("it answered {line:?}")),
        Peer::Closed => not_redis("it closed the connection without answering"),
        Peer::Silent => connect(
            &format!(
                "the server there accepted the connection but answered nothing within {} s: it does not speak the Redis protocol, or it is stuck; point queue.url at a Redis server",
                CONNECTION_TIMEOUT.as_secs()
            ),
            false,
        ),
        Peer::NoConnection => connect(
            &format!(
                "no connection within {} s: the host does not answer (down, or a firewall drops the packets); check the host and port of queue.url",
                CONNECTION_TIMEOUT.as_secs()
            ),
            true,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_tell_redis_from_http_and_others() {
        assert_eq!(classify(b"+PONG\r\n"), Peer::Redis);
        assert_eq!(
            classify(b"-NOAUTH Authentication required.\r\n"),
            Peer::Redis
        );
        assert_eq!(classify(b"HTTP/1.1 400 Bad Request\r\n"), Peer::Http);
        // Python's http.server answers a one-word request line with the page alone.
        assert_eq!(classify(b"<!DOCTYPE HTML>\n<html lang=\"en\">"), Peer::Http);
        assert_eq!(
            classify(b"SSH-2.0-OpenSSH_9.6\r\n"),
            Peer::Other("SSH-2.0-OpenSSH_9.6".into())
        );
        assert_eq!(classify(b"-"), Peer::Other("-".into()));
        assert_eq!(classify(b""), Peer::Closed);
    }

    #[test]
    fn addresses_default_to_the_redis_port() {
        assert_eq!(
            address("redis://:pw@127.0.0.1:6380/1"),
            Some(("127.0.0.1".into(), 6380))
        );
        assert_eq!(
            address("rediss://cache.internal"),
            Some(("cache.internal".into(), 6379))
        );
        assert_eq!(address("redis://[::1]:7000"), Some(("::1".into(), 7000)));
    }
}
