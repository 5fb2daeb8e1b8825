//! End-to-end tests of the `kite` binary against real peers: Mosquitto
//! brokers and pymodbus devices started on free loopback ports, serial port
//! pairs from socat.

mod bad_input;
mod delivery;
mod modbus;
#[path = "../../plugins/host/tests/common/mod.rs"]
mod plugin_builds;
mod plugins;
mod security;
mod serial;
mod support;
