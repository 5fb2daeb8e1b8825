//! The running plug-ins, each on a thread of its own, and how a new config
//! is applied to them; hot swapping when a plug-in's file changes, and
//! another try at a refused one when its file (or signature) does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use kite_plugins::{PluginCounters, PluginError, PluginHandle, PluginOutput, PluginSpec, Trust};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::reconcile::{reconcile, Step};
use super::sandbox::{FileStamp, SandboxSlot};
use crate::config::PluginConfig;
use crate::current::Current;
use crate::ops::vitals::PluginList;
use crate::uplink::wire::MessageRoom;

/// The plug-ins the ingest task offers samples to.
pub type PluginHandles = Vec<Arc<PluginHandle>>;

struct RunningPlugin {
    config: PluginConfig,
    trust: Trust,
    /// None when it was refused.
    handle: Option<Arc<PluginHandle>>,
    counters: Arc<PluginCounters>,
    /// The version of its file that was refused: another is tried.
    refused_as: Option<FileStamp>,
}

/// The running plug-ins, each on a thread of its own.
pub struct Plugins {
    running: Vec<RunningPlugin>,
    outputs: mpsc::Sender<PluginOutput>,
    state_path: PathBuf,
    /// How large a plug-in's output may become.
    room: Arc<Current<MessageRoom>>,
    /// What the ingest task and the file watcher see.
    pub handles: Arc<Current<PluginHandles>>,
}

impl Plugins {
    pub fn new(
        outputs: mpsc::Sender<PluginOutput>,
        state_path: PathBuf,
        room: Arc<Current<MessageRoom>>,
    ) -> Self {
        Self {
            running: Vec::new(),
            outputs,
            state_path,
            room,
            handles: Arc::new(Current::new(Vec::new())),
        }
    }

    /// Brings the running plug-ins in line with the config; what changed,
    /// one line each. A plug-in that cannot be read, verified or compiled is
    /// refused, loudly and in the status, and the gateway runs on without it;
    /// when it was running with other settings, that version stays.
    pub async fn apply(
        &mut self,
        configs: &[PluginConfig],
        trust: &Trust,
        sandbox: &mut SandboxSlot,
    ) -> Vec<String> {
        let steps = reconcile(
            std::mem::take(&mut self.running),
            configs.iter().collect(),
            |plugin| plugin.config.name.clone(),
            |config| config.name.clone(),
            |plugin, config| plugin.config == **config && plugin.trust == *trust,
        );
        let mut changes = Vec::new();
        for step in steps {
            let (config, old) = match step {
                Step::Keep(plugin) => {
                    self.running.push(plugin);
                    continue;
                }
                Step::Stop(plugin) => {
                    // Dropping a handle lets its thread finish the batches it has, then end.
                    let name = &plugin.config.name;
                    info!(plugin = %name, "plug-in stopped");
                    changes.push(format!("plug-in {name}: stopped"));
                    continue;
                }
                Step::Change(old, config) => (config, Some(old)),
                Step::Start(config) => (config, None),
            };
            let name = &config.name;
            // Taken first, so that a file replaced while it loads is tried again.
            let stamp = FileStamp::of(&config.path);
            let started = self.start(config, trust, sandbox).await;
            match (started, old) {
                (Ok(handle), old) => {
                    info!(plugin = %name, path = %config.path.display(), "plug-in loaded");
                    let verb = if old.is_some() {
                        "restarted"
                    } else {
                        "started"
                    };
                    changes.push(format!("plug-in {name}: {verb}"));
                    self.running.push(RunningPlugin {
                        config: config.clone(),
                        trust: trust.clone(),
                        counters: handle.counters.clone(),
                        handle: Some(Arc::new(handle)),
                        refused_as: None,
                    });
                }
                (Err(e), Some(old)) if old.handle.is_some() => {
                    error!(plugin = %name, path = %config.path.display(), error = %e, "plug-in with new settings REFUSED; the running one stays");
                    changes.push(format!(
                        "plug-in {name}: new settings refused ({e}); the running version stays"
                    ));
                    self.running.push(old);
                }
                (Err(e), _) => {
                    error!(plugin = %name, path = %config.path.display(), error = %e, "plug-in REFUSED");
                    changes.push(format!("plug-in {name}: refused ({e})"));
                    self.running.push(RunningPlugin {
                        config: config.clone(),
                        trust: trust.clone(),
                        handle: None,
                        counters: Arc::new(PluginCounters::refused()),
                        refused_as: Some(stamp),
                    });
                }
            }
        }
        self.publish_handles();
        changes
    }

