//! Errors of Earth Engine calls, classified where they arise: retryable or fatal.
//!
//! The client never sleeps or retries; the jobs own the retry policy and ask
//! [`EeError::is_retryable`] and [`EeError::is_queue_full`].

use serde::Deserialize;
use serde_json::Value;

use crate::auth::AuthError;

/// The text EE puts in the error when a project's task queue (3000 tasks) is full.
const QUEUE_FULL: &str = "too many tasks already in the queue";

/// HTTP statuses that Google APIs use for transient conditions.
const RETRYABLE_STATUSES: [u16; 5] = [429, 500, 502, 503, 504];

/// An error of one Earth Engine call. `call` names the REST method, e.g. `image:export`.
#[derive(Debug, thiserror::Error)]
pub enum EeError {
    /// EE answered with a non-2xx status. `ee_status` and `message` come from Google's error
    /// body `{"error":{"code","message","status","details"}}` when there is one.
    #[error("Earth Engine {call}: HTTP {status}{}: {message}", ee_status.as_deref().map(|s| format!(" {s}")).unwrap_or_default())]
    Api {
        call: &'static str,
        status: u16,
        ee_status: Option<String>,
        message: String,
        details: Vec<Value>,
    },
    /// No answer within the client's timeout. Retryable.
    #[error("Earth Engine {call}: timed out: {reason}")]
    Timeout { call: &'static str, reason: String },
    /// The connection failed or broke (refused, reset, DNS). Retryable.
    #[error("Earth Engine {call}: connection failed: {reason}")]
    Connection { call: &'static str, reason: String },
    /// A 2xx answer that is not the JSON this call returns (e.g. an HTML page). Fatal.
    #[error("Earth Engine {call}: unexpected response (HTTP {status}): {reason}")]
    Malformed {
        call: &'static str,
        status: u16,
        reason: String,
    },
    /// The request could not be built (bad endpoint, operation name, …). Fatal.
    #[error("Earth Engine {call}: invalid request: {reason}")]
    InvalidRequest { call: &'static str, reason: String },
    /// No access token. A bad key is fatal; a failed token request is retryable.
    #[error("Earth Engine {call}: {source}")]
    Auth {
        call: &'static str,
        #[source]
        source: AuthError,
    },
}

impl EeError {
    /// Whether the same call may succeed if repeated later.
    ///
    /// Queue-full is back-pressure and counts as retryable; callers that want to wait without
    /// spending a retry check [`is_queue_full`](Self::is_queue_full) first.
    pub fn is_retryable(&self) -> bool {
        match self {
            EeError::Api { status, .. } => {
                RETRYABLE_STATUSES.contains(status) || self.is_queue_full()
            }
            EeError::Timeout { .. } | EeError::Connection { .. } => true,
            EeError::Malformed { .. } | EeError::InvalidRequest { .. } => false,
            EeError::Auth { source, .. } => matches!(source, AuthError::Token(_)),
        }
    }

    /// The queue limit EE names in a queue-full answer ("Too many tasks already in the queue
    /// (3000).", the project's limit, which another pipeline's tasks count against too).
    pub fn queue_limit(&self) -> Option<u64> {
        let EeError::Api { message, .. } = self else {
            return None;
        };
        let lower = message.to_ascii_lowercase();
        let rest = &lower[lower.find(QUEUE_FULL)? + QUEUE_FULL.len()..];
        let inner = rest.trim_start().strip_prefix('(')?;
        inner[..inner.find(')')?].trim().parse().ok()
    }

    /// "Too many tasks already in the queue": the project has 3000 queued tasks.
    ///
    /// Matched on the message because the HTTP status of this error is not documented.
    pub fn is_queue_full(&self) -> bool {
        match self {
            EeError::Api { message, .. } => message.to_ascii_lowercase().contains(QUEUE_FULL),
            _ => false,
        }
    }

    /// EE refused to create something that exists: 409 `ALREADY_EXISTS`, which is one way EE may
    /// answer an `image:export` whose `requestId` already started a task (Google documents
    /// only that a single such request starts an operation). A 409 `ABORTED` (a conflict of
    /// concurrent writes) is not this.
    pub fn is_already_exists(&self) -> bool {
        match self.ee_status() {
            Some(status) => status == "ALREADY_EXISTS",
            None => self.http_status() == Some(409) && matches!(self, EeError::Api { .. }),
        }
    }

    /// HTTP 404, e.g. an operation EE no longer knows.
    pub fn is_not_found(&self) -> bool {
        self.http_status() == Some(404)
    }

    /// The HTTP status, when EE answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            EeError::Api { status, .. } | EeError::Malformed { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `google.rpc.Code` name from the error body, e.g. `RESOURCE_EXHAUSTED`.
    pub fn ee_status(&self) -> Option<&str> {
        match self {
            EeError::Api { ee_status, .. } => ee_status.as_deref(),
            _ => None,
        }
    }

    /// Builds the error of a non-2xx answer from its status and body.
    pub(crate) fn from_response(call: &'static str, status: u16, body: &[u8]) -> EeError {
        #[derive(Deserialize)]
        struct Envelope {
            error: Body,
        }
        #[derive(Deserialize)]
        struct Body {
            #[serde(default)]
            message: Option<String>,
            #[serde(default)]
            status: Option<String>,
            #[serde(default)]
            details: Option<Vec<Value>>,
        }
        match serde_json::from_slice::<Envelope>(body) {
            Ok(Envelope { error }) => EeError::Api {
                call,
                status,
                ee_status: error.status.filter(|s| !s.is_empty()),
                message: error.message.unwrap_or_default(),
                details: error.details.unwrap_or_default(),
            },
            // Front ends answer some errors (502 most often) with an HTML page; the status
            // still classifies it, and the start of the page helps whoever reads the log.
            Err(_) => EeError::Api {
                call,
                status,
                ee_status: None,
                message: format!("non-JSON error body: {}", snippet(body)),
                details: Vec::new(),
            },
        }
    }

    /// Classifies a transport error of reqwest.
    pub(crate) fn from_reqwest(call: &'static str, e: reqwest::Error) -> EeError {
        let reason = chain(&e);
        if e.is_timeout() {
            EeError::Timeout { call, reason }
        } else if e.is_builder() {
            EeError::InvalidRequest { call, reason }
        } else {
            // Refused, reset, broken mid-body, DNS: all worth another try.
            EeError::Connection { call, reason }
        }
    }
}

/// The error and its sources, joined: reqwest's own message hides the cause
/// ("connection reset") in the source chain.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        cur = s.source();
    }
    text
}

/// The start of a body, on one line, for error messages.
pub(crate) fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        format!("{}…", one_line.chars().take(200).collect::<String>())
    } else if one_line.is_empty() {
        "(empty body)".to_string()
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn google(code: u16, status: &str, message: &str) -> Vec<u8> {
        serde_json::json!({"error": {"code": code, "message": message, "status": status, "details": []}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn classification_table() {
        let cases: &[(u16, &str, &str, bool, bool)] = &[
            (429, "RESOURCE_EXHAUSTED", "Too Many Requests", true, false),
            (
                500,
                "INTERNAL",
                "An internal error has occurred",
                true,
                false,
            ),
            (502, "", "Bad Gateway", true, false),
            (
                503,
                "UNAVAILABLE",
                "The service is currently unavailable.",
                true,
                false,
            ),
            (504, "DEADLINE_EXCEEDED", "Deadline exceeded", true, false),
            (
                400,
                "INVALID_ARGUMENT",
                "Image.select: Pattern 'x' did not match any bands.",
                false,
                false,
            ),
            (
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials.",
                false,
                false,
            ),
            (403, "PERMISSION_DENIED", "Permission denied", false, false),
            (404, "NOT_FOUND", "Operation not found", false, false),
            (409, "ALREADY_EXISTS", "exists", false, false),
            (
                400,
                "FAILED_PRECONDITION",
                "Too many tasks already in the queue (3000). Please wait for some of them to complete.",
                true,
                true,
            ),
            (
                429,
                "RESOURCE_EXHAUSTED",
                "Too many tasks already in the queue (3000). Please wait for some of them to complete.",
                true,
                true,
            ),
        ];
        for &(status, ee_status, message, retryable, queue_full) in cases {
            let e =
                EeError::from_response("image:export", status, &google(status, ee_status, message));
            assert_eq!(e.is_retryable(), retryable, "{status} {message}");
            assert_eq!(e.is_queue_full(), queue_full, "{status} {message}");
            assert_eq!(e.queue_limit(), queue_full.then_some(3000));
            assert_eq!(e.is_already_exists(), ee_status == "ALREADY_EXISTS");
            assert_eq!(e.http_status(), Some(status));
            assert_eq!(e.ee_status(), (!ee_status.is_empty()).then_some(ee_status));
            let text = e.to_string();
            assert!(
                text.contains(message) && text.contains(&status.to_string()),
                "{text}"
            );
        }
        assert!(EeError::from_response("x", 404, b"{}").is_not_found());
    }

    #[test]
    fn a_conflict_is_already_exists_unless_it_says_aborted() {
        let conflict = |body: &[u8]| EeError::from_response("image:export", 409, body);
        assert!(conflict(&google(409, "ALREADY_EXISTS", "exists")).is_already_exists());
        assert!(conflict(b"<html>Conflict</html>").is_already_exists());
        assert!(
            !conflict(&google(409, "ABORTED", "The operation was aborted.")).is_already_exists()
        );
        let other = EeError::from_response("image:export", 400, &google(400, "", "bad"));
        assert!(!other.is_already_exists());
    }

    #[test]
    fn html_error_pages_keep_status_and_a_snippet() {
        let page = b"<!DOCTYPE html>\n<html><body>\n  <p>502. That's an error.</p></body></html>";
        let e = EeError::from_response("operations.get", 502, page);
        assert!(e.is_retryable());
        assert_eq!(e.ee_status(), None);
        assert!(
            e.to_string().contains("<p>502. That's an error.</p>"),
            "{e}"
        );
        let e = EeError::from_response("operations.get", 400, page);
        assert!(!e.is_retryable());
    }

    #[test]
    fn non_http_errors() {
        let timeout = EeError::Timeout {
            call: "x",
            reason: "t".into(),
        };
        let reset = EeError::Connection {
            call: "x",
            reason: "connection reset".into(),
        };
        let malformed = EeError::Malformed {
            call: "x",
            status: 200,
            reason: "html".into(),
        };
        let invalid = EeError::InvalidRequest {
            call: "x",
            reason: "bad".into(),
        };
        assert!(timeout.is_retryable() && reset.is_retryable());
        assert!(!malformed.is_retryable() && !invalid.is_retryable());
        let key = EeError::Auth {
            call: "x",
            source: AuthError::Credentials {
                path: "k.json".into(),
                reason: "unreadable".into(),
            },
        };
        let token = EeError::Auth {
            call: "x",
            source: AuthError::Token("503".into()),
        };
        assert!(!key.is_retryable() && token.is_retryable());
    }

    #[test]
    fn snippets_are_one_short_line() {
        assert_eq!(snippet(b""), "(empty body)");
        assert_eq!(snippet(b"a\n  b"), "a b");
        assert_eq!(snippet("x".repeat(500).as_bytes()).chars().count(), 201);
    }
}
