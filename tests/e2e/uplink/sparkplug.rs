//! Kite as a Sparkplug B edge node, checked by a host application built on
//! pysparkplug (an implementation independent of Kite's): births before
//! data, every value reconstructed through aliases, bad readings as null
//! with their quality, DCMD writes and NCMD rebirths, devices that die and
//! come back, nothing missing across a link cut and a kill -9, and data
//! held while the primary host application is offline.

use serde_json::{json, Value};

use crate::support::sparkplug::metric;
use crate::support::*;

const GROUP: &str = "plant";

fn config(
    dir: &std::path::Path,
    node: &str,
    mqtt_port: u16,
    port: u16,
    host: Option<&str>,
) -> String {
    let devices = format!(
        "[sparkplug]\ngroup_id = \"{GROUP}\"\n{}\n\
         [[devices]]\nname = \"meter\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"100ms\"\ntimeout = \"300ms\"\n\
         [[devices.points]]\nname = \"energy\"\naddress = 0\nunit = \"kWh\"\n\
         [[devices.points]]\nname = \"delta\"\naddress = 1\ntype = \"i16\"\n\
         [[devices.points]]\nname = \"temp\"\naddress = 2\nscale = 0.1\nunit = \"degC\"\n\
         [[devices.points]]\nname = \"setpoint\"\naddress = 3\nwritable = true\n\
         [[devices.points]]\nname = \"missing\"\naddress = 50\n",
        host.map(|h| format!("primary_host_id = \"{h}\"")).unwrap_or_default()
    );
    kite_config(dir, node, mqtt_port, &devices)
        .replace("[mqtt]\n", "[mqtt]\nformat = \"sparkplug\"\n")
}

fn device_spec() -> Value {
    // pymodbus answers reads past its 20 registers with an exception.
    json!({"size": 20, "holding": {"0": [42, 65535, 215, 60]}})
}

fn is(kind: &str, message: &Value) -> bool {
    message["type"] == kind
}

fn value<'a>(message: &'a Value, name: &str) -> &'a Value {
    &metric(message, name).unwrap_or_else(|| panic!("no {name} in {message}"))["value"]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_application_sees_births_before_data_and_every_value_and_can_command() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let spec = device_spec();
    let (device, port) = modbus_device(spec.clone()).await;
    let mut host = SparkplugHost::start(broker.port, GROUP, None).await;
    let _kite = Kite::start(
        kite_bin(),
        dir.path(),
        &config(dir.path(), "gw-spb", broker.port, port, None),
    );

    let nbirth = host.next("the NBIRTH", |m| is("NBIRTH", m)).await;
    assert_eq!(nbirth["seq"], 0);
    let bd_seq = nbirth["bdSeq"].clone();
    assert_eq!(value(&nbirth, "Node Control/Rebirth"), false);
    let dbirth = host.next("the meter's DBIRTH", |m| is("DBIRTH", m)).await;
    assert_eq!(dbirth["device"], "meter");
    for (name, datatype, expected) in [
        ("energy", "UINT16", json!(42)),
        ("delta", "INT16", json!(-1)),
        ("setpoint", "UINT16", json!(60)),
    ] {
        let m = metric(&dbirth, name).unwrap();
        assert_eq!(
            (&m["datatype"], &m["value"]),
            (&json!(datatype), &expected),
            "{dbirth}"
        );
        assert_eq!(m["quality"], 192);
        assert!(m["alias"].is_u64() && m["timestamp"].is_u64(), "{m}");
    }
    let temp = metric(&dbirth, "temp").unwrap();
    assert_eq!(temp["datatype"], "FLOAT", "a scaled register is a Float");
    assert!(
        (temp["value"].as_f64().unwrap() - 21.5).abs() < 1e-4,
        "{temp}"
    );
    let missing = metric(&dbirth, "missing").unwrap();
    assert_eq!(
        (&missing["null"], &missing["quality"]),
        (&json!(true), &json!(0))
    );

    // Data by alias: the host resolves every name and value from the birth.
    // (Polls stored before the connection came up go first, as historical.)
    let live = |m: &Value| {
        is("DDATA", m)
            && m["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .all(|x| x["historical"] == false)
    };
    let ddata = host.next("a live DDATA", live).await;
    assert_eq!(value(&ddata, "energy"), 42);
    assert_eq!(value(&ddata, "delta"), -1);
    let missing = metric(&ddata, "missing").unwrap();
    assert_eq!(
        (&missing["null"], &missing["quality"]),
        (&json!(true), &json!(0))
    );

    // A DCMD by name, then one by alias, write the setpoint.
    host.send(json!({"dcmd": {"node": "gw-spb", "device": "meter",
        "metrics": [{"name": "setpoint", "datatype": "UINT16", "value": 77}]}}));
    host.next("the setpoint written by name", |m| {
        is("DDATA", m) && metric(m, "setpoint").is_some_and(|s| s["value"] == 77)
    })
    .await;
    let alias = metric(&dbirth, "setpoint").unwrap()["alias"].clone();
    host.send(json!({"dcmd": {"node": "gw-spb", "device": "meter",
        "metrics": [{"alias": alias, "datatype": "UINT16", "value": 78}]}}));
    host.next("the setpoint written by alias", |m| {
        is("DDATA", m) && metric(m, "setpoint").is_some_and(|s| s["value"] == 78)
    })
    .await;

    // A rebirth: NBIRTH at seq 0 with the same bdSeq, and current values.
    host.send(json!({"rebirth": "gw-spb"}));
    let reborn = host
        .next("the NBIRTH of the rebirth", |m| is("NBIRTH", m))
        .await;
    assert_eq!((&reborn["seq"], &reborn["bdSeq"]), (&json!(0), &bd_seq));
    let dbirth = host
        .next("the DBIRTH of the rebirth", |m| is("DBIRTH", m))
        .await;
    assert_eq!(value(&dbirth, "setpoint"), 78);

    // The device goes: DDEATH; it comes back: DBIRTH, then data.
    drop(device);
    host.next("the meter's DDEATH", |m| {
        is("DDEATH", m) && m["device"] == "meter"
    })
    .await;
    let _device = modbus_device_on(port, &spec).await;
    host.next("the meter born again", |m| {
        is("DBIRTH", m) && m["device"] == "meter"
    })
    .await;
    let ddata = host.next("data again", |m| is("DDATA", m)).await;
    assert_eq!(value(&ddata, "energy"), 42);
}

