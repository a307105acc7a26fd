//! The lunch page in a real browser: headless Chromium, driven over the
//! DevTools protocol on a pipe, loads the page from the real lunchd (socket
//! activated, serving a certificate from a test CA), clicks a tag filter,
//! and checks what is rendered: the text, that the style applied under the
//! CSP, contrast, keyboard focus, and that nothing overflows a 320 px wide
//! phone. Screenshots are written under `target/tmp/screenshots/` (or
//! `$LUNCHD_SCREENSHOT_DIR`; `cargo xtask screenshot` uses that to
//! regenerate the ones in `docs/`).
//!
//! Chromium is Debian's `chromium` (`$LUNCHD_CHROMIUM` overrides the path).
//! Without it the test fails and names the package; it never skips.
//!
//! A second test checks, over real HTTPS and without a browser, the headers
//! a browser relies on: the security headers on every answer (errors
//! included), HSTS, caching, and revalidation of the daily pick.

mod support;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use support::{Lunchd, Start, TestCa, TlsConnection, write_leaf};

const MENU: &str = r#"
[picker]
mode = "weighted"
team = "browser-test"

[[dish]]
name = "Tomato soup"
tags = ["vegetarian", "warm"]

[[dish]]
name = "Falafel wrap"
tags = ["vegetarian", "quick"]

[[dish]]
name = "Pad thai"
weight = 2.0
tags = ["warm"]

[[dish]]
name = "Fish & Chips"
tags = ["fish", "warm"]

[[dish]]
name = "Sushi"
tags = ["fish"]

[[dish]]
name = "Caesar salad"
tags = ["quick"]
"#;

const DISHES: [&str; 6] = [
    "Tomato soup",
    "Falafel wrap",
    "Pad thai",
    "Fish & Chips",
    "Sushi",
    "Caesar salad",
];
const VEGETARIAN: [&str; 2] = ["Tomato soup", "Falafel wrap"];

/// How long one DevTools command or event may take.
const STEP: Duration = Duration::from_secs(30);

