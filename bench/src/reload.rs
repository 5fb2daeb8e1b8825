//! `kite-bench reload`: what a reload costs the devices it does not touch.
//!
//! Ten simulated devices are polled every 100 ms. For a window the gateway
//! just runs; for a window of the same length it is reloaded over and over,
//! each time adding or removing an eleventh device. Reported: how long
//! `kite reload` takes, the longest gap between two samples of an
//! untouched device in each window, and any seq that never reached the
//! broker.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use kite_test_support::Mosquitto;

use crate::{field, now_ms, start_devices, start_kite};

const DEVICES: usize = 10;
const INTERVAL_MS: u64 = 100;

/// Per device, the sample timestamps seen; and every seq.
#[derive(Default)]
struct Seen {
    ts: HashMap<String, Vec<i64>>,
    seqs: BTreeSet<i64>,
}

pub async fn run(kite: &Path, reloads: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("kite-bench-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let shutdown = CancellationToken::new();
    let broker = Mosquitto::start(&dir, false).await;
    let ports = start_devices(DEVICES + 1, &shutdown).await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let recording = seen.clone();
    crate::subscribe(broker.port, "kite/bench/+", move |topic, payload| {
        let device = topic.rsplit('/').next().unwrap_or_default();
        let mut seen = recording.lock().unwrap();
        if let Some(seq) = field(payload, b"\"seq\":") {
            seen.seqs.insert(seq);
        }
        if let Some(ts) = field(payload, b"\"ts\":") {
            seen.ts.entry(device.to_string()).or_default().push(ts);
        }
    })
    .await?;
    let base = crate::kite_config(&dir, broker.port, &ports[..DEVICES], 10, INTERVAL_MS);
    let with_extra = base.clone() + &crate::devices(&ports[DEVICES..], DEVICES, 10, INTERVAL_MS);
    let _process = start_kite(kite, &dir, &base);
    let config = dir.join("kite.toml");
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The same length of time twice: without reloads, then with them.
    let window = Duration::from_millis(500) * reloads as u32;
    let quiet = (now_ms(), now_ms() + window.as_millis() as i64);
    tokio::time::sleep(window).await;
    let busy_start = now_ms();
    let mut took = Vec::with_capacity(reloads);
    for i in 0..reloads {
        let next = Instant::now() + Duration::from_millis(500);
        std::fs::write(&config, if i % 2 == 0 { &with_extra } else { &base })?;
        let started = Instant::now();
        let output = Command::new(kite)
            .args(["reload", "--config"])
            .arg(&config)
            .output()?;
        took.push(started.elapsed().as_secs_f64() * 1000.0);
        if !output.status.success() {
            bail!("kite reload: {}", String::from_utf8_lossy(&output.stderr));
        }
        tokio::time::sleep_until(next.into()).await;
    }
    let busy = (busy_start, now_ms());
    // What was read until now reaches the broker within a few intervals.
    tokio::time::sleep(Duration::from_secs(2)).await;
    shutdown.cancel();

    let seen = seen.lock().unwrap();
    let max_gap = |(from, to): (i64, i64)| {
        (0..DEVICES)
            .filter_map(|i| seen.ts.get(&format!("dev{i}")))
            .flat_map(|ts| {
                ts.windows(2)
                    .filter(move |w| w[0] >= from && w[1] <= to)
                    .map(|w| w[1] - w[0])
            })
            .max()
            .unwrap_or(0)
    };
    let first = *seen.seqs.first().context("nothing arrived")?;
    let last = *seen.seqs.last().context("nothing arrived")?;
    let missing = (first..=last).filter(|s| !seen.seqs.contains(s)).count();
    took.sort_by(f64::total_cmp);
    println!(
        "reload: {reloads} reloads (device dev{DEVICES} added, removed); kite reload median {:.1} ms, max {:.1} ms; \
         untouched devices ({DEVICES} at {INTERVAL_MS} ms): longest gap {} ms with reloads, {} ms without; \
         seqs {first}..={last}, missing {missing}",
        took[took.len() / 2],
        took[took.len() - 1],
        max_gap(busy),
        max_gap(quiet),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