/// Waits until the host has a DDATA of every read time in `held`, each
/// marked historical with its values.
async fn every_row_arrives_historical(host: &mut SparkplugHost, held: Vec<i64>) {
    let mut left: std::collections::BTreeSet<i64> = held.into_iter().collect();
    let count = left.len();
    host.next(&format!("{count} buffered rows as historical data"), |m| {
        if is("DDATA", m) {
            let ts = m["timestamp"].as_i64().unwrap();
            if left.remove(&ts) {
                assert!(
                    m["metrics"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|x| x["historical"] == true),
                    "{m}"
                );
                assert_eq!(value(m, "energy"), 42);
            }
        }
        left.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_is_missing_across_a_link_cut_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let proxy = Proxy::start(broker.port).await;
    let (_device, port) = modbus_device(device_spec()).await;
    let mut host = SparkplugHost::start(broker.port, GROUP, None).await;
    let mut kite = Kite::start(
        kite_bin(),
        dir.path(),
        &config(dir.path(), "gw-spb-cut", proxy.port, port, None),
    );

    let first = host.next("the NBIRTH", |m| is("NBIRTH", m)).await;
    host.next("live data", |m| is("DDATA", m)).await;
    proxy.cut();
    wait_until("a backlog of 20 rows", || kite.buffer().rows >= 20).await;
    kite.kill9();
    let held = kite.buffered_timestamps();
    assert!(held.len() >= 20, "{} rows held", held.len());
    proxy.restore();
    kite.restart();
    let reborn = host
        .next("the NBIRTH after the restart", |m| is("NBIRTH", m))
        .await;
    assert_ne!(
        reborn["bdSeq"], first["bdSeq"],
        "a new session has a new bdSeq, across restarts too"
    );
    every_row_arrives_historical(&mut host, held).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn data_is_held_while_the_primary_host_is_offline_and_sent_as_history_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_device, port) = modbus_device(device_spec()).await;
    let mut host = SparkplugHost::start(broker.port, GROUP, Some("scada")).await;
    host.send(json!({"state": true}));
    let kite = Kite::start(
        kite_bin(),
        dir.path(),
        &config(dir.path(), "gw-spb-host", broker.port, port, Some("scada")),
    );

    let birth = host.next("the NBIRTH", |m| is("NBIRTH", m)).await;
    host.next("live data", |m| is("DDATA", m)).await;
    host.send(json!({"state": false}));
    let death = host.next("the NDEATH", |m| is("NDEATH", m)).await;
    assert_eq!(death["bdSeq"], birth["bdSeq"]);
    assert!(
        death.get("stale").is_none(),
        "the death of the current session: {death}"
    );
    // Held: the host would report any message of a dead node as a violation.
    wait_until("rows held in the buffer", || kite.buffer().rows >= 10).await;
    let held = kite.buffered_timestamps();
    host.send(json!({"state": true}));
    let reborn = host
        .next("the NBIRTH once the host is back", |m| is("NBIRTH", m))
        .await;
    assert_ne!(reborn["bdSeq"], birth["bdSeq"]);
    every_row_arrives_historical(&mut host, held).await;
}
