//! The status page, rendered by a real headless Chromium against a running
//! gateway: every configured device is shown, values appear and change as
//! readings flow, sparklines draw them, the page fits a desktop window and
//! a phone without scrolling sideways, and screenshots of both are kept in
//! the target directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::support::*;

/// Chromium can take long to start on a loaded machine; one run may take this long.
const CHROMIUM_PATIENCE: Duration = Duration::from_secs(180);
/// Virtual time the page gets before its DOM is taken: room for the first
/// poll and one more (the page polls every 2 s; fetches pause virtual time).
const PAGE_TIME_MS: u32 = 5_000;
/// The page as it is in the source.
const PAGE: &str = include_str!("../../../gateway/src/ops/http/status_page.html");
/// Names longer than a phone is wide, with no place to break a line.
const LONG_DEVICE: &str = "feedwater_pump_controller_of_the_north_boiler_house_unreachable";
const LONG_POINT: &str = "differential_pressure_across_the_secondary_heat_exchanger_inlet";
const LONG_UNIT: &str = "kilopascal_gauge_at_twenty_degC";
const DESKTOP: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (390, 844);

fn chromium_bin() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.exists())
        .expect("chromium not found: install the test peers with `.ci/install-peers`")
}

const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
];

/// Kills Chromium's process group, so no renderer outlives the test.
fn kill_group(group: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status();
}

/// Runs headless Chromium on `url` with `args` in a profile of its own and
/// returns what it printed. It runs in a process group of its own, killed
/// at the end.
async fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(chromium_bin())
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={PAGE_TIME_MS}"))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let group = child.id().expect("chromium running");
    let output = tokio::time::timeout(CHROMIUM_PATIENCE, child.wait_with_output()).await;
    kill_group(group);
    let output = output
        .unwrap_or_else(|_| panic!("chromium did not finish within {CHROMIUM_PATIENCE:?}"))
        .unwrap();
    assert!(
        output.status.success(),
        "chromium failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The page's DOM once its script has run, and it has data.
async fn rendered(url: &str) -> String {
    let dom = chromium(url, &["--dump-dom"]).await;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page never showed data:\n{dom}"
    );
    dom
}

/// Headless Chromium driven over the DevTools protocol on a pipe, for what
/// its command line cannot do: its windows are never narrower than 500
/// pixels (with `--window-size=390,844` the page is still laid out 500
/// wide), but a tab's viewport can be set to a phone's. Chromium reads
/// commands from its fd 3 and answers on its fd 4, here its stdin and
/// stdout; every message is JSON ending in a NUL byte.
struct DevTools {
    child: Child,
    commands: ChildStdin,
    answers: BufReader<ChildStdout>,
    last_id: u64,
    dir: tempfile::TempDir,
}

impl DevTools {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#])
            .arg(chromium_bin())
            .args(CHROMIUM_FLAGS)
            .arg(format!(
                "--user-data-dir={}",
                dir.path().join("profile").display()
            ))
            .arg("--remote-debugging-pipe")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        Self {
            commands: child.stdin.take().unwrap(),
            answers: BufReader::new(child.stdout.take().unwrap()),
            child,
            last_id: 0,
            dir,
        }
    }

    /// Sends `method`, to the tab `session` if there is one, and returns
    /// its result; the events Chromium sends in between are passed over.
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.last_id += 1;
        let mut command = json!({"id": self.last_id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = session.into();
        }
        let mut bytes = serde_json::to_vec(&command).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).await.unwrap();
        loop {
            let mut message = Vec::new();
            tokio::time::timeout(CHROMIUM_PATIENCE, self.answers.read_until(0, &mut message))
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {CHROMIUM_PATIENCE:?}"))
                .unwrap();
            assert_eq!(
                message.pop(),
                Some(0),
                "chromium closed its pipe:\n{}",
                std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
            );
            let mut message: Value = serde_json::from_slice(&message).unwrap();
            if message["id"] == self.last_id {
                assert!(message["error"].is_null(), "{method}: {message}");
                return message["result"].take();
            }
        }
    }

    /// Opens `url` in a new tab with a viewport of `width` × `height` CSS
    /// pixels, as a phone lays it out when `mobile`, and waits until the
    /// page shows data. The tab's session.
    async fn open(&mut self, url: &str, (width, height): (u32, u32), mobile: bool) -> String {
        let tab = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": tab["targetId"], "flatten": true}),
            )
            .await;
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        self.call(
            Some(&session),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
        let navigated = self
            .call(Some(&session), "Page.navigate", json!({"url": url}))
            .await;
        assert!(navigated["errorText"].is_null(), "{url}: {navigated}");
        let deadline = tokio::time::Instant::now() + CHROMIUM_PATIENCE;
        while self
            .eval(&session, "document.body?.dataset.loaded === 'true'")
            .await
            != true
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed data at {width} px"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        session
    }

    /// The value of the JavaScript `expression` in the tab `session`.
    async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let mut result = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].take()
    }

    /// A PNG of what the tab `session` shows.
    async fn screenshot(&mut self, session: &str) -> Vec<u8> {
        let shot = self
            .call(
                Some(session),
                "Page.captureScreenshot",
                json!({"format": "png"}),
            )
            .await;
        base64(shot["data"].as_str().unwrap())
    }
}

