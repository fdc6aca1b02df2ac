//! The web console ([`cedar::web`]): its JSON API against the CLI's answers, escaping of every
//! user string, actions refused without the token and accepted with it, and — in a real headless
//! Chromium — the map of a campaign a `cedar worker` runs on the EE emulator, updating as its
//! orders finish, with each tile's details as `cedar show` has them. Screenshots are written to
//! `target/artefacts/`.

mod browser;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cedar::config::{Config, Settings};
use cedar::emulator::{EmulatorOptions, Fault};
use cedar::jobs::{Context, JobSettings};
use cedar::order::Order;
use cedar::queue::tracking::{OrderState, OrderStatus, Submission};
use cedar::queue::{Figure, Stage};
use cedar::submit::{self, Request};
use cedar::web::{Console, ConsoleOptions, campaign_href};
use serde_json::Value;
use tokio::sync::watch;

use self::browser::{Browser, artefact};
use crate::support::{
    Emulated, FAST_WORKER, LC08, Namespace, Process, TestConfig, cedar_command, configured,
    four_tiles, redis_url, run, small_exports, wait_until,
};

const BUCKET: &str = "cedar-web";
const LC09: &str = "LANDSAT/LC09/C02/T1_L2";

/// A console served in-process on a loopback port 0 over the test's own Redis namespace and
/// folders, with the configuration file the `cedar` binary needs to read the same queue.
struct Served {
    url: String,
    ctx: Context,
    settings: Arc<Settings>,
    config: PathBuf,
    dir: tempfile::TempDir,
    _ns: Namespace,
    _stop: watch::Sender<bool>,
}

impl Served {
    async fn start(test: &str, opts: ConsoleOptions) -> Served {
        let ns = Namespace::new(test);
        let dir = tempfile::tempdir().unwrap();
        let (bucket, dest) = (dir.path().join("bucket"), dir.path().join("dest"));
        std::fs::create_dir_all(&bucket).unwrap();
        std::fs::create_dir_all(&dest).unwrap();
        let file = TestConfig {
            // Nothing listens there: these tests never reach EE.
            endpoint: "http://127.0.0.1:9".to_owned(),
            queue_url: redis_url(),
            namespace: ns.name.clone(),
            bucket: BUCKET.to_owned(),
            store_url: format!("file://{}", bucket.display()),
            dest: dest.display().to_string(),
            ..TestConfig::default()
        }
        .write(dir.path().join("cedar.toml"));
        let settings = Arc::new(
            Config::load(Some(&file), Vec::new())
                .unwrap()
                .validate()
                .unwrap(),
        );
        let ctx = Context::connect(settings.clone(), JobSettings::default())
            .await
            .unwrap();
        let (stop, stopped) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(cedar::web::serve(
            listener,
            Console::new(ctx.clone(), opts),
            stopped,
        ));
        Served {
            url,
            ctx,
            settings,
            config: file,
            dir,
            _ns: ns,
            _stop: stop,
        }
    }

    /// Records a submission of `collections` × `tiles` × monthly periods from 2021-01-01 to
    /// `end` (every order QUEUED), named `name` when given.
    async fn submit(
        &self,
        name: Option<&str>,
        collections: &[&str],
        tiles: Vec<(u32, u32)>,
        end: &str,
    ) -> Submission {
        let req = Request {
            name: None,
            workload_tag: None,
            priority: Some(300),
            collections: collections.iter().map(|c| c.to_string()).collect(),
            tiles,
            start: "2021-01-01".parse().unwrap(),
            end: end.parse().unwrap(),
            freq: Some("MS".parse().unwrap()),
            save_empty_metadata: true,
            error_if_empty: false,
        };
        let mut sub = submit::plan(&self.settings, &req, chrono::Utc::now())
            .unwrap()
            .submission;
        if let Some(n) = name {
            sub.name = n.to_owned();
        }
        self.ctx.tracker.create(&sub).await.unwrap();
        sub
    }

    async fn set(&self, sub: &Submission, order: &Order, state: OrderState, error: Option<&str>) {
        let status = OrderStatus {
            error: error.map(str::to_owned),
            operation: Some(format!(
                "projects/cedar-e2e/operations/{}",
                order.row * 100 + order.col
            )),
            ..OrderStatus::new(state)
        };
        assert!(
            self.ctx
                .tracker
                .set(&sub.name, order, &status, true)
                .await
                .unwrap()
        );
    }

