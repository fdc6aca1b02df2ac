//! A headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! JSON messages ended by NUL on file descriptors 3 and 4), so that the console's tests load
//! its pages in a real browser, run its script, click its tiles and take screenshots, with no
//! WebSocket client and no driver to install beside Debian's `chromium`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::support::on_path;

/// How long one protocol command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One Chromium with one page, killed on drop.
pub struct Browser {
    _child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Debian's `chromium` (or `CEDAR_CHROMIUM`) headless with a page of 1400 × 1200
    /// CSS pixels. A missing browser fails the test: these tests are the console's proof.
    pub async fn launch() -> Browser {
        let program = std::env::var_os("CEDAR_CHROMIUM")
            .map(PathBuf::from)
            .or_else(|| on_path("chromium"))
            .or_else(|| on_path("chromium-browser"))
            .expect("chromium is required by the web console's tests: apt-get install chromium (.ci/run installs it), or set CEDAR_CHROMIUM");
        let profile = tempfile::tempdir().unwrap();
        // Chromium reads commands on fd 3 and writes answers on fd 4: the shell puts this
        // process's pipes there, and the browser's own stdin and stdout out of the way.
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(&program)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                "--window-size=1400,1200",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let mut child = child;
        let to = child.stdin.take().unwrap();
        let from = BufReader::new(child.stdout.take().unwrap());
        let mut b = Browser {
            _child: child,
            to,
            from,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b
            .command("Target.createTarget", json!({"url": "about:blank"}))
            .await["targetId"]
            .as_str()
            .unwrap()
            .to_owned();
        let attached = b
            .command(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.command(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 1200, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        b
    }

    /// Sends a command (to the page once attached) and returns its result; an error answer
    /// fails the test.
    pub async fn command(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).await.unwrap();
        self.to.flush().await.unwrap();
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, async {
            loop {
                let mut buf = Vec::new();
                let n = self.from.read_until(0, &mut buf).await.unwrap();
                assert!(n > 0, "chromium closed its pipe during {method}");
                buf.pop();
                let v: Value = serde_json::from_slice(&buf).unwrap();
                // Events (no id) and answers to other commands are not this answer.
                if v["id"] == json!(id) {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("chromium did not answer {method} in {COMMAND_TIMEOUT:?}"));
        if let Some(e) = answer.get("error") {
            panic!("{method}: {e}");
        }
        answer["result"].clone()
    }

    /// Loads `url` and waits until the new document is complete (its deferred script has run).
    pub async fn goto(&mut self, url: &str) {
        // A mark on the old window: the new document's window does not have it.
        self.eval("window.cedarOldPage = true").await;
        let r = self.command("Page.navigate", json!({"url": url})).await;
        assert!(r.get("errorText").is_none(), "{url}: {r}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let loaded = self
                .eval("window.cedarOldPage === undefined && document.readyState === 'complete'")
                .await;
            if loaded == json!(true) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{url} did not load");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `condition` (a JavaScript expression) is true, and fails the test with
    /// `what` (and the value of `show`) when it is not within `within`.
    pub async fn wait_for(&mut self, condition: &str, within: Duration, show: &str) {
        let deadline = std::time::Instant::now() + within;
        loop {
            if self.eval(condition).await == json!(true) {
                return;
            }
            if std::time::Instant::now() > deadline {
                let shown = self.eval(show).await;
                panic!("still not `{condition}` after {within:?}: {shown}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The value of a JavaScript expression (promises awaited); an exception fails the test.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .command(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// A real mouse click (pressed and released) at the centre of the element `selector`
    /// finds, as a person's: the page sees mousemove, mousedown, mouseup and click.
    pub async fn click(&mut self, selector: &str) {
        self.click_at(selector, 0.5, 0.5).await;
    }

    /// A real mouse click at `fx`, `fy` of the element's width and height from its top left.
    pub async fn click_at(&mut self, selector: &str, fx: f64, fy: f64) {
        let at = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({sel}); e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); return [r.x + r.width * {fx}, r.y + r.height * {fy}]; }})()",
                sel = serde_json::to_string(selector).unwrap()
            ))
            .await;
        let (x, y) = (at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.command(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// Writes a PNG of the whole page to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let r = self
            .command(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

/// Where the console's screenshots are kept after a run: `target/artefacts/`.
pub fn artefact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/artefacts")
        .join(name)
}
