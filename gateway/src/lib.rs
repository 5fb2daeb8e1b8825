//! Kite's gateway: configuration, the store-and-forward buffer, the MQTT
//! uplink and the wiring between them and the field-bus crates.
//!
//! - [`config`]: the only place that reads TOML; strict, with positions.
//! - [`store`]: SQLite store-and-forward; the source of truth for delivery.
//! - [`uplink`]: MQTT (rumqttc): telemetry, status, writes from the cloud.
//! - [`pipeline`]: pollers -> ingest -> buffer -> uplink, ordered shutdown, reload.
//! - [`field`]: the running links and plug-ins, and applying a new config to them.
//! - [`demo`]: the whole pipeline with simulated devices and an embedded broker.
//! - [`vitals`]: liveness and readiness, the status payload and the metrics.
//! - [`systemd`]: readiness and the data-flow watchdog.
//! - [`http`]: the local HTTP API: health, metrics, status, log level, reload,
//!   and the status page.
//! - [`history`]: recent readings and buffer depth for the status page, bounded.

pub mod config;
pub mod demo;
pub mod field;
pub mod history;
pub mod http;
pub mod pipeline;
pub mod store;
pub mod systemd;
pub mod uplink;
pub mod vitals;
