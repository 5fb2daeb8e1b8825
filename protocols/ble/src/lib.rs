//! BLE sensors for Kite: what an advertisement carries, decoders for the
//! common sensor formats, what a configured device's advertisements become,
//! and scanning through BlueZ over D-Bus.

pub mod advert;
pub mod bluez;
pub mod decode;
pub mod device;
pub mod gatt;
pub mod monitor;

pub use advert::{Address, Advertisement};
pub use bluez::{run_ble, BleDevice, BleHealth, BleOutputs, BleSpec, Discovered, Scan};
pub use decode::{AdvertDecoder, DecodeError, Decoded, Format};
pub use device::{AdvertDecode, DeviceSpec, Heard, Tracker};
pub use gatt::{run_gatt, GattDevice, GattMode, GattPoint, GattType};

use kite_core::PointSample;

impl AdvertDecode for AdvertDecoder {
    fn decode(&mut self, advert: &Advertisement) -> Result<Option<Vec<PointSample>>, String> {
        let decoded = AdvertDecoder::decode(self, advert).map_err(|e| e.to_string())?;
        Ok(decoded.map(|points| {
            points
                .into_iter()
                .map(|point| PointSample {
                    name: point.name.into(),
                    unit: point.unit.map(Into::into),
                    reading: point.reading,
                })
                .collect()
        }))
    }
}
