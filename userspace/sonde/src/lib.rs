//! sonde's node daemon as a library: the binary (`main.rs`) only parses the command line.
//! The daemon holds the I/O and the wiring; the pure logic is `sonde-core`, re-exported here
//! under its old paths (`sonde::tracer`, `sonde::trace`, `sonde::merge`, `sonde::clock`).
pub mod capture;
pub mod config;
pub mod daemon;
pub mod discover;
pub mod metrics;
pub mod sdk;

pub use sonde_core::{clock, merge, protocols, trace, tracer};
