//! Plug-ins in the running daemon: their events and derived readings travel
//! the buffer and the uplink like any telemetry, and a plug-in that loops
//! forever is disabled while the raw data keeps flowing.

use serde_json::json;

use crate::plugin_builds::{component, examples, module};
use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn plugin_outputs_are_delivered_and_a_runaway_plugin_is_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let examples = examples();
    let spin = dir.path().join("spin.wasm");
    std::fs::write(
        &spin,
        component(
            &module("", "(loop $spin (br $spin)) i32.const 16"),
            "plugin",
        ),
    )
    .unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_device, port) = modbus_device(json!({"size": 10, "holding": {"0": [950]}})).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-plug/#", "plugin-test", false).await;
    let extra = format!(
        r#"[[devices]]
name = "boiler-1"
protocol = "modbus-tcp"
address = "127.0.0.1:{port}"
poll_interval = "100ms"
[[devices.points]]
name = "temperature"
address = 0
type = "i16"
scale = 0.1
unit = "degC"

[[plugins]]
name = "overheat"
path = "{threshold}"
inputs = ["boiler-*/temperature"]
config = {{ threshold = 90.0, severity = "critical" }}

[[plugins]]
name = "fahrenheit"
path = "{convert}"
inputs = ["*/temperature"]
config = {{ from = "degC", to = "degF" }}

[[plugins]]
name = "spin"
path = "{spin}"
inputs = ["*/*"]
time_limit = "5ms"
"#,
        threshold = examples.join("kite_example_threshold.wasm").display(),
        convert = examples.join("kite_example_convert.wasm").display(),
        spin = spin.display(),
    );
    let kite = Kite::start(
        dir.path(),
        &kite_config(dir.path(), "gw-plug", broker.port, &extra),
    );

    let status = sub
        .next_on("kite/gw-plug/status", |s| s["state"] == "online")
        .await;
    assert!(
        status["plugins"]["overheat"].is_object(),
        "plug-ins in the status: {status}"
    );

    let event = sub.next_on("kite/gw-plug/events", |_| true).await;
    assert_eq!(event["plugin"], "overheat");
    assert_eq!(event["severity"], "critical");
    assert_eq!(event["device"], "boiler-1");
    assert_eq!(event["point"], "temperature");
    assert!(
        event["seq"].as_u64().is_some() && event["ts"].as_u64().is_some(),
        "{event}"
    );
    assert!(
        event["message"].as_str().unwrap().contains("above 90"),
        "{event}"
    );

    let derived = sub.next_on("kite/gw-plug/fahrenheit", |_| true).await;
    assert_eq!(
        derived["points"]["boiler-1.temperature"],
        json!({"value": 203.0, "quality": "good", "unit": "degF"})
    );

    wait_until("the runaway plug-in is disabled", || {
        kite.log().contains("plug-in DISABLED")
    })
    .await;
    // Raw readings flow on, before and after.
    let before = sub.next_on("kite/gw-plug/boiler-1", |_| true).await["seq"]
        .as_u64()
        .unwrap();
    let after = sub
        .next_on("kite/gw-plug/boiler-1", |m| {
            m["seq"].as_u64().unwrap() > before + 5
        })
        .await;
    assert_eq!(after["points"]["temperature"]["value"], 95.0);
    // Disabled once, for good: not re-instantiated in a loop.
    let log = kite.log();
    assert_eq!(log.matches("plug-in DISABLED").count(), 1, "{log}");
}