impl Drop for DevTools {
    fn drop(&mut self) {
        if let Some(group) = self.child.id() {
            kill_group(group);
        }
    }
}

/// Decodes standard base64, in which the DevTools protocol sends bytes.
fn base64(text: &str) -> Vec<u8> {
    let digit = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("{:?} is not a base64 digit", char::from(c)),
    };
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3);
    for group in text.trim_end_matches('=').as_bytes().chunks(4) {
        let bits = group
            .iter()
            .fold(0u32, |bits, &c| bits << 6 | u32::from(digit(c)))
            << (6 * (4 - group.len()));
        bytes.extend_from_slice(&bits.to_be_bytes()[1..group.len()]);
    }
    bytes
}

/// How the page is laid out: the viewport's width, the document's (wider
/// when the page scrolls sideways), the cards holding content wider than
/// themselves, and what the page shows that takes no room on screen.
const LAYOUT: &str = r#"(() => {
    const root = document.documentElement;
    const shown = "[data-device], [data-point], [data-spark], .error-text, [data-bus], [data-plugin]";
    return {
        viewport: root.clientWidth,
        width: root.scrollWidth,
        overflowing: [...document.querySelectorAll(".card")]
            .filter(card => card.scrollWidth > card.clientWidth)
            .map(card => card.dataset.device || card.closest("[id]").id),
        unseen: [...document.querySelectorAll(shown)]
            .filter(node => node.getClientRects().length === 0)
            .map(node => node.outerHTML.slice(0, node.outerHTML.indexOf(">") + 1)),
    };
})()"#;

/// Renders the page in a new tab with a viewport of `size`, as a phone does
/// when `mobile`, and checks that it fits: nothing is wider than the
/// viewport and all it shows is on screen. A screenshot is kept as
/// `screenshot` in the target directory. The tab's session.
async fn assert_fits(
    chromium: &mut DevTools,
    url: &str,
    size: (u32, u32),
    mobile: bool,
    screenshot: &str,
) -> String {
    let tab = chromium.open(url, size, mobile).await;
    let layout = chromium.eval(&tab, LAYOUT).await;
    // Kept before the checks, to show what they found.
    let png = chromium.screenshot(&tab).await;
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(screenshot);
    std::fs::write(&path, &png).unwrap();
    println!("status page at {size:?}: {}", path.display());
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "a blank screenshot? {} bytes",
        png.len()
    );

    let width = size.0;
    assert_eq!(layout["viewport"], width, "{layout}");
    assert!(
        layout["width"].as_u64().unwrap() <= u64::from(width),
        "the page scrolls sideways at {width} px: {layout}"
    );
    assert_eq!(
        layout["overflowing"],
        json!([]),
        "cards too narrow for their content at {width} px: {layout}"
    );
    assert_eq!(
        layout["unseen"],
        json!([]),
        "hidden at {width} px: {layout}"
    );
    tab
}

/// The markup of the element carrying `attribute`, up to its end tag.
fn element<'a>(dom: &'a str, attribute: &str, tag: &str) -> &'a str {
    let start = dom
        .find(attribute)
        .unwrap_or_else(|| panic!("no {attribute} on the page:\n{dom}"));
    let end = dom[start..]
        .find(&format!("</{tag}>"))
        .unwrap_or_else(|| panic!("no </{tag}> after {attribute}"));
    &dom[start..start + end]
}

/// The text of the first element in `markup` carrying `attribute`.
fn text_of<'a>(markup: &'a str, attribute: &str) -> &'a str {
    let at = markup
        .find(attribute)
        .unwrap_or_else(|| panic!("no {attribute} in {markup}"));
    let open = at + markup[at..].find('>').unwrap() + 1;
    &markup[open..open + markup[open..].find('<').unwrap()]
}

