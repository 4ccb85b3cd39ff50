//! A headless Chromium driven through chromedriver (WebDriver), as a person uses the
//! pages: clicks, the keyboard, screenshots to look at, and an axe-core accessibility
//! check.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use fantoccini::error::{CmdError, ErrorStatus};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tidings_core::testing::test_services_file;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A chromedriver of our own on a free port, and a headless Chromium session on it.
pub struct Browser {
    pub client: Client,
    _driver: Child,
    pub shots: PathBuf,
    /// The browser's own profile, removed when the test ends.
    _profile: tempfile::TempDir,
    /// Where Chromium's DevTools listen (loopback).
    devtools_port: u16,
}

impl Browser {
    pub async fn start(name: &str) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver is missing: run scripts/test-services first");
        // It says when it listens.
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("started successfully") {
                    return;
                }
            }
            panic!("chromedriver exited before it listened");
        })
        .await
        .expect("chromedriver did not start within 30 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let profile = tempfile::tempdir().unwrap();
        let devtools_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         format!("--remote-debugging-port={devtools_port}"),
                         format!("--user-data-dir={}", profile.path().display())],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session");
        let shots = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join("web-admin-screenshots")
            .join(name);
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            _driver: driver,
            shots,
            _profile: profile,
            devtools_port,
        }
    }

    pub async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_owned()
    }

    /// The text of what `css` finds. A live page (the report's Server-Sent Events) may
    /// replace the element between finding and reading it; then it is found again.
    pub async fn text(&self, css: &str) -> String {
        loop {
            let found = self
                .client
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("no {css}: {e}"));
            match found.text().await {
                Ok(text) => return text,
                Err(CmdError::Standard(e)) if e.error == ErrorStatus::StaleElementReference => {}
                Err(e) => panic!("the text of {css}: {e}"),
            }
        }
    }

    /// Runs axe-core on the page and fails on any serious or critical finding.
    pub async fn accessible(&self, page: &str) {
        let axe =
            std::fs::read_to_string(test_services_file(Path::new("axe-core/axe.min.js"))).unwrap();
        self.client.execute(&axe, vec![]).await.unwrap();
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document).then(r => done(r.violations
                     .filter(v => v.impact === 'serious' || v.impact === 'critical')
                     .map(v => ({id: v.id, impact: v.impact, help: v.help,
                                 nodes: v.nodes.map(n => n.html)}))));",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(found, json!([]), "{page}: accessibility findings");
    }

    /// Clicks what `css` finds, then waits until `then` is on the page (the next page has
    /// loaded).
    pub async fn click(&self, css: &str, then: &str) {
        // Marks the page being left, so that `then` is looked for on the next one only.
        self.client
            .execute("document.documentElement.dataset.left = 'yes'", vec![])
            .await
            .unwrap();
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
        self.arrive(&format!("html:not([data-left]) {then}")).await;
    }

    /// Waits until `css` finds an element (a page has loaded).
    pub async fn arrive(&self, css: &str) {
        let found = self
            .client
            .wait()
            .at_most(Duration::from_secs(60))
            .for_element(Locator::Css(css))
            .await;
        if let Err(error) = found {
            self.shot("failure").await;
            let url = self.client.current_url().await.map(|u| u.to_string());
            panic!("{css} never appeared on {url:?}: {error} (see failure.png)");
        }
    }

    /// Types into the field with id `id`.
    pub async fn fill(&self, id: &str, text: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("no #{id}: {e}"))
            .send_keys(text)
            .await
            .unwrap();
    }

    /// Chooses `value` in the select with id `id`.
    pub async fn choose(&self, id: &str, value: &str) {
        self.client
            .find(Locator::Id(id))
            .await
            .unwrap_or_else(|e| panic!("no #{id}: {e}"))
            .select_by_value(value)
            .await
            .unwrap();
    }

    /// Clicks what `css` finds where no page change follows (a checkbox).
    pub async fn tick(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Types into the focused element, as a person does.
    pub async fn type_here(&self, text: &str) {
        self.client
            .active_element()
            .await
            .unwrap()
            .send_keys(text)
            .await
            .unwrap();
    }

    /// Types `keys` into the focused element (ending in Enter), then waits until `then`
    /// is on the next page.
    pub async fn press(&self, keys: &str, then: &str) {
        self.client
            .execute("document.documentElement.dataset.left = 'yes'", vec![])
            .await
            .unwrap();
        self.type_here(keys).await;
        self.arrive(&format!("html:not([data-left]) {then}")).await;
    }
}

/// A Chrome DevTools Protocol command, sent through chromedriver's
/// `/session/{id}/goog/cdp/execute`.
#[derive(Debug)]
struct Cdp {
    cmd: String,
    params: serde_json::Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (http::Method::POST, Some(body.to_string()))
    }
}

