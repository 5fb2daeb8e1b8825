//! `kite-bench fleet`: many gateways on one broker, and that broker
//! restarted under them.
//!
//! One Mosquitto on a loopback port, persistent so that the subscriber's
//! session (and what is queued for it) survives the restart, and
//! `--gateways` release `kite` processes, each with a directory, a gateway
//! id (`fleet-0`, `fleet-1`, ...), an HTTP API port and a client id of its
//! own, and one simulated Modbus TCP device of 5 points polled every second
//! (the devices share [`SIMULATORS`] simulator ports). A subscriber on
//! `kite/+/+`, with a persistent session and reconnecting every 50 ms while
//! the broker is away, records for each gateway every telemetry `seq` and
//! the arrival of every `"state":"online"` status.
//!
//! Once every gateway is online and has delivered telemetry, the RSS of
//! each (VmRSS, VmHWM from `/proc/<pid>/status`, and Pss from
//! `/proc/<pid>/smaps_rollup`, which shares the binary's pages out between
//! the processes mapping them) is taken. The broker is then stopped
//! (SIGTERM, so that it saves its state), stays down for `--down-seconds`,
//! and is started again on the same port. Reported: for each gateway, the
//! time from the restart (just before the broker is started) to the arrival
//! of its first online status stamped after it: min, median, p90, max, the
//! spread, and a histogram in 1 s buckets. Then, once every gateway has
//! delivered a seq newer than anything it had delivered before the outage,
//! losslessness: the seqs each gateway delivered must cover its first to
//! its last with no gap (duplicates allowed: delivery is at least once).
//! Any gap fails the run.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use kite_test_support::{Kite, Mosquitto};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio_util::sync::CancellationToken;

use crate::{field, now_ms, pid, start_devices, start_kite, status_kb};

/// Simulator ports, shared round-robin by the gateways' devices.
const SIMULATORS: usize = 10;
const POINTS: usize = 5;
const INTERVAL_MS: u64 = 1000;
/// Bound on each wait: all online, all reconnected, all caught up.
const PATIENCE: Duration = Duration::from_secs(120);

/// What the subscriber saw of one gateway.
#[derive(Default)]
struct Gateway {
    seqs: BTreeSet<i64>,
    /// Telemetry messages, duplicates included.
    messages: u64,
    /// Every online status: its arrival and its own `ts`, in ms.
    online: Vec<(i64, i64)>,
}

impl Gateway {
    fn newest(&self) -> i64 {
        self.seqs.last().copied().unwrap_or(0)
    }

    /// The first online status stamped at or after `since`: (arrival, ts).
    fn online_since(&self, since: i64) -> Option<(i64, i64)> {
        self.online.iter().copied().find(|&(_, ts)| ts >= since)
    }

    /// Seqs missing between the first and the last delivered.
    fn missing(&self) -> usize {
        match (self.seqs.first(), self.seqs.last()) {
            (Some(&first), Some(&last)) => (last - first + 1) as usize - self.seqs.len(),
            _ => 0,
        }
    }
}

