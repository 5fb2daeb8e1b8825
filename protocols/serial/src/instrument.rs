//! The task that owns one raw serial instrument's port: it reads (or asks on
//! an interval and reads the reply), cuts the bytes into frames, decodes
//! every frame into points, and survives the port going away.
//!
//! Bad input never stops the line: garbage, overlong and partial frames are
//! dropped and counted, frames that do not decode are counted, and the next
//! good frame is read as usual.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use kite_core::serial::SerialLine;
use kite_core::{now_ms, Backoff, DeviceHealth, PointSample, Reading, Sample, SampleSink};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_serial::SerialStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::decode::{DecodeError, RegexDecoder};
use crate::framing::{FrameEvent, Framer, Framing};
use crate::nmea::NmeaDecoder;

/// One raw serial instrument, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct InstrumentSpec {
    pub name: Arc<str>,
    pub line: SerialLine,
    pub framing: Framing,
    pub max_frame: usize,
    /// Sent every `poll_interval`; without it the instrument talks on its own.
    pub request: Option<Vec<u8>>,
    pub poll_interval: Duration,
    /// How long a reply may take; for an instrument that talks on its own,
    /// how long the line may stay silent before it is reported.
    pub timeout: Duration,
}

/// Turns one frame into points. Implemented by the built-in decoders and by
/// whatever the embedding application brings (a WASM codec plug-in).
pub trait FrameDecoder: Send + Sync {
    fn decode(&mut self, frame: &[u8]) -> Result<Vec<PointSample>, DecodeError>;

    /// Every point marked bad with `reason`, when the instrument did not
    /// answer; empty when the decoder does not know its points up front.
    fn all_bad(&self, reason: &str) -> Vec<PointSample> {
        let _ = reason;
        Vec::new()
    }
}

impl FrameDecoder for RegexDecoder {
    fn decode(&mut self, frame: &[u8]) -> Result<Vec<PointSample>, DecodeError> {
        RegexDecoder::decode(self, frame)
    }

    fn all_bad(&self, reason: &str) -> Vec<PointSample> {
        self.fields()
            .iter()
            .map(|field| PointSample {
                name: field.point.clone(),
                unit: field.unit.clone(),
                reading: Reading::Bad(reason.to_string()),
            })
            .collect()
    }
}

impl FrameDecoder for NmeaDecoder {
    fn decode(&mut self, frame: &[u8]) -> Result<Vec<PointSample>, DecodeError> {
        NmeaDecoder::decode(self, frame)
    }
}

/// Read size per call; frames longer than this arrive over several reads.
const READ_CHUNK: usize = 512;

enum Ended {
    Shutdown,
    PortLost(String),
}

struct Instrument {
    spec: InstrumentSpec,
    decoder: Box<dyn FrameDecoder>,
    health: Arc<DeviceHealth>,
    samples: SampleSink,
    framer: Framer,
    events: Vec<FrameEvent>,
    /// Whether the last frame decoded, so that a run of failures logs once.
    decoding: bool,
    /// Line framing on "\n" also takes "\r\n" lines: the "\r" is dropped.
    strip_cr: bool,
}

impl Instrument {
    /// Decodes what the framer completed and sends the samples; `Ok(n)` is
    /// the number of frames seen.
    async fn drain(&mut self, shutdown: &CancellationToken) -> Result<usize, Ended> {
        let mut frames = 0;
        for event in std::mem::take(&mut self.events) {
            match event {
                FrameEvent::Frame(frame) => {
                    frames += 1;
                    let frame = match frame.as_slice() {
                        [body @ .., b'\r'] if self.strip_cr => body,
                        whole => whole,
                    };
                    match self.decoder.decode(frame) {
                        Ok(points) => {
                            self.health.record_read(now_ms());
                            self.decoding = true;
                            if !points.is_empty() {
                                self.send(points, shutdown).await?;
                            }
                        }
                        Err(e) => {
                            DeviceHealth::count(&self.health.errors);
                            self.health.set_last_error(e.to_string());
                            if self.decoding {
                                warn!(device = %self.spec.name, error = %e, "frame did not decode");
                            }
                            self.decoding = false;
                        }
                    }
                }
                FrameEvent::Discarded { bytes, reason } => {
                    self.health
                        .discarded_bytes
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                    self.health
                        .set_last_error(format!("{bytes} bytes dropped: {reason:?}"));
                }
            }
        }
        Ok(frames)
    }

    async fn send(
        &self,
        points: Vec<PointSample>,
        shutdown: &CancellationToken,
    ) -> Result<(), Ended> {
        let sample = Sample {
            device: self.spec.name.clone(),
            ts_ms: now_ms(),
            points,
        };
        self.samples
            .send(sample, shutdown)
            .await
            .map_err(|_| Ended::Shutdown)
    }

    fn discard_partial(&mut self) {
        let dropped = self.framer.reset();
        if dropped > 0 {
            self.health
                .discarded_bytes
                .fetch_add(dropped as u64, Ordering::Relaxed);
            self.health
                .set_last_error(format!("{dropped} bytes of an unfinished frame dropped"));
        }
    }

