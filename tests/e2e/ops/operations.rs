//! Running unattended: the local HTTP API (health, metrics, status, log
//! level), `kite status`, and systemd's notify protocol with the data-flow
//! watchdog, spoken to a notify socket the test binds as systemd would.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

fn device(port: u16) -> String {
    format!(
        "[[devices]]\nname = \"plc\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"100ms\"\ntimeout = \"1s\"\n\
         [[devices.points]]\nname = \"level\"\naddress = 0\n"
    )
}

/// The value of an unlabelled or labelled sample in a Prometheus text page.
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in\n{page}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn health_metrics_status_and_log_level_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(dir.path(), false).await;
    let (_device, port) = modbus_device(json!({"holding": {"0": [42]}})).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-ops/#", "ops-test", false).await;
    let kite = Kite::start(
        kite_bin(),
        dir.path(),
        &kite_config(dir.path(), "gw-ops", broker.port, &device(port)),
    );
    sub.next_on("kite/gw-ops/plc", |_| true).await;

    let (code, body) = kite.http("GET", "/healthz", None, "").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (code, &health["live"], &health["ready"]),
        (200, &json!(true), &json!(true)),
        "{body}"
    );

    let (code, page) = kite.http("GET", "/metrics", None, "").await;
    assert_eq!(code, 200);
    assert!(
        metric(&page, "kite_device_reads_total{device=\"plc\"}") >= 1.0,
        "{page}"
    );
    assert_eq!(metric(&page, "kite_uplink_connected"), 1.0);
    assert_eq!(metric(&page, "kite_live"), 1.0);
    assert!(metric(&page, "kite_ingest_committed_total") >= 1.0);
    assert!(
        metric(
            &page,
            "kite_device_poll_duration_seconds_count{device=\"plc\"}"
        ) >= 1.0
    );
    assert!(page.contains("# TYPE kite_buffer_rows gauge"), "{page}");
    // One family per summary, and every place that can drop or lose data has its counter.
    assert_eq!(
        page.matches("# TYPE kite_device_poll_duration_seconds summary")
            .count(),
        1,
        "{page}"
    );
    assert!(!page.contains("# TYPE kite_device_poll_duration_seconds_sum"));
    for family in [
        "kite_buffer_dropped_total",
        "kite_buffer_lost_total",
        "kite_buffer_set_aside_total",
        "kite_buffer_too_large_total",
        "kite_buffer_commit_failures_total",
        "kite_history_dropped_total",
        "kite_uplink_results_dropped_total",
        "kite_device_discarded_bytes_total",
        "kite_bus_missed_polls_total",
        "kite_plugin_lost_batches_total",
        "kite_plugin_skipped_batches_total",
    ] {
        assert!(
            page.contains(&format!("# TYPE {family} counter")),
            "{family} missing:\n{page}"
        );
    }
    assert_eq!(metric(&page, "kite_buffer_lost_total"), 0.0);

    let (code, body) = kite.http("GET", "/status", None, "").await;
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200);
    assert_eq!(status["gateway"], "gw-ops");
    assert_eq!(status["devices"]["plc"]["state"], "polling", "{status}");

    let config = Kite::config_path(dir.path());
    let output = Command::new(kite_bin())
        .args(["status", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("gateway gw-ops") && text.contains("live, ready"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("plc") && l.contains("polling")),
        "{text}"
    );

    // The log filter changes at run time; a bad one is refused and changes nothing.
    let output = Command::new(kite_bin())
        .args(["log-level", "--config"])
        .arg(&config)
        .arg("info,kite_modbus=trace")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_until("trace lines from kite_modbus", || {
        kite.log().contains("TRACE kite_modbus")
    })
    .await;
    let (code, body) = kite
        .http("PUT", "/log-level", None, "info,=nonsense[")
        .await;
    assert_eq!(code, 400, "{body}");

    // Broker gone: still live (buffering is the job), not ready, and says why.
    broker.stop().await;
    wait_until("the uplink noticed", || kite.log().contains("uplink down")).await;
    let (code, body) = kite.http("GET", "/healthz", None, "").await;
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (code, &health["live"], &health["ready"]),
        (200, &json!(true), &json!(false)),
        "{body}"
    );
    assert!(body.contains("not connected"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn off_loopback_everything_but_health_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("api-token"), "s3cret-token\n").unwrap();
    let port = free_port();
    let config = kite_config(dir.path(), "gw-token", free_port(), "").replace(
        "[http]\nlisten = \"127.0.0.1:",
        &format!("[http]\ntoken_file = \"api-token\"\nlisten = \"0.0.0.0:{port}\"\n# was: \""),
    );
    let kite = Kite::start(kite_bin(), dir.path(), &config);
    assert_eq!(kite.http("GET", "/healthz", None, "").await.0, 200);
    assert_eq!(kite.http("GET", "/metrics", None, "").await.0, 401);
    assert_eq!(kite.http("GET", "/status", Some("wrong"), "").await.0, 401);
    assert_eq!(kite.http("PUT", "/log-level", None, "debug").await.0, 401);
    assert_eq!(
        kite.http("GET", "/metrics", Some("s3cret-token"), "")
            .await
            .0,
        200
    );
    // `kite status` reads the token from the same config.
    let output = Command::new(kite_bin())
        .args(["status", "--json", "--config"])
        .arg(Kite::config_path(dir.path()))
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["gateway"], "gw-token");
}

