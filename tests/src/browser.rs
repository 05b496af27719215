//! A headless Chromium driven over the DevTools protocol (CDP), for tests that look at
//! pages the way a person does.
//!
//! Why CDP rather than `chromium --dump-dom URL`: the command line cannot carry a cookie,
//! so a logged-in page could only be reached through a token in the URL (which leaks into
//! histories and logs). Over CDP the test types the token into the real login form, the
//! browser keeps the session cookie itself (so `HttpOnly` and `SameSite=Strict` are what a
//! real browser enforces), links are followed from the DOM, and each navigation reports
//! the HTTP status of the document. Page scripts are switched off
//! (`Emulation.setScriptExecutionDisabled`), so every page is seen as a browser without
//! JavaScript would show it; the test reads the DOM through `Runtime.evaluate`, which
//! DevTools runs regardless.
//!
//! The protocol runs over one WebSocket to the browser endpoint that Chromium writes to
//! `DevToolsActivePort` in its fresh profile directory (`--remote-debugging-port=0`, so
//! parallel tests never collide), with one page target attached in flat session mode.
//! Every wait is bounded; the browser process is killed when [`Browser`] is dropped.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// Where Debian's `chromium` package installs the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long any one protocol step may take.
const STEP: Duration = Duration::from_secs(30);

/// The answer to a navigation: the main document's final status and URL.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// HTTP status of the last document response (after redirects).
    pub status: u16,
    /// URL of that document.
    pub url: String,
}

