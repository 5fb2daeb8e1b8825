//! Store-and-forward through outages: a cut link, a stopped broker, kill -9
//! of the daemon, a restart while the broker is down, and a full buffer.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// One fast device: a pymodbus peer and the TOML that polls it.
async fn fast_device(points: usize, poll: &str) -> (Peer, String) {
    let (peer, port) = modbus_device(json!({"size": 200})).await;
    let mut toml = format!(
        "[[devices]]\nname = \"meter\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"{poll}\"\ntimeout = \"1s\"\n"
    );
    for i in 0..points {
        toml += &format!("[[devices.points]]\nname = \"register_with_a_long_descriptive_name_{i}\"\naddress = {i}\nunit = \"kWh\"\n");
    }
    (peer, toml)
}

fn last_seq(message: &serde_json::Value) -> u64 {
    message["seq"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn link_cut_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let proxy = Proxy::start(broker.port).await;
    let (_device, devices) = fast_device(4, "50ms").await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-cut/meter", "cut-test", false).await;
    let kite = Kite::start(
        dir.path(),
        &kite_config(dir.path(), "gw-cut", proxy.port, &devices),
    );

    let first = last_seq(&sub.next_on("kite/gw-cut/meter", |_| true).await);
    let mut seqs = vec![first];
    seqs.extend(sub.seqs_until("kite/gw-cut/meter", first + 10).await);
    proxy.cut();
    wait_until("a backlog builds up while the link is cut", || {
        kite.buffer().rows >= 40
    })
    .await;
    proxy.restore();
    let target = first + 100;
    seqs.extend(sub.seqs_until("kite/gw-cut/meter", target).await);
    assert_complete_in_order(&seqs, first, target);
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_stopped_for_30s_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::start(dir.path(), true).await;
    let (_device, devices) = fast_device(4, "100ms").await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-stop/meter", "stop-test", true).await;
    let kite = Kite::start(
        dir.path(),
        &kite_config(dir.path(), "gw-stop", broker.port, &devices),
    );

    let first = last_seq(&sub.next_on("kite/gw-stop/meter", |_| true).await);
    let mut seqs = vec![first];
    seqs.extend(sub.seqs_until("kite/gw-stop/meter", first + 10).await);
    broker.stop().await;
    // The outage the scenario calls for: the gateway polls on into its buffer.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let backlog = kite.buffer().rows;
    assert!(
        backlog >= 100,
        "expected a backlog after 30 s, found {backlog} rows"
    );
    broker.resume().await;
    let target = seqs.last().unwrap() + backlog + 20;
    seqs.extend(sub.seqs_until("kite/gw-stop/meter", target).await);
    assert_complete_in_order(&seqs, first, target);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_delivery_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    // A slow uplink (about 100 kB/s), so that draining the backlog takes seconds.
    let proxy = Proxy::start_throttled(broker.port, Some(1024)).await;
    let (_device, devices) = fast_device(20, "20ms").await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-kill/meter", "kill-test", false).await;
    let mut kite = Kite::start(
        dir.path(),
        &kite_config(dir.path(), "gw-kill", proxy.port, &devices),
    );

    let first = last_seq(&sub.next_on("kite/gw-kill/meter", |_| true).await);
    // Build a backlog, then kill the daemon while it is draining it.
    proxy.cut();
    wait_until("a backlog of 300 rows", || kite.buffer().rows >= 300).await;
    proxy.restore();
    let mut seqs = vec![first];
    seqs.extend(sub.seqs_until("kite/gw-kill/meter", first + 20).await);
    kite.kill9();
    let left = kite.buffer().rows;
    assert!(left > 100, "the kill lands mid-delivery: {left} rows left");
    kite.restart();
    let target = seqs.iter().max().unwrap() + left + 20;
    seqs.extend(sub.seqs_until("kite/gw-kill/meter", target).await);
    assert_complete_in_order(&seqs, first, target);
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_while_broker_down_delivers_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let broker_port = free_port();
    let (_device, devices) = fast_device(4, "50ms").await;
    let mut kite = Kite::start(
        dir.path(),
        &kite_config(dir.path(), "gw-down", broker_port, &devices),
    );
    wait_until("samples buffered with no broker", || {
        kite.buffer().rows >= 30
    })
    .await;
    assert!(
        kite.terminate().await.success(),
        "clean exit with the broker down"
    );
    let counts = kite.buffer();
    let (backlog, dropped) = (counts.rows, counts.dropped);
    assert_eq!(dropped, 0);
    assert!(backlog >= 30, "backlog kept across the restart: {backlog}");

    let broker = Mosquitto::start_on(dir.path(), broker_port, false).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-down/meter", "down-test", false).await;
    kite.restart();
    let seqs = sub.seqs_until("kite/gw-down/meter", backlog + 10).await;
    assert_eq!(seqs[0], 1, "delivery starts at the oldest buffered message");
    assert_complete_in_order(&seqs, 1, backlog + 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn full_buffer_drops_oldest_counts_and_delivers_newest() {
    let dir = tempfile::tempdir().unwrap();
    let broker_port = free_port();
    let (_device, devices) = fast_device(40, "20ms").await;
    let config = kite_config(dir.path(), "gw-full", broker_port, &devices)
        .replace("[mqtt]", "[buffer]\nmax_bytes = \"64KiB\"\n\n[mqtt]");
    let mut kite = Kite::start(dir.path(), &config);
    wait_until("the size limit drops rows", || kite.buffer().dropped >= 20).await;
    assert!(kite.terminate().await.success());
    let before = kite.buffer();
    assert!(
        kite.log()
            .contains("buffer full: dropped the oldest messages"),
        "drop is logged"
    );
    // Restart with a slow poll, so that only one new sample joins the backlog.
    std::fs::write(
        Kite::config_path(dir.path()),
        config.replace("\"20ms\"", "\"1h\""),
    )
    .unwrap();

    let broker = Mosquitto::start_on(dir.path(), broker_port, false).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-full/#", "full-test", false).await;
    kite.restart();
    let status = sub
        .next_on("kite/gw-full/status", |s| s["state"] == "online")
        .await;
    assert!(
        status["buffer"]["dropped"].as_u64().unwrap() >= before.dropped,
        "drops visible: {status}"
    );
    let oldest = last_seq(&sub.next_on("kite/gw-full/meter", |_| true).await);
    assert!(
        oldest > 1,
        "the oldest messages were dropped; delivery starts at {oldest}"
    );
    let newest = before.newest + 1;
    let seqs = sub.seqs_until("kite/gw-full/meter", newest).await;
    assert_complete_in_order(&[vec![oldest], seqs].concat(), oldest, newest);
}