    /// Reads once, feeding the framer; `Ok(false)` on silence.
    async fn read_some(&mut self, port: &mut SerialStream, limit: Duration) -> Result<bool, Ended> {
        let mut chunk = [0u8; READ_CHUNK];
        match timeout(limit, port.read(&mut chunk)).await {
            Err(_) => Ok(false),
            Ok(Ok(0)) => Err(Ended::PortLost("port closed".into())),
            Ok(Ok(n)) => {
                self.framer.push(&chunk[..n], &mut self.events);
                Ok(true)
            }
            Ok(Err(e)) => Err(Ended::PortLost(e.to_string())),
        }
    }

    /// An instrument that talks on its own.
    async fn listen(&mut self, port: &mut SerialStream, shutdown: &CancellationToken) -> Ended {
        let mut silent_since = Instant::now();
        loop {
            let read = tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                read = self.read_some(port, self.spec.timeout) => read,
            };
            match read {
                Err(ended) => return ended,
                Ok(true) => match self.drain(shutdown).await {
                    Err(ended) => return ended,
                    Ok(0) => {}
                    Ok(_) => silent_since = Instant::now(),
                },
                Ok(false) => {
                    // A frame cut off by silence will not be finished.
                    self.discard_partial();
                    DeviceHealth::count(&self.health.timeouts);
                    let reason = format!("no frame for {:?}", silent_since.elapsed());
                    warn!(device = %self.spec.name, "{reason}");
                    self.health.set_last_error(reason.clone());
                    let bad = self.decoder.all_bad(&reason);
                    if !bad.is_empty() {
                        if let Err(ended) = self.send(bad, shutdown).await {
                            return ended;
                        }
                    }
                }
            }
        }
    }

    /// An instrument that answers a query.
    async fn ask(
        &mut self,
        port: &mut SerialStream,
        request: &[u8],
        shutdown: &CancellationToken,
    ) -> Ended {
        let mut ticker = tokio::time::interval(self.spec.poll_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ended::Shutdown,
                _ = ticker.tick() => {}
            }
            // Whatever arrived since the last reply is not an answer to this query.
            self.discard_partial();
            if let Err(e) = port.write_all(request).await {
                return Ended::PortLost(e.to_string());
            }
            let asked = Instant::now();
            let deadline = asked + self.spec.timeout;
            let answered = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let read = tokio::select! {
                    _ = shutdown.cancelled() => return Ended::Shutdown,
                    read = self.read_some(port, left) => read,
                };
                match read {
                    Err(ended) => return ended,
                    Ok(false) => break false,
                    Ok(true) => match self.drain(shutdown).await {
                        Err(ended) => return ended,
                        Ok(0) => {}
                        Ok(_) => break true,
                    },
                }
            };
            if answered {
                self.health.record_poll(asked.elapsed());
            }
            if !answered {
                self.discard_partial();
                DeviceHealth::count(&self.health.timeouts);
                let reason = format!("no reply within {:?}", self.spec.timeout);
                self.health.set_last_error(reason.clone());
                let bad = self.decoder.all_bad(&reason);
                if !bad.is_empty() {
                    if let Err(ended) = self.send(bad, shutdown).await {
                        return ended;
                    }
                }
            }
        }
    }
}

/// Runs one instrument until `shutdown`, reopening its port with back-off
/// whenever it fails or disappears. What was read before `shutdown` is
/// handed over too.
pub async fn run_instrument(
    spec: InstrumentSpec,
    decoder: Box<dyn FrameDecoder>,
    health: Arc<DeviceHealth>,
    samples: SampleSink,
    shutdown: CancellationToken,
) {
    let framer = match Framer::new(spec.framing.clone(), spec.max_frame) {
        Ok(framer) => framer,
        Err(e) => {
            warn!(device = %spec.name, error = %e, "framing not usable; instrument not started");
            health.set_last_error(e.to_string());
            return;
        }
    };
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut instrument = Instrument {
        strip_cr: matches!(&spec.framing, Framing::Line { delimiter } if delimiter == b"\n"),
        spec,
        decoder,
        health,
        samples,
        framer,
        events: Vec::new(),
        decoding: true,
    };
    loop {
        let ended = match instrument.spec.line.open() {
            Ok(mut port) => {
                info!(device = %instrument.spec.name, port = %instrument.spec.line.port, "port open");
                instrument.health.offline.store(false, Ordering::Relaxed);
                backoff.reset();
                instrument.discard_partial();
                match instrument.spec.request.clone() {
                    Some(request) => instrument.ask(&mut port, &request, &shutdown).await,
                    None => instrument.listen(&mut port, &shutdown).await,
                }
            }
            Err(e) => Ended::PortLost(format!("open {}: {e}", instrument.spec.line.port)),
        };
        let Ended::PortLost(reason) = ended else {
            return;
        };
        DeviceHealth::count(&instrument.health.errors);
        instrument.health.set_last_error(reason.clone());
        instrument.health.offline.store(true, Ordering::Relaxed);
        let delay = backoff.next_delay();
        warn!(device = %instrument.spec.name, error = %reason, retry_in = ?delay, "serial port unavailable");
        let bad = instrument
            .decoder
            .all_bad(&format!("port unavailable: {reason}"));
        if !bad.is_empty() && instrument.send(bad, &shutdown).await.is_err() {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
