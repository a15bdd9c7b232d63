//! Connections that were open before sonde started (a keep-alive client of a gunicorn worker,
//! a pooled database connection): found in /proc and registered with the kernel programs so
//! their traffic is captured from now on. Their parsers start unsynchronised and recover
//! message boundaries themselves.
pub use super::sockets::{FoundSocket, scan_established};
