//! `kite demo`: the real pipeline and buffer on one machine with nothing
//! installed. Three simulated Modbus TCP devices serve on loopback, an
//! embedded MQTT broker (rumqttd) listens on 127.0.0.1, two signed example
//! plug-ins derive averages and raise overheat events, and a subscriber
//! prints every message the gateway delivers. After a few messages the demo
//! sends a write from the "cloud" to show the command path.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kite_modbus::simulator::{self, SimBank};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use kite_gateway::{config, daemon};

const GATEWAY_ID: &str = "demo-gw";
const DEVICES: [&str; 3] = ["boiler-1", "boiler-2", "chiller-1"];

/// The demo's gateway config; `{port_N}`, `{mqtt_port}`, `{http_port}` and
/// `{data_dir}` are filled in.
const DEMO_CONFIG: &str = include_str!("../../../config/demo.toml");

/// The files the demo config names under `demo/`: prebuilt example plug-ins,
/// their signatures and the key that signed them (config/demo/README.md).
const DEMO_FILES: [(&str, &[u8]); 5] = [
    (
        "average.wasm",
        include_bytes!("../../../config/demo/average.wasm"),
    ),
    (
        "average.wasm.sig",
        include_bytes!("../../../config/demo/average.wasm.sig"),
    ),
    (
        "threshold.wasm",
        include_bytes!("../../../config/demo/threshold.wasm"),
    ),
    (
        "threshold.wasm.sig",
        include_bytes!("../../../config/demo/threshold.wasm.sig"),
    ),
    (
        "demo-plugins.pub",
        include_bytes!("../../../config/demo/demo-plugins.pub"),
    ),
];

/// Where the demo listens, on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The embedded broker.
    pub mqtt: u16,
    /// The local HTTP API and status page.
    pub http: u16,
}

pub fn demo(ports: Ports, data_dir: Option<PathBuf>, duration: Option<Duration>) -> ExitCode {
    super::report(super::runtime().block_on(run(ports, data_dir, duration, super::stop_signal())))
}

async fn run(
    ports: Ports,
    data_dir: Option<PathBuf>,
    duration: Option<Duration>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Private (mode 0700, unpredictable name), removed when the demo ends.
    let scratch = tempfile::Builder::new()
        .prefix("kite-demo-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .context("creating the demo's temporary directory")?;
    let data_dir = data_dir.unwrap_or_else(|| scratch.path().join("data"));
    let broker_addr = start_broker(ports.mqtt)?;

    let devices = CancellationToken::new();
    let mut device_ports = HashMap::new();
    for (i, name) in DEVICES.iter().enumerate() {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        device_ports.insert(*name, listener.local_addr()?.port());
        let bank = Arc::new(SimBank::default());
        bank.set_holding(10, &[650]); // setpoint, tenths of degC
        tokio::spawn(bank.clone().animate(
            Duration::from_millis(200),
            i as f64 * 1.7,
            devices.clone(),
        ));
        tokio::spawn(simulator::serve(listener, bank, devices.clone()));
    }
    let config_path = write_config(
        scratch.path(),
        broker_addr,
        ports.http,
        &data_dir,
        &device_ports,
    )?;
    let config = config::load(&config_path)?;

    println!("kite demo: embedded MQTT broker on mqtt://{broker_addr}");
    println!(
        "  watch it:  mosquitto_sub -h 127.0.0.1 -p {} -t 'kite/#' -v",
        broker_addr.port()
    );
    println!("  buffer:    {}", data_dir.join("buffer.sqlite3").display());
    println!("  plug-ins:  averages (derived readings), overheat (events)");
    if let Some(listen) = config.http.listen {
        println!(
            "  status:    http://{}/",
            kite_gateway::ops::http::client_address(listen)
        );
    }
    println!("  stop:      Ctrl-C");
    let watching = CancellationToken::new();
    let watcher = tokio::spawn(watch(broker_addr, watching.clone()));

    let stop = async move {
        match duration {
            Some(limit) => {
                tokio::select! { _ = stop => {}, _ = tokio::time::sleep(limit) => {} }
            }
            None => stop.await,
        }
    };
    let result = daemon::run(config, None, stop, None).await;
    // The gateway has stopped: only now do its devices and the watcher go,
    // so nothing fails on the way out.
    watching.cancel();
    let _ = watcher.await;
    devices.cancel();
    result
}

/// Writes the demo's config, and the plug-in files it names, into `dir`;
/// returns the config's path.
fn write_config(
    dir: &Path,
    broker: SocketAddr,
    http_port: u16,
    data_dir: &Path,
    ports: &HashMap<&str, u16>,
) -> anyhow::Result<PathBuf> {
    let plugins = dir.join("demo");
    std::fs::create_dir(&plugins)?;
    for (name, bytes) in DEMO_FILES {
        std::fs::write(plugins.join(name), bytes)?;
    }
    let text = DEMO_CONFIG
        .replace("{mqtt_port}", &broker.port().to_string())
        .replace("{http_port}", &http_port.to_string())
        .replace("{data_dir}", &data_dir.display().to_string())
        .replace("{port_1}", &ports["boiler-1"].to_string())
        .replace("{port_2}", &ports["boiler-2"].to_string())
        .replace("{port_3}", &ports["chiller-1"].to_string());
    let path = dir.join("kite.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Starts rumqttd on 127.0.0.1:`port` in threads of its own.
fn start_broker(port: u16) -> anyhow::Result<SocketAddr> {
    let listen: SocketAddr = ([127, 0, 0, 1], port).into();
    // rumqttd reports a busy port only in its log: check first.
    std::net::TcpListener::bind(listen)
        .with_context(|| format!("port {port} is taken; pick another with --mqtt-port"))?;
    let server = rumqttd::ServerSettings {
        name: "demo".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: rumqttd::ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: 1 << 20,
            max_inflight_count: 200,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 1 << 20,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("demo".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    };
    std::thread::Builder::new()
        .name("demo-broker".into())
        .spawn(move || {
            if let Err(e) = rumqttd::Broker::new(config).start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })?;
    Ok(listen)
}

/// Prints what reaches the broker, and sends one write after a few messages,
/// until `stop` is cancelled.
async fn watch(broker: SocketAddr, stop: CancellationToken) {
    let mut options = MqttOptions::new("kite-demo-watch", broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let _ = client
        .subscribe(format!("kite/{GATEWAY_ID}/#"), QoS::AtLeastOnce)
        .await;
    let mut seen = 0u64;
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                println!(
                    "{} {}",
                    publish.topic,
                    String::from_utf8_lossy(&publish.payload)
                );
                seen += 1;
                if seen == 15 {
                    let topic = format!("kite/{GATEWAY_ID}/boiler-1/set");
                    let request = r#"{"id":"demo-1","point":"setpoint","value":72.5}"#;
                    println!("-> {topic} {request}");
                    let _ = client
                        .publish(topic, QoS::AtLeastOnce, false, request)
                        .await;
                }
            }
            Ok(_) => {}
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
