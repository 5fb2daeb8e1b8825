//! What a config runs: the links that poll its devices and its plug-ins,
//! with the plug-in engine they share; applying a config to them (at start
//! and at every reload) publishes what they are to the rest of the gateway.

use std::sync::Arc;

use kite_core::ReportRules;
use kite_zigbee::ZigbeeCommand;
use tokio::sync::mpsc;

use super::links::Field;
use super::plugins::Plugins;
use super::sandbox::SandboxSlot;
use crate::config::Config;
use crate::current::Current;
use crate::ops::vitals::Vitals;
use crate::uplink::sparkplug::{declared_types, DeclaredTypes};
use crate::uplink::wire::{MessageRoom, Topics};
use crate::uplink::WriteRoutes;

/// What a config runs (links and plug-ins, and the engine they share), and
/// where what they are is published: health and plug-in status in the
/// vitals, the devices the history keeps, the write routes of the uplink.
pub(super) struct Workload {
    pub sandbox: SandboxSlot,
    pub field: Field,
    pub plugins: Plugins,
    pub routes: Arc<Current<WriteRoutes>>,
    /// The datatypes of the configured points, for Sparkplug births.
    pub declared: Arc<Current<DeclaredTypes>>,
    /// Where the uplink sends network commands, while a Zigbee network runs.
    pub zigbee: Arc<Current<Option<mpsc::Sender<ZigbeeCommand>>>>,
    pub vitals: Arc<Vitals>,
    /// How large what is stored may be, for the ingest task, links and plug-ins.
    pub room: Arc<Current<MessageRoom>>,
    /// The points reported by exception, for the ingest task.
    pub reports: Arc<Current<ReportRules>>,
}

impl Workload {
    /// Brings links and plug-ins in line with `config` (at start, and at
    /// every reload) and publishes the result; what changed, a line each.
    pub async fn apply(&mut self, config: &Config) -> Vec<String> {
        // What is stored from now on, and the plug-ins and codecs started
        // from now on, are bounded by the new settings.
        self.room.set(message_room(config));
        self.reports.set(config.reports.clone());
        let mut changes = self
            .plugins
            .apply(&config.plugins, &config.plugin_trust, &mut self.sandbox)
            .await;
        changes.extend(
            self.field
                .apply(
                    &config.modbus,
                    &config.instruments,
                    config.ble.as_ref(),
                    config.zigbee.as_ref(),
                    &config.plugin_trust,
                    &mut self.sandbox,
                )
                .await,
        );
        let (health, plugins) = (self.field.health(), self.plugins.status());
        let devices = health.devices.iter().map(|(name, _)| name.as_str());
        let plugin_names = plugins.iter().map(|(name, _)| name.as_str());
        self.vitals.history.follow(devices.chain(plugin_names));
        self.vitals.field.set(health);
        self.vitals.plugins.set(plugins);
        self.routes.set(self.field.routes());
        if config.mqtt.sparkplug.is_some() {
            self.declared.set(declared_types(&config.modbus));
        }
        self.zigbee.set(self.field.zigbee_commands());
        changes
    }
    /// Tries again the refused plug-ins whose files changed, and shows
    /// those that started.
    pub async fn retry_refused_plugins(&mut self) {
        if self.plugins.retry_refused(&mut self.sandbox).await {
            self.vitals.plugins.set(self.plugins.status());
        }
    }

    /// Stops every link and waits for it (what they read is handed to the
    /// sample channel); the plug-ins finish the batches they have, then end.
    pub async fn stop(self) {
        self.field.stop().await;
    }
}

/// How large the outputs of plug-ins and codecs may be under `config`.
pub(super) fn message_room(config: &Config) -> MessageRoom {
    MessageRoom::new(
        Topics::new(&config.mqtt.topic_prefix, &config.gateway.id),
        config.mqtt.max_message_bytes,
    )
}