    /// The `cedar` binary with this configuration.
    fn cedar(&self, args: &[&str]) -> Command {
        configured(cedar_command(), self.dir.path(), &self.config, args)
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("{}{path}", self.url)).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// `/api/v1/campaigns/NAME`'s path.
fn api(name: &str) -> String {
    campaign_href(name).replacen("/campaigns/", "/api/v1/campaigns/", 1)
}

/// Runs a cedar command that prints JSON (exit 0-5: `status` says how the campaign ended).
async fn json(cmd: Command) -> Value {
    let (code, out, err) = run(cmd).await.parts();
    assert!(matches!(code, Some(0..=5)), "{code:?} {out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_answers_as_the_cli_does_and_pages_orders() {
    let s = Served::start("web-api", ConsoleOptions::default()).await;
    // 2 collections × 3 tiles × 5 monthly periods = 30 orders.
    let sub = s
        .submit(
            None,
            &[LC08, LC09],
            vec![(10, 14), (10, 15), (11, 14)],
            "2021-05-31",
        )
        .await;
    assert_eq!(sub.order_count(), 30);
    let orders: Vec<Order> = sub.orders().collect();
    for (i, state, error) in [
        (1, OrderState::Failed, Some("Computation timed out.")),
        (7, OrderState::Failed, Some("Computation timed out.")),
        (20, OrderState::Lost, Some("operation not found")),
        (2, OrderState::Cleaned, None),
        (3, OrderState::Running, None),
    ] {
        s.set(&sub, &orders[i], state, error).await;
    }
    // An ended task's EECU, and admission paused by the EECU budget: both as `status` says.
    let cleaned = OrderStatus {
        eecu_seconds: Some(12.5),
        ..s.ctx
            .tracker
            .status(&sub.name, &orders[2])
            .await
            .unwrap()
            .unwrap()
    };
    assert!(
        s.ctx
            .tracker
            .set(&sub.name, &orders[2], &cleaned, false)
            .await
            .unwrap()
    );
    let until = chrono::Utc::now().timestamp_millis() + 3_600_000;
    s.ctx
        .queue
        .set_figure(Figure::Paused, Some(until))
        .await
        .unwrap();
    let name = &sub.name;

    // A campaign is `cedar status --json`'s object, with more fields beside.
    let status = json(s.cedar(&["status", name, "--json"])).await;
    let campaign = s.json(&api(name)).await;
    for key in [
        "name",
        "total",
        "counts",
        "done",
        "eecu_seconds",
        "admission_paused_until",
    ] {
        assert!(!status[key].is_null(), "{key}: {status}");
        assert_eq!(campaign[key], status[key], "{key}: {campaign} vs {status}");
    }
    assert_eq!(campaign["eecu_seconds"], 12.5);
    assert_eq!(campaign["priority"], 300);
    assert_eq!(campaign["failed"], 3);
    assert_eq!(campaign["active"], 1);
    assert_eq!(campaign["periods"].as_array().unwrap().len(), 5);
    let all = s.json("/api/v1/campaigns").await;
    let listed = &all["campaigns"][0];
    assert_eq!(listed["counts"], status["counts"], "{all}");
    assert_eq!(all["ee"]["ee_queue_cap"], 3000);
    assert_eq!(all["stages"].as_array().unwrap().len(), 4, "{all}");

    // Every order, page after page, in the tracking document's order and with its names.
    let doc = json(s.cedar(&["show", name])).await;
    let doc_orders = doc["orders"].as_array().unwrap();
    let mut cursor = 0;
    let mut seen = Vec::new();
    loop {
        let page = s
            .json(&format!("{}/orders?limit=7&cursor={cursor}", api(name)))
            .await;
        let rows = page["orders"].as_array().unwrap();
        assert!(rows.len() <= 7, "{page}");
        seen.extend(rows.iter().cloned());
        match page["next"].as_u64() {
            Some(n) => cursor = n as usize,
            None => break,
        }
    }
    assert_eq!(seen.len(), 30);
    for (i, (row, d)) in seen.iter().zip(doc_orders).enumerate() {
        assert_eq!(row["index"], i, "{row}");
        assert_eq!(row["name"], d["name"], "{row} vs {d}");
        assert_eq!(row["prefix"], d["prefix"]);
        assert_eq!(row["status"]["state"], d["status"]["state"]);
        assert_eq!(row["status"]["error"], d["status"]["error"]);
    }

    // Filters: by state (lowercase accepted), and one order by collection, tile and period.
    let failed = s.json(&format!("{}/orders?state=failed", api(name))).await;
    let idx: Vec<u64> = failed["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["index"].as_u64().unwrap())
        .collect();
    assert_eq!(idx, [1, 7], "{failed}");
    let one = s
        .json(&format!(
            "{}/orders?collection={}&tile=10,15&period=2021-03-01",
            api(name),
            LC09.replace('/', "%2F")
        ))
        .await;
    let rows = one["orders"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{one}");
    // LC09 is collection 1: (1 × 3 + tile 1) × 5 + period 2.
    assert_eq!(rows[0]["index"], 22);
    assert_eq!(rows[0]["tile"], serde_json::json!([10, 15]));
    assert_eq!(rows[0]["status"]["state"], "QUEUED");

    // The view: the map of one collection and period, the matrix, failures by message.
    let view = s
        .json(&format!("{}/view?period=2021-02-01", api(name)))
        .await;
    assert_eq!(view["map"], "fqq", "{view}");
    let matrix = &view["matrix"];
    assert_eq!(matrix["by_year"], false);
    assert_eq!(matrix["cells"], "qfcrqqqfqqqqqqq", "{view}");
    let failures = view["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{view}");
    assert_eq!(failures[0]["message"], "Computation timed out.");
    assert_eq!(failures[0]["count"], 2);
    assert_eq!(failures[0]["examples"][0], doc_orders[1]["name"]);
    assert_eq!(failures[1]["count"], 1);

    // Bad input is answered 400 or 404 with the reason, never a page of nothing.
    for (path, code, says) in [
        (
            format!("{}/orders?state=DONE", api(name)),
            400,
            "not an order state",
        ),
        (
            format!("{}/orders?tile=99,99", api(name)),
            400,
            "not a tile of",
        ),
        (
            format!("{}/orders?period=2030-01-01", api(name)),
            400,
            "no period",
        ),
        (
            format!("{}/view?collection=NOPE", api(name)),
            400,
            "not a collection",
        ),
        (api("NO_SUCH_CAMPAIGN"), 404, "does not exist"),
        (campaign_href("NO_SUCH_CAMPAIGN"), 404, "does not exist"),
    ] {
        let (status, body) = s.get(&path).await;
        assert_eq!(status, code, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_strings_are_rendered_inert() {
    let s = Served::start("web-escape", ConsoleOptions::default()).await;
    let evil = r#"<script>alert("x")</script>'&"#;
    let sub = s
        .submit(Some(evil), &[LC08], vec![(10, 14), (10, 15)], "2021-02-28")
        .await;
    let order = sub.orders().next().unwrap();
    let message = r#"<img src=x onerror="alert(1)"> & "quoted""#;
    s.set(&sub, &order, OrderState::Failed, Some(message)).await;
    // A job that died with that message is listed on `/`, by id and reason.
    let job = cedar::jobs::job_for(evil, &order, None);
    s.ctx
        .queue
        .enqueue_bulk(
            Stage::Download,
            std::slice::from_ref(&job),
            std::time::Duration::ZERO,
        )
        .await
        .unwrap();
    assert!(
        s.ctx
            .queue
            .bury(Stage::Download, &job.id(), message)
            .await
            .unwrap()
    );
    let overview = s.json("/api/v1/campaigns").await;
    assert_eq!(overview["dead"][0]["id"], job.id());
    assert_eq!(overview["dead"][0]["stage"], "download");
    assert_eq!(overview["dead"][0]["reason"], "fatal");
    assert_eq!(overview["dead"][0]["last_error"], message);

    for path in ["/".to_owned(), campaign_href(evil)] {
        let (status, body) = s.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.contains("<script>alert"), "{path}: {body}");
        assert!(!body.contains("<img"), "{path}: {body}");
        assert!(
            body.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;'&amp;"),
            "{path}: {body}"
        );
    }
    let (_, page) = s.get(&campaign_href(evil)).await;
    assert!(
        page.contains("&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; &quot;quoted&quot;"),
        "{page}"
    );
    // The JSON API carries the strings as they are; the browser shows them as text.
    let c = s.json(&api(evil)).await;
    assert_eq!(c["name"], evil);

    let mut b = Browser::launch().await;
    b.goto(&format!("{}{}", s.url, campaign_href(evil))).await;
    // The script has refreshed the page from the API (failures included) at least once.
    b.wait_for(
        "Number(document.body.dataset.polls) >= 1",
        Duration::from_secs(15),
        "document.body.dataset.polls",
    )
    .await;
    assert_eq!(
        b.eval("document.querySelector('h1').textContent").await,
        evil
    );
    assert_eq!(
        b.eval("document.scripts.length").await,
        1,
        "only console.js runs"
    );
    assert_eq!(b.eval("document.querySelectorAll('img').length").await, 0);
    assert_eq!(
        b.eval("document.querySelector('#failures .msg').textContent")
            .await,
        message
    );
    assert_eq!(
        b.eval("document.querySelector('#campaign').dataset.name")
            .await,
        evil
    );
    // A click shows the order's details, its error as text.
    b.click("#map rect.tile").await;
    b.wait_for(
        "document.querySelector('#details').dataset.state === 'FAILED'",
        Duration::from_secs(10),
        "document.querySelector('#details').textContent",
    )
    .await;
    assert_eq!(b.eval("document.querySelectorAll('img').length").await, 0);
    let details = b
        .eval("document.querySelector('#details').textContent")
        .await;
    assert!(details.as_str().unwrap().contains(message), "{details}");
    b.goto(&format!("{}/", s.url)).await;
    assert_eq!(
        b.eval("document.querySelector('#campaigns tbody a').textContent")
            .await,
        evil
    );
    assert_eq!(b.eval("document.scripts.length").await, 1);
    // The dead job's row, rendered and then rebuilt by the script, holds text only.
    b.wait_for(
        "Number(document.body.dataset.polls) >= 1",
        Duration::from_secs(15),
        "document.body.dataset.polls",
    )
    .await;
    assert_eq!(
        b.eval("document.querySelector('#dead tbody code').textContent")
            .await,
        job.id()
    );
    assert_eq!(
        b.eval("document.querySelector('#dead tbody td.error').textContent")
            .await,
        message
    );
    assert_eq!(b.eval("document.querySelectorAll('img').length").await, 0);
    b.screenshot(&artefact("web-escaping.png")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_are_refused_without_the_token_and_accepted_with_it() {
    let closed = Served::start("web-actions-off", ConsoleOptions::default()).await;
    let sub = closed
        .submit(None, &[LC08], vec![(10, 14)], "2021-02-28")
        .await;
    let client = reqwest::Client::new();
    let post = |url: String, token: Option<&str>| {
        let mut r = client.post(url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let r = r.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // Not allowed: refused, with or without a token, and no button is drawn.
    let (code, body) = post(format!("{}{}/retry", closed.url, api(&sub.name)), Some("x")).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("allow_actions"), "{body}");
    let (_, page) = closed.get(&campaign_href(&sub.name)).await;
    assert!(!page.contains(r#"data-action=""#), "{page}");

    let token = "s3cret-token";
    let open = Served::start(
        "web-actions-on",
        ConsoleOptions {
            admission_cap: None,
            allow_actions: true,
            token: Some(token.to_owned()),
        },
    )
    .await;
    let sub = open
        .submit(None, &[LC08], vec![(10, 14), (10, 15)], "2021-02-28")
        .await;
    let orders: Vec<Order> = sub.orders().collect();
    open.set(
        &sub,
        &orders[0],
        OrderState::Failed,
        Some("Computation timed out."),
    )
    .await;
    let (_, page) = open.get(&campaign_href(&sub.name)).await;
    assert!(page.contains(r#"data-action="retry""#), "{page}");
    let retry = format!("{}{}/retry", open.url, api(&sub.name));
    let cancel = format!("{}{}/cancel", open.url, api(&sub.name));
    for bad in [None, Some("wrong"), Some("s3cret-token-but-longer")] {
        let (code, body) = post(retry.clone(), bad).await;
        assert_eq!(code, 401, "{bad:?}: {body}");
        let (code, _) = post(cancel.clone(), bad).await;
        assert_eq!(code, 401, "{bad:?}");
    }
    // Never on GET.
    let (code, _) = open.get(&format!("{}/retry", api(&sub.name))).await;
    assert_eq!(code, 405);
    let counts = open.ctx.tracker.counts(&sub.name).await.unwrap();
    assert_eq!(
        counts.get(&OrderState::Failed),
        Some(&1),
        "refused actions changed nothing"
    );

    let (code, body) = post(retry.clone(), Some(token)).await;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        answer["requeued"], 4,
        "the failed order and the 3 queued: {answer}"
    );
    let s0 = open
        .ctx
        .tracker
        .status(&sub.name, &orders[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s0.state, OrderState::Queued);
    assert_eq!(s0.exports, 2, "a new export generation");

    // Part of it, chosen by the orders' filters; a filter that chooses nothing is refused.
    let (code, body) = post(format!("{cancel}?collection=NOPE"), Some(token)).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("collection=NOPE: "), "{body}");
    let (code, body) = post(format!("{cancel}?tile=10,15&state=queued"), Some(token)).await;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["cancelled"], 2, "tile 10,15's two periods: {answer}");
    let counts = open.ctx.tracker.counts(&sub.name).await.unwrap();
    assert_eq!(
        counts,
        BTreeMap::from([(OrderState::Cancelled, 2), (OrderState::Queued, 2)]),
        "{body}"
    );

    let (code, body) = post(cancel, Some(token)).await;
    assert_eq!(code, 200, "{body}");
    let counts = open.ctx.tracker.counts(&sub.name).await.unwrap();
    assert_eq!(
        counts,
        BTreeMap::from([(OrderState::Cancelled, 4)]),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cedar_web_serves_the_console_alone_and_is_never_exposed_unguarded() {
    let s = Served::start("web-standalone", ConsoleOptions::default()).await;
    let sub = s.submit(None, &[LC08], vec![(10, 14)], "2021-02-28").await;
    let web = Process::spawn(
        s.cedar(&["web", "--listen", "127.0.0.1:0"]),
        s.dir.path().join("web.log"),
    );
    let url = wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            web.log()
                .lines()
                .find(|l| l.starts_with("http://"))
                .map(|l| l.trim().to_owned())
                .ok_or_else(|| format!("no URL yet:\n{}", web.log()))
        },
    )
    .await;
    let all: Value = reqwest::get(format!("{url}api/v1/campaigns"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["campaigns"][0]["name"], sub.name.as_str(), "{all}");
    let page = reqwest::get(format!("{url}{}", &campaign_href(&sub.name)[1..]))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .split(';')
            .next(),
        Some("default-src 'none'")
    );
    drop(web);

    // Reachable from other hosts without a token: refused before anything is served.
    let (code, out, err) = run(s.cedar(&["web", "--listen", "0.0.0.0:0"]))
        .await
        .parts();
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("web.listen: \"0.0.0.0:0\" is reachable from other hosts"),
        "{err}"
    );
    // The token is a password: `config show` says one is set, never what it is.
    let with_token = s.dir.path().join("token.toml");
    std::fs::write(
        &with_token,
        std::fs::read_to_string(&s.config).unwrap() + "\n[web]\ntoken = \"hunter2-web\"\n",
    )
    .unwrap();
    let shown = run(configured(
        cedar_command(),
        s.dir.path(),
        &with_token,
        &["config", "show"],
    ))
    .await;
    assert_eq!(shown.code, Some(0), "{shown:?}");
    assert!(shown.stdout.contains("(redacted)"), "{}", shown.stdout);
    assert!(!shown.stdout.contains("hunter2-web"), "{}", shown.stdout);
}

/// The whole console in a browser, against `cedar worker` running a campaign on the emulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_follows_a_campaign_a_worker_runs_as_show_and_status_see_it() {
    let ns = Namespace::new("web-browser");
    // Five-second tasks: the page is loaded well before the first order can finish.
    let env = Emulated::start(EmulatorOptions {
        task_seconds: 5.0,
        ..small_exports(BUCKET)
    })
    .await;
    // One task fails in EE, with a message that must reach the page as text.
    let message = r#"Tile <b>error</b>: "quota" & more"#;
    env.emulator.inject(Fault::NextTasksFail {
        count: 1,
        message: Some(message.to_owned()),
    });
    let toml =
        env.config(BUCKET, &redis_url(), &ns.name).toml() + "\n[web]\nlisten = \"127.0.0.1:0\"\n";
    let config = env.path("cedar.toml");
    std::fs::write(&config, toml).unwrap();
    let cedar = |args: &[&str]| configured(cedar_command(), env.dir.path(), &config, args);

    let mut submit = vec!["submit", "--json"];
    submit.extend(four_tiles(LC08, "2021-12-31", "3MS"));
    let name = json(cedar(&submit)).await["tracking_name"]
        .as_str()
        .unwrap()
        .to_owned();
    let worker = Process::spawn(cedar(FAST_WORKER), env.path("worker.log"));
    // The worker serves the console on its metrics listener ([web] listen = [metrics] listen).
    let addr = wait_until(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async {
            worker
                .log()
                .lines()
                .find(|l| l.contains("serving the web console at"))
                .and_then(|l| l.split("addr=").nth(1))
                .map(|a| a.split_whitespace().next().unwrap_or_default().to_owned())
                .ok_or_else(|| format!("no console yet:\n{}", worker.tail(10)))
        },
    )
    .await;
    let base = format!("http://{addr}");
    let page = |period: &str| {
        format!(
            "{base}{}?collection={LC08}&period={period}",
            campaign_href(&name)
        )
    };
    let periods = ["2021-07-01", "2021-10-01"];

    let mut b = Browser::launch().await;
    b.goto(&page(periods[0])).await;
    let states = "Array.from(document.querySelectorAll('#map rect.tile')).map(r => r.dataset.state).join(' ')";
    let first = b.eval(states).await;
    assert_eq!(first.as_str().unwrap().split(' ').count(), 4, "{first}");
    assert!(
        !first.as_str().unwrap().contains("CLEANED"),
        "no order can have finished yet: {first}"
    );
    b.screenshot(&artefact("web-campaign-start.png")).await;
    // The page updates by itself: without a reload (the mark stays), every tile ends finished.
    b.eval("window.cedarMark = 'same page'").await;
    let finished = "Array.from(document.querySelectorAll('#map rect.tile')).every(r => ['CLEANED', 'EMPTY', 'FAILED'].includes(r.dataset.state))";
    b.wait_for(finished, Duration::from_secs(120), states).await;
    assert_eq!(b.eval("window.cedarMark").await, "same page");
    let updated = b
        .eval("document.getElementById('updated').textContent")
        .await;
    assert!(
        updated.as_str().unwrap().starts_with("updated "),
        "{updated}"
    );
    assert!(
        b.eval("Number(document.body.dataset.polls)")
            .await
            .as_u64()
            .unwrap()
            > 1
    );

    let status = wait_until(
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let st = json(cedar(&["status", &name, "--json"])).await;
            if st["done"] == Value::Bool(true) {
                Ok(st)
            } else {
                Err(format!("not done: {st}\n{}", worker.tail(20)))
            }
        },
    )
    .await;
    let counts = status["counts"].as_object().unwrap().clone();
    assert_eq!(counts.get("FAILED"), Some(&Value::from(1)), "{status}");
    let doc = json(cedar(&["show", &name])).await;
    let by_name: BTreeMap<String, Value> = doc["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["name"].as_str().unwrap().to_owned(), o["status"].clone()))
        .collect();

    // Over both periods, the map shows as many tiles per state as `status --json` counts; a
    // click on a tile shows its order as `show` has it.
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut checked = BTreeMap::new();
    for period in periods {
        b.goto(&page(period)).await;
        b.wait_for(
            "Number(document.body.dataset.polls) >= 1",
            Duration::from_secs(15),
            "document.body.dataset.polls",
        )
        .await;
        let shown = b.eval(states).await;
        for s in shown.as_str().unwrap().split(' ') {
            *seen.entry(s.to_owned()).or_default() += 1;
        }
        for state in ["FAILED", "CLEANED"] {
            let selector = format!("#map rect.tile[data-state=\"{state}\"]");
            let present = b
                .eval(&format!(
                    "document.querySelector({}) !== null",
                    serde_json::to_string(&selector).unwrap()
                ))
                .await;
            if present != Value::Bool(true) || checked.contains_key(state) {
                continue;
            }
            b.eval("delete document.querySelector('#details').dataset.state")
                .await;
            b.click(&selector).await;
            b.wait_for(
                &format!("document.querySelector('#details').dataset.state === '{state}'"),
                Duration::from_secs(10),
                "document.querySelector('#details').textContent",
            )
            .await;
            let details = b
                .eval("Object.fromEntries(Array.from(document.querySelectorAll('#details dt')).map(dt => [dt.textContent, dt.nextElementSibling.textContent]))")
                .await;
            let order = details["order"].as_str().unwrap();
            let s = by_name
                .get(order)
                .unwrap_or_else(|| panic!("{order} is not in show: {details}"));
            assert_eq!(details["state"], s["state"], "{details} vs {s}");
            assert_eq!(details["EE operation"], s["operation"], "{details} vs {s}");
            assert_eq!(details["files"], s["files"].to_string(), "{details} vs {s}");
            assert_eq!(details["bytes"], s["bytes"].to_string(), "{details} vs {s}");
            if state == "FAILED" {
                assert_eq!(details["error"], s["error"], "{details} vs {s}");
                assert!(
                    details["error"].as_str().unwrap().ends_with(message),
                    "{details}"
                );
            } else {
                assert!(s["files"].as_u64().unwrap() > 0, "{s}");
            }
            b.screenshot(&artefact(&format!(
                "web-campaign-{}.png",
                state.to_lowercase()
            )))
            .await;
            checked.insert(state, order.to_owned());
        }
        // Failures by EE message: the message as text (its <b> is not an element).
        let failures = b
            .eval("document.querySelector('#failures').textContent")
            .await;
        assert!(failures.as_str().unwrap().contains(message), "{failures}");
        assert_eq!(
            b.eval("document.querySelectorAll('#failures b').length")
                .await,
            b.eval("document.querySelectorAll('#failures li').length")
                .await,
            "only the counts are bold"
        );
    }
    // A matrix cell as well: tile 3 of 4 (row 11, col 14), the second period.
    b.eval("delete document.querySelector('#details').dataset.order")
        .await;
    b.click_at("#matrix", 0.75, 0.625).await;
    b.wait_for(
        "(document.querySelector('#details').dataset.order || '').includes('h014v011_2021-10-01')",
        Duration::from_secs(10),
        "document.querySelector('#details').textContent",
    )
    .await;
    let order = b
        .eval("document.querySelector('#details').dataset.order")
        .await;
    let state = b
        .eval("document.querySelector('#details').dataset.state")
        .await;
    assert_eq!(state, by_name[order.as_str().unwrap()]["state"], "{order}");
    // The matrix says what its columns and rows are.
    let axes = b
        .eval("document.querySelector('#matrix-axes').textContent")
        .await;
    let axes = axes.as_str().unwrap();
    assert!(
        axes.starts_with("Columns, left to right: 2021-07-01 … 2021-10-01")
            && axes.contains("rows, top to bottom: tile h"),
        "{axes}"
    );

    let want: BTreeMap<String, u64> = counts
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect();
    assert_eq!(seen, want, "map vs status --json");
    assert_eq!(
        checked.len(),
        2,
        "a FAILED and a CLEANED tile were clicked: {checked:?}"
    );

    // The campaigns page: the campaign with its progress, EE's load and the stages' jobs.
    b.goto(&format!("{base}/")).await;
    // It keeps itself current too: a refresh from the API has run, and succeeded.
    b.wait_for(
        "Number(document.body.dataset.polls) >= 1",
        Duration::from_secs(15),
        "document.body.dataset.polls",
    )
    .await;
    let updated = b
        .eval("document.getElementById('updated').textContent")
        .await;
    assert!(
        updated.as_str().unwrap().starts_with("updated "),
        "{updated}"
    );
    let row = b
        .eval("document.querySelector('#campaigns tbody tr').textContent")
        .await;
    let row = row.as_str().unwrap();
    assert!(row.contains(&name) && row.contains("8 / 8"), "{row}");
    assert_eq!(
        b.eval("document.querySelectorAll('#stages tbody tr').length")
            .await,
        4
    );
    b.screenshot(&artefact("web-campaigns.png")).await;
    drop(worker);
}

/// At archive size — 726 tiles × 480 monthly periods × 4 collections, 1.39 M orders — the
/// campaign page, `/` and the view stay under 1 MB: the page reads one order per tile, and the
/// matrix (by year) and failures come from a digest walked in the background. How fast they are
/// served is `cedar bench web`'s figure, against a one-order campaign in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_size_campaign_page_is_small() {
    let s = Served::start("web-archive", ConsoleOptions::default()).await;
    let grid = &s.settings.grid;
    let tiles: Vec<(u32, u32)> = (grid.limits.rows.0..=grid.limits.rows.1)
        .flat_map(|r| (grid.limits.cols.0..=grid.limits.cols.1).map(move |c| (r, c)))
        .take(726)
        .collect();
    assert_eq!(tiles.len(), 726);
    let req = Request {
        name: None,
        workload_tag: None,
        priority: None,
        collections: [
            LC08,
            LC09,
            "LANDSAT/LE07/C02/T1_L2",
            "LANDSAT/LT05/C02/T1_L2",
        ]
        .map(str::to_owned)
        .to_vec(),
        tiles,
        start: "1985-01-01".parse().unwrap(),
        end: "2024-12-31".parse().unwrap(),
        freq: Some("MS".parse().unwrap()),
        save_empty_metadata: true,
        error_if_empty: false,
    };
    let sub = submit::plan(&s.settings, &req, chrono::Utc::now())
        .unwrap()
        .submission;
    assert_eq!(sub.order_count(), 726 * 480 * 4);
    s.ctx.tracker.create(&sub).await.unwrap();
    // A few thousand orders moved on: finished, failed with a few messages, running.
    for (i, order) in sub.orders().step_by(463).take(3000).enumerate() {
        let state = [OrderState::Cleaned, OrderState::Failed, OrderState::Running][i % 3];
        let error = (state == OrderState::Failed).then(|| format!("EE error {}", i % 7));
        s.set(&sub, &order, state, error.as_deref()).await;
    }
    let client = reqwest::Client::new();
    let size = |path: String| {
        let (client, url) = (client.clone(), format!("{}{path}", s.url));
        async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap().len()
        }
    };
    let bytes = size(campaign_href(&sub.name)).await;
    assert!(bytes < 1 << 20, "campaign page: {bytes} bytes");
    let bytes = size("/".to_owned()).await;
    assert!(bytes < 1 << 20, "campaigns page: {bytes} bytes");
    // The digest arrives in the background; the view (matrix by year, failures) then stays
    // small too.
    let view = format!(
        "{}/view?collection={}&period=2013-01-01",
        api(&sub.name),
        LC08.replace('/', "%2F")
    );
    let aggregated = wait_until(Duration::from_secs(300), Duration::from_secs(1), || async {
        let v = s.json(&view).await;
        if v["matrix"].is_object() {
            Ok(v)
        } else {
            Err("no digest yet".to_owned())
        }
    })
    .await;
    let matrix = &aggregated["matrix"];
    assert_eq!(matrix["by_year"], true);
    assert_eq!(matrix["columns"].as_array().unwrap().len(), 40);
    assert_eq!(matrix["cells"].as_str().unwrap().len(), 726 * 40);
    assert_eq!(
        aggregated["failures"].as_array().unwrap().len(),
        7,
        "{}",
        aggregated["failures"]
    );
    let bytes = size(view.clone()).await;
    assert!(bytes < 1 << 20, "view: {bytes} bytes");
    let bytes = size(campaign_href(&sub.name)).await;
    assert!(
        bytes < 1 << 20,
        "campaign page with its digest: {bytes} bytes"
    );
}