/// The value of the first `name="..."` in `markup`.
fn attribute<'a>(markup: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=\"");
    let at = markup
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {markup}"))
        + key.len();
    &markup[at..at + markup[at..].find('"').unwrap()]
}

/// The distinct heights of a sparkline's points.
fn distinct_heights(row: &str) -> usize {
    let mut heights: Vec<&str> = attribute(row, "points")
        .split_whitespace()
        .map(|xy| xy.split_once(',').unwrap().1)
        .collect();
    heights.sort_unstable();
    heights.dedup();
    heights.len()
}

fn api_url(kite: &Kite) -> String {
    let config = std::fs::read_to_string(Kite::config_path(&kite.dir)).unwrap();
    let listen = config
        .lines()
        .find_map(|line| line.strip_prefix("listen = \""))
        .expect("http.listen in the config")
        .trim_end_matches('"');
    format!("http://{listen}/")
}

/// A Modbus TCP device `name` at `port` with two points: `level`, and
/// one whose name and unit do not fit on a phone's line.
fn modbus(name: &str, port: u16) -> String {
    format!(
        "[[devices]]\nname = \"{name}\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"200ms\"\n\
         [[devices.points]]\nname = \"level\"\naddress = 0\nunit = \"cm\"\n\
         [[devices.points]]\nname = \"{LONG_POINT}\"\naddress = 1\nunit = \"{LONG_UNIT}\"\n\n"
    )
}

/// An instrument the test speaks for; its long timeout keeps the silence
/// between the test's lines from turning its reading bad.
fn probe(serial: &Path) -> String {
    format!(
        "[[buses]]\nname = \"com1\"\nport = \"{}\"\nbaud = 9600\n\n\
         [[devices]]\nname = \"probe\"\nprotocol = \"serial\"\nbus = \"com1\"\ntimeout = \"1h\"\n\
         decode = \"regex\"\npattern = '^T=(?P<temp>-?\\d+\\.\\d+)$'\n\
         [[devices.points]]\nname = \"temp\"\nunit = \"degC\"\n",
        serial.display()
    )
}

