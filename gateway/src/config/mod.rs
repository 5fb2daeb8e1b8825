//! The one place that reads Kite's TOML configuration.
//!
//! Two steps: [`parse`] turns the text into a typed [`Config`] without
//! touching any file (strict: unknown keys are errors, and every mistake
//! TOML cannot see, such as duplicate names, register ranges past 65535 or
//! a type that does not fit its area, is reported with its file, line and
//! column, all of them, not just the first); [`resolve`] then reads the
//! files the config names (password, token, TLS, trusted keys) and checks
//! the plug-ins it names exist. [`load`] does both, for `kite check`,
//! `kite run` and every reload alike. [`locate`] reads only where the
//! buffer and the local API are, for tools that must work when the rest of
//! a config is broken. README.md documents every key and default.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kite_modbus::BusSpec;
use kite_plugins::{Limits, Pattern, Trust};
use toml::Spanned;

mod devices;
mod file_ref;
mod locate;
mod parse;
mod resolve;
mod secrets;
mod tls;
mod units;

pub use devices::{
    BleConfig, BleDecoder, BleDeviceConfig, Decode, InstrumentConfig, ZigbeeCodec, ZigbeeConfig,
};
pub use locate::{locate, Location};
pub(crate) use resolve::parse_key;
pub use secrets::Secret;
pub use tls::{Certificate, Tls, TlsFiles};
pub use units::{parse_duration, parse_size};

/// Largest MQTT message unless `mqtt.max_message_bytes` says otherwise: what
/// common cloud brokers accept.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 << 10;

/// Where the local HTTP API listens unless `http.listen` says otherwise.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9870";

/// Topic levels under the gateway that belong to Kite, so no device may take them.
const RESERVED_DEVICE_NAMES: &[&str] = &["status", "events", "ble", "zigbee"];

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub mqtt: MqttConfig,
    pub buffer: crate::store::Settings,
    pub http: HttpConfig,
    /// Modbus devices, grouped by the link (connection, line, converter) that polls them.
    pub modbus: Vec<BusSpec>,
    pub instruments: Vec<InstrumentConfig>,
    /// BLE scanning, when `[ble]` or a BLE device is configured.
    pub ble: Option<BleConfig>,
    /// The Zigbee coordinator and its devices, when `[zigbee]` is configured.
    pub zigbee: Option<ZigbeeConfig>,
    pub plugins: Vec<PluginConfig>,
    pub plugin_trust: Trust,
    /// Points reported by exception, by device and point name.
    pub reports: kite_core::ReportRules,
    /// Things that work but deserve a second look (plaintext MQTT off the host, say).
    pub warnings: Vec<String>,
}

impl Config {
    pub fn device_count(&self) -> usize {
        self.modbus
            .iter()
            .map(|bus| bus.devices.len())
            .sum::<usize>()
            + self.instruments.len()
            + self.ble.as_ref().map_or(0, |ble| ble.devices.len())
            + self
                .zigbee
                .as_ref()
                .map_or(0, |zigbee| zigbee.devices.len())
    }
}

/// One WASM plug-in.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub name: String,
    pub path: PathBuf,
    pub inputs: Vec<Pattern>,
    pub limits: Limits,
    /// The `config` table, as JSON for the plug-in's `init`.
    pub config_json: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    pub id: String,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Read and parsed when the config is loaded.
    pub tls: Option<Tls>,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub topic_prefix: String,
    pub keep_alive: Duration,
    pub max_inflight: u16,
    pub flush_timeout: Duration,
    /// The retained status is refreshed this often, so buffer depth, drops
    /// and device health stay visible.
    pub status_interval: Duration,
    /// Largest MQTT message (topic and payload) Kite stores or publishes.
    pub max_message_bytes: usize,
    pub replay: Replay,
    pub json: JsonLayout,
    /// Set with `format = "sparkplug"`: telemetry goes as a Sparkplug B
    /// edge node instead of Kite's JSON.
    pub sparkplug: Option<SparkplugConfig>,
    /// Set with `version = 5`: MQTT 5 instead of 3.1.1.
    pub v5: Option<Mqtt5>,
}

/// What MQTT 5 adds (`mqtt.version = 5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mqtt5 {
    /// How long the broker keeps the session (subscriptions, and the
    /// commands sent meanwhile) after a disconnect; zero: none, each
    /// connection starts clean.
    pub session_expiry: Duration,
    /// How long telemetry may wait at the broker before it is dropped as stale.
    pub message_expiry: Option<Duration>,
}

/// The Sparkplug B edge node (`[sparkplug]`, with `mqtt.format = "sparkplug"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkplugConfig {
    pub group_id: String,
    /// `gateway.id` unless set.
    pub edge_node_id: String,
    /// Data is held while this host application's STATE says offline.
    pub primary_host_id: Option<String>,
}

