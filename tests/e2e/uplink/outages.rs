//! Store-and-forward through outages: a cut link, a stopped broker, kill -9
//! of the daemon, a restart while the broker is down, a full buffer that
//! drops or downsamples, and a backlog replayed behind live data.

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
        kite_bin(),
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
        kite_bin(),
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
        kite_bin(),
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
        kite_bin(),
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
    let mut kite = Kite::start(kite_bin(), dir.path(), &config);
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

#[tokio::test(flavor = "multi_thread")]
async fn a_full_buffer_that_downsamples_keeps_the_whole_outage_evenly() {
    let dir = tempfile::tempdir().unwrap();
    let broker_port = free_port();
    let (_device, devices) = fast_device(40, "20ms").await;
    let config = kite_config(dir.path(), "gw-thin", broker_port, &devices).replace(
        "[mqtt]",
        "[buffer]\nmax_bytes = \"64KiB\"\non_full = \"downsample\"\n\n[mqtt]",
    );
    let mut kite = Kite::start(kite_bin(), dir.path(), &config);
    const KEEP_EVERY: &str = "SELECT value FROM meta WHERE key = 'keep_every'";
    wait_until("the buffer keeps one sample in 8", || {
        kite.buffer_number(KEEP_EVERY) >= 8
    })
    .await;
    let (_, metrics) = kite.http("GET", "/metrics", None, "").await;
    let thinned: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kite_buffer_thinned_total "))
        .expect("thinned rows in /metrics")
        .parse()
        .unwrap();
    assert!(thinned > 0.0, "thinning is counted: {thinned}");
    assert!(kite.terminate().await.success());
    let before = kite.buffer();
    let keep_every = kite.buffer_number(KEEP_EVERY) as u64;
    assert_eq!(before.dropped, 0, "thinning made room, nothing was dropped");
    assert!(
        kite.log()
            .contains("buffer full: thinning the oldest samples"),
        "thinning is logged"
    );
    // Restart with a slow poll and room to spare: the one sample read at
    // start must not thin what the outage kept before it is delivered.
    std::fs::write(
        Kite::config_path(dir.path()),
        config
            .replace("\"20ms\"", "\"1h\"")
            .replace("max_bytes = \"64KiB\"", "max_bytes = \"1MiB\""),
    )
    .unwrap();

    let broker = Mosquitto::start_on(dir.path(), broker_port, false).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-thin/#", "thin-test", false).await;
    kite.restart();
    let status = sub
        .next_on("kite/gw-thin/status", |s| s["state"] == "online")
        .await;
    assert!(
        status["buffer"]["thinned"].as_u64().unwrap() > 0
            && status["buffer"]["keep_every"].as_u64().unwrap() >= 8,
        "thinning visible: {status}"
    );
    let seqs = sub
        .seqs_until("kite/gw-thin/meter", before.newest + 1)
        .await;
    assert_eq!(seqs[0], 1, "the outage's first sample is kept");
    let mut kept: Vec<u64> = seqs
        .into_iter()
        .filter(|&seq| seq <= before.newest)
        .collect();
    kept.sort_unstable();
    kept.dedup();
    assert_eq!(
        kept.len() as u64,
        before.rows,
        "every kept row is delivered"
    );
    let widest = kept.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(
        widest <= 2 * keep_every,
        "an even thinning: a gap of {widest} samples with one kept in {keep_every}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn live_first_sends_live_data_at_once_and_the_backlog_behind_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker_port = free_port();
    // The gateway reaches the broker through a link that stays cut until
    // the subscriber is in place, so that it sees the first replayed row.
    let proxy = Proxy::start(broker_port).await;
    proxy.cut();
    let (_device, devices) = fast_device(2, "50ms").await;
    let config = kite_config(dir.path(), "gw-live", proxy.port, &devices).replace(
        "[mqtt]\n",
        "[mqtt]\nreplay = \"live_first\"\nreplay_rate = 20\n",
    );
    let kite = Kite::start(kite_bin(), dir.path(), &config);
    wait_until("a backlog of 100 rows", || kite.buffer().rows >= 100).await;

    let broker = Mosquitto::start_on(dir.path(), broker_port, false).await;
    let mut sub = Subscriber::connect(broker.port, "kite/gw-live/meter", "live-test", false).await;
    proxy.restore();
    // Arrival order: each message's seq and whether it was replayed.
    let mut arrivals: Vec<(u64, bool)> = Vec::new();
    let backlog_end = loop {
        let message = sub.next_on("kite/gw-live/meter", |_| true).await;
        arrivals.push((last_seq(&message), message["historical"] == true));
        let first_live = arrivals.iter().filter(|a| !a.1).map(|a| a.0).min();
        let mut replayed: Vec<u64> = arrivals.iter().filter(|a| a.1).map(|a| a.0).collect();
        replayed.sort_unstable();
        replayed.dedup();
        if let Some(first_live) = first_live {
            if replayed.len() as u64 == first_live - 1 {
                break first_live - 1;
            }
        }
    };
    assert!(backlog_end >= 100, "the backlog was {backlog_end} rows");
    let last_replayed = arrivals.iter().rposition(|a| a.1).unwrap();
    let first_live = arrivals.iter().position(|a| !a.1).unwrap();
    assert!(
        first_live < last_replayed,
        "live data went out before the backlog was through: {arrivals:?}"
    );
    for (seq, historical) in &arrivals {
        assert_eq!(
            *historical,
            *seq <= backlog_end,
            "seq {seq}: marked historical exactly when it was buffered before the connection"
        );
    }
    let replayed: Vec<u64> = arrivals.iter().filter(|a| a.1).map(|a| a.0).collect();
    assert!(
        replayed.windows(2).all(|w| w[0] < w[1]),
        "the backlog goes oldest first: {replayed:?}"
    );
    let status = kite.api("/status").await;
    assert!(
        status["uplink"]["replayed"].as_u64().unwrap() >= backlog_end
            && status["uplink"]["backlog"] == 0,
        "the status shows the replay: {}",
        status["uplink"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_buffer_locked_by_another_process_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let (_device, devices) = fast_device(4, "50ms").await;
    let topic = "kite/gw-lock/meter";
    let mut sub = Subscriber::connect(broker.port, topic, "lock-test", false).await;
    let kite = Kite::start(
        kite_bin(),
        dir.path(),
        &kite_config(dir.path(), "gw-lock", broker.port, &devices),
    );
    let first = last_seq(&sub.next_on(topic, |_| true).await);

    // Another process takes the write lock for longer than the buffer's busy
    // timeout (5 s): two commits in a row fail.
    let locker = rusqlite::Connection::open(dir.path().join("data/buffer.sqlite3")).unwrap();
    locker.busy_timeout(Duration::from_secs(10)).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let failing = kite
        .api_until("/status", "commits fail and are retried", |s| {
            s["buffer"]["commit_failures"].as_u64() >= Some(2)
        })
        .await;
    assert_eq!(failing["buffer"]["lost"], 0, "{failing}");
    let (code, body) = kite.http("GET", "/healthz", None, "").await;
    assert_eq!(code, 200, "retrying is progress, not a hang: {body}");
    assert!(body.contains("commits failing"), "{body}");
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    let unlocked_ms = kite_core::now_ms();

    let settled = kite
        .api_until("/status", "commits work again", |s| {
            s["health"]["reasons"].as_array().is_some_and(|reasons| {
                !reasons
                    .iter()
                    .any(|r| r.as_str().unwrap().contains("commits failing"))
            })
        })
        .await;
    assert_eq!(settled["buffer"]["lost"], 0, "{settled}");
    assert!(
        kite.log().contains("buffer commits work again"),
        "{}",
        kite.log()
    );
    // Everything read while the lock was held goes out, in order, and
    // polling goes on after it.
    let mut seqs = vec![first];
    loop {
        let message = sub.next_on(topic, |_| true).await;
        seqs.push(last_seq(&message));
        if message["ts"].as_i64().unwrap() > unlocked_ms + 500 {
            break;
        }
    }
    let last = *seqs.iter().max().unwrap();
    assert_complete_in_order(&seqs, first, last);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_the_broker_cannot_take_is_set_aside_and_delivery_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // The broker closes the connection of a client that sends a packet
    // over 64 KiB.
    let port = free_port();
    let broker = Mosquitto::with_config(
        dir.path(),
        port,
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_packet_size 65536\n"),
    )
    .await;
    let (_device, devices) = fast_device(2, "100ms").await;
    let config = kite_config(dir.path(), "gw-big", broker.port, &devices).replace(
        "flush_timeout",
        "max_message_bytes = \"32KiB\"\nflush_timeout",
    );
    let mut kite = Kite::start(kite_bin(), dir.path(), &config);
    let buffer = dir.path().join("data/buffer.sqlite3");
    wait_until("the buffer exists", || buffer.exists()).await;
    assert!(kite.terminate().await.success());
    // A 100 kB row, as a run with a larger limit would have left it.
    rusqlite::Connection::open(&buffer)
        .unwrap()
        .execute(
            "INSERT INTO messages (ts, device, body, kind) VALUES (1, 'meter', ?1, 0)",
            [format!(
                r#"{{"blob":{{"value":"{}","quality":"good"}}}}"#,
                "x".repeat(100_000)
            )],
        )
        .unwrap();
    let big = kite.buffer().newest;

    let mut sub = Subscriber::connect(broker.port, "kite/gw-big/meter", "big-test", false).await;
    kite.restart();
    // Rows after the big one arrive: it did not block delivery.
    let after = sub
        .next_on("kite/gw-big/meter", |m| m["seq"].as_u64() > Some(big))
        .await;
    assert!(after["points"].is_object(), "{after}");
    let status = kite
        .api_until("/status", "the big row is set aside", |s| {
            s["buffer"]["set_aside"] == 1
        })
        .await;
    assert_eq!(status["buffer"]["lost"], 0);
    assert!(kite.log().contains("SET ASIDE"), "{}", kite.log());
    let output = std::process::Command::new(kite_bin())
        .args(["buffer", "inspect", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("set aside 1"), "{text}");
}

/// A Modbus TCP device that never answers; `writes` counts the write
/// requests (function 6) it received.
async fn silent_device() -> (u16, tokio::sync::watch::Receiver<usize>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (writes_tx, writes) = tokio::sync::watch::channel(0);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let writes = writes_tx.clone();
            tokio::spawn(async move {
                let mut frame = [0u8; 260];
                while let Ok(n) = socket.read(&mut frame).await {
                    if n == 0 {
                        return;
                    }
                    if n >= 8 && frame[7] == 6 {
                        writes.send_modify(|count| *count += 1);
                    }
                }
            });
        }
    });
    (port, writes)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_result_made_while_the_link_is_down_survives_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(dir.path(), false).await;
    let proxy = Proxy::start(broker.port).await;
    let (port, mut writes) = silent_device().await;
    let device = format!(
        "[[devices]]\nname = \"valve\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"1h\"\ntimeout = \"1s\"\n\
         [[devices.points]]\nname = \"setpoint\"\naddress = 0\nwritable = true\n"
    );
    let mut sub = Subscriber::connect(broker.port, "kite/gw-wr/#", "wr-test", false).await;
    let mut kite = Kite::start(
        kite_bin(),
        dir.path(),
        &kite_config(dir.path(), "gw-wr", proxy.port, &device),
    );
    sub.next_on("kite/gw-wr/status", |s| s["state"] == "online")
        .await;
    sub.publish(
        "kite/gw-wr/valve/set",
        r#"{"id":"w-1","point":"setpoint","value":5}"#,
    )
    .await;
    // The request reached the device; the link goes down before it times out.
    writes.wait_for(|count| *count >= 1).await.unwrap();
    proxy.cut();
    wait_until("the write result is committed", || {
        kite.buffer_number("SELECT count(*) FROM messages WHERE kind = 2 AND device = 'valve'") == 1
    })
    .await;
    kite.kill9();
    kite.restart();
    proxy.restore();
    let result = sub.next_on("kite/gw-wr/valve/set/result", |_| true).await;
    assert_eq!(result["id"], "w-1");
    assert_eq!(result["point"], "setpoint");
    assert_eq!(result["ok"], false);
    assert!(
        result["error"].as_str().unwrap().contains("no response"),
        "{result}"
    );
}
