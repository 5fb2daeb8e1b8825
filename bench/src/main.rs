//! Kite's end-to-end benchmark: many simulated Modbus TCP devices on
//! loopback, the release `kite` binary, a Mosquitto broker, and a subscriber
//! that measures what arrives.
//!
//! `kite-bench load` reports points per second delivered, CPU seconds per
//! million points, peak RSS, and sample-to-broker latency (p50/p99, from the
//! sample's `ts` to its arrival at the subscriber). It also runs a reference
//! in the same go: the same messages published straight to the same broker
//! by one rumqttc client, so that results taken on a busy machine can be
//! compared as ratios. `kite-bench idle` reports the RSS of an idle gateway.
//! `kite-bench rtu` measures a Modbus RTU line against its ceiling;
//! `kite-bench reload` what a reload costs the devices it leaves alone;
//! `kite-bench plugins` what plug-ins cost per reading and to instantiate;
//! `kite-bench ble` what BLE sensors cost: decoding an advertisement in
//! process, and Kite's CPU, memory and writes per advertisement heard
//! through BlueZ's D-Bus API; `kite-bench fleet` what many gateways on one
//! broker cost in memory, how their reconnects spread when that broker
//! restarts, and that none of them loses a sample over it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use kite_modbus::simulator::{self, SimBank};
use kite_test_support::{Kite, Mosquitto};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod ble;
mod fleet;
mod plugins;
mod reload;
mod rtu;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
    /// The kite binary to measure.
    #[arg(long, global = true, default_value = "target/release/kite")]
    kite: PathBuf,
}

