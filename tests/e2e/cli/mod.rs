//! The command line as a user meets it: `kite check`, `kite buffer`, `kite demo`.

mod buffer;
mod check;
mod demo;
