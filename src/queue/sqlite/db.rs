//! The database file of single-machine mode: its schema, one connection per process, and the
//! local clock every time in it is measured on.
//!
//! Several cedar processes on one machine may share the file:
//! - each process keeps **one connection** behind a mutex, and runs every statement on tokio's
//!   blocking pool, so a slow disk never stalls the async workers;
//! - the database is in **WAL mode**: readers (status, metrics) never block the writer;
//! - every read-modify-write runs in a **`BEGIN IMMEDIATE`** transaction ([`Db::write`]), which
//!   takes the write lock before its first read: two processes can never both see the same free
//!   admission slot or lease the same due job. A process that finds the lock taken waits up to
//!   [`BUSY_TIMEOUT`]; past that its error is retryable, like a dropped Redis connection.
//! - `synchronous = NORMAL`: a committed transaction survives the process being killed (the WAL
//!   is in the OS's hands); only a power cut may lose the last transactions, as with Redis's
//!   default `appendfsync everysec`.
//!
//! All times come from the local clock ([`now_ms`]): every process sharing the file runs on this
//! machine.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior};

use crate::queue::QueueError;

/// How long a process waits for another one's write transaction before giving up (retryably).
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The version of [`SCHEMA`], kept in `PRAGMA user_version`. A file written by a newer cedar is
/// refused instead of being half-understood; an older one is brought up to date ([`UPGRADES`]).
const SCHEMA_VERSION: i64 = 3;

/// What turns a file of version `from` into one of version `from + 1`, in order. A new file
/// gets [`SCHEMA`] and [`RUN_TABLES`] directly, which already have all of it.
const UPGRADES: &[(i64, &str)] = &[
    (
        1,
        "ALTER TABLE jobs ADD COLUMN woken INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE ops_waiting ADD COLUMN job TEXT;",
    ),
    (2, RUN_TABLES),
];

