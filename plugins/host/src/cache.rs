//! The compile cache: the code Cranelift made for a plug-in, kept in a
//! directory (`<data_dir>/plugin-cache`) so that a restart does not compile
//! it again.
//!
//! Loading an entry is loading machine code that wasmtime does not check,
//! so whoever can write the directory could otherwise run anything in the
//! daemon. Each entry is therefore authenticated: an HMAC-SHA256 under a
//! key of this gateway's (`key` in the directory, 32 random bytes, mode
//! 0600, made on first use) over the entry's name and its bytes. An entry
//! that fails the check (altered, cut short, copied from another entry or
//! another gateway) is ignored, logged and compiled again.
//!
//! An entry is named by the SHA-256 of the plug-in's bytes, the engine's
//! settings and Kite's version, so a changed file or engine compiles again.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::{digest, hmac};
use tracing::warn;
use wasmtime::Engine;

use crate::sandbox::PluginError;

const KEY_BYTES: usize = 32;
const TAG_BYTES: usize = 32;

pub(crate) struct CompileCache {
    dir: PathBuf,
    key: hmac::Key,
}

impl CompileCache {
    /// The cache in `dir`, created with its key if need be.
    pub fn open(dir: &Path) -> Result<Self, PluginError> {
        let failed = |what: &str, e: std::io::Error| {
            PluginError::Load(format!("compile cache {}: {what}: {e}", dir.display()))
        };
        fs::create_dir_all(dir).map_err(|e| failed("create", e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| failed("restrict", e))?;
        let key_path = dir.join("key");
        let key = match fs::read(&key_path) {
            Ok(key) if key.len() == KEY_BYTES => key,
            _ => {
                // A new key: every entry made under another one is compiled again.
                let mut key = vec![0; KEY_BYTES];
                getrandom::getrandom(&mut key)
                    .map_err(|e| PluginError::Load(format!("compile cache key: {e}")))?;
                let partial = dir.join("key.partial");
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&partial)
                    .map_err(|e| failed("write its key", e))?;
                file.write_all(&key)
                    .and_then(|()| file.sync_all())
                    .and_then(|()| fs::rename(&partial, &key_path))
                    .map_err(|e| failed("write its key", e))?;
                key
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        })
    }

    /// The entry's name for `wasm` compiled by `engine`.
    fn name(engine: &Engine, wasm: &[u8]) -> String {
        let mut settings = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut settings);
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(wasm);
        context.update(&settings.finish().to_le_bytes());
        context.update(env!("CARGO_PKG_VERSION").as_bytes());
        let hash = context.finish();
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("{hex}.cwasm")
    }

    fn tag(&self, name: &str, artifact: &[u8]) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(name.as_bytes());
        context.update(artifact);
        context.sign()
    }

    /// The compiled code of `wasm`, if the cache holds it and it is
    /// authentic; an entry that is not is logged and left to be replaced.
    pub fn load(&self, engine: &Engine, wasm: &[u8]) -> Option<Vec<u8>> {
        let name = Self::name(engine, wasm);
        let path = self.dir.join(&name);
        let mut entry = fs::read(&path).ok()?;
        if entry.len() < TAG_BYTES {
            warn!(path = %path.display(), "a compile cache entry is cut short; compiling the plug-in again");
            return None;
        }
        let artifact = entry.split_off(TAG_BYTES);
        if hmac::verify(&self.key, &[name.as_bytes(), &artifact].concat(), &entry).is_err() {
            warn!(path = %path.display(), "a compile cache entry failed its authentication (altered, or not made by this gateway); ignored, compiling the plug-in again");
            return None;
        }
        Some(artifact)
    }

    /// Keeps the compiled code of `wasm`; a failure is logged, and the
    /// plug-in is compiled again next time.
    pub fn store(&self, engine: &Engine, wasm: &[u8], artifact: &[u8]) {
        let name = Self::name(engine, wasm);
        let path = self.dir.join(&name);
        let partial = self.dir.join(format!("{name}.partial"));
        let tag = self.tag(&name, artifact);
        let written = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .and_then(|mut file| {
                file.write_all(tag.as_ref())?;
                file.write_all(artifact)
            })
            .and_then(|()| fs::rename(&partial, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&partial);
            warn!(path = %path.display(), error = %e, "cannot keep compiled plug-in code; it is compiled again at the next start");
        }
    }
}