/// One headless Chromium with one page.
pub struct Browser {
    child: Child,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: String,
    /// The main frame's id (document responses of other frames are ignored).
    frame: String,
    /// Events read while waiting for a command's answer, handled by the next wait.
    pending: VecDeque<Value>,
    /// The profile directory; removed when the browser is dropped.
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.ws.close(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Panics, with how to install it, when Chromium is missing: a test that needs a browser
/// fails rather than skips.
pub fn require_chromium() -> &'static Path {
    let p = Path::new(CHROMIUM);
    assert!(
        p.exists(),
        "{CHROMIUM} is missing: this test drives a real headless Chromium. Install it with \
         `apt-get update && apt-get install -y chromium fonts-noto-cjk` (CI does this in .ci/run)."
    );
    p
}

impl Browser {
    /// Starts Chromium headless with a fresh profile and opens one blank page (1280×900),
    /// page scripts disabled.
    pub fn launch() -> Browser {
        let bin = require_chromium();
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMIUM}: {e}"));
        let ws_url = wait_for_endpoint(profile.path());
        let (ws, _) = tungstenite::connect(ws_url.as_str())
            .unwrap_or_else(|e| panic!("connecting to Chromium's DevTools at {ws_url}: {e}"));
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(STEP)).expect("read timeout");
        }
        let mut b = Browser {
            child,
            ws,
            next_id: 0,
            session: String::new(),
            frame: String::new(),
            pending: VecDeque::new(),
            _profile: profile,
        };
        let target = b.send(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().expect("targetId").to_string();
        let attached = b.send(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        b.session = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        b.frame = target_id;
        b.call("Page.enable", json!({}));
        b.call("Network.enable", json!({}));
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        b.call(
            "Emulation.setScriptExecutionDisabled",
            json!({"value": true}),
        );
        b
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .unwrap_or_else(|e| panic!("CDP {method}: send: {e}"));
        let deadline = Instant::now() + STEP;
        loop {
            assert!(
                Instant::now() < deadline,
                "CDP {method}: no answer in {STEP:?}"
            );
            let v = self.read();
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("CDP {method} failed: {err}");
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.pending.push_back(v);
            }
        }
    }

    fn read(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    return serde_json::from_str(t.as_str()).expect("CDP message is JSON");
                }
                Ok(Message::Close(_)) => panic!("Chromium closed the DevTools connection"),
                Ok(_) => continue,
                Err(e) => panic!("reading from Chromium's DevTools: {e}"),
            }
        }
    }

    /// Sends a command to the page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let s = self.session.clone();
        self.send(Some(&s), method, params)
    }

    /// Waits until the page's next `load` event; returns the last main-document response.
    fn wait_loaded(&mut self, what: &str) -> Loaded {
        let deadline = Instant::now() + STEP;
        let mut last: Option<Loaded> = None;
        loop {
            assert!(
                Instant::now() < deadline,
                "{what}: the page did not load in {STEP:?}"
            );
            let ev = match self.pending.pop_front() {
                Some(ev) => ev,
                None => self.read(),
            };
            if ev["sessionId"].as_str() != Some(self.session.as_str()) {
                continue;
            }
            match ev["method"].as_str() {
                Some("Network.responseReceived")
                    if ev["params"]["type"] == "Document"
                        && ev["params"]["frameId"].as_str() == Some(self.frame.as_str()) =>
                {
                    let r = &ev["params"]["response"];
                    last = Some(Loaded {
                        status: r["status"].as_u64().unwrap_or(0) as u16,
                        url: r["url"].as_str().unwrap_or("").to_string(),
                    });
                }
                Some("Page.loadEventFired") => {
                    return last
                        .unwrap_or_else(|| panic!("{what}: loaded without a document response"));
                }
                _ => {}
            }
        }
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&mut self, url: &str) -> Loaded {
        self.pending.clear();
        let r = self.call("Page.navigate", json!({"url": url}));
        if let Some(e) = r["errorText"].as_str().filter(|e| !e.is_empty()) {
            panic!("navigating to {url}: {e}");
        }
        self.wait_loaded(url)
    }

    /// Evaluates `expr` in the page and returns its value (JSON-serialisable results only).
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {ex}");
        }
        r["result"]["value"].clone()
    }

    /// Runs `expr` (which submits a form or clicks a link) and waits for the next page.
    pub fn act(&mut self, expr: &str) -> Loaded {
        self.pending.clear();
        self.eval(expr);
        self.wait_loaded(expr)
    }

    /// The `href` of the first element matching `selector`, resolved against the page.
    pub fn href(&mut self, selector: &str) -> Option<String> {
        let sel = serde_json::to_string(selector).expect("selector");
        self.eval(&format!(
            "(() => {{ const a = document.querySelector({sel}); return a ? a.href : null; }})()"
        ))
        .as_str()
        .map(str::to_string)
    }

    /// The trimmed text of every element with a `data-field`, keyed
    /// `<data-row of the nearest row>/<data-field>` (`/<field>` outside any row).
    pub fn fields(&mut self) -> std::collections::BTreeMap<String, String> {
        let v = self.eval(
            "(() => { const out = {}; for (const e of document.querySelectorAll('[data-field]')) { \
               const r = e.closest('[data-row]'); \
               out[(r ? r.getAttribute('data-row') : '') + '/' + e.getAttribute('data-field')] = e.textContent.trim(); } \
             return out; })()",
        );
        serde_json::from_value(v).expect("fields map")
    }

    /// The page's visible text.
    pub fn text(&mut self) -> String {
        self.eval("document.body ? document.body.innerText : ''")
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The browser's cookies for the page.
    pub fn cookies(&mut self) -> Vec<Value> {
        self.call("Network.getCookies", json!({}))["cookies"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Saves a PNG of the whole page (not only the viewport) to `path`.
    pub fn screenshot(&mut self, path: &Path) -> PathBuf {
        let m = self.call("Page.getLayoutMetrics", json!({}));
        let size = &m["cssContentSize"];
        let w = size["width"].as_f64().unwrap_or(1280.0).ceil().max(1.0);
        let h = size["height"]
            .as_f64()
            .unwrap_or(900.0)
            .ceil()
            .clamp(1.0, 8000.0);
        let r = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true,
                   "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}}),
        );
        let png = STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot is base64");
        assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path.to_path_buf()
    }
}

/// Reads `DevToolsActivePort` (port, then browser path) from the profile directory.
fn wait_for_endpoint(profile: &Path) -> String {
    let file = profile.join("DevToolsActivePort");
    let deadline = Instant::now() + STEP;
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            let mut lines = text.lines();
            if let (Some(port), Some(path)) = (lines.next(), lines.next())
                && !port.is_empty()
                && path.starts_with('/')
            {
                return format!("ws://127.0.0.1:{port}{path}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "Chromium did not open its DevTools port within {STEP:?} ({} never appeared)",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
