//! The one place that reads Kite's TOML configuration.
//!
//! Parsing is strict: unknown keys are errors, and every error names the
//! file, line and column and what was expected. After parsing, the whole
//! file is checked for mistakes TOML cannot see (duplicate names, register
//! ranges past 65535, a type that does not fit its area), and every one of
//! them is reported, not just the first. The raw structs are the factories
//! of the validated [`Config`] the daemon runs on; README.md documents every
//! key and default.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kite_modbus::BusSpec;
use kite_plugins::{Limits, Pattern, Trust};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

mod devices;
mod tls;

pub use devices::{Decode, InstrumentConfig};
use devices::{RawBus, RawDevice};
pub use tls::{Tls, TlsFiles};

/// Largest MQTT message unless `mqtt.max_message_bytes` says otherwise: what
/// common cloud brokers accept.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 << 10;

/// Topic levels under the gateway that belong to Kite, so no device may take them.
const RESERVED_DEVICE_NAMES: &[&str] = &["status", "events"];

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub mqtt: MqttConfig,
    pub buffer: BufferConfig,
    pub http: HttpConfig,
    /// Modbus devices, grouped by the link (connection, line, converter) that polls them.
    pub modbus: Vec<BusSpec>,
    pub instruments: Vec<InstrumentConfig>,
    pub plugins: Vec<PluginConfig>,
    pub plugin_trust: Trust,
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
    pub password: Option<String>,
    pub topic_prefix: String,
    pub keep_alive: Duration,
    pub max_inflight: u16,
    pub flush_timeout: Duration,
    /// The retained status is refreshed this often, so buffer depth, drops
    /// and device health stay visible.
    pub status_interval: Duration,
    /// Largest MQTT message (topic and payload) Kite stores or publishes.
    pub max_message_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// WAL with synchronous=NORMAL: survives a crash of the process; a power
    /// cut may lose the last commits but never corrupts the buffer.
    Normal,
    /// WAL with synchronous=FULL: every commit is fsynced.
    Full,
}

/// The local HTTP API (health, metrics, status).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConfig {
    /// `None`: no API.
    pub listen: Option<std::net::SocketAddr>,
    /// Required for everything but `/healthz` when set.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BufferConfig {
    pub max_bytes: u64,
    pub durability: Durability,
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

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            line: 0,
            column: 0,
            message: format!("cannot read the file: {e}"),
            source_line: None,
        }],
    })?;
    parse(&text, path)
}

/// Parses and validates config text; `path` names it in errors and anchors
/// relative paths (password_file, TLS files).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let mut report = Report {
        text,
        problems: Vec::new(),
    };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            report.push(e.span().unwrap_or(0..0), e.message().trim_end().to_string());
            return Err(report.into_error(path));
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let config = raw.build(&mut report, base);
    if report.problems.is_empty() {
        Ok(config)
    } else {
        Err(report.into_error(path))
    }
}

struct Report<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Report<'_> {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    mqtt: RawMqtt,
    #[serde(default)]
    buffer: RawBuffer,
    #[serde(default)]
    buses: Vec<RawBus>,
    #[serde(default)]
    devices: Vec<RawDevice>,
    #[serde(default)]
    plugins: Vec<RawPlugin>,
    #[serde(default)]
    plugin_trust: RawTrust,
    #[serde(default)]
    http: RawHttp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_http_listen")]
    listen: Spanned<String>,
    token_file: Option<Spanned<PathBuf>>,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_http_listen(),
            token_file: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_http_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:9870".to_string())
}

