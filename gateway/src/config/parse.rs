//! The text of a config into a typed [`Config`]: TOML with positions,
//! strict (unknown keys are errors), every mistake TOML cannot see reported
//! with its place. Pure: it reads no file; the files a config names are
//! collected as [`Files`] for [`super::resolve`].

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kite_plugins::{Limits, Pattern, Trust};
use serde::Deserialize;
use toml::Spanned;

use super::devices::{self, BleConfig, RawBle, RawBus, RawDevice, RawZigbee};
use super::file_ref::FileRef;
use super::resolve::{Files, KeyRef, TlsRefs};
use super::secrets::SecretKeys;
use super::units::{ByteSize, Interval};
use super::{
    check_topic_level, Config, GatewayConfig, HttpConfig, JsonLayout, Mqtt5, MqttConfig,
    PluginConfig, Replay, Report, SparkplugConfig, DEFAULT_HTTP_LISTEN, DEFAULT_MAX_MESSAGE_BYTES,
    RESERVED_DEVICE_NAMES,
};
use crate::store::{Durability, OnFull, Settings};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
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
    ble: Option<RawBle>,
    zigbee: Option<Spanned<RawZigbee>>,
    sparkplug: Option<Spanned<RawSparkplug>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSparkplug {
    group_id: Spanned<String>,
    edge_node_id: Option<Spanned<String>>,
    primary_host_id: Option<Spanned<String>>,
}

/// What telemetry goes as (`mqtt.format`).
#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawFormat {
    #[default]
    Json,
    Sparkplug,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default = "default_http_listen")]
    listen: Spanned<String>,
    token_file: Option<Spanned<PathBuf>>,
    token_credential: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    /// Refused: a secret is not written in the config.
    token: Option<Spanned<toml::Value>>,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_http_listen(),
            token_file: None,
            token_credential: None,
            token_env: None,
            token: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_http_listen() -> Spanned<String> {
    Spanned::new(0..0, DEFAULT_HTTP_LISTEN.to_string())
}

