//! `kite status`, `kite log-level` and `kite reload`: a running gateway, asked through its
//! local HTTP API (found from the same config file).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use std::process::ExitCode;

use kite_gateway::config;
use kite_gateway::ops::http::client_address;

use super::{exit_code, runtime};

const TIMEOUT: Duration = Duration::from_secs(10);

/// One request to the gateway's API; the status code and the body.
async fn call(
    config_path: &Path,
    method: &str,
    path: &str,
    body: String,
) -> anyhow::Result<(u16, String)> {
    let location = config::locate(config_path)?;
    let Some(listen) = location.listen else {
        bail!(
            "{}: the HTTP API is disabled (http.enabled = false)",
            config_path.display()
        );
    };
    let address = client_address(listen);
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("no gateway answers on {address} (is it running?)"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, address.to_string());
        if let Some(token) = &location.token {
            request = request.header(
                hyper::header::AUTHORIZATION,
                format!("Bearer {}", token.expose()),
            );
        }
        let response = sender
            .send_request(request.body(Full::new(Bytes::from(body)))?)
            .await?;
        let code = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((code, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .with_context(|| format!("no answer from {address} within {TIMEOUT:?}"))?
}

pub fn status(config_path: &Path, json: bool) -> ExitCode {
    exit_code(runtime().block_on(show_status(config_path, json)))
}

pub fn log_level(config_path: &Path, filter: &str) -> ExitCode {
    exit_code(runtime().block_on(set_log_level(config_path, filter)))
}

pub fn reload(config_path: &Path) -> ExitCode {
    exit_code(runtime().block_on(ask_reload(config_path)))
}

async fn show_status(config_path: &Path, json: bool) -> anyhow::Result<()> {
    let (code, body) = call(config_path, "GET", "/status", String::new()).await?;
    if code != 200 && code != 503 {
        bail!("the gateway answered {code}: {}", body.trim());
    }
    let status: Value = serde_json::from_str(&body).context("the gateway's status is not JSON")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", summary(&status));
    }
    if status["health"]["live"] == true {
        Ok(())
    } else {
        bail!("the gateway is not live")
    }
}

async fn set_log_level(config_path: &Path, filter: &str) -> anyhow::Result<()> {
    let (code, body) = call(config_path, "PUT", "/log-level", filter.to_string()).await?;
    if code != 200 {
        bail!("the gateway answered {code}: {}", body.trim());
    }
    println!("log filter: {}", body.trim());
    Ok(())
}

async fn ask_reload(config_path: &Path) -> anyhow::Result<()> {
    const KEPT: &str = "not reloaded: the gateway runs on with the config it has";
    // The gateway would refuse it for the same reasons; say them here first.
    if let Err(e) = config::load(config_path) {
        bail!("{e}\n{KEPT}");
    }
    let (code, body) = call(config_path, "POST", "/reload", String::new()).await?;
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    match code {
        200 => {
            let lines = |key: &str| -> Vec<String> {
                answer[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|line| line.as_str().map(String::from))
                    .collect()
            };
            let changes = lines("changes");
            if changes.is_empty() {
                println!("reloaded: nothing changed");
            } else {
                println!("reloaded:");
                for change in changes {
                    println!("  {change}");
                }
            }
            for section in lines("restart_needed") {
                println!("  {section}: changed, takes effect at the next restart");
            }
            Ok(())
        }
        422 => bail!("{}\n{KEPT}", answer["error"].as_str().unwrap_or(&body)),
        _ => bail!("the gateway answered {code}: {}", body.trim()),
    }
}

/// A titled list with a line per entry of `entries` (an object), each
/// `describe`d after its name; nothing when there are none.
fn section(out: &mut String, title: &str, entries: &Value, describe: impl Fn(&Value) -> String) {
    let Some(entries) = entries.as_object().filter(|e| !e.is_empty()) else {
        return;
    };
    *out += title;
    out.push('\n');
    for (name, entry) in entries {
        *out += &format!("  {name:<20} {}\n", describe(entry));
    }
}

/// The status at a glance, for a terminal.
fn summary(status: &Value) -> String {
    let health = &status["health"];
    let verdict = match (health["live"].as_bool(), health["ready"].as_bool()) {
        (Some(true), Some(true)) => "live, ready".to_string(),
        (Some(true), _) => "live, not ready".to_string(),
        _ => "NOT LIVE".to_string(),
    };
    let mut out = format!(
        "gateway {}  kite {}  {verdict}\n",
        status["gateway"].as_str().unwrap_or("?"),
        status["version"].as_str().unwrap_or("?")
    );
    for reason in health["reasons"].as_array().into_iter().flatten() {
        out += &format!("  - {}\n", reason.as_str().unwrap_or_default());
    }
    let buffer = &status["buffer"];
    out += &format!(
        "buffer   {} rows, {} bytes, oldest {}, {} dropped, {} thinned, {} set aside, {} lost\n",
        buffer["rows"],
        buffer["bytes"],
        buffer["oldest_ts"]
            .as_i64()
            .map_or("-".into(), |ts| super::age(kite_core::now_ms() - ts)),
        buffer["dropped"],
        buffer["thinned"],
        buffer["set_aside"],
        buffer["lost"]
    );
    let uplink = &status["uplink"];
    out += &format!(
        "uplink   {}, {} published, {} acknowledged, {} reconnects\n",
        if uplink["connected"] == true {
            "connected"
        } else {
            "DOWN"
        },
        uplink["published"],
        uplink["acknowledged"],
        uplink["reconnects"]
    );
    let certificates = uplink["certificates"].as_array().into_iter().flatten();
    for warning in certificates.filter_map(|c| c["warning"].as_str()) {
        out += &format!("  - {warning}\n");
    }
    section(&mut out, "buses", &status["buses"], |bus| {
        format!(
            "{:<7} {} missed polls, {} link failures",
            bus["state"].as_str().unwrap_or("?"),
            bus["missed_polls"],
            bus["link_failures"]
        )
    });
    section(&mut out, "devices", &status["devices"], |device| {
        format!(
            "{:<11} {} reads, {} timeouts, {} errors{}",
            device["state"].as_str().unwrap_or("?"),
            device["reads"],
            device["timeouts"],
            device["errors"],
            device["last_error"]
                .as_str()
                .map(|e| format!("; last: {e}"))
                .unwrap_or_default()
        )
    });
    section(&mut out, "plug-ins", &status["plugins"], |plugin| {
        format!(
            "{:<11} {} calls, {} failures, {} ms busy",
            plugin["state"].as_str().unwrap_or("?"),
            plugin["calls"],
            plugin["failures"],
            plugin["busy_ms"]
        )
    });
    out
}