fn temp(history: &Value) -> &Value {
    &history["devices"]["probe"]["points"]["temp"]
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_every_device_and_follows_the_readings() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_plc, modbus_port) = modbus_device(json!({"holding": {"0": [42]}})).await;
    let pair = SerialPair::start(dir.path(), "probe").await;
    // `plc` answers, LONG_DEVICE never does: its points are bad, with the
    // error of its connection.
    let unreachable = modbus(LONG_DEVICE, free_port());
    let devices = modbus("plc", modbus_port) + &unreachable + &probe(&pair.kite_end);
    let config = kite_config(dir.path(), "gw-page", broker.port, &devices);
    let kite = Kite::start(kite_bin(), dir.path(), &config);
    let url = api_url(&kite);
    // A target directory shared by several checkouts may hold another's
    // binary; the layout checked below must be this page's.
    let (code, page) = kite.http("GET", "/", None, "").await;
    assert_eq!(code, 200);
    assert!(
        page == PAGE,
        "the gateway does not serve the page of this source"
    );

    // Lines written before Kite opens its end could be lost.
    wait_until("the probe's port is open", || {
        kite.log().contains("port open")
    })
    .await;
    let mut probe = std::fs::OpenOptions::new()
        .write(true)
        .open(&pair.device_end)
        .unwrap();
    probe.write_all(b"T=20.5\nT=21.0\nT=23.25\n").unwrap();
    let history = kite
        .api_until("/history", "every device has reported", |h| {
            temp(h)["value"] == 23.25
                && h["devices"]["plc"]["points"]["level"]["value"] == 42
                && h["devices"]["plc"]["points"][LONG_POINT]["quality"] == "good"
                && h["devices"][LONG_DEVICE]["points"]["level"]["quality"] == "bad"
        })
        .await;
    kite.api_until("/status", "the uplink is connected", |s| {
        s["uplink"]["connected"] == true
    })
    .await;

    let dom = rendered(&url).await;
    for device in ["plc", LONG_DEVICE, "probe"] {
        element(&dom, &format!("data-device=\"{device}\""), "article");
    }
    assert_eq!(text_of(&dom, "id=\"gateway\""), "gw-page");
    assert_eq!(text_of(&dom, "data-uplink=\"state\""), "connected");
    let plc = element(&dom, "data-device=\"plc\"", "article");
    assert_eq!(attribute(plc, "data-state"), "polling");
    let level = element(&dom, "data-point=\"plc/level\"", "tr");
    assert_eq!(attribute(level, "data-quality"), "good");
    assert_eq!(text_of(level, "data-value"), "42");
    let dead = element(&dom, &format!("data-point=\"{LONG_DEVICE}/level\""), "tr");
    assert_eq!(attribute(dead, "data-quality"), "bad");
    // Its connection is refused: the device is offline, not polling.
    let offline = element(&dom, &format!("data-device=\"{LONG_DEVICE}\""), "article");
    assert_eq!(attribute(offline, "data-state"), "offline");
    let before = element(&dom, "data-point=\"probe/temp\"", "tr");
    assert_eq!(text_of(before, "data-value"), "23.25");
    let drawn = temp(&history)["recent"].as_array().unwrap().len();
    assert_eq!(attribute(before, "data-count"), drawn.to_string());
    assert!(distinct_heights(before) >= 3, "{before}");
    element(&dom, "data-spark=\"buffer/rows\"", "svg");

    let mut chromium = DevTools::start();
    let tab = assert_fits(&mut chromium, &url, DESKTOP, false, "status-page.png").await;
    assert_fits(&mut chromium, &url, PHONE, true, "status-page-phone.png").await;
    // Each state in its colour: the offline device in red.
    let looks = chromium
        .eval(
            &tab,
            &format!(
                r#"({{
                    plc: document.querySelector('[data-device="plc"] [data-device-state]').className,
                    offline: document.querySelector('[data-device="{LONG_DEVICE}"] [data-device-state]').className,
                    states: ["polling", "quarantined", "offline", "refused"].map(stateClass),
                }})"#
            ),
        )
        .await;
    assert_eq!(
        looks,
        json!({"plc": "badge good", "offline": "badge bad", "states": ["good", "warn", "bad", "bad"]})
    );
    // Its tabs poll on until it is closed.
    drop(chromium);

    // New readings reach the page: the value changes and the line grows.
    probe.write_all(b"T=-4.75\n").unwrap();
    kite.api_until("/history", "the new reading is recorded", |h| {
        temp(h)["value"] == -4.75
    })
    .await;
    let dom = rendered(&url).await;
    let after = element(&dom, "data-point=\"probe/temp\"", "tr");
    assert_eq!(text_of(after, "data-value"), "-4.75");
    assert_eq!(attribute(after, "data-count"), (drawn + 1).to_string());
    assert!(distinct_heights(after) >= 4, "{after}");

    // A device a reload takes out of the config leaves the page.
    let reloaded = config.replace(&unreachable, "");
    assert_ne!(reloaded, config);
    std::fs::write(Kite::config_path(dir.path()), reloaded).unwrap();
    let (code, body) = kite.http("POST", "/reload", None, "").await;
    assert_eq!(code, 200, "{body}");
    kite.api_until("/history", "the removed device is gone", |h| {
        h["devices"][LONG_DEVICE].is_null()
    })
    .await;
    let dom = rendered(&url).await;
    assert!(!dom.contains(LONG_DEVICE), "{dom}");
    element(&dom, "data-point=\"plc/level\"", "tr");
    element(&dom, "data-point=\"probe/temp\"", "tr");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_token_the_page_reads_it_from_its_fragment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api-token"), "s3cret-token\n").unwrap();
    let device = format!(
        "[[devices]]\nname = \"plc\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{}\"\n\
         [[devices.points]]\nname = \"level\"\naddress = 0\n",
        free_port()
    );
    // No broker: the page does not need one.
    let config = kite_config(dir.path(), "gw-page-token", free_port(), &device)
        .replace("[http]\n", "[http]\ntoken_file = \"api-token\"\n");
    let kite = Kite::start(kite_bin(), dir.path(), &config);
    let url = api_url(&kite);

    // The page itself holds no data; everything it shows needs the token.
    let (code, page) = kite.http("GET", "/", None, "").await;
    assert_eq!(code, 200);
    assert!(page.contains("<title>Kite</title>"), "{page}");
    assert_eq!(kite.http("GET", "/history", None, "").await.0, 401);
    assert_eq!(
        kite.http("GET", "/history", Some("s3cret-token"), "")
            .await
            .0,
        200
    );

    let dom = chromium(&url, &["--dump-dom"]).await;
    assert!(!dom.contains("data-device="), "{dom}");
    assert!(
        text_of(&dom, "id=\"error\"").contains("needs its API token"),
        "{dom}"
    );

    let dom = rendered(&format!("{url}#token=s3cret-token")).await;
    element(&dom, "data-device=\"plc\"", "article");
    assert_eq!(text_of(&dom, "data-uplink=\"state\""), "disconnected");
}
