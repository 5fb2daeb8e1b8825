//! `kite-bench ble`: what BLE sensors cost Kite.
//!
//! Decode cost, in this process without a daemon: nanoseconds per
//! advertisement through `kite_ble::AdvertDecoder::decode` for each built-in
//! format (the specifications' own example payloads), and through
//! `kite_ble::Tracker::heard`, which adds the per-device state (points kept,
//! `rssi`, `min_interval`) and builds the sample. Each figure is the median
//! of 5 runs of `--iterations` calls. An encrypted BTHome packet carries a
//! counter that must increase, so the same packet is accepted only once by
//! one decoder: each call gets a new decoder (or tracker), and the time to
//! construct one alone, measured the same way, is subtracted.
//!
//! Whole process: Mosquitto, the BlueZ D-Bus mock with an adapter `hci0`,
//! and the release `kite` with `--devices` BTHome sensors at
//! `min_interval = "0s"` (a message per advertisement). All appear, then
//! `--adverts` advertisements are sent round-robin as fast as the mock takes
//! them (or at `--rate` a second), and the window lasts until every message
//! has reached a subscriber. Reported for Kite itself over that window:
//! advertisements per second, CPU (utime + stime from `/proc/<pid>/stat`,
//! with the kernel's share and the split by thread) and `write_bytes` (from
//! `/proc/<pid>/io`) per advertisement, and peak RSS (VmHWM). An idle
//! reference in the same go, a new gateway with the same devices heard once
//! and then nothing for the same wall time, gives the background cost, and
//! the CPU per advertisement net of it.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kite_ble::advert::uuid16;
use kite_ble::{Address, AdvertDecoder, Advertisement, DeviceSpec, Format, Heard, Tracker};
use kite_test_support::{Advert, Bluez, Kite, Mosquitto};

use crate::{cpu_seconds, pid, status_kb, write_bytes};

const RUNS: usize = 5;
const BTHOME: &str = "0000fcd2-0000-1000-8000-00805f9b34fb";
/// bthome.io's encryption example: its key, its MAC, its service data.
const KEY: [u8; 16] = [
    0x23, 0x1d, 0x39, 0xc1, 0xd7, 0xcc, 0x1a, 0xb1, 0xae, 0xe2, 0x24, 0xcd, 0x09, 0x6d, 0xb9, 0x32,
];
const ENCRYPTED_MAC: &str = "54:48:E6:8F:80:A5";
const ENCRYPTED: &str = "41e445f3c9962b332211006c7c4519";
/// Parallel callers of the mock; a device is always sent to by the same
/// one, so that its advertisements stay in order.
const LANES: usize = 4;
/// How long the last messages may take after the last advertisement.
const PATIENCE: Duration = Duration::from_secs(120);

pub async fn run(
    kite: &Path,
    devices: usize,
    adverts: usize,
    rate: f64,
    iterations: usize,
) -> anyhow::Result<()> {
    if iterations > 0 {
        decode_costs(iterations)?;
    }
    if devices == 0 {
        bail!("--devices must be at least 1");
    }
    let root = std::env::temp_dir().join(format!("kite-bench-ble-{}", std::process::id()));
    let busy = {
        let gateway = Gateway::start(kite, &root.join("busy"), devices).await?;
        gateway.send(devices, adverts, rate).await?
    };
    let idle = {
        let gateway = Gateway::start(kite, &root.join("idle"), devices).await?;
        gateway.idle(busy.wall).await?
    };
    let _ = std::fs::remove_dir_all(&root);

    let per_advert = |window: &Window| window.cpu_s * 1e6 / adverts as f64;
    let threads_s = |window: &Window| window.threads.values().sum::<f64>();
    let threads: Vec<String> = busy
        .threads
        .iter()
        .filter(|(_, cpu)| **cpu > 0.0)
        .map(|(name, cpu)| format!("{name} {:.0}%", cpu / threads_s(&busy) * 100.0))
        .collect();
    println!(
        "whole process: devices={devices} adverts={adverts}{} | {:.0} adverts/s over {:.1} s | kite cpu={:.1} µs/advert ({:.0}% of one core; {:.0}% in the kernel; by thread: {}), idle reference {:.2} s over {:.1} s ({:.1} ms by the threads' schedstat) = {:.2} µs/advert, net {:.1} µs/advert | peak_rss={:.1} MB, idle {:.1} MB | write_bytes={:.0} B/advert ({:.1} MB), idle {:.1} MB",
        if rate > 0.0 {
            format!(" rate={rate}/s")
        } else {
            String::new()
        },
        adverts as f64 / busy.wall.as_secs_f64(),
        busy.wall.as_secs_f64(),
        per_advert(&busy),
        busy.cpu_s / busy.wall.as_secs_f64() * 100.0,
        busy.system_s / busy.cpu_s * 100.0,
        threads.join(", "),
        idle.cpu_s,
        idle.wall.as_secs_f64(),
        threads_s(&idle) * 1e3,
        per_advert(&idle),
        per_advert(&busy) - per_advert(&idle),
        busy.peak_rss_kb as f64 / 1024.0,
        idle.peak_rss_kb as f64 / 1024.0,
        busy.write_bytes as f64 / adverts as f64,
        busy.write_bytes as f64 / 1e6,
        idle.write_bytes as f64 / 1e6,
    );
    Ok(())
}

