//! Zigbee through a Z-Stack coordinator simulated behind a socat serial
//! pair (its frames built and parsed by zigpy-znp): forming the network,
//! devices joining and interviewed, reports, writes, network commands, a
//! restart that resumes the same network, and a stick that babbles, resets
//! or hangs.

use std::path::Path;

use serde_json::{json, Value};

use crate::support::znp::{SimDevice, ZnpStick};
use crate::support::*;

const WEATHER: u64 = 0x0015_8d00_0112_3456;
const PLUG: u64 = 0x0017_8801_0a0b_0c0d;
const STRANGER: u64 = 0x0012_4b00_2233_4455;

fn weather() -> SimDevice {
    SimDevice {
        ieee: WEATHER,
        nwk: 0x1a01,
        manufacturer: "LUMI".into(),
        model: "lumi.weather".into(),
        endpoint: 1,
        device_id: 0x0302,
        in_clusters: vec![0x0000, 0x0001, 0x0402, 0x0403, 0x0405],
        out_clusters: vec![],
    }
}

fn plug() -> SimDevice {
    SimDevice {
        ieee: PLUG,
        nwk: 0x2b02,
        manufacturer: "innr".into(),
        model: "SP 120".into(),
        endpoint: 1,
        device_id: 0x010a,
        in_clusters: vec![0x0000, 0x0006, 0x0008],
        out_clusters: vec![],
    }
}

fn stranger() -> SimDevice {
    SimDevice {
        ieee: STRANGER,
        nwk: 0x3c03,
        manufacturer: "Philips".into(),
        model: "SML001".into(),
        endpoint: 2,
        device_id: 0x0107,
        in_clusters: vec![0x0000, 0x0406],
        out_clusters: vec![],
    }
}

fn config(dir: &Path, mqtt_port: u16, stick: &ZnpStick) -> String {
    let devices = format!(
        "[zigbee]\nport = \"{}\"\nchannel = 20\n\n\
         [[devices]]\nname = \"weather\"\nprotocol = \"zigbee\"\naddress = \"{}\"\n\n\
         [[devices]]\nname = \"plug\"\nprotocol = \"zigbee\"\naddress = \"{}\"\n\
         [[devices.points]]\nname = \"on\"\nwritable = true\n",
        stick.port().display(),
        ieee(WEATHER),
        ieee(PLUG),
    );
    kite_config(dir, "gw", mqtt_port, &devices)
}

fn ieee(ieee: u64) -> String {
    format!("{ieee:#018x}")
}

async fn running(kite: &Kite) -> Value {
    kite.api_until("/status", "the Zigbee network runs", |s| {
        s["zigbee"]["state"] == "running"
    })
    .await
}

/// Opens joining through the cloud's command, as an integrator would.
async fn permit_join(sub: &mut Subscriber, id: u64) {
    sub.publish(
        "kite/gw/zigbee/permit_join",
        &json!({"id": id, "seconds": 120}).to_string(),
    )
    .await;
    let result = sub
        .next_on("kite/gw/zigbee/permit_join/result", |r| r["id"] == id)
        .await;
    assert_eq!(result, json!({"id": id, "ok": true, "error": null}));
}

