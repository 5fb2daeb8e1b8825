//! Reload without loss: `kite reload` and SIGHUP read the config again and
//! apply the difference while data flows; a config with problems is refused
//! and the running one stays.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::plugin_builds::examples;
use crate::support::*;

fn device(name: &str, port: u16, point: &str) -> String {
    format!(
        "[[devices]]\nname = \"{name}\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"100ms\"\ntimeout = \"1s\"\n\
         [[devices.points]]\nname = \"{point}\"\naddress = 0\n\n"
    )
}

fn reads(status: &Value, device: &str) -> u64 {
    status["devices"][device]["reads"]
        .as_u64()
        .unwrap_or_else(|| panic!("no device {device} in {status}"))
}

/// Telemetry seqs read from `sub` until `stop` says so.
async fn collect_seqs(
    sub: &mut Subscriber,
    seqs: &mut BTreeSet<u64>,
    mut stop: impl FnMut(&str, &Value) -> bool,
) {
    loop {
        let (topic, message) = sub.next_message().await;
        if let Some(seq) = message["seq"].as_u64() {
            seqs.insert(seq);
        }
        if stop(&topic, &message) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_devices_and_uplink_changes_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let first_broker = Mosquitto::start(dir.path(), false).await;
    let second_broker = Mosquitto::start(dir.path(), false).await;
    let (_keep, keep_port) = modbus_device(json!({"holding": {"0": [11]}})).await;
    let (_gone, gone_port) = modbus_device(json!({"holding": {"0": [22]}})).await;
    let (_new, new_port) = modbus_device(json!({"holding": {"0": [33]}})).await;
    let mut first = Subscriber::connect(first_broker.port, "kite/#", "reload-a", false).await;
    let mut second = Subscriber::connect(second_broker.port, "kite/#", "reload-b", false).await;
    let config = kite_config(
        dir.path(),
        "gw-reload",
        first_broker.port,
        &(device("keep", keep_port, "level") + &device("gone", gone_port, "level")),
    );
    let kite = Kite::start(kite_bin(), dir.path(), &config);
    // Every seq any subscriber sees is kept, to prove at the end that none is missing.
    let mut seqs = BTreeSet::new();
    // Some history first, so the switch happens with rows in flight.
    let (mut keep_seen, mut gone_seen) = (false, false);
    collect_seqs(&mut first, &mut seqs, |topic, m| {
        keep_seen |= topic == "kite/gw-reload/keep";
        gone_seen |= topic == "kite/gw-reload/gone";
        keep_seen && gone_seen && m["seq"].as_u64().is_some_and(|seq| seq >= 20)
    })
    .await;
    let keep_reads = reads(&kite.api("/status").await, "keep");

    // Same API address and gateway; one device gone, one new, another broker.
    let reloaded = config
        .replace(
            &format!("mqtt://127.0.0.1:{}", first_broker.port),
            &format!("mqtt://127.0.0.1:{}", second_broker.port),
        )
        .replace(
            &device("gone", gone_port, "level"),
            &device("new", new_port, "level"),
        );
    assert_ne!(reloaded, config);
    std::fs::write(Kite::config_path(dir.path()), &reloaded).unwrap();
    let output = kite_reload(kite_bin(), dir.path());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for change in [
        "device gone: stopped",
        "device new: started",
        &format!("uplink: reconnecting to 127.0.0.1:{}", second_broker.port),
    ] {
        assert!(text.contains(change), "{change:?} not in:\n{text}");
    }
    assert!(!text.contains("device keep"), "{text}");

    collect_seqs(&mut second, &mut seqs, |topic, m| {
        topic == "kite/gw-reload/new" && m["points"]["level"]["value"] == 33
    })
    .await;
    collect_seqs(&mut second, &mut seqs, |topic, _| {
        topic == "kite/gw-reload/keep"
    })
    .await;
    let after = kite.api("/status").await;
    assert!(after["devices"].get("gone").is_none(), "{after}");
    assert_eq!(after["devices"]["new"]["state"], "polling", "{after}");
    // The unchanged device's poller was not restarted: its counters went on.
    assert!(reads(&after, "keep") > keep_reads, "{after}");

    // Nothing committed before, during or after the switch is missing: what
    // the first broker acknowledged reached its subscriber (a marker
    // published after the switch comes after all of it), and the rest went
    // to the second broker.
    // The highest seq the buffer ever gave a row (it survives the row's delivery).
    let last = kite.buffer_number("SELECT seq FROM sqlite_sequence WHERE name = 'messages'") as u64;
    first.publish("kite/marker", "end").await;
    collect_seqs(&mut first, &mut seqs, |topic, _| topic == "kite/marker").await;
    collect_seqs(&mut second, &mut seqs, |_, m| {
        m["seq"].as_u64().is_some_and(|seq| seq >= last)
    })
    .await;
    let missing: Vec<u64> = (1..=last).filter(|seq| !seqs.contains(seq)).collect();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    assert!(
        kite.buffer().dropped == 0,
        "the buffer dropped rows across the reload"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_with_problems_is_refused_and_the_running_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_plc, port) = modbus_device(json!({"holding": {"0": [5]}})).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-bad/#", "reload-bad", false).await;
    let config = kite_config(
        dir.path(),
        "gw-bad",
        broker.port,
        &device("plc", port, "level"),
    );
    let mut kite = Kite::start(kite_bin(), dir.path(), &config);
    sub.next_on("kite/gw-bad/plc", |_| true).await;

    // A device on a bus nobody declared, and a point with no address.
    let broken = config.clone()
        + "[[devices]]\nname = \"meter\"\nprotocol = \"modbus-rtu\"\nbus = \"rs485-9\"\nunit_id = 3\n";
    std::fs::write(Kite::config_path(dir.path()), &broken).unwrap();

    let output = kite_reload(kite_bin(), dir.path());
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{errors}");
    assert!(errors.contains("rs485-9"), "{errors}");
    assert!(errors.contains("not reloaded"), "{errors}");

    // The daemon refuses it too, naming the line.
    let (code, body) = kite.http("POST", "/reload", None, "").await;
    assert_eq!(code, 422, "{body}");
    let refusal: Value = serde_json::from_str(&body).unwrap();
    let problems = refusal["error"].as_str().unwrap();
    let line = broken
        .lines()
        .position(|l| l.starts_with("bus = \"rs485-9\""))
        .unwrap()
        + 1;
    assert!(
        problems.contains(&format!("kite.toml:{line}:")) && problems.contains("rs485-9"),
        "line {line} not named in:\n{problems}"
    );

    // The running config stays: the same device, still polled.
    let before = reads(&kite.api("/status").await, "plc");
    while reads(&kite.api("/status").await, "plc") <= before {
        sub.next_on("kite/gw-bad/plc", |_| true).await;
    }
    assert!(kite.log().contains("new config REFUSED"), "{}", kite.log());

    // Fixed and sent by SIGHUP, as `systemctl reload` without the API would:
    // the changed device restarts with its new point.
    let fixed = config.replace("name = \"level\"", "name = \"height\"");
    std::fs::write(Kite::config_path(dir.path()), &fixed).unwrap();
    kite.hangup();
    sub.next_on("kite/gw-bad/plc", |m| m["points"]["height"]["value"] == 5)
        .await;
    assert!(kite.log().contains("config reloaded"), "{}", kite.log());
    assert!(kite.terminate().await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_starts_stops_and_restarts_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let examples = examples();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_boiler, port) = modbus_device(json!({"holding": {"0": [950]}})).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-replug/#", "replug", false).await;
    let boiler = format!(
        "[[devices]]\nname = \"boiler-1\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"100ms\"\n\
         [[devices.points]]\nname = \"temperature\"\naddress = 0\ntype = \"i16\"\nscale = 0.1\nunit = \"degC\"\n\n"
    );
    let convert = |to: &str| {
        format!(
            "[[plugins]]\nname = \"fahrenheit\"\npath = \"{}\"\ninputs = [\"*/temperature\"]\ntime_limit = \"1s\"\nconfig = {{ from = \"degC\", to = \"{to}\" }}\n\n",
            examples.join("kite_example_convert.wasm").display()
        )
    };
    let overheat = format!(
        "[[plugins]]\nname = \"overheat\"\npath = \"{}\"\ninputs = [\"boiler-*/temperature\"]\ntime_limit = \"1s\"\nconfig = {{ threshold = 90.0, severity = \"critical\" }}\n\n",
        examples.join("kite_example_threshold.wasm").display()
    );
    let config = kite_config(
        dir.path(),
        "gw-replug",
        broker.port,
        &(boiler.clone() + &convert("degF")),
    );
    let kite = Kite::start(kite_bin(), dir.path(), &config);
    sub.next_on("kite/gw-replug/fahrenheit", |_| true).await;

    // One plug-in with new settings, one new.
    let reconfigured = config.replace(&convert("degF"), &(convert("K") + &overheat));
    std::fs::write(Kite::config_path(dir.path()), &reconfigured).unwrap();
    let output = kite_reload(kite_bin(), dir.path());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("plug-in fahrenheit: restarted"), "{text}");
    assert!(text.contains("plug-in overheat: started"), "{text}");
    assert!(
        !text.contains("boiler-1"),
        "the device was not touched: {text}"
    );
    let event = sub.next_on("kite/gw-replug/events", |_| true).await;
    assert_eq!(event["plugin"], "overheat", "{event}");
    sub.next_on("kite/gw-replug/fahrenheit", |m| {
        m["points"]["boiler-1.temperature"]["unit"] == "K"
    })
    .await;

    // And gone again.
    std::fs::write(Kite::config_path(dir.path()), &config).unwrap();
    let output = kite_reload(kite_bin(), dir.path());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("plug-in overheat: stopped"), "{text}");
    let plugins = kite.api("/status").await["plugins"].clone();
    assert!(plugins.get("overheat").is_none(), "{plugins}");
    assert!(plugins["fahrenheit"].is_object(), "{plugins}");
    sub.next_on("kite/gw-replug/fahrenheit", |m| {
        m["points"]["boiler-1.temperature"]["unit"] == "degF"
    })
    .await;
}
