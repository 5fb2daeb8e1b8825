//! Devices that fail in every way a device can fail: each is reported as
//! what it is, and none disturbs the others.

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

/// A device that answers every request with `reply` (or closes, or stays silent).
async fn broken_device(reply: Option<&'static [u8]>, close: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = [0u8; 260];
                loop {
                    if close || matches!(socket.read(&mut request).await, Ok(0) | Err(_)) {
                        return;
                    }
                    if let Some(reply) = reply {
                        if socket.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_devices_are_reported_and_do_not_disturb_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_good, good_port) = modbus_device(json!({"size": 20, "holding": {"0": [42]}})).await;
    // pymodbus answers reads past its 20 registers with an exception.
    let (_small, small_port) = modbus_device(json!({"size": 20, "holding": {"0": [7]}})).await;
    let garbage = broken_device(Some(b"\xde\xad\xbe\xef garbage \x00\x01\x02"), false).await;
    let closing = broken_device(None, true).await;
    let silent = broken_device(None, false).await;
    let refused = free_port();

    let device = |name: &str, port: u16, address: u16| {
        format!(
            "[[devices]]\nname = \"{name}\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"100ms\"\ntimeout = \"300ms\"\n[[devices.points]]\nname = \"value\"\naddress = {address}\n"
        )
    };
    let mut devices = device("good", good_port, 0);
    devices += &device("exception", small_port, 0);
    devices += "[[devices.points]]\nname = \"missing\"\naddress = 50\n";
    devices += &device("garbage", garbage, 0);
    devices += &device("closing", closing, 0);
    devices += &device("silent", silent, 0);
    devices += &device("refused", refused, 0);
    let mut sub = Subscriber::connect(broker.port, "kite/gw-bad/#", "bad-test", false).await;
    let kite = Kite::start(
        kite_bin(),
        dir.path(),
        &kite_config(dir.path(), "gw-bad", broker.port, &devices),
    );

    // An exception costs only the points it covers; the connection stays.
    let exception = sub.next_on("kite/gw-bad/exception", |_| true).await;
    assert_eq!(exception["points"]["value"]["value"], 7);
    assert_eq!(exception["points"]["missing"]["quality"], "bad");
    assert!(
        exception["points"]["missing"]["error"]
            .as_str()
            .unwrap()
            .contains("exception"),
        "{exception}"
    );

    for (name, reason) in [
        ("garbage", ""),
        ("closing", ""),
        ("silent", "no response within"),
        ("refused", "connect"),
    ] {
        let message = sub.next_on(&format!("kite/gw-bad/{name}"), |_| true).await;
        let point = &message["points"]["value"];
        assert_eq!(point["quality"], "bad", "{name}: {message}");
        assert!(point.get("value").is_none(), "{name}: {message}");
        let error = point["error"].as_str().unwrap();
        assert!(
            !error.is_empty() && error.contains(reason),
            "{name}: {error}"
        );
    }
    // Meanwhile the good device keeps delivering good values.
    let mut good = 0;
    while good < 20 {
        let message = sub.next_on("kite/gw-bad/good", |_| true).await;
        assert_eq!(
            message["points"]["value"],
            json!({"value": 42, "quality": "good"}),
            "{message}"
        );
        good += 1;
    }
    // Each device's state says what is happening to it, in the status and the metrics.
    let (_, body) = kite.http("GET", "/status", None, "").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let devices = &status["devices"];
    assert_eq!(devices["good"]["state"], "polling", "{devices}");
    assert_eq!(devices["silent"]["state"], "quarantined", "{devices}");
    assert_eq!(devices["refused"]["state"], "offline", "{devices}");
    let (_, metrics) = kite.http("GET", "/metrics", None, "").await;
    for (device, offline) in [("refused", 1), ("good", 0), ("silent", 0)] {
        let series = format!("kite_device_offline{{device=\"{device}\"}} {offline}");
        assert!(metrics.lines().any(|l| l == series), "{series}\n{metrics}");
    }
    // Failing devices recover on their own: the daemon is still alive and well.
    assert!(!kite.log().contains("panicked"), "{}", kite.log());
}
