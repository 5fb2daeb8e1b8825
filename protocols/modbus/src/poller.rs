//! The task that owns one Modbus TCP device: it polls on the device's own
//! interval, bounds every call with the device's timeout, reconnects with
//! back-off after any transport failure, and applies writes between polls.
//!
//! A fresh connection is made after every timeout: a context reused after a
//! timeout can pair a late response with the next request.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use kite_core::{now_ms, Backoff, PointSample, Reading, Sample};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant, MissedTickBehavior};
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::plan::{plan_reads, ReadBlock};
use crate::point::{Area, PointSpec, WriteError, WritePayload};

/// One device, ready to poll.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    pub name: Arc<str>,
    /// `host:port`, resolved at every connect.
    pub address: String,
    pub unit_id: u8,
    pub poll_interval: Duration,
    pub timeout: Duration,
    pub max_gap: u16,
    pub points: Vec<PointSpec>,
}

/// A write from the uplink; the result goes back on `reply`.
#[derive(Debug)]
pub struct WriteRequest {
    pub point: String,
    pub value: serde_json::Value,
    pub reply: oneshot::Sender<Result<(), WriteError>>,
}

/// Why a call failed. Exceptions leave the connection usable; anything else
/// closes it.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("modbus exception: {0}")]
    Exception(ExceptionCode),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
}

impl CallError {
    fn closes_connection(&self) -> bool {
        !matches!(self, CallError::Exception(_))
    }
}

fn flatten<T>(
    result: Result<tokio_modbus::Result<T>, tokio::time::error::Elapsed>,
    limit: Duration,
) -> Result<T, CallError> {
    match result {
        Err(_) => Err(CallError::Timeout(limit)),
        Ok(Err(e)) => Err(CallError::Transport(e.to_string())),
        Ok(Ok(Err(code))) => Err(CallError::Exception(code)),
        Ok(Ok(Ok(value))) => Ok(value),
    }
}

enum Words {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
}

struct Device {
    spec: DeviceSpec,
    blocks: Vec<ReadBlock>,
    context: Option<Context>,
    backoff: Backoff,
    retry_at: Instant,
}

