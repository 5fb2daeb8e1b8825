//! BLE sensors against BlueZ's D-Bus API as python-dbusmock serves it on a
//! private bus: devices appearing with their first advertisement, later
//! advertisements as property changes, an encrypted sensor with the wrong
//! key, an unknown device, silence, and the adapter going away.

use std::path::Path;

use serde_json::Value;

use crate::support::bluez::{Advert, Bluez, Characteristic};
use crate::support::*;

const BTHOME: &str = "0000fcd2-0000-1000-8000-00805f9b34fb";
const THERMO: &str = "3C:2E:F5:00:00:01";
const RUUVI: &str = "D4:7C:44:00:00:02";
const LOCKED: &str = "3C:2E:F5:00:00:03";
const STRANGER: &str = "C0:FF:EE:00:00:04";

/// A BTHome v2 advertisement, unencrypted: packet id, 25.00 degC, 50.55 %.
fn bthome(packet_id: u8) -> Advert {
    Advert {
        rssi: -61,
        service: vec![(
            BTHOME.into(),
            vec![0x40, 0x00, packet_id, 0x02, 0xc4, 0x09, 0x03, 0xbf, 0x13],
        )],
        ..Default::default()
    }
}

/// Ruuvi RAWv2 "valid data" from its specification: 24.3 degC, 53.49 %,
/// 1000.44 hPa, 1.036 g on z.
fn ruuvi() -> Advert {
    let hex = "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F";
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    Advert {
        rssi: -70,
        manufacturer: vec![(0x0499, bytes)],
        ..Default::default()
    }
}

/// An encrypted BTHome payload (device info, ciphertext, counter, MIC)
/// that no key the gateway has can authenticate.
fn sealed() -> Advert {
    Advert {
        rssi: -80,
        service: vec![(
            BTHOME.into(),
            vec![
                0x41, 0xa4, 0x72, 0x66, 0xc9, 0x5f, 0x73, 1, 0, 0, 0, 0x10, 0x20, 0x30, 0x40,
            ],
        )],
        ..Default::default()
    }
}

fn config(dir: &Path, mqtt_port: u16, ble: &str, devices: &str) -> String {
    kite_config(dir, "gw", mqtt_port, &format!("[ble]\n{ble}\n{devices}"))
}

fn device(name: &str, address: &str, decoder: &str, extra: &str) -> String {
    format!(
        "[[devices]]\nname = \"{name}\"\nprotocol = \"ble\"\naddress = \"{address}\"\ndecoder = \"{decoder}\"\n{extra}\n"
    )
}

fn start(dir: &Path, bluez: &Bluez, config: &str) -> Kite {
    let bus = bluez.bus_address();
    Kite::start_with_env(
        kite_bin(),
        dir,
        config,
        &[("DBUS_SYSTEM_BUS_ADDRESS", bus.as_str())],
    )
}

