//! `kite-bench rtu`: how close Kite gets to the ceiling of a Modbus RTU line.
//!
//! A serial pair from socat has no baud rate, so the slave here keeps the
//! line's timing itself: a reply is written only when it would have
//! finished arriving on a real line (the request's characters, the silent
//! interval that ends it, then the reply's characters, with zero turnaround
//! in the device), and a request that starts before the line has been
//! silent for the interval after the previous reply is a violation: a real
//! slave would read the two frames as one garbled frame, so it is counted
//! and not answered. The ceiling is the same arithmetic without any Kite:
//! `registers / ((request + reply) characters + 2 silent intervals)`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kite_core::serial::{DataBits, Parity, SerialLine, StopBits};

/// Registers per request: the most one Modbus read may carry.
const REGISTERS: u16 = 125;
/// Read holding registers: unit, function, address, count, CRC.
const REQUEST_LEN: usize = 8;
/// Unit, function, byte count, 2 bytes per register, CRC.
const REPLY_LEN: usize = 5 + 2 * REGISTERS as usize;

/// The 8E1 line Modbus prescribes by default: 11 bits per character.
fn line(port: &Path, baud: u32) -> SerialLine {
    SerialLine {
        port: port.display().to_string(),
        baud,
        parity: Parity::Even,
        data_bits: DataBits::Eight,
        stop_bits: StopBits::One,
        frame_gap: None,
    }
}

/// Registers per second a perfect master reaches on this line.
pub fn ceiling(line: &SerialLine) -> f64 {
    let cycle = line.char_time().as_secs_f64() * (REQUEST_LEN + REPLY_LEN) as f64
        + 2.0 * line.frame_gap().as_secs_f64();
    f64::from(REGISTERS) / cycle
}

/// Modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF).
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0xffff_u16;
    for &byte in bytes {
        crc ^= u16::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xa001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[derive(Default)]
struct SlaveCounters {
    served: AtomicU64,
    violations: AtomicU64,
    bad_frames: AtomicU64,
    /// Nanoseconds since `epoch` of each reply's last character.
    replies_ns: std::sync::Mutex<Vec<u64>>,
}

/// The timed slave: unit 1, registers 0..125, on `port` (blocking I/O on a
/// thread of its own, so its sleeps are as precise as the OS allows).
fn serve(
    port: PathBuf,
    line: SerialLine,
    counters: Arc<SlaveCounters>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)?;
    let char_time = line.char_time();
    let gap = line.frame_gap();
    let mut reply = vec![1u8, 3, (2 * REGISTERS) as u8];
    for register in 0..REGISTERS {
        reply.extend_from_slice(&register.to_be_bytes());
    }
    let crc = crc16(&reply);
    reply.extend_from_slice(&crc.to_le_bytes());

    let mut pending: Vec<u8> = Vec::new();
    let mut first_byte_at = Instant::now();
    let mut line_free_at = Instant::now();
    let mut chunk = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        if pending.is_empty() {
            first_byte_at = Instant::now();
        }
        pending.extend_from_slice(&chunk[..n]);
        if pending.len() < REQUEST_LEN {
            continue;
        }
        let request: Vec<u8> = pending.drain(..REQUEST_LEN).collect();
        let valid = crc16(&request[..6]).to_le_bytes() == request[6..8]
            && request[..6] == [1, 3, 0, 0, 0, REGISTERS as u8];
        if !valid {
            counters.bad_frames.fetch_add(1, Ordering::Relaxed);
            pending.clear();
            continue;
        }
        if first_byte_at < line_free_at {
            counters.violations.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // On a real line the reply is complete this long after the
        // request's first character: request, silent interval, reply.
        let done = first_byte_at + char_time * (REQUEST_LEN + REPLY_LEN) as u32 + gap;
        std::thread::sleep(done.saturating_duration_since(Instant::now()));
        // Taken before the write: a thread descheduled after it would
        // otherwise see the master's next request as too early.
        let finished = Instant::now().max(done);
        file.write_all(&reply)?;
        line_free_at = finished + gap;
        counters.served.fetch_add(1, Ordering::Relaxed);
        counters
            .replies_ns
            .lock()
            .unwrap()
            .push(finished.duration_since(epoch).as_nanos() as u64);
    }
    Ok(())
}

