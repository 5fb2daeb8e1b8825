//! MQTT 5 (`mqtt.version = 5`) against Mosquitto: the gateway's id and the
//! content type on every message and a message expiry on telemetry, a
//! session that keeps the commands sent while the gateway was away, and a
//! message the broker refuses with a reason code set aside, never retried
//! forever.

use serde_json::json;

use crate::support::*;

fn meter(port: u16) -> String {
    format!(
        "[[devices]]\nname = \"meter\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"100ms\"\ntimeout = \"300ms\"\n\
         [[devices.points]]\nname = \"setpoint\"\naddress = 0\nwritable = true\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn mqtt5_messages_carry_their_properties_and_the_session_keeps_commands_sent_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_device, port) = modbus_device(json!({"size": 20, "holding": {"0": [42]}})).await;
    let config = kite_config(dir.path(), "gw5", broker.port, &meter(port)).replace(
        "[mqtt]\n",
        "[mqtt]\nversion = 5\nsession_expiry = \"1h\"\nmessage_expiry = \"10m\"\n",
    );
    let mut sub = Subscriber5::connect(broker.port, "kite/gw5/#", "mqtt5-test").await;
    let mut kite = Kite::start(kite_bin(), dir.path(), &config);

    let telemetry = sub.next_on("kite/gw5/meter", |_| true).await;
    assert_eq!(telemetry.payload["points"]["setpoint"]["value"], 42);
    assert_eq!(telemetry.user_property("gateway"), Some("gw5"));
    assert_eq!(
        telemetry.user_property("content-type"),
        Some("application/json")
    );
    assert_eq!(
        telemetry.properties.content_type.as_deref(),
        Some("application/json")
    );
    let expiry = telemetry
        .properties
        .message_expiry_interval
        .expect("telemetry expires");
    assert!((1..=600).contains(&expiry), "{expiry} s left of 10 minutes");
    let status = sub
        .next_on("kite/gw5/status", |m| m.payload["state"] == "online")
        .await;
    assert_eq!(status.user_property("gateway"), Some("gw5"));
    assert_eq!(
        status.properties.message_expiry_interval, None,
        "the status does not expire"
    );

    // Away with its session kept, the gateway still gets the write sent meanwhile.
    assert!(kite.terminate().await.success());
    let cloud = Subscriber::connect(broker.port, "kite/gw5/meter/set/result", "cloud", false).await;
    cloud
        .publish(
            "kite/gw5/meter/set",
            r#"{"id": "w-away", "point": "setpoint", "value": 50}"#,
        )
        .await;
    kite.restart();
    let result = sub
        .next_on("kite/gw5/meter/set/result", |m| m.payload["id"] == "w-away")
        .await;
    assert_eq!(result.payload["ok"], true, "{:?}", result.payload);
    sub.next_on("kite/gw5/meter", |m| {
        m.payload["points"]["setpoint"]["value"] == 50
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_the_broker_refuses_is_set_aside_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let acl = dir.path().join("acl");
    // Anonymous clients may publish anything but the blocked device's telemetry.
    std::fs::write(&acl, "topic deny kite/gw5-acl/blocked\ntopic readwrite #\n").unwrap();
    let broker = Mosquitto::with_config(
        dir.path(),
        port,
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {}\n",
            acl.display()
        ),
    )
    .await;
    let (_device, device_port) = modbus_device(json!({"size": 20, "holding": {"0": [42]}})).await;
    let devices = format!(
        "{}[[devices]]\nname = \"blocked\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{device_port}\"\npoll_interval = \"100ms\"\ntimeout = \"300ms\"\n\
         [[devices.points]]\nname = \"energy\"\naddress = 0\n",
        meter(device_port)
    );
    let config = kite_config(dir.path(), "gw5-acl", broker.port, &devices)
        .replace("[mqtt]\n", "[mqtt]\nversion = 5\n");
    let mut sub = Subscriber5::connect(broker.port, "kite/gw5-acl/+", "acl-test").await;
    let kite = Kite::start(kite_bin(), dir.path(), &config);

    wait_until("refused rows set aside", || {
        kite.buffer_number("SELECT count(*) FROM set_aside WHERE device = 'blocked'") >= 3
    })
    .await;
    let reason: String =
        kite.buffer_text("SELECT reason FROM set_aside WHERE device = 'blocked' LIMIT 1");
    assert!(reason.contains("not authorized"), "{reason}");
    // The allowed device goes on.
    for _ in 0..3 {
        sub.next_on("kite/gw5-acl/meter", |_| true).await;
    }
}
