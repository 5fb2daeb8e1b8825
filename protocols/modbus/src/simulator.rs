//! A simulated Modbus TCP device with a full register map, so that the demo
//! and the load generator run with no hardware. Values written by clients
//! stick; [`SimBank::animate`] moves a few registers like a real process.

use std::future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;

const SPACE: usize = 65536;

/// The four data areas of one device.
pub struct SimBank {
    registers: Mutex<Areas>,
}

struct Areas {
    holding: Vec<u16>,
    input: Vec<u16>,
    coils: Vec<bool>,
    discrete: Vec<bool>,
}

impl Default for SimBank {
    fn default() -> Self {
        Self {
            registers: Mutex::new(Areas {
                holding: vec![0; SPACE],
                input: vec![0; SPACE],
                coils: vec![false; SPACE],
                discrete: vec![false; SPACE],
            }),
        }
    }
}

impl SimBank {
    pub fn set_holding(&self, address: u16, words: &[u16]) {
        let mut areas = self.registers.lock().expect("simulator lock");
        let start = usize::from(address);
        let end = (start + words.len()).min(SPACE);
        areas.holding[start..end].copy_from_slice(&words[..end - start]);
    }

    pub fn holding(&self, address: u16, count: u16) -> Vec<u16> {
        let areas = self.registers.lock().expect("simulator lock");
        slice(&areas.holding, address, count)
            .map(<[u16]>::to_vec)
            .unwrap_or_default()
    }

    /// A boiler-like process: holding 0-1 a temperature (f32, degC) that
    /// swings slowly, 2 a pressure in tenths of a bar, 3-4 a u32 counter, and
    /// coil 0 a burner that switches with the temperature.
    pub async fn animate(
        self: Arc<Self>,
        period: Duration,
        phase: f64,
        shutdown: CancellationToken,
    ) {
        let mut tick: u32 = 0;
        let mut ticker = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            tick = tick.wrapping_add(1);
            let t = f64::from(tick) / 10.0 + phase;
            let temperature = (60.0 + 25.0 * t.sin()) as f32;
            let pressure = (15.0 + 3.0 * (t / 2.0).cos()) * 10.0;
            let bits = temperature.to_bits();
            let mut areas = self.registers.lock().expect("simulator lock");
            areas.holding[0] = (bits >> 16) as u16;
            areas.holding[1] = bits as u16;
            areas.holding[2] = pressure as u16;
            areas.holding[3] = (tick >> 16) as u16;
            areas.holding[4] = tick as u16;
            areas.coils[0] = temperature < 60.0;
        }
    }

    fn handle(&self, request: Request<'static>) -> Result<Response, ExceptionCode> {
        let mut areas = self.registers.lock().expect("simulator lock");
        let illegal = ExceptionCode::IllegalDataAddress;
        Ok(match request {
            Request::ReadHoldingRegisters(a, n) => {
                Response::ReadHoldingRegisters(slice(&areas.holding, a, n).ok_or(illegal)?.to_vec())
            }
            Request::ReadInputRegisters(a, n) => {
                Response::ReadInputRegisters(slice(&areas.input, a, n).ok_or(illegal)?.to_vec())
            }
            Request::ReadCoils(a, n) => {
                Response::ReadCoils(slice(&areas.coils, a, n).ok_or(illegal)?.to_vec())
            }
            Request::ReadDiscreteInputs(a, n) => {
                Response::ReadDiscreteInputs(slice(&areas.discrete, a, n).ok_or(illegal)?.to_vec())
            }
            Request::WriteSingleRegister(a, word) => {
                areas.holding[usize::from(a)] = word;
                Response::WriteSingleRegister(a, word)
            }
            Request::WriteMultipleRegisters(a, words) => {
                let start = usize::from(a);
                let target = areas
                    .holding
                    .get_mut(start..start + words.len())
                    .ok_or(illegal)?;
                target.copy_from_slice(&words);
                Response::WriteMultipleRegisters(a, words.len() as u16)
            }
            Request::WriteSingleCoil(a, on) => {
                areas.coils[usize::from(a)] = on;
                Response::WriteSingleCoil(a, on)
            }
            Request::WriteMultipleCoils(a, bits) => {
                let start = usize::from(a);
                let target = areas
                    .coils
                    .get_mut(start..start + bits.len())
                    .ok_or(illegal)?;
                target.copy_from_slice(&bits);
                Response::WriteMultipleCoils(a, bits.len() as u16)
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        })
    }
}

fn slice<T>(area: &[T], address: u16, count: u16) -> Option<&[T]> {
    let start = usize::from(address);
    area.get(start..start + usize::from(count))
}

struct SimService(Arc<SimBank>);

impl Service for SimService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        future::ready(self.0.handle(request))
    }
}

/// Serves `bank` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    bank: Arc<SimBank>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let server = Server::new(listener);
    let on_connected = |stream, socket_addr| {
        let bank = bank.clone();
        async move {
            accept_tcp_connection(stream, socket_addr, move |_| {
                Ok(Some(SimService(bank.clone())))
            })
        }
    };
    server
        .serve_until(&on_connected, |_err| {}, async move {
            shutdown.cancelled_owned().await
        })
        .await
        .map(|_| ())
}