struct Socat(Child);

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run(kite: &Path, baud: u32, seconds: u64) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("kite-bench-rtu-{}-{baud}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (kite_end, slave_end) = (dir.join("kite-end"), dir.join("slave-end"));
    let _socat = Socat(
        Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", kite_end.display()))
            .arg(format!("pty,raw,echo=0,link={}", slave_end.display()))
            .stderr(Stdio::null())
            .spawn()
            .context("start socat (apt-get install socat)")?,
    );
    for _ in 0..200 {
        if kite_end.exists() && slave_end.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !slave_end.exists() {
        bail!("socat did not create the serial pair");
    }
    let line = line(&kite_end, baud);
    let counters = Arc::new(SlaveCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let slave = {
        let (counters, stop, line) = (counters.clone(), stop.clone(), line.clone());
        std::thread::spawn(move || serve(slave_end, line, counters, stop, epoch))
    };

    // Polled every 10 ms: far more than the line carries, so the bus is
    // never idle and the ceiling is what limits it.
    let mut config = format!(
        "[gateway]\nid = \"bench-rtu\"\ndata_dir = \"{}\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n\
         [[buses]]\nname = \"line\"\nport = \"{}\"\nbaud = {baud}\nparity = \"even\"\n\
         [[devices]]\nname = \"meter\"\nprotocol = \"modbus-rtu\"\nbus = \"line\"\nunit_id = 1\npoll_interval = \"10ms\"\ntimeout = \"2s\"\n",
        dir.join("data").display(),
        kite_end.display()
    );
    for register in 0..REGISTERS {
        config += &format!("[[devices.points]]\nname = \"r{register}\"\naddress = {register}\n");
    }
    let _kite = crate::start_kite(kite, &dir, &config);

    // Warm up, then count the replies that finished inside the window.
    let warm_up = Duration::from_secs(3);
    tokio::time::sleep(warm_up + Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let window_start = warm_up.as_nanos() as u64;
    let window_end = window_start + Duration::from_secs(seconds).as_nanos() as u64;
    let replies = counters.replies_ns.lock().unwrap().clone();
    let in_window: Vec<u64> = replies
        .iter()
        .copied()
        .filter(|&t| t >= window_start && t < window_end)
        .collect();
    // Rate between the first and last reply of the window: whole cycles only.
    let measured = match (in_window.first(), in_window.last()) {
        (Some(first), Some(last)) if in_window.len() > 1 => {
            (in_window.len() - 1) as f64 * f64::from(REGISTERS) / ((last - first) as f64 / 1e9)
        }
        _ => 0.0,
    };
    let ceiling = ceiling(&line);
    println!(
        "rtu baud={baud} gap_us={} replies={} registers_per_s={measured:.1} ceiling={ceiling:.1} ratio={:.3} violations={} bad_frames={}",
        line.frame_gap().as_micros(),
        in_window.len(),
        measured / ceiling,
        counters.violations.load(Ordering::Relaxed),
        counters.bad_frames.load(Ordering::Relaxed),
    );
    drop(_kite);
    drop(_socat);
    let _ = slave.join();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_matches_the_published_arithmetic() {
        let at = |baud| ceiling(&line(Path::new("/dev/null"), baud));
        assert!((at(9600) - 404.0).abs() < 1.0, "{}", at(9600));
        assert!((at(115_200) - 4369.0).abs() < 2.0, "{}", at(115_200));
    }

    #[test]
    fn crc_of_a_known_frame() {
        // Read 1 holding register at 0 from unit 1: 01 03 00 00 00 01 84 0A.
        assert_eq!(crc16(&[1, 3, 0, 0, 0, 1]).to_le_bytes(), [0x84, 0x0a]);
    }
}
