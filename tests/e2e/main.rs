//! End-to-end tests of the `kite` binary against real peers: Mosquitto
//! brokers and pymodbus devices started on free loopback ports, serial port
//! pairs from socat, and headless Chromium rendering the status page.

mod bad_input;
mod buffer_tools;
mod delivery;
mod demo;
mod modbus;
mod operations;
#[path = "../../plugins/host/tests/common/mod.rs"]
mod plugin_builds;
mod plugins;
mod reload;
mod security;
mod serial;
mod status_page;
mod support;
