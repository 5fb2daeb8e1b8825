//! Network commands from the cloud: `{prefix}/{gateway}/zigbee/permit_join`
//! (`{"id", "seconds"}`) and `.../zigbee/remove` (`{"id", "address"}`),
//! each answered on its own topic plus `/result` as `{"id", "ok",
//! "error"}`, through the buffer like write results.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::client::Message;
use kite_zigbee::ZigbeeCommand;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::wire::{Answer, CommandResult};
use super::{Uplink, WriteOutcome};

/// How long a command waits for the network before its result says so:
/// a leave request to a sleepy device can take that long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermitJoin {
    #[serde(default)]
    id: serde_json::Value,
    seconds: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Remove {
    #[serde(default)]
    id: serde_json::Value,
    address: String,
}

impl Uplink {
    /// Carries out a network command; every command gets a result.
    pub(super) fn on_command(&self, publish: &Message) -> bool {
        let Some(command) = self.topics.zigbee_command(&publish.topic) else {
            return false;
        };
        let command = command.to_string();
        let payload = &publish.payload[..];
        let id = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("id").cloned())
            .unwrap_or_default();
        if publish.retain {
            self.answer(
                command,
                id,
                Err("retained commands are refused: publish them without retain".into()),
            );
            return true;
        }
        let Some(network) = self.zigbee.get().as_ref().clone() else {
            self.answer(command, id, Err("no Zigbee network is configured".into()));
            return true;
        };
        let (reply, response) = oneshot::channel();
        let (id, request) = match command.as_str() {
            "zigbee/permit_join" => match serde_json::from_slice::<PermitJoin>(payload) {
                Ok(request) => (
                    request.id,
                    ZigbeeCommand::PermitJoin {
                        seconds: request.seconds,
                        reply,
                    },
                ),
                Err(e) => {
                    self.answer(
                        command,
                        id,
                        Err(format!(
                            "bad request: {e}; expected {{\"id\", \"seconds\"}}"
                        )),
                    );
                    return true;
                }
            },
            "zigbee/remove" => {
                match serde_json::from_slice::<Remove>(payload) {
                    Ok(request) => match kite_zigbee::znp::ieee_from_str(&request.address) {
                        Some(ieee) => (request.id, ZigbeeCommand::Remove { ieee, reply }),
                        None => {
                            self.answer(command, request.id, Err(format!("address {:?}: expected an IEEE address like 0x00124b0012345678", request.address)));
                            return true;
                        }
                    },
                    Err(e) => {
                        self.answer(
                            command,
                            id,
                            Err(format!(
                                "bad request: {e}; expected {{\"id\", \"address\"}}"
                            )),
                        );
                        return true;
                    }
                }
            }
            other => {
                self.answer(command.clone(), id, Err(format!("unknown command {other:?}: Kite takes zigbee/permit_join and zigbee/remove")));
                return true;
            }
        };
        let results = self.results.clone();
        let counters = self.counters.clone();
        tokio::spawn(async move {
            let outcome = match network.try_send(request) {
                Err(mpsc::error::TrySendError::Full(_)) => {
                    Err("busy: too many commands queued".to_string())
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Err("the Zigbee network is stopping".to_string())
                }
                Ok(()) => match tokio::time::timeout(COMMAND_TIMEOUT, response).await {
                    Err(_) => Err(format!(
                        "no answer from the network within {COMMAND_TIMEOUT:?}"
                    )),
                    Ok(Err(_)) => Err("the Zigbee network is stopping".to_string()),
                    Ok(Ok(result)) => result,
                },
            };
            match &outcome {
                Ok(()) => info!(%command, "command done"),
                Err(error) => warn!(%command, %error, "command failed"),
            }
            let outcome = command_outcome(command, id, outcome);
            if results.send(outcome).await.is_err() {
                counters.results_dropped.fetch_add(1, Ordering::Relaxed);
            }
        });
        true
    }

    fn answer(&self, command: String, id: serde_json::Value, result: Result<(), String>) {
        if let Err(error) = &result {
            warn!(%command, %error, "command refused");
        }
        if self
            .results
            .try_send(command_outcome(command, id, result))
            .is_err()
        {
            self.counters
                .results_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn command_outcome(
    command: String,
    id: serde_json::Value,
    result: Result<(), String>,
) -> WriteOutcome {
    WriteOutcome {
        device: command,
        ts_ms: kite_core::now_ms(),
        result: Answer::Command(CommandResult {
            id,
            ok: result.is_ok(),
            error: result.err(),
        }),
    }
}
