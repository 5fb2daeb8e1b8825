//! `[zigbee]` and Zigbee devices (`protocol = "zigbee"`): the coordinator
//! stick and the network it runs, and for each device its IEEE address and
//! which of its points to keep and to write.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kite_zigbee::ZigbeeDevice;
use serde::Deserialize;
use toml::Spanned;

use super::{check_point_name, refuse_keys, RawDevice};
use crate::config::file_ref::FileRef;
use crate::config::resolve::Files;
use crate::config::Report;

/// The coordinator stick and its network. PAN ids absent from the config
/// are chosen at random on the first start and kept (in the Zigbee
/// database beside the buffer); the network key lives in its own file,
/// created with a random key when missing.
#[derive(Debug, Clone, PartialEq)]
pub struct ZigbeeConfig {
    pub port: String,
    pub baud: u32,
    pub channel: u8,
    pub pan_id: Option<u16>,
    pub extended_pan_id: Option<u64>,
    /// Relative to the config's directory; `<data_dir>/zigbee-network.key` by default.
    pub network_key_file: Option<PathBuf>,
    pub permit_join: bool,
    pub devices: Vec<ZigbeeDevice>,
    /// Codec plug-ins for what the clusters Kite knows do not say.
    pub codecs: Vec<ZigbeeCodec>,
}

/// A device's codec plug-in.
#[derive(Debug, Clone, PartialEq)]
pub struct ZigbeeCodec {
    pub ieee: u64,
    pub path: PathBuf,
    /// The `codec_config` table, as JSON for the codec's `init`.
    pub config_json: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawZigbee {
    port: Spanned<String>,
    #[serde(default = "default_baud")]
    baud: Spanned<u32>,
    #[serde(default = "default_channel")]
    channel: Spanned<u8>,
    pan_id: Option<Spanned<RawNumber>>,
    extended_pan_id: Option<Spanned<RawNumber>>,
    network_key_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    permit_join: bool,
}

/// A number written as a TOML integer (`0x1a2b`) or as a string (for 64-bit
/// values TOML cannot hold: `"0xdddddddddddddddd"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawNumber {
    Int(i64),
    Text(String),
}

impl RawNumber {
    fn value(&self) -> Option<u64> {
        match self {
            RawNumber::Int(i) => u64::try_from(*i).ok(),
            RawNumber::Text(text) => {
                let hex = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"));
                match hex {
                    Some(hex) => u64::from_str_radix(hex, 16).ok(),
                    None => text.parse().ok(),
                }
            }
        }
    }
}

fn default_baud() -> Spanned<u32> {
    Spanned::new(0..0, 115_200)
}

fn default_channel() -> Spanned<u8> {
    Spanned::new(0..0, 15)
}

impl RawZigbee {
    pub(in crate::config) fn build(
        self,
        report: &mut Report<'_>,
        base: &Path,
        files: &mut Files,
        devices: Vec<(ZigbeeDevice, Option<ZigbeeCodec>)>,
    ) -> ZigbeeConfig {
        let (devices, codecs): (Vec<_>, Vec<_>) = devices.into_iter().unzip();
        if self.port.get_ref().is_empty() {
            report.push(self.port.span(), "zigbee.port must not be empty".into());
        }
        let channel = *self.channel.get_ref();
        if !(11..=26).contains(&channel) {
            report.push(
                self.channel.span(),
                format!("zigbee.channel {channel}: expected 11 to 26"),
            );
        }
        let pan_id = self.pan_id.as_ref().and_then(|raw| {
            let value = raw.get_ref().value().and_then(|v| u16::try_from(v).ok());
            // 0xFFFF means "any" to Zigbee: no network can have it.
            let valid = value.filter(|v| *v != 0xffff);
            if valid.is_none() {
                report.push(
                    raw.span(),
                    "zigbee.pan_id: expected a 16-bit number other than 0xffff, like 0x1a2b".into(),
                );
            }
            valid
        });
        let extended_pan_id = self.extended_pan_id.as_ref().and_then(|raw| {
            let value = raw.get_ref().value().filter(|v| *v != 0 && *v != u64::MAX);
            if value.is_none() {
                report.push(
                    raw.span(),
                    "zigbee.extended_pan_id: expected a 64-bit number other than 0 and all ones, like \"0xdddddddddddddddd\"".into(),
                );
            }
            value
        });
        // The key is read (or created) when the network starts: it may
        // not exist yet, and `kite check` creates nothing.
        let network_key_file = self.network_key_file.as_ref().map(|file| {
            let file = FileRef::at(base, file);
            files.zigbee_key = Some(file.clone());
            file.path
        });
        ZigbeeConfig {
            port: self.port.into_inner(),
            baud: self.baud.into_inner(),
            channel,
            pan_id,
            extended_pan_id,
            network_key_file,
            permit_join: self.permit_join,
            devices,
            codecs: codecs.into_iter().flatten().collect(),
        }
    }
}

impl RawDevice {
    pub(super) fn build_zigbee(
        &self,
        report: &mut Report<'_>,
        base: &Path,
        files: &mut Files,
    ) -> Option<(ZigbeeDevice, Option<ZigbeeCodec>)> {
        let device = self.name.get_ref();
        let address = self.address.as_ref()?;
        let ieee = kite_zigbee::znp::ieee_from_str(address.get_ref());
        if ieee.is_none() {
            report.push(
                address.span(),
                format!(
                    "address {:?}: expected an IEEE address like 0x00124b0012345678",
                    address.get_ref()
                ),
            );
        }
        let mut seen = std::collections::HashSet::new();
        let mut kept = Vec::new();
        let mut writable = Vec::new();
        // `points = ["temperature", ...]` keeps only the points named;
        // `[[devices.points]]` tables alone only say which are writable.
        let filters = self.points.iter().any(|p| p.bare);
        for point in &self.points {
            check_point_name(report, &mut seen, &point.name, device);
            refuse_keys(
                report,
                point.table_keys(),
                "Zigbee points are named by their clusters: a point takes only `name`, `writable` and the report keys",
            );
            let name = point.name.get_ref();
            if let Some(flag) = point.writable.as_ref().filter(|w| *w.get_ref()) {
                if name == "on" || name == "level" {
                    writable.push(name.clone());
                } else {
                    report.push(
                        flag.span(),
                        format!(
                            "Zigbee point {name:?} cannot be written: only `on` and `level` can"
                        ),
                    );
                }
            }
            kept.push(name.clone());
        }
        let stale_after = self
            .stale_after
            .as_ref()
            .map_or(kite_zigbee::DEFAULT_STALE_AFTER, |s| s.get_ref().0);
        if let Some(stale) = self
            .stale_after
            .as_ref()
            .filter(|s| s.get_ref().0 < Duration::from_secs(1))
        {
            report.push(stale.span(), "stale_after must be at least 1s".into());
        }
        if let (None, Some(config)) = (&self.codec, &self.codec_config) {
            report.push(config.span(), "`codec_config` needs `codec`".into());
        }
        let ieee = ieee?;
        let codec = self
            .codec_plugin(base, files)
            .map(|(path, config_json)| ZigbeeCodec {
                ieee,
                path,
                config_json,
            });
        let device = ZigbeeDevice {
            name: Arc::from(device.as_str()),
            ieee,
            points: filters.then_some(kept),
            writable,
            stale_after,
        };
        Some((device, codec))
    }
}