impl Device {
    async fn connect(&mut self) -> Result<(), CallError> {
        let limit = self.spec.timeout;
        let attempt = async {
            let addr = tokio::net::lookup_host(&self.spec.address)
                .await?
                .next()
                .ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "address did not resolve")
                })?;
            tokio_modbus::client::tcp::connect_slave(addr, Slave(self.spec.unit_id)).await
        };
        let context = timeout(limit, attempt)
            .await
            .map_err(|_| CallError::Timeout(limit))?
            .map_err(|e| CallError::Transport(format!("connect to {}: {e}", self.spec.address)))?;
        info!(device = %self.spec.name, address = %self.spec.address, "connected");
        self.context = Some(context);
        Ok(())
    }

    /// Connects if needed and allowed by the back-off; `Ok(false)` means
    /// "still waiting to retry".
    async fn ensure_connected(&mut self) -> Result<bool, CallError> {
        if self.context.is_some() {
            return Ok(true);
        }
        if Instant::now() < self.retry_at {
            return Ok(false);
        }
        match self.connect().await {
            Ok(()) => Ok(true),
            Err(e) => {
                self.schedule_retry(&e);
                Err(e)
            }
        }
    }

    fn schedule_retry(&mut self, error: &CallError) {
        self.context = None;
        let delay = self.backoff.next_delay();
        self.retry_at = Instant::now() + delay;
        warn!(device = %self.spec.name, %error, retry_in = ?delay, "device unreachable");
    }

    async fn read(&mut self, block: &ReadBlock) -> Result<Words, CallError> {
        let limit = self.spec.timeout;
        let Some(context) = self.context.as_mut() else {
            return Err(CallError::Transport("not connected".into()));
        };
        let (start, count) = (block.start, block.count);
        let words = match block.area {
            Area::Holding => Words::Registers(flatten(
                timeout(limit, context.read_holding_registers(start, count)).await,
                limit,
            )?),
            Area::Input => Words::Registers(flatten(
                timeout(limit, context.read_input_registers(start, count)).await,
                limit,
            )?),
            Area::Coil => Words::Bits(flatten(
                timeout(limit, context.read_coils(start, count)).await,
                limit,
            )?),
            Area::Discrete => Words::Bits(flatten(
                timeout(limit, context.read_discrete_inputs(start, count)).await,
                limit,
            )?),
        };
        let got = match &words {
            Words::Registers(r) => r.len(),
            Words::Bits(b) => b.len(),
        };
        // Bit reads come back padded to whole bytes.
        if got < usize::from(count) {
            return Err(CallError::Transport(format!(
                "asked for {count} values, device sent {got}"
            )));
        }
        Ok(words)
    }

    async fn poll(&mut self) -> Option<Sample> {
        let ts_ms = now_ms();
        let mut readings: Vec<Option<Reading>> = vec![None; self.spec.points.len()];
        match self.ensure_connected().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(self.sample(ts_ms, readings, &e.to_string())),
        }
        let blocks = std::mem::take(&mut self.blocks);
        let mut broken = None;
        for block in &blocks {
            match self.read(block).await {
                Ok(words) => {
                    for &i in &block.points {
                        let point = &self.spec.points[i];
                        let offset = usize::from(point.address - block.start);
                        readings[i] = Some(match &words {
                            Words::Bits(bits) => point.decode_bit(bits[offset]),
                            Words::Registers(regs) => point.decode_registers(
                                &regs[offset..offset + usize::from(point.width())],
                            ),
                        });
                    }
                }
                Err(e) if !e.closes_connection() => {
                    for &i in &block.points {
                        readings[i] = Some(Reading::Bad(e.to_string()));
                    }
                }
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
        self.blocks = blocks;
        match broken {
            Some(e) => {
                self.schedule_retry(&e);
                Some(self.sample(ts_ms, readings, &e.to_string()))
            }
            None => {
                self.backoff.reset();
                Some(self.sample(ts_ms, readings, "not read"))
            }
        }
    }

    /// Builds the sample; points without a reading get `missing` as reason.
    fn sample(&self, ts_ms: i64, readings: Vec<Option<Reading>>, missing: &str) -> Sample {
        let points = self
            .spec
            .points
            .iter()
            .zip(readings)
            .map(|(point, reading)| PointSample {
                name: point.name.clone(),
                unit: point.unit.clone(),
                reading: reading.unwrap_or_else(|| Reading::Bad(missing.to_string())),
            })
            .collect();
        Sample {
            device: self.spec.name.clone(),
            ts_ms,
            points,
        }
    }

    async fn write(
        &mut self,
        point_name: &str,
        value: &serde_json::Value,
    ) -> Result<(), WriteError> {
        let point = self
            .spec
            .points
            .iter()
            .find(|p| &*p.name == point_name)
            .ok_or_else(|| WriteError::UnknownPoint(point_name.to_string()))?;
        let (address, payload) = (point.address, point.encode(value)?);
        if self.context.is_none() {
            self.connect()
                .await
                .map_err(|e| WriteError::Device(e.to_string()))?;
        }
        let limit = self.spec.timeout;
        let context = self.context.as_mut().expect("connected above");
        let result = match payload {
            WritePayload::Coil(on) => flatten(
                timeout(limit, context.write_single_coil(address, on)).await,
                limit,
            ),
            WritePayload::Registers(words) if words.len() == 1 => flatten(
                timeout(limit, context.write_single_register(address, words[0])).await,
                limit,
            ),
            WritePayload::Registers(words) => flatten(
                timeout(limit, context.write_multiple_registers(address, &words)).await,
                limit,
            ),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => {
                if e.closes_connection() {
                    self.schedule_retry(&e);
                }
                Err(WriteError::Device(e.to_string()))
            }
        }
    }
}

/// Polls one device until `shutdown`, sending one sample per poll to
/// `samples` (waiting when it is full: backpressure, not loss).
pub async fn run_device(
    spec: DeviceSpec,
    samples: mpsc::Sender<Sample>,
    mut writes: mpsc::Receiver<WriteRequest>,
    shutdown: CancellationToken,
) {
    let blocks = plan_reads(&spec.points, spec.max_gap);
    debug!(device = %spec.name, requests = blocks.len(), points = spec.points.len(), "read plan");
    let mut ticker = tokio::time::interval(spec.poll_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let backoff_max =
        (spec.poll_interval * 8).clamp(Duration::from_secs(5), Duration::from_secs(60));
    let mut device = Device {
        blocks,
        context: None,
        backoff: Backoff::new(spec.poll_interval.min(Duration::from_secs(1)), backoff_max),
        retry_at: Instant::now(),
        spec,
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                let Some(sample) = device.poll().await else { continue };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    sent = samples.send(sample) => if sent.is_err() { break },
                }
            }
            Some(request) = writes.recv() => {
                let result = device.write(&request.point, &request.value).await;
                // The requester may have given up waiting; nothing to do then.
                let _ = request.reply.send(result);
            }
        }
    }
    while let Ok(request) = writes.try_recv() {
        let _ = request.reply.send(Err(WriteError::ShuttingDown));
    }
    if let Some(mut context) = device.context.take() {
        use tokio_modbus::client::Client;
        let _ = timeout(Duration::from_millis(200), context.disconnect()).await;
    }
}