/// The daemon's notify socket, read at once as systemd does (a full socket
/// would block the sender).
struct NotifySocket(std::sync::mpsc::Receiver<String>);

impl NotifySocket {
    fn bind(path: &std::path::Path) -> Self {
        let socket = UnixDatagram::bind(path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    return;
                }
            }
        });
        Self(rx)
    }

    fn next_within(&self, limit: Duration) -> Option<String> {
        self.0.recv_timeout(limit).ok()
    }

    fn next(&self) -> String {
        self.next_within(PATIENCE)
            .expect("a notification within the patience")
    }

    /// Waits for a message with the line `what`; returns all of it.
    fn until(&self, what: &str) -> String {
        loop {
            let message = self.next();
            if message.lines().any(|l| l == what) {
                return message;
            }
        }
    }

    fn drain(&self) {
        while self.0.try_recv().is_ok() {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_and_a_watchdog_fed_only_while_data_moves() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_device, port) = modbus_device(json!({"holding": {"0": [7]}})).await;
    let socket_path = dir.path().join("notify.sock");
    let socket = NotifySocket::bind(&socket_path);
    let config = kite_config(dir.path(), "gw-sd", broker.port, &device(port));
    let socket_env = socket_path.display().to_string();
    let mut kite = Kite::start_with_env(
        kite_bin(),
        dir.path(),
        &config,
        &[
            ("NOTIFY_SOCKET", socket_env.as_str()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    assert!(
        socket.next().lines().any(|l| l == "READY=1"),
        "READY=1 comes first"
    );
    socket.until("WATCHDOG=1");
    socket.until("WATCHDOG=1");

    // A commit that cannot finish (another process holds the database's
    // write lock) stops the pings: systemd would restart a stuck gateway.
    let database = dir.path().join("data/buffer.sqlite3");
    let lock = rusqlite::Connection::open(&database).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
    wait_until("the pipeline is reported stuck", || {
        kite.log().contains("pipeline stuck")
    })
    .await;
    socket.drain();
    assert_eq!(
        socket.next_within(Duration::from_secs(3)),
        None,
        "no ping while stuck"
    );
    lock.execute_batch("ROLLBACK").unwrap();
    socket.until("WATCHDOG=1");
    wait_until("the pipeline moves again", || {
        kite.log().contains("moving again")
    })
    .await;

    // A reload is announced as systemd's notify-reload protocol asks.
    kite.hangup();
    let reloading = socket.until("RELOADING=1");
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading}"
    );
    socket.until("READY=1");

    assert!(kite.terminate().await.success());
    let stopping = socket.until("STOPPING=1");
    // Sent once the buffer is flushed, saying what it left.
    assert!(
        stopping.lines().any(|l| l.starts_with("STATUS=stopping: ")),
        "{stopping}"
    );
}
