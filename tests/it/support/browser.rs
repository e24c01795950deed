//! Headless Chromium over WebDriver for the page's tests (tests/it/ui.rs): this starts its own
//! chromedriver on a free loopback port, one browser at a time (the machine is small), and
//! ends it by its process id when the test ends, however it ends.
//!
//! Without chromium and chromedriver the tests skip with the reason on stderr, unless `CI` is
//! set: there a missing browser fails the test, so CI never passes by skipping.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::sync::{Semaphore, SemaphorePermit};

/// How long the page gets to show something before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// One browser at a time across the tests of a binary: each one costs a few hundred MB.
static ONE_AT_A_TIME: Semaphore = Semaphore::const_new(1);

pub struct Browser {
    pub client: Client,
    driver: Child,
    name: String,
    _profile: tempfile::TempDir,
    _slot: SemaphorePermit<'static>,
}

/// `None` after printing why, when the browser is missing and `CI` is not set.
fn missing(what: &str) -> Option<Browser> {
    if std::env::var_os("CI").is_some() {
        panic!(
            "{what}; CI is set, so the browser tests may not skip (apt-get install chromium chromium-driver)"
        );
    }
    eprintln!("skipped: {what} (apt-get install chromium chromium-driver)");
    None
}

/// The first of `names` on the PATH, or the path in the environment variable `var`.
fn find_program(var: &str, names: &[&str], extra: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path)).filter(|path| path.is_file());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let on_path = names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)));
    on_path
        .chain(extra.iter().map(PathBuf::from))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    listener.local_addr().unwrap().port()
}

impl Browser {
    /// A fresh headless browser; `name` names its screenshot.
    pub async fn start(name: &str) -> Option<Browser> {
        let Some(driver_path) = find_program("KEYGATE_CHROMEDRIVER", &["chromedriver"], &[]) else {
            return missing("chromedriver not found on the PATH");
        };
        let chromium = find_program(
            "KEYGATE_CHROMIUM",
            &["chromium", "chromium-browser", "google-chrome"],
            &["/usr/lib/chromium/chromium"],
        );
        let Some(chromium) = chromium else {
            return missing("chromium not found on the PATH");
        };
        let slot = ONE_AT_A_TIME
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let port = free_port();
        let driver = spawn_driver(&driver_path, port);
        let profile = tempfile::tempdir().unwrap();
        let browser = Browser {
            client: connect(port, &chromium, profile.path()).await,
            driver,
            name: name.to_owned(),
            _profile: profile,
            _slot: slot,
        };
        browser.client.set_window_size(1280, 1100).await.unwrap();
        Some(browser)
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// The element matching `css`, once the page shows it.
    pub async fn find(&self, css: &str) -> Element {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("the page never showed {css}: {e}"))
    }

    /// The button labelled `label`, once the page shows it.
    pub async fn button(&self, label: &str) -> Element {
        let xpath = format!("//button[normalize-space()='{label}']");
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("the page never showed a button {label:?}: {e}"))
    }

    pub async fn click(&self, label: &str) {
        self.button(label).await.click().await.unwrap();
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    pub async fn count(&self, css: &str) -> usize {
        self.client.find_all(Locator::Css(css)).await.unwrap().len()
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.unwrap()
    }

    /// Waits until `check` (a function body returning a boolean) holds in the page.
    pub async fn until(&self, what: &str, check: &str) {
        let end = tokio::time::Instant::now() + PATIENCE;
        loop {
            if self.eval(check).await == Value::Bool(true) {
                return;
            }
            if tokio::time::Instant::now() > end {
                self.screenshot().await;
                panic!("the page never came to {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page shows `text` somewhere in `css`.
    pub async fn until_text(&self, css: &str, text: &str) {
        let check = format!(
            "return Array.from(document.querySelectorAll({css})).some(n => n.textContent.includes({text}));",
            css = json!(css),
            text = json!(text)
        );
        self.until(&format!("show {text:?} in {css}"), &check).await;
    }

    /// Waits until nothing matches `css`.
    pub async fn until_gone(&self, css: &str) {
        let check = format!("return document.querySelector({}) === null;", json!(css));
        self.until(&format!("no longer show {css}"), &check).await;
    }

    /// Signs in at `url` (the page) with `token` and waits for the key list.
    pub async fn sign_in(&self, url: &str, token: &str) {
        self.goto(url).await;
        self.fill("input[name=\"token\"]", token).await;
        self.click("Sign in").await;
        self.until_text("main h2", "API keys").await;
    }

    /// Saves the page as `target/ui-screenshots/<name>.png`.
    pub async fn screenshot(&self) {
        self.screenshot_as(&self.name).await;
    }

    /// Saves the page as `target/ui-screenshots/<name>.png`, e.g. a step in the middle.
    pub async fn screenshot_as(&self, name: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Takes the screenshot and closes the browser.
    pub async fn finish(self) {
        self.screenshot().await;
        let _ = self.client.clone().close().await;
    }
}

fn spawn_driver(path: &Path, port: u16) -> Child {
    let mut command = Command::new(path);
    command
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Its own process group, so the browsers it starts end with it.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()))
}

/// A WebDriver session, retried until chromedriver listens (with a deadline).
async fn connect(port: u16, chromium: &Path, profile: &Path) -> Client {
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--force-device-scale-factor=1",
                "--window-size=1280,1100", format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!("a JSON object literal");
    };
    let url = format!("http://127.0.0.1:{port}");
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return client,
            Err(error) if tokio::time::Instant::now() > end => panic!("no WebDriver session: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The process group of the chromedriver this test started: it and its browsers.
        #[cfg(unix)]
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
