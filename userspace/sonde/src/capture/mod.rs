//! Kernel side of the daemon: loading and attaching the probes and reading their ring buffer.
//! Decoding a record is pure and lives in `sonde_core::event` (re-exported here).
pub use sonde_core::event;
pub mod loader;
