//! Field buses against real peers: Modbus TCP, RTU and RTU over TCP from
//! pymodbus, raw instruments played on socat serial pairs, devices that fail.

mod failing;
mod modbus;
mod serial;
