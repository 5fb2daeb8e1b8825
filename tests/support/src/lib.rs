//! Real peers for Kite's end-to-end tests and its benchmarks: Mosquitto,
//! pymodbus devices, socat serial pairs, the `kite` daemon, an MQTT
//! subscriber, and a TCP proxy that can cut or slow a link. Everything
//! panics with a clear message when a peer is missing or misbehaves: the
//! callers are tests and benchmark runs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

pub mod bluez;
pub mod mqtt5;
pub mod sparkplug;
pub mod znp;
pub use bluez::{Advert, Bluez};
pub use mqtt5::Subscriber5;
pub use sparkplug::SparkplugHost;

/// Generous upper bound for anything the tests wait for; reaching it is a failure.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/support is two levels below the repository")
        .to_path_buf()
}

/// The Python of the venv `venv` that `.ci/install-peers` makes (holding
/// `what`), or the one the environment variable `variable` names.
pub(crate) fn venv_python(variable: &str, venv: &str, what: &str) -> PathBuf {
    let python = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(venv).join("bin/python"));
    assert!(
        python.exists(),
        "{} not found: install the test peers with `.ci/install-peers` ({what}), or set {variable}",
        python.display()
    );
    python
}

fn python() -> PathBuf {
    venv_python("KITE_TEST_PYTHON", ".venv-peers", "pymodbus and pyserial")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `condition` until it holds; panics with `what` after [`PATIENCE`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_for_port(port: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// A child process killed when dropped.
pub struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Mosquitto broker on a loopback port, with a config of its own.
pub struct Mosquitto {
    pub port: u16,
    dir: PathBuf,
    child: Option<Peer>,
}

impl Mosquitto {
    /// `persistent`: sessions and queued messages survive a restart, so a
    /// subscriber with a persistent session misses nothing while it reconnects.
    pub async fn start(dir: &Path, persistent: bool) -> Self {
        Self::start_on(dir, free_port(), persistent).await
    }

    /// A broker on a port chosen before it starts (a gateway was configured with it).
    pub async fn start_on(dir: &Path, port: u16, persistent: bool) -> Self {
        let state = dir.join(format!("mosquitto-{port}"));
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence {persistent}\npersistence_location {}/\n",
            state.display()
        );
        Self::with_config(dir, port, &conf).await
    }

    /// A broker with listeners and options of the caller's; `port` is the one to wait for.
    pub async fn with_config(dir: &Path, port: u16, conf: &str) -> Self {
        let dir = dir.join(format!("mosquitto-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        // Stay root when started as root, so the broker can write its state
        // into the test's private directory; keep every queued QoS 1 message.
        let common = "user root\nmax_queued_messages 0\nmax_inflight_messages 0\n";
        std::fs::write(dir.join("mosquitto.conf"), format!("{common}{conf}")).unwrap();
        let mut broker = Self {
            port,
            dir,
            child: None,
        };
        broker.resume().await;
        broker
    }

    pub async fn resume(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(Peer(child));
        wait_for_port(self.port, "mosquitto").await;
    }

    /// Stops the broker the way an operator would (SIGTERM), saving its state if persistent.
    pub async fn stop(&mut self) {
        let mut peer = self.child.take().expect("broker running");
        signal(&peer.0, "TERM");
        let _ = tokio::task::spawn_blocking(move || {
            let _ = peer.0.wait();
            drop(peer);
        })
        .await;
    }
}

fn mosquitto_bin() -> &'static str {
    for candidate in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        if Path::new(candidate).exists() {
            return candidate;
        }
    }
    panic!("mosquitto not found: install the test peers with `.ci/install-peers`")
}

/// A pymodbus device at `endpoint`; both are described in tests/peers/modbus_server.py.
fn modbus_server(endpoint: String, spec: &Value) -> Peer {
    let child = Command::new(python())
        .arg(repo_root().join("tests/peers/modbus_server.py"))
        .arg(endpoint)
        .arg(spec.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("start pymodbus");
    Peer(child)
}

/// A Modbus TCP device on `port` (one that was stopped, back again).
pub async fn modbus_device_on(port: u16, spec: &Value) -> Peer {
    let peer = modbus_server(port.to_string(), spec);
    wait_for_port(port, "pymodbus").await;
    peer
}

/// A Modbus TCP device on a free port.
pub async fn modbus_device(spec: Value) -> (Peer, u16) {
    let port = free_port();
    let peer = modbus_server(port.to_string(), &spec);
    wait_for_port(port, "pymodbus").await;
    (peer, port)
}

/// A pymodbus device speaking Modbus RTU on the serial port `path`.
pub fn modbus_rtu_device(path: &Path, spec: Value) -> Peer {
    modbus_server(format!("rtu:{}", path.display()), &spec)
}

/// A pymodbus device answering Modbus RTU frames on a TCP port, like a
/// serial-to-Ethernet converter with slaves behind it.
pub async fn modbus_rtu_over_tcp_device(spec: Value) -> (Peer, u16) {
    let port = free_port();
    let peer = modbus_server(format!("rtu-over-tcp:{port}"), &spec);
    wait_for_port(port, "pymodbus").await;
    (peer, port)
}

/// Two serial ports wired to each other by socat: `kite_end` for Kite,
/// `device_end` for the device. Stopping it makes both ports disappear, as
/// an unplugged USB adapter does.
pub struct SerialPair {
    pub kite_end: PathBuf,
    pub device_end: PathBuf,
    socat: Option<Peer>,
}

impl SerialPair {
    pub async fn start(dir: &Path, name: &str) -> Self {
        let mut pair = Self {
            kite_end: dir.join(format!("{name}-kite")),
            device_end: dir.join(format!("{name}-device")),
            socat: None,
        };
        pair.plug_in().await;
        pair
    }

    pub async fn plug_in(&mut self) {
        assert!(self.socat.is_none());
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", self.kite_end.display()))
            .arg(format!("pty,raw,echo=0,link={}", self.device_end.display()))
            .stderr(Stdio::null())
            .spawn()
            .expect("socat not found: install the test peers with `.ci/install-peers`");
        self.socat = Some(Peer(child));
        let (a, b) = (self.kite_end.clone(), self.device_end.clone());
        wait_until("socat created the serial pair", || a.exists() && b.exists()).await;
    }

    pub async fn unplug(&mut self) {
        drop(self.socat.take());
        let (a, b) = (self.kite_end.clone(), self.device_end.clone());
        wait_until("the serial pair is gone", || !a.exists() && !b.exists()).await;
    }
}

/// The `kite` daemon, run from its binary with a config written to `dir`.
pub struct Kite {
    pub dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
}

impl Kite {
    pub fn config_path(dir: &Path) -> PathBuf {
        dir.join("kite.toml")
    }

    /// Starts the binary `bin` with `config`.
    pub fn start(bin: &Path, dir: &Path, config: &str) -> Self {
        Self::start_with_env(bin, dir, config, &[])
    }

    pub fn start_with_env(bin: &Path, dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        std::fs::write(Self::config_path(dir), config).unwrap();
        let mut kite = Self {
            dir: dir.to_path_buf(),
            bin: bin.to_path_buf(),
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        kite.restart();
        kite
    }

    /// `GET path` on the gateway's HTTP API (port from its config), with an
    /// optional bearer token; the status code and the body.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, String) {
        let config = std::fs::read_to_string(Self::config_path(&self.dir)).unwrap();
        let port: u16 = config
            .lines()
            .find_map(|line| line.strip_prefix("listen = \""))
            .and_then(|address| {
                address
                    .trim_end_matches('"')
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .expect("http.listen in the config");
        wait_for_port(port, "kite's HTTP API").await;
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let code = response
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }

    /// `GET path` on the API, as JSON; it must answer 200.
    pub async fn api(&self, path: &str) -> Value {
        let (code, body) = self.http("GET", path, None, "").await;
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// `GET path` on the API until its JSON satisfies `condition`; that document.
    pub async fn api_until(
        &self,
        path: &str,
        what: &str,
        condition: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let document = self.api(path).await;
            if condition(&document) {
                return document;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}: {document}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("kite.log"))
            .unwrap();
        // systemd names the service's own pid in WATCHDOG_PID; a shell that
        // execs kite knows it in advance.
        let mut command = if self.env.iter().any(|(k, _)| k == "WATCHDOG_USEC") {
            let mut shell = Command::new("sh");
            shell
                .args(["-c", "export WATCHDOG_PID=$$; exec \"$0\" \"$@\""])
                .arg(&self.bin);
            shell
        } else {
            Command::new(&self.bin)
        };
        let child = command
            .args(["run", "--config"])
            .arg(Self::config_path(&self.dir))
            .env("KITE_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start kite");
        self.child = Some(child);
    }

    /// SIGHUP: read the config again.
    pub fn hangup(&self) {
        signal(self.child.as_ref().expect("kite running"), "HUP");
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("kite running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub async fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("kite running");
        signal(&child, "TERM");
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kite.log")).unwrap_or_default()
    }

    /// The buffer as seen beside the running daemon.
    /// A number the buffer file answers to `sql` (one value), read beside
    /// the running daemon; 0 while there is no buffer yet.
    pub fn buffer_number(&self, sql: &str) -> i64 {
        rusqlite::Connection::open_with_flags(
            self.dir.join("data/buffer.sqlite3"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|conn| conn.query_row(sql, [], |r| r.get(0)))
        .unwrap_or(0)
    }

    /// A text the buffer file answers to `sql` (one value).
    pub fn buffer_text(&self, sql: &str) -> String {
        rusqlite::Connection::open_with_flags(
            self.dir.join("data/buffer.sqlite3"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|conn| conn.query_row(sql, [], |r| r.get(0)))
        .expect("the buffer answers")
    }

    /// The read times of the telemetry rows buffered now, oldest first.
    pub fn buffered_timestamps(&self) -> Vec<i64> {
        let conn = rusqlite::Connection::open_with_flags(
            self.dir.join("data/buffer.sqlite3"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("the buffer file");
        let mut select = conn
            .prepare("SELECT ts FROM messages WHERE kind = 0 ORDER BY seq")
            .unwrap();
        let rows = select.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }

    pub fn buffer(&self) -> BufferCounts {
        let path = self.dir.join("data/buffer.sqlite3");
        let Ok(conn) = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return BufferCounts::default();
        };
        let (rows, newest): (i64, i64) = conn
            .query_row(
                "SELECT count(*), coalesce(max(seq), 0) FROM messages",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap_or((0, 0));
        let dropped: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'dropped'", [], |r| {
                r.get(0)
            })
            .unwrap_or(0);
        BufferCounts {
            rows: rows as u64,
            dropped: dropped as u64,
            newest: newest as u64,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct BufferCounts {
    pub rows: u64,
    pub dropped: u64,
    /// The highest seq still buffered.
    pub newest: u64,
}

impl Drop for Kite {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- kite log ---\n{}", self.log());
        }
    }
}

/// `kite reload` with the binary `bin`, for the gateway running in `dir`.
pub fn kite_reload(bin: &Path, dir: &Path) -> std::process::Output {
    Command::new(bin)
        .args(["reload", "--config"])
        .arg(Kite::config_path(dir))
        .output()
        .unwrap()
}

/// A gateway config for `dir`, with `devices` (TOML) appended.
pub fn kite_config(dir: &Path, gateway_id: &str, mqtt_port: u16, extra: &str) -> String {
    format!(
        "[gateway]\nid = \"{gateway_id}\"\ndata_dir = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{}\"\n\n[mqtt]\nurl = \"mqtt://127.0.0.1:{mqtt_port}\"\nclient_id = \"kite-{gateway_id}-{mqtt_port}\"\nflush_timeout = \"2s\"\n\n{extra}",
        dir.join("data").display(),
        free_port()
    )
}

/// An MQTT subscriber that collects everything under a filter.
pub struct Subscriber {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<(String, Value)>,
}

impl Subscriber {
    /// Connects and returns once the subscription is acknowledged. With
    /// `persistent`, the broker keeps the session across reconnects.
    pub async fn connect(port: u16, filter: &str, client_id: &str, persistent: bool) -> Self {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(!persistent)
            .set_max_packet_size(16 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let (tx, messages) = mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        let _ = subscribed_tx.send(true);
                    }
                    Ok(Event::Incoming(Incoming::Publish(publish))) => {
                        let payload =
                            serde_json::from_slice(&publish.payload).unwrap_or_else(|_| {
                                Value::String(String::from_utf8_lossy(&publish.payload).into())
                            });
                        if tx.send((publish.topic.to_string(), payload)).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(PATIENCE, subscribed.wait_for(|done| *done))
            .await
            .expect("subscription acknowledged")
            .unwrap();
        Self { client, messages }
    }

    /// The next message whose topic is `topic` and that satisfies `accept`.
    pub async fn next_on(&mut self, topic: &str, mut accept: impl FnMut(&Value) -> bool) -> Value {
        let found = tokio::time::timeout(PATIENCE, async {
            loop {
                let (got, payload) = self.messages.recv().await.expect("subscriber running");
                if got == topic && accept(&payload) {
                    return payload;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no matching message on {topic} within {PATIENCE:?}"))
    }

    /// The next message on any topic.
    pub async fn next_message(&mut self) -> (String, Value) {
        tokio::time::timeout(PATIENCE, self.messages.recv())
            .await
            .unwrap_or_else(|_| panic!("no message within {PATIENCE:?}"))
            .expect("subscriber running")
    }

    pub async fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Reads telemetry on `topic` until a message with `seq >= last` arrives;
    /// returns every seq in arrival order.
    pub async fn seqs_until(&mut self, topic: &str, last: u64) -> Vec<u64> {
        let mut seqs = Vec::new();
        loop {
            let message = self.next_on(topic, |_| true).await;
            let seq = message["seq"].as_u64().expect("seq");
            seqs.push(seq);
            if seq >= last {
                return seqs;
            }
        }
    }
}

/// Checks that the seqs, read in arrival order, cover `first..=last` with no
/// gap, each new seq arriving right after the highest seen so far (a
/// resend may repeat older ones).
pub fn assert_complete_in_order(seqs: &[u64], first: u64, last: u64) {
    let mut highest = first - 1;
    for &seq in seqs {
        if seq > highest {
            assert_eq!(
                seq,
                highest + 1,
                "gap: {seq} arrived after {highest} (seqs: {seqs:?})"
            );
            highest = seq;
        }
    }
    assert!(highest >= last, "stopped at {highest}, wanted {last}");
}

/// A TCP proxy between the gateway and the broker, whose link can be cut
/// or slowed down.
pub struct Proxy {
    pub port: u16,
    up: watch::Sender<bool>,
}

impl Proxy {
    pub async fn start(target: u16) -> Self {
        Self::start_throttled(target, None).await
    }

    /// With `upstream_bytes_per_10ms`, the gateway-to-broker direction
    /// carries at most that many bytes every 10 ms: a slow uplink.
    pub async fn start_throttled(target: u16, upstream_bytes_per_10ms: Option<usize>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, up_rx) = watch::channel(true);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut up = up_rx.clone();
                if !*up.borrow() {
                    let _ = inbound.shutdown().await;
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (mut from_gateway, mut to_gateway) = inbound.into_split();
                    let (mut from_broker, mut to_broker) = outbound.into_split();
                    let upstream = async {
                        let mut chunk = vec![0; upstream_bytes_per_10ms.unwrap_or(64 << 10)];
                        loop {
                            let n = from_gateway.read(&mut chunk).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            to_broker.write_all(&chunk[..n]).await?;
                            if upstream_bytes_per_10ms.is_some() {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    };
                    tokio::select! {
                        _ = upstream => {}
                        _ = tokio::io::copy(&mut from_broker, &mut to_gateway) => {}
                        _ = up.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { port, up }
    }

    /// Closes every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}
