//! Running the gateway unattended: what an operator and systemd see.
//!
//! - [`vitals`]: live and ready, judged by progress; the status document.
//! - [`systemd`]: readiness, reloads, stopping, and the watchdog fed from the vitals.
//! - [`history`]: recent readings and buffer depth for the status page, bounded.
//! - [`http`]: the local API (health, metrics, status, log level, reload)
//!   and the status page.

pub mod history;
pub mod http;
pub mod systemd;
pub mod vitals;
