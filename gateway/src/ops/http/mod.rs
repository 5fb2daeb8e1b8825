//! The local HTTP API: `/healthz` (live and ready, with reasons), `/metrics`
//! (Prometheus text format), `/status` (the status message, with health),
//! `PUT /log-level` (change the log filter at run time), `POST /reload`
//! (read the config file again and apply it), and the status page (`GET /`,
//! which polls `/status` and `/history`; see `page`).
//!
//! It listens on loopback by default. With a token (required when it
//! listens anywhere else), every path but `/healthz` and the page itself
//! (static, no data in it) needs `Authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::control::{LogControl, ReloadRequest};
use crate::ops::vitals::{Verdict, Vitals};
use crate::uplink::wire::Status;
use crate::uplink::StatusSource;

mod metrics;
mod page;

#[derive(Clone)]
pub struct Api {
    /// Weak: a client holding a connection open must not keep the
    /// pipeline (and its buffer) from shutting down.
    vitals: Weak<Vitals>,
    gateway_id: Arc<str>,
    token: Option<Arc<str>>,
    log: Option<LogControl>,
    reloads: mpsc::Sender<ReloadRequest>,
}

impl Api {
    pub fn new(
        vitals: &Arc<Vitals>,
        gateway_id: String,
        token: Option<String>,
        log: Option<LogControl>,
        reloads: mpsc::Sender<ReloadRequest>,
    ) -> Self {
        Self {
            vitals: Arc::downgrade(vitals),
            gateway_id: Arc::from(gateway_id),
            token: token.map(Arc::from),
            log,
            reloads,
        }
    }
}

/// Serves the API on `listener` until `stop`.
pub async fn serve(listener: tokio::net::TcpListener, api: Api, stop: CancellationToken) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/history", get(page::history))
        .route("/log-level", put(log_level))
        .route("/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(api.clone(), require_token))
        .route("/healthz", get(healthz))
        .route("/", get(page::index))
        .with_state(api.clone());
    tokio::spawn(page::keep_history(api.vitals, stop.clone()));
    if let Ok(address) = listener.local_addr() {
        info!(%address, "HTTP API listening");
    }
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        warn!(error = %e, "HTTP API stopped");
    }
}

async fn require_token(
    State(api): State<Api>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &api.token else {
        return next.run(request).await;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    // Constant time: how long the comparison takes tells nothing about a guess.
    let valid = given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.as_bytes())));
    if valid {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required\n",
        )
            .into_response()
    }
}

/// Once the pipeline has stopped, the vitals are gone.
fn shutting_down() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "the gateway is shutting down\n",
    )
        .into_response()
}

async fn healthz(State(api): State<Api>) -> Response {
    let Some(vitals) = api.vitals.upgrade() else {
        return shutting_down();
    };
    let verdict = vitals.check().await;
    let code = if verdict.live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(verdict)).into_response()
}

/// `/status`: the status message, the gateway's id and its health.
#[derive(serde::Serialize)]
struct ApiStatus<'a> {
    #[serde(flatten)]
    status: Status,
    gateway: &'a str,
    health: &'a Verdict,
}

async fn status(State(api): State<Api>) -> Response {
    let Some(vitals) = api.vitals.upgrade() else {
        return shutting_down();
    };
    let verdict = vitals.check().await;
    let Some(stats) = &verdict.buffer else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"health": verdict})),
        )
            .into_response();
    };
    Json(ApiStatus {
        status: vitals.status(stats),
        gateway: &api.gateway_id,
        health: &verdict,
    })
    .into_response()
}

async fn log_level(State(api): State<Api>, filter: String) -> Response {
    let Some(log) = &api.log else {
        return (
            StatusCode::NOT_IMPLEMENTED,
            "the log filter is fixed in this process\n",
        )
            .into_response();
    };
    let filter = filter.trim();
    match log(filter) {
        Ok(()) => {
            info!(filter, "log filter changed");
            (StatusCode::OK, format!("{filter}\n")).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// Reads the config file again and applies it: 200 with what changed, or
/// 422 with the problems, the running config untouched.
async fn reload(State(api): State<Api>) -> Response {
    let (reply, outcome) = oneshot::channel();
    if api.reloads.send(reply).await.is_err() {
        return shutting_down();
    }
    match outcome.await {
        Ok(Ok(applied)) => Json(applied).into_response(),
        Ok(Err(problems)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": problems })),
        )
            .into_response(),
        Err(_) => shutting_down(),
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    let Some(vitals) = api.vitals.upgrade() else {
        return shutting_down();
    };
    let verdict = vitals.check().await;
    let text = metrics::render(&vitals, &verdict);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Where the API of a running gateway answers, for `kite status`.
pub fn client_address(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
    } else {
        listen
    }
}
