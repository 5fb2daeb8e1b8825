//! Delivery to a real broker: outages, kill -9, a locked or full buffer,
//! rows the broker cannot take, write results; TLS with a client certificate;
//! the compact layout; Sparkplug B against an independent host application;
//! MQTT 5.

mod layout;
mod mqtt5;
mod outages;
mod sparkplug;
mod tls;