    fn publish_handles(&self) {
        self.handles.set(
            self.running
                .iter()
                .filter_map(|plugin| plugin.handle.clone())
                .collect(),
        );
    }

    /// Tries again each refused plug-in whose file or signature changed
    /// since it was refused; whether one started.
    pub async fn retry_refused(&mut self, sandbox: &mut SandboxSlot) -> bool {
        let mut started = false;
        for index in 0..self.running.len() {
            let plugin = &self.running[index];
            let Some(refused_as) = &plugin.refused_as else {
                continue;
            };
            let stamp = FileStamp::of(&plugin.config.path);
            if stamp == *refused_as {
                continue;
            }
            let (config, trust) = (plugin.config.clone(), plugin.trust.clone());
            let name = &config.name;
            match self.start(&config, &trust, sandbox).await {
                Ok(handle) => {
                    info!(plugin = %name, path = %config.path.display(), "refused plug-in loaded after its file changed");
                    let plugin = &mut self.running[index];
                    plugin.counters = handle.counters.clone();
                    plugin.handle = Some(Arc::new(handle));
                    plugin.refused_as = None;
                    started = true;
                }
                Err(e) => {
                    error!(plugin = %name, path = %config.path.display(), error = %e, "plug-in REFUSED again after its file changed");
                    self.running[index].refused_as = Some(stamp);
                }
            }
        }
        if started {
            self.publish_handles();
        }
        started
    }

    /// Loads, verifies and compiles the plug-in and starts it on a thread of its own.
    async fn start(
        &self,
        config: &PluginConfig,
        trust: &Trust,
        sandbox: &mut SandboxSlot,
    ) -> Result<PluginHandle, PluginError> {
        let spec = PluginSpec {
            name: config.name.clone(),
            wasm: config.path.clone(),
            inputs: config.inputs.clone(),
            limits: config.limits,
            config_json: config.config_json.clone(),
            state_path: self.state_path.clone(),
            trust: trust.clone(),
            max_message_bytes: self.room.get().for_device(&config.name),
        };
        let outputs = self.outputs.clone();
        let sandbox = sandbox.get()?;
        // Compiling takes long: off the runtime's threads.
        tokio::task::spawn_blocking(move || kite_plugins::spawn(sandbox, spec, outputs))
            .await
            .unwrap_or_else(|e| Err(PluginError::Load(e.to_string())))
    }

    /// Each plug-in's name and counters, in config order.
    pub fn status(&self) -> PluginList {
        self.running
            .iter()
            .map(|plugin| (plugin.config.name.clone(), plugin.counters.clone()))
            .collect()
    }
}

/// How often plug-in files are checked for a new version.
pub(super) const PLUGIN_WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Hot swap: when a running plug-in's file (or its signature) changes, the
/// new version is loaded beside the running one and swapped in only if it
/// loads; polling and the buffer never notice.
pub async fn watch_plugins(handles: Arc<Current<PluginHandles>>, stop: CancellationToken) {
    // The version seen of each handle; a handle replaced by a reload starts afresh.
    let mut seen: HashMap<String, (Weak<PluginHandle>, FileStamp)> = HashMap::new();
    let mut ticker = tokio::time::interval(PLUGIN_WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let current = handles.get();
        seen.retain(|name, _| current.iter().any(|h| h.spec.name == *name));
        for plugin in current.iter() {
            let stamp = FileStamp::of(&plugin.spec.wasm);
            let name = plugin.spec.name.clone();
            match seen.get_mut(&name) {
                Some((known, last)) if known.ptr_eq(&Arc::downgrade(plugin)) => {
                    if *last == stamp {
                        continue;
                    }
                    *last = stamp;
                }
                _ => {
                    seen.insert(name, (Arc::downgrade(plugin), stamp));
                    continue;
                }
            }
            let plugin = plugin.clone();
            match tokio::task::spawn_blocking(move || plugin.reload()).await {
                Ok(Ok(())) => info!(plugin = %name, "plug-in reloaded"),
                Ok(Err(e)) => {
                    error!(plugin = %name, error = %e, "new version of the plug-in failed to load; the running version stays")
                }
                Err(e) => error!(plugin = %name, error = %e, "plug-in reload panicked"),
            }
        }
    }
}
