//! Running unattended: the local API, systemd's notify protocol and
//! watchdog, and the status page in Chromium.

mod operations;
mod secrets;
mod status_page;