/// The layout of telemetry messages (`mqtt.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonLayout {
    /// `{"seq","ts","device","points":{name: {"value","quality","unit"}}}`.
    #[default]
    Full,
    /// `{"seq","ts","device","values","bad"}`, units in `{device}/meta`.
    Compact,
}

impl MqttConfig {
    /// The certificates of its TLS files, for their expiry.
    pub fn certificates(&self) -> Vec<Certificate> {
        self.tls
            .as_ref()
            .map(|tls| tls.certificates.clone())
            .unwrap_or_default()
    }

    /// What to say at `now_ms` of the certificates about to expire.
    pub fn certificate_warnings(&self, now_ms: i64) -> impl Iterator<Item = String> + '_ {
        let certificates = self.tls.iter().flat_map(|tls| &tls.certificates);
        certificates.filter_map(move |certificate| certificate.warning(now_ms))
    }
}

/// How a backlog goes out once the broker is back (`mqtt.replay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Oldest first, live rows after the backlog.
    InOrder,
    /// Live rows at once, the backlog behind them, marked historical.
    LiveFirst { rows_per_second: Option<u32> },
}

/// The local HTTP API (health, metrics, status).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpConfig {
    /// `None`: no API.
    pub listen: Option<std::net::SocketAddr>,
    /// Required for everything but `/healthz` when set.
    pub token: Option<Secret>,
}

/// Every problem found in one config file.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

#[derive(Debug)]
pub struct Problem {
    /// 1-based; 0 when the problem is not tied to one place (an unreadable file).
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub source_line: Option<String>,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if problem.line == 0 {
                write!(f, "{}: {}", self.file.display(), problem.message)?;
                continue;
            }
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                problem.line,
                problem.column,
                problem.message
            )?;
            if let Some(text) = &problem.source_line {
                let gutter = problem.line.to_string().len();
                write!(
                    f,
                    "\n{:gutter$} |\n{} | {}\n{:gutter$} | {:>col$}",
                    "",
                    problem.line,
                    text,
                    "",
                    "^",
                    col = problem.column.max(1)
                )?;
            }
        }
        Ok(())
    }
}

/// Reads the config file at `path`, parses it and resolves the files it names.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read(path)?;
    from_text(&text, path)
}

/// Parses config text and resolves the files it names; `path` names it in
/// errors and anchors relative paths.
pub fn from_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let mut report = Report::new(text);
    let mut config = parse(text, path, &mut report);
    if let Some((config, files)) = &mut config {
        resolve::resolve(config, std::mem::take(files), &mut report);
    }
    report.finish(config.map(|(config, _)| config), path)
}

/// The text as a typed config, and the files it names, without reading
/// any; `None` when the text is not TOML of the expected shape at all.
fn parse(text: &str, path: &Path, report: &mut Report<'_>) -> Option<(Config, resolve::Files)> {
    let raw: parse::RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            report.push(e.span().unwrap_or(0..0), e.message().trim_end().to_string());
            return None;
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    Some(raw.build(report, base))
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            line: 0,
            column: 0,
            message: format!("cannot read the file: {e}"),
            source_line: None,
        }],
    })
}

/// The problems found in one text, with their places.
struct Report<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl<'a> Report<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            problems: Vec::new(),
        }
    }

    /// `value` if no problem was found, else every problem.
    fn finish<T>(self, value: Option<T>, path: &Path) -> Result<T, ConfigError> {
        match value {
            Some(value) if self.problems.is_empty() => Ok(value),
            _ => Err(self.into_error(path)),
        }
    }

    /// A problem at `span`; `0..0` (the span of a default value, or of a
    /// rule about the whole file) has no position in the text.
    fn push(&mut self, span: Range<usize>, message: String) {
        if span == (0..0) {
            self.problems.push(Problem {
                line: 0,
                column: 0,
                message,
                source_line: None,
            });
            return;
        }
        let start = span.start.min(self.text.len());
        let before = &self.text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        let source_line = self.text[line_start..].lines().next().map(str::to_string);
        self.problems.push(Problem {
            line,
            column,
            message,
            source_line,
        });
    }

    fn into_error(self, path: &Path) -> ConfigError {
        ConfigError {
            file: path.to_path_buf(),
            problems: self.problems,
        }
    }
}

/// Names that become MQTT topic levels must be one non-empty level without wildcards.
fn check_topic_level(report: &mut Report<'_>, name: &Spanned<String>, what: &str) {
    let value = name.get_ref();
    if value.is_empty() || value.contains(['/', '+', '#', '\0']) {
        report.push(
            name.span(),
            format!("{what} {value:?} must be a non-empty name without '/', '+' or '#' (it is a topic level)"),
        );
    }
}

#[cfg(test)]
mod tests;
