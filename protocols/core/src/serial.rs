//! A serial line's settings and how to open it, shared by Modbus RTU buses
//! and raw serial instruments.

use std::io;
use std::time::Duration;

use tokio_serial::{SerialPort, SerialPortBuilderExt, SerialStream};

pub use tokio_serial::{DataBits, Parity, StopBits};

/// One serial port, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialLine {
    /// `/dev/ttyUSB0`, `/dev/serial/by-id/...`.
    pub port: String,
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: DataBits,
    pub stop_bits: StopBits,
    /// The silent interval that ends a frame; `None` means the Modbus rule:
    /// 3.5 characters, and 1.75 ms above 19200 baud.
    pub frame_gap: Option<Duration>,
}

impl SerialLine {
    /// Bits on the wire per character: start, data, parity, stop.
    pub fn bits_per_char(&self) -> u32 {
        let data = match self.data_bits {
            DataBits::Five => 5,
            DataBits::Six => 6,
            DataBits::Seven => 7,
            DataBits::Eight => 8,
        };
        let parity = u32::from(self.parity != Parity::None);
        let stop = match self.stop_bits {
            StopBits::One => 1,
            StopBits::Two => 2,
        };
        1 + data + parity + stop
    }

    /// How long one character takes on the wire.
    pub fn char_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.bits_per_char()) / f64::from(self.baud.max(1)))
    }

    /// The silent interval between frames.
    pub fn frame_gap(&self) -> Duration {
        self.frame_gap.unwrap_or_else(|| {
            // Modbus over serial line, 2.3.1.4: fixed values above 19200 baud,
            // where 3.5 characters would be too short to time reliably.
            if self.baud > 19_200 {
                Duration::from_micros(1_750)
            } else {
                self.char_time().mul_f64(3.5)
            }
        })
    }

    /// Opens the port exclusively and drops whatever the driver had buffered,
    /// so that no stale byte is taken for the start of a reply.
    pub fn open(&self) -> io::Result<SerialStream> {
        let stream = tokio_serial::new(&self.port, self.baud)
            .parity(self.parity)
            .data_bits(self.data_bits)
            .stop_bits(self.stop_bits)
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()
            .map_err(io::Error::other)?;
        stream
            .clear(tokio_serial::ClearBuffer::Input)
            .map_err(io::Error::other)?;
        Ok(stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(baud: u32, parity: Parity) -> SerialLine {
        SerialLine {
            port: "/dev/null".into(),
            baud,
            parity,
            data_bits: DataBits::Eight,
            stop_bits: StopBits::One,
            frame_gap: None,
        }
    }

    #[test]
    fn frame_gap_follows_the_modbus_rule() {
        // 8E1 = 11 bits; 3.5 characters at 9600 baud = 4.01 ms.
        let gap = line(9600, Parity::Even).frame_gap();
        assert!(
            (gap.as_secs_f64() - 3.5 * 11.0 / 9600.0).abs() < 1e-8,
            "{gap:?}"
        );
        assert_eq!(
            line(115_200, Parity::Even).frame_gap(),
            Duration::from_micros(1750)
        );
        assert_eq!(line(9600, Parity::None).bits_per_char(), 10);
        let fixed = SerialLine {
            frame_gap: Some(Duration::from_millis(20)),
            ..line(9600, Parity::None)
        };
        assert_eq!(fixed.frame_gap(), Duration::from_millis(20));
    }
}
