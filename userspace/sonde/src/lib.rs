//! sonde's node daemon as a library: the binary (`main.rs`) only parses the command line.
pub mod capture;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod discover;
pub mod merge;
pub mod metrics;
pub mod sdk;
pub mod trace;
pub mod tracer;
