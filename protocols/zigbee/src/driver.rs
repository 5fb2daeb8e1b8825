//! A Z-Stack (ZNP) coordinator stick on a serial port.
//!
//! One task reads the port, cuts the bytes into MT frames and hands each to
//! whoever waits for it (the answer to a request, a ZDO response, the
//! confirmation of a data request); anything nobody waits for is an
//! indication, passed on without waiting (what cannot be taken is
//! counted). Requests are serialized: Z-Stack answers one synchronous
//! request at a time, and every wait is bounded.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_serial::{SerialPortBuilderExt, SerialStream};
use tracing::{debug, info};

use crate::coordinator::LineCounters;
use crate::mt::{Deframed, Deframer};
use crate::znp::{self, Incoming, Request};

/// How long Z-Stack may take to answer a synchronous request.
const SRSP_TIMEOUT: Duration = Duration::from_secs(6);
/// Indications waiting for the network task; more are dropped and counted.
const INDICATIONS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum ZnpError {
    #[error("cannot open {port}: {source}")]
    Open {
        port: String,
        source: tokio_serial::Error,
    },
    #[error("the stick did not answer {0} within {1:?}")]
    Timeout(String, Duration),
    #[error("the serial line closed")]
    Closed,
    #[error("serial line: {0}")]
    Io(#[from] std::io::Error),
    #[error("{command} failed with status {status:#04x}")]
    Status { command: String, status: u8 },
    #[error("{0}")]
    Unexpected(String),
}

impl ZnpError {
    /// The stick itself failed (not one request): the line is reopened.
    pub fn is_link_failure(&self) -> bool {
        matches!(
            self,
            ZnpError::Open { .. } | ZnpError::Closed | ZnpError::Io(_)
        ) || matches!(self, ZnpError::Timeout(what, _) if what.starts_with("SREQ"))
    }
}

struct Waiter {
    matches: Box<dyn Fn(&Incoming) -> bool + Send>,
    found: oneshot::Sender<Incoming>,
}

type Waiters = Arc<Mutex<Vec<Waiter>>>;

/// An open stick.
pub struct Znp {
    writer: tokio::sync::Mutex<WriteHalf<SerialStream>>,
    /// Held for the whole of a synchronous request.
    sreq: tokio::sync::Mutex<()>,
    waiters: Waiters,
    reader: JoinHandle<()>,
}

impl Drop for Znp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Znp {
    /// Opens the port; indications nobody waits for go to `indications`,
    /// which closes when the line does.
    pub fn open(
        port: &str,
        baud: u32,
        counters: Arc<LineCounters>,
    ) -> Result<(Self, mpsc::Receiver<Incoming>), ZnpError> {
        let stream = tokio_serial::new(port, baud)
            .flow_control(tokio_serial::FlowControl::None)
            .open_native_async()
            .map_err(|source| ZnpError::Open {
                port: port.to_string(),
                source,
            })?;
        let (read, write) = tokio::io::split(stream);
        let waiters = Waiters::default();
        let (tx, rx) = mpsc::channel(INDICATIONS);
        let reader = tokio::spawn(read_frames(read, waiters.clone(), tx, counters));
        Ok((
            Self {
                writer: tokio::sync::Mutex::new(write),
                sreq: tokio::sync::Mutex::new(()),
                waiters,
                reader,
            },
            rx,
        ))
    }

    async fn write(&self, request: &Request) -> Result<(), ZnpError> {
        let bytes = request.frame().encode();
        debug!(?request, "ZNP >");
        let mut writer = self.writer.lock().await;
        writer.write_all(&bytes).await?;
        writer.flush().await?;
        Ok(())
    }

    /// Waits, from now on, for the first frame `matches` accepts; see
    /// [`Znp::wait`].
    pub fn expect(
        &self,
        matches: impl Fn(&Incoming) -> bool + Send + 'static,
    ) -> oneshot::Receiver<Incoming> {
        let (found, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Waiter {
                matches: Box::new(matches),
                found,
            });
        rx
    }

    /// Sends an asynchronous request (no answer of its own).
    pub async fn send(&self, request: &Request) -> Result<(), ZnpError> {
        self.write(request).await
    }

    /// Sends a synchronous request and returns its answer's payload; a
    /// non-zero status (the first byte, for commands that have one) is an
    /// error unless `accept` takes it.
    pub async fn request(&self, request: &Request) -> Result<Vec<u8>, ZnpError> {
        self.request_accepting(request, &[0]).await
    }

    /// As [`Znp::request`], taking any status in `accept`.
    pub async fn request_accepting(
        &self,
        request: &Request,
        accept: &[u8],
    ) -> Result<Vec<u8>, ZnpError> {
        let _one_at_a_time = self.sreq.lock().await;
        let Some((subsystem, id)) = znp::srsp_for(request) else {
            return Err(ZnpError::Unexpected(format!(
                "{request:?} has no synchronous answer"
            )));
        };
        let answer = self.expect(move |incoming| {
            matches!(incoming, Incoming::Srsp { subsystem: s, id: i, .. } if *s == subsystem && *i == id)
        });
        self.write(request).await?;
        let payload = match tokio::time::timeout(SRSP_TIMEOUT, answer).await {
            Ok(Ok(Incoming::Srsp { payload, .. })) => payload,
            Ok(Ok(other)) => return Err(ZnpError::Unexpected(format!("{other:?}"))),
            Ok(Err(_)) => return Err(ZnpError::Closed),
            Err(_) => {
                return Err(ZnpError::Timeout(
                    format!("SREQ {}", name(request)),
                    SRSP_TIMEOUT,
                ))
            }
        };
        if has_status(request) {
            let status = payload.first().copied().unwrap_or(0xff);
            if !accept.contains(&status) {
                return Err(ZnpError::Status {
                    command: name(request),
                    status,
                });
            }
        }
        Ok(payload)
    }

    /// Sends `request`, checks its answer, then waits up to `within` for
    /// the first indication `matches` accepts (a ZDO response, a data
    /// confirmation): the wait starts before the request goes, so a quick
    /// indication is not missed.
    pub async fn request_then(
        &self,
        request: &Request,
        matches: impl Fn(&Incoming) -> bool + Send + 'static,
        within: Duration,
    ) -> Result<Incoming, ZnpError> {
        let indication = self.expect(matches);
        self.request(request).await?;
        self.wait(indication, &name(request), within).await
    }

    /// Waits up to `within` for the first frame `matches` accepts.
    pub async fn wait_for(
        &self,
        what: &str,
        matches: impl Fn(&Incoming) -> bool + Send + 'static,
        within: Duration,
    ) -> Result<Incoming, ZnpError> {
        let found = self.expect(matches);
        self.wait(found, what, within).await
    }

    /// Sends an asynchronous request and waits for what answers it.
    pub async fn send_then(
        &self,
        request: &Request,
        matches: impl Fn(&Incoming) -> bool + Send + 'static,
        within: Duration,
    ) -> Result<Incoming, ZnpError> {
        let found = self.expect(matches);
        self.send(request).await?;
        self.wait(found, &name(request), within).await
    }

    /// What [`Znp::expect`] waits for, within `within`.
    pub async fn wait(
        &self,
        found: oneshot::Receiver<Incoming>,
        what: &str,
        within: Duration,
    ) -> Result<Incoming, ZnpError> {
        match tokio::time::timeout(within, found).await {
            Ok(Ok(incoming)) => Ok(incoming),
            Ok(Err(_)) => Err(ZnpError::Closed),
            Err(_) => {
                // The waiter is dropped with its receiver: forget it.
                self.waiters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|w| !w.found.is_closed());
                Err(ZnpError::Timeout(what.to_string(), within))
            }
        }
    }
}

