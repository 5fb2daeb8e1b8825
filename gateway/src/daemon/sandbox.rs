//! What the links and the plug-ins share: the plug-in engine (made when the
//! first plug-in or codec needs it), and how a new version of a plug-in's
//! file is recognised.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use kite_plugins::{PluginError, Sandbox};

/// The plug-in engine, made when the first plug-in or codec needs it.
pub struct SandboxSlot {
    cache: PathBuf,
    sandbox: Option<Arc<Sandbox>>,
}

impl SandboxSlot {
    pub fn new(cache: PathBuf) -> Self {
        Self {
            cache,
            sandbox: None,
        }
    }

    pub fn get(&mut self) -> Result<Arc<Sandbox>, PluginError> {
        if let Some(sandbox) = &self.sandbox {
            return Ok(sandbox.clone());
        }
        let sandbox = Arc::new(Sandbox::new(Some(&self.cache))?);
        self.sandbox = Some(sandbox.clone());
        Ok(sandbox)
    }
}

/// Size and modification time of a plug-in's file and of its signature:
/// a new version of either is a change.
#[derive(Debug, Clone, PartialEq)]
pub struct FileStamp([Option<(u64, Option<SystemTime>)>; 2]);

impl FileStamp {
    pub fn of(wasm: &Path) -> Self {
        let stat = |path: &Path| {
            std::fs::metadata(path)
                .ok()
                .map(|m| (m.len(), m.modified().ok()))
        };
        Self([
            stat(wasm),
            stat(&kite_plugins::signing::signature_path(wasm)),
        ])
    }
}
