//! The soak's child processes: its own `redis-server`, restarted from its AOF mid-run, and how
//! the soak stops any child — SIGTERM first, SIGKILL when the grace runs out.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// A free loopback port (bound, read, released).
pub(super) fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// SIGTERM through `kill(1)`: std and tokio only send SIGKILL.
pub(super) async fn sigterm(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
}

/// Waits for `child` to exit for up to `grace`, then SIGKILLs it.
pub(super) async fn reap(child: &mut Child, grace: Duration) {
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// The soak's own `redis-server`, with AOF in a folder that survives its restart.
pub(super) struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
    binary: String,
}

impl Redis {
    pub(super) async fn start(binary: &str, dir: &Path) -> anyhow::Result<Redis> {
        let port = free_port()?;
        let child = Self::spawn(binary, dir, port)?;
        let redis = Redis {
            child,
            port,
            dir: dir.to_owned(),
            binary: binary.to_owned(),
        };
        redis.wait_ready().await?;
        Ok(redis)
    }

    fn spawn(binary: &str, dir: &Path, port: u16) -> anyhow::Result<Child> {
        Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes"])
            .arg("--dir")
            .arg(dir.join("redis"))
            .arg("--logfile")
            .arg(dir.join("logs/redis.log"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {binary} (apt install redis-server)"))
    }

    pub(super) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("redis-server on port {} did not answer in 20 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM (Redis writes its AOF and exits), SIGKILL if it lingers, then the same server on
    /// the same port and folder: the data comes back from the AOF.
    pub(super) async fn restart(&mut self) -> anyhow::Result<Duration> {
        let began = Instant::now();
        sigterm(&self.child).await;
        reap(&mut self.child, Duration::from_secs(10)).await;
        self.child = Self::spawn(&self.binary, &self.dir, self.port)?;
        self.wait_ready().await?;
        Ok(began.elapsed())
    }

    /// SIGTERM, then SIGKILL if it lingers: the end of the soak.
    pub(super) async fn stop(&mut self) {
        sigterm(&self.child).await;
        reap(&mut self.child, Duration::from_secs(10)).await;
    }
}
