//! Plug-ins for tests, built from source: hostile ones written in WAT and
//! made into components with wit-component (no wasm target needed), and the
//! example plug-ins built for wasm32-wasip2. Shared by the host's tests and
//! the gateway's end-to-end tests; each test binary uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

/// `plugins/` of this repository, found from the crate being tested.
pub fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|dir| dir.join("plugins"))
        .find(|dir| dir.join("wit").is_dir())
        .expect("plugins/wit above the crate")
}

/// Builds the example plug-ins once per test run; returns the directory of the `.wasm` files.
pub fn examples() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let manifest = plugins_dir().join("examples/Cargo.toml");
        let target = manifest.parent().unwrap().join("target");
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--release",
                "--quiet",
                "--target",
                "wasm32-wasip2",
                "--manifest-path",
            ])
            .arg(&manifest)
            // Where this function looks, whatever CARGO_TARGET_DIR says.
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("run cargo");
        assert!(
            status.success(),
            "building the examples failed (is `rustup target add wasm32-wasip2` done?)"
        );
        target.join("wasm32-wasip2/release")
    })
}

/// A core module following the canonical ABI of the `plugin` world, with
/// `process` doing `body` (which must leave an output pointer on the stack).
pub fn module(imports: &str, body: &str) -> String {
    module_with(imports, "", body)
}

/// [`module`] with more `definitions` (functions, memories, data, a start
/// function) after the exported memory, which stays memory 0.
pub fn module_with(imports: &str, definitions: &str, body: &str) -> String {
    format!(
        r#"(module
  {imports}
  (memory (export "memory") 1)
  {definitions}
  (global $heap (mut i32) (i32.const 4096))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $ptr i32)
    global.get $heap
    local.get 2 i32.add i32.const 1 i32.sub
    i32.const 0 local.get 2 i32.sub i32.and
    local.set $ptr
    local.get $ptr local.get 3 i32.add global.set $heap
    (block $done
      (loop $grow
        global.get $heap memory.size i32.const 65536 i32.mul i32.le_u br_if $done
        i32.const 1 memory.grow i32.const -1 i32.eq
        if unreachable end
        br $grow))
    local.get $ptr)
  ;; result<_, string> at address 0, all zero: ok.
  (func (export "init") (param i32 i32) (result i32) i32.const 0)
  (func $deep (param i32) (result i32) local.get 0 i32.const 1 i32.add call $deep)
  ;; The output record lives at 16: two empty lists unless `body` writes there.
  (func (export "process") (param i32 i32) (result i32) {body})
)"#
    )
}

pub const EXTRA_WIT: &str = r#"
package test:hostile;
interface network { connect: func(); }
world hostile { include kite:plugin/plugin@0.1.0; import network; }
world wasi-user {
  include kite:plugin/plugin@0.1.0;
  import wasi:clocks/monotonic-clock@0.2.0;
  import wasi:random/random@0.2.0;
}

// The few WASI functions the `wasi-user` plug-ins call.
package wasi:io@0.2.0 {
  interface poll { resource pollable { block: func(); } }
}
package wasi:clocks@0.2.0 {
  interface monotonic-clock {
    use wasi:io/poll@0.2.0.{pollable};
    subscribe-duration: func(when: u64) -> pollable;
  }
}
package wasi:random@0.2.0 {
  interface random { get-random-bytes: func(len: u64) -> list<u8>; }
}
"#;

/// Core imports of the `wasi-user` world, for [`module`].
pub const WASI_IMPORTS: &str = r#"
  (import "wasi:clocks/monotonic-clock@0.2.0" "subscribe-duration"
    (func $subscribe_duration (param i64) (result i32)))
  (import "wasi:io/poll@0.2.0" "[method]pollable.block" (func $block (param i32)))
  (import "wasi:random/random@0.2.0" "get-random-bytes"
    (func $get_random_bytes (param i64 i32)))
"#;

pub fn component(wat: &str, world: &str) -> Vec<u8> {
    let mut resolve = Resolve::default();
    let (package, _) = resolve.push_dir(plugins_dir().join("wit")).unwrap();
    let world = if world == "plugin" {
        resolve.select_world(&[package], Some("plugin")).unwrap()
    } else {
        let hostile = resolve.push_str("hostile.wit", EXTRA_WIT).unwrap();
        resolve.select_world(&[hostile], Some(world)).unwrap()
    };
    let mut bytes = wat::parse_str(wat).unwrap();
    wit_component::embed_component_metadata(&mut bytes, &resolve, world, StringEncoding::UTF8)
        .unwrap();
    ComponentEncoder::default()
        .module(&bytes)
        .unwrap()
        .validate(true)
        .encode()
        .unwrap()
}