impl RawHttp {
    fn build(self, report: &mut Report<'_>, base: &Path) -> HttpConfig {
        let token = self.token_file.as_ref().and_then(|file| {
            let path = base.join(file.get_ref());
            match std::fs::read_to_string(&path) {
                Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
                Ok(_) => {
                    report.push(
                        file.span(),
                        format!("http.token_file {} is empty", path.display()),
                    );
                    None
                }
                Err(e) => {
                    report.push(
                        file.span(),
                        format!("http.token_file {}: {e}", path.display()),
                    );
                    None
                }
            }
        });
        if !self.enabled {
            return HttpConfig {
                listen: None,
                token,
            };
        }
        let listen = match self.listen.get_ref().parse::<std::net::SocketAddr>() {
            Ok(listen) => listen,
            Err(_) => {
                report.push(
                    self.listen.span(),
                    format!(
                        "http.listen {:?}: expected ip:port, like \"127.0.0.1:9870\"",
                        self.listen.get_ref()
                    ),
                );
                return HttpConfig {
                    listen: None,
                    token,
                };
            }
        };
        if !listen.ip().is_loopback() && self.token_file.is_none() {
            report.push(
                self.listen.span(),
                "http.listen off loopback needs http.token_file: metrics and status would be open to the network".into(),
            );
        }
        HttpConfig {
            listen: Some(listen),
            token,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrust {
    #[serde(default)]
    require_signed: bool,
    #[serde(default)]
    trusted_keys: Vec<Spanned<PathBuf>>,
}

impl RawTrust {
    fn build(self, report: &mut Report<'_>, base: &Path) -> Trust {
        let keys: Vec<_> = self
            .trusted_keys
            .iter()
            .filter_map(|path| {
                match kite_plugins::signing::read_public_key(&base.join(path.get_ref())) {
                    Ok(key) => Some(key),
                    Err(e) => {
                        report.push(path.span(), format!("plugin_trust.trusted_keys: {e}"));
                        None
                    }
                }
            })
            .collect();
        if self.require_signed && self.trusted_keys.is_empty() {
            report.push(
                0..0,
                "plugin_trust.require_signed needs at least one of plugin_trust.trusted_keys"
                    .into(),
            );
        }
        Trust {
            keys: keys.into(),
            require_signed: self.require_signed,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: Spanned<String>,
    path: Spanned<PathBuf>,
    inputs: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_memory_limit")]
    memory_limit: Spanned<ByteSize>,
    #[serde(default = "default_time_limit")]
    time_limit: Spanned<Interval>,
    #[serde(default = "default_state_limit")]
    state_limit: Spanned<ByteSize>,
    #[serde(default)]
    config: toml::Table,
}

fn default_memory_limit() -> Spanned<ByteSize> {
    Spanned::new(0..0, ByteSize(Limits::default().memory_bytes as u64))
}

fn default_time_limit() -> Spanned<Interval> {
    Spanned::new(0..0, Interval(Limits::default().time))
}

fn default_state_limit() -> Spanned<ByteSize> {
    Spanned::new(0..0, ByteSize(Limits::default().state_bytes))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    id: Spanned<String>,
    data_dir: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    url: Spanned<String>,
    client_id: Option<Spanned<String>>,
    username: Option<String>,
    password_file: Option<Spanned<PathBuf>>,
    ca_file: Option<Spanned<PathBuf>>,
    cert_file: Option<Spanned<PathBuf>>,
    key_file: Option<Spanned<PathBuf>>,
    #[serde(default = "default_topic_prefix")]
    topic_prefix: Spanned<String>,
    #[serde(default = "default_keep_alive")]
    keep_alive: Spanned<Interval>,
    #[serde(default = "default_max_inflight")]
    max_inflight: Spanned<u16>,
    #[serde(default = "default_flush_timeout")]
    flush_timeout: Interval,
    #[serde(default = "default_status_interval")]
    status_interval: Spanned<Interval>,
    #[serde(default = "default_max_message_bytes")]
    max_message_bytes: Spanned<ByteSize>,
    /// Allows plaintext `mqtt://` to a broker off this host.
    #[serde(default)]
    insecure: bool,
}

fn default_max_message_bytes() -> Spanned<ByteSize> {
    Spanned::new(0..0, ByteSize(DEFAULT_MAX_MESSAGE_BYTES as u64))
}

fn default_topic_prefix() -> Spanned<String> {
    Spanned::new(0..0, "kite".to_string())
}

fn default_keep_alive() -> Spanned<Interval> {
    Spanned::new(0..0, Interval(Duration::from_secs(30)))
}

fn default_max_inflight() -> Spanned<u16> {
    Spanned::new(0..0, 64)
}

fn default_status_interval() -> Spanned<Interval> {
    Spanned::new(0..0, Interval(Duration::from_secs(30)))
}

fn default_flush_timeout() -> Interval {
    Interval(Duration::from_secs(5))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBuffer {
    #[serde(default = "default_max_bytes")]
    max_bytes: Spanned<ByteSize>,
    #[serde(default = "default_durability")]
    durability: Durability,
}

impl Default for RawBuffer {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            durability: default_durability(),
        }
    }
}

fn default_max_bytes() -> Spanned<ByteSize> {
    Spanned::new(0..0, ByteSize(256 << 20))
}

fn default_durability() -> Durability {
    Durability::Normal
}

impl RawConfig {
    fn build(self, report: &mut Report<'_>, base: &Path) -> Config {
        let mut warnings = Vec::new();
        check_topic_level(report, &self.gateway.id, "gateway.id");
        let mqtt = self
            .mqtt
            .build(report, base, &self.gateway.id, &mut warnings);
        if self.buffer.max_bytes.get_ref().0 < 64 << 10 {
            report.push(
                self.buffer.max_bytes.span(),
                "buffer.max_bytes must be at least 64KiB".into(),
            );
        }
        let devices = devices::build(self.buses, self.devices, base, report, &mut warnings);
        let device_names = devices.names;
        let mut plugin_names = HashSet::new();
        let plugins = self
            .plugins
            .into_iter()
            .map(|plugin| {
                if !plugin_names.insert(plugin.name.get_ref().clone()) {
                    report.push(
                        plugin.name.span(),
                        format!("duplicate plug-in name {:?}", plugin.name.get_ref()),
                    );
                }
                plugin.build(report, base, &device_names)
            })
            .collect();
        Config {
            plugins,
            plugin_trust: self.plugin_trust.build(report, base),
            http: self.http.build(report, base),
            gateway: GatewayConfig {
                id: self.gateway.id.into_inner(),
                data_dir: self.gateway.data_dir,
            },
            mqtt,
            buffer: BufferConfig {
                max_bytes: self.buffer.max_bytes.into_inner().0,
                durability: self.buffer.durability,
            },
            modbus: devices.modbus,
            instruments: devices.instruments,
            warnings,
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

impl RawMqtt {
    fn build(
        self,
        report: &mut Report<'_>,
        base: &Path,
        gateway_id: &Spanned<String>,
        warnings: &mut Vec<String>,
    ) -> MqttConfig {
        let (tls, host, port) = match parse_url(self.url.get_ref()) {
            Ok(parts) => parts,
            Err(message) => {
                report.push(self.url.span(), message);
                (false, String::new(), 0)
            }
        };
        let is_loopback =
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !tls && !host.is_empty() && !is_loopback {
            if self.insecure {
                warnings.push(format!(
                    "mqtt.url sends telemetry and credentials in plaintext to {host} (mqtt.insecure = true)"
                ));
            } else {
                report.push(
                    self.url.span(),
                    format!(
                        "mqtt.url {:?} would send telemetry, commands and credentials in plaintext to {host}: \
                         use mqtts://, or set mqtt.insecure = true to accept that",
                        self.url.get_ref()
                    ),
                );
            }
        }
        let mut existing_file = |file: Option<Spanned<PathBuf>>, key: &str| {
            let file = file?;
            let resolved = base.join(file.get_ref());
            if !resolved.is_file() {
                report.push(
                    file.span(),
                    format!("mqtt.{key}: no such file {}", resolved.display()),
                );
                return None;
            }
            Some((resolved, file.span()))
        };
        let password_path = existing_file(self.password_file, "password_file");
        let ca_span = self.ca_file.as_ref().map(Spanned::span);
        let cert_span = self.cert_file.as_ref().map(Spanned::span);
        let key_span = self.key_file.as_ref().map(Spanned::span);
        let ca_file = existing_file(self.ca_file, "ca_file");
        let cert_file = existing_file(self.cert_file, "cert_file");
        let key_file = existing_file(self.key_file, "key_file");
        // Missing files are reported above; only files that are all there are parsed.
        let mut usable = ca_span.is_none() || ca_file.is_some();
        let client_auth = match (cert_file, key_file) {
            (Some((cert, _)), Some((key, _))) => Some((cert, key)),
            _ => {
                if cert_span.is_some() != key_span.is_some() {
                    report.push(
                        cert_span.clone().or(key_span.clone()).unwrap_or(0..0),
                        "mqtt.cert_file and mqtt.key_file go together: give both or neither".into(),
                    );
                }
                usable &= cert_span.is_none() && key_span.is_none();
                None
            }
        };
        let ca_file = ca_file.map(|(path, _)| path);
        if !tls && (ca_span.is_some() || cert_span.is_some() || key_span.is_some()) {
            report.push(
                self.url.span(),
                "TLS files are set but the url is not mqtts://".into(),
            );
        }
        let tls = if tls && usable {
            let files = TlsFiles {
                ca_file,
                client_auth,
            };
            match tls::load(files) {
                Ok(settings) => Some(settings),
                Err(problem) => {
                    let span = match problem.file {
                        Some(tls::TlsFile::Ca) => ca_span,
                        Some(tls::TlsFile::Cert) => cert_span,
                        Some(tls::TlsFile::Key) => key_span,
                        None => None,
                    };
                    report.push(span.unwrap_or(self.url.span()), problem.message);
                    None
                }
            }
        } else {
            None
        };
        let password =
            password_path.and_then(|(path, span)| match std::fs::read_to_string(&path) {
                Ok(text) => Some(text.trim_end_matches(['\r', '\n']).to_string()),
                Err(e) => {
                    report.push(span, format!("mqtt.password_file {}: {e}", path.display()));
                    None
                }
            });
        if password.is_some() && self.username.is_none() {
            report.push(
                self.url.span(),
                "mqtt.password_file needs mqtt.username".into(),
            );
        }
        let topic_prefix = self.topic_prefix;
        let prefix = topic_prefix.get_ref();
        if prefix.is_empty()
            || prefix.contains(['+', '#', '\0'])
            || prefix.starts_with('/')
            || prefix.ends_with('/')
        {
            report.push(
                topic_prefix.span(),
                format!("mqtt.topic_prefix {prefix:?} must be non-empty, without wildcards or a leading or trailing '/'"),
            );
        }
        let client_id = self.client_id.unwrap_or_else(|| gateway_id.clone());
        if client_id.get_ref().is_empty() || client_id.get_ref().len() > 256 {
            report.push(
                client_id.span(),
                "mqtt.client_id must be 1 to 256 characters".into(),
            );
        }
        let keep_alive = self.keep_alive.get_ref().0;
        if keep_alive < Duration::from_secs(5) {
            report.push(
                self.keep_alive.span(),
                "mqtt.keep_alive must be at least 5s".into(),
            );
        }
        let max_inflight = *self.max_inflight.get_ref();
        if !(1..=1000).contains(&max_inflight) {
            report.push(
                self.max_inflight.span(),
                "mqtt.max_inflight must be 1 to 1000".into(),
            );
        }
        if self.status_interval.get_ref().0 < Duration::from_secs(1) {
            report.push(
                self.status_interval.span(),
                "mqtt.status_interval must be at least 1s".into(),
            );
        }
        let max_message_bytes = self.max_message_bytes.get_ref().0;
        if !((1 << 10)..=(16 << 20)).contains(&max_message_bytes) {
            report.push(
                self.max_message_bytes.span(),
                "mqtt.max_message_bytes must be 1KiB to 16MiB".into(),
            );
        }
        MqttConfig {
            host,
            port,
            tls,
            client_id: client_id.into_inner(),
            username: self.username,
            password,
            topic_prefix: topic_prefix.into_inner(),
            keep_alive,
            max_inflight,
            flush_timeout: self.flush_timeout.0,
            status_interval: self.status_interval.get_ref().0,
            max_message_bytes: max_message_bytes as usize,
        }
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`, IPv6 hosts in brackets.
fn parse_url(url: &str) -> Result<(bool, String, u16), String> {
    let expected = "expected mqtt://host[:port] or mqtts://host[:port]";
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err(format!("unsupported url {url:?}: {expected}"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in {url:?}: {expected}"))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?']) {
        return Err(format!("bad host in {url:?}: {expected}"));
    }
    let port = match port {
        None => default_port,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("bad port in {url:?}: {expected}"))?,
    };
    Ok((tls, host.to_string(), port))
}

impl RawPlugin {
    fn build(
        self,
        report: &mut Report<'_>,
        base: &Path,
        device_names: &HashSet<String>,
    ) -> PluginConfig {
        check_topic_level(report, &self.name, "plug-in name");
        let name = self.name.get_ref();
        if RESERVED_DEVICE_NAMES.contains(&name.as_str()) || device_names.contains(name) {
            report.push(
                self.name.span(),
                format!("plug-in name {name:?} is taken: its derived readings are published as a device of that name"),
            );
        }
        let path = base.join(self.path.get_ref());
        if !path.is_file() {
            report.push(
                self.path.span(),
                format!("no such plug-in file {}", path.display()),
            );
        }
        if self.inputs.get_ref().is_empty() {
            report.push(
                self.inputs.span(),
                "inputs must name at least one device/point pattern".into(),
            );
        }
        let inputs = self
            .inputs
            .into_inner()
            .into_iter()
            .filter_map(|input| match Pattern::parse(input.get_ref()) {
                Ok(pattern) => Some(pattern),
                Err(e) => {
                    report.push(input.span(), e.to_string());
                    None
                }
            })
            .collect();
        let memory = self.memory_limit.get_ref().0;
        if !((1 << 20)..=(4 << 30)).contains(&memory) {
            report.push(
                self.memory_limit.span(),
                "memory_limit must be 1MiB to 4GiB".into(),
            );
        }
        let time = self.time_limit.get_ref().0;
        if time < Duration::from_millis(1) || time > Duration::from_secs(10) {
            report.push(
                self.time_limit.span(),
                "time_limit must be 1ms to 10s".into(),
            );
        }
        let state = self.state_limit.get_ref().0;
        if state > 16 << 20 {
            report.push(
                self.state_limit.span(),
                "state_limit must be at most 16MiB".into(),
            );
        }
        let config_json =
            serde_json::to_string(&self.config).expect("a TOML table serializes to JSON");
        PluginConfig {
            name: name.clone(),
            path,
            inputs,
            limits: Limits {
                memory_bytes: memory.min(usize::MAX as u64) as usize,
                time,
                state_bytes: state,
            },
            config_json,
        }
    }
}

/// A duration written as a number and a unit: `500ms`, `1s`, `5m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Interval(Duration);

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(Interval)
            .map_err(de::Error::custom)
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let expected = || {
        format!("invalid duration {text:?}: expected a number and a unit (ms, s, m, h), like \"500ms\" or \"1s\"")
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(expected)?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| expected())?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(expected()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| expected())
}

/// A size: bytes as an integer, or a string with a unit `B`, `KiB`, `MiB`, `GiB`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct ByteSize(u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Bytes(u64),
            Text(String),
        }
        match Either::deserialize(deserializer)? {
            Either::Bytes(n) => Ok(ByteSize(n)),
            Either::Text(text) => parse_size(&text).map(ByteSize).map_err(de::Error::custom),
        }
    }
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let expected = || {
        format!("invalid size {text:?}: expected a number and a unit (B, KiB, MiB, GiB), like \"256MiB\"")
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| expected())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(expected()),
    };
    number.checked_mul(factor).ok_or_else(expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[gateway]\nid = \"gw\"\ndata_dir = \"/tmp/kite\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1883\"\n";

    #[test]
    fn minimal_config_takes_documented_defaults() {
        let config = parse(MINIMAL, Path::new("kite.toml")).unwrap();
        assert_eq!(config.mqtt.client_id, "gw");
        assert_eq!(config.mqtt.topic_prefix, "kite");
        assert_eq!(config.mqtt.port, 1883);
        assert_eq!(config.buffer.max_bytes, 256 << 20);
        assert_eq!(config.buffer.durability, Durability::Normal);
        assert!(config.warnings.is_empty());
    }

    #[test]
    fn units_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1d").is_err());
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert!(parse_size("1TB").is_err());
    }

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse_url("mqtts://broker.example"),
            Ok((true, "broker.example".into(), 8883))
        );
        assert_eq!(
            parse_url("mqtt://[::1]:1884"),
            Ok((false, "::1".into(), 1884))
        );
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://x:0").is_err());
    }

    /// Each broken config must fail with a message that contains `expected`
    /// at `line:column`.
    fn check_error(body: &str, line: usize, expected: &str) {
        let text = format!("{MINIMAL}{body}");
        let error = parse(&text, Path::new("kite.toml")).expect_err(body);
        let rendered = error.to_string();
        assert!(
            error
                .problems
                .iter()
                .any(|p| p.line == line && p.message.contains(expected)),
            "wanted line {line} with {expected:?}, got:\n{rendered}"
        );
        assert!(rendered.starts_with("kite.toml:"), "{rendered}");
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        let device =
            "[[devices]]\nname = \"d\"\nprotocol = \"modbus-tcp\"\naddress = \"127.0.0.1:502\"\n";
        check_error(
            "[buffer]\nmax_byte = \"1MiB\"\n",
            7,
            "unknown field `max_byte`",
        );
        check_error("[buffer]\nmax_bytes = \"1 TB\"\n", 7, "invalid size");
        check_error(
            "[buffer]\ndurability = \"sometimes\"\n",
            7,
            "unknown variant `sometimes`",
        );
        check_error(
            &format!("{device}poll_interval = \"fast\"\n"),
            10,
            "invalid duration",
        );
        check_error(
            &format!("{device}protocol2 = 1\n"),
            10,
            "unknown field `protocol2`",
        );
        check_error(&format!("{device}{device}"), 11, "duplicate device name");
        check_error(
            &format!("{device}[[devices.points]]\nname = \"a\"\naddress = 0\n[[devices.points]]\nname = \"a\"\naddress = 1\n"),
            14,
            "duplicate point name",
        );
        check_error(
            &format!("{device}[[devices.points]]\nname = \"a\"\naddress = 65535\ntype = \"f32\"\n"),
            12,
            "past the last Modbus address",
        );
        check_error(
            &format!("{device}[[devices.points]]\nname = \"a\"\narea = \"coil\"\naddress = 1\ntype = \"f32\"\n"),
            13,
            "does not fit in a coil",
        );
        check_error(
            &format!("{device}[[devices.points]]\nname = \"a\"\narea = \"input\"\naddress = 1\nwritable = true\n"),
            13,
            "read-only",
        );
        check_error(
            &format!("{device}[[devices.points]]\nname = \"a\"\naddress = 70000\n"),
            12,
            "",
        );
        check_error(
            "[[devices]]\nname = \"status\"\nprotocol = \"modbus-tcp\"\naddress = \"h:1\"\n",
            7,
            "reserved",
        );
        check_error(
            "[[devices]]\nname = \"a/b\"\nprotocol = \"modbus-tcp\"\naddress = \"h:1\"\n",
            7,
            "topic level",
        );
        check_error(
            "[[devices]]\nname = \"a\"\nprotocol = \"bacnet\"\naddress = \"h:1\"\n",
            8,
            "unknown variant `bacnet`",
        );
    }

    const BUS: &str =
        "[[buses]]\nname = \"rs485\"\nport = \"/dev/ttyUSB0\"\nbaud = 9600\nparity = \"even\"\n";

    #[test]
    fn serial_mistakes_are_named_with_their_line() {
        let rtu = "[[devices]]\nname = \"m\"\nprotocol = \"modbus-rtu\"\nbus = \"rs485\"\n";
        check_error(
            "[[buses]]\nname = \"b\"\nport = \"/dev/x\"\n",
            6,
            "missing field `baud`",
        );
        check_error(&BUS.replace("9600", "9601000"), 9, "expected 50 to 4000000");
        check_error(&format!("{BUS}stop_bits = 3\n"), 11, "expected 1 or 2");
        check_error(&format!("{BUS}{BUS}"), 12, "duplicate bus name");
        check_error(
            &format!("{BUS}{}", rtu.replace("rs485", "rs232")),
            14,
            "no bus named \"rs232\"",
        );
        check_error(
            "[[devices]]\nname = \"m\"\nprotocol = \"modbus-rtu\"\n",
            7,
            "needs `bus`",
        );
        check_error(&format!("{BUS}{rtu}unit_id = 0\n"), 15, "1 to 247");
        check_error(
            &format!("{BUS}{rtu}address = \"h:1\"\n"),
            15,
            "`address` does not apply",
        );
        check_error(
            &format!("{BUS}data_bits = 7\n{rtu}"),
            11,
            "Modbus RTU needs data_bits = 8",
        );
        check_error(
            "[[devices]]\nname = \"m\"\nprotocol = \"modbus-rtu-over-tcp\"\n",
            7,
            "needs `address`",
        );
        let serial = "[[devices]]\nname = \"s\"\nprotocol = \"serial\"\nbus = \"rs485\"\n";
        check_error(&format!("{BUS}{serial}"), 12, "needs `decode`");
        check_error(
            &format!("{BUS}{rtu}{serial}decode = \"nmea\"\n"),
            18,
            "a raw instrument needs its port to itself",
        );
        check_error(
            &format!("{BUS}{serial}decode = \"regex\"\npattern = \"(?P<a>\"\n[[devices.points]]\nname = \"a\"\n"),
            16,
            "pattern:",
        );
        check_error(
            &format!("{BUS}{serial}decode = \"regex\"\npattern = \"(?P<a>x)\"\n[[devices.points]]\nname = \"b\"\n"),
            16,
            "pattern:",
        );
        check_error(
            &format!("{BUS}{serial}decode = \"nmea\"\nframing = \"fixed\"\n"),
            16,
            "needs `length`",
        );
        check_error(
            &format!("{BUS}{serial}decode = \"nmea\"\ndelimiter = \"\"\n"),
            12,
            "",
        );
        check_error(
            &format!("{BUS}{serial}decode = \"nmea\"\nunit_id = 2\n"),
            16,
            "`unit_id` does not apply",
        );
        // Keys of raw instruments are mistakes on Modbus devices, each at its line.
        let tcp = "[[devices]]\nname = \"t\"\nprotocol = \"modbus-tcp\"\naddress = \"h:1\"\n";
        for (key, value) in [
            ("length_offset", "1"),
            ("length_width", "2"),
            ("length_endian", "\"little\""),
            ("length_adjust", "-1"),
            ("max_frame", "64"),
        ] {
            check_error(
                &format!("{tcp}{key} = {value}\n"),
                10,
                &format!("`{key}` does not apply to protocol modbus-tcp"),
            );
            check_error(
                &format!("{BUS}{rtu}{key} = {value}\n"),
                15,
                &format!("`{key}` does not apply to protocol modbus-rtu"),
            );
        }
        check_error(
            "max_message_bytes = \"100B\"\n",
            6,
            "mqtt.max_message_bytes must be 1KiB to 16MiB",
        );
    }

    #[test]
    fn devices_are_grouped_by_the_link_that_polls_them() {
        let body = format!(
            "{BUS}\
             [[devices]]\nname = \"a\"\nprotocol = \"modbus-rtu\"\nbus = \"rs485\"\nunit_id = 1\n\
             [[devices]]\nname = \"b\"\nprotocol = \"modbus-rtu\"\nbus = \"rs485\"\nunit_id = 2\n\
             [[devices]]\nname = \"c\"\nprotocol = \"modbus-rtu-over-tcp\"\naddress = \"10.0.0.9:4001\"\nunit_id = 1\n\
             [[devices]]\nname = \"d\"\nprotocol = \"modbus-rtu-over-tcp\"\naddress = \"10.0.0.9:4001\"\nunit_id = 2\n\
             [[devices]]\nname = \"e\"\nprotocol = \"modbus-tcp\"\naddress = \"10.0.0.5:502\"\n\
             [[buses]]\nname = \"gps\"\nport = \"/dev/ttyS1\"\nbaud = 4800\n\
             [[devices]]\nname = \"g\"\nprotocol = \"serial\"\nbus = \"gps\"\ndelimiter = \"\\r\\n\"\ndecode = \"nmea\"\n"
        );
        let config = parse(&format!("{MINIMAL}{body}"), Path::new("kite.toml")).unwrap();
        let links: Vec<(&str, Vec<&str>)> = config
            .modbus
            .iter()
            .map(|bus| (&*bus.name, bus.devices.iter().map(|d| &*d.name).collect()))
            .collect();
        assert_eq!(
            links,
            [
                ("rs485", vec!["a", "b"]),
                ("10.0.0.9:4001", vec!["c", "d"]),
                ("e", vec!["e"])
            ]
        );
        let kite_modbus::Link::Serial(line) = &config.modbus[0].link else {
            panic!("{:?}", config.modbus[0].link)
        };
        assert_eq!(
            (line.baud, line.parity),
            (9600, kite_core::serial::Parity::Even)
        );
        assert_eq!(config.instruments.len(), 1);
        assert_eq!(config.instruments[0].decode, Decode::Nmea);
        assert_eq!(config.instruments[0].spec.line.baud, 4800);
        assert_eq!(config.device_count(), 6);
    }

    #[test]
    fn missing_sections_and_syntax_errors_have_positions() {
        let error = parse("[gateway]\nid = \"gw\"\n", Path::new("k.toml")).unwrap_err();
        assert!(error.to_string().contains("missing field"), "{error}");
        let error = parse("[gateway\n", Path::new("k.toml")).unwrap_err();
        assert_eq!(error.problems[0].line, 1);
    }

    #[test]
    fn plaintext_off_host_is_refused_unless_insecure() {
        let text = MINIMAL.replace("127.0.0.1", "broker.example");
        let error = parse(&text, Path::new("kite.toml")).unwrap_err();
        assert_eq!((error.problems[0].line, error.problems[0].column), (5, 7));
        assert!(
            error.problems[0].message.contains("plaintext")
                && error.problems[0].message.contains("mqtt.insecure"),
            "{error}"
        );
        let config = parse(&format!("{text}insecure = true\n"), Path::new("kite.toml")).unwrap();
        assert_eq!(config.warnings.len(), 1);
    }

    #[test]
    fn problems_without_a_place_are_printed_without_one() {
        let text = format!("{MINIMAL}[plugin_trust]\nrequire_signed = true\n");
        let error = parse(&text, Path::new("kite.toml")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "kite.toml: plugin_trust.require_signed needs at least one of plugin_trust.trusted_keys"
        );
    }
}