pub async fn run(kite: &Path, gateways: usize, down_seconds: u64) -> anyhow::Result<()> {
    if gateways == 0 {
        bail!("--gateways must be at least 1");
    }
    let root = std::env::temp_dir().join(format!("kite-bench-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let shutdown = CancellationToken::new();
    let mut broker = Mosquitto::start(&root, true).await;
    let port = broker.port;
    let ports = start_devices(SIMULATORS.min(gateways), &shutdown).await?;
    let seen: Arc<Mutex<Vec<Gateway>>> = Arc::new(Mutex::new(
        (0..gateways).map(|_| Gateway::default()).collect(),
    ));
    let recording = seen.clone();
    subscribe(port, &shutdown, move |topic, payload| {
        let mut parts = topic.split('/');
        let (Some(id), Some(leaf)) = (parts.nth(1), parts.next()) else {
            return;
        };
        let Some(i) = id
            .strip_prefix("fleet-")
            .and_then(|i| i.parse::<usize>().ok())
        else {
            return;
        };
        let mut seen = recording.lock().unwrap();
        let Some(gateway) = seen.get_mut(i) else {
            return;
        };
        if leaf == "status" {
            let online = b"\"state\":\"online\"";
            if payload.windows(online.len()).any(|w| w == online) {
                let ts = field(payload, b"\"ts\":").unwrap_or(0);
                gateway.online.push((now_ms(), ts));
            }
        } else if let Some(seq) = field(payload, b"\"seq\":") {
            gateway.seqs.insert(seq);
            gateway.messages += 1;
        }
    })
    .await?;

    let started = std::time::Instant::now();
    let mut processes = Vec::with_capacity(gateways);
    for i in 0..gateways {
        let dir = root.join(format!("fleet-{i}"));
        std::fs::create_dir_all(&dir)?;
        let devices = crate::devices(&ports[i % ports.len()..][..1], 0, POINTS, INTERVAL_MS);
        let config = kite_test_support::kite_config(&dir, &format!("fleet-{i}"), port, &devices);
        processes.push(start_kite(kite, &dir, &config));
    }
    wait_for(&seen, "every gateway online with telemetry", |_, g| {
        g.online_since(0).is_some() && !g.seqs.is_empty()
    })
    .await?;
    let ready_s = started.elapsed().as_secs_f64();
    let memory = Memory::of(&processes)?;

    // The outage. Once the broker has exited nothing more arrives, so what
    // each gateway delivered so far is what it had before.
    broker.stop().await;
    let before: Vec<i64> = seen.lock().unwrap().iter().map(Gateway::newest).collect();
    tokio::time::sleep(Duration::from_secs(down_seconds)).await;
    let restart = now_ms();
    drop(broker);
    let _broker = Mosquitto::start_on(&root, port, true).await;

    wait_for(&seen, "every gateway online after the restart", |_, g| {
        g.online_since(restart).is_some()
    })
    .await?;
    let reconnected_s = (now_ms() - restart) as f64 / 1000.0;
    wait_for(
        &seen,
        "every gateway delivered a seq newer than before the outage",
        |i, g| g.newest() > before[i],
    )
    .await?;
    let caught_up_s = (now_ms() - restart) as f64 / 1000.0;

    let seen = seen.lock().unwrap();
    let mut delays: Vec<i64> = Vec::with_capacity(gateways);
    let mut status_latency = 0;
    for gateway in seen.iter() {
        let (arrival, ts) = gateway.online_since(restart).context("checked above")?;
        delays.push(arrival - restart);
        status_latency = status_latency.max(arrival - ts);
    }
    delays.sort_unstable();
    let mut histogram = vec![0usize; (delays[delays.len() - 1] / 1000 + 1) as usize];
    for delay in &delays {
        histogram[(delay / 1000) as usize] += 1;
    }
    let gapped: Vec<(usize, usize)> = seen
        .iter()
        .enumerate()
        .map(|(i, g)| (i, g.missing()))
        .filter(|&(_, missing)| missing > 0)
        .collect();
    let messages: u64 = seen.iter().map(|g| g.messages).sum();
    let unique: usize = seen.iter().map(|g| g.seqs.len()).sum();
    drop(seen);
    drop(processes);
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&root);

    let pct = |p| crate::percentile(&delays, p);
    println!(
        "fleet: gateways={gateways} (1 device x {POINTS} points every {INTERVAL_MS} ms each), all online in {ready_s:.1} s | per gateway: rss median {:.1} MB max {:.1} MB, hwm median {:.1} MB max {:.1} MB, pss median {:.1} MB | broker down {down_seconds} s, then reconnected (first online status after the restart): min {} ms, median {} ms, p90 {} ms, max {} ms, spread {} ms (status arrival - its ts at most {status_latency} ms); all caught up {caught_up_s:.1} s after the restart | telemetry: {messages} messages, {unique} distinct seqs ({} duplicates); gateways with gaps: {}",
        memory.rss.median(),
        memory.rss.max(),
        memory.hwm.median(),
        memory.hwm.max(),
        memory.pss.median(),
        delays[0],
        pct(0.5),
        pct(0.9),
        delays[delays.len() - 1],
        delays[delays.len() - 1] - delays[0],
        messages - unique as u64,
        gapped.len(),
    );
    println!(
        "reconnects per 1 s after the restart (all within {reconnected_s:.1} s): {}",
        histogram
            .iter()
            .enumerate()
            .map(|(s, n)| format!("{s}s:{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if !gapped.is_empty() {
        let shown: Vec<String> = gapped
            .iter()
            .take(10)
            .map(|(i, missing)| format!("fleet-{i} ({missing} missing)"))
            .collect();
        bail!(
            "{} gateways with gaps in their seqs: {}",
            gapped.len(),
            shown.join(", ")
        );
    }
    Ok(())
}

/// Memory of each gateway, in MB.
struct Memory {
    rss: Sorted,
    hwm: Sorted,
    pss: Sorted,
}

impl Memory {
    fn of(processes: &[Kite]) -> anyhow::Result<Self> {
        let mb = |kb: u64| kb as f64 / 1024.0;
        let (mut rss, mut hwm, mut pss) = (Vec::new(), Vec::new(), Vec::new());
        for process in processes {
            let pid = pid(process)?;
            rss.push(mb(status_kb(pid, "VmRSS:")?));
            hwm.push(mb(status_kb(pid, "VmHWM:")?));
            pss.push(mb(pss_kb(pid)?));
        }
        Ok(Self {
            rss: Sorted::new(rss),
            hwm: Sorted::new(hwm),
            pss: Sorted::new(pss),
        })
    }
}

struct Sorted(Vec<f64>);

impl Sorted {
    fn new(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        Self(values)
    }
    fn median(&self) -> f64 {
        self.0[self.0.len() / 2]
    }
    fn max(&self) -> f64 {
        self.0[self.0.len() - 1]
    }
}

/// Proportional set size in kB: shared pages divided among their users.
fn pss_kb(pid: u32) -> anyhow::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let line = rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .context("smaps_rollup has no Pss")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("Pss value")?
        .parse()?)
}

/// Polls until `ready` holds for every gateway; fails after [`PATIENCE`],
/// naming a few that are not.
async fn wait_for(
    seen: &Mutex<Vec<Gateway>>,
    what: &str,
    ready: impl Fn(usize, &Gateway) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let waiting: Vec<usize> = {
            let seen = seen.lock().unwrap();
            seen.iter()
                .enumerate()
                .filter(|&(i, g)| !ready(i, g))
                .map(|(i, _)| i)
                .collect()
        };
        if waiting.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let shown: Vec<String> = waiting
                .iter()
                .take(10)
                .map(|i| format!("fleet-{i}"))
                .collect();
            bail!(
                "timed out waiting until {what}: {} gateways are not, e.g. {} (see their kite.log)",
                waiting.len(),
                shown.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Subscribes to `kite/+/+` with a persistent session that outlives the
/// broker's restart, trying again every 50 ms while the broker is away, and
/// subscribing again should the broker have forgotten the session.
async fn subscribe(
    port: u16,
    shutdown: &CancellationToken,
    mut on_publish: impl FnMut(&str, &[u8]) + Send + 'static,
) -> anyhow::Result<()> {
    let mut options = MqttOptions::new(format!("bench-fleet-{port}"), "127.0.0.1", port);
    options
        .set_max_packet_size(16 << 20, 1 << 20)
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Incoming::ConnAck(ack))) if !ack.session_present => {
                    if client.try_subscribe("kite/+/+", QoS::AtLeastOnce).is_err() {
                        return;
                    }
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    on_publish(&publish.topic, &publish.payload)
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    ready_rx.await.context("subscription")?;
    Ok(())
}