/// The export runs (`queue::run`): a submission's export jobs before admission expands them,
/// placed in the backlog beside the jobs (`run_at` is the run's place, as a job's), and the
/// plan each expands from.
const RUN_TABLES: &str = "
CREATE TABLE IF NOT EXISTS runs (
  ns TEXT NOT NULL,
  member TEXT NOT NULL,
  tracking TEXT NOT NULL,
  next INTEGER NOT NULL,
  end_index INTEGER NOT NULL,
  run_at INTEGER NOT NULL,
  enqueued_ms INTEGER NOT NULL,
  PRIMARY KEY (ns, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_by_place ON runs (ns, run_at, member);
CREATE TABLE IF NOT EXISTS run_plans (
  ns TEXT NOT NULL,
  tracking TEXT NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (ns, tracking)
) WITHOUT ROWID;
";

/// Every table of the file. Job states are the Redis structures a job id can be in: `backlog`
/// (export jobs waiting for an admission slot; `run_at` is their enqueue sequence), `due`
/// (`run_at` is when it may run), `leased` (`run_at` is the lease expiry, `owner` the worker) and
/// `dead` (`dead_reason` says why). A job exists while its row does, whatever its state.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS jobs (
  ns TEXT NOT NULL,
  stage TEXT NOT NULL,
  id TEXT NOT NULL,
  payload BLOB NOT NULL,
  -- The payload's tracking name, for `cedar retry` and cancel (NULL if it has none).
  tracking TEXT,
  state TEXT NOT NULL CHECK (state IN ('backlog', 'due', 'leased', 'dead')),
  run_at INTEGER,
  owner TEXT,
  attempts INTEGER NOT NULL DEFAULT 0,
  last_error TEXT,
  dead_reason TEXT,
  enqueued_ms INTEGER NOT NULL,
  -- 1 when the job was woken while leased: its next snooze is due at once (Redis
  -- `{ns}:{stage}:woken`).
  woken INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (ns, stage, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (ns, stage, state, run_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (ns, stage, owner) WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_tracking ON jobs (ns, stage, tracking);
-- Ids holding an EE admission slot (Redis `{ns}:ee:active`).
CREATE TABLE IF NOT EXISTS slots (
  ns TEXT NOT NULL,
  id TEXT NOT NULL,
  PRIMARY KEY (ns, id)
) WITHOUT ROWID;
-- EE calls per unix second (Redis `{ns}:ee:rate:{second}`).
CREATE TABLE IF NOT EXISTS rate (
  ns TEXT NOT NULL,
  second INTEGER NOT NULL,
  calls INTEGER NOT NULL,
  PRIMARY KEY (ns, second)
) WITHOUT ROWID;
-- Sequences, e.g. the export backlog's (Redis `{ns}:export:seq`).
CREATE TABLE IF NOT EXISTS counters (
  ns TEXT NOT NULL,
  name TEXT NOT NULL,
  value INTEGER NOT NULL,
  PRIMARY KEY (ns, name)
) WITHOUT ROWID;
-- Tracking: one row per submission, one per order, one per (submission, state) tally.
CREATE TABLE IF NOT EXISTS submissions (
  ns TEXT NOT NULL,
  name TEXT NOT NULL,
  submitted_ms INTEGER NOT NULL,
  body TEXT NOT NULL,
  PRIMARY KEY (ns, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS orders (
  ns TEXT NOT NULL,
  tracking TEXT NOT NULL,
  key TEXT NOT NULL,
  status TEXT NOT NULL,
  PRIMARY KEY (ns, tracking, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS order_counts (
  ns TEXT NOT NULL,
  tracking TEXT NOT NULL,
  state TEXT NOT NULL,
  n INTEGER NOT NULL,
  PRIMARY KEY (ns, tracking, state)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirty (
  ns TEXT NOT NULL,
  tracking TEXT NOT NULL,
  PRIMARY KEY (ns, tracking)
) WITHOUT ROWID;
-- The operations snapshot: views by operation name, awaited operations with their poll jobs,
-- looked-up operations, and the sweeper's leader lock and last sweep start.
CREATE TABLE IF NOT EXISTS ops (
  ns TEXT NOT NULL,
  name TEXT NOT NULL,
  view TEXT NOT NULL,
  PRIMARY KEY (ns, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ops_waiting (
  ns TEXT NOT NULL,
  name TEXT NOT NULL,
  -- The id of the poll job waiting for it (NULL if a cedar of schema 1 recorded it).
  job TEXT,
  PRIMARY KEY (ns, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ops_looked_up (
  ns TEXT NOT NULL,
  name TEXT NOT NULL,
  PRIMARY KEY (ns, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ops_sweep (
  ns TEXT NOT NULL PRIMARY KEY,
  leader TEXT,
  leader_until_ms INTEGER,
  swept_ms INTEGER
) WITHOUT ROWID;
"#;

/// The file a `sqlite://` queue URL names: `sqlite:///abs/path` is absolute, `sqlite://rel.db`
/// relative to the working directory. None for other URLs or an empty path.
pub fn path_of(url: &str) -> Option<PathBuf> {
    url.strip_prefix("sqlite://")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
}

/// Why `path` cannot hold the database although something is there ("is a directory, not a
/// database file; …"): a device, a directory, a FIFO or a socket. None for a regular file (or a
/// link to one) and for nothing at all.
///
/// SQLite would open `/dev/null` happily and then create its journal beside it
/// (`/dev/null-journal`), and a FIFO would block it; so the kind is checked before SQLite sees
/// the path, by `validate` and again by [`Db::open`].
pub fn not_a_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(path).ok()?.file_type();
    let what = if kind.is_file() {
        return None;
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Some(format!(
        "is {what}, not a database file; point queue.url at a file (created if missing), e.g. sqlite:///var/lib/cedar/cedar.db"
    ))
}

/// Checks that the database file at `path` can be opened, creating it (empty, as SQLite would)
/// if it does not exist, so that a missing or read-only directory is reported with the
/// system's reason instead of SQLite's "unable to open database file". Nothing is created when
/// the check fails.
fn prepare(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(reason) = not_a_file(path) {
        return Err(reason);
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "{} is not a directory; point queue.url at a file in a directory",
                dir.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "the directory {} does not exist; create it, or point queue.url at a file in an existing directory",
                dir.display()
            ));
        }
        Err(e) => return Err(format!("cannot reach the directory {}: {e}", dir.display())),
    }
    // 0644 as SQLite creates it (its SQLITE_DEFAULT_FILE_PERMISSIONS), whatever the umask.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
    {
        // Another process may create it between the check and here: that is fine.
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!(
            "cannot create the database file in {}: {e}; make the directory writable for this user, or point queue.url elsewhere",
            dir.display()
        )),
    }
}

/// Milliseconds since the Unix epoch on the local clock.
pub(in crate::queue) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// True for errors worth retrying: another process held the write lock past [`BUSY_TIMEOUT`],
/// or the disk failed or filled up (an operator can fix that while the job waits).
pub fn is_retryable(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
        )
    )
}

/// One process's connection to the database file.
pub struct Db {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Arc<Db>, QueueError> {
        let path = path.to_owned();
        let shown = path.display().to_string();
        let opened = tokio::task::spawn_blocking(move || Db::open_blocking(path))
            .await
            .map_err(|e| QueueError::Database {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        opened.map(Arc::new).map_err(|e| match e {
            // The file exists and is readable, but WAL mode writes two files beside it.
            QueueError::Sqlite(e) if e.sqlite_error_code() == Some(ErrorCode::ReadOnly) => {
                QueueError::Database {
                    reason: format!(
                        "{e}: this user cannot write the file or its directory (SQLite keeps \
                         {shown}-wal and {shown}-shm beside it); make both writable, or point \
                         queue.url elsewhere"
                    ),
                    path: shown,
                }
            }
            QueueError::Sqlite(e) => QueueError::Database {
                path: shown,
                reason: e.to_string(),
            },
            other => other,
        })
    }

    fn open_blocking(path: PathBuf) -> Result<Db, QueueError> {
        prepare(&path).map_err(|reason| QueueError::Database {
            path: path.display().to_string(),
            reason,
        })?;
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // journal_mode answers with the mode now in force; anything but WAL would let a long
        // read block every writer.
        // Switching a new file to WAL takes an exclusive lock without waiting on the busy
        // handler: two processes opening the file at once (a worker starting while `submit`
        // runs) would get "database is locked". Retry until the busy timeout instead.
        let started = std::time::Instant::now();
        let mode: String = loop {
            match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if matches!(
                        e.code,
                        rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                    ) && started.elapsed() < BUSY_TIMEOUT =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(QueueError::Database {
                path: path.display().to_string(),
                reason: format!("cannot switch to WAL mode (journal mode is {mode})"),
            });
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(QueueError::Database {
                path: path.display().to_string(),
                reason: format!(
                    "schema version {version} was written by a newer cedar (this one knows {SCHEMA_VERSION})"
                ),
            });
        }
        if version == 0 {
            tx.execute_batch(SCHEMA)?;
            tx.execute_batch(RUN_TABLES)?;
        } else {
            for (_, upgrade) in UPGRADES.iter().filter(|(from, _)| *from >= version) {
                tx.execute_batch(upgrade)?;
            }
        }
        if version < SCHEMA_VERSION {
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        tx.commit()?;
        Ok(Db {
            conn: Mutex::new(conn),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection, on the blocking pool.
    pub(in crate::queue) async fn read<T, F>(self: &Arc<Self>, f: F) -> rusqlite::Result<T>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        join(tokio::task::spawn_blocking(move || {
            let conn = db.conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        }))
        .await
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction, committed if `f` succeeds.
    pub(in crate::queue) async fn write<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        F: FnOnce(&Transaction) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<rusqlite::Error> + Send + 'static,
    {
        let db = self.clone();
        join(tokio::task::spawn_blocking(move || {
            let mut conn = db.conn.lock().unwrap_or_else(|p| p.into_inner());
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        }))
        .await
    }
}

/// Waits for a blocking task: its panic is re-raised here (a bug, as it would be inline); a task
/// dropped because the runtime shuts down reads as an interrupted statement.
async fn join<T, E: From<rusqlite::Error>>(
    task: tokio::task::JoinHandle<Result<T, E>>,
) -> Result<T, E> {
    match task.await {
        Ok(out) => out,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(E::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_INTERRUPT),
            Some("the runtime shut down before the statement ran".into()),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_opening_a_new_file_at_once_all_get_it() {
        // Each round, four openers race on a file that does not exist yet, as `cedar submit`
        // and a starting worker do: none may fail with "database is locked".
        let dir = tempfile::tempdir().unwrap();
        for round in 0..10 {
            let path = dir.path().join(format!("race-{round}.db"));
            let openers: Vec<_> = (0..4)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || Db::open_blocking(path).map(|_| ()))
                })
                .collect();
            for o in openers {
                o.join().unwrap().unwrap();
            }
        }
    }

    #[test]
    fn sqlite_urls_name_absolute_and_relative_files() {
        assert_eq!(
            path_of("sqlite:///var/lib/cedar.db"),
            Some(PathBuf::from("/var/lib/cedar.db"))
        );
        assert_eq!(
            path_of("sqlite://cedar.db"),
            Some(PathBuf::from("cedar.db"))
        );
        assert_eq!(path_of("sqlite://"), None);
        assert_eq!(path_of("redis://h"), None);
    }

    #[test]
    fn busy_and_disk_errors_are_retryable_constraint_errors_are_not() {
        let code = |c| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(c), None);
        assert!(is_retryable(&code(rusqlite::ffi::SQLITE_BUSY)));
        assert!(is_retryable(&code(rusqlite::ffi::SQLITE_FULL)));
        assert!(!is_retryable(&code(rusqlite::ffi::SQLITE_CONSTRAINT)));
        assert!(!is_retryable(&rusqlite::Error::QueryReturnedNoRows));
    }
}
