//! Kite's gateway: the daemon that joins the field-bus crates, the plug-in
//! host, the store-and-forward buffer and the MQTT uplink, and what an
//! operator sees of it. Each room is a folder; each arrow between them
//! points one way (see ARCHITECTURE.md).
//!
//! - [`config`]: the only place that reads TOML: parse (pure) and resolve
//!   (the files a config names).
//! - [`store`]: SQLite store-and-forward; the source of truth for delivery.
//! - [`uplink`]: MQTT: delivery from the buffer, status, writes from the
//!   cloud; [`uplink::wire`] owns every topic and payload.
//! - [`daemon`]: start, the ingest task, the workload (links and
//!   plug-ins), reload, and the order of shutdown.
//! - [`ops`]: vitals (live, ready, status), systemd, the status page's
//!   history, the local HTTP API.
//! - [`counters`], [`current`], [`control`]: small leaves the rooms share.

pub mod config;
pub mod control;
pub mod counters;
pub mod current;
pub mod daemon;
pub mod ops;
pub mod store;
pub mod uplink;
