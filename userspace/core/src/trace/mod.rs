//! From protocol exchanges to OpenTelemetry spans: trace context (ids, `traceparent`), route
//! templates, redaction, the semantic-convention mapping, and who is whose parent.
pub mod context;
pub mod correlate;
pub mod http;
pub mod intern;
pub mod postgres;
pub mod redact;
pub mod resource;
pub mod route;
pub mod sampler;
pub mod span;