#[test]
fn the_page_in_headless_chromium() {
    let chromium = match chromium() {
        Ok(chromium) => chromium,
        Err(missing) => panic!("{missing}"),
    };

    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.issue(&["lunch.test"], 1);
    let (key, chain) = write_leaf(dir.path(), &leaf);
    let config = dir.path().join("lunchd.toml");
    std::fs::write(&config, MENU).unwrap();
    let lunchd = Lunchd::start(Start::with_certificate(
        &key,
        &chain,
        &[format!("--config={}", config.display())],
    ));
    let origin = format!("https://lunch.test:{}", lunchd.port("https"));

    let mut browser = Browser::launch(&chromium, dir.path(), &spki_hash(&leaf.chain_pem));
    let shots = screenshot_dir();
    let tab = browser.open();

    // Desktop, light scheme.
    tab.viewport(&mut browser, 1280, 900, false);
    tab.navigate(&mut browser, &format!("{origin}/"));
    let text = tab.text(&mut browser);
    assert!(text.contains("How about"), "{text}\n{}", lunchd.log());
    let pick = tab.eval(&mut browser, "document.querySelector('.pick').innerText");
    assert!(DISHES.contains(&pick.as_str().unwrap()), "picked {pick}");
    for expected in ["Pick again", "Today's team pick", "Filter by tag", "The menu"] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    for dish in DISHES {
        // "Fish & Chips" arrives as "Fish &amp; Chips" and renders as written.
        assert!(text.contains(dish), "no {dish:?} in:\n{text}");
    }
    // The inline style applied: the CSP's hash matched it.
    let weight = tab.eval(
        &mut browser,
        "getComputedStyle(document.querySelector('.pick')).fontWeight",
    );
    assert_eq!(weight, "800", "the style sheet did not apply; CSP hash mismatch?");
    assert_eq!(tab.eval(&mut browser, "document.documentElement.lang"), "en");
    assert_eq!(tab.eval(&mut browser, "document.querySelectorAll('script').length"), 0);
    tab.assert_contrast(&mut browser, "light");
    tab.screenshot(&mut browser, &shots.join("desktop.png"));
    tab.assert_focus_is_visible(&mut browser);

    // Follow the "vegetarian" filter with a real click.
    tab.click(&mut browser, "nav a[href='/?tag=vegetarian']");
    assert_eq!(tab.eval(&mut browser, "location.search"), "?tag=vegetarian");
    let text = tab.text(&mut browser);
    assert!(text.contains("Something vegetarian? How about"), "{text}");
    let pick = tab.eval(&mut browser, "document.querySelector('.pick').innerText");
    assert!(
        VEGETARIAN.contains(&pick.as_str().unwrap()),
        "picked {pick} for vegetarian"
    );
    let current = tab.eval(
        &mut browser,
        "document.querySelector('nav[aria-labelledby=filter] [aria-current]').innerText",
    );
    assert_eq!(current, "vegetarian");
    // "Pick again" keeps the filter.
    tab.click(&mut browser, "a.button");
    assert_eq!(tab.eval(&mut browser, "location.search"), "?tag=vegetarian");
    let pick = tab.eval(&mut browser, "document.querySelector('.pick').innerText");
    assert!(
        VEGETARIAN.contains(&pick.as_str().unwrap()),
        "picked {pick} for vegetarian"
    );

    // The team's pick, one click away, agrees with the JSON API's answer.
    tab.click(&mut browser, "a[href='/today']");
    let text = tab.text(&mut browser);
    assert!(text.contains("The team's lunch for"), "{text}");
    let daily = tab.eval(&mut browser, "document.querySelector('.pick').innerText");
    tab.navigate(&mut browser, &format!("{origin}/api/today"));
    let api: Value = serde_json::from_str(&tab.text(&mut browser)).unwrap();
    assert_eq!(api["lunch"], daily);

    // A phone: nothing wider than the screen, in both colour schemes.
    tab.viewport(&mut browser, 320, 640, true);
    tab.navigate(&mut browser, &format!("{origin}/?tag=fish"));
    let overflow = tab.eval(&mut browser, "document.documentElement.scrollWidth");
    assert!(
        overflow.as_u64().unwrap() <= 320,
        "the page is {overflow} px wide on a 320 px screen"
    );
    tab.assert_contrast(&mut browser, "light");
    tab.screenshot(&mut browser, &shots.join("phone.png"));
    tab.dark(&mut browser);
    tab.navigate(&mut browser, &format!("{origin}/"));
    let background = tab.eval(&mut browser, "getComputedStyle(document.body).backgroundColor");
    assert_eq!(background, "rgb(22, 18, 15)", "the dark scheme did not apply");
    tab.assert_contrast(&mut browser, "dark");
    tab.screenshot(&mut browser, &shots.join("phone-dark.png"));

    let violations: Vec<&Value> = browser
        .events
        .iter()
        .filter(|e| e["method"] == "Log.entryAdded")
        .filter(|e| {
            let entry = &e["params"]["entry"];
            let text = entry["text"].as_str().unwrap_or_default();
            // e.g. "Applying inline style violates the following Content Security Policy directive..."
            entry["source"] == "security" || text.contains("Content Security Policy")
        })
        .collect();
    assert!(violations.is_empty(), "security errors in the console: {violations:#?}");
    browser.close();
    let _ = writeln!(std::io::stderr(), "screenshots in {}", shots.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_https_answer_carries_the_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let leaf = ca.issue(&["lunch.test"], 2);
    let (key, chain) = write_leaf(dir.path(), &leaf);
    let lunchd = Lunchd::start(Start::with_certificate(&key, &chain, &[]));
    let https = lunchd.port("https");
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let mut connection = TlsConnection::connect(https, "lunch.test", ca.client_config(&[alpn])).await;
        assert_eq!(connection.alpn.as_deref(), Some(alpn));
        let cases: [(hyper::Method, &str, u16); 7] = [
            (hyper::Method::GET, "/", 200),
            (hyper::Method::HEAD, "/today", 200),
            (hyper::Method::GET, "/api/lunch?tag=vegetarian", 200),
            (hyper::Method::GET, "/api/lunch?tag=dessert", 404),
            (hyper::Method::GET, "/api/lunch?tag=a&tag=b", 400),
            (hyper::Method::GET, "/nope", 404),
            (hyper::Method::POST, "/api/today", 405),
        ];
        for (method, path, status) in cases {
            let response = connection.request(method.clone(), "lunch.test", path, &[]).await;
            let what = format!("{method} {path} over {}", String::from_utf8_lossy(alpn));
            assert_eq!(response.status, status, "{what}: {}", response.body);
            let header = |name: &str| response.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
            let csp = header("content-security-policy").unwrap_or_else(|| panic!("{what}: no CSP"));
            assert!(
                csp.starts_with("default-src 'none'; style-src 'sha256-"),
                "{what}: {csp}"
            );
            assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{what}");
            assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"), "{what}");
            assert_eq!(header("x-frame-options").as_deref(), Some("DENY"), "{what}");
            let hsts = header("strict-transport-security").unwrap_or_else(|| panic!("{what}: no HSTS"));
            assert!(hsts.starts_with("max-age="), "{what}: {hsts}");
            if status >= 400 {
                assert_eq!(header("cache-control").as_deref(), Some("no-store"), "{what}");
            }
            if status == 405 {
                assert_eq!(header("allow").as_deref(), Some("GET,HEAD"), "{what}");
            }
            if path.starts_with("/api/") {
                let json: Value = serde_json::from_str(&response.body).unwrap();
                assert!(
                    json.get(if status == 200 { "lunch" } else { "error" }).is_some(),
                    "{what}: {json}"
                );
            }
        }
        let first = connection.get("lunch.test", "/api/today").await;
        assert!(
            first.headers["cache-control"]
                .to_str()
                .unwrap()
                .starts_with("public, max-age=")
        );
        let etag = first.headers["etag"].to_str().unwrap().to_owned();
        let again = connection
            .request(
                hyper::Method::GET,
                "lunch.test",
                "/api/today",
                &[("if-none-match", &etag)],
            )
            .await;
        assert_eq!(again.status, 304);
        assert_eq!(again.body, "");
        assert_eq!(again.headers["etag"], etag.as_str());
    }
}