impl Browser {
    /// Whether the page is wider than the window (a phone would scroll sideways).
    pub async fn overflows(&self) -> bool {
        self.client
            .execute(
                "return document.documentElement.scrollWidth > window.innerWidth",
                vec![],
            )
            .await
            .unwrap()
            .as_bool()
            .unwrap()
    }

    /// The elements of `main` that reach past its column (its content box, 1 px given),
    /// as `tag#id.class`: a box wider than the rest of the page, though the page itself
    /// may still fit the window.
    pub async fn sticking_out(&self) -> Vec<String> {
        let found = self
            .client
            .execute(
                "const main = document.querySelector('main');
                 const edge = main.getBoundingClientRect().right
                     - parseFloat(getComputedStyle(main).paddingRight) + 1;
                 return [...main.querySelectorAll('*')]
                     .filter(e => e.getClientRects().length && e.getBoundingClientRect().right > edge)
                     .map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
                         + (e.className ? '.' + e.className : ''));",
                vec![],
            )
            .await
            .unwrap();
        serde_json::from_value(found).unwrap()
    }

    /// Runs a DevTools command (`ServiceWorker.deliverPushMessage`, …): its result.
    pub async fn devtools(&self, cmd: &str, params: serde_json::Value) -> serde_json::Value {
        self.client
            .issue_cmd(Cdp {
                cmd: cmd.to_owned(),
                params,
            })
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    /// The registration id Chromium gives the service worker of `scope` (its
    /// `chrome://serviceworker-internals` page says it); the page is left for it.
    pub async fn service_worker_registration(&self, scope: &str) -> String {
        self.client
            .goto("chrome://serviceworker-internals")
            .await
            .unwrap();
        let text = self.text("body").await;
        let from_scope = text
            .split(&format!("Scope: {scope}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no service worker for {scope}: {text}"));
        from_scope
            .lines()
            .find_map(|line| line.strip_prefix("Registration ID: "))
            .unwrap_or_else(|| panic!("no registration id: {text}"))
            .trim()
            .to_owned()
    }
}

impl Browser {
    /// Evaluates `expression` (awaiting a promise) inside the service worker whose script
    /// URL contains `script`: its value. Chromedriver passes DevTools commands to the
    /// page only, so this talks to Chromium's own DevTools socket and attaches to the
    /// worker.
    pub async fn in_service_worker(&self, script: &str, expression: &str) -> serde_json::Value {
        use futures_util::{SinkExt as _, StreamExt as _};
        use tokio_tungstenite::tungstenite::Message;
        let version: serde_json::Value = reqwest::get(format!(
            "http://127.0.0.1:{}/json/version",
            self.devtools_port
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        let socket = version["webSocketDebuggerUrl"].as_str().unwrap();
        let (mut devtools, _) = tokio_tungstenite::connect_async(socket).await.unwrap();
        let mut last = 0;
        let mut call = async |method: &str, params: serde_json::Value, session: Option<&str>| {
            last += 1;
            let mut command = json!({"id": last, "method": method, "params": params});
            if let Some(session) = session {
                command["sessionId"] = json!(session);
            }
            devtools
                .send(Message::text(command.to_string()))
                .await
                .unwrap();
            loop {
                let Some(Ok(Message::Text(text))) = devtools.next().await else {
                    panic!("DevTools closed while waiting for {method}");
                };
                let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
                if answer["id"] == json!(last) {
                    assert!(answer["error"].is_null(), "{method}: {answer}");
                    return answer["result"].clone();
                }
            }
        };
        let targets = call("Target.getTargets", json!({}), None).await;
        let worker = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "service_worker" && t["url"].as_str().unwrap().contains(script))
            .unwrap_or_else(|| panic!("no service worker {script}: {targets}"))["targetId"]
            .clone();
        let attached = call(
            "Target.attachToTarget",
            json!({"targetId": worker, "flatten": true}),
            None,
        )
        .await;
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        let evaluated = call(
            "Runtime.evaluate",
            json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            Some(&session),
        )
        .await;
        assert!(
            evaluated["exceptionDetails"].is_null(),
            "in the service worker: {evaluated}"
        );
        evaluated["result"]["value"].clone()
    }
}

/// A test that fails leaves its session open: chromedriver is killed with the test, but
/// the Chromium it started is not its child to take along. Every process of this
/// browser names its own profile directory; they end with it.
impl Drop for Browser {
    fn drop(&mut self) {
        let profile = self._profile.path().display().to_string();
        // Best effort: without pkill the processes outlive the test, as before.
        let _ = std::process::Command::new("pkill")
            .args(["-f", &format!("--user-data-dir={profile}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub const TAB: &str = "\u{E004}";
pub const ENTER: &str = "\u{E007}";