/// Nanoseconds per call of `f`: the median of [`RUNS`] runs of `iterations`.
fn ns_per_call(iterations: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        f();
    }
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..iterations {
                f();
            }
            started.elapsed().as_nanos() as f64 / iterations as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[RUNS / 2]
}

fn hex(text: &str) -> Vec<u8> {
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

fn service(uuid: u16, data: &str) -> Advertisement {
    Advertisement {
        rssi: Some(-60),
        service_data: vec![(uuid16(uuid), hex(data))],
        ..Default::default()
    }
}

fn manufacturer(company: u16, data: &str) -> Advertisement {
    Advertisement {
        rssi: Some(-60),
        manufacturer_data: vec![(company, hex(data))],
        ..Default::default()
    }
}

/// One format's example advertisement, and the key it needs.
struct Example {
    name: &'static str,
    format: Format,
    advert: Advertisement,
    key: Option<[u8; 16]>,
}

/// The specifications' example payloads, one per format; the encrypted
/// BTHome one last.
fn examples() -> anyhow::Result<Vec<Example>> {
    let plain = |name, format, advert| Example {
        name,
        format,
        advert,
        key: None,
    };
    let mut encrypted = service(0xfcd2, ENCRYPTED);
    encrypted.address = Some(ENCRYPTED_MAC.parse().context("MAC")?);
    Ok(vec![
        // Packet id 1, 25.00 degC, 50.55 %.
        plain(
            "bthome",
            Format::Bthome,
            service(0xfcd2, "40 0001 02c409 03bf13"),
        ),
        plain(
            "ruuvi",
            Format::Ruuvi,
            manufacturer(0x0499, "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"),
        ),
        plain(
            "pvvx",
            Format::Pvvx,
            service(0x181a, "a5808f38c1a4 2c09 a016 e40b 55 07 04"),
        ),
        plain(
            "atc",
            Format::Atc,
            service(0x181a, "a4c1388f80a5 00f3 2f 55 0be4 07"),
        ),
        plain(
            "ibeacon",
            Format::Ibeacon,
            manufacturer(0x004c, "0215 e2c56db5dffb48d2b060d0f5a71096e0 0001 0002 c5"),
        ),
        plain(
            "eddystone (URL)",
            Format::Eddystone,
            service(0xfeaa, "10 eb 03 676f6f2e676c2f53367a543650"),
        ),
        Example {
            name: "bthome encrypted",
            format: Format::Bthome,
            advert: encrypted,
            key: Some(KEY),
        },
    ])
}

fn spec() -> Arc<DeviceSpec> {
    Arc::new(DeviceSpec {
        name: "sensor".into(),
        address: Address([0x3c, 0x2e, 0xf5, 0, 0, 1]),
        points: None,
        min_interval: Duration::ZERO,
        stale_after: Duration::from_secs(600),
    })
}

fn decode_costs(iterations: usize) -> anyhow::Result<()> {
    println!("decode: ns per advertisement, median of {RUNS} runs of {iterations}");
    println!(
        "{:<18} {:>8} {:>8} {:>7}",
        "format", "decode", "tracker", "points"
    );
    let now = tokio::time::Instant::now();
    for Example {
        name,
        format,
        advert,
        key,
    } in examples()?
    {
        let points = match AdvertDecoder::new(format, key).decode(&advert) {
            Ok(Some(points)) => points.len(),
            other => bail!("{name}: the example does not decode: {other:?}"),
        };
        let spec = spec();
        let (decode, tracker) = if key.is_none() {
            let mut decoder = AdvertDecoder::new(format, key);
            let decode = ns_per_call(iterations, || {
                black_box(decoder.decode(black_box(&advert)).ok());
            });
            let mut tracker = Tracker::new(spec, Box::new(AdvertDecoder::new(format, key)));
            if !matches!(tracker.heard(&advert, now, 1), Heard::Sample(_)) {
                bail!("{name}: the tracker sends nothing");
            }
            let tracked = ns_per_call(iterations, || {
                black_box(tracker.heard(black_box(&advert), now, 1));
            });
            (decode, tracked)
        } else {
            // Each packet once per decoder: a new one for every call, the
            // time to make one subtracted.
            let fresh = ns_per_call(iterations, || {
                let mut decoder = AdvertDecoder::new(format, black_box(key));
                black_box(decoder.decode(black_box(&advert)).ok());
            });
            let making = ns_per_call(iterations, || {
                black_box(AdvertDecoder::new(format, black_box(key)));
            });
            let tracker = |spec: &Arc<DeviceSpec>| {
                Tracker::new(
                    spec.clone(),
                    Box::new(AdvertDecoder::new(format, black_box(key))),
                )
            };
            if !matches!(tracker(&spec).heard(&advert, now, 1), Heard::Sample(_)) {
                bail!("{name}: the tracker sends nothing");
            }
            let fresh_tracked = ns_per_call(iterations, || {
                black_box(tracker(&spec).heard(black_box(&advert), now, 1));
            });
            let making_tracker = ns_per_call(iterations, || {
                black_box(tracker(&spec));
            });
            println!(
                "  ({name}: a new decoder per call {fresh:.0} ns, making one {making:.0} ns; a new tracker per call {fresh_tracked:.0} ns, making one {making_tracker:.0} ns)"
            );
            (fresh - making, fresh_tracked - making_tracker)
        };
        println!("{name:<18} {decode:>8.0} {tracker:>8.0} {points:>7}");
    }
    Ok(())
}

/// What Kite did over one window.
struct Window {
    wall: Duration,
    cpu_s: f64,
    /// Of `cpu_s`, in the kernel.
    system_s: f64,
    /// CPU seconds by thread name.
    threads: BTreeMap<String, f64>,
    write_bytes: u64,
    peak_rss_kb: u64,
}

/// Kite's counters when a window starts.
struct Mark {
    cpu: f64,
    system: f64,
    threads: BTreeMap<String, f64>,
    written: u64,
}

/// stime of a process, in seconds: its CPU time in the kernel.
fn system_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let stime = after.split_whitespace().nth(12).context("stat format")?;
    Ok(stime.parse::<f64>()? / 100.0)
}

