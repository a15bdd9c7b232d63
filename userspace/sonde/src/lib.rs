//! sonde's node daemon as a library: the binary (`main.rs`) only parses the command line.
//! The daemon holds the I/O and the wiring; the pure logic is `sonde-core`, re-exported here
//! under its old paths (`sonde::tracer`, `sonde::trace`, `sonde::merge`, `sonde::clock`).
// Unit-test builds also see dev-dependencies; the lint is for what the crate ships.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]
pub mod capture;
pub mod config;
pub mod daemon;
pub mod discover;
pub mod health;
pub mod metrics;
pub mod metrics_feed;
pub mod procstats;
pub mod sdk;

// The binary (main.rs) installs the log subscriber.
use tracing_subscriber as _;

pub use sonde_core::{clock, merge, protocols, trace, tracer};
