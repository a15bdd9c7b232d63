//! sonde's pure logic, from a decoded kernel event to an OTLP span: record decoding
//! ([`event`]), the [`tracer`] (connection table, protocol detection, span context and
//! parenting, grouping per process), the [`protocols`] registry, SDK/eBPF [`merge`]-ing and [`trace`] (semantic
//! conventions, routes, redaction, sampling, ids, the resource model).
//!
//! No I/O: what the tracer needs from the host (/proc) comes through [`tracer::HostView`],
//! which the daemon implements; changes to the kernel's socket table leave as
//! [`tracer::KernelCommand`]s. So everything here is tested with recorded events alone.
// Unit-test builds also see dev-dependencies; the lint is for what the crate ships.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]
pub mod alloc;
pub mod clock;
pub mod event;
pub mod merge;
pub mod protocols;
pub mod trace;
pub mod tracer;
