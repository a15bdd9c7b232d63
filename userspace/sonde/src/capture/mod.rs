//! Kernel side of the daemon: loading and attaching the probes, reading their ring buffer,
//! decoding records, and finding TCP connections that existed before sonde started.
pub mod event;
pub mod inflight;
pub mod loader;
pub mod preexisting;
pub mod sockets;
pub mod tls;
