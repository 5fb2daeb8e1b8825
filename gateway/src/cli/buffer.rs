//! `kite buffer ...`: the store-and-forward buffer on site: what it holds,
//! whether it is sound, its rows as JSON lines, and recovering a damaged one.
//! Everything opens the buffer read-only, so it is safe beside the running
//! daemon; only `repair` writes, and only its new output file.

use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use kite_gateway::config;
use kite_gateway::store::{self, Buffer, BufferReader, Inspection};
use kite_gateway::uplink::wire;

#[derive(Subcommand)]
pub enum BufferCommand {
    /// Rows, bytes, oldest and newest sample, drops, and the same per device.
    Inspect {
        #[command(flatten)]
        at: Location,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// SQLite's integrity check: prints `ok` and exits 0, or the problems and exits 1.
    Verify {
        #[command(flatten)]
        at: Location,
    },
    /// Every buffered row as a JSON line, shaped like the message it is published as.
    Export {
        #[command(flatten)]
        at: Location,
        /// Only this device's rows (for events: this plug-in's).
        #[arg(long)]
        device: Option<String>,
        /// Write here instead of to stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Copy every readable row of a damaged buffer into a new file; the
    /// damaged file is not modified.
    Repair {
        #[command(flatten)]
        at: Location,
        /// The new buffer file; it must not exist.
        #[arg(long, short)]
        output: PathBuf,
    },
}

/// Where the buffer is: `<data_dir>/buffer.sqlite3`.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Location {
    /// The daemon's config file, for its `gateway.data_dir`.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The daemon's data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl Location {
    fn buffer_path(&self) -> anyhow::Result<PathBuf> {
        let data_dir = match &self.config {
            // Only where the buffer is: the tools work when the rest of the config is broken.
            Some(file) => config::locate(file)?.data_dir,
            None => self.data_dir.clone().context("--config or --data-dir")?,
        };
        let path = Buffer::path_in(&data_dir);
        // Opening a missing file read-only only says "unable to open".
        anyhow::ensure!(path.exists(), "no buffer at {}", path.display());
        Ok(path)
    }
}

/// The exit code: failure also for a damaged buffer found by `verify`.
pub fn run(command: BufferCommand) -> ExitCode {
    buffer(command).unwrap_or_else(|e| super::exit_code(Err(e)))
}

fn buffer(command: BufferCommand) -> anyhow::Result<ExitCode> {
    match command {
        BufferCommand::Inspect { at, json } => {
            let path = at.buffer_path()?;
            let inspection = BufferReader::open(&path)?.inspect()?;
            if json {
                println!("{}", inspection_json(&path, &inspection));
            } else {
                print!("{}", summary(&path, &inspection, kite_core::now_ms()));
            }
        }
        BufferCommand::Verify { at } => {
            let path = at.buffer_path()?;
            let problems = store::check(&path)?;
            if !problems.is_empty() {
                println!("{}: damaged", path.display());
                for problem in &problems {
                    println!("{problem}");
                }
                // SQLite often stops at the first bad page; say what it costs.
                match store::unreadable_seqs(&path)? {
                    lost if lost.is_empty() => println!("every row can still be read"),
                    lost => println!("rows that cannot be read: seq {lost}"),
                }
                return Ok(ExitCode::FAILURE);
            }
            println!("ok");
        }
        BufferCommand::Export { at, device, output } => {
            let path = at.buffer_path()?;
            let reader = BufferReader::open(&path)?;
            match &output {
                Some(file) => {
                    let out =
                        std::fs::File::create(file).with_context(|| file.display().to_string())?;
                    let rows = export(&reader, device.as_deref(), BufWriter::new(out))
                        .with_context(|| file.display().to_string())?;
                    println!("{rows} rows written to {}", file.display());
                }
                None => {
                    export(&reader, device.as_deref(), std::io::stdout().lock())?;
                }
            }
        }
        BufferCommand::Repair { at, output } => {
            let path = at.buffer_path()?;
            let recovered = store::recover(&path, &output)?;
            println!(
                "recovered {} rows into {} (next seq {}, dropped {})",
                recovered.rows,
                output.display(),
                recovered.last_seq + 1,
                recovered.dropped
            );
            if !recovered.unreadable.is_empty() {
                println!("could not read seq {}", recovered.unreadable);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the rows as the uplink would publish them, one per line; returns
/// how many. A reader that goes away (`| head`) ends the export quietly.
fn export(reader: &BufferReader, device: Option<&str>, mut out: impl Write) -> anyhow::Result<u64> {
    let mut rows = 0;
    for record in reader.rows(device) {
        let line = match wire::message(&record?) {
            Ok(line) => line,
            Err(e) => {
                // The uplink sets such a row aside; the export says so and goes on.
                eprintln!("skipped: {e}");
                continue;
            }
        };
        match writeln!(out, "{line}") {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => return Ok(rows),
            written => written?,
        }
        rows += 1;
    }
    match out.flush() {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(rows),
        flushed => Ok(flushed.map(|()| rows)?),
    }
}

fn inspection_json(path: &Path, inspection: &Inspection) -> serde_json::Value {
    let devices: Vec<_> = inspection
        .devices
        .iter()
        .map(|d| {
            serde_json::json!({
                "device": d.device,
                "rows": d.rows,
                "bytes": d.bytes,
                "oldest_ts": d.oldest_ts_ms,
                "newest_ts": d.newest_ts_ms,
            })
        })
        .collect();
    serde_json::json!({
        "path": path,
        "rows": inspection.totals.rows,
        "bytes": inspection.totals.bytes,
        "dropped": inspection.totals.dropped,
        "set_aside": inspection.totals.set_aside,
        "thinned": inspection.totals.thinned,
        "keep_every": inspection.totals.keep_every,
        "last_seq": inspection.totals.last_seq,
        "oldest_ts": inspection.totals.oldest_ts_ms,
        "newest_ts": inspection.newest_ts_ms,
        "devices": devices,
    })
}

fn summary(path: &Path, inspection: &Inspection, now_ms: i64) -> String {
    let when = |ts: Option<i64>| match ts {
        Some(ts) => format!("{} ({})", kite_core::utc(ts), super::age(now_ms - ts)),
        None => "-".to_string(),
    };
    let mut text = format!(
        "{}\nrows      {}\nbytes     {}\noldest    {}\nnewest    {}\ndropped   {}\nset aside {}\nthinned   {} (keeping 1 sample in {})\nlast seq  {}\n",
        path.display(),
        inspection.totals.rows,
        inspection.totals.bytes,
        when(inspection.totals.oldest_ts_ms),
        when(inspection.newest_ts_ms),
        inspection.totals.dropped,
        inspection.totals.set_aside,
        inspection.totals.thinned,
        inspection.totals.keep_every,
        inspection.totals.last_seq,
    );
    if inspection.devices.is_empty() {
        return text;
    }
    let width = inspection
        .devices
        .iter()
        .map(|d| d.device.len())
        .max()
        .unwrap_or(0)
        .max("device".len());
    text += &format!(
        "\n{:width$}  {:>9}  {:>12}  oldest\n",
        "device", "rows", "bytes"
    );
    for d in &inspection.devices {
        text += &format!(
            "{:width$}  {:>9}  {:>12}  {}\n",
            d.device,
            d.rows,
            d.bytes,
            when(Some(d.oldest_ts_ms))
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_naturally() {
        for (ms, text) in [
            (4_999, "4s ago"),
            (125_000, "2m5s ago"),
            (11_520_000, "3h12m ago"),
            (2 * 86_400_000 + 3_600_000, "2d1h ago"),
            (-5_000, "in the future: check the clocks"),
        ] {
            assert_eq!(super::super::age(ms), text);
        }
    }

    #[test]
    fn summary_lists_totals_then_devices() {
        let inspection = Inspection {
            totals: store::Stats {
                rows: 3,
                bytes: 300,
                dropped: 1,
                set_aside: 2,
                thinned: 4,
                keep_every: 2,
                last_seq: 9,
                oldest_ts_ms: Some(1_000),
            },
            newest_ts_ms: Some(61_000),
            devices: vec![store::DeviceStats {
                device: "meter".into(),
                rows: 3,
                bytes: 300,
                oldest_ts_ms: 1_000,
                newest_ts_ms: 61_000,
            }],
        };
        let text = summary(Path::new("/d/buffer.sqlite3"), &inspection, 121_000);
        assert_eq!(
            text,
            "/d/buffer.sqlite3\n\
             rows      3\n\
             bytes     300\n\
             oldest    1970-01-01T00:00:01.000Z (2m0s ago)\n\
             newest    1970-01-01T00:01:01.000Z (1m0s ago)\n\
             dropped   1\n\
             set aside 2\n\
             thinned   4 (keeping 1 sample in 2)\n\
             last seq  9\n\
             \n\
             device       rows         bytes  oldest\n\
             meter           3           300  1970-01-01T00:00:01.000Z (2m0s ago)\n"
        );
    }
}
