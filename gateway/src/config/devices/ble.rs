//! `[ble]` and BLE devices (`protocol = "ble"`): the adapter and how it
//! scans, and for each sensor its address and how its advertisements are
//! decoded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kite_ble::gatt::full_uuid;
use kite_ble::{Address, BleSpec, DeviceSpec, Format, GattMode, GattPoint, GattType, Scan};
use serde::Deserialize;
use toml::Spanned;

use super::{check_point_name, refuse_keys, RawDevice};
use crate::config::file_ref::FileRef;
use crate::config::resolve::Files;
use crate::config::units::Interval;
use crate::config::Report;

/// BLE scanning and the sensors it listens for.
#[derive(Debug, Clone, PartialEq)]
pub struct BleConfig {
    pub spec: BleSpec,
    pub devices: Vec<BleDeviceConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BleDeviceConfig {
    pub spec: DeviceSpec,
    /// `None` for a device read only over GATT.
    pub decoder: Option<BleDecoder>,
    pub gatt: Vec<GattPoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BleDecoder {
    Format {
        format: Format,
        /// BTHome's AES key, read from `bind_key_file` when the config is resolved.
        bind_key: Option<[u8; 16]>,
    },
    /// A codec plug-in, given the advertisement's data as AD structures.
    Codec { path: PathBuf, config_json: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawBle {
    #[serde(default = "default_adapter")]
    adapter: Spanned<String>,
    #[serde(default)]
    scan: RawScan,
    #[serde(default)]
    discovery: bool,
    #[serde(default = "default_restart_after")]
    restart_after: Spanned<Interval>,
}

impl Default for RawBle {
    fn default() -> Self {
        Self {
            adapter: default_adapter(),
            scan: RawScan::default(),
            discovery: false,
            restart_after: default_restart_after(),
        }
    }
}

/// `gatt = [{ service, characteristic, name, type, ... }]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawGatt {
    service: Spanned<String>,
    characteristic: Spanned<String>,
    name: Spanned<String>,
    #[serde(rename = "type", default = "default_gatt_type")]
    data_type: Spanned<String>,
    #[serde(default)]
    order: RawOrder,
    #[serde(default = "one")]
    scale: f64,
    #[serde(default)]
    offset: f64,
    unit: Option<String>,
    interval: Option<Spanned<Interval>>,
    #[serde(default)]
    notify: Option<Spanned<bool>>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum RawOrder {
    #[default]
    Little,
    Big,
}

fn default_gatt_type() -> Spanned<String> {
    Spanned::new(0..0, "u16".to_string())
}

fn one() -> f64 {
    1.0
}

/// Shortest GATT read interval: a sensor's battery would not last.
const MIN_GATT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawScan {
    #[default]
    Passive,
    Active,
}

fn default_adapter() -> Spanned<String> {
    Spanned::new(0..0, "hci0".to_string())
}

fn default_restart_after() -> Spanned<Interval> {
    Spanned::new(0..0, Interval(Duration::from_secs(60)))
}

const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(600);

impl RawBle {
    pub(in crate::config) fn build(self, report: &mut Report<'_>) -> BleSpec {
        let adapter = self.adapter.get_ref();
        if adapter.is_empty()
            || !adapter
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            report.push(
                self.adapter.span(),
                format!("ble.adapter {adapter:?}: expected an adapter name like \"hci0\""),
            );
        }
        if self.restart_after.get_ref().0 < Duration::from_secs(5) {
            report.push(
                self.restart_after.span(),
                "ble.restart_after must be at least 5s".into(),
            );
        }
        BleSpec {
            adapter: self.adapter.into_inner(),
            scan: match self.scan {
                RawScan::Passive => Scan::Passive,
                RawScan::Active => Scan::Active,
            },
            discovery: self.discovery,
            restart_after: self.restart_after.into_inner().0,
        }
    }
}

impl RawDevice {
    pub(super) fn build_ble(
        &self,
        report: &mut Report<'_>,
        base: &Path,
        files: &mut Files,
    ) -> Option<BleDeviceConfig> {
        let device = self.name.get_ref();
        let address = self.address.as_ref()?;
        let parsed: Option<Address> = match address.get_ref().parse() {
            Ok(parsed) => Some(parsed),
            Err(e) => {
                report.push(
                    address.span(),
                    format!("address {:?}: {e}", address.get_ref()),
                );
                None
            }
        };
        let gatt = self.gatt_points(report);
        let Some(decoder_name) = &self.decoder else {
            if gatt.is_empty() {
                report.push(
                    self.name.span(),
                    format!(
                        "device {device:?}: protocol ble needs `decoder` ({}) or `gatt`",
                        decoder_names()
                    ),
                );
                return None;
            }
            return Some(BleDeviceConfig {
                spec: self.ble_spec(report, parsed?, Vec::new()),
                decoder: None,
                gatt,
            });
        };
        let is_codec = decoder_name.get_ref() == "codec";
        let format = Format::from_name(decoder_name.get_ref());
        if format.is_none() && !is_codec {
            report.push(
                decoder_name.span(),
                format!(
                    "decoder {:?}: expected one of {}",
                    decoder_name.get_ref(),
                    decoder_names()
                ),
            );
            return None;
        }
        if !is_codec {
            self.refuse_codec_keys(report, "decoder = \"codec\"");
        }
        if let Some(key) = &self.bind_key_file {
            if format == Some(Format::Bthome) {
                files
                    .bind_keys
                    .push((FileRef::at(base, key), device.clone()));
            } else {
                report.push(
                    key.span(),
                    "`bind_key_file` is for decoder = \"bthome\"".into(),
                );
            }
        }
        let kept = self.kept_points(report);
        let decoder = match format {
            Some(format) => BleDecoder::Format {
                format,
                bind_key: None,
            },
            None => {
                let Some((path, config_json)) = self.codec_plugin(base, files) else {
                    report.push(
                        self.name.span(),
                        format!("device {device:?}: decoder = \"codec\" needs `codec`, the path of a codec plug-in"),
                    );
                    return None;
                };
                BleDecoder::Codec { path, config_json }
            }
        };
        Some(BleDeviceConfig {
            spec: self.ble_spec(report, parsed?, kept),
            decoder: Some(decoder),
            gatt,
        })
    }

    fn ble_spec(&self, report: &mut Report<'_>, address: Address, kept: Vec<String>) -> DeviceSpec {
        if let Some(stale) = self
            .stale_after
            .as_ref()
            .filter(|s| s.get_ref().0 < Duration::from_secs(1))
        {
            report.push(stale.span(), "stale_after must be at least 1s".into());
        }
        DeviceSpec {
            name: Arc::from(self.name.get_ref().as_str()),
            address,
            points: (!kept.is_empty()).then_some(kept),
            min_interval: self
                .min_interval
                .as_ref()
                .map_or(Duration::ZERO, |m| m.get_ref().0),
            stale_after: self
                .stale_after
                .as_ref()
                .map_or(DEFAULT_STALE_AFTER, |s| s.get_ref().0),
        }
    }

    /// `points`: the names of the decoded points to keep.
    fn kept_points(&self, report: &mut Report<'_>) -> Vec<String> {
        let device = self.name.get_ref();
        let mut seen = std::collections::HashSet::new();
        let mut kept = Vec::new();
        for point in &self.points {
            check_point_name(report, &mut seen, &point.name, device);
            refuse_keys(
                report,
                point.table_keys(),
                "a BLE decoder names its own points: `points` only lists the names to keep",
            );
            if let Some(writable) = point.writable.as_ref().filter(|w| *w.get_ref()) {
                report.push(
                    writable.span(),
                    "BLE advertisements cannot be written".into(),
                );
            }
            kept.push(point.name.get_ref().clone());
        }
        kept
    }

    fn gatt_points(&self, report: &mut Report<'_>) -> Vec<GattPoint> {
        let Some(entries) = &self.gatt else {
            return Vec::new();
        };
        let device = self.name.get_ref();
        let mut seen = std::collections::HashSet::new();
        let mut points = Vec::new();
        for entry in entries.get_ref() {
            check_point_name(report, &mut seen, &entry.name, device);
            let uuid = |text: &Spanned<String>, report: &mut Report<'_>| {
                let full = full_uuid(text.get_ref());
                if full.is_none() {
                    report.push(
                        text.span(),
                        format!(
                            "{:?}: expected a UUID, 16-bit (\"2a6e\") or 128-bit",
                            text.get_ref()
                        ),
                    );
                }
                full
            };
            let service = uuid(&entry.service, report);
            let characteristic = uuid(&entry.characteristic, report);
            let data_type = GattType::from_name(entry.data_type.get_ref());
            if data_type.is_none() {
                report.push(
                    entry.data_type.span(),
                    format!(
                        "type {:?}: expected bool, u8, i8, u16, i16, u32, i32, u64, i64, f32, f64 or string",
                        entry.data_type.get_ref()
                    ),
                );
            }
            if !entry.scale.is_finite() || !entry.offset.is_finite() {
                report.push(
                    entry.name.span(),
                    "scale and offset must be finite numbers".into(),
                );
            }
            let notify = entry.notify.as_ref().is_some_and(|n| *n.get_ref());
            let mode = match (&entry.interval, notify) {
                (Some(interval), false) => {
                    if interval.get_ref().0 < MIN_GATT_INTERVAL {
                        report.push(
                            interval.span(),
                            "a GATT interval must be at least 1s".into(),
                        );
                    }
                    Some(GattMode::Interval(interval.get_ref().0))
                }
                (None, true) => Some(GattMode::Notify),
                (Some(interval), true) => {
                    report.push(
                        interval.span(),
                        "give `interval` or `notify = true`, not both".into(),
                    );
                    None
                }
                (None, false) => {
                    report.push(
                        entry.name.span(),
                        format!(
                            "GATT point {:?} needs `interval` (read every ...) or `notify = true`",
                            entry.name.get_ref()
                        ),
                    );
                    None
                }
            };
            let (Some(service), Some(characteristic), Some(data_type), Some(mode)) =
                (service, characteristic, data_type, mode)
            else {
                continue;
            };
            points.push(GattPoint {
                name: Arc::from(entry.name.get_ref().as_str()),
                service,
                characteristic,
                data_type,
                big_endian: entry.order == RawOrder::Big,
                scale: entry.scale,
                offset: entry.offset,
                unit: entry.unit.as_deref().map(Arc::from),
                mode,
            });
        }
        points
    }
}

fn decoder_names() -> String {
    let mut names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
    names.push("codec");
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}
