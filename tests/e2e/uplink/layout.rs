//! What goes on the wire, against a real broker: the compact JSON layout
//! (values and errors in short maps, the units once in a retained `meta`
//! message), points reported by exception, and consumers sharing the
//! telemetry through a shared subscription.

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn compact_messages_carry_values_and_errors_and_the_units_come_once_retained() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    // pymodbus answers reads past its 20 registers with an exception.
    let (_device, port) = modbus_device(json!({"size": 20, "holding": {"0": [42, 7]}})).await;
    let devices = format!(
        "[[devices]]\nname = \"meter\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"100ms\"\ntimeout = \"300ms\"\n\
         [[devices.points]]\nname = \"energy\"\naddress = 0\nunit = \"kWh\"\n\
         [[devices.points]]\nname = \"power\"\naddress = 1\nunit = \"kW\"\n\
         [[devices.points]]\nname = \"missing\"\naddress = 50\n"
    );
    let config = kite_config(dir.path(), "gw-compact", broker.port, &devices)
        .replace("[mqtt]\n", "[mqtt]\njson = \"compact\"\n");
    let mut sub =
        Subscriber::connect(broker.port, "kite/gw-compact/#", "compact-test", false).await;
    let _kite = Kite::start(kite_bin(), dir.path(), &config);

    let meta = sub.next_on("kite/gw-compact/meter/meta", |_| true).await;
    assert_eq!(meta, json!({"units": {"energy": "kWh", "power": "kW"}}));
    let first = sub.next_on("kite/gw-compact/meter", |_| true).await;
    assert_eq!(
        first["values"],
        json!({"energy": 42, "power": 7}),
        "{first}"
    );
    assert!(
        first["bad"]["missing"]
            .as_str()
            .is_some_and(|e| e.contains("exception")),
        "{first}"
    );
    assert!(first.get("points").is_none() && first["seq"].is_u64() && first["ts"].is_i64());
    // Later messages do not announce the units again.
    let mut telemetry = 0;
    while telemetry < 5 {
        let (topic, message) = sub.next_message().await;
        assert_ne!(
            topic, "kite/gw-compact/meter/meta",
            "announced again: {message}"
        );
        if topic == "kite/gw-compact/meter" {
            assert_eq!(message["values"]["energy"], 42);
            telemetry += 1;
        }
    }
    let mut late = Subscriber::connect(broker.port, "kite/gw-compact/+/meta", "late", false).await;
    let retained = late.next_on("kite/gw-compact/meter/meta", |_| true).await;
    assert_eq!(retained, meta, "a consumer that comes later gets the units");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_point_reported_by_exception_goes_only_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_device, port) = modbus_device(json!({"size": 20, "holding": {"0": [42, 7]}})).await;
    let devices = format!(
        "[[devices]]\nname = \"meter\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"100ms\"\ntimeout = \"300ms\"\n\
         [[devices.points]]\nname = \"setpoint\"\naddress = 0\nwritable = true\nreport = \"change\"\nmax_silence = \"1h\"\n\
         [[devices.points]]\nname = \"power\"\naddress = 1\n"
    );
    let config = kite_config(dir.path(), "gw-rbe", broker.port, &devices);
    let mut sub = Subscriber::connect(broker.port, "kite/gw-rbe/#", "rbe-test", false).await;
    let _kite = Kite::start(kite_bin(), dir.path(), &config);

    let first = sub.next_on("kite/gw-rbe/meter", |_| true).await;
    assert_eq!(first["points"]["setpoint"]["value"], 42, "{first}");
    assert_eq!(first["points"]["power"]["value"], 7);
    // Unchanged, the setpoint stays out of the next polls' messages.
    for _ in 0..5 {
        let next = sub.next_on("kite/gw-rbe/meter", |_| true).await;
        assert_eq!(next["points"]["power"]["value"], 7);
        assert!(next["points"].get("setpoint").is_none(), "{next}");
    }
    // Changed, it goes again.
    sub.publish(
        "kite/gw-rbe/meter/set",
        r#"{"id": "w1", "point": "setpoint", "value": 50}"#,
    )
    .await;
    let changed = sub
        .next_on("kite/gw-rbe/meter", |m| {
            m["points"].get("setpoint").is_some()
        })
        .await;
    assert_eq!(changed["points"]["setpoint"]["value"], 50, "{changed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn consumers_can_share_the_telemetry_through_a_shared_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_device, port) = modbus_device(json!({"size": 20, "holding": {"0": [42]}})).await;
    let devices = format!(
        "[[devices]]\nname = \"meter\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"20ms\"\ntimeout = \"300ms\"\n\
         [[devices.points]]\nname = \"energy\"\naddress = 0\n"
    );
    let filter = "$share/consumers/kite/gw-share/+";
    let mut first = Subscriber::connect(broker.port, filter, "consumer-1", false).await;
    let mut second = Subscriber::connect(broker.port, filter, "consumer-2", false).await;
    let _kite = Kite::start(
        kite_bin(),
        dir.path(),
        &kite_config(dir.path(), "gw-share", broker.port, &devices),
    );
    // Each message goes to one of the group; together they get them all.
    let mut seqs = [Vec::new(), Vec::new()];
    while seqs.iter().map(Vec::len).sum::<usize>() < 40 || seqs.iter().any(Vec::is_empty) {
        let (index, (topic, message)) = tokio::select! {
            got = first.next_message() => (0, got),
            got = second.next_message() => (1, got),
        };
        if topic == "kite/gw-share/meter" {
            seqs[index].push(message["seq"].as_u64().unwrap());
        }
    }
    let mut all: Vec<u64> = seqs.concat();
    all.sort_unstable();
    let count = all.len();
    all.dedup();
    assert_eq!(all.len(), count, "no message went to both: {seqs:?}");
    // Each consumer gets its share in order, so every seq up to the lower
    // of their newest has arrived somewhere.
    let upto = seqs.iter().map(|s| *s.iter().max().unwrap()).min().unwrap();
    let arrived: Vec<u64> = all.into_iter().filter(|&seq| seq <= upto).collect();
    assert_complete_in_order(&arrived, 1, upto);
}
