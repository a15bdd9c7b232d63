//! Connection tests from hand-built byte streams.
