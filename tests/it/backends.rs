//! Both backends under test: a [`TestQueue`] of its own per test, on a real Redis on loopback or
//! on an SQLite file in a temporary directory, and [`on_both!`], which runs one behaviour test
//! once per backend, so the single-machine queue is held to exactly the Redis queue's contract.
//!
//! Each Redis test works in its own namespace, whose keys are deleted when the test ends (never
//! FLUSHALL). `CEDAR_TEST_REDIS` overrides the server (default `redis://127.0.0.1:6379`). Each
//! SQLite test gets its own file; "another process" is another handle opened on the same file,
//! with its own connection.

use cedar::queue::{Connection, Queue, Snapshot, Stage};

use crate::support::{Namespace, redis_connection, redis_url};

/// A queue of its own: a fresh Redis namespace, or a fresh SQLite file.
pub struct TestQueue {
    pub queue: Queue,
    pub url: String,
    pub namespace: String,
    /// The Redis namespace, its keys deleted on drop (None for SQLite).
    _keys: Option<Namespace>,
    /// The SQLite file's directory, deleted on drop (None for Redis).
    dir: Option<tempfile::TempDir>,
}

impl TestQueue {
    pub async fn redis(test: &str) -> TestQueue {
        let keys = Namespace::new(test);
        let url = redis_url();
        let queue = Queue::open(&url, &keys.name)
            .await
            .expect("Redis at CEDAR_TEST_REDIS or redis://127.0.0.1:6379");
        TestQueue {
            queue,
            url,
            namespace: keys.name.clone(),
            _keys: Some(keys),
            dir: None,
        }
    }

    pub async fn sqlite(test: &str) -> TestQueue {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("cedar.db").display());
        let namespace = format!("cedar-test:{test}");
        let queue = Queue::open(&url, &namespace).await.unwrap();
        TestQueue {
            queue,
            url,
            namespace,
            _keys: None,
            dir: Some(dir),
        }
    }

    /// A second handle on the same queue, with its own connection: another worker process.
    pub async fn other_process(&self) -> Queue {
        Queue::open(&self.url, &self.namespace).await.unwrap()
    }

    /// The operations snapshot of the same namespace, on a connection of its own: each call is
    /// another process.
    pub async fn snapshot(&self) -> Snapshot {
        let conn = Connection::open(&self.url).await.unwrap();
        Snapshot::new(&conn, &self.namespace)
    }

    /// Jobs of `stage` stored at all (`part` "data"), or with an attempt count recorded
    /// (`part` "attempts"), read behind the queue's back.
    pub async fn stored(&self, stage: Stage, part: &str) -> u64 {
        match &self.dir {
            None => {
                let mut conn = redis_connection().await;
                redis::cmd("HLEN")
                    .arg(format!("{}:{}:{}", self.namespace, stage.name(), part))
                    .query_async(&mut conn)
                    .await
                    .unwrap()
            }
            Some(dir) => {
                let db = rusqlite::Connection::open(dir.path().join("cedar.db")).unwrap();
                let filter = match part {
                    "data" => "1",
                    "attempts" => "attempts > 0",
                    other => panic!("no part {other} in SQLite"),
                };
                let n: i64 = db
                    .query_row(
                        &format!(
                            "SELECT count(*) FROM jobs WHERE ns = ?1 AND stage = ?2 AND {filter}"
                        ),
                        rusqlite::params![self.namespace, stage.name()],
                        |r| r.get(0),
                    )
                    .unwrap();
                n as u64
            }
        }
    }

    /// Deletes the stored plan of `tracking`'s export run behind the queue's back, as a lost
    /// key or a hand-edited database would.
    pub async fn lose_plan(&self, tracking: &str) {
        match &self.dir {
            None => {
                let mut conn = redis_connection().await;
                let n: u64 = redis::cmd("DEL")
                    .arg(format!("{}:export:plan:{tracking}", self.namespace))
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert_eq!(n, 1, "no plan of {tracking} to lose");
            }
            Some(dir) => {
                let db = rusqlite::Connection::open(dir.path().join("cedar.db")).unwrap();
                let n = db
                    .execute(
                        "DELETE FROM run_plans WHERE ns = ?1 AND tracking = ?2",
                        rusqlite::params![self.namespace, tracking],
                    )
                    .unwrap();
                assert_eq!(n, 1, "no plan of {tracking} to lose");
            }
        }
    }
}

/// Runs the behaviour test `$name` (an `async fn(TestQueue)`) once per backend, as
/// `$name::redis` and `$name::sqlite`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name($crate::backends::TestQueue::redis(stringify!($name)).await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::backends::TestQueue::sqlite(stringify!($name)).await).await
            }
        }
    )*};
}

pub(crate) use on_both;