/// CPU seconds of a process's live threads, summed by thread name, from
/// `schedstat` (nanoseconds, where `stat` counts 10 ms ticks).
fn threads(pid: u32) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut by_name = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?.path();
        // A thread may end between the listing and the reading.
        let (Ok(name), Ok(schedstat)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("schedstat")),
        ) else {
            continue;
        };
        let ns: f64 = schedstat
            .split_whitespace()
            .next()
            .context("schedstat format")?
            .parse()?;
        *by_name.entry(name.trim().to_string()).or_default() += ns / 1e9;
    }
    Ok(by_name)
}

/// One gateway under measurement with its broker, its BlueZ, its sensors.
struct Gateway {
    process: Kite,
    pid: u32,
    dir: PathBuf,
    bluez: Arc<Bluez>,
    received: Arc<AtomicU64>,
    /// When the last telemetry message arrived.
    last_arrival: Arc<Mutex<Instant>>,
    // Dropped after Kite.
    _broker: Mosquitto,
}

fn address(device: usize) -> String {
    format!("3C:2E:F5:00:{:02X}:{:02X}", device >> 8, device & 0xff)
}

/// A BTHome v2 advertisement, unencrypted: packet id, temperature in
/// hundredths of a degree, 50.55 %.
fn bthome(packet_id: u8, centi_celsius: u16, rssi: i16) -> Advert {
    let [lo, hi] = centi_celsius.to_le_bytes();
    Advert {
        rssi,
        service: vec![(
            BTHOME.into(),
            vec![0x40, 0x00, packet_id, 0x02, lo, hi, 0x03, 0xbf, 0x13],
        )],
        ..Default::default()
    }
}