async fn scanning(kite: &Kite) -> Value {
    kite.api_until("/status", "BLE is scanning", |s| {
        s["ble"]["state"] == "scanning"
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn advertisements_are_decoded_into_telemetry_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let bluez = Bluez::start(dir.path()).await;
    bluez.add_adapter("hci0").await;
    let broker = Mosquitto::start(dir.path(), false).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw/#", "ble-test", false).await;
    std::fs::write(
        dir.path().join("locked.key"),
        "231d39c1d7cc1ab1aee224cd096db932\n",
    )
    .unwrap();
    let devices = [
        device("thermo", &THERMO.to_lowercase(), "bthome", ""),
        device(
            "dock",
            RUUVI,
            "ruuvi",
            "points = [\"temperature\", \"acceleration_z\", \"rssi\"]",
        ),
        device("locked", LOCKED, "bthome", "bind_key_file = \"locked.key\""),
    ]
    .concat();
    let kite = start(
        dir.path(),
        &bluez,
        &config(dir.path(), broker.port, "discovery = true", &devices),
    );
    scanning(&kite).await;
    let mut filter = bluez.discovery_filter("hci0").await;
    filter.sort();
    assert_eq!(
        filter,
        [
            ("DuplicateData".to_string(), "true".to_string()),
            ("Transport".to_string(), "le".to_string())
        ]
    );

    // The first advertisement comes with the device object, later ones as
    // property changes; an RSSI alone is not an advertisement with data.
    bluez
        .appear("hci0", THERMO, Some("SBHT-003C"), &bthome(1))
        .await;
    bluez.advertise("hci0", THERMO, &bthome(2)).await;
    bluez.rssi("hci0", THERMO, -55).await;
    bluez.advertise("hci0", THERMO, &bthome(3)).await;
    let mut packets = Vec::new();
    while packets.last() != Some(&3) {
        let message = sub.next_on("kite/gw/thermo", |_| true).await;
        let points = &message["points"];
        assert_eq!(points["temperature"]["value"], 25.0, "{message}");
        assert_eq!(points["temperature"]["unit"], "degC");
        assert_eq!(points["humidity"]["value"], 50.55);
        assert_eq!(points["humidity"]["unit"], "%");
        assert_eq!(points["rssi"]["value"], -61);
        assert_eq!(points["rssi"]["unit"], "dBm");
        assert_eq!(points["rssi"]["quality"], "good");
        packets.push(points["packet_id"]["value"].as_u64().unwrap());
    }
    assert_eq!(
        packets,
        [1, 2, 3],
        "one message per advertisement, never twice"
    );

    bluez
        .appear("hci0", RUUVI, Some("Ruuvi 884F"), &ruuvi())
        .await;
    let dock = sub.next_on("kite/gw/dock", |_| true).await;
    let names: Vec<&String> = dock["points"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["acceleration_z", "rssi", "temperature"], "{dock}");
    assert_eq!(dock["points"]["temperature"]["value"], 24.3);
    assert_eq!(dock["points"]["acceleration_z"]["unit"], "g");

    // A payload that fails authentication is counted, never decoded.
    bluez.appear("hci0", LOCKED, None, &sealed()).await;
    let status = kite
        .api_until("/status", "the sealed payload is counted", |s| {
            s["devices"]["locked"]["errors"] == 1
        })
        .await;
    assert!(
        status["ble"]["decode_errors"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert!(
        status["devices"]["locked"]["last_error"]
            .as_str()
            .unwrap()
            .contains("authentication"),
        "{status}"
    );

    // A device nobody configured is reported, with what Kite recognised.
    bluez
        .appear("hci0", STRANGER, Some("Ruuvi 0004"), &ruuvi())
        .await;
    let found = sub.next_on("kite/gw/ble/discovered", |_| true).await;
    assert_eq!(found["address"], STRANGER, "{found}");
    assert_eq!(found["name"], "Ruuvi 0004");
    assert_eq!(found["rssi"], -70);
    assert_eq!(found["manufacturer_ids"], serde_json::json!([0x0499]));
    assert_eq!(found["service_uuids"], serde_json::json!([]));
    assert_eq!(found["decoder"], "ruuvi");

    let status = kite.api("/status").await;
    assert!(status["devices"]["thermo"]["last_seen"].as_i64().unwrap() > 0);
    assert_eq!(status["devices"]["thermo"]["state"], "polling");
    assert_eq!(status["ble"]["adapter"], "hci0");
    assert!(
        status["ble"]["advertisements"].as_u64().unwrap() >= 6,
        "{status}"
    );
    // The locked sensor sent nothing.
    assert_eq!(status["devices"]["locked"]["reads"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_sensor_goes_stale_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let bluez = Bluez::start(dir.path()).await;
    bluez.add_adapter("hci0").await;
    let broker = Mosquitto::start(dir.path(), false).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw/#", "ble-stale", false).await;
    let devices = device("thermo", THERMO, "bthome", "stale_after = \"2s\"");
    let kite = start(
        dir.path(),
        &bluez,
        &config(dir.path(), broker.port, "", &devices),
    );
    scanning(&kite).await;

    bluez.appear("hci0", THERMO, None, &bthome(7)).await;
    sub.next_on("kite/gw/thermo", |m| {
        m["points"]["packet_id"]["quality"] == "good"
    })
    .await;
    let stale = sub
        .next_on("kite/gw/thermo", |m| {
            m["points"]["rssi"]["quality"] == "stale"
        })
        .await;
    for (name, point) in stale["points"].as_object().unwrap() {
        assert_eq!(point["quality"], "stale", "{name}: {stale}");
        assert_eq!(point["error"], "not heard for 2s", "{name}: {stale}");
    }
    assert_eq!(stale["points"]["temperature"]["value"], 25.0);
    kite.api_until("/status", "thermo is stale", |s| {
        s["devices"]["thermo"]["state"] == "stale"
    })
    .await;

    bluez.advertise("hci0", THERMO, &bthome(8)).await;
    let back = sub
        .next_on("kite/gw/thermo", |m| m["points"]["packet_id"]["value"] == 8)
        .await;
    assert_eq!(back["points"]["temperature"]["quality"], "good", "{back}");
    kite.api_until("/status", "thermo is heard again", |s| {
        s["devices"]["thermo"]["state"] == "polling"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scanning_heals_after_silence_power_loss_and_a_vanished_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let bluez = Bluez::start(dir.path()).await;
    bluez.add_adapter("hci0").await;
    let broker = Mosquitto::start(dir.path(), false).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw/#", "ble-heal", false).await;
    let devices = device("thermo", THERMO, "bthome", "");
    let kite = start(
        dir.path(),
        &bluez,
        &config(dir.path(), broker.port, "restart_after = \"5s\"", &devices),
    );
    scanning(&kite).await;

    // Nothing heard for restart_after: discovery is started again.
    kite.api_until("/status", "discovery restarted", |s| {
        s["ble"]["restarts"].as_u64() >= Some(1)
    })
    .await;
    assert!(bluez.start_discovery_calls("hci0").await >= 2);

    // Powered off: powered on again, discovery restarted.
    bluez.set_powered("hci0", false).await;
    let calls = bluez.start_discovery_calls("hci0").await;
    wait_for(|| async { bluez.start_discovery_calls("hci0").await > calls }).await;
    assert!(bluez.discovering("hci0").await);

    // The adapter goes away and comes back: no daemon restart needed.
    bluez.remove_adapter("hci0").await;
    kite.api_until("/status", "the adapter is missed", |s| {
        s["ble"]["state"] == "no adapter"
    })
    .await;
    bluez.add_adapter("hci0").await;
    scanning(&kite).await;
    assert!(bluez.discovering("hci0").await);
    bluez.appear("hci0", THERMO, None, &bthome(9)).await;
    sub.next_on("kite/gw/thermo", |m| m["points"]["packet_id"]["value"] == 9)
        .await;
}

/// Polls an asynchronous condition until it holds, within [`PATIENCE`].
async fn wait_for<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "condition not met");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

const PROBE: &str = "3C:2E:F5:00:00:05";
const METER: &str = "3C:2E:F5:00:00:06";

fn characteristic(uuid: &str, value: &[u8], flag: &str) -> Characteristic {
    Characteristic {
        uuid: uuid.into(),
        value: value.to_vec(),
        flags: vec![flag.into()],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gatt_characteristics_are_read_on_an_interval_or_notified_one_connection_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let bluez = Bluez::start(dir.path()).await;
    bluez.add_adapter("hci0").await;
    let broker = Mosquitto::start(dir.path(), false).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw/probe", "ble-gatt", false).await;
    let mut meter =
        Subscriber::connect(broker.port, "kite/gw/meter", "ble-gatt-meter", false).await;
    let quiet = Advert {
        rssi: -50,
        ..Default::default()
    };
    bluez.appear("hci0", PROBE, Some("probe"), &quiet).await;
    bluez.appear("hci0", METER, Some("meter"), &quiet).await;
    let temperature = "00002a6e-0000-1000-8000-00805f9b34fb";
    let humidity = "00002a6f-0000-1000-8000-00805f9b34fb";
    bluez
        .gatt_service(
            "hci0",
            PROBE,
            "0000181a-0000-1000-8000-00805f9b34fb",
            &[
                characteristic(temperature, &[0x2c, 0x09], "read"),
                characteristic(humidity, &[0, 0], "notify"),
            ],
        )
        .await;
    let level = "6e400003-b5a3-f393-e0a9-e50e24dcca9e";
    bluez
        .gatt_service(
            "hci0",
            METER,
            "6e400001-b5a3-f393-e0a9-e50e24dcca9e",
            &[characteristic(level, &[42], "read")],
        )
        .await;
    // The meter's radio fails the first attempt.
    bluez.fail_connects("hci0", METER, 1).await;
    let devices = [
        format!(
            "[[devices]]\nname = \"probe\"\nprotocol = \"ble\"\naddress = \"{PROBE}\"\ngatt = [\n  \
             {{ service = \"181a\", characteristic = \"2a6e\", name = \"temperature\", type = \"i16\", scale = 0.01, unit = \"degC\", interval = \"1s\" }},\n  \
             {{ service = \"181a\", characteristic = \"2a6f\", name = \"humidity\", type = \"u16\", scale = 0.01, unit = \"%\", notify = true }},\n]\n"
        ),
        format!(
            "[[devices]]\nname = \"meter\"\nprotocol = \"ble\"\naddress = \"{METER}\"\ngatt = [\n  \
             {{ service = \"6e400001-b5a3-f393-e0a9-e50e24dcca9e\", characteristic = \"{level}\", name = \"level\", type = \"u8\", interval = \"1s\" }},\n]\n"
        ),
    ]
    .concat();
    let kite = start(
        dir.path(),
        &bluez,
        &config(dir.path(), broker.port, "", &devices),
    );

    let probe = sub
        .next_on("kite/gw/probe", |m| m["points"]["temperature"].is_object())
        .await;
    assert_eq!(probe["points"]["temperature"]["value"], 23.48, "{probe}");
    assert_eq!(probe["points"]["temperature"]["unit"], "degC");

    // Notifications come as they are sent, on a connection kept open.
    wait_for(|| async { bluez.notifying("hci0", PROBE, humidity).await }).await;
    bluez
        .set_value("hci0", PROBE, humidity, &[0xbf, 0x13])
        .await;
    let notified = sub
        .next_on("kite/gw/probe", |m| m["points"]["humidity"].is_object())
        .await;
    assert_eq!(notified["points"]["humidity"]["value"], 50.55, "{notified}");

    // A dropped connection is made again and notifications resume.
    bluez.drop_connection("hci0", PROBE).await;
    wait_for(|| async { bluez.notifying("hci0", PROBE, humidity).await }).await;
    bluez
        .set_value("hci0", PROBE, humidity, &[0x10, 0x27])
        .await;
    sub.next_on("kite/gw/probe", |m| {
        m["points"]["humidity"]["value"] == 100.0
    })
    .await;

    // The meter's failed attempt is a bad reading with the reason; it is
    // tried again, read, and let go between reads.
    let failed = meter
        .next_on("kite/gw/meter", |m| {
            m["points"]["level"]["quality"] == "bad"
        })
        .await;
    assert!(
        failed["points"]["level"]["error"]
            .as_str()
            .unwrap()
            .contains("org.bluez.Error.Failed"),
        "{failed}"
    );
    let read = meter
        .next_on("kite/gw/meter", |m| {
            m["points"]["level"]["quality"] == "good"
        })
        .await;
    assert_eq!(read["points"]["level"]["value"], 42);
    wait_for(|| async { bluez.read_calls("hci0", METER, level).await >= 2 }).await;
    wait_for(|| async { !bluez.connected("hci0", METER).await }).await;
    let status = kite
        .api_until("/status", "the meter answered", |s| {
            s["devices"]["meter"]["state"] == "polling"
        })
        .await;
    assert!(
        status["devices"]["meter"]["errors"].as_u64().unwrap() >= 1,
        "{status}"
    );

    assert_eq!(
        bluez.max_connects_in_flight("hci0").await,
        1,
        "one connection attempt at a time per adapter"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn passive_scanning_listens_through_an_advertisement_monitor() {
    let dir = tempfile::tempdir().unwrap();
    let bluez = Bluez::start(dir.path()).await;
    bluez.add_adapter("hci0").await;
    bluez.offer_monitors("hci0").await;
    let broker = Mosquitto::start(dir.path(), false).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw/#", "ble-passive", false).await;
    let devices = [
        device("thermo", THERMO, "bthome", ""),
        device("dock", RUUVI, "ruuvi", ""),
    ]
    .concat();
    let kite = start(
        dir.path(),
        &bluez,
        &config(dir.path(), broker.port, "", &devices),
    );
    scanning(&kite).await;

    let mut monitors = Vec::new();
    while monitors.is_empty() {
        monitors = bluez.monitors("hci0").await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (kind, mut patterns) = monitors.remove(0);
    assert_eq!(kind, "or_patterns");
    patterns.sort();
    assert_eq!(
        patterns,
        [
            (0, 0x16, vec![0xd2, 0xfc]),
            (0, 0xff, vec![0x99, 0x04, 0x05])
        ]
    );
    assert_eq!(
        bluez.start_discovery_calls("hci0").await,
        0,
        "no discovery (active scanning) in passive mode"
    );

    bluez.appear("hci0", THERMO, None, &bthome(4)).await;
    bluez.monitor_found("hci0", THERMO).await;
    bluez.advertise("hci0", THERMO, &bthome(5)).await;
    let mut packets = Vec::new();
    while packets.last() != Some(&5) {
        let message = sub.next_on("kite/gw/thermo", |_| true).await;
        packets.push(message["points"]["packet_id"]["value"].as_u64().unwrap());
    }
    assert_eq!(packets, [4, 5]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_codec_plugin_decodes_a_vendor_advertisement() {
    let examples = crate::plugin_builds::examples();
    let dir = tempfile::tempdir().unwrap();
    let bluez = Bluez::start(dir.path()).await;
    bluez.add_adapter("hci0").await;
    let broker = Mosquitto::start(dir.path(), false).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw/#", "ble-codec", false).await;
    let devices = device(
        "vendor",
        STRANGER,
        "codec",
        &format!(
            "codec = \"{}\"\ncodec_config = {{ company = 0x0A0B }}\npoints = [\"temperature\", \"humidity\"]\n",
            examples.join("kite_example_ble_codec.wasm").display()
        ),
    );
    let kite = start(
        dir.path(),
        &bluez,
        &config(dir.path(), broker.port, "", &devices),
    );
    scanning(&kite).await;

    let reading = |data: Vec<u8>| Advert {
        rssi: -66,
        manufacturer: vec![(0x0A0B, data)],
        ..Default::default()
    };
    bluez
        .appear("hci0", STRANGER, None, &reading(vec![0x2c, 0xf6, 41, 90]))
        .await;
    // Too short for the vendor's layout: counted, not sent.
    bluez
        .advertise("hci0", STRANGER, &reading(vec![0x01]))
        .await;
    bluez
        .advertise("hci0", STRANGER, &reading(vec![0x10, 0x27, 55, 90]))
        .await;
    let first = sub.next_on("kite/gw/vendor", |_| true).await;
    assert_eq!(first["points"]["temperature"]["value"], -25.16, "{first}");
    assert_eq!(first["points"]["humidity"]["value"], 41);
    assert!(
        first["points"].get("battery").is_none(),
        "not kept: {first}"
    );
    let second = sub.next_on("kite/gw/vendor", |_| true).await;
    assert_eq!(second["points"]["temperature"]["value"], 100.0, "{second}");
    let status = kite
        .api_until("/status", "the short advertisement is counted", |s| {
            s["devices"]["vendor"]["errors"] == 1
        })
        .await;
    assert!(
        status["devices"]["vendor"]["last_error"]
            .as_str()
            .unwrap()
            .contains("4 needed"),
        "{status}"
    );
}