async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_join_report_take_writes_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let stick = ZnpStick::start(dir.path()).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw/#", "zigbee-test", false).await;
    let mut kite = Kite::start(
        kite_bin(),
        dir.path(),
        &config(dir.path(), broker.port, &stick),
    );
    let status = running(&kite).await;

    // Formed on the channel asked for, with PAN ids and a key chosen now.
    let (channel, pan_id, _, key) = stick.network().await.expect("a network formed");
    assert_eq!(channel, 20);
    assert_eq!(status["zigbee"]["channel"], 20);
    assert_eq!(status["zigbee"]["pan_id"], format!("{pan_id:#06x}"));
    let key_file = dir.path().join("data/zigbee-network.key");
    let written = std::fs::read_to_string(&key_file).unwrap();
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(written.trim(), hex, "the stick has the key Kite created");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !stick.join(&weather()).await,
        "joining is closed by default"
    );

    permit_join(&mut sub, 1).await;
    assert!(stick.permit_join().await > 0);
    assert!(stick.join(&weather()).await);
    kite.api_until("/status", "the weather sensor is interviewed", |s| {
        s["zigbee"]["devices"] == 1 && s["zigbee"]["joined_since_start"] == 1
    })
    .await;
    wait_for("the temperature is bound and configured", || async {
        stick.requests("ZDO.BindReq").await >= 3
    })
    .await;

    stick
        .report(WEATHER, 0x0402, &[(0x0000, 0x29, json!(2150))], 120)
        .await;
    let report = sub
        .next_on("kite/gw/weather", |m| {
            m["points"]["temperature"].is_object()
        })
        .await;
    assert_eq!(report["points"]["temperature"]["value"], 21.5, "{report}");
    assert_eq!(report["points"]["temperature"]["unit"], "degC");
    assert_eq!(report["points"]["linkquality"]["value"], 120);
    stick
        .report(WEATHER, 0x0405, &[(0x0000, 0x21, json!(4567))], 118)
        .await;
    let humidity = sub
        .next_on("kite/gw/weather", |m| m["points"]["humidity"].is_object())
        .await;
    assert_eq!(humidity["points"]["humidity"]["value"], 45.67, "{humidity}");

    // A device nobody configured is published under its address.
    assert!(stick.join(&stranger()).await);
    wait_for("the stranger is interviewed", || async {
        stick.requests("ZDO.SimpleDescReq").await >= 2
    })
    .await;
    stick
        .report(STRANGER, 0x0406, &[(0x0000, 0x18, json!(1))], 90)
        .await;
    let topic = format!("kite/gw/zigbee-{STRANGER:016x}");
    let seen = sub.next_on(&topic, |_| true).await;
    assert_eq!(seen["points"]["occupancy"]["value"], true, "{seen}");

    // Writes go to writable points only, and the plug answers with its state.
    assert!(stick.join(&plug()).await);
    kite.api_until("/status", "the plug is interviewed", |s| {
        s["zigbee"]["devices"] == 3
    })
    .await;
    wait_for("the plug is bound", || async {
        stick.requests("ZDO.BindReq").await >= 6
    })
    .await;
    sub.publish(
        "kite/gw/plug/set",
        &json!({"id": "w1", "point": "on", "value": true}).to_string(),
    )
    .await;
    let result = sub
        .next_on("kite/gw/plug/set/result", |r| r["id"] == "w1")
        .await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(stick.on_off(PLUG).await, Some(true));
    sub.next_on("kite/gw/plug", |m| m["points"]["on"]["value"] == true)
        .await;
    sub.publish(
        "kite/gw/plug/set",
        &json!({"id": "w2", "point": "on", "value": "toggle"}).to_string(),
    )
    .await;
    let result = sub
        .next_on("kite/gw/plug/set/result", |r| r["id"] == "w2")
        .await;
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(stick.on_off(PLUG).await, Some(false));
    sub.publish(
        "kite/gw/plug/set",
        &json!({"id": "w3", "point": "level", "value": 100}).to_string(),
    )
    .await;
    let refused = sub
        .next_on("kite/gw/plug/set/result", |r| r["id"] == "w3")
        .await;
    assert_eq!(refused["ok"], false);
    assert!(
        refused["error"].as_str().unwrap().contains("not writable"),
        "{refused}"
    );
    assert_eq!(stick.level(PLUG).await, Some(254), "untouched");

    // The cloud removes the stranger from the network.
    sub.publish(
        "kite/gw/zigbee/remove",
        &json!({"id": "r1", "address": ieee(STRANGER)}).to_string(),
    )
    .await;
    let removed = sub
        .next_on("kite/gw/zigbee/remove/result", |r| r["id"] == "r1")
        .await;
    assert_eq!(removed, json!({"id": "r1", "ok": true, "error": null}));
    assert!(!stick.devices().await.contains(&STRANGER));
    let status = kite
        .api_until("/status", "two devices remain", |s| {
            s["zigbee"]["devices"] == 2
        })
        .await;
    assert!(status["devices"]["weather"]["last_seen"].as_i64().unwrap() > 0);
    assert_eq!(status["devices"]["weather"]["linkquality"], 118);

    // A restart resumes the same network with the same devices: no new
    // formation, no new interview.
    let formations = stick.requests("APP_CNF.BDBStartCommissioning").await;
    let interviews = stick.requests("ZDO.NodeDescReq").await;
    kite.terminate().await;
    kite.restart();
    running(&kite).await;
    assert_eq!(
        stick.requests("APP_CNF.BDBStartCommissioning").await,
        formations
    );
    assert_eq!(stick.requests("ZDO.NodeDescReq").await, interviews);
    assert!(stick.requests("ZDO.StartupFromApp").await >= 1);
    stick
        .report(WEATHER, 0x0402, &[(0x0000, 0x29, json!(-512))], 100)
        .await;
    sub.next_on("kite/gw/weather", |m| {
        m["points"]["temperature"]["value"] == -5.12
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stick_that_babbles_resets_or_hangs_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let stick = ZnpStick::start(dir.path()).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw/#", "zigbee-faults", false).await;
    let kite = Kite::start(
        kite_bin(),
        dir.path(),
        &config(dir.path(), broker.port, &stick),
    );
    running(&kite).await;
    permit_join(&mut sub, 1).await;
    assert!(stick.join(&weather()).await);
    kite.api_until("/status", "the sensor is known", |s| {
        s["zigbee"]["devices"] == 1
    })
    .await;

    // Noise on the line is dropped and counted; frames after it still count.
    stick
        .garbage(&[0x00, 0xfe, 0x03, 0x44, 0x81, 0x99, 0x13, 0x37])
        .await;
    stick
        .report(WEATHER, 0x0402, &[(0x0000, 0x29, json!(1000))], 100)
        .await;
    sub.next_on("kite/gw/weather", |m| {
        m["points"]["temperature"]["value"] == 10.0
    })
    .await;
    let status = kite
        .api_until("/status", "the noise is counted", |s| {
            s["zigbee"]["discarded_bytes"].as_u64() > Some(0)
        })
        .await;
    assert_eq!(status["zigbee"]["state"], "running");

    // The stick resets by itself: the network is started again.
    stick.reset().await;
    let status = kite
        .api_until("/status", "the reset is noticed", |s| {
            s["zigbee"]["coordinator_resets"].as_u64() >= Some(1)
                && s["zigbee"]["state"] == "running"
        })
        .await;
    assert_eq!(status["zigbee"]["devices"], 1);
    stick
        .report(WEATHER, 0x0402, &[(0x0000, 0x29, json!(1100))], 100)
        .await;
    sub.next_on("kite/gw/weather", |m| {
        m["points"]["temperature"]["value"] == 11.0
    })
    .await;

    // The stick hangs: Kite says so, and takes it up again once it answers.
    stick.set_silent(true).await;
    kite.api_until("/status", "the hung stick is offline", |s| {
        s["zigbee"]["state"] == "offline"
    })
    .await;
    sub.publish(
        "kite/gw/zigbee/permit_join",
        &json!({"id": 2, "seconds": 10}).to_string(),
    )
    .await;
    let refused = sub
        .next_on("kite/gw/zigbee/permit_join/result", |r| r["id"] == 2)
        .await;
    assert_eq!(refused["ok"], false, "{refused}");
    stick.set_silent(false).await;
    running(&kite).await;
    stick
        .report(WEATHER, 0x0402, &[(0x0000, 0x29, json!(1200))], 100)
        .await;
    sub.next_on("kite/gw/weather", |m| {
        m["points"]["temperature"]["value"] == 12.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn door_sensors_and_manufacturer_clusters_through_a_codec() {
    let examples = crate::plugin_builds::examples();
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let stick = ZnpStick::start(dir.path()).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw/#", "zigbee-codec", false).await;
    const DOOR: u64 = 0x0015_8d00_0a0b_0c01;
    const TRV: u64 = 0xa4c1_3800_0102_0304;
    let devices = format!(
        "[zigbee]\nport = \"{}\"\n\n\
         [[devices]]\nname = \"door\"\nprotocol = \"zigbee\"\naddress = \"{}\"\n\n\
         [[devices]]\nname = \"radiator\"\nprotocol = \"zigbee\"\naddress = \"{}\"\n\
         codec = \"{}\"\n\
         codec_config = {{ dps = {{ \"2\" = {{ name = \"setpoint\", scale = 0.1, unit = \"degC\" }}, \"3\" = {{ name = \"temperature\", scale = 0.1, unit = \"degC\" }} }} }}\n",
        stick.port().display(),
        ieee(DOOR),
        ieee(TRV),
        examples.join("kite_example_tuya_codec.wasm").display()
    );
    let kite = Kite::start(
        kite_bin(),
        dir.path(),
        &kite_config(dir.path(), "gw", broker.port, &devices),
    );
    running(&kite).await;
    permit_join(&mut sub, 1).await;
    let door = SimDevice {
        ieee: DOOR,
        nwk: 0x4d01,
        manufacturer: "LUMI".into(),
        model: "lumi.sensor_magnet.aq2".into(),
        endpoint: 1,
        device_id: 0x0402,
        in_clusters: vec![0x0000, 0x0500],
        out_clusters: vec![],
    };
    let radiator = SimDevice {
        ieee: TRV,
        nwk: 0x5e02,
        manufacturer: "_TZE200_ckud7u2l".into(),
        model: "TS0601".into(),
        endpoint: 1,
        device_id: 0x0051,
        in_clusters: vec![0x0000, 0xef00],
        out_clusters: vec![],
    };
    assert!(stick.join(&door).await);
    assert!(stick.join(&radiator).await);
    kite.api_until("/status", "both are interviewed", |s| {
        s["zigbee"]["devices"] == 2
    })
    .await;
    wait_for("the radiator is interviewed", || async {
        stick.requests("ZDO.SimpleDescReq").await >= 2
    })
    .await;

    // The door sensor was given the coordinator as its CIE, and enrolled.
    wait_for("the door sensor has its CIE address", || async {
        let cie = stick.attribute(DOOR, 0x0500, 0x0010).await;
        cie.as_u64().is_some_and(|ieee| ieee != 0)
    })
    .await;
    // Its zone state: 1, enrolled.
    wait_for("the door sensor is enrolled", || async {
        stick.attribute(DOOR, 0x0500, 0x0000).await == 1
    })
    .await;

    // An open door: the IAS zone's alarm bit.
    stick.zone_status(DOOR, 0x0001).await;
    let opened = sub.next_on("kite/gw/door", |_| true).await;
    assert_eq!(opened["points"]["contact"]["value"], false, "{opened}");
    assert_eq!(opened["points"]["ias_alarm"]["value"], true);
    stick.zone_status(DOOR, 0x0000).await;
    sub.next_on("kite/gw/door", |m| m["points"]["contact"]["value"] == true)
        .await;

    // Tuya datapoints on cluster 0xEF00: setpoint 21.5, temperature 19.8,
    // and datapoint 4 (a mode enum) nobody named.
    let mut frame = vec![0x09, 0x42, 0x02, 0x00, 0x17];
    frame.extend([0x02, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0xd7]);
    frame.extend([0x03, 0x02, 0x00, 0x04, 0x00, 0x00, 0x00, 0xc6]);
    frame.extend([0x04, 0x04, 0x00, 0x01, 0x01]);
    stick.frame(TRV, 0xef00, &frame, 77).await;
    let report = sub.next_on("kite/gw/radiator", |_| true).await;
    let points = &report["points"];
    assert_eq!(points["setpoint"]["value"], 21.5, "{report}");
    assert_eq!(points["setpoint"]["unit"], "degC");
    assert_eq!(points["temperature"]["value"], 19.8);
    assert_eq!(points["dp4"]["value"], 1);
    assert_eq!(points["linkquality"]["value"], 77);
    // A frame the codec cannot read is counted on the device.
    stick
        .frame(
            TRV,
            0xef00,
            &[0x09, 0x43, 0x02, 0x00, 0x18, 0x02, 0x02, 0x00, 0x09],
            77,
        )
        .await;
    let status = kite
        .api_until("/status", "the bad frame is counted", |s| {
            s["devices"]["radiator"]["errors"] == 1
        })
        .await;
    assert!(
        status["devices"]["radiator"]["last_error"]
            .as_str()
            .unwrap()
            .contains("datapoint 2"),
        "{status}"
    );
}