impl Gateway {
    /// Everything started, every device heard once and its message
    /// received.
    async fn start(kite: &Path, dir: &Path, devices: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let broker = Mosquitto::start(dir, false).await;
        let bluez = Arc::new(Bluez::start(dir).await);
        bluez.add_adapter("hci0").await;
        let received = Arc::new(AtomicU64::new(0));
        let last_arrival = Arc::new(Mutex::new(Instant::now()));
        let (counting, arrived) = (received.clone(), last_arrival.clone());
        crate::subscribe(broker.port, "kite/bench/+", move |topic, _| {
            let device = topic.rsplit('/').next().unwrap_or_default();
            if device
                .strip_prefix("ble")
                .is_some_and(|n| n.parse::<usize>().is_ok())
            {
                *arrived.lock().unwrap() = Instant::now();
                counting.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await?;
        let mut sensors = String::from("[ble]\n");
        for i in 0..devices {
            sensors += &format!(
                "[[devices]]\nname = \"ble{i}\"\nprotocol = \"ble\"\naddress = \"{}\"\ndecoder = \"bthome\"\nmin_interval = \"0s\"\n",
                address(i)
            );
        }
        let config = kite_test_support::kite_config(dir, "bench", broker.port, &sensors);
        let bus = bluez.bus_address();
        let process = Kite::start_with_env(
            kite,
            dir,
            &config,
            &[
                ("KITE_LOG", "warn"),
                ("DBUS_SYSTEM_BUS_ADDRESS", bus.as_str()),
            ],
        );
        let pid = pid(&process)?;
        process
            .api_until("/status", "BLE is scanning", |s| {
                s["ble"]["state"] == "scanning"
            })
            .await;
        for i in 0..devices {
            bluez
                .appear("hci0", &address(i), None, &bthome(0, 2000, -60))
                .await;
        }
        let gateway = Gateway {
            process,
            pid,
            dir: dir.to_path_buf(),
            bluez,
            received,
            last_arrival,
            _broker: broker,
        };
        gateway.wait_for(devices as u64).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(gateway)
    }

    /// Waits until `count` messages arrived; fails after [`PATIENCE`], or
    /// when more arrive than were sent.
    async fn wait_for(&self, count: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let received = self.received.load(Ordering::Relaxed);
            if received == count {
                return Ok(());
            }
            if received > count || Instant::now() > deadline {
                let status = self.process.api("/status").await;
                bail!(
                    "{received} telemetry messages arrived, {count} expected (within {PATIENCE:?}); Kite's BLE status: {}; its log: {}",
                    status["ble"],
                    self.dir.join("kite.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn begin(&self) -> anyhow::Result<Mark> {
        Ok(Mark {
            cpu: cpu_seconds(self.pid)?,
            system: system_seconds(self.pid)?,
            threads: threads(self.pid)?,
            written: write_bytes(self.pid)?,
        })
    }

    fn end(&self, wall: Duration, start: Mark) -> anyhow::Result<Window> {
        let mut threads = threads(self.pid)?;
        for (name, cpu) in &mut threads {
            *cpu -= start.threads.get(name).copied().unwrap_or_default();
        }
        Ok(Window {
            wall,
            cpu_s: cpu_seconds(self.pid)? - start.cpu,
            system_s: system_seconds(self.pid)? - start.system,
            threads,
            write_bytes: write_bytes(self.pid)? - start.written,
            peak_rss_kb: status_kb(self.pid, "VmHWM:")?,
        })
    }

    /// `adverts` advertisements round-robin over the devices, in
    /// [`LANES`] parallel callers, `rate` a second at most (0: as fast as
    /// the mock takes them); the window ends when the last message arrives.
    async fn send(&self, devices: usize, adverts: usize, rate: f64) -> anyhow::Result<Window> {
        let expected = self.received.load(Ordering::Relaxed) + adverts as u64;
        let start = self.begin()?;
        let started = Instant::now();
        let mut lanes = tokio::task::JoinSet::new();
        for lane in 0..LANES {
            let bluez = self.bluez.clone();
            lanes.spawn(async move {
                for n in (0..adverts).filter(|n| n % devices % LANES == lane) {
                    if rate > 0.0 {
                        let due = started + Duration::from_secs_f64(n as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let round = n / devices + 1;
                    let advert = bthome(
                        round as u8,
                        2000 + (round % 500) as u16,
                        -50 - (round % 30) as i16,
                    );
                    bluez
                        .advertise("hci0", &address(n % devices), &advert)
                        .await;
                }
            });
        }
        while let Some(lane) = lanes.join_next().await {
            lane.context("a sending task")?;
        }
        self.wait_for(expected).await?;
        let wall = *self.last_arrival.lock().unwrap() - started;
        self.end(wall, start)
    }

    /// Nothing sent for `wall`.
    async fn idle(&self, wall: Duration) -> anyhow::Result<Window> {
        let received = self.received.load(Ordering::Relaxed);
        let start = self.begin()?;
        tokio::time::sleep(wall).await;
        let window = self.end(wall, start)?;
        let now = self.received.load(Ordering::Relaxed);
        if now != received {
            bail!("{} messages arrived with nothing sent", now - received);
        }
        Ok(window)
    }
}