/// Whether the answer to `request` starts with a status byte.
fn has_status(request: &Request) -> bool {
    !matches!(request, Request::SysPing | Request::SysVersion)
}

/// A request's name for errors and the log: its variant.
fn name(request: &Request) -> String {
    let debug = format!("{request:?}");
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_string()
}

async fn read_frames(
    mut port: tokio::io::ReadHalf<SerialStream>,
    waiters: Waiters,
    indications: mpsc::Sender<Incoming>,
    counters: Arc<LineCounters>,
) {
    let mut deframer = Deframer::new();
    let mut buf = [0u8; 512];
    let mut out = Vec::new();
    loop {
        let n = match port.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        deframer.push(&buf[..n], &mut out);
        for item in out.drain(..) {
            let frame = match item {
                Deframed::Frame(frame) => frame,
                Deframed::Discarded { bytes, reason } => {
                    debug!(bytes, reason, "ZNP line: bytes discarded");
                    counters
                        .discarded_bytes
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                    continue;
                }
            };
            let incoming = match znp::parse(&frame) {
                Ok(incoming) => incoming,
                Err(e) => {
                    info!("ZNP frame not understood: {e}");
                    counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            debug!(?incoming, "ZNP <");
            let incoming = {
                let mut waiters = waiters.lock().unwrap_or_else(|e| e.into_inner());
                waiters.retain(|w| !w.found.is_closed());
                match waiters.iter().position(|w| (w.matches)(&incoming)) {
                    Some(i) => {
                        let waiter = waiters.remove(i);
                        let _ = waiter.found.send(incoming);
                        None
                    }
                    None => Some(incoming),
                }
            };
            if let Some(incoming) = incoming {
                if indications.try_send(incoming).is_err() {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    // Whoever still waits learns the line is gone.
    waiters.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
