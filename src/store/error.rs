//! The one error type of the store, classified where each error arises.

use std::io;

use crate::auth::AuthError;

/// What went wrong while talking to the export bucket or writing to the destination.
///
/// [`StoreError::is_retryable`] separates transient failures (worth another attempt with backoff)
/// from fatal ones (a human must change something). No variant ever carries a token.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The service answered with an HTTP error status; `message` is the service's own explanation.
    #[error("{op} {target}: HTTP {status}: {message}")]
    Status {
        op: &'static str,
        target: String,
        status: u16,
        message: String,
    },
    /// No usable answer: connection refused or reset, timeout, or a body cut off mid-way.
    #[error("{op} {target}: {source}")]
    Transport {
        op: &'static str,
        target: String,
        #[source]
        source: reqwest::Error,
    },
    /// The service answered 2xx with something the GCS JSON API does not document.
    #[error("{op} {target}: unexpected response: {reason}")]
    Protocol {
        op: &'static str,
        target: String,
        reason: String,
    },
    /// The object does not exist.
    #[error("{name}: no such object")]
    NotFound { name: String },
    /// An object name or destination path that could escape the destination directory or that
    /// names no file; it is never written.
    #[error(
        "refusing unsafe name {name:?}: names must be relative, with no '..', '.' or empty \
         segments, no backslash and no NUL byte"
    )]
    UnsafeName { name: String },
    /// A store URL cedar cannot use.
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },
    /// No token for the storage API.
    #[error("storage credentials: {0}")]
    Auth(#[from] AuthError),
    /// The bytes received differ from what the bucket listed; nothing was written.
    #[error("{path}: {what} mismatch: expected {expected}, received {actual}; nothing was written")]
    Mismatch {
        path: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    /// The operating system or the store refused access.
    #[error("{path}: permission denied: {detail}")]
    PermissionDenied { path: String, detail: String },
    /// The file system holding the destination is full (or the user's quota is exhausted).
    #[error("{path}: no space left on the device holding it; free space or move the destination")]
    DiskFull { path: String },
    /// Any other local I/O failure.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Any other failure reported by an `object_store` store.
    #[error("{op} {target}: {source}")]
    ObjectStore {
        op: &'static str,
        target: String,
        #[source]
        source: object_store::Error,
    },
}

impl StoreError {
    /// Whether another attempt may succeed: throttling (429), server errors (5xx), timeouts,
    /// connection failures, token refreshes and corrupted transfers. Permission problems, missing
    /// buckets or objects, bad URLs, unsafe names and a full disk need a human.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Status { status, .. } => status_is_retryable(*status),
            // A request that could not even be built will fail the same way every time.
            StoreError::Transport { source, .. } => !source.is_builder(),
            StoreError::Auth(AuthError::Token(_)) => true,
            StoreError::Auth(AuthError::Credentials { .. }) => false,
            // A checksum or size mismatch is most often a transfer cut short; downloading again
            // is the only remedy, and the caller's retry cap stops a truly corrupt object.
            StoreError::Mismatch { .. } => true,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            // object_store already retried transient HTTP errors itself (its RetryConfig), so
            // what remains as Generic is most often a network failure that outlasted it.
            StoreError::ObjectStore { source, .. } => matches!(
                source,
                object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
            ),
            StoreError::Protocol { .. }
            | StoreError::NotFound { .. }
            | StoreError::UnsafeName { .. }
            | StoreError::Url { .. }
            | StoreError::PermissionDenied { .. }
            | StoreError::DiskFull { .. } => false,
        }
    }

    /// Whether the object (or file) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// Maps a local I/O error on `path`, singling out the two an operator must act on.
    pub(crate) fn io(path: impl Into<String>, source: io::Error) -> StoreError {
        let path = path.into();
        if source.kind() == io::ErrorKind::PermissionDenied {
            return StoreError::PermissionDenied {
                path,
                detail: "check the owner and mode of the destination directory".to_owned(),
            };
        }
        if is_disk_full(&source) {
            return StoreError::DiskFull { path };
        }
        StoreError::Io { path, source }
    }

    /// Maps an `object_store` error of operation `op` on `target`.
    pub(crate) fn object_store(
        op: &'static str,
        target: impl Into<String>,
        source: object_store::Error,
    ) -> StoreError {
        let target = target.into();
        match source {
            object_store::Error::NotFound { .. } => StoreError::NotFound { name: target },
            object_store::Error::PermissionDenied { source, .. }
            | object_store::Error::Unauthenticated { source, .. } => StoreError::PermissionDenied {
                path: target,
                detail: source.to_string(),
            },
            other => {
                // The local file system reports ENOSPC and EACCES wrapped in Generic errors; find
                // them so the operator gets the same message as for a plain local directory.
                let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&other);
                while let Some(error) = cause {
                    if let Some(io_error) = error.downcast_ref::<io::Error>() {
                        if io_error.kind() == io::ErrorKind::PermissionDenied {
                            return StoreError::PermissionDenied {
                                path: target,
                                detail: io_error.to_string(),
                            };
                        }
                        if is_disk_full(io_error) {
                            return StoreError::DiskFull { path: target };
                        }
                    }
                    cause = error.source();
                }
                StoreError::ObjectStore {
                    op,
                    target,
                    source: other,
                }
            }
        }
    }
}

/// 408 and 429 ask the client to come back later; 5xx are the server's own failures.
pub(crate) fn status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

fn is_disk_full(error: &io::Error) -> bool {
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(error.raw_os_error(), Some(ENOSPC | EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_split_into_retryable_and_fatal() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(status_is_retryable(status), "{status}");
        }
        for status in [400, 401, 403, 404, 409, 412] {
            assert!(!status_is_retryable(status), "{status}");
        }
    }

    #[test]
    fn disk_full_and_permission_denied_name_the_path() {
        let full = StoreError::io("/data/a.tif", io::Error::from_raw_os_error(28));
        assert!(matches!(full, StoreError::DiskFull { .. }), "{full:?}");
        assert!(full.to_string().contains("/data/a.tif"));
        assert!(full.to_string().contains("no space left"));
        assert!(!full.is_retryable());

        let denied = StoreError::io("/data/b.tif", io::Error::from_raw_os_error(13));
        assert!(matches!(denied, StoreError::PermissionDenied { .. }));
        assert!(denied.to_string().contains("/data/b.tif"));
        assert!(denied.to_string().contains("permission denied"));
        assert!(!denied.is_retryable());
    }

    #[test]
    fn object_store_errors_wrapping_io_errors_are_recognised() {
        let wrapped = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(io::Error::from_raw_os_error(28)),
        };
        let error = StoreError::object_store("write", "x/y.tif", wrapped);
        assert!(matches!(error, StoreError::DiskFull { .. }), "{error:?}");

        let missing = object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        };
        assert!(StoreError::object_store("get", "x", missing).is_not_found());
    }
}
