//! `kite buffer` on a buffer the daemon filled while its broker was down:
//! inspect, export and verify agree with the rows on disk; once the file is
//! damaged, verify fails and repair recovers the readable rows; and the
//! daemon, started on the damaged file, moves it aside and delivers what it
//! recovered.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

use crate::support::*;

/// `kite buffer ARGS` with the gateway's config.
fn kite_buffer(dir: &Path, args: &[&str]) -> Output {
    Command::new(kite_bin())
        .arg("buffer")
        .args(args)
        .arg("--config")
        .arg(Kite::config_path(dir))
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// `(seq, ts, device, body)` of every row, read with SQLite directly (the
/// body is packed readings, or text).
fn stored_rows(path: &Path) -> Vec<(i64, i64, String, rusqlite::types::Value)> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut select = conn
        .prepare("SELECT seq, ts, device, body FROM messages ORDER BY seq")
        .unwrap();
    select
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Overwrites two pages in the middle of the file; returns its new bytes.
fn damage(path: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() >= 32 * 4096, "big enough to damage its middle");
    let start = bytes.len() / 2 / 4096 * 4096;
    bytes[start..start + 2 * 4096].fill(0xA5);
    std::fs::write(path, &bytes).unwrap();
    bytes
}

#[tokio::test(flavor = "multi_thread")]
async fn buffer_tools_inspect_export_verify_and_repair() {
    let dir = tempfile::tempdir().unwrap();
    let broker_port = free_port();
    let (_device, port) = modbus_device(json!({"size": 100})).await;
    let mut devices = format!(
        "[[devices]]\nname = \"meter\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"20ms\"\ntimeout = \"1s\"\n"
    );
    for i in 0..100 {
        devices += &format!("[[devices.points]]\nname = \"register_{i}\"\naddress = {i}\n");
    }
    let config = kite_config(dir.path(), "gw-tools", broker_port, &devices);
    let mut kite = Kite::start(kite_bin(), dir.path(), &config);
    wait_until("rows buffered with no broker", || kite.buffer().rows >= 600).await;
    assert!(kite.terminate().await.success());
    let path = dir.path().join("data/buffer.sqlite3");
    let rows = stored_rows(&path);
    let last_seq = rows.last().unwrap().0;

    // A recovery tool: it needs only data_dir, so mistakes elsewhere in
    // the config do not stop it.
    std::fs::write(
        Kite::config_path(dir.path()),
        format!("{config}[[devices]]\nname = \"x\"\nprotocol = \"bacnet\"\n"),
    )
    .unwrap();
    let inspect = kite_buffer(dir.path(), &["inspect", "--json"]);
    assert!(inspect.status.success(), "{inspect:?}");
    std::fs::write(Kite::config_path(dir.path()), &config).unwrap();
    let summary: Value = serde_json::from_str(&stdout(&inspect)).unwrap();
    let body_len = |body: &rusqlite::types::Value| match body {
        rusqlite::types::Value::Blob(bytes) => bytes.len(),
        rusqlite::types::Value::Text(text) => text.len(),
        other => panic!("a body of {other:?}"),
    };
    let bytes: usize = rows.iter().map(|r| r.2.len() + body_len(&r.3) + 32).sum();
    let oldest = rows.iter().map(|r| r.1).min().unwrap();
    let newest = rows.iter().map(|r| r.1).max().unwrap();
    assert_eq!(
        summary,
        json!({
            "path": path,
            "rows": rows.len(),
            "bytes": bytes,
            "dropped": 0,
            "set_aside": 0,
            "thinned": 0,
            "keep_every": 1,
            "last_seq": last_seq,
            "oldest_ts": oldest,
            "newest_ts": newest,
            "devices": [{
                "device": "meter",
                "rows": rows.len(),
                "bytes": bytes,
                "oldest_ts": oldest,
                "newest_ts": newest,
            }],
        })
    );

    // Exported lines are the messages the uplink would publish.
    let export = Command::new(kite_bin())
        .args(["buffer", "export", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(export.status.success(), "{export:?}");
    let lines: Vec<Value> = stdout(&export)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    // Every register of the pymodbus device reads 0.
    let points: serde_json::Map<String, Value> = (0..100)
        .map(|i| {
            (
                format!("register_{i}"),
                json!({"value": 0, "quality": "good"}),
            )
        })
        .collect();
    let published: Vec<Value> = rows
        .iter()
        .map(|(seq, ts, device, _)| {
            json!({
                "seq": seq,
                "ts": ts,
                "device": device,
                "points": points,
            })
        })
        .collect();
    assert_eq!(lines, published);
    let file = dir.path().join("export.jsonl");
    let to_file = kite_buffer(
        dir.path(),
        &[
            "export",
            "--device",
            "meter",
            "--output",
            file.to_str().unwrap(),
        ],
    );
    assert!(to_file.status.success(), "{to_file:?}");
    assert_eq!(std::fs::read(&file).unwrap(), export.stdout);
    let other = kite_buffer(dir.path(), &["export", "--device", "boiler"]);
    assert!(
        other.status.success() && other.stdout.is_empty(),
        "{other:?}"
    );

    let verify = kite_buffer(dir.path(), &["verify"]);
    assert!(verify.status.success(), "{verify:?}");
    assert_eq!(stdout(&verify), "ok\n");

    let damaged = damage(&path);
    let verify = kite_buffer(dir.path(), &["verify"]);
    assert_eq!(verify.status.code(), Some(1), "{verify:?}");
    assert!(
        stdout(&verify).contains("rows that cannot be read: seq "),
        "{}",
        stdout(&verify)
    );
    let repaired = dir.path().join("repaired.sqlite3");
    let repair = kite_buffer(
        dir.path(),
        &["repair", "--output", repaired.to_str().unwrap()],
    );
    assert!(repair.status.success(), "{repair:?}");
    let recovered = stored_rows(&repaired);
    assert!(
        stdout(&repair).starts_with(&format!("recovered {} rows into ", recovered.len())),
        "{}",
        stdout(&repair)
    );
    assert!(
        recovered.len() < rows.len() && recovered.len() >= rows.len() / 2,
        "{} of {} rows recovered",
        recovered.len(),
        rows.len()
    );
    assert!(
        recovered.iter().all(|row| rows.contains(row)),
        "recovered rows keep their seq and content"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        damaged,
        "the tools only read"
    );

    // The daemon on the damaged file, with its broker up; a slow poll adds
    // one new sample to what it recovers.
    std::fs::write(
        Kite::config_path(dir.path()),
        config.replace("\"20ms\"", "\"1h\""),
    )
    .unwrap();
    let broker = Mosquitto::start_on(dir.path(), broker_port, false).await;
    let mut sub =
        Subscriber::connect(broker.port, "kite/gw-tools/meter", "tools-test", false).await;
    kite.restart();
    let seqs = sub
        .seqs_until("kite/gw-tools/meter", last_seq as u64 + 1)
        .await;
    let delivered: BTreeSet<i64> = seqs
        .iter()
        .map(|&s| s as i64)
        .filter(|&s| s <= last_seq)
        .collect();
    let expected: BTreeSet<i64> = recovered.iter().map(|r| r.0).collect();
    assert_eq!(delivered, expected, "the recovered rows, and only those");
    assert_eq!(
        *seqs.last().unwrap() as i64,
        last_seq + 1,
        "seq goes on after the damaged file's last"
    );

    let log = kite.log();
    assert!(
        log.contains("the buffer was damaged: moved it aside"),
        "{log}"
    );
    let aside: Vec<PathBuf> = std::fs::read_dir(dir.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("buffer.sqlite3.damaged-")
                && name["buffer.sqlite3.damaged-".len()..]
                    .chars()
                    .all(|c| c.is_ascii_digit())
        })
        .collect();
    assert_eq!(aside.len(), 1, "one damaged file moved aside");
    assert!(log.contains(&*aside[0].to_string_lossy()), "{log}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), damaged);
}
