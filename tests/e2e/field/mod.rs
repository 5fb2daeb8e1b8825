//! Field buses against real peers: Modbus TCP, RTU and RTU over TCP from
//! pymodbus, raw instruments played on socat serial pairs, BLE sensors on
//! BlueZ as python-dbusmock serves it, a Zigbee coordinator simulated behind
//! a serial pair, devices that fail.

mod ble;
mod failing;
mod modbus;
mod serial;
mod zigbee;
