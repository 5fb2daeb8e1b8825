//! The status page: one self-contained HTML file, built into the binary (no
//! external assets, works offline), that polls `/status` and `/history`
//! every two seconds; and the sampling of the buffer's depth its charts draw.
//!
//! The page holds no data, so it answers without the token; when a token is
//! configured the page reads it from its URL fragment (`/#token=...`, which
//! browsers never send to the server) and sends it as a bearer header.

use std::sync::Weak;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{shutting_down, Api};
use crate::ops::vitals::Vitals;

const PAGE: &str = include_str!("status_page.html");

/// How often the buffer's depth is sampled for the page's charts.
const BUFFER_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Inline script and style only, data from this server only: the page
/// cannot load or send anything elsewhere, nor be framed by another site.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'";

pub(super) async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response()
}

pub(super) async fn history(State(api): State<Api>) -> Response {
    let Some(vitals) = api.vitals.upgrade() else {
        return shutting_down();
    };
    let interval_ms = BUFFER_SAMPLE_INTERVAL.as_millis() as u64;
    Json(vitals.history.to_json(interval_ms)).into_response()
}

/// Every [`BUFFER_SAMPLE_INTERVAL`] until `stop` or until the pipeline is
/// gone: samples the buffer, even when no page is open. It holds the
/// vitals only while it does so.
pub(super) async fn keep_history(vitals: Weak<Vitals>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(BUFFER_SAMPLE_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let Some(vitals) = vitals.upgrade() else {
            return;
        };
        // A buffer too busy to answer costs a point on the chart; judging
        // it stuck is the watchdog's job.
        if let Ok(Ok(stats)) =
            tokio::time::timeout(BUFFER_SAMPLE_INTERVAL, vitals.buffer.stats()).await
        {
            vitals
                .history
                .record_buffer(kite_core::now_ms(), stats.rows, stats.oldest_ts_ms);
        }
    }
}