#[derive(Subcommand)]
enum Mode {
    /// Sustained load: devices x points polled every interval.
    Load {
        #[arg(long, default_value_t = 100)]
        devices: usize,
        /// Points per device (u16 registers, read in one request).
        #[arg(long, default_value_t = 100)]
        points: usize,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
        /// Seconds measured, after 5 s of warm-up.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// `mqtt.json`: the telemetry layout, `full` or `compact`.
        #[arg(long, default_value = "full")]
        json: String,
        /// `mqtt.format`: `json`, or `sparkplug` (Sparkplug B, counted on
        /// its DDATA topics).
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// RSS of a running gateway with one device polled once a minute.
    Idle,
    /// Modbus RTU line rate against a slave that keeps real character
    /// timing, as a fraction of the line's ceiling.
    Rtu {
        #[arg(long, default_value_t = 9600)]
        baud: u32,
        /// Seconds measured, after 3 s of warm-up.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// What reloading costs the devices a reload does not touch.
    Reload {
        #[arg(long, default_value_t = 20)]
        reloads: usize,
    },
    /// Plug-in costs: per reading in batches, instantiation, and the price
    /// of bounding time (epoch interruption against fuel and nothing).
    Plugins {
        /// Where the example plug-ins were built.
        #[arg(long, default_value = "plugins/examples/target/wasm32-wasip2/release")]
        examples: PathBuf,
    },
    /// BLE costs: decoding per advertisement in process, then Kite's CPU,
    /// RSS and writes per advertisement from a BlueZ mock, against an idle
    /// reference.
    Ble {
        /// BTHome sensors configured and advertising.
        #[arg(long, default_value_t = 20)]
        devices: usize,
        /// Advertisements sent, round-robin over the sensors.
        #[arg(long, default_value_t = 20_000)]
        adverts: usize,
        /// Advertisements per second at most; 0: as fast as the BlueZ mock
        /// takes them.
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Calls per timed run of the in-process decode measurements; 0
        /// skips them.
        #[arg(long, default_value_t = 1_000_000)]
        iterations: usize,
    },
    /// Many gateways on one broker: RSS per gateway, then the broker
    /// restarted: how the reconnects spread, and no sample lost.
    Fleet {
        /// Gateways, each with one device of 5 points polled every second.
        #[arg(long, default_value_t = 200)]
        gateways: usize,
        /// Seconds the broker stays down.
        #[arg(long, default_value_t = 20)]
        down_seconds: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Mode::Plugins { examples } = &cli.command {
        return plugins::run(examples);
    }
    if !cli.kite.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p kite-gateway`",
            cli.kite.display()
        );
    }
    match cli.command {
        Mode::Load {
            devices,
            points,
            interval_ms,
            seconds,
            json,
            format,
        } => {
            let wire = Wire {
                json: &json,
                sparkplug: format == "sparkplug",
            };
            load(&cli.kite, devices, points, interval_ms, seconds, wire).await
        }
        Mode::Idle => idle(&cli.kite).await,
        Mode::Rtu { baud, seconds } => rtu::run(&cli.kite, baud, seconds).await,
        Mode::Reload { reloads } => reload::run(&cli.kite, reloads).await,
        Mode::Ble {
            devices,
            adverts,
            rate,
            iterations,
        } => ble::run(&cli.kite, devices, adverts, rate, iterations).await,
        Mode::Fleet {
            gateways,
            down_seconds,
        } => fleet::run(&cli.kite, gateways, down_seconds).await,
        Mode::Plugins { .. } => unreachable!("handled above"),
    }
}

/// Serves `count` simulated devices; returns their ports.
async fn start_devices(count: usize, shutdown: &CancellationToken) -> anyhow::Result<Vec<u16>> {
    let bank = Arc::new(SimBank::default());
    bank.set_holding(0, &(0..125).collect::<Vec<u16>>());
    let mut ports = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        ports.push(listener.local_addr()?.port());
        tokio::spawn(simulator::serve(listener, bank.clone(), shutdown.clone()));
    }
    Ok(ports)
}

/// The config of the gateway `bench` polling `points` registers of each
/// device at `ports`.
fn kite_config(dir: &Path, broker: u16, ports: &[u16], points: usize, interval_ms: u64) -> String {
    let settings = "max_inflight = 256\n[buffer]\nmax_bytes = \"1GiB\"\n";
    let devices = devices(ports, 0, points, interval_ms);
    kite_test_support::kite_config(dir, "bench", broker, &format!("{settings}{devices}"))
}

/// Devices `dev{first}`, `dev{first + 1}`, ... at `ports`, each with `points` registers.
fn devices(ports: &[u16], first: usize, points: usize, interval_ms: u64) -> String {
    let mut text = String::new();
    for (i, port) in ports.iter().enumerate() {
        let i = first + i;
        text += &format!(
            "[[devices]]\nname = \"dev{i}\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:{port}\"\npoll_interval = \"{interval_ms}ms\"\ntimeout = \"1s\"\n"
        );
        for p in 0..points {
            text += &format!("[[devices.points]]\nname = \"p{p}\"\naddress = {p}\n");
        }
    }
    text
}

/// What the subscriber saw.
#[derive(Default)]
struct Received {
    messages: AtomicU64,
    payload_bytes: AtomicU64,
    latencies_ms: Mutex<Vec<i64>>,
}

impl Received {
    /// Counts a message and its bytes, and its latency from the `ts` it
    /// carries.
    fn record(&self, payload: &[u8]) {
        let now = now_ms();
        if let Some(ts) = field(payload, b"\"ts\":").or_else(|| sparkplug_timestamp(payload)) {
            self.latencies_ms.lock().unwrap().push(now - ts);
        }
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.payload_bytes
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
    }
}

/// The `timestamp` of a Sparkplug B payload: field 1, a varint, which
/// comes first.
fn sparkplug_timestamp(payload: &[u8]) -> Option<i64> {
    let (&tag, rest) = payload.split_first()?;
    if tag != 0x08 {
        return None;
    }
    let mut value = 0u64;
    for (i, byte) in rest.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return i64::try_from(value).ok();
        }
    }
    None
}

/// How telemetry goes on the wire in a load run.
#[derive(Clone, Copy)]
struct Wire<'a> {
    /// `mqtt.json`.
    json: &'a str,
    /// `mqtt.format = "sparkplug"`.
    sparkplug: bool,
}

/// Subscribes to `filter`; `on_publish` sees each message's topic and payload.
async fn subscribe(
    port: u16,
    filter: &str,
    mut on_publish: impl FnMut(&str, &[u8]) + Send + 'static,
) -> anyhow::Result<()> {
    let mut options = MqttOptions::new(format!("bench-sub-{port}"), "127.0.0.1", port);
    options
        .set_max_packet_size(16 << 20, 1 << 20)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let _client = client;
        while let Ok(event) = eventloop.poll().await {
            match event {
                Event::Incoming(Incoming::SubAck(_)) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Event::Incoming(Incoming::Publish(publish)) => {
                    on_publish(&publish.topic, &publish.payload)
                }
                _ => {}
            }
        }
    });
    ready_rx.await.context("subscription")?;
    Ok(())
}

/// The integer after `key` in a JSON payload, without parsing all of it.
fn field(payload: &[u8], key: &[u8]) -> Option<i64> {
    let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn now_ms() -> i64 {
    kite_core::now_ms()
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// A `/proc/<pid>/status` value in kB.
/// `/proc/<pid>/io`'s write_bytes: what the process had written to storage.
fn write_bytes(pid: u32) -> anyhow::Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    let line = io
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .context("io format")?;
    Ok(line.trim().parse()?)
}

fn status_kb(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .context("status key")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("status value")?
        .parse()?)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The gateway under measurement, logging warnings only.
fn start_kite(kite: &Path, dir: &Path, config: &str) -> Kite {
    Kite::start_with_env(kite, dir, config, &[("KITE_LOG", "warn")])
}

/// The process id of a gateway that runs.
fn pid(kite: &Kite) -> anyhow::Result<u32> {
    kite.pid().context("kite is not running")
}

async fn load(
    kite: &Path,
    devices: usize,
    points: usize,
    interval_ms: u64,
    seconds: u64,
    wire: Wire<'_>,
) -> anyhow::Result<()> {
    let json = wire.json;
    let dir = std::env::temp_dir().join(format!("kite-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let shutdown = CancellationToken::new();
    let broker = Mosquitto::start(&dir, false).await;
    let ports = start_devices(devices, &shutdown).await?;
    let received = Arc::new(Received::default());
    let counting = received.clone();
    let (filter, format) = if wire.sparkplug {
        ("spBv1.0/bench/DDATA/bench/+", "sparkplug")
    } else {
        ("kite/bench/+", "json")
    };
    subscribe(broker.port, filter, move |_, payload| {
        counting.record(payload)
    })
    .await?;
    let mut config = kite_config(&dir, broker.port, &ports, points, interval_ms).replacen(
        "[buffer]",
        &format!("json = \"{json}\"\nformat = \"{format}\"\n[buffer]"),
        1,
    );
    if wire.sparkplug {
        config += "[sparkplug]\ngroup_id = \"bench\"\n";
    }
    let process = start_kite(kite, &dir, &config);
    let pid = pid(&process)?;

    tokio::time::sleep(Duration::from_secs(5)).await;
    let start_messages = received.messages.load(Ordering::Relaxed);
    let start_bytes = received.payload_bytes.load(Ordering::Relaxed);
    received.latencies_ms.lock().unwrap().clear();
    let start_cpu = cpu_seconds(pid)?;
    let start_written = write_bytes(pid)?;
    let started = Instant::now();
    let mut peak_rss_kb = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        peak_rss_kb = peak_rss_kb.max(status_kb(pid, "VmRSS:")?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - start_cpu;
    let written = write_bytes(pid)? - start_written;
    let messages = received.messages.load(Ordering::Relaxed) - start_messages;
    let payload_bytes = received.payload_bytes.load(Ordering::Relaxed) - start_bytes;
    let mut latencies = std::mem::take(&mut *received.latencies_ms.lock().unwrap());
    latencies.sort_unstable();
    drop(process);
    let total_points = messages as f64 * points as f64;
    let points_per_s = total_points / elapsed;
    let offered = (devices * points) as f64 * 1000.0 / interval_ms as f64;

    let reference = reference_rate(broker.port, points, seconds.min(10)).await?;
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "devices={devices} points={points} interval={interval_ms}ms offered={offered:.0}/s | delivered={points_per_s:.0} points/s ({:.0} msg/s) | cpu={:.2} s per 1M points ({:.0}% of one core) | peak_rss={:.1} MB | latency p50={} ms p99={} ms | payload {:.1} B/point (format = {format}, json = {json}) | written to disk {:.1} B/point | reference direct-publish={reference:.0} points/s | kite/reference={:.2}",
        messages as f64 / elapsed,
        cpu / total_points * 1e6,
        cpu / elapsed * 100.0,
        peak_rss_kb as f64 / 1024.0,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        payload_bytes as f64 / total_points,
        written as f64 / total_points,
        points_per_s / reference,
    );
    Ok(())
}

/// Points per second that one rumqttc client publishing Kite-shaped
/// messages at QoS 1 gets through the same broker to the same subscriber.
async fn reference_rate(port: u16, points: usize, seconds: u64) -> anyhow::Result<f64> {
    let received = Arc::new(Received::default());
    let counting = received.clone();
    subscribe(port, "reference/+", move |_, payload| {
        counting.record(payload)
    })
    .await?;
    let body: String = (0..points)
        .map(|p| format!("\"p{p}\":{{\"value\":{p},\"quality\":\"good\"}}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut options = MqttOptions::new("bench-reference", "127.0.0.1", port);
    options
        .set_max_packet_size(1 << 20, 16 << 20)
        .set_inflight(256);
    let (client, mut eventloop) = AsyncClient::new(options, 512);
    let stop = CancellationToken::new();
    let publisher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.is_cancelled() {
                seq += 1;
                let payload = format!(
                    "{{\"seq\":{seq},\"ts\":{},\"device\":\"ref\",\"points\":{{{body}}}}}",
                    now_ms()
                );
                if client
                    .publish("reference/ref", QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start = received.messages.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let rate = (received.messages.load(Ordering::Relaxed) - start) as f64 * points as f64
        / started.elapsed().as_secs_f64();
    stop.cancel();
    poller.abort();
    let _ = publisher.await;
    Ok(rate)
}

async fn idle(kite: &Path) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("kite-bench-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let shutdown = CancellationToken::new();
    let broker = Mosquitto::start(&dir, false).await;
    let ports = start_devices(1, &shutdown).await?;
    let config = kite_config(&dir, broker.port, &ports, 10, 60_000);
    let process = start_kite(kite, &dir, &config);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = status_kb(pid(&process)?, "VmRSS:")?;
    let hwm = status_kb(pid(&process)?, "VmHWM:")?;
    drop(process);
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "idle: rss={:.1} MB peak={:.1} MB",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    Ok(())
}