impl RawHttp {
    fn build(self, report: &mut Report<'_>, base: &Path, files: &mut Files) -> HttpConfig {
        // The token is read when the config is resolved.
        files.token = SecretKeys {
            key: "http.token",
            inline: &self.token,
            file: &self.token_file,
            credential: &self.token_credential,
            env: &self.token_env,
        }
        .source(report, base);
        let has_token = files.token.is_some();
        if !self.enabled {
            return HttpConfig::default();
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
                return HttpConfig::default();
            }
        };
        if !listen.ip().is_loopback() && !has_token {
            report.push(
                self.listen.span(),
                "http.listen off loopback needs a token (http.token_file, http.token_credential or http.token_env): metrics and status would be open to the network".into(),
            );
        }
        HttpConfig {
            listen: Some(listen),
            token: None,
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
    fn build(self, report: &mut Report<'_>, base: &Path, files: &mut Files) -> Trust {
        if self.require_signed && self.trusted_keys.is_empty() {
            report.push(
                0..0,
                "plugin_trust.require_signed needs at least one of plugin_trust.trusted_keys"
                    .into(),
            );
        }
        // The keys are read from their files when the config is resolved.
        files.trusted_keys = self
            .trusted_keys
            .iter()
            .map(|file| FileRef::at(base, file))
            .collect();
        Trust {
            keys: Vec::new().into(),
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
    password_credential: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    /// Refused: a secret is not written in the config.
    password: Option<Spanned<toml::Value>>,
    ca_file: Option<Spanned<PathBuf>>,
    cert_file: Option<Spanned<PathBuf>>,
    key_file: Option<Spanned<PathBuf>>,
    /// The client key as a systemd credential, instead of `key_file`.
    key_credential: Option<Spanned<String>>,
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
    #[serde(default)]
    replay: RawReplay,
    json: Option<Spanned<JsonLayout>>,
    replay_rate: Option<Spanned<u32>>,
    format: Option<Spanned<RawFormat>>,
    /// 3 (MQTT 3.1.1, the default) or 5.
    version: Option<Spanned<i64>>,
    session_expiry: Option<Spanned<Interval>>,
    message_expiry: Option<Spanned<Interval>>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum RawReplay {
    #[default]
    InOrder,
    LiveFirst,
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
    #[serde(default)]
    on_full: OnFull,
}

impl Default for RawBuffer {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            durability: default_durability(),
            on_full: OnFull::default(),
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
    /// The config as the text says it, without reading any file; the files
    /// it names, for [`super::resolve`].
    pub(super) fn build(self, report: &mut Report<'_>, base: &Path) -> (Config, Files) {
        let mut warnings = Vec::new();
        let mut files = Files::default();
        check_topic_level(report, &self.gateway.id, "gateway.id");
        let format = self.mqtt.format.clone();
        let json = self.mqtt.json.clone();
        let mut mqtt = self
            .mqtt
            .build(report, base, &self.gateway.id, &mut warnings, &mut files);
        mqtt.sparkplug = sparkplug(report, format, json, self.sparkplug, &self.gateway.id);
        if self.buffer.max_bytes.get_ref().0 < 64 << 10 {
            report.push(
                self.buffer.max_bytes.span(),
                "buffer.max_bytes must be at least 64KiB".into(),
            );
        }
        let devices = devices::build(
            self.buses,
            self.devices,
            base,
            report,
            &mut warnings,
            &mut files,
        );
        let ble_devices = devices.ble;
        let mut addresses = HashSet::new();
        for device in &ble_devices {
            if !addresses.insert(device.spec.address) {
                report.push(
                    0..0,
                    format!(
                        "BLE address {} is given to more than one device",
                        device.spec.address
                    ),
                );
            }
        }
        // Scanning runs with a [ble] section (for discovery alone) or BLE devices.
        let ble = (self.ble.is_some() || !ble_devices.is_empty()).then(|| BleConfig {
            spec: self.ble.unwrap_or_default().build(report),
            devices: ble_devices,
        });
        let mut ieees = HashSet::new();
        for (device, _) in &devices.zigbee {
            if !ieees.insert(device.ieee) {
                report.push(
                    0..0,
                    format!(
                        "Zigbee address {} is given to more than one device",
                        kite_zigbee::znp::ieee_to_string(device.ieee)
                    ),
                );
            }
        }
        let zigbee = match self.zigbee {
            Some(raw) => Some(
                raw.into_inner()
                    .build(report, base, &mut files, devices.zigbee),
            ),
            None => {
                if let Some((device, _)) = devices.zigbee.first() {
                    report.push(
                        0..0,
                        format!(
                            "device {:?}: Zigbee devices need a [zigbee] section with the coordinator's port",
                            &*device.name
                        ),
                    );
                }
                None
            }
        };
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
                plugin.build(report, base, &device_names, &mut files)
            })
            .collect();
        let config = Config {
            plugins,
            plugin_trust: self.plugin_trust.build(report, base, &mut files),
            http: self.http.build(report, base, &mut files),
            gateway: GatewayConfig {
                id: self.gateway.id.into_inner(),
                data_dir: self.gateway.data_dir,
            },
            mqtt,
            buffer: Settings {
                max_bytes: self.buffer.max_bytes.into_inner().0,
                durability: self.buffer.durability,
                on_full: self.buffer.on_full,
            },
            modbus: devices.modbus,
            reports: devices.reports,
            instruments: devices.instruments,
            ble,
            zigbee,
            warnings,
        };
        (config, files)
    }
}

impl RawMqtt {
    fn build(
        self,
        report: &mut Report<'_>,
        base: &Path,
        gateway_id: &Spanned<String>,
        warnings: &mut Vec<String>,
        files: &mut Files,
    ) -> MqttConfig {
        let v5 = self.mqtt5(report);
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
        // The files are read when the config is resolved.
        let file = |file: &Option<Spanned<PathBuf>>| file.as_ref().map(|f| FileRef::at(base, f));
        files.password = SecretKeys {
            key: "mqtt.password",
            inline: &self.password,
            file: &self.password_file,
            credential: &self.password_credential,
            env: &self.password_env,
        }
        .source(report, base);
        let (ca, cert) = (file(&self.ca_file), file(&self.cert_file));
        let key = match (file(&self.key_file), &self.key_credential) {
            (Some(file), None) => Some(KeyRef::File(file)),
            (None, Some(name)) => {
                if name.get_ref().is_empty() || name.get_ref().contains('/') {
                    report.push(
                        name.span(),
                        format!("mqtt.key_credential {:?}: expected a credential's name, like \"mqtt-key\"", name.get_ref()),
                    );
                }
                Some(KeyRef::Credential {
                    name: name.get_ref().clone(),
                    span: name.span(),
                })
            }
            (None, None) => None,
            (Some(_), Some(name)) => {
                report.push(
                    name.span(),
                    "give one of mqtt.key_file and mqtt.key_credential".into(),
                );
                None
            }
        };
        let client = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(cert), None) => {
                report.push(
                    cert.span,
                    "mqtt.cert_file needs its key: give mqtt.key_file or mqtt.key_credential"
                        .into(),
                );
                None
            }
            (None, Some(key)) => {
                report.push(
                    key.span(),
                    "mqtt.key_file and mqtt.key_credential need mqtt.cert_file: give both or neither"
                        .into(),
                );
                None
            }
        };
        if tls {
            files.tls = Some(TlsRefs {
                url: self.url.span(),
                ca,
                client,
            });
        } else if ca.is_some() || client.is_some() {
            report.push(
                self.url.span(),
                "TLS files are set but the url is not mqtts://".into(),
            );
        }
        if files.password.is_some() && self.username.is_none() {
            report.push(self.url.span(), "mqtt.password needs mqtt.username".into());
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
        let replay = match (self.replay, self.replay_rate) {
            (RawReplay::InOrder, rate) => {
                if let Some(rate) = rate {
                    report.push(
                        rate.span(),
                        "mqtt.replay_rate caps the backlog behind live data: it needs replay = \"live_first\"".into(),
                    );
                }
                Replay::InOrder
            }
            (RawReplay::LiveFirst, None) => Replay::LiveFirst {
                rows_per_second: None,
            },
            (RawReplay::LiveFirst, Some(rate)) => {
                if *rate.get_ref() == 0 {
                    report.push(
                        rate.span(),
                        "mqtt.replay_rate must be at least 1 (rows per second); leave it out for no cap".into(),
                    );
                }
                Replay::LiveFirst {
                    rows_per_second: Some(rate.into_inner()),
                }
            }
        };
        MqttConfig {
            host,
            port,
            tls: None,
            client_id: client_id.into_inner(),
            username: self.username,
            password: None,
            topic_prefix: topic_prefix.into_inner(),
            keep_alive,
            max_inflight,
            flush_timeout: self.flush_timeout.0,
            status_interval: self.status_interval.get_ref().0,
            max_message_bytes: max_message_bytes as usize,
            replay,
            json: self.json.map(Spanned::into_inner).unwrap_or_default(),
            sparkplug: None,
            v5,
        }
    }
}

impl RawMqtt {
    /// `version = 5` and what only MQTT 5 has: expiry of the session and
    /// of telemetry messages.
    fn mqtt5(&self, report: &mut Report<'_>) -> Option<Mqtt5> {
        let version = self.version.as_ref().map_or(3, |v| *v.get_ref());
        match version {
            5 => Some(Mqtt5 {
                session_expiry: self
                    .session_expiry
                    .as_ref()
                    .map_or(Duration::ZERO, |e| e.get_ref().0),
                message_expiry: self
                    .message_expiry
                    .as_ref()
                    .map(|e| e.get_ref().0)
                    .filter(|e| !e.is_zero()),
            }),
            3 => {
                for (key, setting) in [
                    ("session_expiry", &self.session_expiry),
                    ("message_expiry", &self.message_expiry),
                ] {
                    if let Some(setting) = setting {
                        report.push(
                            setting.span(),
                            format!("mqtt.{key} is an MQTT 5 property: it needs mqtt.version = 5"),
                        );
                    }
                }
                None
            }
            other => {
                let span = self.version.as_ref().map(|v| v.span()).unwrap_or(0..0);
                report.push(
                    span,
                    format!("mqtt.version {other}: expected 3 (MQTT 3.1.1) or 5 (MQTT 5)"),
                );
                None
            }
        }
    }
}

/// The edge node of `format = "sparkplug"`: `[sparkplug]` is needed with
/// it and refused without it, and so is the compact JSON layout, which
/// Sparkplug telemetry does not use.
fn sparkplug(
    report: &mut Report<'_>,
    format: Option<Spanned<RawFormat>>,
    json: Option<Spanned<JsonLayout>>,
    section: Option<Spanned<RawSparkplug>>,
    gateway_id: &Spanned<String>,
) -> Option<SparkplugConfig> {
    let sparkplug = format.filter(|f| *f.get_ref() == RawFormat::Sparkplug);
    match (sparkplug, section) {
        (None, None) => None,
        (None, Some(section)) => {
            report.push(
                section.span(),
                "[sparkplug] configures the Sparkplug B edge node: it needs mqtt.format = \"sparkplug\"".into(),
            );
            None
        }
        (Some(format), None) => {
            report.push(
                format.span(),
                "mqtt.format = \"sparkplug\" needs a [sparkplug] section with group_id".into(),
            );
            None
        }
        (Some(_), Some(section)) => {
            if let Some(json) = json.filter(|json| *json.get_ref() == JsonLayout::Compact) {
                report.push(
                    json.span(),
                    "mqtt.json = \"compact\" is a JSON layout: with mqtt.format = \"sparkplug\" telemetry goes as Sparkplug B".into(),
                );
            }
            let section = section.into_inner();
            let edge_node_id = section.edge_node_id.unwrap_or_else(|| gateway_id.clone());
            check_topic_level(report, &section.group_id, "sparkplug.group_id");
            check_topic_level(report, &edge_node_id, "sparkplug.edge_node_id");
            if let Some(host) = &section.primary_host_id {
                check_topic_level(report, host, "sparkplug.primary_host_id");
            }
            Some(SparkplugConfig {
                group_id: section.group_id.into_inner(),
                edge_node_id: edge_node_id.into_inner(),
                primary_host_id: section.primary_host_id.map(Spanned::into_inner),
            })
        }
    }
}

/// `mqtt://host[:port]` or `mqtts://host[:port]`, IPv6 hosts in brackets.
pub(super) fn parse_url(url: &str) -> Result<(bool, String, u16), String> {
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
        files: &mut Files,
    ) -> PluginConfig {
        check_topic_level(report, &self.name, "plug-in name");
        let name = self.name.get_ref();
        if RESERVED_DEVICE_NAMES.contains(&name.as_str()) || device_names.contains(name) {
            report.push(
                self.name.span(),
                format!("plug-in name {name:?} is taken: its derived readings are published as a device of that name"),
            );
        }
        let file = FileRef::at(base, &self.path);
        let path = file.path.clone();
        files.components.push((file, "plug-in"));
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