/// The Chromium binary, or what to do to have one.
fn chromium() -> Result<PathBuf, String> {
    match std::env::var_os("LUNCHD_CHROMIUM") {
        Some(path) => Some(PathBuf::from(&path))
            .filter(|p| p.is_file())
            .ok_or_else(|| format!("LUNCHD_CHROMIUM={path:?} is not a file")),
        None => support::locate_tool("chromium", "chromium")
            .map_err(|missing| format!("{missing}; or point LUNCHD_CHROMIUM at it")),
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("LUNCHD_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of the leaf, the form
/// `--ignore-certificate-errors-spki-list` takes: Chromium then accepts
/// this one key and no other untrusted certificate.
fn spki_hash(chain_pem: &str) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let pem = x509_parser::pem::Pem::iter_from_buffer(chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = X509Certificate::from_der(&pem.contents).unwrap();
    let spki = cert.tbs_certificate.subject_pki.raw;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Headless Chromium with the DevTools protocol on fds 3 and 4.
struct Browser {
    child: Child,
    to_browser: File,
    from_browser: Receiver<Value>,
    /// Every event seen, for checks at the end.
    events: Vec<Value>,
    /// Events not consumed by a wait yet.
    backlog: VecDeque<Value>,
    next_id: u64,
    log: PathBuf,
}

impl Browser {
    fn launch(chromium: &Path, dir: &Path, spki: &str) -> Browser {
        let profile = dir.join("chromium-profile");
        let log = dir.join("chromium.log");
        // Parent → browser on the browser's fd 3, browser → parent on fd 4.
        let (cmd_read, cmd_write) = pipe();
        let (msg_read, msg_write) = pipe();
        let (child_in, child_out) = (cmd_read.as_raw_fd(), msg_write.as_raw_fd());
        let mut command = Command::new(chromium);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                // Only lunch.test resolves, to loopback: nothing leaves the machine.
                "--host-resolver-rules=MAP lunch.test 127.0.0.1, MAP * ~NOTFOUND",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .process_group(0);
        // SAFETY: between fork and exec only async-signal-safe calls (dup,
        // dup2) on fds this process owns; the originals are close-on-exec.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                // Move both out of the way first, in case either is 3 or 4.
                let a = libc::fcntl(child_in, libc::F_DUPFD_CLOEXEC, 10);
                let b = libc::fcntl(child_out, libc::F_DUPFD_CLOEXEC, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("starting chromium");
        drop((cmd_read, msg_write));

        let (tx, rx) = channel();
        let reader = File::from(msg_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut message = Vec::new();
            loop {
                message.clear();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if message.last() == Some(&0) {
                            message.pop();
                        }
                        let Ok(value) = serde_json::from_slice::<Value>(&message) else {
                            break;
                        };
                        if tx.send(value).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Browser {
            child,
            to_browser: File::from(cmd_write),
            from_browser: rx,
            events: Vec::new(),
            backlog: VecDeque::new(),
            next_id: 1,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a command and waits for its result; events that arrive
    /// meanwhile are kept.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .unwrap_or_else(|e| panic!("writing to chromium: {e}\n{}", self.log()));
        let deadline = Instant::now() + STEP;
        loop {
            let message = self.recv(deadline, method);
            if message["id"] == id {
                if let Some(error) = message.get("error") {
                    panic!("{method} failed: {error}");
                }
                return message["result"].clone();
            }
            self.events.push(message.clone());
            self.backlog.push_back(message);
        }
    }

    fn recv(&mut self, deadline: Instant, waiting_for: &str) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.from_browser.recv_timeout(left) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => panic!("no {waiting_for} from chromium within {STEP:?}\n{}", self.log()),
            Err(RecvTimeoutError::Disconnected) => panic!("chromium went away\n{}", self.log()),
        }
    }

    /// Waits for the event `method` in `session`, consuming it and any
    /// events before it.
    fn wait_event(&mut self, session: &str, method: &str) -> Value {
        while let Some(event) = self.backlog.pop_front() {
            if event["method"] == method && event["sessionId"] == session {
                return event;
            }
        }
        let deadline = Instant::now() + STEP;
        loop {
            let event = self.recv(deadline, method);
            self.events.push(event.clone());
            if event["method"] == method && event["sessionId"] == session {
                return event;
            }
        }
    }

    /// A new tab with the domains the test listens to.
    fn open(&mut self) -> Tab {
        let target = self.call(None, "Target.createTarget", json!({ "url": "about:blank" }));
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.call(Some(&session), domain, json!({}));
        }
        Tab { session }
    }

    fn close(mut self) {
        let _ = self.call(None, "Browser.close", json!({}));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // Chromium's helpers share its process group (set at spawn).
            // SAFETY: kill(2) on the process group of our own child.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(-(self.child.id() as i32), libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

/// A pipe whose ends are close-on-exec.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new fds into the array, which we then own.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    }
}

/// One page, by its DevTools session.
struct Tab {
    session: String,
}

impl Tab {
    fn call(&self, browser: &mut Browser, method: &str, params: Value) -> Value {
        browser.call(Some(&self.session), method, params)
    }

    fn viewport(&self, browser: &mut Browser, width: u32, height: u32, mobile: bool) {
        self.call(
            browser,
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": if mobile { 2 } else { 1 }, "mobile": mobile }),
        );
    }

    fn dark(&self, browser: &mut Browser) {
        self.call(
            browser,
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": "dark" }] }),
        );
    }

    fn navigate(&self, browser: &mut Browser, url: &str) {
        browser.backlog.clear();
        let result = self.call(browser, "Page.navigate", json!({ "url": url }));
        assert!(
            result.get("errorText").is_none(),
            "loading {url}: {result}\n{}",
            browser.log()
        );
        browser.wait_event(&self.session, "Page.loadEventFired");
    }

    /// Clicks the centre of the element `selector` with the mouse and waits
    /// for the page it leads to.
    fn click(&self, browser: &mut Browser, selector: &str) {
        let script = format!(
            "(() => {{ const e = document.querySelector({selector:?}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        );
        let point = self.eval(browser, &script);
        let (x, y) = match point.as_array().map(Vec::as_slice) {
            Some([x, y]) => (x.as_f64().unwrap(), y.as_f64().unwrap()),
            _ => panic!("no element {selector} on the page:\n{}", self.text(browser)),
        };
        browser.backlog.clear();
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                browser,
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            );
        }
        browser.wait_event(&self.session, "Page.loadEventFired");
    }

    fn eval(&self, browser: &mut Browser, expression: &str) -> Value {
        let result = self.call(
            browser,
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// The text as rendered (`innerText` honours the style sheet).
    fn text(&self, browser: &mut Browser) -> String {
        self.eval(browser, "document.body.innerText")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Every element with text of its own has a contrast ratio of at least
    /// 4.5:1 against the nearest opaque background (WCAG 2 AA).
    fn assert_contrast(&self, browser: &mut Browser, scheme: &str) {
        let low = self.eval(browser, CONTRAST);
        assert_eq!(low, json!([]), "text below 4.5:1 in the {scheme} scheme");
    }

    /// Tabbing to the first link shows an outline.
    fn assert_focus_is_visible(&self, browser: &mut Browser) {
        for kind in ["keyDown", "keyUp"] {
            self.call(
                browser,
                "Input.dispatchKeyEvent",
                json!({ "type": kind, "key": "Tab", "code": "Tab", "windowsVirtualKeyCode": 9 }),
            );
        }
        let focused = self.eval(
            browser,
            "(() => { const s = getComputedStyle(document.activeElement); \
             return [document.activeElement.tagName, s.outlineStyle, s.outlineWidth]; })()",
        );
        assert_eq!(focused, json!(["A", "solid", "3px"]), "focus is not visible");
    }

    /// A PNG of the whole page (not only the viewport).
    fn screenshot(&self, browser: &mut Browser, path: &Path) {
        let shot = self.call(
            browser,
            "Page.captureScreenshot",
            json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }
}

/// Lists elements whose own text has a contrast ratio below 4.5:1.
const CONTRAST: &str = r#"(() => {
  const channels = c => c.match(/[\d.]+/g).map(Number);
  const luminance = c => {
    const [r, g, b] = channels(c).slice(0, 3).map(v => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const background = e => {
    for (; e; e = e.parentElement) {
      const c = getComputedStyle(e).backgroundColor;
      const v = channels(c);
      if (v.length < 4 || v[3] > 0) return c;
    }
    return 'rgb(255, 255, 255)';
  };
  const low = [];
  for (const e of document.querySelectorAll('body *')) {
    if (![...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    const fg = getComputedStyle(e).color, bg = background(e);
    const [hi, lo] = [luminance(fg), luminance(bg)].sort((a, b) => b - a);
    const ratio = (hi + 0.05) / (lo + 0.05);
    if (ratio < 4.5) low.push(`${e.tagName}.${e.className} "${e.textContent.trim().slice(0, 30)}": ${fg} on ${bg} = ${ratio.toFixed(2)}`);
  }
  return low;
})()"#;
