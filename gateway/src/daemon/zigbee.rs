//! What the Zigbee network starts with: the config's settings, completed
//! from the network's memory (PAN ids chosen at random on the first start,
//! then kept) and its key file (a random key, created on the first start,
//! readable by the gateway's user only; never a default key).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::Arc;

use kite_zigbee::{NetworkSettings, ZigbeeSpec, ZigbeeStore, DEFAULT_STALE_AFTER};
use tracing::info;

use crate::config::{parse_key, ZigbeeConfig};
use crate::store::zigbee::ZigbeeDb;

/// The network's full settings and its memory.
pub(super) fn prepare(
    config: &ZigbeeConfig,
    data_dir: &Path,
) -> Result<(ZigbeeSpec, Arc<dyn ZigbeeStore>), String> {
    let path = ZigbeeDb::path_in(data_dir);
    let db = ZigbeeDb::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let pan_id = match config.pan_id {
        Some(pan_id) => pan_id,
        None => {
            let kept = kept(&db, "pan_id", || {
                // Neither 0 nor 0xFFFF (which means "any").
                let id = u16::from_le_bytes(random::<2>()?).clamp(1, 0xfffe);
                Ok(u64::from(id))
            })?;
            u16::try_from(kept).map_err(|_| format!("the kept PAN id {kept:#x} is not 16-bit"))?
        }
    };
    let extended_pan_id = match config.extended_pan_id {
        Some(id) => id,
        None => kept(&db, "extended_pan_id", || {
            Ok(u64::from_le_bytes(random::<8>()?).clamp(1, u64::MAX - 1))
        })?,
    };
    let key_file = config
        .network_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join("zigbee-network.key"));
    let network_key = network_key(&key_file)?;
    let spec = ZigbeeSpec {
        port: config.port.clone(),
        baud: config.baud,
        network: NetworkSettings {
            channel: config.channel,
            pan_id,
            extended_pan_id,
            network_key,
        },
        permit_join: config.permit_join,
        devices: config.devices.clone(),
        stale_after: DEFAULT_STALE_AFTER,
    };
    Ok((spec, Arc::new(db)))
}

/// The value kept under `key`, or a new one made by `make` and kept.
fn kept(
    db: &ZigbeeDb,
    key: &str,
    make: impl FnOnce() -> Result<u64, String>,
) -> Result<u64, String> {
    if let Some(text) = db.setting(key)? {
        return text
            .parse()
            .map_err(|e| format!("the kept {key} {text:?}: {e}"));
    }
    let value = make()?;
    db.set_setting(key, &value.to_string())?;
    info!("Zigbee {key} chosen at random: {value:#x}");
    Ok(value)
}

/// The network key in `path`: created (a random key, mode 0600) when the
/// file does not exist.
fn network_key(path: &Path) -> Result<[u8; 16], String> {
    if !path.exists() {
        let key = random::<16>()?;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot create the network key {}: {e}", path.display()))?;
        file.write_all(format!("{hex}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write the network key {}: {e}", path.display()))?;
        info!(path = %path.display(), "Zigbee network key created");
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the network key {}: {e}", path.display()))?;
    parse_key(&text).map_err(|e| format!("network key {}: {e}", path.display()))
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ZigbeeConfig {
        ZigbeeConfig {
            port: "/dev/null".into(),
            baud: 115_200,
            channel: 15,
            pan_id: None,
            extended_pan_id: None,
            network_key_file: None,
            permit_join: false,
            devices: Vec::new(),
            codecs: Vec::new(),
        }
    }

    #[test]
    fn ids_and_the_key_are_chosen_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = prepare(&config(), dir.path()).unwrap();
        let key_file = dir.path().join("zigbee-network.key");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key_file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the key is the gateway's alone");
        assert_ne!(first.network.network_key, [0; 16]);
        let (second, _) = prepare(&config(), dir.path()).unwrap();
        assert_eq!(first.network, second.network, "kept across starts");
        // Given in the config, the ids are taken as they are.
        let mut given = config();
        given.pan_id = Some(0x1a2b);
        given.extended_pan_id = Some(7);
        let (third, _) = prepare(&given, dir.path()).unwrap();
        assert_eq!(
            (third.network.pan_id, third.network.extended_pan_id),
            (0x1a2b, 7)
        );
        std::fs::write(&key_file, "not a key").unwrap();
        let error = prepare(&given, dir.path()).err().unwrap();
        assert!(error.contains("32 hex characters"), "{error}");
    }
}
