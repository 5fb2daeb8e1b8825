//! Kite's plug-in host: third-party edge analytics as WebAssembly
//! components, sandboxed in wasmtime.
//!
//! - `plugins/wit/plugin.wit` is the contract; [`bindings`] is generated from it.
//! - [`sandbox`]: the engine, the locked-down linker, and one instance with
//!   its memory limit, time limit and host functions.
//! - [`bounds`]: how much a plug-in may hand the gateway: outputs bounded
//!   in bytes, log lines and reasons kept to one bounded line.
//! - `clocks`: the wall and monotonic clocks plug-ins read, at 1 ms.
//! - [`state`]: the small key-value store each plug-in may keep, in SQLite.
//! - [`runner`]: one thread per plug-in that feeds it batches, turns its
//!   failures into counts, re-instantiates it with back-off and disables it
//!   after repeated failures.
//! - [`codec`]: codec plug-ins, which decode a serial instrument's frames.
//! - [`pattern`]: which readings a plug-in subscribed to.
//! - [`signing`]: ed25519 signatures of plug-in files, and the trust check at load.
//!
//! Nothing here knows about MQTT or the buffer: outputs leave as
//! [`runner::PluginOutput`] on a bounded channel.

pub mod bindings {
    //! Generated from `plugins/wit/plugin.wit`.
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit",
    });

    pub mod codec {
        //! The `codec` world; its interfaces are the ones above.
        wasmtime::component::bindgen!({
            world: "codec",
            path: "../wit",
            with: {
                "kite:plugin/types": crate::bindings::kite::plugin::types,
                "kite:plugin/host": crate::bindings::kite::plugin::host,
            },
        });
    }
}

pub mod bounds;
#[cfg(feature = "compiler")]
mod cache;
mod clocks;
pub mod codec;
pub mod pattern;
pub mod runner;
pub mod sandbox;
pub mod signing;
pub mod state;

pub use bounds::{
    DEFAULT_MAX_MESSAGE_BYTES, MAX_EVENT_MESSAGE_BYTES, MAX_LOG_LINE_BYTES, MAX_NAME_BYTES,
    MAX_REASON_BYTES, MAX_UNIT_BYTES,
};
pub use codec::Codec;
pub use pattern::Pattern;
pub use runner::{
    load, spawn, start_instance, PluginCounters, PluginHandle, PluginOutput, PluginSpec, RunState,
    Trust,
};
pub use sandbox::{Execution, Limits, PluginError, Sandbox};
