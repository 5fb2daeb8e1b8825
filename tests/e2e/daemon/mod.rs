//! The running daemon: reloads, and plug-ins in the pipeline.

mod plugins;
mod reload;
