//! Values of every type and byte order, read from a pymodbus device and
//! delivered through Mosquitto; writes from the cloud round-trip to it.

use serde_json::{json, Value};

use crate::support::*;

/// Register images written by hand (not by Kite's encoder), with what each
/// point must read as.
const POINTS: &str = r#"
[[devices.points]]
name = "f32_abcd"
address = 0
type = "f32"
unit = "degC"
[[devices.points]]
name = "f32_dcba"
address = 2
type = "f32"
order = "dcba"
[[devices.points]]
name = "f32_badc"
address = 4
type = "f32"
order = "badc"
[[devices.points]]
name = "f32_cdab"
address = 6
type = "f32"
order = "cdab"
[[devices.points]]
name = "u16"
address = 8
type = "u16"
[[devices.points]]
name = "i16"
address = 9
type = "i16"
[[devices.points]]
name = "u32_cdab"
address = 10
type = "u32"
order = "cdab"
[[devices.points]]
name = "i32"
address = 12
type = "i32"
[[devices.points]]
name = "u64"
address = 14
type = "u64"
[[devices.points]]
name = "i64_dcba"
address = 18
type = "i64"
order = "dcba"
[[devices.points]]
name = "f64"
address = 22
type = "f64"
[[devices.points]]
name = "scaled"
address = 26
type = "i16"
scale = 0.1
[[devices.points]]
name = "scaled_offset"
address = 27
type = "u16"
scale = 0.01
offset = -5.0
[[devices.points]]
name = "alarm_bit"
address = 28
type = "bool"
bit = 3
[[devices.points]]
name = "serial"
address = 29
type = "string"
length = 3
[[devices.points]]
name = "pump"
area = "coil"
address = 0
type = "bool"
[[devices.points]]
name = "door"
area = "discrete"
address = 1
type = "bool"
[[devices.points]]
name = "flow"
area = "input"
address = 0
type = "u16"
[[devices.points]]
name = "setpoint"
address = 40
type = "i16"
scale = 0.1
unit = "degC"
writable = true
[[devices.points]]
name = "limit"
address = 42
type = "f32"
order = "cdab"
writable = true
[[devices.points]]
name = "valve"
area = "coil"
address = 2
type = "bool"
writable = true
"#;

fn device_spec() -> Value {
    json!({
        "size": 100,
        "holding": {
            "0": [0x4148, 0x0000],            // 12.5f32 abcd
            "2": [0x0000, 0x4841],            // 12.5f32 dcba
            "4": [0x4841, 0x0000],            // 12.5f32 badc
            "6": [0x0000, 0x4148],            // 12.5f32 cdab
            "8": [0xfffe],                    // 65534
            "9": [0xfffe],                    // -2
            "10": [0x0002, 0x0001],           // 0x00010002 cdab
            "12": [0xfffe, 0x1dc0],           // -123456
            "14": [0, 0x0100, 0, 0],          // 2^40
            "18": [0xfbff, 0xffff, 0xffff, 0xffff], // -5 dcba
            "22": [0xbfd0, 0, 0, 0],          // -0.25f64
            "26": [215],                      // 21.5 after scale 0.1
            "27": [1000],                     // 5.0 after scale 0.01 offset -5
            "28": [0b1000],                   // bit 3 set
            "29": [0x4b49, 0x5445, 0x0000],   // "KITE"
            "40": [650],                      // 65.0
        },
        "coils": {"0": [true]},
        "discrete": {"1": [true]},
        "input": {"0": [77]},
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn values_arrive_decoded_and_writes_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_device, device_port) = modbus_device(device_spec()).await;
    let mut sub = Subscriber::connect(broker.port, "kite/#", "values-test", false).await;
    let devices = format!(
        "[[devices]]\nname = \"plc-1\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{device_port}\"\npoll_interval = \"200ms\"\ntimeout = \"1s\"\nmax_gap = 16\n{POINTS}"
    );
    let _kite = Kite::start(
        kite_bin(),
        dir.path(),
        &kite_config(dir.path(), "gw-values", broker.port, &devices),
    );

    let status = sub.next_on("kite/gw-values/status", |_| true).await;
    assert_eq!(status["state"], "online");

    let message = sub.next_on("kite/gw-values/plc-1", |_| true).await;
    assert_eq!(message["device"], "plc-1");
    assert!(message["ts"].as_u64().unwrap() > 1_700_000_000_000);
    let points = &message["points"];
    let expected = json!({
        "f32_abcd": 12.5, "f32_dcba": 12.5, "f32_badc": 12.5, "f32_cdab": 12.5,
        "u16": 65534, "i16": -2, "u32_cdab": 65538, "i32": -123456,
        "u64": 1u64 << 40, "i64_dcba": -5, "f64": -0.25,
        "scaled": 21.5, "scaled_offset": 5.0, "alarm_bit": true, "serial": "KITE",
        "pump": true, "door": true, "flow": 77, "setpoint": 65.0, "limit": 0.0, "valve": false,
    });
    for (name, value) in expected.as_object().unwrap() {
        assert_eq!(&points[name]["quality"], "good", "{name}: {}", points[name]);
        assert_eq!(&points[name]["value"], value, "{name}");
    }
    assert_eq!(points["f32_abcd"]["unit"], "degC");

    // Writes: each request gets a result, and accepted ones reach the device.
    let writes = [
        (
            json!({"id": "w1", "point": "setpoint", "value": 72.5}),
            true,
        ),
        (json!({"id": "w2", "point": "limit", "value": 3.25}), true),
        (json!({"id": "w3", "point": "valve", "value": true}), true),
        (json!({"id": "w4", "point": "u16", "value": 1}), false), // not writable
        (
            json!({"id": "w5", "point": "setpoint", "value": 4000}),
            false,
        ), // out of range for i16 after scale
        (
            json!({"id": "w6", "point": "setpoint", "value": "hot"}),
            false,
        ),
        (json!({"id": "w7", "point": "nope", "value": 1}), false),
        (json!({"id": "w8", "value": 1}), false), // no point
    ];
    for (request, ok) in &writes {
        sub.publish("kite/gw-values/plc-1/set", &request.to_string())
            .await;
        let id = request["id"].clone();
        let result = sub
            .next_on("kite/gw-values/plc-1/set/result", |r| r["id"] == id)
            .await;
        assert_eq!(result["ok"], *ok, "{request} -> {result}");
        if !ok {
            assert!(
                result["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{result}"
            );
        }
    }
    sub.publish(
        "kite/gw-values/nodevice/set",
        r#"{"id":"w9","point":"x","value":1}"#,
    )
    .await;
    let result = sub
        .next_on("kite/gw-values/nodevice/set/result", |r| r["id"] == "w9")
        .await;
    assert_eq!(result["ok"], false);

    let after = sub
        .next_on("kite/gw-values/plc-1", |m| {
            m["points"]["valve"]["value"] == true
        })
        .await;
    assert_eq!(after["points"]["setpoint"]["value"], 72.5);
    assert_eq!(after["points"]["limit"]["value"], 3.25);
    assert_eq!(
        after["points"]["u16"]["value"], 65534,
        "rejected write must not touch the device"
    );
}
