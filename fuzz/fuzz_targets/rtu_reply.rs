//! Arbitrary bytes as a slave's reply to a Modbus RTU read, through the RTU
//! client Kite polls with, then through Kite's point decoders: the call
//! always ends (an error or registers), nothing panics, and what decodes
//! has the width its type says.

#![no_main]

use std::sync::Arc;
use std::time::Duration;

use kite_modbus::{Area, ByteOrder, DataType, PointSpec};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_modbus::client::{rtu, Reader};
use tokio_modbus::Slave;

const REGISTERS: u16 = 8;

fn points() -> Vec<PointSpec> {
    let types = [
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::U64,
        DataType::I64,
        DataType::F32,
        DataType::F64,
    ];
    let orders = [ByteOrder::Abcd, ByteOrder::Dcba, ByteOrder::Badc, ByteOrder::Cdab];
    let mut points = Vec::new();
    for data_type in types {
        for order in orders {
            points.push(PointSpec {
                name: Arc::from("p"),
                area: Area::Holding,
                address: 0,
                data_type,
                order,
                scale: 0.1,
                offset: 1.0,
                unit: None,
                writable: false,
                bit: None,
                length: None,
            });
        }
    }
    points.push(PointSpec {
        data_type: DataType::String,
        length: Some(REGISTERS),
        ..points[0].clone()
    });
    points.push(PointSpec {
        data_type: DataType::Bool,
        bit: Some(15),
        ..points[0].clone()
    });
    points
}

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (kite_end, mut slave_end) = tokio::io::duplex(1024);
        let reply = data.to_vec();
        let slave = tokio::spawn(async move {
            let mut request = [0u8; 8];
            if slave_end.read_exact(&mut request).await.is_ok() {
                let _ = slave_end.write_all(&reply).await;
            }
            // Closing ends a read that waits for more.
            let _ = slave_end.shutdown().await;
        });
        let mut context = rtu::attach_slave(kite_end, Slave(1));
        let outcome = tokio::time::timeout(
            Duration::from_secs(5),
            context.read_holding_registers(0, REGISTERS),
        )
        .await
        .expect("a closed line ends the call");
        if let Ok(Ok(words)) = outcome {
            for point in points() {
                let width = usize::from(point.width());
                if let Some(registers) = words.get(..width) {
                    let _ = point.decode_registers(registers);
                }
            }
        }
        let _ = slave.await;
    });
});
