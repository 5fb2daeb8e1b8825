//! Passive scanning through BlueZ's advertisement monitors: the adapter
//! listens without sending scan requests, and only advertisements matching
//! the monitor's patterns (the formats Kite decodes) are reported, as
//! property changes of their device objects, the same as with discovery.

use zbus::zvariant::OwnedObjectPath;
use zbus::Connection;

use crate::decode::Format;

/// Where Kite's monitor application is exported on its bus connection.
pub(crate) const APP_PATH: &str = "/org/kite/ble";
const MONITOR_PATH: &str = "/org/kite/ble/monitor0";

/// One pattern: where in the AD structure it starts, the AD type, the bytes.
pub type Pattern = (u8, u8, Vec<u8>);

/// The patterns a monitor needs to see every advertisement of `formats`.
pub fn patterns(formats: impl IntoIterator<Item = Format>) -> Vec<Pattern> {
    let mut patterns: Vec<Pattern> = Vec::new();
    for format in formats {
        let (ad_type, prefix) = format.pattern();
        let pattern = (0, ad_type, prefix.to_vec());
        if !patterns.contains(&pattern) {
            patterns.push(pattern);
        }
    }
    patterns
}

/// The `org.bluez.AdvertisementMonitor1` object BlueZ reads and calls.
struct Monitor {
    patterns: Vec<Pattern>,
}

#[zbus::interface(name = "org.bluez.AdvertisementMonitor1")]
impl Monitor {
    fn release(&self) {}

    fn activate(&self) {}

    /// Advertisements of the device come as property changes, which the
    /// scanner reads; nothing to do here.
    fn device_found(&self, _device: OwnedObjectPath) {}

    fn device_lost(&self, _device: OwnedObjectPath) {}

    #[zbus(property, name = "Type")]
    fn kind(&self) -> &str {
        "or_patterns"
    }

    #[zbus(property)]
    fn patterns(&self) -> Vec<Pattern> {
        self.patterns.clone()
    }

    /// 0: every advertisement is reported, not one per sampling period.
    #[zbus(property, name = "RSSISamplingPeriod")]
    fn rssi_sampling_period(&self) -> u16 {
        0
    }
}

/// Exports the monitor application on `conn` (once per connection).
pub(crate) async fn export(conn: &Connection, patterns: Vec<Pattern>) -> zbus::Result<()> {
    let server = conn.object_server();
    if server
        .interface::<_, zbus::fdo::ObjectManager>(APP_PATH)
        .await
        .is_ok()
    {
        return Ok(());
    }
    server.at(APP_PATH, zbus::fdo::ObjectManager).await?;
    server.at(MONITOR_PATH, Monitor { patterns }).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_sharing_a_pattern_need_it_once() {
        let all = patterns(Format::ALL);
        assert_eq!(all.len(), 5, "pvvx and atc share the 0x181A service data");
        assert!(all.contains(&(0, 0x16, vec![0xd2, 0xfc])));
        assert!(all.contains(&(0, 0xff, vec![0x99, 0x04, 0x05])));
        assert!(patterns([]).is_empty());
    }
}
