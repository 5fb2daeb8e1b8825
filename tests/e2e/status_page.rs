//! The status page, rendered by a real headless Chromium against a running
//! gateway: every configured device is shown, values appear and change as
//! readings flow, sparklines draw them, and a screenshot is kept in the
//! target directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// Chromium can take long to start on a loaded machine; one run may take this long.
const CHROMIUM_PATIENCE: Duration = Duration::from_secs(180);
/// Virtual time the page gets before its DOM is taken: room for the first
/// poll and one more (the page polls every 2 s; fetches pause virtual time).
const PAGE_TIME_MS: u32 = 5_000;

fn chromium_bin() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("chromium"))
        .find(|candidate| candidate.exists())
        .expect("chromium not found: install the test peers with `.ci/install-peers`")
}

/// Runs headless Chromium on `url` with `args` in a profile of its own and
/// returns what it printed. It runs in a process group of its own, killed
/// at the end, so no renderer outlives the run.
async fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(chromium_bin())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={PAGE_TIME_MS}"))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let group = child.id().expect("chromium running");
    let output = tokio::time::timeout(CHROMIUM_PATIENCE, child.wait_with_output()).await;
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(std::process::Stdio::null())
        .status();
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

/// Polls the JSON at `path` until `condition` holds; the document that satisfied it.
async fn api_until(
    kite: &Kite,
    path: &str,
    what: &str,
    condition: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (code, body) = kite.http("GET", path, None, "").await;
        assert_eq!(code, 200, "{body}");
        let doc: Value = serde_json::from_str(&body).unwrap();
        if condition(&doc) {
            return doc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// A Modbus TCP device `name` at `port` with one point, `level`.
fn modbus(name: &str, port: u16) -> String {
    format!(
        "[[devices]]\nname = \"{name}\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"200ms\"\n\
         [[devices.points]]\nname = \"level\"\naddress = 0\nunit = \"cm\"\n\n"
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
    // `plc` answers, `offline` never does.
    let offline = modbus("offline", free_port());
    let devices = modbus("plc", modbus_port) + &offline + &probe(&pair.kite_end);
    let config = kite_config(dir.path(), "gw-page", broker.port, &devices);
    let kite = Kite::start(dir.path(), &config);
    let url = api_url(&kite);

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
    let history = api_until(&kite, "/history", "every device has reported", |h| {
        temp(h)["value"] == 23.25
            && h["devices"]["plc"]["points"]["level"]["value"] == 42
            && h["devices"]["offline"]["points"]["level"]["quality"] == "bad"
    })
    .await;
    api_until(&kite, "/status", "the uplink is connected", |s| {
        s["uplink"]["connected"] == true
    })
    .await;

    let dom = rendered(&url).await;
    for device in ["plc", "offline", "probe"] {
        element(&dom, &format!("data-device=\"{device}\""), "article");
    }
    assert_eq!(text_of(&dom, "id=\"gateway\""), "gw-page");
    assert_eq!(text_of(&dom, "data-uplink=\"state\""), "connected");
    let plc = element(&dom, "data-device=\"plc\"", "article");
    assert_eq!(attribute(plc, "data-state"), "polling");
    let level = element(&dom, "data-point=\"plc/level\"", "tr");
    assert_eq!(attribute(level, "data-quality"), "good");
    assert_eq!(text_of(level, "data-value"), "42");
    let dead = element(&dom, "data-point=\"offline/level\"", "tr");
    assert_eq!(attribute(dead, "data-quality"), "bad");
    let before = element(&dom, "data-point=\"probe/temp\"", "tr");
    assert_eq!(text_of(before, "data-value"), "23.25");
    let drawn = temp(&history)["recent"].as_array().unwrap().len();
    assert_eq!(attribute(before, "data-count"), drawn.to_string());
    assert!(distinct_heights(before) >= 3, "{before}");
    element(&dom, "data-spark=\"buffer/rows\"", "svg");

    // New readings reach the page: the value changes and the line grows.
    probe.write_all(b"T=-4.75\n").unwrap();
    api_until(&kite, "/history", "the new reading is recorded", |h| {
        temp(h)["value"] == -4.75
    })
    .await;
    let dom = rendered(&url).await;
    let after = element(&dom, "data-point=\"probe/temp\"", "tr");
    assert_eq!(text_of(after, "data-value"), "-4.75");
    assert_eq!(attribute(after, "data-count"), (drawn + 1).to_string());
    assert!(distinct_heights(after) >= 4, "{after}");

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &url,
        &[
            &format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,900",
        ],
    )
    .await;
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "a blank screenshot? {} bytes",
        png.len()
    );
    println!("status page screenshot: {}", screenshot.display());

    // A device a reload takes out of the config leaves the page.
    let reloaded = config.replace(&offline, "");
    assert_ne!(reloaded, config);
    std::fs::write(Kite::config_path(dir.path()), reloaded).unwrap();
    let (code, body) = kite.http("POST", "/reload", None, "").await;
    assert_eq!(code, 200, "{body}");
    api_until(&kite, "/history", "the removed device is gone", |h| {
        h["devices"]["offline"].is_null()
    })
    .await;
    let dom = rendered(&url).await;
    assert!(!dom.contains("data-device=\"offline\""), "{dom}");
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
    let kite = Kite::start(dir.path(), &config);
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
